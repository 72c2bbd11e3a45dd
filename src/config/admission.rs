//! Who may start runners, how many at once, and for how long they may live.

use std::time::Duration;

use clap::Args;

use super::parse::{parse_positive_seconds, parse_strict_bool};

/// Who may start runners, and for how long they may live.
#[derive(Debug, Clone, Args)]
pub struct Admission {
    /// Most runners at once (warm ones included); further provisions answer
    /// 503. `auto` derives it from the engine's memory (see `capacity`), 0
    /// means no limit.
    #[arg(long, env = "MAX_CONCURRENT_RUNNERS", default_value = "auto",
          value_name = "MAX_CONCURRENT_RUNNERS", value_parser = parse_max_runners)]
    pub max_concurrent_runners: MaxRunners,

    /// Sustained provisions per minute per client address (0: no limit).
    #[arg(
        long,
        env = "PROVISION_RATE_PER_MINUTE",
        default_value_t = 120,
        value_name = "PROVISION_RATE_PER_MINUTE"
    )]
    pub provision_rate_per_minute: u32,

    /// Provisions one client address may send at once before the sustained
    /// rate applies: a class behind one NAT starts together.
    #[arg(long, env = "PROVISION_BURST", default_value_t = 120, value_name = "PROVISION_BURST",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub provision_burst: u32,

    /// Most runner starts (create and start) sent to the engine at once;
    /// further cold provisions and warm refills wait their turn in arrival
    /// order. The default is the concurrency at which this machine's engine
    /// starts a burst fastest (docs/performance.md#a-burst-of-first-loads).
    #[arg(long, env = "RUNNER_STARTS_AT_ONCE", default_value_t = 8,
          value_name = "RUNNER_STARTS_AT_ONCE", value_parser = parse_starts_at_once)]
    pub runner_starts_at_once: usize,

    /// Take the client address from `X-Forwarded-For` (only behind a proxy
    /// that sets it; anyone can send the header).
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value = "false", value_name = "TRUST_FORWARDED_FOR",
          value_parser = parse_strict_bool, action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,

    /// Seconds after which a runner is removed however active (unset: never).
    #[arg(long, env = "MAX_RUNNER_AGE_SECONDS", value_name = "MAX_RUNNER_AGE_SECONDS",
          value_parser = parse_positive_seconds)]
    pub max_runner_age: Option<Duration>,
}

/// `MAX_CONCURRENT_RUNNERS`: derived from the engine, or set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxRunners {
    /// Derived from the engine's memory when it is first reached.
    Auto,
    /// As set; 0 means no limit (as before `auto` existed).
    Set(u32),
}

pub(super) fn parse_max_runners(value: &str) -> Result<MaxRunners, String> {
    match value.trim() {
        "auto" => Ok(MaxRunners::Auto),
        number => number
            .parse()
            .map(MaxRunners::Set)
            .map_err(|_| format!("expected `auto` or a number of runners, got `{value}`")),
    }
}

fn parse_starts_at_once(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n @ 1..=1024) => Ok(n),
        _ => Err(format!("`{text}` is not a number of starts from 1 to 1024")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse;

    #[test]
    fn admission_defaults_admit_a_class_behind_one_address() {
        let defaults = parse(&[]).unwrap().admission;
        assert_eq!(defaults.max_concurrent_runners, MaxRunners::Auto);
        assert_eq!(defaults.provision_rate_per_minute, 120);
        assert!(defaults.provision_burst >= 100, "{defaults:?}");
        let set = parse(&["--max-concurrent-runners=0", "--provision-burst=300"])
            .unwrap()
            .admission;
        assert_eq!(set.max_concurrent_runners, MaxRunners::Set(0));
        assert_eq!(set.provision_burst, 300);
        for (args, variable) in [
            (
                &["--max-concurrent-runners=many"][..],
                "MAX_CONCURRENT_RUNNERS",
            ),
            (
                &["--max-concurrent-runners=-1"][..],
                "MAX_CONCURRENT_RUNNERS",
            ),
            (&["--provision-burst=0"][..], "PROVISION_BURST"),
        ] {
            let error = parse(args).unwrap_err().to_string();
            assert!(error.contains(variable), "{args:?}: {error}");
        }
    }

    #[test]
    fn starts_at_once_is_a_number_from_1_to_1024() {
        assert_eq!(super::parse_starts_at_once("8"), Ok(8));
        assert_eq!(super::parse_starts_at_once("1024"), Ok(1024));
        for bad in ["0", "1025", "-1", "many", ""] {
            assert!(super::parse_starts_at_once(bad).is_err(), "{bad}");
        }
    }
}
