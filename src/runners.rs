//! The runner lifecycle: provision, heartbeat, deprovision, and the removal
//! that the reaper and reconciler share with deprovisioning.
//!
//! Order of writes, so that a crash between any two steps leaves something
//! the startup reconciler can repair:
//! provision: claim row (`provisioning`) → create + start container →
//! row `running`; deprovision and reaping: row `removing` → stop + remove
//! container → delete row. A row is deleted only once the engine confirmed
//! its container is gone.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::backend::health::EngineHealth;
use crate::backend::{EngineError, NetworkMode, RunnerBackend, RunnerSpec, Stop};
use crate::capacity::RunnerLimit;
use crate::config::Settings;
use crate::db::{Actor, AuditAction, AuditEntry, Claim, Db, NewRunner, RunnerRow, RunnerState};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

use crate::heartbeats::Heartbeats;
use crate::locks::{SessionGuard, SessionLocks};
use crate::metrics::Metrics;
use crate::session::{RunnerKind, SessionId};

/// The endpoint text for a runner without a published port (as the first
/// orchestrator answered).
pub const NO_ENDPOINT: &str = "N/A (isolated network or no ports mapped)";

/// How many runners are removed at once (startup repairs, drift, reaper):
/// enough that a backlog of dead containers clears in seconds, few enough
/// that the engine is not flooded.
pub const REMOVAL_CONCURRENCY: usize = 8;

/// The lock key of the shared runner; no session id can contain a NUL.
const SINGLETON_LOCK: &str = "\0singleton";

