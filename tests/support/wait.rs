//! Waiting for a condition instead of sleeping: the one way the API tests
//! and the benchmark wait for the service, the engine or the clock.

use std::time::{Duration, Instant};

/// How often a condition is looked at again; the poll's pace, not a guess
/// at how long anything takes.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it gives a value, looking once more at `limit`;
/// the error names `what` did not happen.
pub async fn poll_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("{what} did not happen within {limit:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
}
