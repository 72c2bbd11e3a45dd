//! `cargo bench --bench orchestrator`: the service (the release binary as a
//! child process, and the reaper in-process) against the real Docker Engine
//! and fresh SQLite files. Every figure is printed with a baseline measured
//! in the same run and their ratio, so that a slow or busy machine shifts
//! both alike. It reports and never fails on noise: it exits non-zero only if
//! something is broken (no engine, a request refused).
//!
//! Parts named after `--` run alone (`throughput`, `sessions`, `cold`,
//! `warm`, `reaper`, `restart`). `--smoke` (or `BENCH_SMOKE=1`) runs them at
//! a tiny size. Sizes:
//! `BENCH_HB_CLIENTS` (32), `BENCH_HB_SECONDS` (4), `BENCH_HB_SESSIONS`
//! (10000), `BENCH_COLD_SAMPLES` (30),
//! `BENCH_BURST` (50), `BENCH_WARM_SAMPLES` (20), `BENCH_WARM_POOL` (4),
//! `BENCH_RESTART_SIZES` (`100,500`; the restart part also kills the service
//! mid-burst of `BENCH_BURST` provisions),
//! `BENCH_REAPER_ROWS` (10000), `BENCH_REAPER_STALE` (5),
//! `BENCH_GATEWAY_SAMPLES` (1000), `BENCH_GATEWAY_SOCKETS` (500),
//! `BENCH_GATEWAY_IMAGE` (the runner image of the gateway part).
//!
//! Every container it starts carries an instance label of its own; a drop
//! guard removes them all, also on panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;
use support::cleanup::{docker, instance_containers, remove_instances, remove_instances_blocking};
use support::service::{ServiceProcess, service_command};
use support::wait::poll_until;

use bollard::Docker;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use taylored_orchestrator::backend::docker::DockerBackend;
use taylored_orchestrator::backend::{NetworkMode, RunnerSpec};
use taylored_orchestrator::config::Settings;
use taylored_orchestrator::db::{Db, QueryPlan, timestamp};
use taylored_orchestrator::readiness::Readiness;
use taylored_orchestrator::reconcile::Summary;
use taylored_orchestrator::service::Service as InProcess;
use taylored_orchestrator::session::{RunnerKind, SessionId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Result<T> = anyhow::Result<T>;

struct Sizes {
    smoke: bool,
    /// Parts named on the command line; empty runs them all.
    only: Vec<String>,
    hb_clients: usize,
    hb_seconds: f64,
    hb_sessions: usize,
    cold_samples: usize,
    burst: usize,
    warm_samples: usize,
    warm_pool: usize,
    restart_sizes: Vec<usize>,
    reaper_rows: usize,
    reaper_stale: usize,
    gateway_samples: usize,
    gateway_sockets: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

impl Sizes {
    fn from_env() -> Self {
        let smoke = std::env::args().any(|arg| arg == "--smoke")
            || std::env::var("BENCH_SMOKE").is_ok_and(|value| value == "1");
        let pick = |full, tiny| if smoke { tiny } else { full };
        let restart_default = if smoke { "3,6" } else { "100,500" };
        let restart_sizes = std::env::var("BENCH_RESTART_SIZES")
            .unwrap_or_else(|_| restart_default.to_owned())
            .split(',')
            .filter_map(|size| size.trim().parse().ok())
            .collect();
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
            warm_samples: env_or("BENCH_WARM_SAMPLES", pick(20, 3)),
            warm_pool: env_or("BENCH_WARM_POOL", pick(4, 2)),
            restart_sizes,
            reaper_rows: env_or("BENCH_REAPER_ROWS", pick(10_000, 500)),
            reaper_stale: env_or("BENCH_REAPER_STALE", pick(5, 2)),
            gateway_samples: env_or("BENCH_GATEWAY_SAMPLES", pick(1000, 20)),
            gateway_sockets: env_or("BENCH_GATEWAY_SOCKETS", pick(500, 10)),
        }
    }
}

impl Sizes {
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|name| name == part)
    }
}

/// One line of the summary table.
struct Figure {
    name: String,
    measured: String,
    baseline: String,
    ratio: String,
    target: String,
    met: &'static str,
}

fn figure(
    name: impl Into<String>,
    measured: impl Into<String>,
    baseline: impl Into<String>,
    ratio: f64,
    target: impl Into<String>,
    met: Option<bool>,
) -> Figure {
    Figure {
        name: name.into(),
        measured: measured.into(),
        baseline: baseline.into(),
        ratio: if ratio < 0.1 {
            format!("{ratio:.4}x")
        } else {
            format!("{ratio:.2}x")
        },
        target: target.into(),
        met: match met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        },
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

// ---------------------------------------------------------------------------
// Docker: raw containers (the runner image and cleanup: tests/support).

/// The instance ids this run used; every container labelled with one of
/// them is removed when the guard drops (also on panic).
#[derive(Clone, Default)]
struct Instances(Arc<Mutex<Vec<String>>>);

impl Instances {
    fn new_instance(&self, prefix: &str, section: &str) -> String {
        let id = format!("{prefix}-{section}");
        self.0.lock().unwrap().push(id.clone());
        id
    }
}

struct CleanupGuard(Instances);

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        let instances = self.0.0.lock().map(|ids| ids.clone()).unwrap_or_default();
        let removed = remove_instances_blocking(instances);
        eprintln!("cleanup: removed {removed} leftover containers");
    }
}

/// Force-removes every container of `instance`; returns how many.
async fn remove_instance_containers(instance: &str) -> usize {
    remove_instances(&[instance.to_owned()]).await
}

