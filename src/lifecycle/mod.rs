//! The runner lifecycle: what the API, the reaper and the reconciler do to
//! runners, over the state they share (the database, the backend, the
//! engine's health, the running set that answers heartbeats, the session
//! locks). [`Runners`] provisions, answers heartbeats and deprovisions;
//! [`Lifecycle`] holds the one removal path that deprovisioning, the reaper
//! and the reconciler (startup repairs and drift alike) all take, so that
//! every removal writes the same audit entries, counts the same metrics and
//! fails the same way: an engine that refuses leaves the row `removing` for
//! the reaper to retry, and one that cannot be reached is marked unreachable.
//!
//! Order of writes, so that a crash between any two steps leaves something
//! the startup reconciler can repair:
//! provision: claim row (`provisioning`) → create + start container →
//! row `running`; removal: row `removing` → stop + remove container →
//! delete row. A row is deleted only once the engine confirmed its
//! container is gone.

mod runners;
mod start_queue;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use runners::{Heartbeat, NO_ENDPOINT, Provisioned, RunnerInfo, Runners, WarmDemand};
pub use start_queue::{StartQueue, StartTurn};

use crate::backend::health::EngineHealth;
use crate::backend::{EngineError, ObservedRunner, RunnerBackend, Stop};
use crate::db::{Actor, AuditAction, AuditEntry, Db, DbError, RunnerRow};
use crate::domain::Route;
use crate::domain::RunnerKind;
use crate::domain::token::TokenKey;
use crate::heartbeats::Heartbeats;
use crate::locks::{SessionGuard, SessionLocks};
use crate::metrics::{EngineErrorKind, Metrics, ReconcileAction};

/// How many runners are removed at once (startup repairs, drift, reaper):
/// enough that a backlog of dead containers clears in seconds, few enough
/// that the engine is not flooded.
pub const REMOVAL_CONCURRENCY: usize = 8;

/// The lock key of the shared runner; no session id can contain a NUL.
const SINGLETON_LOCK: &str = "\0singleton";

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("no active runner for this session")]
    NotFound,
    #[error("no shared runner, or another session id")]
    SingletonMismatch,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("database error: {0}")]
    Db(#[from] DbError),
    #[error("MAX_CONCURRENT_RUNNERS reached")]
    LimitReached,
    #[error("operation panicked: {0}")]
    Panicked(String),
}

/// Why a runner is being removed, for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Removal<'a> {
    pub actor: Actor,
    pub action: AuditAction,
    pub reason: &'a str,
    /// Remove only if the last heartbeat is still older than this.
    pub stale_before: Option<DateTime<Utc>>,
    /// Whether the runner gets its SIGTERM grace period.
    pub stop: Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalOutcome {
    Removed,
    /// A heartbeat arrived in the meantime, or the row is already gone.
    Skipped,
}

/// The state every change to a runner goes through, and the removal path.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    db: Db,
    backend: Arc<dyn RunnerBackend>,
    health: EngineHealth,
    metrics: Arc<Metrics>,
    heartbeats: Heartbeats,
    locks: SessionLocks,
    /// What runner tokens are derived from (see `domain::token`).
    token_key: Arc<TokenKey>,
}

impl Lifecycle {
    pub fn new(
        db: Db,
        backend: Arc<dyn RunnerBackend>,
        health: EngineHealth,
        metrics: Arc<Metrics>,
        heartbeats: Heartbeats,
        token_key: TokenKey,
    ) -> Self {
        Self {
            db,
            backend,
            health,
            metrics,
            heartbeats,
            locks: SessionLocks::default(),
            token_key: Arc::new(token_key),
        }
    }

    /// What runner tokens are derived from.
    pub fn token_key(&self) -> &TokenKey {
        &self.token_key
    }

    /// Serialises work on one session (or on the shared runner) with every
    /// request, sweep and reconcile touching it.
    pub async fn lock_session(&self, session_id: &str, kind: RunnerKind) -> SessionGuard {
        self.locks.lock(lock_key(session_id, kind)).await
    }

    /// Removes a runner, taking the session's lock so it cannot interleave
    /// with a request, and re-reading the row under it (the caller's copy may
    /// be stale).
    pub async fn remove(
        &self,
        row: &RunnerRow,
        removal: Removal<'_>,
    ) -> Result<RemovalOutcome, RunnerError> {
        let _guard = self.lock_session(&row.session_id, row.kind).await;
        match self.db.find(&row.session_id).await? {
            Some(current) => self.remove_locked(&current, removal).await,
            None => Ok(RemovalOutcome::Skipped),
        }
    }

