//! Whether the service may serve runner requests yet: only once the startup
//! reconcile has made the database and the engine agree.
//!
//! A runner request that arrives while that reconcile runs (it takes
//! milliseconds) waits for it rather than being refused: a restart is then
//! invisible to clients, who get their answer a few milliseconds late
//! instead of a 503. Once the reconcile has failed (the engine is down) or
//! a worker has given up, requests are refused at once with the reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::Summary;

/// What a runner request is told while the startup reconcile runs.
const RECONCILING: &str = "the startup reconcile is running";

/// How long a runner request waits for a startup reconcile that is running.
/// It takes milliseconds, or seconds on an engine with thousands of
/// containers; beyond this the request is answered 503 rather than held.
pub const RECONCILE_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The first startup reconcile is running: runner requests wait for it.
    Reconciling,
    /// Not serving runner requests; the text says what it is waiting for.
    Starting(String),
    Ready(Summary),
}

impl Phase {
    /// Why runner requests are not served, unless they are.
    pub fn not_ready(&self) -> Option<String> {
        match self {
            Phase::Reconciling => Some(RECONCILING.to_owned()),
            Phase::Starting(reason) => Some(reason.clone()),
            Phase::Ready(_) => None,
        }
    }
}

/// Shared by the startup task (which moves it forward), the HTTP layer
/// (which refuses runner requests until ready) and the background workers
/// (which wait for it).
#[derive(Debug, Clone)]
pub struct Readiness {
    phase: Arc<watch::Sender<Phase>>,
    /// Whether `phase` is `Ready`, for [`Readiness::admit`].
    ready: Arc<AtomicBool>,
    /// What the startup reconcile did in all, once the removals it left
    /// for after readiness are done too.
    repaired: Arc<watch::Sender<Option<Summary>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            phase: Arc::new(watch::Sender::new(Phase::Reconciling)),
            ready: Arc::new(AtomicBool::new(false)),
            repaired: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl Readiness {
    pub fn waiting(&self, reason: String) {
        self.ready.store(false, Ordering::Release);
        self.phase.send_replace(Phase::Starting(reason));
    }

    pub fn ready(&self, summary: Summary) {
        self.phase.send_replace(Phase::Ready(summary));
        self.ready.store(true, Ordering::Release);
    }

    /// The startup repairs are done; `total` counts them and what was done
    /// before readiness.
    pub fn repaired(&self, total: Summary) {
        self.repaired.send_replace(Some(total));
    }

    /// Resolves once the startup reconcile's removals are done too, with
    /// everything it did.
    pub async fn wait_repaired(&self) -> Summary {
        let mut receiver = self.repaired.subscribe();
        let total = receiver
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives as long as self");
        total.expect("waited for Some")
    }

    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// Whether a runner request may be served now, or once the startup
    /// reconcile running now is done (waiting at most `patience`);
    /// otherwise why not. Every runner request asks, on every worker: while
    /// ready, the answer is one load of a flag that no request writes,
    /// rather than the watch's lock (a write to memory that the workers
    /// share) and a copy of the phase.
    pub async fn admit(&self, patience: Duration) -> Result<(), String> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(refused) = self.admit_now() {
            return refused;
        }
        let mut receiver = self.phase.subscribe();
        let settled = receiver.wait_for(|phase| !matches!(phase, Phase::Reconciling));
        match tokio::time::timeout(patience, settled).await {
            Ok(Ok(phase)) => phase.not_ready().map_or(Ok(()), Err),
            Ok(Err(_)) => Err("the service is stopping".to_owned()),
            Err(_) => Err(format!("{RECONCILING} (waited {patience:?})")),
        }
    }

    /// [`Readiness::admit`] without waiting: `None` while reconciling.
    fn admit_now(&self) -> Option<Result<(), String>> {
        match &*self.phase.borrow() {
            Phase::Ready(_) => Some(Ok(())),
            Phase::Starting(reason) => Some(Err(reason.clone())),
            Phase::Reconciling => None,
        }
    }

    /// Resolves once ready, with what the startup reconcile did.
    pub async fn wait_ready(&self) -> Summary {
        let mut receiver = self.phase.subscribe();
        let phase = receiver
            .wait_for(|phase| matches!(phase, Phase::Ready(_)))
            .await
            .expect("the sender lives as long as self");
        match &*phase {
            Phase::Ready(summary) => *summary,
            Phase::Reconciling | Phase::Starting(_) => unreachable!("waited for Ready"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runner request's admission on a task of its own, once it waits.
    async fn a_request_waiting(
        readiness: &Readiness,
    ) -> tokio::task::JoinHandle<Result<(), String>> {
        let readiness = readiness.clone();
        let request = tokio::spawn(async move { readiness.admit(Duration::from_secs(60)).await });
        tokio::task::yield_now().await;
        request
    }

    #[tokio::test]
    async fn requests_wait_for_the_startup_reconcile_and_are_served_after_it() {
        let readiness = Readiness::default();
        let request = a_request_waiting(&readiness).await;
        assert!(!request.is_finished());
        readiness.ready(Summary::default());
        assert_eq!(request.await.unwrap(), Ok(()));
        assert_eq!(readiness.admit(Duration::ZERO).await, Ok(()));
    }

    #[tokio::test]
    async fn a_failed_startup_reconcile_refuses_waiting_and_new_requests() {
        let readiness = Readiness::default();
        let request = a_request_waiting(&readiness).await;
        readiness.waiting("engine down".to_owned());
        assert_eq!(request.await.unwrap(), Err("engine down".to_owned()));
        assert_eq!(
            readiness.admit(Duration::from_secs(60)).await,
            Err("engine down".to_owned())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_the_startup_reconcile_only_so_long() {
        let readiness = Readiness::default();
        let refused = readiness.admit(Duration::from_secs(2)).await.unwrap_err();
        assert!(refused.starts_with(RECONCILING), "{refused}");
        assert_eq!(readiness.phase().not_ready(), Some(RECONCILING.to_owned()));
    }

    #[tokio::test]
    async fn waiters_wake_when_ready() {
        let readiness = Readiness::default();
        assert_eq!(readiness.phase(), Phase::Reconciling);
        let waiter = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.wait_ready().await }
        });
        readiness.waiting("engine down".to_owned());
        let summary = Summary {
            kept: 2,
            ..Summary::default()
        };
        readiness.ready(summary);
        assert_eq!(readiness.admit(Duration::ZERO).await, Ok(()));
        assert_eq!(waiter.await.unwrap(), summary);
        let total = Summary {
            containers_removed: 3,
            ..summary
        };
        readiness.repaired(total);
        assert_eq!(readiness.wait_repaired().await, total);
        // A worker that gave up takes readiness back.
        readiness.waiting("a worker ended".to_owned());
        assert_eq!(
            readiness.admit(Duration::from_secs(60)).await,
            Err("a worker ended".to_owned())
        );
    }
}
