//! Whether the engine is reachable, shared by every backend: requests fail
//! fast while it is down instead of each waiting for a timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{EngineError, RunnerBackend};
use crate::shutdown::Ticks;

/// How long a health check waits for the engine.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The reachable flag, kept current by pings and by the outcome of the
/// service's own engine requests.
#[derive(Debug, Clone)]
pub struct EngineHealth {
    backend: Arc<dyn RunnerBackend>,
    reachable: Arc<AtomicBool>,
}

impl EngineHealth {
    /// Assumes the engine is reachable until something says otherwise.
    pub fn new(backend: Arc<dyn RunnerBackend>) -> Self {
        Self {
            backend,
            reachable: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Asks the engine whether it is there (within `HEALTH_TIMEOUT`) and
    /// records the answer.
    pub async fn ping(&self) -> Result<(), EngineError> {
        let result = match tokio::time::timeout(HEALTH_TIMEOUT, self.backend.ping()).await {
            Ok(answer) => answer,
            Err(_) => Err(EngineError::Unavailable(
                "no answer to a ping within 2 s".to_owned(),
            )),
        };
        match &result {
            Ok(()) => self.mark_reachable(),
            Err(error) => self.set_unreachable(&error.to_string()),
        }
        result
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Called when a request has just reached the engine.
    pub fn mark_reachable(&self) {
        if !self.reachable.swap(true, Ordering::Relaxed) {
            tracing::info!("Docker Engine reachable again");
        }
    }

    /// Called when a request found the engine gone, so that the next ones
    /// fail fast until a health check reaches it again.
    pub fn mark_unreachable(&self) {
        self.set_unreachable("a request could not reach it");
    }

    fn set_unreachable(&self, error: &str) {
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(error, "Docker Engine unreachable");
        }
    }

    /// Pings the engine every `interval` until `shutdown`.
    pub async fn monitor_until_stopped(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = Ticks::new(interval, shutdown);
        while ticks.next().await {
            let _ = self.ping().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;

    #[tokio::test]
    async fn a_ping_records_whether_the_engine_answers() {
        let backend = Arc::new(MemoryBackend::new());
        let health = EngineHealth::new(backend.clone());
        backend.set_reachable(false);
        assert!(health.ping().await.unwrap_err().is_unavailable());
        assert!(!health.is_reachable());
        backend.set_reachable(true);
        health.ping().await.unwrap();
        assert!(health.is_reachable());
    }
}
