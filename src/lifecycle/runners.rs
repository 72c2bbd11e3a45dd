//! Provision, heartbeat and deprovision: the lifecycle as the API drives it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::Utc;
use tokio::sync::Notify;

mod warm;

pub use warm::WarmDemand;

use super::start_queue::{StartQueue, StartTurn};
use super::{Lifecycle, Removal, RemovalOutcome, RunnerError, SINGLETON_LOCK};
use crate::backend::{EngineError, NetworkMode, RunnerSpec, Stop};
use crate::capacity::RunnerLimit;
use crate::config::Settings;
use crate::db::{Actor, AuditAction, Claim, NewRunner, RunnerRow, RunnerState};
use crate::domain::Route;
use crate::domain::{RunnerKind, SessionId};
use crate::metrics::{HeartbeatResult, ProvisionResult};

/// The endpoint text for a runner without a published port (as the first
/// orchestrator answered).
pub const NO_ENDPOINT: &str = "N/A (isolated network or no ports mapped)";

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

/// The API's side of the lifecycle. The clones the handlers share sit
/// behind one `Arc` (a clone of this copies strings of its settings).
#[derive(Debug, Clone)]
pub struct Runners {
    lifecycle: Lifecycle,
    /// Bounds the starts in flight (`RUNNER_STARTS_AT_ONCE`), in arrival order.
    starts: Arc<StartQueue>,
    settings: Arc<Settings>,
    /// Woken whenever a warm runner is claimed.
    warm_pool_refill: Arc<Notify>,
    runner_limit: Arc<RunnerLimit>,
    /// Held while a batch of warm runners is picked for claims (or one
    /// for retiring).
    picking: Arc<tokio::sync::Mutex<()>>,
    /// The warm runners being claimed, and those claimed since the last pick.
    claims: Arc<std::sync::Mutex<warm::Claims>>,
    /// Provisions without a session id that got a warm runner, and those
    /// that found none, since start (what an `auto` pool sizes itself by).
    demand: Arc<warm::DemandCounters>,
}

impl Runners {
    pub fn new(
        lifecycle: Lifecycle,
        settings: Arc<Settings>,
        warm_pool_refill: Arc<Notify>,
    ) -> Self {
        let starts = Arc::new(StartQueue::new(
            settings.admission.runner_starts_at_once,
            lifecycle.metrics.clone(),
        ));
        Self {
            lifecycle,
            starts,
            warm_pool_refill,
            runner_limit: Arc::new(RunnerLimit::new(&settings.admission, &settings.limits)),
            picking: Arc::default(),
            claims: Arc::default(),
            demand: Arc::default(),
            settings,
        }
    }

    /// Returns the session's runner, starting one if it has none. In
    /// `REUSE_RUNNER_MODE` every caller gets the one shared runner.
    pub async fn provision(
        &self,
        requested: Option<SessionId>,
        network_mode: &NetworkMode,
    ) -> Result<Provisioned, RunnerError> {
        let result = self.provision_uncounted(requested, network_mode).await;
        self.lifecycle.metrics.provision(match &result {
            Ok(Provisioned::Created(_)) => ProvisionResult::Created,
            Ok(Provisioned::Claimed(_)) => ProvisionResult::Warm,
            Ok(Provisioned::Existing(_) | Provisioned::ExistingSingleton(_)) => {
                ProvisionResult::Existing
            }
            Err(RunnerError::Engine(EngineError::ImageNotFound(_))) => {
                ProvisionResult::ImageNotFound
            }
            Err(RunnerError::Engine(EngineError::Unavailable(_))) => {
                ProvisionResult::EngineUnavailable
            }
            Err(RunnerError::LimitReached) => ProvisionResult::LimitReached,
            Err(_) => ProvisionResult::Error,
        });
        result
    }