    /// Removes a runner and its row; the caller holds the session's lock.
    pub(crate) async fn remove_locked(
        &self,
        row: &RunnerRow,
        removal: Removal<'_>,
    ) -> Result<RemovalOutcome, RunnerError> {
        // A heartbeat answered from memory since `stale_before` spares the
        // runner; otherwise later heartbeats wait for this lock.
        match removal.stale_before {
            Some(since) => {
                if !self
                    .heartbeats
                    .forget_unless_seen_since(&row.session_id, since)
                {
                    return Ok(RemovalOutcome::Skipped);
                }
            }
            None => self.heartbeats.forget(&row.session_id),
        }
        if !self
            .db
            .mark_removing(&row.session_id, removal.stale_before, Utc::now())
            .await?
        {
            return Ok(RemovalOutcome::Skipped);
        }
        let container = row.container_id.as_deref().unwrap_or(&row.container_name);
        self.finish_removal(
            &row.session_id,
            row.container_id.as_deref(),
            container,
            removal,
        )
        .await?;
        Ok(RemovalOutcome::Removed)
    }

    /// Removes a runner whose provision failed before it ran, by its
    /// container's name; the caller holds the session's lock.
    async fn remove_unstarted(
        &self,
        session_id: &str,
        container_name: &str,
        removal: Removal<'_>,
    ) -> Result<(), RunnerError> {
        self.db.mark_removing(session_id, None, Utc::now()).await?;
        self.finish_removal(session_id, None, container_name, removal)
            .await
    }

    /// The end of every row's removal, once the row is `removing`: the
    /// container goes, then the row with its audit line. On an engine
    /// failure the row stays `removing`, for the reaper to retry.
    async fn finish_removal(
        &self,
        session_id: &str,
        container_id: Option<&str>,
        container: &str,
        removal: Removal<'_>,
    ) -> Result<(), RunnerError> {
        self.remove_from_engine(container, removal.stop).await?;
        let entry = AuditEntry {
            session_id,
            container_id,
            actor: removal.actor,
            action: removal.action,
            reason: removal.reason,
        };
        self.db.delete(&entry, Utc::now()).await?;
        tracing::info!(session_id, actor = ?removal.actor, reason = removal.reason, "runner removed");
        self.count(&removal);
        Ok(())
    }

    /// Removes a container the reconciler found that nothing should run (a
    /// row's dead or duplicate container, an orphan). Its row, if any, is the
    /// caller's to drop or leave `removing` once this has said whether the
    /// engine removed it (a reconcile writes its row changes together).
    pub async fn remove_container(
        &self,
        container: &ObservedRunner,
        removal: Removal<'_>,
    ) -> Result<(), RunnerError> {
        self.remove_from_engine(&container.id, removal.stop).await?;
        tracing::info!(session_id = %container.session_id, container_id = %container.id,
            reason = removal.reason, "removed runner container");
        let entry = AuditEntry {
            session_id: &container.session_id,
            container_id: Some(&container.id),
            actor: removal.actor,
            action: removal.action,
            reason: removal.reason,
        };
        self.db.audit(&entry, Utc::now()).await?;
        self.count(&removal);
        Ok(())
    }

    /// The engine's part of every removal.
    async fn remove_from_engine(&self, container: &str, stop: Stop) -> Result<(), RunnerError> {
        self.backend
            .remove(container, stop)
            .await
            .map_err(|error| self.engine_failed(error))
    }

    /// Counts a finished removal in the metric its actor reports to.
    fn count(&self, removal: &Removal<'_>) {
        match removal.action {
            AuditAction::Reaped => self.metrics.reaped(),
            AuditAction::ContainerRemoved => self
                .metrics
                .reconcile_action(ReconcileAction::ContainerRemoved),
            _ => {}
        }
    }

    /// Engine errors pass through here so that an unreachable engine makes
    /// the following requests fail fast.
    fn engine_failed(&self, error: EngineError) -> RunnerError {
        if error.is_unavailable() {
            self.metrics.engine_error(EngineErrorKind::Unavailable);
            self.health.mark_unreachable();
        } else {
            self.metrics.engine_error(EngineErrorKind::Error);
        }
        error.into()
    }

