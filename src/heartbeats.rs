//! The running sessions, held in memory, and their heartbeats, written to the
//! database in batches.
//!
//! Thousands of open pages heartbeat every 30 s, and anyone can send
//! heartbeats for made-up session ids; one SQLite read or write each would
//! make the database the service's bottleneck. Instead this set says which
//! sessions have a running runner and of which kind, so that every
//! heartbeat, known or not, is answered from memory:
//! [`Heartbeats::record`] updates a running session's time, and
//! [`Heartbeats::take_unflushed`] hands the changed times to one transaction
//! every `HEARTBEAT_FLUSH_INTERVAL_MS`.
//!
//! The set follows the rows' `running` state. At start it is made of what
//! the startup reconcile keeps and adopts, in the same step as their rows
//! are written and before runner requests are served; a session is admitted ([`Heartbeats::admit`]) once its row has
//! become `running` (a provision, a warm runner, a runner the reconciler
//! keeps or adopts), and every path that takes a row out of `running`
//! (deprovision, reaper, drift reconcile) forgets the session first, under
//! the session's lock. A heartbeat arriving during a removal is answered 404
//! at once. A flush that finds a row no longer running forgets that
//! admission too, as a safety net.
//!
//! Staleness is bounded by the flush interval: the database's
//! `last_heartbeat_at` lags by at most one interval while serving (what
//! operators see in `runners list`). Nothing decides on the lagging value:
//! the reaper flushes before each sweep and asks
//! [`Heartbeats::forget_unless_seen_since`] before removing a runner, so a
//! heartbeat answered 200 always keeps its runner. A session's time in
//! memory is never older than its row's (every write of the row's time is
//! followed by an admission or heartbeat at or after it), so the reaper never
//! forgets a running session that its row's own check then spares. A clean stop flushes after the server has stopped; a crash loses
//! at most one interval, which does not matter because the startup
//! reconcile gives every kept runner a fresh heartbeat.
//!
//! The same set routes the gateway (`RUNNER_ACCESS=gateway`): each running
//! session's token and address are admitted, loaded and forgotten with it,
//! so a request for `<token>.<GATEWAY_DOMAIN>` is routed without reading
//! SQLite, and counts as the runner's heartbeat ([`Heartbeats::visit`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};

use crate::db::{Db, DbError, RunningRunner};
use crate::domain::RunnerKind;
use crate::domain::{Route, RunnerAddress, token};
use crate::metrics::{Metrics, WriteResult};

#[derive(Debug, Clone)]
struct Seen {
    kind: RunnerKind,
    /// Its keys in [`Cache::routes`] (token digests), if the gateway can
    /// reach it.
    keys: Vec<String>,
    at: DateTime<Utc>,
    /// Not yet written to the database.
    unflushed: bool,
    /// Tells this admission from a later one of the same session id.
    admission: u64,
}

#[derive(Debug, Default)]
struct Cache {
    sessions: HashMap<String, Seen>,
    /// The gateway's routes: a token's digest to session and address.
    routes: HashMap<String, Target>,
    admissions: u64,
}

#[derive(Debug)]
struct Target {
    session_id: String,
    address: RunnerAddress,
}

impl Cache {
    fn remove(&mut self, session_id: &str) {
        if let Some(seen) = self.sessions.remove(session_id) {
            for key in &seen.keys {
                self.routes.remove(key);
            }
        }
    }

    /// Points `seen`'s keys at `route`, dropping the routes it had before.
    fn set_route(&mut self, session_id: &str, route: Option<Route>) {
        let Some(seen) = self.sessions.get_mut(session_id) else {
            return;
        };
        let keys = route
            .as_ref()
            .map(|route| route.keys.clone())
            .unwrap_or_default();
        for old in std::mem::replace(&mut seen.keys, keys) {
            self.routes.remove(&old);
        }
        if let Some(route) = route {
            for key in route.keys {
                let target = Target {
                    session_id: session_id.to_owned(),
                    address: route.address.clone(),
                };
                self.routes.insert(key, target);
            }
        }
    }
}

/// A heartbeat time not yet in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub session_id: String,
    pub at: DateTime<Utc>,
    admission: u64,
}

/// The sessions that have a running runner, and their heartbeats.
#[derive(Debug, Clone, Default)]
pub struct Heartbeats {
    cache: Arc<Mutex<Cache>>,
}

