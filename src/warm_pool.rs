//! Keeps `WARM_POOL_SIZE` runners started ahead of demand, so a provision
//! without a session id answers without waiting for the engine.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::lifecycle::{RunnerError, Runners};

/// How often the pool is checked even when no claim woke it (a failed start
/// is retried, a reaped or died warm runner replaced).
const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What the warm pool uses: the rows it counts, the provisioning that starts
/// its runners, and the signal that one was claimed.
#[derive(Debug, Clone)]
pub struct Context {
    pub db: Db,
    pub runners: Runners,
    /// Notified whenever a warm runner is claimed.
    pub refill: Arc<Notify>,
}

#[derive(Debug, Clone)]
pub struct WarmPool {
    context: Context,
    size: u32,
}

impl WarmPool {
    pub fn new(context: Context, size: u32) -> Self {
        Self { context, size }
    }

    /// Keeps the pool full until shutdown (returns at once without a pool).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        if self.size == 0 {
            return;
        }
        loop {
            match self.try_once(&shutdown).await {
                Ok(started) if started > 0 => tracing::info!(started, "warm pool refilled"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "warm pool refill failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.context.refill.notified() => {}
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
        }
    }

    /// Starts runners until the pool is full, one at a time (a refill must
    /// not compete with clients' cold provisions for the engine), stopping
    /// early on shutdown or on the first failure.
    /// Returns how many runners it started.
    pub async fn try_once(&self, shutdown: &CancellationToken) -> Result<u32, RunnerError> {
        let mut started = 0;
        while !shutdown.is_cancelled()
            && self.context.db.count_pooled().await? < i64::from(self.size)
        {
            self.context.runners.start_warm().await?;
            started += 1;
        }
        Ok(started)
    }
}
