//! One cancellation token for the whole process, cancelled by SIGTERM or
//! SIGINT, shared by the HTTP server and the background tasks; and the
//! periodic tasks' ticks that end with it.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled on the first SIGTERM or SIGINT.
pub fn on_signal() -> std::io::Result<CancellationToken> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down: finishing in-flight requests; runners keep running"
        );
        cancel.cancel();
    });
    Ok(token)
}

/// The clock of the background tasks that work every `interval` until
/// stopped. A slow round delays the next tick instead of bunching the
/// missed ones.
pub struct Ticks {
    ticks: Interval,
    stop: CancellationToken,
}

impl Ticks {
    pub fn new(interval: Duration, stop: CancellationToken) -> Self {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { ticks, stop }
    }

    /// Waits for the next tick (the first is at once); `false` once stopped.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = self.ticks.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_until_stopped() {
        let stop = CancellationToken::new();
        let mut ticks = Ticks::new(Duration::from_millis(10), stop.clone());
        assert!(ticks.next().await, "the first tick is at once");
        assert!(ticks.next().await, "then one every interval");
        stop.cancel();
        assert!(!ticks.next().await);
    }
}