impl Heartbeats {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        // The cache holds plain values that no panic can leave half-written.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a heartbeat, and returns the session's kind if it has a
    /// running runner; `None` means it has none.
    pub fn record(&self, session_id: &str, at: DateTime<Utc>) -> Option<RunnerKind> {
        let mut cache = self.cache();
        let seen = cache.sessions.get_mut(session_id)?;
        seen.at = seen.at.max(at);
        seen.unflushed = true;
        Some(seen.kind)
    }

    /// Records a request through the gateway for the token whose digest is
    /// `key` as a heartbeat of its runner, and returns where that runner is
    /// reached; `None`: no running runner has this token.
    pub fn visit(&self, key: &str, at: DateTime<Utc>) -> Option<RunnerAddress> {
        let mut cache = self.cache();
        let Cache {
            sessions, routes, ..
        } = &mut *cache;
        let target = routes.get(key)?;
        let seen = sessions.get_mut(&target.session_id)?;
        seen.at = seen.at.max(at);
        seen.unflushed = true;
        Some(target.address.clone())
    }

    /// Admits a session whose row has just become (or been found) `running`
    /// with a heartbeat time at or before `at`, and its gateway route; the
    /// caller holds the lock that the session's removal takes. A session
    /// already admitted keeps its newer time and unwritten heartbeat.
    pub fn admit(
        &self,
        session_id: &str,
        kind: RunnerKind,
        at: DateTime<Utc>,
        route: Option<Route>,
    ) {
        let mut cache = self.cache();
        cache.admissions += 1;
        let admission = cache.admissions;
        cache
            .sessions
            .entry(session_id.to_owned())
            .and_modify(|seen| {
                seen.kind = kind;
                seen.at = seen.at.max(at);
                seen.admission = admission;
            })
            .or_insert(Seen {
                kind,
                keys: Vec::new(),
                at,
                unflushed: false,
                admission,
            });
        cache.set_route(session_id, route);
    }

    /// Replaces the whole set with the sessions of the running rows, read
    /// at `at` or later. Only for the start, while no request, sweep or
    /// reconcile changes runners.
    pub fn replace_all(&self, running: Vec<RunningRunner>, at: DateTime<Utc>) {
        let mut cache = self.cache();
        cache.sessions.clear();
        cache.routes.clear();
        for runner in running {
            cache.admissions += 1;
            let seen = Seen {
                kind: runner.kind,
                keys: Vec::new(),
                at,
                unflushed: false,
                admission: cache.admissions,
            };
            cache.sessions.insert(runner.session_id.clone(), seen);
            let route = Route::of(
                token::route_keys(&runner.token, runner.token_sha256.as_deref()),
                runner.host_port,
                runner.node_host.as_deref(),
                runner.address.as_deref(),
            );
            cache.set_route(&runner.session_id, route);
        }
    }