/// Most runner starts sent to the engine at once; further provisions wait
/// their turn here. The engine gains little from more in parallel on a small
/// host, and 100 at once (a class) made each of its calls slow enough to
/// reach the engine's request timeout on a busy 2-core machine.
const STARTS_AT_ONCE: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("no active runner for this session")]
    NotFound,
    #[error("no shared runner, or another session id")]
    SingletonMismatch,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("database error: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("MAX_CONCURRENT_RUNNERS reached")]
    LimitReached,
    #[error("operation panicked: {0}")]
    Panicked(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerInfo {
    pub session_id: String,
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    Created(RunnerInfo),
    /// A warm runner from the pool: new to the client, so answered as created.
    Claimed(RunnerInfo),
    Existing(RunnerInfo),
    ExistingSingleton(RunnerInfo),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    Session,
    Singleton,
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

#[derive(Debug, Clone)]
pub struct Runners {
    db: Db,
    backend: Arc<dyn RunnerBackend>,
    health: EngineHealth,
    /// Bounds the starts in flight (see `STARTS_AT_ONCE`).
    starts: Arc<Semaphore>,
    locks: SessionLocks,
    heartbeats: Heartbeats,
    /// Serialises heartbeat flushes (see `flush_heartbeats`).
    flushing: Arc<tokio::sync::Mutex<()>>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    warm_pool_refill: Arc<Notify>,
    runner_limit: Arc<RunnerLimit>,
}

impl Runners {
    pub fn new(db: Db, backend: Arc<dyn RunnerBackend>, settings: Arc<Settings>) -> Self {
        Self {
            db,
            health: EngineHealth::new(Arc::clone(&backend)),
            backend,
            starts: Arc::new(Semaphore::new(STARTS_AT_ONCE)),
            locks: SessionLocks::default(),
            heartbeats: Heartbeats::default(),
            flushing: Arc::default(),
            metrics: Metrics::shared(),
            warm_pool_refill: Arc::new(Notify::new()),
            runner_limit: Arc::new(RunnerLimit::new(&settings.admission, &settings.limits)),
            settings,
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn backend(&self) -> &Arc<dyn RunnerBackend> {
        &self.backend
    }

    pub fn health(&self) -> &EngineHealth {
        &self.health
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn settings_arc(&self) -> &Arc<Settings> {
        &self.settings
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Returns the session's runner, starting one if it has none. In
    /// `REUSE_RUNNER_MODE` every caller gets the one shared runner.
    pub async fn provision(
        &self,
        requested: Option<SessionId>,
        network_mode: &NetworkMode,
    ) -> Result<Provisioned, RunnerError> {
        let result = self.provision_uncounted(requested, network_mode).await;
        self.metrics.provision(match &result {
            Ok(Provisioned::Created(_)) => "created",
            Ok(Provisioned::Claimed(_)) => "warm",
            Ok(Provisioned::Existing(_) | Provisioned::ExistingSingleton(_)) => "existing",
            Err(RunnerError::Engine(EngineError::ImageNotFound(_))) => "image_not_found",
            Err(RunnerError::Engine(EngineError::Unavailable(_))) => "engine_unavailable",
            Err(RunnerError::LimitReached) => "limit_reached",
            Err(_) => "error",
        });
        result
    }

    async fn provision_uncounted(
        &self,
        requested: Option<SessionId>,
        network_mode: &NetworkMode,
    ) -> Result<Provisioned, RunnerError> {
        if !self.health.is_reachable() {
            return Err(EngineError::Unavailable(
                "the last health check could not reach it".to_owned(),
            )
            .into());
        }
        if self.settings.reuse_runner_mode {
            let _guard = self.locks.lock(SINGLETON_LOCK).await;
            if let Some(row) = self.usable(self.db.find_singleton().await?).await? {
                return Ok(Provisioned::ExistingSingleton(self.info(&row)));
            }
            let session = requested.unwrap_or_else(SessionId::generate);
            self.create(&session, RunnerKind::Singleton, network_mode, false)
                .await
        } else {
            // Warm runners sit on the default network: a request for
            // another takes the cold path.
            let poolable = requested.is_none() && *network_mode == NetworkMode::Default;
            if poolable
                && self.settings.warm_pool_size > 0
                && let Some(row) = self.db.claim_warm(Utc::now()).await?
            {
                self.warm_pool_refill.notify_one();
                // Its heartbeat clock starts now, in memory as in the row.
                self.heartbeats.record(&row.session_id, Utc::now());
                tracing::info!(session_id = %row.session_id, "warm runner claimed");
                return Ok(Provisioned::Claimed(self.info(&row)));
            }
            let session = requested.unwrap_or_else(SessionId::generate);
            let _guard = self.locks.lock(session.as_str()).await;
            if let Some(row) = self.usable(self.db.find(session.as_str()).await?).await? {
                return Ok(Provisioned::Existing(self.info(&row)));
            }
            self.create(&session, RunnerKind::Session, network_mode, false)
                .await
        }
    }

    /// Starts one runner for the warm pool under a generated session id.
    pub async fn start_warm(&self) -> Result<(), RunnerError> {
        let session = SessionId::generate();
        let _guard = self.locks.lock(session.as_str()).await;
        self.create(&session, RunnerKind::Session, &NetworkMode::Default, true)
            .await
            .map(drop)
    }

    /// The runner limit in force (0: none; see `capacity`), asking the engine
    /// the first time.
    pub async fn runner_limit(&self) -> Result<u32, RunnerError> {
        let limit = self.runner_limit.get(&*self.backend, &self.metrics).await;
        limit.map_err(|error| self.engine_failed(error))
    }

    /// Woken whenever a warm runner is claimed.
    pub fn warm_pool_refill(&self) -> &Notify {
        &self.warm_pool_refill
    }

    /// A running row is returned as is; a row left half-way (a removal that
    /// failed) is finished first so that a fresh runner can take its place.
    async fn usable(&self, row: Option<RunnerRow>) -> Result<Option<RunnerRow>, RunnerError> {
        match row {
            Some(row) if row.state == RunnerState::Running => Ok(Some(row)),
            Some(row) => {
                self.remove_locked(
                    &row,
                    Removal {
                        actor: Actor::Api,
                        action: AuditAction::Dropped,
                        reason: "unfinished runner replaced by a new provision",
                        stale_before: None,
                        // Nobody uses a runner that is not `running`.
                        stop: Stop::Kill,
                    },
                )
                .await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn create(
        &self,
        session: &SessionId,
        kind: RunnerKind,
        network_mode: &NetworkMode,
        pooled: bool,
    ) -> Result<Provisioned, RunnerError> {
        let container_name = session.container_name(&self.settings.orchestrator_id);
        // The row is claimed only once it is this start's turn, so that its
        // `updated_at` tells when its create went to the engine: a restart
        // waits for the engine to settle only for rows that young.
        let _turn = self.turn_to_start().await;
        let limit = self.runner_limit().await?;
        let claim = self
            .db
            .claim(
                &NewRunner {
                    session_id: session,
                    kind,
                    container_name: &container_name,
                    network_mode,
                    pooled,
                },
                limit,
                Utc::now(),
            )
            .await?;
        match claim {
            Claim::Claimed => {}
            // Only possible if a row appeared without taking the lock.
            Claim::Existing(row) => return Ok(Provisioned::Existing(self.info(&row))),
            Claim::LimitReached => return Err(RunnerError::LimitReached),
        }
        tracing::info!(session_id = %session, container = %container_name, "starting runner");
        let started_at = std::time::Instant::now();
        let spec = RunnerSpec {
            session_id: session.as_str(),
            name: &container_name,
            network_mode,
            kind,
            pooled,
        };
        let started = match self.backend.start(&spec).await {
            Ok(started) => started,
            Err(error) => {
                self.abandon(session, &container_name, &error.to_string())
                    .await;
                return Err(self.engine_failed(error));
            }
        };
        let recorded = self
            .db
            .mark_running(
                session.as_str(),
                &started.id,
                started.host_port,
                if pooled {
                    "warm pool refill"
                } else {
                    "provision request"
                },
                Utc::now(),
            )
            .await;
        if let Err(error) = recorded {
            self.abandon(session, &container_name, &error.to_string())
                .await;
            return Err(error.into());
        }
        self.track_running(session.as_str(), kind);
        tracing::info!(session_id = %session, container_id = %started.id,
            host_port = ?started.host_port, "runner provisioned");
        self.metrics.provision_duration(started_at.elapsed());
        Ok(Provisioned::Created(RunnerInfo {
            session_id: session.to_string(),
            endpoint: self.endpoint(started.host_port),
        }))
    }

    /// Waits for a turn to start a runner (see `STARTS_AT_ONCE`); the start
    /// is made while the permit is held.
    async fn turn_to_start(&self) -> SemaphorePermit<'_> {
        self.starts
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// Undoes a provision that failed half-way: removes whatever container
    /// may exist under the session's name, then the row. If the engine
    /// cannot confirm the removal, the row stays `removing` and the reaper
    /// retries; if the database fails, the reconciler finds the row.
    async fn abandon(&self, session: &SessionId, container_name: &str, reason: &str) {
        let undone = async {
            self.db
                .mark_removing(session.as_str(), None, Utc::now())
                .await?;
            // The container never served anyone: no grace period.
            self.backend.remove(container_name, Stop::Kill).await?;
            let entry = AuditEntry {
                session_id: session.as_str(),
                container_id: None,
                actor: Actor::Api,
                action: AuditAction::ProvisionFailed,
                reason,
            };
            self.db.delete(&entry, Utc::now()).await?;
            Ok::<_, RunnerError>(())
        };
        if let Err(error) = undone.await {
            tracing::error!(session_id = %session, %error, "could not undo a failed provision; left for the reaper");
        }
    }

    /// Engine errors pass through here so that an unreachable engine makes
    /// the following requests fail fast.
    fn engine_failed(&self, error: EngineError) -> RunnerError {
        self.metrics.engine_error(error.is_unavailable());
        if error.is_unavailable() {
            self.health.mark_unreachable();
        }
        error.into()
    }

    /// Answers a heartbeat from memory (see `heartbeats`): never a database
    /// read, for known and unknown sessions alike.
    pub fn heartbeat(&self, session: &SessionId) -> Result<Heartbeat, RunnerError> {
        let kind = self.heartbeats.record(session.as_str(), Utc::now());
        self.metrics.heartbeat(kind.is_some());
        match kind {
            Some(RunnerKind::Singleton) => Ok(Heartbeat::Singleton),
            Some(RunnerKind::Session) => Ok(Heartbeat::Session),
            None if self.settings.reuse_runner_mode => Err(RunnerError::SingletonMismatch),
            None => Err(RunnerError::NotFound),
        }
    }

    /// Admits a session whose row has just been recorded `running` into the
    /// set that answers heartbeats; the caller holds the session's lock.
    pub fn track_running(&self, session_id: &str, kind: RunnerKind) {
        self.heartbeats.admit(session_id, kind, Utc::now());
    }

    /// Replaces the set that answers heartbeats with the database's running
    /// rows, and returns how many there are. Called at start, once the
    /// startup reconcile has recorded what it keeps and before runner
    /// requests are served.
    pub async fn load_running(&self) -> Result<usize, RunnerError> {
        let running = self.db.running_sessions().await?;
        let count = running.len();
        self.heartbeats.replace_all(running, Utc::now());
        Ok(count)
    }

    /// Writes the heartbeats received since the last flush (see
    /// `heartbeats`) and returns how many; sessions whose runner went
    /// meanwhile are forgotten. One flush at a time, so that the reaper's
    /// flush returns only once every time taken before it is written.
    pub async fn flush_heartbeats(&self) -> Result<usize, RunnerError> {
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
        self.metrics.heartbeat_write(written.is_ok());
        match written {
            Ok(gone) => {
                for &position in &gone {
                    self.heartbeats.forget_gone(&batch[position]);
                }
                Ok(batch.len() - gone.len())
            }
            Err(error) => {
                self.heartbeats.unflushed_again(&batch);
                Err(error.into())
            }
        }
    }

    /// Called before a runner's row stops being `running`, so that its
    /// heartbeats answer that it has none.
    pub fn forget_heartbeats(&self, session_id: &str) {
        self.heartbeats.forget(session_id);
    }

    /// Stops and removes the session's runner. (`REUSE_RUNNER_MODE` never
    /// gets here: the API refuses deprovisioning in that mode.)
    pub async fn deprovision(&self, session: &SessionId) -> Result<(), RunnerError> {
        let _guard = self.locks.lock(session.as_str()).await;
        let row = self
            .db
            .find(session.as_str())
            .await?
            .ok_or(RunnerError::NotFound)?;
        tracing::info!(session_id = %session, "deprovisioning runner");
        let removal = Removal {
            actor: Actor::Api,
            action: AuditAction::Deprovisioned,
            reason: "deprovision request",
            stale_before: None,
            stop: Stop::Graceful,
        };
        match self.remove_locked(&row, removal).await? {
            RemovalOutcome::Removed => Ok(()),
            RemovalOutcome::Skipped => Err(RunnerError::NotFound),
        }
    }

    /// Serialises work on one session (or on the shared runner) with every
    /// request, sweep and reconcile touching it.
    pub async fn lock_session(&self, session_id: &str, kind: RunnerKind) -> SessionGuard {
        self.locks.lock(lock_key(session_id, kind)).await
    }

    /// Removes a runner on behalf of the reaper, taking the session's lock so
    /// it cannot interleave with a request, and re-reading the row under it
    /// (the caller's copy may be stale).
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

    async fn remove_locked(
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
        // On failure the row stays `removing`; the reaper retries it.
        self.backend
            .remove(container, removal.stop)
            .await
            .map_err(|error| self.engine_failed(error))?;
        self.db
            .delete(
                &AuditEntry {
                    session_id: &row.session_id,
                    container_id: row.container_id.as_deref(),
                    actor: removal.actor,
                    action: removal.action,
                    reason: removal.reason,
                },
                Utc::now(),
            )
            .await?;
        tracing::info!(session_id = %row.session_id, actor = ?removal.actor,
            reason = removal.reason, "runner removed");
        Ok(RemovalOutcome::Removed)
    }

    fn info(&self, row: &RunnerRow) -> RunnerInfo {
        RunnerInfo {
            session_id: row.session_id.clone(),
            endpoint: self.endpoint(row.host_port),
        }
    }

    fn endpoint(&self, host_port: Option<u16>) -> String {
        match host_port {
            Some(port) => self.settings.endpoint_for(port),
            None => NO_ENDPOINT.to_owned(),
        }
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
    use futures_util::StreamExt;

    use super::*;
    use crate::backend::memory;
    use crate::test_support::Harness;

    fn session(id: &str) -> SessionId {
        SessionId::parse(id).unwrap()
    }

    /// Provisions session `s-1` on the default network.
    async fn provision(runners: &Runners) -> Result<Provisioned, RunnerError> {
        runners
            .provision(Some(session("s-1")), &NetworkMode::Default)
            .await
    }

    #[tokio::test]
    async fn provision_heartbeat_deprovision_over_the_memory_backend() {
        let harness = Harness::new(&[]).await;
        let (runners, backend) = (&harness.runners, &harness.backend);
        let mut events = backend.events(0);

        let provisioned = provision(runners).await.unwrap();
        let Provisioned::Created(info) = provisioned else {
            panic!("expected a new runner, got {provisioned:?}")
        };
        let started = backend.runners();
        assert_eq!(started.len(), 1);
        assert!(started[0].running);
        let port = started[0].host_port.unwrap();
        assert_eq!(info.endpoint, format!("http://localhost:{port}"));
        let row = runners.db().find("s-1").await.unwrap().unwrap();
        assert_eq!(row.state, RunnerState::Running);
        assert_eq!(row.container_id.as_deref(), Some(started[0].id.as_str()));

        assert_eq!(
            runners.heartbeat(&session("s-1")).unwrap(),
            Heartbeat::Session
        );
        assert!(matches!(
            runners.heartbeat(&session("unknown")),
            Err(RunnerError::NotFound)
        ));
        let again = provision(runners).await.unwrap();
        assert_eq!(again, Provisioned::Existing(info));
        assert_eq!(backend.calls().start, 1);

        runners.deprovision(&session("s-1")).await.unwrap();
        assert!(backend.runners().is_empty());
        assert!(runners.db().find("s-1").await.unwrap().is_none());
        assert!(matches!(
            runners.heartbeat(&session("s-1")),
            Err(RunnerError::NotFound)
        ));
        let seen: Vec<String> = events
            .by_ref()
            .take(2)
            .map(|event| event.unwrap().description)
            .collect()
            .await;
        assert_eq!(seen, ["die (exit code 143)", "destroy"]);
    }

    #[tokio::test]
    async fn an_isolated_runner_has_no_endpoint() {
        let harness = Harness::new(&[]).await;
        let provisioned = harness
            .runners
            .provision(Some(session("s-1")), &NetworkMode::Isolated)
            .await
            .unwrap();
        let Provisioned::Created(info) = provisioned else {
            panic!("expected a new runner, got {provisioned:?}")
        };
        assert_eq!(info.endpoint, NO_ENDPOINT);
        let row = harness.runners.db().find("s-1").await.unwrap().unwrap();
        assert_eq!(row.network_mode, NetworkMode::Isolated);
    }

    #[tokio::test]
    async fn a_failed_start_leaves_no_row_and_an_unavailable_engine_fails_fast() {
        let harness = Harness::new(&[]).await;
        let (runners, backend) = (&harness.runners, &harness.backend);
        backend.fail_next_starts([memory::StartFailure::ImageMissing]);
        let failed = provision(runners).await;
        assert!(matches!(
            failed,
            Err(RunnerError::Engine(EngineError::ImageNotFound(_)))
        ));
        assert!(runners.db().find("s-1").await.unwrap().is_none());

        backend.fail_next_starts([memory::StartFailure::Unavailable]);
        let failed = provision(runners).await;
        assert!(matches!(
            failed,
            Err(RunnerError::Engine(EngineError::Unavailable(_)))
        ));
        assert!(!runners.health().is_reachable());
        // Refused without asking the engine until a health check reaches it.
        let before = backend.calls().start;
        assert!(provision(runners).await.is_err());
        assert_eq!(backend.calls().start, before);
        runners.health().ping().await.unwrap();
        provision(runners).await.unwrap();
    }
}
