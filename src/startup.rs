//! Builds the service from its settings and runs it: the database (locked
//! and migrated) and the listener come first; runner requests are refused
//! with 503 until the startup reconcile has made the database and the engine
//! agree, which is retried with backoff while the engine is unreachable.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::{self, RunnerBackend};
use crate::backup::Backups;
use crate::config::{OrphanPolicy, Settings};
use crate::db::{Actor, AuditAction, AuditEntry, Db};
use crate::domain::Summary;
use crate::domain::token::TokenKey;
use crate::drift::{self, DriftWatcher};
use crate::egress::{self, Nft};
use crate::heartbeats::HeartbeatWriter;
use crate::keys;
use crate::lifecycle::Runners;
use crate::memory;
use crate::readiness::Readiness;
use crate::service::Service;
use crate::shutdown::Ticks;
use crate::supervise::Supervisor;

/// How often the engine is pinged, so requests fail fast while it is down.
const ENGINE_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait between two attempts of the startup reconcile.
const MAX_STARTUP_BACKOFF: Duration = Duration::from_secs(10);

pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    service: Service,
    readiness: Readiness,
}

impl Application {
    /// The service on the backend its settings name.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let backend = backend::from_settings(&settings)
            .context("cannot set up the runner backend (DOCKER_HOST, RUNNER_BACKEND)")?;
        Self::build_with_backend(settings, backend).await
    }

    /// The service on a given backend (the in-memory one in tests).
    pub async fn build_with_backend(
        mut settings: Settings,
        backend: Arc<dyn RunnerBackend>,
    ) -> anyhow::Result<Self> {
        let db = Db::connect(&settings.database_url).await?;
        let token_key = token_key(&settings, &db)?;
        let listener = TcpListener::bind((settings.listen_address, settings.port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}:{}",
                    settings.listen_address, settings.port
                )
            })?;
        let address = listener.local_addr()?;
        // Gateway endpoints name the port clients reach: a proxy's, else
        // the one bound (`PORT=0` picks it now).
        let public_port = &mut settings.access.gateway_public_port;
        public_port.get_or_insert(address.port());
        if settings.gateway_mode()
            && settings.runner_backend == crate::config::BackendKind::Docker
            && settings.runner_network().is_none()
        {
            tracing::warn!(
                "RUNNER_ACCESS=gateway without RUNNER_NETWORK: runners on the default bridge \
                 can reach one another's port directly; set RUNNER_NETWORK (see docs/settings.md)"
            );
        }
        Ok(Self {
            listener,
            address,
            service: Service::new(db, backend, Arc::new(Nft), Arc::new(settings), token_key),
            readiness: Readiness::default(),
        })
    }

    /// The bound port (the real one when `PORT=0`).
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests
    /// finish (for at most `SHUTDOWN_TIMEOUT_SECONDS`) and stops the
    /// background tasks. Runners are left running: the next start keeps them.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = Arc::clone(&self.service.settings);
        let supervisor = Supervisor::new(shutdown.clone(), self.readiness.clone());
        let mut workers = JoinSet::new();
        let health = self.service.health.clone();
        let stop = shutdown.clone();
        workers.spawn(supervisor.clone().run("engine health check", move || {
            health
                .clone()
                .monitor_until_stopped(ENGINE_HEALTH_INTERVAL, stop.clone())
        }));
        workers.spawn(run_background(
            self.service.clone(),
            supervisor.clone(),
            shutdown.clone(),
        ));
        // Heartbeats are written for as long as the server answers them.
        let server_stopped = CancellationToken::new();
        let (writer, stopped) = (self.service.heartbeats.clone(), server_stopped.clone());
        let flush_interval = settings.heartbeat_flush_interval;
        workers.spawn(supervisor.clone().run("heartbeat flusher", move || {
            flush_heartbeats_until_stopped(writer.clone(), flush_interval, stopped.clone())
        }));
        // A worker that cannot be kept running stops the service.
        let gave_up = supervisor.gave_up().clone();
        let stop = shutdown.clone();
        workers.spawn(async move {
            tokio::select! {
                () = gave_up.cancelled() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        });
        tracing::info!(address = %self.address, "listening");
        let front = crate::server::front(&self.service, self.readiness, shutdown.clone());
        // Request heads get REQUEST_TIMEOUT_SECONDS too (see `server::serve`).
        let server = crate::server::serve(
            self.listener,
            front,
            settings.request_timeout,
            shutdown.clone(),
        );
        let drain_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(settings.shutdown_timeout).await;
        };
        tokio::select! {
            () = server => {}
            () = drain_deadline => {
                tracing::warn!("requests still in flight after SHUTDOWN_TIMEOUT_SECONDS; exiting anyway");
            }
        }
        server_stopped.cancel();
        shutdown.cancel();
        // Every task is let finish (the flusher's last write among them)
        // before a failure of one is reported.
        let mut failure = None;
        while let Some(worker) = workers.join_next().await {
            if let Err(error) = worker {
                failure.get_or_insert(error);
            }
        }
        tracing::info!("stopped");
        if supervisor.gave_up().is_cancelled() {
            anyhow::bail!("a background worker could not be kept running (see the log)");
        }
        match failure {
            Some(error) => Err(error).context("background task failed"),
            None => Ok(()),
        }
    }
}

