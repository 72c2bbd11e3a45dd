//! Removes runners whose clients stopped sending heartbeats, and finishes
//! removals that failed earlier.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};
use tokio_util::sync::CancellationToken;

use crate::backend::Stop;
use crate::db::{Actor, AuditAction, Db, DbError, RunnerState, timestamp};
use crate::heartbeats::HeartbeatWriter;
use crate::lifecycle::{Lifecycle, REMOVAL_CONCURRENCY, Removal, RemovalOutcome};
use crate::shutdown::Ticks;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReapOutcome {
    pub reaped: usize,
    /// A heartbeat arrived between the query and the removal.
    pub spared: usize,
    /// The engine or database failed; the row stays and is retried.
    pub failed: usize,
}

/// What the reaper uses: the rows to sweep, the heartbeats to write first,
/// and the lifecycle's removal path.
#[derive(Debug, Clone)]
pub struct Context {
    pub db: Db,
    pub heartbeats: HeartbeatWriter,
    pub lifecycle: Lifecycle,
}

/// When runners are reaped (`INACTIVITY_TIMEOUT_SECONDS`,
/// `CLEANUP_INTERVAL_SECONDS`, `MAX_RUNNER_AGE_SECONDS`).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub inactivity_timeout: Duration,
    pub interval: Duration,
    /// Removed however active once this old.
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Reaper {
    context: Context,
    schedule: Schedule,
}

impl Reaper {
    pub fn new(context: Context, schedule: Schedule) -> Self {
        Self { context, schedule }
    }

    /// Sweeps every `interval` until `shutdown` is cancelled. A sweep in
    /// progress finishes first, so no removal is cut in half.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        let mut ticks = Ticks::new(self.schedule.interval, shutdown);
        while ticks.next().await {
            match self.try_once(Utc::now()).await {
                Ok(outcome) if outcome != ReapOutcome::default() => {
                    tracing::info!(?outcome, "reaper sweep finished");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(%error, "reaper sweep failed; retrying next interval")
                }
            }
        }
        tracing::info!("reaper stopped");
    }

    /// One sweep as of `now`: removes every runner idle for longer than the
    /// inactivity timeout and retries unfinished removals. Heartbeats held
    /// in memory are written first; one arriving during the sweep spares its
    /// runner (see `Lifecycle::remove`).
    pub async fn try_once(&self, now: DateTime<Utc>) -> Result<ReapOutcome, DbError> {
        // Without it the sweep is still right (removals check the heartbeats
        // held in memory), only slower: it goes on to finish removals.
        if let Err(error) = self.context.heartbeats.flush().await {
            tracing::warn!(%error, "could not write heartbeats before the sweep");
        }
        let cutoff = now - self.schedule.inactivity_timeout;
        let max_age = self.schedule.max_age;
        let born_before = max_age.map(|age| timestamp(now - age));
        let mut outcome = ReapOutcome::default();
        let rows = self
            .context
            .db
            .reapable(cutoff, max_age.map(|age| now - age))
            .await?;
        // Removals run side by side: a sweep that finds many runners whose
        // stop takes its whole grace period still ends in seconds.
        let born_before = born_before.as_ref();
        let results: Vec<_> = stream::iter(rows)
            .map(|row| async move {
                let too_old = born_before.is_some_and(|born| row.created_at < *born);
                let (reason, stale_before) = match row.state {
                    RunnerState::Removing => ("finishing an earlier removal that failed", None),
                    _ if too_old => ("older than MAX_RUNNER_AGE_SECONDS", None),
                    _ => (
                        "no heartbeat within INACTIVITY_TIMEOUT_SECONDS",
                        Some(cutoff),
                    ),
                };
                let removal = Removal {
                    actor: Actor::Reaper,
                    action: AuditAction::Reaped,
                    reason,
                    stale_before,
                    stop: Stop::Graceful,
                };
                let result = self.context.lifecycle.remove(&row, removal).await;
                (row, reason, result)
            })
            .buffer_unordered(REMOVAL_CONCURRENCY)
            .collect()
            .await;
        for (row, reason, result) in results {
            match result {
                Ok(RemovalOutcome::Removed) => {
                    tracing::info!(session_id = %row.session_id, last_heartbeat = %row.last_heartbeat_at, reason, "reaped runner");
                    outcome.reaped += 1;
                }
                Ok(RemovalOutcome::Skipped) => outcome.spared += 1,
                Err(error) => {
                    tracing::warn!(session_id = %row.session_id, %error, "could not reap runner; will retry");
                    outcome.failed += 1;
                }
            }
        }
        Ok(outcome)
    }
}
