//! The fast tier's harness: the service's parts over the in-memory backend
//! and a fresh SQLite file, with no Docker Engine anywhere.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;

use crate::backend::memory::MemoryBackend;
use crate::config::Settings;
use crate::db::Db;
use crate::domain::Summary;
use crate::egress::MemoryFirewall;
use crate::lifecycle::Runners;
use crate::readiness::Readiness;
use crate::reaper::Reaper;
use crate::reconcile::Reconciler;
use crate::service::Service;
use crate::warm_pool::WarmPool;

/// The service's parts over a [`MemoryBackend`] and a database of their
/// own, which lives as long as this value.
pub struct Harness {
    /// The API's side of the lifecycle (provision, heartbeat, deprovision).
    pub runners: Runners,
    pub backend: Arc<MemoryBackend>,
    /// Where the egress rules go.
    pub firewall: MemoryFirewall,
    /// Every part, as the service wires them.
    pub service: Service,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// With the default settings plus `args` (flags, e.g. `--warm-pool-size=2`).
    pub async fn new(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("orchestrator.db").display());
        let settings = Settings::from_env_and_args(
            [
                "orchestrator",
                "--database-url",
                &url,
                "--orchestrator-id=fast-tier",
            ]
            .into_iter()
            .chain(args.iter().copied()),
        )
        .expect("valid settings");
        let db = Db::connect(&settings.database_url)
            .await
            .expect("the database");
        let backend = Arc::new(MemoryBackend::new());
        let firewall = MemoryFirewall::default();
        let token_key = crate::startup::token_key(&settings, &db).expect("the token key");
        let service = Service::new(
            db,
            backend.clone(),
            Arc::new(firewall.clone()),
            Arc::new(settings),
            token_key,
        );
        Self {
            runners: service.runners.clone(),
            backend,
            firewall,
            service,
            _dir: dir,
        }
    }

    pub fn db(&self) -> &Db {
        &self.service.db
    }

    /// The router of a service whose startup reconcile is done.
    pub fn router(&self) -> Router {
        let readiness = Readiness::default();
        readiness.ready(Summary::default());
        crate::http::router(&self.service, readiness)
    }

    /// A reaper to step with `try_once`, idle runners being those without a
    /// heartbeat for `inactivity_timeout`.
    pub fn reaper(&self, inactivity_timeout: Duration) -> Reaper {
        self.service
            .reaper_with(inactivity_timeout, Duration::from_secs(30))
    }

    /// The reconciler with the settings' `ORPHAN_POLICY`.
    pub fn reconciler(&self) -> Reconciler {
        self.service.reconciler()
    }

    /// The warm pool of the settings (`WARM_POOL_SIZE` and its bounds).
    pub fn warm_pool(&self) -> WarmPool {
        self.service.configured_warm_pool()
    }
}
