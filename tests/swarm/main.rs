//! The swarm tier (`cargo test --test swarm`): the service binary with
//! `RUNNER_BACKEND=swarm` against a real Docker Swarm of four engines (three
//! managers, so that the swarm outlives one of them, and a worker), each
//! in a network namespace of its own on this machine (`cluster.sh`), and
//! clients in a namespace of their own. It brings the swarm up, runs every
//! test against it one after another, and takes it down, also when a test
//! fails or panics. Needs root (namespaces, engines), as CI runs.
//!
//! A plain `main` (`harness = false`): the tests share one swarm, which
//! libtest has no place to set up and tear down once.

#[path = "../support/mod.rs"]
mod support;

mod agent;
mod cases;
mod cluster;
mod failover;
mod harness;

use std::process::ExitCode;
use std::time::Instant;

use cluster::Cluster;
use harness::Swarm;

/// The tests, in order: the two that kill a node come last, the worker
/// first and then the first manager (the one `Swarm::manager` talks to);
/// the two managers left still hold the swarm's quorum.
const TESTS: &[(&str, harness::Test)] = &[
    ("runners_spread_over_nodes_and_answer_clients", |s| {
        Box::pin(cases::runners_spread_over_nodes_and_answer_clients(s))
    }),
    (
        "concurrent_provisions_of_one_session_make_one_service",
        |s| Box::pin(cases::concurrent_provisions_of_one_session_make_one_service(s)),
    ),
    ("deprovision_removes_the_service", |s| {
        Box::pin(cases::deprovision_removes_the_service(s))
    }),
    ("a_kill_9_and_restart_keeps_every_runner", |s| {
        Box::pin(cases::a_kill_9_and_restart_keeps_every_runner(s))
    }),
    ("the_gateway_reaches_runners_on_their_nodes", |s| {
        Box::pin(cases::the_gateway_reaches_runners_on_their_nodes(s))
    }),
    ("the_reaper_removes_idle_services", |s| {
        Box::pin(cases::the_reaper_removes_idle_services(s))
    }),
    ("the_warm_pool_and_the_limit_work_on_the_swarm", |s| {
        Box::pin(cases::the_warm_pool_and_the_limit_work_on_the_swarm(s))
    }),
    (
        "an_image_missing_on_the_node_fails_the_provision_cleanly",
        |s| Box::pin(cases::an_image_missing_on_the_node_fails_the_provision_cleanly(s)),
    ),
    (
        "no_node_that_fits_fails_the_provision_within_the_deadline",
        |s| Box::pin(cases::no_node_that_fits_fails_the_provision_within_the_deadline(s)),
    ),
    (
        "egress_agents_rule_their_nodes_and_runners_go_only_there",
        |s| Box::pin(cases::egress_agents_rule_their_nodes_and_runners_go_only_there(s)),
    ),
    ("a_lost_node_s_sessions_are_repaired_on_the_others", |s| {
        Box::pin(cases::a_lost_node_s_sessions_are_repaired_on_the_others(s))
    }),
    (
        "a_lost_manager_and_database_fail_over_to_another_manager",
        |s| Box::pin(failover::a_lost_manager_and_database_fail_over_to_another_manager(s)),
    ),
];

fn main() -> ExitCode {
    if let Err(reason) = cluster::check_prerequisites() {
        eprintln!("the swarm tier cannot run here: {reason}");
        return ExitCode::FAILURE;
    }
    let images = support::images::build_images();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let started = Instant::now();
    // Taken down when dropped, whatever happens below.
    let cluster = match Cluster::up("tsw", 4, 3, &images) {
        Ok(cluster) => cluster,
        Err(reason) => {
            eprintln!("could not bring the swarm up: {reason}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "swarm of {} nodes up in {:.1} s",
        cluster.nodes.len(),
        started.elapsed().as_secs_f64()
    );
    let swarm = Swarm::new(cluster, images);
    let code = support::tier::run(
        "swarm",
        TESTS,
        &swarm,
        &runtime,
        |swarm| runtime.block_on(swarm.clean_up()),
        started,
    );
    drop(swarm);
    code
}