/// The key runner tokens are derived from: its file's (created if missing),
/// or one for this process only when the database is in memory.
pub fn token_key(settings: &Settings, db: &Db) -> anyhow::Result<TokenKey> {
    let explicit = settings.access.gateway_token_key_file.as_deref();
    match keys::key_path(explicit, db.path()) {
        Some(path) => Ok(keys::load_or_create(&path)?),
        None => Ok(TokenKey::generate()),
    }
}

/// Runs the startup reconcile until it succeeds, marks the service ready,
/// then runs the removals it left, the reaper, the warm pool and the drift
/// watcher until shutdown, each with only the parts it uses.
async fn run_background(service: Service, supervisor: Supervisor, shutdown: CancellationToken) {
    let readiness = supervisor.readiness().clone();
    let settings = Arc::clone(&service.settings);
    if !enforce_egress(&service, &readiness, &shutdown).await {
        return;
    }
    // A damaged database was moved aside: every runner is taken back from
    // the engine, whatever ORPHAN_POLICY says (removing them all would be
    // the damage's doing, not the operator's).
    let moved_aside = service.db.moved_aside().cloned();
    let reconciler = match &moved_aside {
        Some(_) => {
            if settings.orphan_policy == OrphanPolicy::Remove {
                tracing::warn!(
                    "ORPHAN_POLICY=remove is not applied to this start's reconcile: the database \
                     was rebuilt, so every running runner is adopted"
                );
            }
            service.reconciler_with(OrphanPolicy::Adopt)
        }
        None => service.reconciler(),
    };
    let events_since = drift::now_seconds();
    let mut backoff = Duration::from_millis(500);
    let (summary, repairs) = loop {
        match reconciler.run_startup().await {
            Ok(done) => break done,
            Err(error) => {
                let reason =
                    format!("startup reconcile failed ({error:#}); retrying in {backoff:?}");
                tracing::warn!("{reason}");
                readiness.waiting(reason);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_STARTUP_BACKOFF);
            }
        }
    };
    // What the reconcile held (every row and runner) goes back to the
    // system rather than staying the service's resident memory.
    memory::release_freed();
    // The reconcile just reached the engine: requests must not fail fast on
    // a stale "unreachable" from before it came back.
    service.health.mark_reachable();
    if let Some(moved) = &moved_aside {
        let reason = format!(
            "the database {} was damaged ({}) and moved aside to {}; rebuilt from the engine: \
             {summary}",
            moved.from.display(),
            moved.why,
            moved.to.display()
        );
        audit_rebuild(&service.db, &reason, summary).await;
    } else if service.db.created() && summary.adopted > 0 {
        let reason = format!(
            "the database {} did not exist; rebuilt from the engine: {summary}",
            settings.database_url
        );
        audit_rebuild(&service.db, &reason, summary).await;
    }
    readiness.ready(summary);
    tracing::info!(%summary, "ready");
    let first_checks = first_checks(&service.runners, &service.backend);
    let repair = async {
        let mut total = summary;
        total += repairs.run(&reconciler).await;
        tracing::info!(summary = %total, "startup repairs finished");
        readiness.repaired(total);
    };
    let warm_pool = service.configured_warm_pool();
    let reaper = service.reaper();
    let stop = shutdown.clone();
    let reaping = supervisor.supervise("reaper", move || {
        reaper.clone().run_until_stopped(stop.clone())
    });
    let stop = shutdown.clone();
    let warming = async {
        // With no pool there is nothing to keep running.
        if settings.warm_pool.enabled() {
            supervisor
                .supervise("warm pool", move || {
                    warm_pool.clone().run_until_stopped(stop.clone())
                })
                .await;
        }
    };
    // A drift watcher started again asks for the events from its
    // predecessor's start on, so that none is missed in between.
    let mut since = events_since;
    let interval = settings.reconcile_interval;
    let (watched, backend) = (service.reconciler(), Arc::clone(&service.backend));
    let (egress, guard_stop) = (service.egress.clone(), shutdown.clone());
    let stop_backups = shutdown.clone();
    let watching = supervisor.supervise("drift watcher", move || {
        let watcher = DriftWatcher::new(watched.clone(), backend.clone(), interval, since);
        since = drift::now_seconds();
        watcher.run_until_stopped(shutdown.clone())
    });
    let guarding = supervisor.supervise("egress guard", move || {
        egress
            .clone()
            .run_until_stopped(interval, guard_stop.clone())
    });
    let backing_up = async {
        // Periodic backups only when asked for (`BACKUP_INTERVAL_SECONDS`).
        if let (Some(interval), Some(dir)) = (
            settings.backup.backup_interval,
            settings.backup.backup_path.clone(),
        ) {
            let backups = Backups::new(
                service.db.clone(),
                dir,
                settings.backup.backup_keep,
                Arc::clone(&service.metrics),
            );
            let stop = stop_backups;
            supervisor
                .supervise("backups", move || {
                    backups.clone().run_until_stopped(interval, stop.clone())
                })
                .await;
        }
    };
    tokio::join!(
        first_checks,
        repair,
        reaping,
        warming,
        watching,
        guarding,
        backing_up
    );
}

