//! The service's parts, built once from its settings and wired together:
//! the one place that knows them all. The router and each background worker
//! are handed only the parts they use.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::backend::RunnerBackend;
use crate::backend::health::EngineHealth;
use crate::config::WarmPoolSize;
use crate::config::{OrphanPolicy, Settings};
use crate::db::Db;
use crate::domain::token::TokenKey;
use crate::egress::{Egress, Firewall};
use crate::heartbeats::{HeartbeatWriter, Heartbeats};
use crate::lifecycle::{Lifecycle, Runners};
use crate::metrics::Metrics;
use crate::reaper::{self, Reaper, Schedule};
use crate::reconcile::{self, Reconciler};
use crate::warm_pool::{self, Bounds, WarmPool};

#[derive(Debug, Clone)]
pub struct Service {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub backend: Arc<dyn RunnerBackend>,
    pub health: EngineHealth,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Lifecycle,
    pub runners: Runners,
    pub heartbeats: HeartbeatWriter,
    /// The egress rules of the runners' networks.
    pub egress: Egress,
    /// Notified whenever a warm runner is claimed.
    warm_pool_refill: Arc<Notify>,
}

impl Service {
    pub fn new(
        db: Db,
        backend: Arc<dyn RunnerBackend>,
        firewall: Arc<dyn Firewall>,
        settings: Arc<Settings>,
        token_key: TokenKey,
    ) -> Self {
        let health = EngineHealth::new(Arc::clone(&backend));
        let metrics = Metrics::shared();
        let egress = Egress::new(
            &settings,
            Arc::clone(&backend),
            firewall,
            Arc::clone(&metrics),
            Some(db.clone()),
        );
        let heartbeats = Heartbeats::default();
        let lifecycle = Lifecycle::new(
            db.clone(),
            Arc::clone(&backend),
            health.clone(),
            Arc::clone(&metrics),
            heartbeats.clone(),
            token_key,
        );
        let warm_pool_refill = Arc::new(Notify::new());
        let runners = Runners::new(
            lifecycle.clone(),
            Arc::clone(&settings),
            Arc::clone(&warm_pool_refill),
        );
        Self {
            heartbeats: HeartbeatWriter::new(heartbeats, db.clone(), Arc::clone(&metrics)),
            egress,
            settings,
            db,
            backend,
            health,
            metrics,
            lifecycle,
            runners,
            warm_pool_refill,
        }
    }

    /// The reaper with the settings' schedule.
    pub fn reaper(&self) -> Reaper {
        let settings = &self.settings;
        self.reaper_with(settings.inactivity_timeout, settings.cleanup_interval)
    }

    /// A reaper with its own timeout and interval (`MAX_RUNNER_AGE_SECONDS`
    /// from the settings), e.g. for a test that steps it.
    pub fn reaper_with(
        &self,
        inactivity_timeout: std::time::Duration,
        interval: std::time::Duration,
    ) -> Reaper {
        let context = reaper::Context {
            db: self.db.clone(),
            heartbeats: self.heartbeats.clone(),
            lifecycle: self.lifecycle.clone(),
        };
        Reaper::new(
            context,
            Schedule {
                inactivity_timeout,
                interval,
                max_age: self.settings.admission.max_runner_age,
            },
        )
    }

    /// The reconciler with the settings' `ORPHAN_POLICY`.
    pub fn reconciler(&self) -> Reconciler {
        self.reconciler_with(self.settings.orphan_policy)
    }

    /// A reconciler with its own orphan policy (e.g. for a test).
    pub fn reconciler_with(&self, policy: OrphanPolicy) -> Reconciler {
        let context = reconcile::Context {
            db: self.db.clone(),
            backend: Arc::clone(&self.backend),
            lifecycle: self.lifecycle.clone(),
            metrics: Arc::clone(&self.metrics),
        };
        Reconciler::new(context, policy)
    }

    /// Notified whenever a warm runner is claimed.
    pub fn warm_pool_refill(&self) -> &Notify {
        &self.warm_pool_refill
    }

    /// The warm pool of `size` runners.
    pub fn warm_pool(&self, size: u32) -> WarmPool {
        self.warm_pool_within(Bounds::fixed(size))
    }

    /// The warm pool of the settings: fixed, or sizing itself (`auto`).
    pub fn configured_warm_pool(&self) -> WarmPool {
        let settings = &self.settings.warm_pool;
        let (min, max) = settings.bounds();
        self.warm_pool_within(Bounds {
            min,
            max,
            quiet: match settings.warm_pool_size {
                WarmPoolSize::Auto => settings.warm_pool_quiet,
                WarmPoolSize::Fixed(_) => std::time::Duration::MAX,
            },
        })
    }

    /// A warm pool between these sizes.
    pub fn warm_pool_within(&self, bounds: Bounds) -> WarmPool {
        let context = warm_pool::Context {
            db: self.db.clone(),
            runners: self.runners.clone(),
            refill: Arc::clone(&self.warm_pool_refill),
            metrics: Arc::clone(&self.metrics),
        };
        WarmPool::new(context, bounds)
    }
}
