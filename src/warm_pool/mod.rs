//! Keeps runners started ahead of demand, so a provision without a session
//! id answers without waiting for the engine: `WARM_POOL_SIZE` of them, or,
//! under `auto`, as many as [`Sizer`] says from the claims and misses.

mod sizer;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::lifecycle::{RunnerError, Runners};
use crate::metrics::Metrics;

pub use sizer::{Demand, Resize, Sizer};

/// How often the pool is checked even when no claim woke it (a failed start
/// is retried, a reaped or died warm runner replaced, a quiet period seen).
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How long the pool waits after a claim woke it before it starts refills:
/// a class's burst of claims lands first (its marks are engine calls that
/// a refill's creates would slow), then one refill replaces them all. A
/// runner takes hundreds of milliseconds to start, so this delays the
/// refill by little.
const REFILL_SETTLE: Duration = Duration::from_millis(50);

/// What the warm pool uses: the rows it counts, the provisioning that starts
/// and retires its runners, and the signal that one was claimed or missed.
#[derive(Debug, Clone)]
pub struct Context {
    pub db: Db,
    pub runners: Runners,
    /// Notified whenever a warm runner is claimed, or a provision found none.
    pub refill: Arc<Notify>,
    pub metrics: Arc<Metrics>,
}

/// The sizes the pool may take: `min == max` for a fixed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
    /// Without demand this long, back to `min`.
    pub quiet: Duration,
}

impl Bounds {
    pub fn fixed(size: u32) -> Self {
        Self {
            min: size,
            max: size,
            quiet: Duration::MAX,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Step {
    pub target: u32,
    pub started: u32,
    pub retired: u32,
}

#[derive(Debug, Clone)]
pub struct WarmPool {
    context: Context,
    bounds: Bounds,
}

impl WarmPool {
    pub fn new(context: Context, bounds: Bounds) -> Self {
        Self { context, bounds }
    }

    /// A sizer for these bounds, starting now.
    pub fn sizer(&self) -> Sizer {
        Sizer::new(
            self.bounds.min,
            self.bounds.max,
            self.bounds.quiet,
            Instant::now(),
        )
    }

    /// Keeps the pool at its size until shutdown (returns at once without a
    /// pool).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        if self.bounds.max == 0 {
            return;
        }
        let mut sizer = self.sizer();
        loop {
            match self.step(&mut sizer, &shutdown).await {
                Ok(step) if step.started > 0 => {
                    tracing::info!(
                        started = step.started,
                        target = step.target,
                        "warm pool refilled"
                    );
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "warm pool refill failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.context.refill.notified() => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(REFILL_SETTLE) => {}
                    }
                }
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
        }
    }

    /// One look at the demand and the pool: the target updated (logged and
    /// counted when it changes), then runners started up to it, or waiting
    /// ones retired down to it.
    pub async fn step(
        &self,
        sizer: &mut Sizer,
        shutdown: &CancellationToken,
    ) -> Result<Step, RunnerError> {
        let demand = self.context.runners.warm_demand();
        if let Some(resize) = sizer.observe(demand, Instant::now()) {
            match resize {
                Resize::Grew { from, to, misses } => tracing::info!(
                    from,
                    to,
                    misses,
                    "warm pool grows: provisions without a session id found it empty"
                ),
                Resize::Shrank { from, to } => tracing::info!(
                    from,
                    to,
                    quiet_seconds = self.bounds.quiet.as_secs(),
                    "warm pool shrinks back to WARM_POOL_MIN after a quiet period"
                ),
            }
            self.context
                .metrics
                .warm_pool_resized(matches!(resize, Resize::Grew { .. }));
        }
        let target = sizer.target();
        self.context.metrics.warm_pool_target(target);
        let pooled = u32::try_from(self.context.db.count_pooled().await?).unwrap_or(u32::MAX);
        let mut step = Step {
            target,
            ..Step::default()
        };
        if pooled < target {
            step.started = self.fill(target - pooled, shutdown).await?;
        } else if pooled > target {
            for _ in target..pooled {
                if shutdown.is_cancelled() || !self.context.runners.retire_warm().await? {
                    break;
                }
                step.retired += 1;
            }
        }
        Ok(step)
    }

    /// Starts the pool's runners up to its target (its size, when fixed),
    /// stopping early on shutdown or on the first failure. Returns how many
    /// it started.
    pub async fn try_once(&self, shutdown: &CancellationToken) -> Result<u32, RunnerError> {
        let mut sizer = self.sizer();
        Ok(self.step(&mut sizer, shutdown).await?.started)
    }

    /// Starts `missing` runners at once: the start queue
    /// (`RUNNER_STARTS_AT_ONCE`) bounds how many reach the engine together,
    /// in turn with clients' cold provisions. Returns how many started, or
    /// the first failure.
    async fn fill(&self, missing: u32, shutdown: &CancellationToken) -> Result<u32, RunnerError> {
        if shutdown.is_cancelled() {
            return Ok(0);
        }
        let results =
            futures_util::future::join_all((0..missing).map(|_| self.context.runners.start_warm()))
                .await;
        let started = results.iter().filter(|result| result.is_ok()).count();
        match results.into_iter().find_map(Result::err) {
            Some(error) if started == 0 => Err(error),
            Some(error) => {
                tracing::warn!(%error, started, "some warm runners did not start");
                Ok(u32::try_from(started).unwrap_or(u32::MAX))
            }
            None => Ok(u32::try_from(started).unwrap_or(u32::MAX)),
        }
    }
}
