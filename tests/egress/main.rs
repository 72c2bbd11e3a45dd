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

use std::process::ExitCode;
use std::time::Instant;

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
    let code = support::tier::run(
        "egress",
        TESTS,
        &egress,
        &runtime,
        |egress| egress.clean_up(),
        started,
    );
    drop(egress);
    code
}