/// An engine client configured as the service's (default limits), under an
/// instance label of its own so that the service never sees its containers.
fn raw_engine(image: &str, instance: &str) -> Result<DockerBackend> {
    let settings = Settings::from_env_and_args([
        "orchestrator".to_owned(),
        format!("--orchestrator-id={instance}"),
        format!("--docker-image-name={image}"),
        "--runner-bind-address=127.0.0.1".to_owned(),
        // The engine's default bridge, as the in-process service's `all`.
        "--runner-egress=all".to_owned(),
    ])?;
    Ok(DockerBackend::connect(&settings)?)
}

/// The engine's own work for a provision: create, start, and inspect of the
/// very container body the service sends (`DockerBackend::container_body`), with
/// bollard and nothing else.
async fn raw_start(docker: &Docker, engine: &DockerBackend, session: &str) -> Result<()> {
    let session = SessionId::parse(session)?;
    let name = session.container_name(engine.instance());
    let body = engine.container_body(&RunnerSpec {
        session_id: session.as_str(),
        name: &name,
        network_mode: &NetworkMode::Default,
        kind: RunnerKind::Session,
        pooled: false,
    });
    let options = CreateContainerOptionsBuilder::new().name(&name).build();
    let id = docker.create_container(Some(options), body).await?.id;
    docker.start_container(&id, None).await?;
    docker.inspect_container(&id, None).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The service as a child process.

struct Service {
    process: ServiceProcess,
    base: String,
    /// The "ready" line's reconcile summary.
    summary: String,
    client: reqwest::Client,
    /// Its `ORCHESTRATOR_ID`, which labels its runners.
    instance: String,
    db_path: PathBuf,
}

struct ServiceConfig<'a> {
    image: &'a str,
    instance: &'a str,
    db_path: &'a Path,
    extra_env: &'a [(&'a str, String)],
}

async fn spawn_service(config: &ServiceConfig<'_>) -> Result<Service> {
    let mut service = spawn_listening(config).await?;
    service.wait_ready().await?;
    Ok(service)
}

/// [`spawn_service`] until it listens, before its startup reconcile is done.
async fn spawn_listening(config: &ServiceConfig<'_>) -> Result<Service> {
    let mut command = service_command(
        &config.db_path.display().to_string(),
        config.instance,
        config.image,
    );
    command
        .env("CLEANUP_INTERVAL_SECONDS", "3600")
        .env("INACTIVITY_TIMEOUT_SECONDS", "3600");
    for (key, value) in config.extra_env {
        command.env(key, value);
    }
    let process = ServiceProcess::spawn_listening(command, Duration::from_secs(600))
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(Service {
        base: format!("http://127.0.0.1:{}", process.port),
        summary: String::new(),
        process,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?,
        instance: config.instance.to_owned(),
        db_path: config.db_path.to_owned(),
    })
}

impl Service {
    /// Waits for the "ready" log line and takes its reconcile summary.
    async fn wait_ready(&mut self) -> Result<()> {
        self.process
            .wait_ready(Duration::from_secs(600))
            .await
            .map_err(anyhow::Error::msg)?;
        self.summary = self
            .process
            .logs
            .field("ready", "summary")
            .unwrap_or_default();
        Ok(())
    }

    /// Where a start's time went: to listening (database open, port
    /// bound), and the startup reconcile's reads (rows and the engine's
    /// list, at once) and whole, from its log line.
    fn startup_times(&self) -> String {
        let reconcile = |field| {
            (self.process.logs)
                .field("startup reconcile finished", field)
                .unwrap_or_default()
        };
        format!(
            "listening at {:.1} ms; reconcile {} ms, of which rows and engine list {} ms",
            ms(self.process.spawn_to_listening),
            reconcile("took_ms"),
            reconcile("read_ms")
        )
    }

    /// From spawn to the "ready" log line (startup reconcile done).
    fn spawn_to_ready(&self) -> Duration {
        self.process.spawn_to_ready
    }

    /// SIGTERM, as `docker stop` sends it; runners keep running.
    async fn stop(self) -> Result<()> {
        let status = self.process.terminate(Duration::from_secs(60)).await;
        let status = status.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(status.success(), "the service exited with {status}");
        Ok(())
    }

    /// SIGKILL, as a crash or an OOM kill of the service would.
    fn kill_9(self) {
        self.process.kill_9();
    }

    /// Waits for the end of the startup repairs; returns when it came
    /// (since spawn) and the whole reconcile's summary.
    async fn wait_repaired(&self) -> Result<(Duration, String)> {
        let logs = &self.process.logs;
        let line = logs
            .wait_for("startup repairs finished", Duration::from_secs(600))
            .await
            .map_err(anyhow::Error::msg)?;
        let summary = line["summary"].as_str().unwrap_or_default().to_owned();
        Ok((self.process.started.elapsed(), summary))
    }

    /// Stops the service and removes its runners.
    async fn finish(self) -> Result<()> {
        let instance = self.instance.clone();
        self.stop().await?;
        remove_instance_containers(&instance).await;
        Ok(())
    }

    async fn provision(&self, session: Option<&str>) -> Result<()> {
        let mut request = self
            .client
            .post(format!("{}/api/runner/provision", self.base))
            .json(&serde_json::json!({}));
        if let Some(session) = session {
            request = request.header("X-Session-Id", session);
        }
        let response = request.send().await?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(status.is_success(), "provision answered {status}: {body}");
        Ok(())
    }

