//! Keeps the background workers (reaper, warm pool, drift watcher, heartbeat
//! flusher, engine health check) running. A worker that panics or ends
//! before shutdown is logged and started again with backoff, so that one
//! failure never silently stops reaping while the API keeps serving. A
//! worker that keeps failing makes `/readyz` fail, then stops the service
//! with a non-zero exit, for its supervisor (compose, systemd) to restart.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::readiness::Readiness;

/// First wait before a failed worker is started again; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two starts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Failures in a row (each within `STABLE_AFTER` of its start) after which
/// the service gives up on a worker.
pub const MAX_FAILURES: u32 = 5;
/// A worker that ran this long before failing starts a fresh count.
const STABLE_AFTER: Duration = Duration::from_secs(300);

/// What supervised workers share: the service's shutdown, its readiness,
/// and the token a worker that cannot be kept running cancels.
#[derive(Debug, Clone)]
pub struct Supervisor {
    shutdown: CancellationToken,
    readiness: Readiness,
    gave_up: CancellationToken,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken, readiness: Readiness) -> Self {
        Self {
            shutdown,
            readiness,
            gave_up: CancellationToken::new(),
        }
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// [`Supervisor::supervise`] as an owned future, for a task of its own.
    pub async fn run<F, Fut>(self, name: &'static str, start: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.supervise(name, start).await
    }

    /// Cancelled once a worker could not be kept running.
    pub fn gave_up(&self) -> &CancellationToken {
        &self.gave_up
    }

    /// Runs `start()` on a task of its own until shutdown, starting it again
    /// whenever it panics or returns early. Returns at shutdown, or once
    /// `MAX_FAILURES` failures in a row made it give up.
    pub async fn supervise<F, Fut>(&self, name: &'static str, mut start: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut failures = 0;
        loop {
            let started = Instant::now();
            let outcome = tokio::spawn(start()).await;
            if self.shutdown.is_cancelled() {
                return;
            }
            let why = match outcome {
                Ok(()) => "ended before shutdown".to_owned(),
                Err(error) if error.is_panic() => {
                    format!("panicked: {}", panic_message(error.into_panic()))
                }
                Err(error) => format!("was cancelled: {error}"),
            };
            if started.elapsed() >= STABLE_AFTER {
                failures = 0;
                backoff = FIRST_BACKOFF;
            }
            failures += 1;
            if failures >= MAX_FAILURES {
                let reason = format!(
                    "the {name} worker {why}, {failures} times in a row; stopping the service"
                );
                tracing::error!(worker = name, "{reason}");
                self.readiness.waiting(reason);
                self.gave_up.cancel();
                return;
            }
            tracing::error!(worker = name, %why, retry_in = ?backoff, "background worker failed; starting it again");
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::readiness::Phase;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_worker_is_started_again() {
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor::new(shutdown.clone(), Readiness::default());
        let starts = Arc::new(AtomicU32::new(0));
        let supervised = tokio::spawn({
            let supervisor = supervisor.clone();
            let starts = starts.clone();
            async move {
                supervisor
                    .supervise("test", move || {
                        let start = starts.fetch_add(1, Ordering::SeqCst);
                        let shutdown = shutdown.clone();
                        async move {
                            assert!(start > 0, "injected failure");
                            shutdown.cancelled().await;
                        }
                    })
                    .await
            }
        });
        while starts.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!supervisor.gave_up().is_cancelled());
        supervisor.shutdown.cancel();
        supervised.await.unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_keeps_failing_makes_the_service_unready_and_stop() {
        let readiness = Readiness::default();
        readiness.ready(crate::domain::Summary::default());
        let supervisor = Supervisor::new(CancellationToken::new(), readiness.clone());
        let starts = Arc::new(AtomicU32::new(0));

        let counted = starts.clone();
        supervisor
            .supervise("reaper", move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async {}
            })
            .await;

        assert_eq!(starts.load(Ordering::SeqCst), MAX_FAILURES);
        assert!(supervisor.gave_up().is_cancelled());
        assert!(
            matches!(readiness.phase(), Phase::Starting(reason) if reason.contains("reaper worker ended before shutdown")),
            "{:?}",
            readiness.phase()
        );
    }
}
