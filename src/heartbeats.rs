//! Heartbeats answered from memory and written to the database in batches.
//!
//! Thousands of open pages heartbeat every 30 s; one SQLite write each would
//! make the single writer the service's bottleneck. Instead a session's first
//! heartbeat reads its row (under the session's lock, so it cannot overlap a
//! removal) and caches the runner's kind; later heartbeats only update the
//! cached time, and [`Heartbeats::take_unflushed`] hands the changed times to
//! one transaction every `HEARTBEAT_FLUSH_INTERVAL_MS`.
//!
//! Staleness is bounded by that interval: the database's `last_heartbeat_at`
//! lags by at most one interval while serving (what operators see in
//! `runners list`). Nothing decides on the lagging value: the reaper flushes
//! before each sweep and asks [`Heartbeats::forget`] before removing a
//! runner, so a heartbeat answered 200 always keeps its runner. A clean stop
//! flushes last; a crash loses at most one interval, which does not matter
//! because the startup reconcile gives every kept runner a fresh heartbeat.
//!
//! Every removal path forgets the session first; a flush that finds a row no
//! longer running forgets it too, so the cache cannot outlive its rows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::db::RunnerKind;

#[derive(Debug, Clone, Copy)]
struct Seen {
    kind: RunnerKind,
    at: DateTime<Utc>,
    /// Not yet written to the database.
    unflushed: bool,
}

/// The heartbeat cache of the running sessions that heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Heartbeats {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

impl Heartbeats {
    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        // The map holds plain values that no panic can leave half-written.
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a heartbeat of a session already known to be running, and
    /// returns its kind; `None` means the database must be asked.
    pub fn record(&self, session_id: &str, at: DateTime<Utc>) -> Option<RunnerKind> {
        let mut seen = self.seen();
        let entry = seen.get_mut(session_id)?;
        entry.at = entry.at.max(at);
        entry.unflushed = true;
        Some(entry.kind)
    }

    /// Records the first heartbeat of a session whose row the caller has
    /// just read as running, holding the session's lock.
    pub fn admit(&self, session_id: &str, kind: RunnerKind, at: DateTime<Utc>) {
        self.seen().insert(
            session_id.to_owned(),
            Seen {
                kind,
                at,
                unflushed: true,
            },
        );
    }

    /// Drops the session before its runner is removed, so that the next
    /// heartbeat asks the database (and waits for the removal's lock).
    /// With `unless_seen_since`, a heartbeat at or after that time keeps
    /// the session instead, and `false` tells the caller to spare it.
    pub fn forget(&self, session_id: &str, unless_seen_since: Option<DateTime<Utc>>) -> bool {
        let mut seen = self.seen();
        let fresh = seen
            .get(session_id)
            .zip(unless_seen_since)
            .is_some_and(|(entry, since)| entry.at >= since);
        if !fresh {
            seen.remove(session_id);
        }
        !fresh
    }

    /// The heartbeats not yet in the database, marked as written; a failed
    /// write hands them back through [`Heartbeats::unflushed_again`].
    pub fn take_unflushed(&self) -> Vec<(String, DateTime<Utc>)> {
        self.seen()
            .iter_mut()
            .filter(|(_, entry)| entry.unflushed)
            .map(|(session_id, entry)| {
                entry.unflushed = false;
                (session_id.clone(), entry.at)
            })
            .collect()
    }

    pub fn unflushed_again(&self, batch: &[(String, DateTime<Utc>)]) {
        let mut seen = self.seen();
        for (session_id, _) in batch {
            if let Some(entry) = seen.get_mut(session_id) {
                entry.unflushed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(seconds)
    }

    #[test]
    fn unknown_sessions_go_to_the_database() {
        let heartbeats = Heartbeats::default();
        assert_eq!(heartbeats.record("a", at(1)), None);
        assert!(heartbeats.take_unflushed().is_empty());
    }

    #[test]
    fn admitted_sessions_are_answered_from_memory_and_flushed_once() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(1));
        assert_eq!(heartbeats.record("a", at(5)), Some(RunnerKind::Session));
        // An older time arriving late never moves the heartbeat back.
        assert_eq!(heartbeats.record("a", at(3)), Some(RunnerKind::Session));
        assert_eq!(heartbeats.take_unflushed(), vec![("a".to_owned(), at(5))]);
        assert!(heartbeats.take_unflushed().is_empty());
    }

    #[test]
    fn a_failed_flush_is_retried() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Singleton, at(1));
        let batch = heartbeats.take_unflushed();
        heartbeats.unflushed_again(&batch);
        assert_eq!(heartbeats.take_unflushed(), batch);
    }

    #[test]
    fn forgetting_spares_a_session_seen_since_the_cutoff() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(10));
        assert!(!heartbeats.forget("a", Some(at(10))), "seen at the cutoff");
        assert_eq!(heartbeats.record("a", at(10)), Some(RunnerKind::Session));
        assert!(heartbeats.forget("a", Some(at(11))));
        assert_eq!(heartbeats.record("a", at(12)), None);
    }

    #[test]
    fn forgetting_without_a_cutoff_always_drops() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(10));
        assert!(heartbeats.forget("a", None));
        assert!(heartbeats.forget("never-seen", Some(at(0))));
        assert_eq!(heartbeats.record("a", at(11)), None);
    }
}
