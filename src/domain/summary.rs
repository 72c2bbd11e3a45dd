//! What one reconciliation did: the reconciler counts it, readiness and the
//! supervisor report it.

use std::fmt;

/// What one reconciliation did, for the summary log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub kept: usize,
    pub adopted: usize,
    pub containers_removed: usize,
    pub rows_dropped: usize,
    pub failed: usize,
}

impl std::ops::AddAssign for Summary {
    fn add_assign(&mut self, other: Self) {
        self.kept += other.kept;
        self.adopted += other.adopted;
        self.containers_removed += other.containers_removed;
        self.rows_dropped += other.rows_dropped;
        self.failed += other.failed;
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kept={} adopted={} containers_removed={} rows_dropped={} failed={}",
            self.kept, self.adopted, self.containers_removed, self.rows_dropped, self.failed
        )
    }
}
