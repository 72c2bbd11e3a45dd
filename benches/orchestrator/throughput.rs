//! Heartbeat throughput of one session (and of an unknown one) against
//! `GET /` of the same service, and its peak memory under that load against
//! its idle memory.

use crate::harness::{Context, Load, Result, alternate, figure, run_load};

/// Heartbeat vs `GET /` throughput, and peak memory under that load.
pub async fn throughput(cx: &mut Context) -> Result<()> {
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
