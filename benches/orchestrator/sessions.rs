//! Heartbeats spread over many running sessions against `GET /` of the same
//! in-process server, then the flush of all their times in one transaction
//! against the flush of one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{
    Context, Load, Result, alternate, figure, fill_rows, in_process_service, ms, run_load,
};

use taylored_orchestrator::domain::Summary;
use taylored_orchestrator::readiness::Readiness;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Heartbeats of `BENCH_HB_SESSIONS` distinct running sessions against the
/// same server's `GET /`, then the flush of all their times in one
/// transaction against the flush of one. The rows have fake container ids,
/// so the service runs in this process (the binary's startup reconcile would
/// drop them): its router and server loop on the set loaded from the rows.
pub async fn sessions(cx: &mut Context) -> Result<()> {
    let count = cx.sizes.hb_sessions;
    let clients = cx.sizes.hb_clients;
    let half = cx.sizes.hb_seconds / 2.0;
    println!(
        "\n[sessions] {count} running sessions heartbeating from {clients} clients vs GET /, 2 x {half:.1} s each, then the flush of their times"
    );
    let instance = cx.instances.new_instance(&cx.prefix, "sessions");
    let url = cx.db_url("sessions");
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
    let server = tokio::spawn(taylored_orchestrator::server::serve(
        listener,
        taylored_orchestrator::server::front(&service, readiness, shutdown.clone()),
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