/// Says in the log and the audit trail that the rows were rebuilt from the
/// engine, and from what.
async fn audit_rebuild(db: &Db, reason: &str, summary: Summary) {
    tracing::warn!(%summary, "rebuilt from the engine");
    let entry = AuditEntry {
        session_id: REBUILD_SUBJECT,
        container_id: None,
        actor: Actor::Reconciler,
        action: AuditAction::Rebuilt,
        reason,
    };
    if let Err(error) = db.audit(&entry, chrono::Utc::now()).await {
        tracing::warn!(%error, "could not write the rebuild's audit entry");
    }
}

/// The audit log's session column for a rebuild's entry.
pub const REBUILD_SUBJECT: &str = "(database)";

/// Installs the egress rules before any runner request is served (a runner
/// started before them would run open), retrying with backoff while they
/// cannot be: the service is then not ready, and says why. Under
/// `RUNNER_EGRESS=all` a failure only keeps provisions from narrowing it.
/// `false` if shutdown came first.
async fn enforce_egress(
    service: &Service,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) -> bool {
    let policy = service.settings.egress.runner_egress;
    if !policy.is_enforced() {
        tracing::warn!("{}", egress::ALL_WARNING);
    }
    let mut backoff = Duration::from_millis(500);
    loop {
        match service.egress.check().await {
            Ok(checked) => {
                tracing::info!(%policy, ?checked, "egress rules in place");
                return true;
            }
            Err(problem) if !policy.is_enforced() => {
                tracing::warn!("{problem} (provisions cannot narrow egress until this is fixed)");
                return true;
            }
            Err(problem) => {
                tracing::error!("{problem}; retrying in {backoff:?}");
                readiness.waiting(problem);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_STARTUP_BACKOFF);
    }
}

/// Asked right after ready, not before: `docker info` is slow on a busy
/// engine and nothing served needs it yet (a provision meanwhile waits for
/// the same answer). On failure the first provision asks again.
async fn first_checks(runners: &Runners, backend: &Arc<dyn RunnerBackend>) {
    if let Err(error) = runners.runner_limit().await {
        tracing::warn!(%error, "runner limit not known yet");
    }
    // A first run often lacks the image: say so now, not at the first
    // provision. The service stays up; `/readyz` names it until built.
    if let Ok(false) = backend.image_present().await {
        tracing::warn!("{}", backend.missing_image_hint());
    }
}

/// Writes the heartbeats held in memory every `interval` (see
/// `heartbeats`), and a last time once the server has stopped. Requests cut
/// off at the drain deadline may still answer heartbeats after that write;
/// like a crash, the next start's reconcile covers them.
async fn flush_heartbeats_until_stopped(
    heartbeats: HeartbeatWriter,
    interval: Duration,
    server_stopped: CancellationToken,
) {
    let mut ticks = Ticks::new(interval, server_stopped);
    while ticks.next().await {
        if let Err(error) = heartbeats.flush().await {
            tracing::warn!(%error, "could not write heartbeats; retrying next interval");
        }
    }
    match heartbeats.flush().await {
        Ok(written) => tracing::info!(written, "last heartbeats written"),
        Err(error) => tracing::error!(%error, "could not write the last heartbeats"),
    }
}
