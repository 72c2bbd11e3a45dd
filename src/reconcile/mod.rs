//! Reconciliation: makes the database and the engine agree. It runs once at
//! start, before the service accepts runner requests, and again while the
//! service runs: on a timer and for each engine event about a runner (died,
//! OOM-killed, removed behind the orchestrator's back).
//!
//! - [`plan`](plan::plan): a pure function of (rows, containers) that says
//!   what to do; keeping the decisions pure keeps every case unit-testable
//!   without Docker;
//! - `apply`: [`Reconciler`] does it, removing containers through the
//!   lifecycle's one removal path and writing its row changes together;
//! - `startup` and `drift`: the two drivers, at start and while serving.

mod apply;
mod drift;
mod plan;
mod startup;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use apply::Unwritten;
pub use plan::{Action, NODE_LOST, Purpose, plan};
pub use startup::Repairs;

use crate::backend::{EngineError, RunnerBackend};
use crate::config::OrphanPolicy;
use crate::db::{Db, DbError};
use crate::lifecycle::Lifecycle;
use crate::metrics::{Metrics, ReconcileAction};

/// Why a reconcile could not look at the engine or the database; what it
/// could not repair is counted in its [`Summary`](crate::domain::Summary) instead.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Unwritten(#[from] Unwritten),
}

/// What the reconciler uses: the records, the engine, the lifecycle's
/// removal path and session locks, and the metrics.
#[derive(Debug, Clone)]
pub struct Context {
    pub db: Db,
    pub backend: Arc<dyn RunnerBackend>,
    pub lifecycle: Lifecycle,
    pub metrics: Arc<Metrics>,
}

/// Applies plans under the same per-session locks as the API and the
/// reaper, removing containers through the same path.
#[derive(Debug, Clone)]
pub struct Reconciler {
    context: Context,
    policy: OrphanPolicy,
}

impl Reconciler {
    pub fn new(context: Context, policy: OrphanPolicy) -> Self {
        Self { context, policy }
    }

    fn db(&self) -> &Db {
        &self.context.db
    }

    fn backend(&self) -> &dyn RunnerBackend {
        &*self.context.backend
    }

    fn lifecycle(&self) -> &Lifecycle {
        &self.context.lifecycle
    }

    fn count(&self, action: ReconcileAction) {
        self.context.metrics.reconcile_action(action);
    }
}
