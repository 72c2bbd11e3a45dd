//! Notices runners that change behind the orchestrator's back while it
//! serves: the engine's event stream reports a runner dying, OOM-killed or
//! removed within moments, and a reconcile on a timer catches whatever the
//! stream missed (it is lost when the engine restarts, and the engine keeps
//! only its last 256 events).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use crate::backend::{RunnerBackend, RunnerEvent};
use crate::lifecycle::REMOVAL_CONCURRENCY;
use crate::reconcile::Reconciler;

/// Longest wait before reconnecting to the event stream.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct DriftWatcher {
    reconciler: Reconciler,
    /// Where the events come from.
    backend: Arc<dyn RunnerBackend>,
    interval: Duration,
    /// Seconds since the epoch from which events are wanted: the start of
    /// the startup reconcile, so that nothing after its look is missed.
    since: i64,
}

impl DriftWatcher {
    pub fn new(
        reconciler: Reconciler,
        backend: Arc<dyn RunnerBackend>,
        interval: Duration,
        since: i64,
    ) -> Self {
        Self {
            reconciler,
            backend,
            interval,
            since,
        }
    }

    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.reset();
        let mut backoff = Duration::from_secs(1);
        // Events are handled side by side (each under its session's lock),
        // so a burst of dying runners is repaired in parallel.
        let mut in_flight = FuturesUnordered::new();
        loop {
            let connected_at = tokio::time::Instant::now();
            let mut events = self.backend.events(self.since);
            let ended = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        // Repairs under way finish, as a reaper sweep does.
                        while in_flight.next().await.is_some() {}
                        return;
                    }
                    _ = ticks.tick() => self.reconcile().await,
                    Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                    event = events.next(), if in_flight.len() < REMOVAL_CONCURRENCY => match event {
                        Some(Ok(event)) => {
                            self.since = self.since.max(event.time);
                            in_flight.push(handle_event(self.reconciler.clone(), event));
                        }
                        Some(Err(error)) => break error.to_string(),
                        None => break "the engine closed it".to_owned(),
                    },
                }
            };
            if connected_at.elapsed() > MAX_BACKOFF {
                backoff = Duration::from_secs(1);
            }
            tracing::warn!(reason = %ended, retry_in = ?backoff, "runner event stream ended; reconnecting");
            // Not left paused (holding session locks) through the backoff.
            while in_flight.next().await.is_some() {}
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            // Events may have been missed while disconnected.
            self.reconcile().await;
        }
    }

    async fn reconcile(&self) {
        if let Err(error) = self.reconciler.run_drift().await {
            tracing::warn!(%error, "drift reconcile failed; retrying next interval");
        }
    }
}

async fn handle_event(reconciler: Reconciler, event: RunnerEvent) {
    if let Err(error) = reconciler.on_event(&event).await {
        tracing::warn!(%error, session_id = %event.session_id,
            "could not reconcile after a runner event; the timer will retry");
    }
}

/// Seconds since the epoch, as the engine's event filter wants them.
pub fn now_seconds() -> i64 {
    Utc::now().timestamp()
}
