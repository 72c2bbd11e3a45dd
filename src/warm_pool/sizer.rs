//! How many warm runners the pool keeps now. Fixed (`WARM_POOL_SIZE=N`):
//! always N. `auto`: it starts at `WARM_POOL_MIN`; every provision without a
//! session id that found no waiting runner (a miss: that browser waited for
//! a cold start) adds one, up to `WARM_POOL_MAX`; after
//! `WARM_POOL_QUIET_SECONDS` without a claim or a miss it goes back to the
//! minimum. The pool then starts or retires runners to match. Pure: the
//! clock and the counts come in, decisions go out.

use std::time::Duration;

use tokio::time::Instant;

pub use crate::lifecycle::WarmDemand as Demand;

/// A change of the target size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Provisions found the pool empty (`misses` of them since the last look).
    Grew { from: u32, to: u32, misses: u64 },
    /// No demand for the quiet period.
    Shrank { from: u32, to: u32 },
}

#[derive(Debug, Clone)]
pub struct Sizer {
    min: u32,
    max: u32,
    quiet: Duration,
    target: u32,
    seen: Demand,
    last_demand: Instant,
}

impl Sizer {
    /// Between `min` and `max` (equal for a fixed size), starting at `min`.
    pub fn new(min: u32, max: u32, quiet: Duration, now: Instant) -> Self {
        Self {
            min,
            max: max.max(min),
            quiet,
            target: min,
            seen: Demand::default(),
            last_demand: now,
        }
    }

    pub fn target(&self) -> u32 {
        self.target
    }

    /// Takes the counters as they are at `now`; the change of target they
    /// call for, if any.
    pub fn observe(&mut self, demand: Demand, now: Instant) -> Option<Resize> {
        let claims = demand.claims.saturating_sub(self.seen.claims);
        let misses = demand.misses.saturating_sub(self.seen.misses);
        self.seen = demand;
        if claims + misses > 0 {
            self.last_demand = now;
        }
        let from = self.target;
        if misses > 0 && self.target < self.max {
            let grown = u64::from(self.target).saturating_add(misses);
            self.target = u32::try_from(grown).unwrap_or(u32::MAX).min(self.max);
            return Some(Resize::Grew {
                from,
                to: self.target,
                misses,
            });
        }
        if claims + misses == 0
            && self.target > self.min
            && now.duration_since(self.last_demand) >= self.quiet
        {
            self.target = self.min;
            return Some(Resize::Shrank {
                from,
                to: self.target,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_secs(300);

    fn demand(claims: u64, misses: u64) -> Demand {
        Demand { claims, misses }
    }

    #[tokio::test(start_paused = true)]
    async fn it_grows_by_each_miss_up_to_its_cap_and_shrinks_after_the_quiet_period() {
        let mut sizer = Sizer::new(2, 40, QUIET, Instant::now());
        assert_eq!(sizer.target(), 2);
        assert_eq!(sizer.observe(demand(0, 0), Instant::now()), None);
        // A class: 2 claimed, 30 went cold.
        assert_eq!(
            sizer.observe(demand(2, 30), Instant::now()),
            Some(Resize::Grew {
                from: 2,
                to: 32,
                misses: 30
            })
        );
        // More than the cap asks for: capped.
        assert_eq!(
            sizer.observe(demand(2, 60), Instant::now()),
            Some(Resize::Grew {
                from: 32,
                to: 40,
                misses: 30
            })
        );
        assert_eq!(sizer.observe(demand(2, 70), Instant::now()), None);
        // Claims alone keep it as it is, and keep it from shrinking.
        tokio::time::advance(QUIET - Duration::from_secs(1)).await;
        assert_eq!(sizer.observe(demand(40, 70), Instant::now()), None);
        tokio::time::advance(QUIET - Duration::from_secs(1)).await;
        assert_eq!(sizer.observe(demand(40, 70), Instant::now()), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            sizer.observe(demand(40, 70), Instant::now()),
            Some(Resize::Shrank { from: 40, to: 2 })
        );
        assert_eq!(sizer.target(), 2);
        tokio::time::advance(QUIET * 2).await;
        assert_eq!(sizer.observe(demand(40, 70), Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_size_never_changes() {
        let mut sizer = Sizer::new(4, 4, QUIET, Instant::now());
        assert_eq!(sizer.observe(demand(10, 50), Instant::now()), None);
        tokio::time::advance(QUIET * 3).await;
        assert_eq!(sizer.observe(demand(10, 50), Instant::now()), None);
        assert_eq!(sizer.target(), 4);
    }
}
