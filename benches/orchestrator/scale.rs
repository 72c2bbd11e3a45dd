//! How the service's own costs grow with the number of sessions: at 0 (the
//! baseline), then each of `BENCH_SCALE_SIZES` (100, 1,000, 10,000).
//!
//! The engine cannot hold 10,000 runners on this machine, so each size runs
//! the service over the in-memory backend (a stand-in engine whose calls
//! cost next to nothing) and a real SQLite file, in a child process of its
//! own: this bench binary run again with `BENCH_SCALE_CHILD` set. So the
//! child's memory is the service's (plus the in-memory engine's records of
//! its runners, an upper bound), and the load comes from another process.
//!
//! The child provisions its sessions through the lifecycle (rows and runners
//! as a service makes them), stops that service and starts a new one on the
//! same file and engine: the restart. Then it times one periodic reconcile
//! pass, one reaper pass and the flush of every session's heartbeat in one
//! transaction, and reports them on a line of JSON. The parent then sends
//! heartbeats of every session (and `GET /`) over HTTP, reads the child's
//! RSS, and runs the release binary's `runners list` on the file.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::harness::{Context, Load, Result, alternate, figure, memory_kib, ms, run_load};

use taylored_orchestrator::backend::NetworkMode;
use taylored_orchestrator::backend::memory::MemoryBackend;
use taylored_orchestrator::config::Settings;
use taylored_orchestrator::domain::SessionId;
use taylored_orchestrator::startup::Application;

/// Set (to the number of sessions) in the child's environment.
const CHILD: &str = "BENCH_SCALE_CHILD";
/// The child's database file.
const CHILD_DB: &str = "BENCH_SCALE_DB";

/// What the child measured, on its one line of output.
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    port: u16,
    /// Provisioning every session before the restart (not a figure).
    fill_ms: f64,
    /// From the start of the new service's build to its readiness.
    restart_ms: f64,
    /// The startup reconcile's summary.
    summary: String,
    reconcile_ms: f64,
    reaper_ms: f64,
    reaped: usize,
    flush_ms: f64,
    flushed: usize,
    /// The child's RSS (MiB) after each step.
    stages: Vec<(String, f64)>,
}

/// One size's figures.
struct Point {
    sessions: usize,
    report: ChildReport,
    heartbeat_rps: Option<f64>,
    root_rps: f64,
    rss_mib: f64,
    peak_mib: f64,
    list_ms: f64,
    listed: usize,
}

pub async fn scale(cx: &mut Context) -> Result<()> {
    let sizes = cx.sizes.scale_sizes.clone();
    println!(
        "\n[scale] the service over the in-memory engine and a real SQLite file, in a child \
         process: 0 sessions (baseline), then {sizes:?}"
    );
    let mut points = Vec::new();
    for sessions in std::iter::once(0).chain(sizes) {
        let point = measure(cx, sessions).await?;
        println!(
            "  {sessions:>6} sessions: filled in {:.1} s; restart-to-ready {:.1} ms ({}); \
             reconcile {:.1} ms; reaper {:.2} ms; flush of {} {:.1} ms; heartbeats {}; \
             GET / {:.0} req/s; RSS {:.1} MiB (peak {:.1}); runners list {:.0} ms ({} rows)",
            point.report.fill_ms / 1000.0,
            point.report.restart_ms,
            point.report.summary,
            point.report.reconcile_ms,
            point.report.reaper_ms,
            point.report.flushed,
            point.report.flush_ms,
            point
                .heartbeat_rps
                .map_or("-".to_owned(), |rps| format!("{rps:.0} req/s")),
            point.root_rps,
            point.rss_mib,
            point.peak_mib,
            point.list_ms,
            point.listed,
        );
        println!(
            "         RSS after each step (MiB): {:?}",
            point.report.stages
        );
        points.push(point);
    }
    report(cx, &points);
    Ok(())
}