    /// `(VmHWM, VmRSS)` of the process in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

/// Provisions `count` sessions named `{prefix}-{i}`, `parallel` at a time.
async fn provision_many(
    service: &Service,
    prefix: &str,
    range: std::ops::Range<usize>,
    parallel: usize,
) -> Result<()> {
    let results: Vec<Result<()>> = futures_util::stream::iter(range)
        .map(|i| async move { service.provision(Some(&format!("{prefix}-{i}"))).await })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

// ---------------------------------------------------------------------------
// Load.

#[derive(Clone)]
enum Load {
    Root(String),
    /// Heartbeats for these sessions, each client taking every `clients`-th
    /// in turn; the status every answer must have.
    Heartbeats(String, Arc<Vec<String>>, reqwest::StatusCode),
}

impl Load {
    fn heartbeat(url: String, session: &str, expected: reqwest::StatusCode) -> Self {
        Self::Heartbeats(url, Arc::new(vec![session.to_owned()]), expected)
    }
}

/// `clients` keep-alive connections sending `load` back to back for
/// `seconds`; returns `(answered as expected, errors)`.
async fn run_load(load: Load, clients: usize, seconds: f64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut workers = FuturesUnordered::new();
    for worker in 0..clients {
        let load = load.clone();
        workers.push(tokio::spawn(async move {
            // One client each: its own keep-alive connection.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut turn = worker;
            while Instant::now() < deadline {
                let (request, expected) = match &load {
                    Load::Root(url) => (client.get(url), reqwest::StatusCode::OK),
                    Load::Heartbeats(url, sessions, expected) => {
                        let session = &sessions[turn % sessions.len()];
                        turn += clients;
                        let body = serde_json::json!({ "sessionId": session });
                        (client.post(url).json(&body), *expected)
                    }
                };
                match request.send().await {
                    Ok(response) if response.status() == expected => {
                        let _ = response.bytes().await;
                        ok += 1;
                    }
                    _ => errors += 1,
                }
            }
            (ok, errors)
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    while let Some(result) = workers.next().await {
        let (o, e) = result.unwrap_or((0, 1));
        ok += o;
        errors += e;
    }
    (ok, errors)
}

/// Runs the loads one after the other for `seconds` each, twice over (so
/// that a drift of the machine shifts them alike); returns each one's
/// answers per second, and notes the errors.
async fn alternate<const N: usize>(
    cx: &mut Context,
    part: &str,
    loads: [Load; N],
    clients: usize,
    seconds: f64,
) -> [f64; N] {
    let (mut answered, mut errors) = ([0u64; N], 0);
    for _ in 0..2 {
        for (load, answered) in loads.iter().zip(&mut answered) {
            let (ok, failed) = run_load(load.clone(), clients, seconds).await;
            *answered += ok;
            errors += failed;
        }
    }
    if errors > 0 {
        cx.notes.push(format!(
            "{part}: {errors} requests failed or answered another status"
        ));
    }
    answered.map(|ok| ok as f64 / (seconds * 2.0))
}

// ---------------------------------------------------------------------------
// Sections.

struct Context {
    sizes: Sizes,
    image: String,
    prefix: String,
    instances: Instances,
    dir: tempfile::TempDir,
    docker: Docker,
    figures: Vec<Figure>,
    notes: Vec<String>,
    /// The warm pool's baseline, when the cold part ran first.
    cold_p50: Option<Duration>,
}

impl Context {
    fn db_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.db"))
    }

    /// A service of its own for one part: a fresh instance and database.
    async fn part_service(&self, part: &str, extra_env: &[(&str, String)]) -> Result<Service> {
        let instance = self.instances.new_instance(&self.prefix, part);
        spawn_service(&ServiceConfig {
            image: &self.image,
            instance: &instance,
            db_path: &self.db_path(part),
            extra_env,
        })
        .await
    }

    fn push(&mut self, figure: Figure) {
        println!(
            "  {:<38} {:>14}  baseline {:>14}  ratio {:>7}  target {:<14} met: {}",
            figure.name, figure.measured, figure.baseline, figure.ratio, figure.target, figure.met
        );
        self.figures.push(figure);
    }
}

/// Heartbeat vs `GET /` throughput, and peak memory under that load.
async fn throughput(cx: &mut Context) -> Result<()> {
    let service = cx.part_service("throughput", &[]).await?;
    let (_, idle_rss) = service.memory_kib();
    service.provision(Some("heartbeat-session")).await?;

    let clients = cx.sizes.hb_clients;
    let half = cx.sizes.hb_seconds / 2.0;
    println!(
        "\n[throughput] {clients} keep-alive clients, 2 x {half:.1} s of GET / and of heartbeat, alternating"
    );
    let root = Load::Root(format!("{}/", service.base));
    let url = format!("{}/api/runner/heartbeat", service.base);
    let heartbeat = Load::heartbeat(url.clone(), "heartbeat-session", reqwest::StatusCode::OK);
    let unknown = Load::heartbeat(url, "made-up-session", reqwest::StatusCode::NOT_FOUND);
    run_load(root.clone(), clients, 0.3).await; // warm-up
    let [root_rps, hb_rps, unknown_rps] =
        alternate(cx, "throughput", [root, heartbeat, unknown], clients, half).await;
    let (peak, _) = service.memory_kib();
    for (name, rps, target) in [
        ("heartbeat throughput", hb_rps, 0.9),
        ("unknown-session heartbeats", unknown_rps, 0.85),
    ] {
        let ratio = rps / root_rps;
        cx.push(figure(
            format!("{name} ({clients} clients)"),
            format!("{rps:.0} req/s"),
            format!("{root_rps:.0} req/s GET /"),
            ratio,
            format!(">= {target}x"),
            Some(ratio >= target),
        ));
    }
    let peak_mib = peak as f64 / 1024.0;
    cx.push(figure(
        "peak RSS under load (VmHWM)",
        format!("{peak_mib:.1} MiB"),
        format!("{:.1} MiB idle", idle_rss as f64 / 1024.0),
        peak as f64 / idle_rss.max(1) as f64,
        "<= 20 MiB",
        Some(peak_mib <= 20.0),
    ));

    service.finish().await
}

/// Cold provisions interleaved with the engine's own create + start, then a
/// concurrent burst of each.
async fn cold(cx: &mut Context) -> Result<()> {
    let service = cx.part_service("cold", &[]).await?;
    let raw_instance = cx.instances.new_instance(&cx.prefix, "raw");
    let raw = raw_engine(&cx.image, &raw_instance)?;
    let samples = cx.sizes.cold_samples;
    println!(
        "\n[cold provision] {samples} service provisions interleaved with {samples} raw create+start+inspect (after one of each to warm up)"
    );
    // One of each first, not counted: the first create of a run pays for
    // the engine's and the clients' cold caches (over a second here).
    service.provision(Some("cold-warm-up")).await?;
    raw_start(&cx.docker, &raw, "cold-warm-up").await?;
    let (mut service_times, mut raw_times) = (Vec::new(), Vec::new());
    for i in 0..samples {
        // Alternate which goes first, so neither always follows the other.
        for turn in 0..2 {
            let service_turn = (turn + i) % 2 == 0;
            let started = Instant::now();
            if service_turn {
                service.provision(Some(&format!("cold-{i}"))).await?;
                service_times.push(started.elapsed());
            } else {
                raw_start(&cx.docker, &raw, &format!("cold-{i}")).await?;
                raw_times.push(started.elapsed());
            }
        }
    }
    cx.cold_p50 = Some(percentile(&service_times, 0.5));
    for (q, name) in [(0.5, "p50"), (0.95, "p95")] {
        let measured = percentile(&service_times, q);
        let baseline = percentile(&raw_times, q);
        let ratio = ms(measured) / ms(baseline);
        let (target, met) = if q == 0.5 {
            ("<= 1.05x", Some(ratio <= 1.05))
        } else {
            ("-", None)
        };
        cx.push(figure(
            format!("cold provision {name}"),
            format!("{:.1} ms", ms(measured)),
            format!("{:.1} ms raw", ms(baseline)),
            ratio,
            target,
            met,
        ));
    }

    // Concurrent burst: the service first, then the engine directly.
    let burst = cx.sizes.burst;
    println!("\n[burst] {burst} concurrent cold provisions vs {burst} concurrent raw create+start");
    let started = Instant::now();
    provision_many(&service, "burst", 0..burst, burst).await?;
    let service_wall = started.elapsed();
    let started = Instant::now();
    let results: Vec<Result<()>> = futures_util::stream::iter(0..burst)
        .map(|i| {
            let (docker, raw) = (&cx.docker, &raw);
            async move { raw_start(docker, raw, &format!("burst-{i}")).await }
        })
        .buffer_unordered(burst)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let raw_wall = started.elapsed();
    let ratio = ms(service_wall) / ms(raw_wall);
    cx.push(figure(
        format!("{burst} concurrent cold provisions"),
        format!("{:.2} s", service_wall.as_secs_f64()),
        format!("{:.2} s raw", raw_wall.as_secs_f64()),
        ratio,
        "-",
        None,
    ));
    service.finish().await?;
    remove_instance_containers(&raw_instance).await;
    Ok(())
}

/// Cold provisions under `RUNNER_EGRESS=public` (a network of the
/// instance's own, its rules installed in this host's nftables) against
/// `all` (the default bridge, no rules), interleaved in one run. The rules
/// and networks are removed afterwards.
async fn egress(cx: &mut Context) -> Result<()> {
    let public_env = [("RUNNER_EGRESS", "public".to_owned())];
    let public = cx.part_service("egress-public", &public_env).await?;
    let all = cx.part_service("egress-all", &[]).await?;
    let public_instance = public.instance.clone();
    let samples = cx.sizes.cold_samples;
    println!(
        "\n[egress] {samples} cold provisions under RUNNER_EGRESS=public interleaved with {samples} under all"
    );
    public.provision(Some("egress-warm-up")).await?;
    all.provision(Some("egress-warm-up")).await?;
    let (mut public_times, mut all_times) = (Vec::new(), Vec::new());
    for i in 0..samples {
        for turn in 0..2 {
            let (service, times) = if (turn + i) % 2 == 0 {
                (&public, &mut public_times)
            } else {
                (&all, &mut all_times)
            };
            let started = Instant::now();
            service.provision(Some(&format!("egress-{i}"))).await?;
            times.push(started.elapsed());
        }
    }
    let (measured, baseline) = (percentile(&public_times, 0.5), percentile(&all_times, 0.5));
    cx.push(figure(
        "cold provision p50, RUNNER_EGRESS=public".to_owned(),
        format!("{:.1} ms", ms(measured)),
        format!("{:.1} ms under all", ms(baseline)),
        ms(measured) / ms(baseline),
        "-",
        None,
    ));
    public.finish().await?;
    all.finish().await?;
    remove_egress(&cx.docker, &public_instance).await
}

/// `orchestrator egress remove` for `instance`, and its runner networks.
async fn remove_egress(docker: &Docker, instance: &str) -> Result<()> {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["egress", "remove"])
        .env("ORCHESTRATOR_ID", instance)
        .env("RUST_LOG", "warn")
        .status()?;
    anyhow::ensure!(
        status.success(),
        "`orchestrator egress remove` failed: {status}"
    );
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![format!("taylored-orchestrator-id={instance}")],
    )]);
    let networks = docker
        .list_networks(Some(
            bollard::query_parameters::ListNetworksOptionsBuilder::new()
                .filters(&filters)
                .build(),
        ))
        .await?;
    for network in networks {
        if let Some(id) = network.id {
            docker.remove_network(&id).await?;
        }
    }
    Ok(())
}

/// Warm-pool provisions; the pool is full before each sample.
async fn warm_pool(cx: &mut Context) -> Result<()> {
    let cold_p50 = cx.cold_p50;
    let pool = cx.sizes.warm_pool;
    let samples = cx.sizes.warm_samples;
    println!(
        "\n[warm pool] WARM_POOL_SIZE={pool}, {samples} provisions without a session id, pool full before each"
    );
    let service = cx
        .part_service("warm", &[("WARM_POOL_SIZE", pool.to_string())])
        .await?;
    let reader = Db::connect_read_only(&service.db_path.display().to_string()).await?;
    let wait_full = async || -> Result<()> {
        let full = poll_until(Duration::from_secs(120), "the warm pool filled", || async {
            let warm: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM runners WHERE pooled = 1 AND state = 'running'",
            )
            .fetch_one(reader.pool())
            .await
            .unwrap_or(0);
            (warm as usize >= pool).then_some(())
        });
        full.await.map_err(anyhow::Error::msg)
    };
    let mut times = Vec::new();
    for _ in 0..samples {
        wait_full().await?;
        let started = Instant::now();
        service.provision(None).await?;
        times.push(started.elapsed());
    }
    for (q, name) in [(0.5, "p50"), (0.95, "p95")] {
        let measured = percentile(&times, q);
        let (baseline, ratio) = match cold_p50 {
            Some(cold) => (
                format!("{:.1} ms cold p50", ms(cold)),
                ms(measured) / ms(cold),
            ),
            None => ("-".to_owned(), f64::NAN),
        };
        let (target, met) = if q == 0.5 {
            ("<= 10 ms", Some(ms(measured) <= 10.0))
        } else {
            ("-", None)
        };
        cx.push(figure(
            format!("warm-pool provision {name}"),
            format!("{:.1} ms", ms(measured)),
            baseline,
            ratio,
            target,
            met,
        ));
    }
    drop(reader);
    service.finish().await
}

