//! How many runners the host may hold at once (`MAX_CONCURRENT_RUNNERS`).
//! By default (`auto`) the limit is derived from the memory the Docker
//! Engine reports, so that a host is protected without being configured;
//! a number overrides it, and 0 turns it off.

use tokio::sync::OnceCell;

use crate::backend::{EngineError, RunnerBackend};
use crate::config::{Admission, MaxRunners, RunnerLimits};
use crate::metrics::Metrics;

/// How many runners share one `RUNNER_MEMORY` of the host's memory under
/// `auto`. The setting is a ceiling for a snippet's peak, not what a runner
/// holds: the real runner (a Node.js server waiting for snippets) idles at
/// about a tenth of the default 512m, and only the sessions running a snippet
/// at that moment grow. Counting each runner at a quarter of its ceiling
/// admits a class of 100 on a 16 GiB host with the defaults, and still stops
/// long before idle runners alone could exhaust it.
pub const RUNNERS_PER_MEMORY_LIMIT: u64 = 4;

/// The `auto` limit: `floor(engine_memory × RUNNERS_PER_MEMORY_LIMIT /
/// runner_memory)`, at least 1 (0 would mean no limit at all).
pub fn derived_limit(engine_memory: u64, runner_memory: i64) -> u32 {
    let runner_memory = u64::try_from(runner_memory).unwrap_or(1).max(1);
    let runners = engine_memory.saturating_mul(RUNNERS_PER_MEMORY_LIMIT) / runner_memory;
    u32::try_from(runners).unwrap_or(u32::MAX).max(1)
}

/// The limit in force, known once the engine has been reached: set before
/// the service is ready, and read by every provision's claim (which checks
/// it atomically against the rows).
#[derive(Debug)]
pub struct RunnerLimit {
    setting: MaxRunners,
    runner_memory: i64,
    effective: OnceCell<u32>,
}

impl RunnerLimit {
    pub fn new(admission: &Admission, limits: &RunnerLimits) -> Self {
        Self {
            setting: admission.max_concurrent_runners,
            runner_memory: limits.runner_memory,
            effective: OnceCell::new(),
        }
    }

    /// The limit (0: none), asking the engine the first time under `auto`;
    /// logged and shown in the `orchestrator_runner_limit` gauge once known.
    pub async fn get(
        &self,
        backend: &dyn RunnerBackend,
        metrics: &Metrics,
    ) -> Result<u32, EngineError> {
        self.effective
            .get_or_try_init(|| async {
                let limit = match self.setting {
                    MaxRunners::Set(limit) => {
                        tracing::info!(limit, "runner limit set by MAX_CONCURRENT_RUNNERS");
                        limit
                    }
                    MaxRunners::Auto => {
                        let engine_memory = backend.memory_total().await?;
                        let limit = derived_limit(engine_memory, self.runner_memory);
                        tracing::info!(
                            limit,
                            engine_memory,
                            runner_memory = self.runner_memory,
                            per_memory_limit = RUNNERS_PER_MEMORY_LIMIT,
                            "runner limit derived from the engine's memory \
                             (MAX_CONCURRENT_RUNNERS=auto)"
                        );
                        limit
                    }
                };
                metrics.runner_limit(limit);
                Ok(limit)
            })
            .await
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: i64 = 1 << 20;

    #[test]
    fn four_runners_per_memory_limit_rounded_down() {
        assert_eq!(derived_limit(16 * GIB, 512 * MIB), 128);
        assert_eq!(derived_limit(4 * GIB, 512 * MIB), 32);
        // This machine's engine: 25,276,510,208 bytes (23.5 GiB).
        assert_eq!(derived_limit(25_276_510_208, 512 * MIB), 188);
        assert_eq!(derived_limit(24 * GIB, 8 * 1024 * MIB), 12);
        assert_eq!(derived_limit(10 * GIB, 16 * 1024 * MIB), 2);
    }

    #[test]
    fn a_class_of_100_fits_a_16_gib_host_with_the_defaults() {
        assert!(derived_limit(16 * GIB, 512 * MIB) >= 100);
        assert!(derived_limit(12 * GIB, 512 * MIB) < 100);
    }

    #[test]
    fn never_zero_which_would_mean_no_limit() {
        assert_eq!(derived_limit(GIB, 64 * 1024 * MIB), 1);
        assert_eq!(derived_limit(0, 512 * MIB), 1);
    }

    #[test]
    fn huge_hosts_saturate_instead_of_overflowing() {
        assert_eq!(derived_limit(u64::MAX, 6 * MIB), u32::MAX);
    }
}