    async fn provision_uncounted(
        &self,
        requested: Option<SessionId>,
        network_mode: &NetworkMode,
    ) -> Result<Provisioned, RunnerError> {
        if !self.lifecycle.health.is_reachable() {
            return Err(EngineError::Unavailable(
                "the last health check could not reach it".to_owned(),
            )
            .into());
        }
        if self.settings.reuse_runner_mode {
            let _guard = self.lifecycle.locks.lock(SINGLETON_LOCK).await;
            if let Some(row) = self
                .usable(self.lifecycle.db.find_singleton().await?)
                .await?
            {
                return Ok(Provisioned::ExistingSingleton(self.info(&row)));
            }
            let session = requested.unwrap_or_else(SessionId::generate);
            self.create(&session, RunnerKind::Singleton, network_mode, false)
                .await
        } else {
            // Warm runners sit on the default network: a request for
            // another takes the cold path.
            let poolable = requested.is_none()
                && *network_mode == NetworkMode::Default
                && self.settings.warm_pool.enabled();
            let claimed = if poolable {
                self.claim_warm().await
            } else {
                None
            };
            if poolable {
                // Claimed or missed, the pool looks again (and, sizing
                // itself, counts the miss).
                let counter = if claimed.is_some() {
                    &self.demand.claims
                } else {
                    &self.demand.misses
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.warm_pool_refill.notify_one();
            }
            if let Some(row) = claimed {
                // Its heartbeat clock starts now, in memory as in the row.
                self.lifecycle
                    .heartbeats
                    .record(&row.session_id, Utc::now());
                tracing::info!(session_id = %row.session_id, "warm runner claimed");
                return Ok(Provisioned::Claimed(self.info(&row)));
            }
            let session = requested.unwrap_or_else(SessionId::generate);
            let _guard = self.lifecycle.locks.lock(session.as_str()).await;
            if let Some(row) = self
                .usable(self.lifecycle.db.find(session.as_str()).await?)
                .await?
            {
                return Ok(Provisioned::Existing(self.info(&row)));
            }
            self.create(&session, RunnerKind::Session, network_mode, false)
                .await
        }
    }

    /// Starts one runner for the warm pool under a generated session id.
    pub async fn start_warm(&self) -> Result<(), RunnerError> {
        let session = SessionId::generate();
        let _guard = self.lifecycle.locks.lock(session.as_str()).await;
        self.create(&session, RunnerKind::Session, &NetworkMode::Default, true)
            .await
            .map(drop)
    }

    /// The runner limit in force (0: none; see `capacity`), asking the engine
    /// the first time.
    pub async fn runner_limit(&self) -> Result<u32, RunnerError> {
        let limit = self
            .runner_limit
            .get(&*self.lifecycle.backend, &self.lifecycle.metrics)
            .await;
        limit.map_err(|error| self.lifecycle.engine_failed(error))
    }

    /// A running row is returned as is; a row left half-way (a removal that
    /// failed) is finished first so that a fresh runner can take its place.
    async fn usable(&self, row: Option<RunnerRow>) -> Result<Option<RunnerRow>, RunnerError> {
        match row {
            Some(row) if row.state == RunnerState::Running => Ok(Some(row)),
            Some(row) => {
                self.lifecycle
                    .remove_locked(
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
        let (token, token_labels) = self.lifecycle.token_key.issue();
        let claim = self
            .lifecycle
            .db
            .claim(
                &NewRunner {
                    session_id: session,
                    kind,
                    container_name: &container_name,
                    network_mode,
                    pooled,
                    token: &token,
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
            token: Some(&token_labels),
        };
        let started = match self.lifecycle.backend.start(&spec).await {
            Ok(started) => started,
            Err(error) => {
                self.abandon(session, &container_name, &error.to_string())
                    .await;
                return Err(self.lifecycle.engine_failed(error));
            }
        };
        let recorded = self
            .lifecycle
            .db
            .mark_running(
                session.as_str(),
                &started,
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
        let node_host = started.node.as_ref().map(|node| node.host.as_str());
        let endpoint = self.endpoint(started.host_port, node_host, &token);
        let route = Route::of(
            vec![token_labels.sha256],
            started.host_port,
            node_host,
            started.address.as_deref(),
        );
        self.lifecycle.track_running(session.as_str(), kind, route);
        tracing::info!(session_id = %session, container_id = %started.id,
            host_port = ?started.host_port, "runner provisioned");
        self.lifecycle
            .metrics
            .provision_duration(started_at.elapsed());
        Ok(Provisioned::Created(RunnerInfo {
            session_id: session.to_string(),
            endpoint,
        }))
    }

    /// Waits for a turn to start a runner, behind the starts that asked
    /// before; the start is made while the turn is held.
    async fn turn_to_start(&self) -> StartTurn<'_> {
        self.starts.turn().await
    }

    /// The queue of starts toward the engine.
    pub fn starts(&self) -> &StartQueue {
        &self.starts
    }

    /// Undoes a provision that failed half-way through the removal path:
    /// removes whatever container may exist under the session's name, then
    /// the row. If the engine cannot confirm the removal, the row stays
    /// `removing` and the reaper retries; if the database fails, the
    /// reconciler finds the row.
    async fn abandon(&self, session: &SessionId, container_name: &str, reason: &str) {
        let removal = Removal {
            actor: Actor::Api,
            action: AuditAction::ProvisionFailed,
            reason,
            stale_before: None,
            // The container never served anyone: no grace period.
            stop: Stop::Kill,
        };
        let undone = self
            .lifecycle
            .remove_unstarted(session.as_str(), container_name, removal)
            .await;
        if let Err(error) = undone {
            tracing::error!(session_id = %session, %error, "could not undo a failed provision; left for the reaper");
        }
    }

    /// Answers a heartbeat from memory (see `heartbeats`): never a database
    /// read, for known and unknown sessions alike.
    pub fn heartbeat(&self, session: &SessionId) -> Result<Heartbeat, RunnerError> {
        let kind = self
            .lifecycle
            .heartbeats
            .record(session.as_str(), Utc::now());
        self.lifecycle.metrics.heartbeat(match kind {
            Some(_) => HeartbeatResult::Ok,
            None => HeartbeatResult::NotFound,
        });
        match kind {
            Some(RunnerKind::Singleton) => Ok(Heartbeat::Singleton),
            Some(RunnerKind::Session) => Ok(Heartbeat::Session),
            None if self.settings.reuse_runner_mode => Err(RunnerError::SingletonMismatch),
            None => Err(RunnerError::NotFound),
        }
    }

    /// Stops and removes the session's runner. (`REUSE_RUNNER_MODE` never
    /// gets here: the API refuses deprovisioning in that mode.)
    pub async fn deprovision(&self, session: &SessionId) -> Result<(), RunnerError> {
        let _guard = self.lifecycle.locks.lock(session.as_str()).await;
        let row = self
            .lifecycle
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
        match self.lifecycle.remove_locked(&row, removal).await? {
            RemovalOutcome::Removed => Ok(()),
            RemovalOutcome::Skipped => Err(RunnerError::NotFound),
        }
    }

    fn info(&self, row: &RunnerRow) -> RunnerInfo {
        RunnerInfo {
            session_id: row.session_id.clone(),
            endpoint: self.endpoint(row.host_port, row.node_host.as_deref(), &row.token),
        }
    }

    /// Through the gateway in its mode; else on the node's host for a runner
    /// on a Swarm node, else on `RUNNERS_HOST`.
    fn endpoint(&self, host_port: Option<u16>, node_host: Option<&str>, token: &str) -> String {
        match (host_port, node_host) {
            (Some(_), _) if self.settings.gateway_mode() => self.settings.gateway_endpoint(token),
            (Some(port), Some(host)) => self.settings.endpoint_on(host, port),
            (Some(port), None) => self.settings.endpoint_for(port),
            (None, _) => NO_ENDPOINT.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::backend::{RunnerBackend, memory};
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
        let row = harness.db().find("s-1").await.unwrap().unwrap();
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
        assert!(harness.db().find("s-1").await.unwrap().is_none());
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
        let row = harness.db().find("s-1").await.unwrap().unwrap();
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
        assert!(harness.db().find("s-1").await.unwrap().is_none());

        backend.fail_next_starts([memory::StartFailure::Unavailable]);
        let failed = provision(runners).await;
        assert!(matches!(
            failed,
            Err(RunnerError::Engine(EngineError::Unavailable(_)))
        ));
        assert!(!harness.service.health.is_reachable());
        // Refused without asking the engine until a health check reaches it.
        let before = backend.calls().start;
        assert!(provision(runners).await.is_err());
        assert_eq!(backend.calls().start, before);
        harness.service.health.ping().await.unwrap();
        provision(runners).await.unwrap();
    }
}
