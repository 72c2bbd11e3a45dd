//! Whether the service may serve runner requests yet: only once the startup
//! reconcile has made the database and the engine agree.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::reconcile::Summary;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not reconciled yet; the text says what it is waiting for.
    Starting(String),
    Ready(Summary),
}

/// Shared by the startup task (which moves it forward), the HTTP layer
/// (which refuses runner requests until ready) and the background workers
/// (which wait for it).
#[derive(Debug, Clone)]
pub struct Readiness {
    phase: Arc<watch::Sender<Phase>>,
    /// Whether `phase` is `Ready`, for [`Readiness::not_ready`].
    ready: Arc<AtomicBool>,
    /// What the startup reconcile did in all, once the removals it left
    /// for after readiness are done too.
    repaired: Arc<watch::Sender<Option<Summary>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            phase: Arc::new(watch::Sender::new(Phase::Starting(
                "the startup reconcile has not run yet".to_owned(),
            ))),
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

    /// Why the service is not ready yet, `None` once it is. Every runner
    /// request asks, on every worker: while ready, the answer is one load of
    /// a flag that no request writes, rather than the watch's lock (a write
    /// to memory that the workers share) and a copy of the phase.
    pub fn not_ready(&self) -> Option<String> {
        if self.ready.load(Ordering::Acquire) {
            return None;
        }
        match &*self.phase.borrow() {
            Phase::Starting(reason) => Some(reason.clone()),
            Phase::Ready(_) => None,
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
            Phase::Starting(_) => unreachable!("waited for Ready"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_ready() {
        let readiness = Readiness::default();
        assert!(matches!(readiness.phase(), Phase::Starting(_)));
        assert!(readiness.not_ready().is_some());
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
        assert_eq!(readiness.not_ready(), None);
        assert_eq!(waiter.await.unwrap(), summary);
        let total = Summary {
            containers_removed: 3,
            ..summary
        };
        readiness.repaired(total);
        assert_eq!(readiness.wait_repaired().await, total);
        readiness.waiting("a worker ended".to_owned());
        assert_eq!(readiness.not_ready().as_deref(), Some("a worker ended"));
    }
}