/// Runs the child for `sessions`, loads it, and stops it.
async fn measure(cx: &mut Context, sessions: usize) -> Result<Point> {
    let db_path = cx.db_path(&format!("scale-{sessions}"));
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .env(CHILD, sessions.to_string())
        .env(CHILD_DB, &db_path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("the child's pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("the child's stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(900), lines.next_line())
        .await
        .context("the scale child did not report within 900 s")??
        .context("the scale child exited without a report")?;
    let report: ChildReport =
        serde_json::from_str(&line).with_context(|| format!("the scale child's report: {line}"))?;
    anyhow::ensure!(
        report.flushed == sessions,
        "the flush wrote {} of {sessions} heartbeats",
        report.flushed
    );

    let base = format!("http://127.0.0.1:{}", report.port);
    let clients = cx.sizes.hb_clients;
    let half = cx.sizes.hb_seconds / 2.0;
    let root = Load::Root(format!("{base}/"));
    run_load(root.clone(), clients, 0.3).await; // warm-up
    let part = format!("scale {sessions}");
    let (heartbeat_rps, root_rps) = if sessions == 0 {
        let [root_rps] = alternate(cx, &part, [root], clients, half).await;
        (None, root_rps)
    } else {
        let names = (0..sessions).map(session_name).collect();
        let heartbeats = Load::Heartbeats(
            format!("{base}/api/runner/heartbeat"),
            Arc::new(names),
            reqwest::StatusCode::OK,
        );
        let [root_rps, hb_rps] = alternate(cx, &part, [root, heartbeats], clients, half).await;
        (Some(hb_rps), root_rps)
    };
    let (peak_kib, rss_kib) = memory_kib(pid);

    // `runners list` as an operator runs it, beside the running service.
    let started = Instant::now();
    let listed = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["runners", "list", "--json"])
        .env_clear()
        .env("DATABASE_URL", &db_path)
        .stderr(Stdio::inherit())
        .output()
        .await?;
    let list_took = started.elapsed();
    anyhow::ensure!(
        listed.status.success(),
        "runners list exited with {}",
        listed.status
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout)?;
    anyhow::ensure!(
        rows.len() == sessions,
        "runners list showed {} rows of {sessions}",
        rows.len()
    );

    // Closing its stdin stops the child.
    drop(child.stdin.take());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await??;
    anyhow::ensure!(status.success(), "the scale child exited with {status}");
    Ok(Point {
        sessions,
        report,
        heartbeat_rps,
        root_rps,
        rss_mib: rss_kib as f64 / 1024.0,
        peak_mib: peak_kib as f64 / 1024.0,
        list_ms: ms(list_took),
        listed: rows.len(),
    })
}

/// The curves as a table, and one figure per curve: the largest size
/// against the one ten times smaller.
fn report(cx: &mut Context, points: &[Point]) {
    type Value = fn(&Point) -> Option<f64>;
    let curves: [(&str, &str, Value, &str); 8] = [
        (
            "restart-to-ready",
            "ms",
            |p| Some(p.report.restart_ms),
            "< 1000 ms",
        ),
        (
            "periodic reconcile pass",
            "ms",
            |p| Some(p.report.reconcile_ms),
            "",
        ),
        ("reaper pass", "ms", |p| Some(p.report.reaper_ms), ""),
        (
            "heartbeat flush, every session",
            "ms",
            |p| Some(p.report.flush_ms),
            "",
        ),
        (
            "heartbeats, every session active",
            "req/s",
            |p| p.heartbeat_rps,
            "",
        ),
        ("`runners list --json`", "ms", |p| Some(p.list_ms), ""),
        (
            "RSS under heartbeat load",
            "MiB",
            |p| Some(p.rss_mib),
            "< 64 MiB",
        ),
        ("peak RSS (VmHWM)", "MiB", |p| Some(p.peak_mib), ""),
    ];
    let mut table = vec![
        format!(
            "| Sessions | {} |",
            points
                .iter()
                .map(|p| p.sessions.to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        format!("| --- |{}", " --- |".repeat(points.len())),
    ];
    for (name, unit, value, target) in curves {
        let cells: Vec<String> = points
            .iter()
            .map(|p| value(p).map_or("-".to_owned(), |v| format_value(v, unit)))
            .collect();
        table.push(format!("| {name} ({unit}) | {} |", cells.join(" | ")));
        let [.., smaller, largest] = points else {
            continue;
        };
        let (Some(at_largest), Some(at_smaller)) = (value(largest), value(smaller)) else {
            continue;
        };
        let growth = largest.sessions as f64 / smaller.sessions.max(1) as f64;
        let ratio = at_largest / at_smaller;
        // Throughput should stay flat; a cost may grow at most as the
        // sessions do (linearly).
        let linear = if unit == "req/s" {
            ratio >= 0.5
        } else {
            ratio <= growth * 1.2
        };
        let goal = match target {
            "< 1000 ms" => at_largest < 1000.0,
            "< 64 MiB" => at_largest < 64.0,
            _ => true,
        };
        let shape = if unit == "req/s" {
            ">= 0.5x".to_owned()
        } else {
            format!("<= {growth:.0}x")
        };
        cx.push(figure(
            format!("{name}, {} sessions", largest.sessions),
            format_value(at_largest, unit),
            format!("{} at {}", format_value(at_smaller, unit), smaller.sessions),
            ratio,
            if target.is_empty() {
                shape
            } else {
                format!("{shape}, {target}")
            },
            Some(linear && goal),
        ));
    }
    println!("\n  The curves (copy for docs/performance.md):");
    for line in &table {
        println!("  {line}");
    }
    cx.notes
        .push(format!("scale curves:\n{}", table.join("\n")));
}

fn format_value(value: f64, unit: &str) -> String {
    match unit {
        "req/s" => format!("{value:.0}"),
        "MiB" => format!("{value:.1}"),
        _ if value < 10.0 => format!("{value:.2}"),
        _ => format!("{value:.1}"),
    }
}

fn session_name(i: usize) -> String {
    format!("scale-session-{i}")
}

// ---------------------------------------------------------------------------
// The child.

/// Whether this process is a scale child; if so, runs it and exits.
pub fn run_child_if_asked() {
    let Ok(sessions) = std::env::var(CHILD) else {
        return;
    };
    let result = (|| -> Result<()> {
        let sessions: usize = sessions.parse().context(CHILD)?;
        let db = std::env::var(CHILD_DB).context(CHILD_DB)?;
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(child(sessions, &db))
    })();
    if let Err(error) = result {
        eprintln!("scale child failed: {error:#}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

fn own_rss_mib() -> f64 {
    memory_kib(std::process::id()).1 as f64 / 1024.0
}

fn child_settings(db: &str) -> Result<Settings> {
    Ok(Settings::from_env_and_args([
        "orchestrator".to_owned(),
        format!("--database-url={db}"),
        "--orchestrator-id=bench-scale".to_owned(),
        "--port=0".to_owned(),
        "--listen-address=127.0.0.1".to_owned(),
        "--max-concurrent-runners=0".to_owned(),
        "--provision-rate-per-minute=0".to_owned(),
        "--runner-egress=all".to_owned(),
        // The passes are timed here (the median of a few), not left to
        // their timers.
        "--cleanup-interval=3600".to_owned(),
        "--reconcile-interval=3600".to_owned(),
    ])?)
}

/// The service in this process on `backend`, until `shutdown`.
struct Running {
    service: taylored_orchestrator::service::Service,
    port: u16,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(db: &str, backend: &Arc<MemoryBackend>) -> Result<Running> {
    let app = Application::build_with_backend(child_settings(db)?, backend.clone()).await?;
    let (service, readiness, port) = (app.service().clone(), app.readiness().clone(), app.port());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    readiness
        .admit(Duration::from_secs(600))
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(Running {
        service,
        port,
        shutdown,
        task,
    })
}

impl Running {
    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

/// How many reconcile and reaper passes each median is taken over.
const PASSES: usize = 5;

/// The middle value (of an odd number of them).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn child(sessions: usize, db: &str) -> Result<()> {
    // The service's log (warnings only, unless RUST_LOG says otherwise) to
    // stderr, which the parent passes on.
    taylored_orchestrator::telemetry::init(child_settings(db)?.log_format);
    let backend = Arc::new(MemoryBackend::new());

    // The sessions, made as the service makes them.
    let started = Instant::now();
    let first = start(db, &backend).await?;
    let runners = first.service.runners.clone();
    let made: Vec<Result<()>> = futures_util::stream::iter(0..sessions)
        .map(|i| {
            let runners = runners.clone();
            async move {
                let session = SessionId::parse(&session_name(i)).map_err(anyhow::Error::msg)?;
                runners
                    .provision(Some(session), &NetworkMode::Default)
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    made.into_iter().collect::<Result<()>>()?;
    let fill_ms = ms(started.elapsed());
    drop(runners);
    first.stop().await?;
    let mut stages = vec![("filled".to_owned(), own_rss_mib())];

    // The restart, on the same file and engine.
    let started = Instant::now();
    let running = start(db, &backend).await?;
    let restart_ms = ms(started.elapsed());
    stages.push(("restarted".to_owned(), own_rss_mib()));
    let service = &running.service;
    let summary = format!("{} runners on the engine", backend.runners().len());

    // The passes' figures are the median of a few, as one pass of a few
    // milliseconds is at the mercy of the scheduler.
    let mut passes = Vec::with_capacity(PASSES);
    for _ in 0..PASSES {
        let started = Instant::now();
        let drift = service.reconciler().run_drift().await?;
        passes.push(ms(started.elapsed()));
        anyhow::ensure!(
            drift == Default::default(),
            "the reconcile pass changed something: {drift:?}"
        );
    }
    let reconcile_ms = median(&mut passes);
    stages.push(("reconciled".to_owned(), own_rss_mib()));

    let mut passes = Vec::with_capacity(PASSES);
    let mut reaped = 0;
    for _ in 0..PASSES {
        let started = Instant::now();
        let outcome = service.reaper().try_once(chrono::Utc::now()).await?;
        passes.push(ms(started.elapsed()));
        reaped += outcome.reaped;
    }
    let reaper_ms = median(&mut passes);

    // Every session's heartbeat, then their flush; again if the service's
    // own flusher (every second) took some of them first.
    let (mut flushed, mut flush_ms) = (0, 0.0);
    for _ in 0..3 {
        let now = chrono::Utc::now();
        let heartbeats = service.heartbeats.running();
        for i in 0..sessions {
            heartbeats.record(&session_name(i), now);
        }
        let started = Instant::now();
        flushed = service.heartbeats.flush().await?;
        flush_ms = ms(started.elapsed());
        if flushed == sessions {
            break;
        }
    }

    let report = ChildReport {
        port: running.port,
        fill_ms,
        restart_ms,
        summary,
        reconcile_ms,
        reaper_ms,
        reaped,
        flush_ms,
        flushed,
        stages,
    };
    println!("{}", serde_json::to_string(&report)?);
    // Serves until the parent closes stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
    })
    .await??;
    running.stop().await
}
