//! The plain `main` of the tiers whose tests share one world (the swarm and
//! egress tiers, `harness = false`): it picks the tests the command line
//! names, runs each in order with its panic caught, cleans up after each
//! whatever happened, and prints libtest's summary line (which `.ci/run`
//! sums up).

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

/// One test of a tier, over its world.
pub type Test<W> = for<'a> fn(&'a W) -> BoxFuture<'a, Result<(), String>>;

/// The command line's test-name filters (flags such as libtest's are
/// ignored).
pub fn filters() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect()
}

/// Runs the `tests` whose names contain a filter (all when none is given)
/// over `world`, calling `clean_up` after each; `started` is when the tier
/// began, for the summary's time.
pub fn run<W>(
    tier: &str,
    tests: &[(&str, Test<W>)],
    world: &W,
    runtime: &tokio::runtime::Runtime,
    clean_up: impl Fn(&W),
    started: Instant,
) -> ExitCode {
    let filter = filters();
    let selected: Vec<_> = tests
        .iter()
        .filter(|(name, _)| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, test) in selected {
        let began = Instant::now();
        println!("test {tier}::{name} ...");
        let outcome = runtime.block_on(AssertUnwindSafe(test(world)).catch_unwind());
        let result = match outcome {
            Ok(result) => result,
            Err(panic) => Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".to_owned())),
        };
        clean_up(world);
        let took = began.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                passed += 1;
                println!("test {tier}::{name} ... ok ({took:.1} s)");
            }
            Err(reason) => {
                println!("test {tier}::{name} ... FAILED ({took:.1} s)\n    {reason}");
                failed.push(name);
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; 0 filtered out; finished in {:.2}s",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
