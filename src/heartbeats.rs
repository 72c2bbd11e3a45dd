//! Heartbeats answered from memory and written to the database in batches.
//!
//! Thousands of open pages heartbeat every 30 s; one SQLite write each would
//! make the single writer the service's bottleneck. Instead the first
//! heartbeat of a running runner reads its row again under the lock that
//! removals of that row take (so it cannot overlap one) and caches the
//! runner's kind; later heartbeats only update the cached time, and
//! [`Heartbeats::take_unflushed`] hands the changed times to one transaction
//! every `HEARTBEAT_FLUSH_INTERVAL_MS`.
//!
//! Staleness is bounded by that interval: the database's `last_heartbeat_at`
//! lags by at most one interval while serving (what operators see in
//! `runners list`). Nothing decides on the lagging value: the reaper flushes
//! before each sweep and asks [`Heartbeats::forget_unless_seen_since`] before
//! removing a runner, so a heartbeat answered 200 always keeps its runner. A
//! clean stop flushes after the server has stopped; a crash loses at most one
//! interval, which does not matter because the startup reconcile gives every
//! kept runner a fresh heartbeat.
//!
//! Every path that takes a row out of `running` while serving (deprovision,
//! reaper, drift reconcile) forgets the session first, under that same lock;
//! a flush that finds a row no longer running forgets that admission too, as
//! a safety net.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};

use crate::db::RunnerKind;

#[derive(Debug, Clone, Copy)]
struct Seen {
    kind: RunnerKind,
    at: DateTime<Utc>,
    /// Not yet written to the database.
    unflushed: bool,
    /// Tells this admission from a later one of the same session id.
    admission: u64,
}

#[derive(Debug, Default)]
struct Cache {
    sessions: HashMap<String, Seen>,
    admissions: u64,
}

/// A heartbeat time not yet in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub session_id: String,
    pub at: DateTime<Utc>,
    admission: u64,
}

/// The heartbeat cache of the running sessions that heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Heartbeats {
    cache: Arc<Mutex<Cache>>,
}

impl Heartbeats {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        // The cache holds plain values that no panic can leave half-written.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a heartbeat of a session already known to be running, and
    /// returns its kind; `None` means the database must be asked.
    pub fn record(&self, session_id: &str, at: DateTime<Utc>) -> Option<RunnerKind> {
        let mut cache = self.cache();
        let seen = cache.sessions.get_mut(session_id)?;
        seen.at = seen.at.max(at);
        seen.unflushed = true;
        Some(seen.kind)
    }

    /// Records the first heartbeat of a session whose row the caller has
    /// just read as running, holding the lock that its removal would take.
    pub fn admit(&self, session_id: &str, kind: RunnerKind, at: DateTime<Utc>) {
        let mut cache = self.cache();
        cache.admissions += 1;
        let admission = cache.admissions;
        cache.sessions.insert(
            session_id.to_owned(),
            Seen {
                kind,
                at,
                unflushed: true,
                admission,
            },
        );
    }

    /// Drops the session before its runner stops being `running`, so that
    /// the next heartbeat asks the database (and waits for the removal).
    pub fn forget(&self, session_id: &str) {
        self.cache().sessions.remove(session_id);
    }

    /// [`Heartbeats::forget`] for the reaper: a heartbeat at or after `since`
    /// keeps the session instead, and `false` tells the reaper to spare it.
    pub fn forget_unless_seen_since(&self, session_id: &str, since: DateTime<Utc>) -> bool {
        let mut cache = self.cache();
        if cache
            .sessions
            .get(session_id)
            .is_some_and(|seen| seen.at >= since)
        {
            return false;
        }
        cache.sessions.remove(session_id);
        true
    }

    /// Drops a session that a flush found without a running row, unless it
    /// was admitted again since the flush took its time (a new runner).
    pub fn forget_gone(&self, pending: &Pending) {
        let mut cache = self.cache();
        if cache
            .sessions
            .get(&pending.session_id)
            .is_some_and(|seen| seen.admission == pending.admission)
        {
            cache.sessions.remove(&pending.session_id);
        }
    }

    /// The heartbeats not yet in the database, marked as written; a failed
    /// write hands them back through [`Heartbeats::unflushed_again`].
    pub fn take_unflushed(&self) -> Vec<Pending> {
        self.cache()
            .sessions
            .iter_mut()
            .filter(|(_, seen)| seen.unflushed)
            .map(|(session_id, seen)| {
                seen.unflushed = false;
                Pending {
                    session_id: session_id.clone(),
                    at: seen.at,
                    admission: seen.admission,
                }
            })
            .collect()
    }

    pub fn unflushed_again(&self, batch: &[Pending]) {
        let mut cache = self.cache();
        for pending in batch {
            if let Some(seen) = cache.sessions.get_mut(&pending.session_id) {
                seen.unflushed = true;
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

    fn times(batch: &[Pending]) -> Vec<(&str, DateTime<Utc>)> {
        batch
            .iter()
            .map(|pending| (pending.session_id.as_str(), pending.at))
            .collect()
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
        assert_eq!(times(&heartbeats.take_unflushed()), [("a", at(5))]);
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
    fn the_reaper_spares_a_session_seen_since_its_cutoff() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(10));
        assert!(!heartbeats.forget_unless_seen_since("a", at(10)));
        assert_eq!(heartbeats.record("a", at(10)), Some(RunnerKind::Session));
        assert!(heartbeats.forget_unless_seen_since("a", at(11)));
        assert_eq!(heartbeats.record("a", at(12)), None);
        assert!(heartbeats.forget_unless_seen_since("never-seen", at(0)));
    }

    #[test]
    fn forgetting_always_drops() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(10));
        heartbeats.forget("a");
        assert_eq!(heartbeats.record("a", at(11)), None);
    }

    #[test]
    fn a_flush_forgets_a_gone_session_but_not_its_next_runner() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(1));
        let first = heartbeats.take_unflushed();
        // Heartbeats of the same runner since the flush took its time do not
        // save it: its row is gone.
        heartbeats.record("a", at(2));
        heartbeats.forget_gone(&first[0]);
        assert_eq!(heartbeats.record("a", at(3)), None);

        heartbeats.admit("a", RunnerKind::Session, at(4));
        let stale = heartbeats.take_unflushed();
        heartbeats.forget("a");
        // Removed and provisioned again while the flush was writing.
        heartbeats.admit("a", RunnerKind::Session, at(5));
        heartbeats.forget_gone(&stale[0]);
        assert_eq!(heartbeats.record("a", at(6)), Some(RunnerKind::Session));
    }
}
