//! Periodic online backups (`BACKUP_INTERVAL_SECONDS`): every interval, a
//! consistent copy of the database into `BACKUP_PATH` as
//! `orchestrator-<UTC time>.db`, checked, and the oldest deleted beyond
//! `BACKUP_KEEP`. A failed backup is logged and counted, and the next one
//! is tried at the next interval; the service goes on either way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::db::{Backup, Db, DbError};
use crate::metrics::Metrics;
use crate::shutdown::Ticks;

const PREFIX: &str = "orchestrator-";
const SUFFIX: &str = ".db";

#[derive(Debug, Clone)]
pub struct Backups {
    db: Db,
    dir: PathBuf,
    keep: usize,
    metrics: Arc<Metrics>,
}

impl Backups {
    pub fn new(db: Db, dir: PathBuf, keep: u32, metrics: Arc<Metrics>) -> Self {
        Self {
            db,
            dir,
            keep: keep.max(1) as usize,
            metrics,
        }
    }

    /// One backup, named after `now`, then the oldest deleted beyond the
    /// number to keep.
    pub async fn try_once(&self, now: DateTime<Utc>) -> Result<Backup, DbError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| DbError::BackupIo {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.dir.join(file_name(now));
        let backup = self.db.backup_to(&path).await?;
        for old in prunable(&self.dir, self.keep) {
            match std::fs::remove_file(&old) {
                Ok(()) => tracing::info!(backup = %old.display(), "deleted an old backup"),
                Err(error) => {
                    tracing::warn!(backup = %old.display(), %error, "could not delete an old backup");
                }
            }
        }
        Ok(backup)
    }

    /// A backup every `interval` until shutdown (the first one interval
    /// after the start).
    pub async fn run_until_stopped(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = Ticks::new(interval, shutdown);
        while ticks.next().await {
            let began = Instant::now();
            match self.try_once(Utc::now()).await {
                Ok(backup) => {
                    self.metrics.backup_written(Utc::now().timestamp());
                    tracing::info!(
                        backup = %backup.path.display(),
                        bytes = backup.bytes,
                        took_ms = began.elapsed().as_millis() as u64,
                        "database backed up"
                    );
                }
                Err(error) => {
                    self.metrics.backup_failed();
                    tracing::error!(
                        error = format!("{:#}", anyhow::Error::new(error)),
                        dir = %self.dir.display(),
                        "database backup failed; the next is tried in one interval"
                    );
                }
            }
        }
    }
}

/// `orchestrator-20261207T013000.123Z.db`: names that sort as their times.
pub fn file_name(now: DateTime<Utc>) -> String {
    format!("{PREFIX}{}{SUFFIX}", now.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// The backups in `dir` beyond the newest `keep`, oldest first. Only files
/// this worker names are ever considered (a backup in progress ends in
/// `.partial` and is not one).
fn prunable(dir: &Path, keep: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut backups: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(PREFIX) && name.ends_with(SUFFIX))
        })
        .collect();
    backups.sort();
    let excess = backups.len().saturating_sub(keep);
    backups.truncate(excess);
    backups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_as_their_times_and_only_the_oldest_go() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = DateTime::parse_from_rfc3339("2026-12-07T01:02:03.004Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(file_name(t0), "orchestrator-20261207T010203.004Z.db");
        let names: Vec<String> = (0..5)
            .map(|i| file_name(t0 + chrono::Duration::seconds(i * 3600 * 7)))
            .collect();
        for name in names.iter().rev() {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        // Not this worker's: never deleted.
        for other in ["orchestrator.db", "notes.txt", "orchestrator-x.db.partial"] {
            std::fs::write(dir.path().join(other), b"").unwrap();
        }
        let prunable: Vec<String> = prunable(dir.path(), 2)
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(prunable, names[..3]);
        assert!(super::prunable(dir.path(), 10).is_empty());
    }
}
