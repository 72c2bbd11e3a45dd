//! The egress tier (`cargo test --test egress`): the service binary run as
//! root inside the network namespace of a Docker Engine of its own, where it
//! installs its nftables egress policy, and runners whose `/probe`
//! endpoints say, with real packets, what code inside them reaches: a
//! stand-in public host, a private host, the metadata address, a DNS
//! server, and the engine host's own addresses (`world.sh`: none of it
//! leaves this machine's namespaces, and every route is checked before a
//! probe). It brings that world up once, runs every test in order, and
//! takes it down, also when a test fails or panics. Needs root and `nft`.
//!
//! A plain `main` (`harness = false`): the tests share one world, which
//! libtest has no place to set up and tear down once.

#[path = "../support/mod.rs"]
mod support;

mod cases;
mod harness;
mod world;

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::time::Instant;

use futures_util::FutureExt;

use harness::Egress;
use world::World;

const TESTS: &[(&str, harness::Test)] = &[
    ("public_reaches_the_public_host_only", |e| {
        Box::pin(cases::public_reaches_the_public_host_only(e))
    }),
    ("none_reaches_nothing", |e| {
        Box::pin(cases::none_reaches_nothing(e))
    }),
    ("a_provision_narrowed_to_none_reaches_nothing", |e| {
        Box::pin(cases::a_provision_narrowed_to_none_reaches_nothing(e))
    }),
    ("all_reaches_everything", |e| {
        Box::pin(cases::all_reaches_everything(e))
    }),
    ("the_allow_list_opens_one_private_port", |e| {
        Box::pin(cases::the_allow_list_opens_one_private_port(e))
    }),
    ("the_gateway_reaches_runners_under_every_policy", |e| {
        Box::pin(cases::the_gateway_reaches_runners_under_every_policy(e))
    }),
    ("widening_and_garbage_are_refused", |e| {
        Box::pin(cases::widening_and_garbage_are_refused(e))
    }),
    ("a_deleted_rule_is_repaired_and_a_restart_adds_none", |e| {
        Box::pin(cases::a_deleted_rule_is_repaired_and_a_restart_adds_none(e))
    }),
    ("two_instances_keep_their_own_tables", |e| {
        Box::pin(cases::two_instances_keep_their_own_tables(e))
    }),
    ("without_nft_it_refuses_unless_all", |e| {
        Box::pin(cases::without_nft_it_refuses_unless_all(e))
    }),
];

fn main() -> ExitCode {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    if let Err(reason) = world::check_prerequisites() {
        eprintln!("the egress tier cannot run here: {reason}");
        return ExitCode::FAILURE;
    }
    let images = support::images::build_images();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let started = Instant::now();
    // Taken down when dropped, whatever happens below.
    let world = match World::up("tegr", &[&images.runner]) {
        Ok(world) => world,
        Err(reason) => {
            eprintln!("could not bring the egress world up: {reason}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "egress world {} up in {:.1} s",
        world.name(),
        started.elapsed().as_secs_f64()
    );
    let egress = Egress::new(world, images);
    let selected: Vec<_> = TESTS
        .iter()
        .filter(|(name, _)| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, test) in selected {
        let began = Instant::now();
        println!("test egress::{name} ...");
        let outcome = runtime.block_on(AssertUnwindSafe(test(&egress)).catch_unwind());
        let result = match outcome {
            Ok(result) => result,
            Err(panic) => Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".to_owned())),
        };
        egress.clean_up();
        let took = began.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                passed += 1;
                println!("test egress::{name} ... ok ({took:.1} s)");
            }
            Err(reason) => {
                println!("test egress::{name} ... FAILED ({took:.1} s)\n    {reason}");
                failed.push(name);
            }
        }
    }
    drop(egress);
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