    /// Drops the session before its runner stops being `running`: from then
    /// on its heartbeats answer that it has none.
    pub fn forget(&self, session_id: &str) {
        self.cache().remove(session_id);
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
        cache.remove(session_id);
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
            cache.remove(&pending.session_id);
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

/// Writes the heartbeats held in memory to the database, and loads the set
/// from it at start: what the heartbeat flusher and the reaper use.
#[derive(Debug, Clone)]
pub struct HeartbeatWriter {
    heartbeats: Heartbeats,
    db: Db,
    metrics: Arc<Metrics>,
    /// Serialises flushes (see [`HeartbeatWriter::flush`]).
    flushing: Arc<tokio::sync::Mutex<()>>,
}

impl HeartbeatWriter {
    pub fn new(heartbeats: Heartbeats, db: Db, metrics: Arc<Metrics>) -> Self {
        Self {
            heartbeats,
            db,
            metrics,
            flushing: Arc::default(),
        }
    }

    /// The running set itself (what the gateway routes by).
    pub fn running(&self) -> &Heartbeats {
        &self.heartbeats
    }

    /// Replaces the set that answers heartbeats with the database's running
    /// rows, and returns how many there are: for tests and benchmarks that
    /// write rows behind the service's back (a start fills the set from its
    /// reconcile instead).
    pub async fn load_running(&self) -> Result<usize, DbError> {
        let running = self.db.running_sessions().await?;
        let count = running.len();
        self.heartbeats.replace_all(running, Utc::now());
        Ok(count)
    }

    /// Writes the heartbeats received since the last flush and returns how
    /// many; sessions whose runner went meanwhile are forgotten. One flush at
    /// a time, so that the reaper's flush returns only once every time taken
    /// before it is written.
    pub async fn flush(&self) -> Result<usize, DbError> {
        let _flushing = self.flushing.lock().await;
        let batch = self.heartbeats.take_unflushed();
        if batch.is_empty() {
            return Ok(0);
        }
        let times: Vec<(&str, DateTime<Utc>)> = batch
            .iter()
            .map(|pending| (pending.session_id.as_str(), pending.at))
            .collect();
        let written = self.db.record_heartbeats(&times).await;
        self.metrics.heartbeat_write(match written {
            Ok(_) => WriteResult::Ok,
            Err(_) => WriteResult::Error,
        });
        match written {
            Ok(gone) => {
                for &position in &gone {
                    self.heartbeats.forget_gone(&batch[position]);
                }
                Ok(batch.len() - gone.len())
            }
            Err(error) => {
                self.heartbeats.unflushed_again(&batch);
                Err(error)
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
    fn unknown_sessions_have_no_runner_and_nothing_to_write() {
        let heartbeats = Heartbeats::default();
        assert_eq!(heartbeats.record("a", at(1)), None);
        assert!(heartbeats.take_unflushed().is_empty());
    }

    #[test]
    fn admitted_sessions_are_answered_and_flushed_once_they_heartbeat() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(1), None);
        // The admission's time is the row's own: nothing to write yet.
        assert!(heartbeats.take_unflushed().is_empty());
        assert_eq!(heartbeats.record("a", at(5)), Some(RunnerKind::Session));
        // An older time arriving late never moves the heartbeat back.
        assert_eq!(heartbeats.record("a", at(3)), Some(RunnerKind::Session));
        assert_eq!(times(&heartbeats.take_unflushed()), [("a", at(5))]);
        assert!(heartbeats.take_unflushed().is_empty());
    }

    #[test]
    fn admitting_again_keeps_a_newer_unwritten_heartbeat() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(1), None);
        heartbeats.record("a", at(9));
        // A reconcile keeping the runner, with an older view of time.
        heartbeats.admit("a", RunnerKind::Session, at(4), None);
        assert_eq!(times(&heartbeats.take_unflushed()), [("a", at(9))]);
        heartbeats.admit("a", RunnerKind::Singleton, at(12), None);
        assert_eq!(heartbeats.record("a", at(10)), Some(RunnerKind::Singleton));
        assert_eq!(times(&heartbeats.take_unflushed()), [("a", at(12))]);
    }

    #[test]
    fn replacing_the_set_admits_exactly_the_running_rows() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("gone", RunnerKind::Session, at(1), None);
        let running = |session_id: &str, kind, token: &str, host_port| RunningRunner {
            session_id: session_id.to_owned(),
            kind,
            token: token.to_owned(),
            token_sha256: None,
            host_port,
            node_host: None,
            address: None,
        };
        heartbeats.replace_all(
            vec![
                running("a", RunnerKind::Session, "t-a", Some(40000)),
                running("shared", RunnerKind::Singleton, "t-s", None),
                RunningRunner {
                    token_sha256: Some(token::digest("t-lost")),
                    ..running("rebuilt", RunnerKind::Session, "t-new", Some(40001))
                },
            ],
            at(7),
        );
        assert_eq!(heartbeats.record("gone", at(8)), None);
        // Routed by the token's digest, never by the token itself.
        assert_eq!(heartbeats.visit("t-a", at(7)), None);
        assert_eq!(
            heartbeats
                .visit(&token::digest("t-a"), at(7))
                .map(|a| a.to_string()),
            Some("127.0.0.1:40000".to_owned())
        );
        // No published port: nothing for the gateway to reach.
        assert_eq!(heartbeats.visit(&token::digest("t-s"), at(8)), None);
        // A row whose labels carry another token's digest (a rebuild that
        // could not derive it) is reached by both.
        for reached_by in ["t-lost", "t-new"] {
            let address = heartbeats.visit(&token::digest(reached_by), at(8));
            assert_eq!(address.unwrap().to_string(), "127.0.0.1:40001");
        }
        heartbeats.forget("rebuilt");
        assert_eq!(heartbeats.visit(&token::digest("t-lost"), at(9)), None);
        assert_eq!(heartbeats.record("a", at(8)), Some(RunnerKind::Session));
        assert_eq!(
            heartbeats.record("shared", at(8)),
            Some(RunnerKind::Singleton)
        );
        // Loaded at 7: spared by a reaper whose cutoff is not later.
        assert!(!heartbeats.forget_unless_seen_since("a", at(7)));
    }