/// Restart-to-ready with growing numbers of runners to reconcile.
async fn restart(cx: &mut Context) -> Result<()> {
    let instance = cx.instances.new_instance(&cx.prefix, "restart");
    let db_path = cx.db_path("restart");
    let image = cx.image.clone();
    let config = ServiceConfig {
        image: &image,
        instance: &instance,
        db_path: &db_path,
        extra_env: &[],
    };
    println!(
        "\n[restart] runners to reconcile: 0 (baseline), then {:?}",
        cx.sizes.restart_sizes
    );
    // First start creates and migrates the database; the baseline is a
    // restart on it with no runners.
    spawn_service(&config).await?.stop().await?;
    let empty = spawn_service(&config).await?;
    let baseline = empty.spawn_to_ready();
    println!(
        "  0 runners: ready {:.0} ms after spawn ({})",
        ms(baseline),
        empty.startup_times()
    );
    crash_mid_burst(cx, baseline).await?;
    let mut service = empty;
    let mut have = 0;
    let mut points = vec![(0usize, baseline)];
    for &size in &cx.sizes.restart_sizes.clone() {
        if size > have {
            let started = Instant::now();
            provision_many(&service, "restart", have..size, 8).await?;
            println!(
                "  provisioned {} runners in {:.1} s",
                size - have,
                started.elapsed().as_secs_f64()
            );
            have = size;
        }
        service.stop().await?;
        service = spawn_service(&config).await?;
        let took = service.spawn_to_ready();
        println!(
            "  {size} runners: ready {:.0} ms after spawn (reconcile: {})",
            ms(took),
            service.summary
        );
        points.push((size, took));
        cx.push(figure(
            format!("restart-to-ready, {size} runners"),
            format!("{:.0} ms", ms(took)),
            format!("{:.0} ms, 0 runners", ms(baseline)),
            ms(took) / ms(baseline),
            "< 2 s at 500",
            (size >= 500).then(|| took < Duration::from_secs(2)),
        ));
    }
    if let [(n0, t0), .., (n1, t1)] = points[..]
        && n1 > n0
    {
        let per_runner = (ms(t1) - ms(t0)) / (n1 - n0) as f64;
        let at_500 = ms(t0) + per_runner * (500 - n0) as f64;
        cx.notes.push(format!(
            "restart: about {per_runner:.2} ms more per runner to reconcile; \
             linear extrapolation to 500 runners: {at_500:.0} ms"
        ));
    }
    service.stop().await?;
    let started = Instant::now();
    let removed = remove_instance_containers(&instance).await;
    println!(
        "  removed {removed} runners in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A kill in the middle of a burst of provisions, then a restart: the
/// engine finishes creates whose client is gone, so the restart finds
/// half-created containers and unfinished rows. Runners ignore SIGTERM and
/// have no init process, the case where a graceful stop waits longest.
async fn crash_mid_burst(cx: &mut Context, empty_restart: Duration) -> Result<()> {
    let burst = cx.sizes.burst;
    let instance = cx.instances.new_instance(&cx.prefix, "crash");
    let db_path = cx.db_path("crash");
    let image = cx.image.clone();
    let extra_env = [
        ("RUNNER_INIT", "false".to_owned()),
        ("RUNNER_STOP_TIMEOUT_SECONDS", "10".to_owned()),
    ];
    let config = ServiceConfig {
        image: &image,
        instance: &instance,
        db_path: &db_path,
        extra_env: &extra_env,
    };
    let service = spawn_service(&config).await?;
    let sessions: Vec<String> = (0..burst).map(|i| format!("crash-{i}")).collect();
    let (client, base) = (service.client.clone(), service.base.clone());
    let in_flight = tokio::spawn({
        let sessions = sessions.clone();
        async move {
            let provisions = sessions.iter().map(|session| {
                client
                    .post(format!("{base}/api/runner/provision"))
                    .header("X-Session-Id", session)
                    .json(&serde_json::json!({}))
                    .send()
            });
            futures_util::future::join_all(provisions).await
        }
    });
    // Killed once half of the burst's containers exist.
    let half = poll_until(
        Duration::from_secs(120),
        "half the burst's containers",
        || async {
            (container_ids(&cx.docker, &instance).await.len() >= burst.div_ceil(2)).then_some(())
        },
    );
    half.await.map_err(anyhow::Error::msg)?;
    service.kill_9();
    let _ = in_flight.await;
    let found = container_ids(&cx.docker, &instance).await.len();

    // Every session heartbeats as soon as the service listens, before its
    // startup reconcile is done: each is held until then and answered 200
    // (kept) or 404 (gone), never 503.
    let mut service = spawn_listening(&config).await?;
    let answers = futures_util::future::join_all(sessions.iter().map(|session| {
        let request = service
            .client
            .post(format!("{}/api/runner/heartbeat", service.base))
            .json(&serde_json::json!({ "sessionId": session }));
        let started = service.process.started;
        async move {
            let status = request
                .send()
                .await
                .map(|response| response.status().as_u16());
            (status, started.elapsed())
        }
    }));
    let (answers, ready) = tokio::join!(answers, service.wait_ready());
    ready?;
    let ready = service.spawn_to_ready();
    let mut all_answered = Duration::ZERO;
    let (mut kept, mut gone) = (0, 0);
    for (status, at) in answers {
        match status {
            Ok(200) => kept += 1,
            Ok(404) => gone += 1,
            other => anyhow::bail!("a heartbeat sent during the restart answered {other:?}"),
        }
        all_answered = all_answered.max(at);
    }
    let (repaired, summary) = service.wait_repaired().await?;
    println!(
        "  kill mid-burst of {burst}: {found} containers then; ready {:.0} ms after spawn \
         ({}; {}); heartbeats sent as it listened: every session answered by {:.0} ms \
         ({kept} x 200, {gone} x 404, none refused), \
         repairs done at {:.0} ms ({summary})",
        ms(ready),
        service.startup_times(),
        service.summary,
        ms(all_answered),
        ms(repaired)
    );
    cx.push(figure(
        format!("restart-to-ready, kill mid-burst of {burst}"),
        format!("{:.0} ms", ms(ready)),
        format!("{:.0} ms, 0 runners", ms(empty_restart)),
        ms(ready) / ms(empty_restart),
        "<= 1.5x",
        Some(ms(ready) <= 1.5 * ms(empty_restart)),
    ));
    cx.push(figure(
        "every session 200/404 after the crash",
        format!("{:.0} ms", ms(all_answered)),
        format!("{:.0} ms, ready", ms(ready)),
        ms(all_answered) / ms(ready),
        "<= 2 s from spawn",
        Some(all_answered <= Duration::from_secs(2)),
    ));
    cx.notes.push(format!(
        "crash mid-burst: {found} containers at the kill; startup repairs (unsettled rows, leftover containers killed) done {:.0} ms after spawn, in the background",
        ms(repaired)
    ));
    service.finish().await
}

/// The ids of `instance`'s containers, running or not.
async fn container_ids(docker: &Docker, instance: &str) -> Vec<String> {
    let containers = instance_containers(docker, instance).await;
    containers.into_iter().filter_map(|c| c.id).collect()
}

/// Fills a stopped instance's database with `fresh` rows (fake container
/// ids, heartbeat now) and `stale` ones (heartbeat 2 h ago, containers that
/// do not exist), then times one reaper pass in-process.
async fn reaper_pass(
    cx: &Context,
    name: &str,
    fresh: usize,
    stale: usize,
) -> Result<(Duration, usize, QueryPlan)> {
    let instance = cx.instances.new_instance(&cx.prefix, name);
    let url = cx.db_path(name).display().to_string();
    fill_rows(&url, &instance, fresh, stale).await?;
    let service = in_process_service(cx, &url, &instance).await?;
    let plan = service.db.explain_reapable().await?;
    let reaper = service.reaper_with(Duration::from_secs(60), Duration::from_secs(3600));
    let started = Instant::now();
    let outcome = reaper.try_once(Utc::now()).await?;
    let took = started.elapsed();
    anyhow::ensure!(
        outcome.failed == 0,
        "the reaper failed to remove {outcome:?}"
    );
    Ok((took, outcome.reaped, plan))
}

/// Creates (and migrates, as the service does) the database at `url` with
/// `fresh` running rows named `session-<i>` (fake container ids, heartbeat
/// now) and `stale` ones after them (heartbeat 2 h ago, no container id).
async fn fill_rows(url: &str, instance: &str, fresh: usize, stale: usize) -> Result<()> {
    let db = Db::connect_unlocked(url).await?;
    let now = timestamp(Utc::now());
    let old = timestamp(Utc::now() - chrono::Duration::hours(2));
    let mut transaction = db.pool().begin().await?;
    for i in 0..fresh + stale {
        let is_stale = i >= fresh;
        sqlx::query(
            "INSERT INTO runners (session_id, kind, state, container_name, container_id, \
             host_port, created_at, updated_at, last_heartbeat_at, pooled) \
             VALUES (?1, 'session', 'running', ?2, ?3, ?4, ?5, ?5, ?6, 0)",
        )
        .bind(format!("session-{i}"))
        .bind(format!("{instance}-missing-{i}"))
        .bind((!is_stale).then(|| format!("{:064x}", i + 1)))
        .bind((i % 60_000 + 1024) as i64)
        .bind(if is_stale { &old } else { &now })
        .bind(if is_stale { &old } else { &now })
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    db.pool().close().await;
    Ok(())
}

/// The service's parts for `instance` on the database at `url`, in this
/// process, with nothing running in the background.
async fn in_process_service(cx: &Context, url: &str, instance: &str) -> Result<InProcess> {
    let settings = Settings::from_env_and_args([
        "orchestrator".to_owned(),
        format!("--database-url={url}"),
        format!("--orchestrator-id={instance}"),
        format!("--docker-image-name={}", cx.image),
        "--runner-stop-timeout-seconds=1".to_owned(),
        // Nothing runs in the background here to install rules.
        "--runner-egress=all".to_owned(),
    ])?;
    let db = Db::connect(url).await?;
    let backend = taylored_orchestrator::backend::from_settings(&settings)?;
    let firewall = Arc::new(taylored_orchestrator::egress::Nft);
    Ok(InProcess::new(db, backend, firewall, Arc::new(settings)))
}

/// Heartbeats of `BENCH_HB_SESSIONS` distinct running sessions against the
/// same server's `GET /`, then the flush of all their times in one
/// transaction against the flush of one. The rows have fake container ids,
/// so the service runs in this process (the binary's startup reconcile would
/// drop them): its router and server loop on the set loaded from the rows.
async fn sessions(cx: &mut Context) -> Result<()> {
    let count = cx.sizes.hb_sessions;
    let clients = cx.sizes.hb_clients;
    let half = cx.sizes.hb_seconds / 2.0;
    println!(
        "\n[sessions] {count} running sessions heartbeating from {clients} clients vs GET /, 2 x {half:.1} s each, then the flush of their times"
    );
    let instance = cx.instances.new_instance(&cx.prefix, "sessions");
    let url = cx.db_path("sessions").display().to_string();
    fill_rows(&url, &instance, count, 0).await?;
    let service = in_process_service(cx, &url, &instance).await?;
    let loaded = service.heartbeats.load_running().await?;
    anyhow::ensure!(
        loaded == count,
        "loaded {loaded} running sessions of {count}"
    );
    let readiness = Readiness::default();
    readiness.ready(Summary::default());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(taylored_orchestrator::http::serve(
        listener,
        service.front(readiness, shutdown.clone()),
        Duration::from_secs(60),
        shutdown.clone(),
    ));

    let url = format!("{base}/api/runner/heartbeat");
    let ok = reqwest::StatusCode::OK;
    let (answered, _) = run_load(Load::heartbeat(url.clone(), "session-0", ok), 1, 0.05).await;
    anyhow::ensure!(answered > 0, "no heartbeat answered 200");
    let started = Instant::now();
    let one = service.heartbeats.flush().await?;
    let one_took = started.elapsed();

    let root = Load::Root(format!("{base}/"));
    run_load(root.clone(), clients, 0.3).await; // warm-up
    let names = (0..count).map(|i| format!("session-{i}")).collect();
    let many = Load::Heartbeats(url, Arc::new(names), ok);
    let [root_rps, hb_rps] = alternate(cx, "sessions", [root, many], clients, half).await;
    let started = Instant::now();
    let written = service.heartbeats.flush().await?;
    let took = started.elapsed();
    shutdown.cancel();
    server.await?;

    cx.push(figure(
        format!("heartbeats of {count} sessions ({clients} clients)"),
        format!("{hb_rps:.0} req/s"),
        format!("{root_rps:.0} req/s GET /"),
        hb_rps / root_rps,
        "-",
        None,
    ));
    cx.push(figure(
        format!("flush of {written} heartbeat times"),
        format!("{:.1} ms", ms(took)),
        format!("{:.1} ms, {one} time", ms(one_took)),
        ms(took) / ms(one_took),
        "< 1 s, one statement",
        Some(written == count && took < Duration::from_secs(1)),
    ));
    let plan = service.db.explain_heartbeats_write().await?;
    cx.notes.push(format!(
        "heartbeat write plan (a key search per heartbeat): {}",
        plan.0.join("; ")
    ));
    Ok(())
}

async fn reaper(cx: &mut Context) -> Result<()> {
    let (rows, stale) = (cx.sizes.reaper_rows, cx.sizes.reaper_stale);
    println!(
        "\n[reaper] one pass over {rows} fresh + {stale} stale rows vs over {stale} stale rows alone"
    );
    let (baseline, _, _) = reaper_pass(cx, "reaper-base", 0, stale).await?;
    let (took, reaped, plan) = reaper_pass(cx, "reaper", rows, stale).await?;
    println!("  reaped {reaped}; EXPLAIN QUERY PLAN of Db::reapable:");
    for line in &plan.0 {
        println!("    {line}");
    }
    let indexed = plan.searches_only_indexes();
    cx.notes.push(format!(
        "reaper query plan ({}): {}",
        if indexed {
            "indexed, no full scan"
        } else {
            "NOT only index searches"
        },
        plan.0.join("; ")
    ));
    cx.push(figure(
        format!("reaper pass, {rows}+{stale} rows"),
        format!("{:.1} ms", ms(took)),
        format!("{:.1} ms, {stale} rows", ms(baseline)),
        ms(took) / ms(baseline),
        "index used",
        Some(indexed && reaped == stale),
    ));
    Ok(())
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

// ---------------------------------------------------------------------------
// The gateway.

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket to `path` on `port`, with `host` as its `Host`.
async fn open_socket(port: u16, host: &str, path: &str) -> Result<Socket> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = format!("ws://{host}{path}").into_client_request()?;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(socket)
}

/// One echo round trip of a Socket.IO-sized event.
async fn echo(socket: &mut Socket) -> Result<Duration> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let event = r#"42["echo",{"output":"hello from the runner"}]"#;
    let started = Instant::now();
    socket.send(Message::text(event)).await?;
    match socket.next().await {
        Some(Ok(Message::Text(text))) if text.as_str() == event => Ok(started.elapsed()),
        other => anyhow::bail!("the echo answered {other:?}"),
    }
}

/// `GET /` answered 200, timed.
async fn timed_get(client: &reqwest::Client, url: &str) -> Result<Duration> {
    let started = Instant::now();
    let response = client.get(url).send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    response.bytes().await?;
    Ok(started.elapsed())
}

/// Through the gateway against straight to the runner's loopback port:
/// WebSocket echo round trips and HTTP requests (interleaved one for one),
/// then the service's memory per idle WebSocket it carries.
async fn gateway(cx: &mut Context) -> Result<()> {
    let image = std::env::var("BENCH_GATEWAY_IMAGE").unwrap_or_else(|_| cx.image.clone());
    let env = [
        ("RUNNER_ACCESS", "gateway".to_owned()),
        ("DOCKER_IMAGE_NAME", image),
        // The stand-in runner spends a thread per connection, and the idle
        // sockets below are hundreds of them.
        ("RUNNER_PIDS_LIMIT", "4096".to_owned()),
    ];
    let service = cx.part_service("gateway", &env).await?;
    service.provision(Some("gateway-session")).await?;
    let row = Db::connect_unlocked(&service.db_path.display().to_string())
        .await?
        .find("gateway-session")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no row for the provisioned session"))?;
    let runner_port = row
        .host_port
        .ok_or_else(|| anyhow::anyhow!("no runner port"))?;
    let gateway_port = service.process.port;
    let host = format!("{}.runners.localhost:{gateway_port}", row.token);
    let samples = cx.sizes.gateway_samples;
    println!(
        "\n[gateway] {samples} WebSocket echoes and {samples} GET / through the gateway and straight to the runner, interleaved"
    );

    let direct_url = format!("http://127.0.0.1:{runner_port}/");
    let gateway_url = format!("http://{host}/");
    let client = reqwest::Client::builder()
        .resolve(
            &format!("{}.runners.localhost", row.token),
            std::net::SocketAddr::from(([127, 0, 0, 1], gateway_port)),
        )
        .build()?;
    let ready = poll_until(Duration::from_secs(10), "the runner answering", || async {
        timed_get(&client, &direct_url).await.ok()
    });
    ready.await.map_err(anyhow::Error::msg)?;
    let (mut direct_http, mut gateway_http) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        direct_http.push(timed_get(&client, &direct_url).await?);
        gateway_http.push(timed_get(&client, &gateway_url).await?);
    }
    let (direct, through) = (
        percentile(&direct_http, 0.5),
        percentile(&gateway_http, 0.5),
    );
    cx.push(figure(
        "HTTP GET through the gateway p50",
        format!("{:.2} ms", ms(through)),
        format!("{:.2} ms direct", ms(direct)),
        ms(through) / ms(direct),
        "-",
        None,
    ));

    let direct_host = format!("127.0.0.1:{runner_port}");
    let sockets = async {
        let direct = open_socket(runner_port, &direct_host, "/echo").await?;
        let through = open_socket(gateway_port, &host, "/echo").await?;
        Ok::<_, anyhow::Error>((direct, through))
    };
    let (mut direct_socket, mut gateway_socket) = match sockets.await {
        Ok(sockets) => sockets,
        Err(error) => {
            cx.notes.push(format!(
                "gateway: no WebSocket figures, the runner image does not take WebSockets ({error:#}); \
                 set BENCH_GATEWAY_IMAGE to one that does"
            ));
            return service.finish().await;
        }
    };
    let (mut direct_ws, mut gateway_ws) = (Vec::new(), Vec::new());
    for _ in 0..samples.min(10) {
        echo(&mut direct_socket).await?;
        echo(&mut gateway_socket).await?;
    }
    for _ in 0..samples {
        direct_ws.push(echo(&mut direct_socket).await?);
        gateway_ws.push(echo(&mut gateway_socket).await?);
    }
    let (direct, through) = (percentile(&direct_ws, 0.5), percentile(&gateway_ws, 0.5));
    let ratio = ms(through) / ms(direct);
    cx.push(figure(
        "WebSocket echo through the gateway p50",
        format!("{:.3} ms", ms(through)),
        format!("{:.3} ms direct", ms(direct)),
        ratio,
        "<= 1.3x",
        Some(ratio <= 1.3),
    ));
    let (direct, through) = (percentile(&direct_ws, 0.95), percentile(&gateway_ws, 0.95));
    cx.push(figure(
        "WebSocket echo through the gateway p95",
        format!("{:.3} ms", ms(through)),
        format!("{:.3} ms direct", ms(direct)),
        ms(through) / ms(direct),
        "-",
        None,
    ));

    let count = cx.sizes.gateway_sockets;
    let (_, before) = service.memory_kib();
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        let mut socket = open_socket(gateway_port, &host, "/echo").await?;
        echo(&mut socket).await?;
        idle.push(socket);
    }
    let (_, after) = service.memory_kib();
    let per_socket = (after.saturating_sub(before)) as f64 * 1024.0 / count as f64;
    cx.push(figure(
        format!("RSS per idle proxied WebSocket ({count})"),
        format!("{:.1} KiB", per_socket / 1024.0),
        format!("{:.1} MiB before", before as f64 / 1024.0),
        after as f64 / before.max(1) as f64,
        "-",
        None,
    ));
    drop(idle);
    service.finish().await
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
const PARTS: [&str; 8] = [
    "throughput",
    "sessions",
    "cold",
    "egress",
    "warm",
    "reaper",
    "restart",
    "gateway",
];

async fn bench(cx: &mut Context) -> Result<()> {
    let started = Instant::now();
    for part in PARTS {
        if !cx.sizes.runs(part) {
            continue;
        }
        match part {
            "throughput" => throughput(cx).await?,
            "sessions" => sessions(cx).await?,
            "cold" => cold(cx).await?,
            "egress" => egress(cx).await?,
            "warm" => warm_pool(cx).await?,
            "reaper" => reaper(cx).await?,
            "gateway" => gateway(cx).await?,
            _ => restart(cx).await?,
        }
    }
    print_summary(cx, started.elapsed());
    Ok(())
}

fn main() {
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
