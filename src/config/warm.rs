//! The warm pool's size: a fixed number of runners started ahead of
//! demand (`WARM_POOL_SIZE=N`, 0 for none), or one that sizes itself
//! (`WARM_POOL_SIZE=auto`) between `WARM_POOL_MIN` and `WARM_POOL_MAX`,
//! shrinking back after `WARM_POOL_QUIET_SECONDS` without a claim.

use std::time::Duration;

use clap::Args;

use super::parse::parse_positive_seconds;

#[derive(Debug, Clone, Args)]
pub struct WarmPoolSettings {
    /// Started runners kept waiting for provisions without a session id
    /// (they answer at once): a number (0 turns the pool off), or `auto`.
    #[arg(long, env = "WARM_POOL_SIZE", default_value = "0", value_name = "WARM_POOL_SIZE",
          value_parser = parse_size)]
    pub warm_pool_size: WarmPoolSize,

    /// Under `auto`: the runners kept waiting however quiet it is.
    #[arg(long, env = "WARM_POOL_MIN", default_value_t = 1, value_name = "WARM_POOL_MIN",
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub warm_pool_min: u32,

    /// Under `auto`: the most runners kept waiting (each holds its memory
    /// until claimed; `MAX_CONCURRENT_RUNNERS` counts them too).
    #[arg(long, env = "WARM_POOL_MAX", default_value_t = 50, value_name = "WARM_POOL_MAX",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub warm_pool_max: u32,

    /// Under `auto`: seconds without a claim after which the pool shrinks
    /// back to `WARM_POOL_MIN`.
    #[arg(long, env = "WARM_POOL_QUIET_SECONDS", default_value = "300",
          value_name = "WARM_POOL_QUIET_SECONDS", value_parser = parse_positive_seconds)]
    pub warm_pool_quiet: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmPoolSize {
    Fixed(u32),
    Auto,
}

impl WarmPoolSettings {
    /// Whether provisions without a session id look in the pool at all.
    pub fn enabled(&self) -> bool {
        self.warm_pool_size != WarmPoolSize::Fixed(0)
    }

    /// The smallest and largest size the pool may take: one number when
    /// fixed.
    pub fn bounds(&self) -> (u32, u32) {
        match self.warm_pool_size {
            WarmPoolSize::Fixed(size) => (size, size),
            WarmPoolSize::Auto => (
                self.warm_pool_min.min(self.warm_pool_max),
                self.warm_pool_max,
            ),
        }
    }
}

fn parse_size(text: &str) -> Result<WarmPoolSize, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("auto") {
        return Ok(WarmPoolSize::Auto);
    }
    match text.parse::<u32>() {
        Ok(size @ 0..=1000) => Ok(WarmPoolSize::Fixed(size)),
        _ => Err(format!(
            "`{text}` is neither `auto` nor a number of runners from 0 to 1000"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_is_auto_or_a_number() {
        assert_eq!(parse_size("auto"), Ok(WarmPoolSize::Auto));
        assert_eq!(parse_size("AUTO"), Ok(WarmPoolSize::Auto));
        assert_eq!(parse_size("0"), Ok(WarmPoolSize::Fixed(0)));
        assert_eq!(parse_size("12"), Ok(WarmPoolSize::Fixed(12)));
        for bad in ["-1", "1001", "lots", ""] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
