//! Restart-to-ready with growing numbers of runners to reconcile, and after a
//! kill in the middle of a burst of provisions, against a restart with no
//! runners.

use std::time::{Duration, Instant};

use crate::harness::{
    Context, Result, ServiceConfig, figure, heartbeat_request, ms, provision_many,
    provision_request, remove_instance_containers, spawn_listening, spawn_service,
};
use crate::support::cleanup::instance_containers;
use crate::support::wait::poll_until;

use bollard::Docker;

/// Restart-to-ready with growing numbers of runners to reconcile.
pub async fn restart(cx: &mut Context) -> Result<()> {
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
    // The same runners, the database lost: every row rebuilt from the
    // engine's labels (the token key kept beside it).
    if let Some(&(size, normal)) = points.last().filter(|(size, _)| *size > 0) {
        service.stop().await?;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
        }
        service = spawn_service(&config).await?;
        let took = service.spawn_to_ready();
        println!(
            "  {size} runners, database deleted: ready {:.0} ms after spawn (reconcile: {})",
            ms(took),
            service.summary
        );
        cx.push(figure(
            format!("rebuild from the engine, {size} runners"),
            format!("{:.0} ms", ms(took)),
            format!("{:.0} ms, normal restart", ms(normal)),
            ms(took) / ms(normal),
            "",
            None,
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
            let provisions = sessions
                .iter()
                .map(|session| provision_request(&client, &base, Some(session)).send());
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
    let url = format!("{}/api/runner/heartbeat", service.base);
    let answers = futures_util::future::join_all(sessions.iter().map(|session| {
        let request = heartbeat_request(&service.client, &url, session);
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
