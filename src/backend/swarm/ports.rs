//! The host ports of runner services. In host mode every runner's port is
//! bound on whichever node runs it; the service picks them from
//! `RUNNER_PORT_RANGE` itself, unique across its runners, so that two
//! runners never want one port on one node and the engine's own choice
//! (which may differ between IPv4 and IPv6, moby#42442) is never needed.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;

use crate::config::PortRange;

/// Free and taken ports. A freed port goes to the back of the queue: its
/// container may still be stopping on its node for a while.
#[derive(Debug)]
pub struct PortPool {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    free: VecDeque<u16>,
    taken: BTreeSet<u16>,
    /// Whether the ports of the runners that already exist are known.
    seeded: bool,
}

impl PortPool {
    pub fn new(range: PortRange) -> Self {
        Self {
            inner: Mutex::new(Inner {
                free: (range.first..=range.last).collect(),
                taken: BTreeSet::new(),
                seeded: false,
            }),
        }
    }

    pub fn is_seeded(&self) -> bool {
        self.lock().seeded
    }

    /// Marks the ports existing runners hold (read from the swarm once,
    /// before the first port is handed out).
    pub fn seed(&self, in_use: impl IntoIterator<Item = u16>) {
        let mut inner = self.lock();
        for port in in_use {
            inner.take(port);
        }
        inner.seeded = true;
    }

    /// Takes the free port that has been free the longest.
    pub fn take(&self) -> Option<u16> {
        let mut inner = self.lock();
        let port = inner.free.pop_front()?;
        inner.taken.insert(port);
        Some(port)
    }

    /// Gives a port back (its runner is gone or was never made).
    pub fn give_back(&self, port: u16) {
        let mut inner = self.lock();
        if inner.taken.remove(&port) {
            inner.free.push_back(port);
        }
    }

    /// Marks a port taken by a runner found on the swarm.
    pub fn mark_taken(&self, port: u16) {
        self.lock().take(port);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain sets that no panic can leave half-written.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    fn take(&mut self, port: u16) {
        if self.taken.insert(port) {
            self.free.retain(|free| *free != port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(first: u16, last: u16) -> PortPool {
        PortPool::new(PortRange { first, last })
    }

    #[test]
    fn ports_are_unique_until_given_back_and_then_reused_last() {
        let pool = pool(100, 102);
        let taken: Vec<u16> = std::iter::from_fn(|| pool.take()).collect();
        assert_eq!(taken, [100, 101, 102]);
        assert_eq!(pool.take(), None);
        pool.give_back(101);
        pool.give_back(100);
        assert_eq!(pool.take(), Some(101));
        assert_eq!(pool.take(), Some(100));
    }

    #[test]
    fn seeded_ports_are_not_handed_out() {
        let pool = pool(100, 103);
        assert!(!pool.is_seeded());
        pool.seed([101, 103, 9999]);
        assert!(pool.is_seeded());
        assert_eq!(pool.take(), Some(100));
        assert_eq!(pool.take(), Some(102));
        assert_eq!(pool.take(), None);
    }

    #[test]
    fn giving_back_a_port_never_taken_changes_nothing() {
        let pool = pool(100, 100);
        pool.give_back(100);
        assert_eq!(pool.take(), Some(100));
        assert_eq!(pool.take(), None);
    }
}