    fn route(token: &str, port: u16) -> Option<Route> {
        Route::of(vec![token.to_owned()], Some(port), None, None)
    }

    #[test]
    fn a_visit_through_the_gateway_is_a_heartbeat_of_the_tokens_runner() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(1), route("t-1", 40001));
        assert_eq!(heartbeats.visit("t-unknown", at(2)), None);
        assert!(heartbeats.take_unflushed().is_empty());
        let address = heartbeats.visit("t-1", at(5)).unwrap();
        assert_eq!(address.to_string(), "127.0.0.1:40001");
        assert_eq!(times(&heartbeats.take_unflushed()), [("a", at(5))]);
        // The session id is no route.
        assert_eq!(heartbeats.visit("a", at(6)), None);
    }

    #[test]
    fn routes_follow_admissions_and_removals() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(1), route("t-1", 40001));
        // Kept by a reconcile on another port: the same token, the new port.
        heartbeats.admit("a", RunnerKind::Session, at(2), route("t-1", 40002));
        assert_eq!(
            heartbeats.visit("t-1", at(3)).unwrap().to_string(),
            "127.0.0.1:40002"
        );
        // A new token replaces the old one.
        heartbeats.admit("a", RunnerKind::Session, at(3), route("t-2", 40002));
        assert_eq!(heartbeats.visit("t-1", at(4)), None);
        assert!(heartbeats.visit("t-2", at(4)).is_some());
        heartbeats.forget("a");
        assert_eq!(heartbeats.visit("t-2", at(5)), None);

        heartbeats.admit("b", RunnerKind::Session, at(1), route("t-3", 40003));
        assert!(heartbeats.forget_unless_seen_since("b", at(2)));
        assert_eq!(heartbeats.visit("t-3", at(3)), None);

        heartbeats.admit("c", RunnerKind::Session, at(1), route("t-4", 40004));
        heartbeats.visit("t-4", at(2));
        let gone = heartbeats.take_unflushed();
        heartbeats.forget_gone(&gone[0]);
        assert_eq!(heartbeats.visit("t-4", at(3)), None);
    }

    #[test]
    fn a_failed_flush_is_retried() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Singleton, at(1), None);
        heartbeats.record("a", at(2));
        let batch = heartbeats.take_unflushed();
        heartbeats.unflushed_again(&batch);
        assert_eq!(heartbeats.take_unflushed(), batch);
    }

    #[test]
    fn the_reaper_spares_a_session_seen_since_its_cutoff() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(10), None);
        assert!(!heartbeats.forget_unless_seen_since("a", at(10)));
        assert_eq!(heartbeats.record("a", at(10)), Some(RunnerKind::Session));
        assert!(heartbeats.forget_unless_seen_since("a", at(11)));
        assert_eq!(heartbeats.record("a", at(12)), None);
        assert!(heartbeats.forget_unless_seen_since("never-seen", at(0)));
    }

    #[test]
    fn forgetting_always_drops() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(10), None);
        heartbeats.record("a", at(11));
        heartbeats.forget("a");
        assert_eq!(heartbeats.record("a", at(12)), None);
        assert!(heartbeats.take_unflushed().is_empty());
    }

    #[test]
    fn a_flush_forgets_a_gone_session_but_not_its_next_runner() {
        let heartbeats = Heartbeats::default();
        heartbeats.admit("a", RunnerKind::Session, at(1), None);
        heartbeats.record("a", at(2));
        let first = heartbeats.take_unflushed();
        // Heartbeats of the same runner since the flush took its time do not
        // save it: its row is gone.
        heartbeats.record("a", at(3));
        heartbeats.forget_gone(&first[0]);
        assert_eq!(heartbeats.record("a", at(4)), None);

        heartbeats.admit("a", RunnerKind::Session, at(5), None);
        heartbeats.record("a", at(6));
        let stale = heartbeats.take_unflushed();
        heartbeats.forget("a");
        // Removed and provisioned again while the flush was writing.
        heartbeats.admit("a", RunnerKind::Session, at(7), None);
        heartbeats.forget_gone(&stale[0]);
        assert_eq!(heartbeats.record("a", at(8)), Some(RunnerKind::Session));

        // Kept by a reconcile while the flush was writing: admitted again.
        heartbeats.record("a", at(9));
        let kept = heartbeats.take_unflushed();
        heartbeats.admit("a", RunnerKind::Session, at(10), None);
        heartbeats.forget_gone(&kept[0]);
        assert_eq!(heartbeats.record("a", at(11)), Some(RunnerKind::Session));
    }
}
