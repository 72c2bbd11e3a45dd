//! `cargo bench --bench orchestrator`: the service (the release binary as a
//! child process, and the reaper in-process) against the real Docker Engine
//! and fresh SQLite files. Every figure is printed with a baseline measured
//! in the same run and their ratio, so that a slow or busy machine shifts
//! both alike. It reports and never fails on noise: it exits non-zero only if
//! something is broken (no engine, a request refused).
//!
//! Parts named after `--` run alone (`throughput`, `sessions`, `cold`, `burst`,
//! `egress`, `egress-connect`, `warm`, `reaper`, `restart`, `scale`, `gateway`). `--smoke` (or `BENCH_SMOKE=1`) runs them at
//! a tiny size. Sizes:
//! `BENCH_HB_CLIENTS` (32), `BENCH_HB_SECONDS` (4), `BENCH_HB_SESSIONS`
//! (10000), `BENCH_COLD_SAMPLES` (30),
//! `BENCH_BURST` (50), `BENCH_BURST_ROUNDS` (3), `BENCH_BURST_SIZES` (`25,50,100`: the burst part's
//! simultaneous first provisions; `BENCH_STARTS_AT_ONCE` sets the service's
//! `RUNNER_STARTS_AT_ONCE` there), `BENCH_WARM_SAMPLES` (20), `BENCH_WARM_POOL` (4),
//! `BENCH_RESTART_SIZES` (`100,500`; the restart part also kills the service
//! mid-burst of `BENCH_BURST` provisions),
//! `BENCH_SCALE_SIZES` (`100,1000,10000`: the scale part's sessions, over
//! the in-memory engine in a child process),
//! `BENCH_REAPER_ROWS` (10000), `BENCH_REAPER_STALE` (5),
//! `BENCH_GATEWAY_SAMPLES` (1000), `BENCH_GATEWAY_SOCKETS` (500),
//! `BENCH_GATEWAY_IMAGE` (the runner image of the gateway part),
//! `BENCH_CONNECT_ROUNDS` (20), `BENCH_CONNECT_PER_ROUND` (50; the
//! egress-connect part, which runs in the egress tier's world and needs
//! root).
//!
//! Every container it starts carries an instance label of its own; a drop
//! guard removes them all, also on panic.
//!
//! This file holds the arguments, the choice of parts and the summary; the
//! harness they share is in `harness.rs`, each part in a file of its own.

use std::time::{Duration, Instant};

#[path = "../../tests/support/mod.rs"]
mod support;
use support::cleanup::docker;

mod harness;
use harness::{CleanupGuard, Context, Instances, Result};

// The egress tier's world and harness, for the connection-setup part.
#[path = "../../tests/egress/harness.rs"]
#[allow(dead_code)]
mod egress_tier;
#[path = "../../tests/egress/world.rs"]
#[allow(dead_code)]
mod world;

mod burst;
mod cold;
mod egress;
mod egress_connect;
mod gateway;
mod reaper;
mod restart;
mod scale;
mod sessions;
mod throughput;
mod warm;

struct Sizes {
    smoke: bool,
    /// Parts named on the command line; empty runs them all.
    only: Vec<String>,
    hb_clients: usize,
    hb_seconds: f64,
    hb_sessions: usize,
    cold_samples: usize,
    burst: usize,
    burst_sizes: Vec<usize>,
    burst_rounds: usize,
    warm_samples: usize,
    warm_pool: usize,
    restart_sizes: Vec<usize>,
    scale_sizes: Vec<usize>,
    reaper_rows: usize,
    reaper_stale: usize,
    gateway_samples: usize,
    gateway_sockets: usize,
    connect_rounds: usize,
    connect_per_round: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list of sizes from `name`, else `default`.
fn sizes_from_env(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter_map(|size| size.trim().parse().ok())
        .collect()
}

impl Sizes {
    fn from_env() -> Self {
        let smoke = std::env::args().any(|arg| arg == "--smoke")
            || std::env::var("BENCH_SMOKE").is_ok_and(|value| value == "1");
        let pick = |full, tiny| if smoke { tiny } else { full };
        let restart_default = if smoke { "3,6" } else { "100,500" };
        let burst_default = if smoke { "4" } else { "25,50,100" };
        let burst_sizes = sizes_from_env("BENCH_BURST_SIZES", burst_default);
        let restart_sizes = sizes_from_env("BENCH_RESTART_SIZES", restart_default);
        let scale_default = if smoke { "20,200" } else { "100,1000,10000" };
        let scale_sizes = sizes_from_env("BENCH_SCALE_SIZES", scale_default);
        // `cargo bench` passes `--bench`; other flags are ours or ignored.
        let only: Vec<String> = std::env::args()
            .skip(1)
            .filter(|arg| !arg.starts_with('-'))
            .collect();
        if let Some(unknown) = only.iter().find(|part| !PARTS.contains(&part.as_str())) {
            eprintln!("unknown part `{unknown}`; the parts are {PARTS:?}");
            std::process::exit(2);
        }
        Self {
            smoke,
            only,
            hb_clients: env_or("BENCH_HB_CLIENTS", pick(32, 8)),
            hb_seconds: env_or("BENCH_HB_SECONDS", if smoke { 0.5 } else { 4.0 }),
            hb_sessions: env_or("BENCH_HB_SESSIONS", pick(10_000, 200)),
            cold_samples: env_or("BENCH_COLD_SAMPLES", pick(30, 3)),
            burst: env_or("BENCH_BURST", pick(50, 4)),
            burst_sizes,
            burst_rounds: env_or("BENCH_BURST_ROUNDS", pick(3, 1)).max(1),
            warm_samples: env_or("BENCH_WARM_SAMPLES", pick(20, 3)),
            warm_pool: env_or("BENCH_WARM_POOL", pick(4, 2)),
            restart_sizes,
            scale_sizes,
            reaper_rows: env_or("BENCH_REAPER_ROWS", pick(10_000, 500)),
            reaper_stale: env_or("BENCH_REAPER_STALE", pick(5, 2)),
            gateway_samples: env_or("BENCH_GATEWAY_SAMPLES", pick(1000, 20)),
            gateway_sockets: env_or("BENCH_GATEWAY_SOCKETS", pick(500, 10)),
            connect_rounds: env_or("BENCH_CONNECT_ROUNDS", pick(20, 2)),
            connect_per_round: env_or("BENCH_CONNECT_PER_ROUND", pick(50, 10)),
        }
    }

    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|name| name == part)
    }
}