    /// Admits a session whose row has just been recorded `running` into the
    /// set that answers heartbeats, with its gateway route; the caller holds
    /// the session's lock.
    pub fn track_running(&self, session_id: &str, kind: RunnerKind, route: Option<Route>) {
        self.heartbeats.admit(session_id, kind, Utc::now(), route);
    }

    /// Empties the running set, before a startup reconcile fills it with
    /// what it keeps and adopts.
    pub fn forget_all_running(&self) {
        self.heartbeats.replace_all(Vec::new(), Utc::now());
    }

    /// Called before a runner's row stops being `running`, so that its
    /// heartbeats answer that it has none.
    pub fn forget_heartbeats(&self, session_id: &str) {
        self.heartbeats.forget(session_id);
    }
}

/// The key of the lock that serialises work on a session's runner.
pub(crate) fn lock_key(session_id: &str, kind: RunnerKind) -> &str {
    match kind {
        RunnerKind::Singleton => SINGLETON_LOCK,
        RunnerKind::Session => session_id,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::backend::NetworkMode;
    use crate::db::RunnerState;
    use crate::domain::SessionId;
    use crate::reconcile::Action;
    use crate::test_support::Harness;

    async fn provision(harness: &Harness, session: &str) -> RunnerRow {
        let session = SessionId::parse(session).unwrap();
        harness
            .runners
            .provision(Some(session.clone()), &NetworkMode::Default)
            .await
            .unwrap();
        harness.db().find(session.as_str()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_reconciler_removal_the_engine_cannot_reach_marks_it_unreachable_and_keeps_the_row() {
        let harness = Harness::new(&[]).await;
        let row = provision(&harness, "s-1").await;
        let container = harness.backend.runners().remove(0);
        harness.backend.set_reachable(false);

        let actions = vec![
            Action::RemoveContainer {
                container,
                reason: "runner container is not running",
            },
            Action::DropRow {
                row,
                reason: "runner container is not running",
            },
        ];
        let summary = harness.reconciler().apply(actions).await;

        assert_eq!((summary.failed, summary.rows_dropped), (1, 0));
        assert!(!harness.service.health.is_reachable());
        let row = harness.db().find("s-1").await.unwrap().unwrap();
        assert_eq!(row.state, RunnerState::Removing);
        // The reaper finishes it once the engine is back.
        harness.backend.set_reachable(true);
        let outcome = harness
            .reaper(Duration::from_secs(60))
            .try_once(Utc::now())
            .await
            .unwrap();
        assert_eq!(outcome.reaped, 1);
        assert!(harness.db().find("s-1").await.unwrap().is_none());
        assert!(harness.backend.runners().is_empty());
    }

    #[tokio::test]
    async fn the_reaper_and_the_reconciler_count_their_removals() {
        let harness = Harness::new(&[]).await;
        provision(&harness, "idle").await;
        let orphan = provision(&harness, "orphan").await;
        let container = harness
            .backend
            .runners()
            .into_iter()
            .find(|runner| runner.session_id == orphan.session_id)
            .unwrap();
        let removal = Removal {
            actor: Actor::Reconciler,
            action: AuditAction::ContainerRemoved,
            reason: "test",
            stale_before: None,
            stop: Stop::Kill,
        };
        harness
            .service
            .lifecycle
            .remove_container(&container, removal)
            .await
            .unwrap();
        let outcome = harness
            .reaper(Duration::ZERO)
            .try_once(Utc::now() + chrono::Duration::seconds(1))
            .await
            .unwrap();
        assert_eq!(outcome.reaped, 2, "{outcome:?}");

        let text = harness.service.metrics.render(&[]);
        for expected in [
            "orchestrator_reaped_runners_total 2",
            "orchestrator_reconcile_actions_total{action=\"container_removed\"} 1",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
        let trail = harness.db().audit_trail("orphan").await.unwrap();
        let actions: Vec<&str> = trail.iter().map(|record| record.action.as_str()).collect();
        assert_eq!(actions, ["provisioned", "container_removed", "reaped"]);
    }

    #[tokio::test]
    async fn the_warm_pool_fills_through_the_provisioning_path() {
        let harness = Harness::new(&["--warm-pool-size=2"]).await;
        let started = harness
            .warm_pool()
            .try_once(&CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(started, 2);
        assert_eq!(harness.db().count_pooled().await.unwrap(), 2);
        assert_eq!(harness.backend.runners().len(), 2);
    }
}