fn print_summary(cx: &Context, total: Duration) {
    println!(
        "\n== Summary ({}{}, {:.0} s) ==",
        if cx.sizes.smoke { "smoke" } else { "full" },
        DEBUG_BUILD_NOTE,
        total.as_secs_f64()
    );
    println!("| Figure | Measured | Baseline | Ratio | Target | Met |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for f in &cx.figures {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            f.name, f.measured, f.baseline, f.ratio, f.target, f.met
        );
    }
    for note in &cx.notes {
        println!("- {note}");
    }
}

/// `cargo test --bench orchestrator` (as CI runs the smoke size) builds
/// without optimisations: it proves the benchmark works, not the figures.
const DEBUG_BUILD_NOTE: &str = if cfg!(debug_assertions) {
    ", debug build: figures not representative"
} else {
    ""
};

/// The parts, in the order they run; `cargo bench --bench orchestrator --
/// cold warm` runs only those named.
const PARTS: [&str; 11] = [
    "throughput",
    "sessions",
    "cold",
    "burst",
    "egress",
    "egress-connect",
    "warm",
    "reaper",
    "restart",
    "scale",
    "gateway",
];

async fn bench(cx: &mut Context) -> Result<()> {
    let started = Instant::now();
    for part in PARTS {
        if !cx.sizes.runs(part) {
            continue;
        }
        match part {
            "throughput" => throughput::throughput(cx).await?,
            "sessions" => sessions::sessions(cx).await?,
            "cold" => cold::cold(cx).await?,
            "burst" => burst::burst(cx).await?,
            "egress" => egress::egress(cx).await?,
            "egress-connect" => egress_connect::egress_connect(cx).await?,
            "warm" => warm::warm_pool(cx).await?,
            "reaper" => reaper::reaper(cx).await?,
            "gateway" => gateway::gateway(cx).await?,
            "scale" => scale::scale(cx).await?,
            _ => restart::restart(cx).await?,
        }
    }
    print_summary(cx, started.elapsed());
    Ok(())
}

fn main() {
    // A scale child (this binary run again by the scale part) runs only that.
    scale::run_child_if_asked();
    let sizes = Sizes::from_env();
    let instances = Instances::default();
    let _guard = CleanupGuard(instances.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        // Runners that ignore SIGTERM as the real (Node.js) one does, so
        // that no stop is kinder than in production.
        let image =
            tokio::task::spawn_blocking(|| support::images::build_images().stubborn).await?;
        let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        println!(
            "orchestrator benchmark ({}{}): image {image}, instances {prefix}-*",
            if sizes.smoke { "smoke" } else { "full" },
            DEBUG_BUILD_NOTE
        );
        let docker = docker();
        docker.ping().await?;
        let mut cx = Context {
            sizes,
            image,
            prefix,
            instances,
            dir: tempfile::tempdir()?,
            docker,
            figures: Vec::new(),
            notes: Vec::new(),
            cold_p50: None,
        };
        bench(&mut cx).await
    });
    drop(runtime);
    if let Err(error) = result {
        eprintln!("benchmark broken: {error:#}");
        drop(_guard);
        std::process::exit(1);
    }
}
