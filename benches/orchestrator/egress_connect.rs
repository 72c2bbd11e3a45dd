//! Connection setup from inside a runner to a public address through this
//! instance's egress rules (`RUNNER_EGRESS=public`) against a runner without
//! rules (`all`), interleaved in one run.
//!
//! A public address that leads nowhere real needs a world of its own, so
//! this part runs in the egress tier's (`tests/egress/world.sh`): a Docker
//! Engine in a network namespace, and the stand-in public host
//! (11.11.11.11) in another; routes are checked before the first probe, and
//! no packet leaves this machine's namespaces. It needs root, `nft` and the
//! tools the egress tier names, and says so when they are missing.
//!
//! The times are the runner's own (`GET /probe/connect`): `connect()` to
//! established, inside the runner's network namespace, so the HTTP round
//! trip that asks for them is not in the figure.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use serde_json::json;

use crate::egress_tier::{Egress, Runner};
use crate::harness::{Context, Result, figure, percentile};
use crate::support::images::build_images;
use crate::world::{self, World};

pub async fn egress_connect(cx: &mut Context) -> Result<()> {
    world::check_prerequisites()
        .map_err(|reason| anyhow!("the egress-connect part cannot run here: {reason}"))?;
    let (rounds, per_round) = (cx.sizes.connect_rounds, cx.sizes.connect_per_round);
    println!(
        "\n[egress-connect] {rounds} rounds of {per_round} connections to a public address, \
         under RUNNER_EGRESS=public and all, in the egress tier's world"
    );
    let images = tokio::task::spawn_blocking(build_images).await?;
    let runner_image = images.runner.clone();
    // Taken down when dropped, whatever happens below.
    let world = tokio::task::spawn_blocking(move || World::up("tbec", &[&runner_image]))
        .await?
        .map_err(|reason| anyhow!("could not bring the egress world up: {reason}"))?;
    let egress = Egress::new(world, images);
    let outcome = measure(cx, &egress, rounds, per_round).await;
    egress.clean_up();
    outcome
}

async fn measure(cx: &mut Context, egress: &Egress, rounds: usize, per_round: usize) -> Result<()> {
    let fail = |reason: String| anyhow!(reason);
    let public = egress
        .spawn(
            &egress.instance("bench-public"),
            &[("RUNNER_EGRESS", "public")],
        )
        .await
        .map_err(fail)?;
    let all = egress
        .spawn(&egress.instance("bench-all"), &[("RUNNER_EGRESS", "all")])
        .await
        .map_err(fail)?;
    let ruled = egress
        .provision(&public, "connect-public", json!({}))
        .await
        .map_err(fail)?;
    let open = egress
        .provision(&all, "connect-all", json!({}))
        .await
        .map_err(fail)?;
    let target = format!("{}:80", egress.world.public);
    // A warm-up round each (ARP, conntrack, the listener's first accept).
    connect_times(egress, &ruled, &target, 5).await?;
    connect_times(egress, &open, &target, 5).await?;
    let (mut ruled_times, mut open_times) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        ruled_times.extend(connect_times(egress, &ruled, &target, per_round).await?);
        open_times.extend(connect_times(egress, &open, &target, per_round).await?);
    }
    for (q, name) in [(0.5, "p50"), (0.9, "p90")] {
        let (measured, baseline) = (percentile(&ruled_times, q), percentile(&open_times, q));
        cx.push(figure(
            format!("connection setup {name}, RUNNER_EGRESS=public"),
            format!("{:.0} µs", micros(measured)),
            format!("{:.0} µs under all", micros(baseline)),
            micros(measured) / micros(baseline),
            "-",
            None,
        ));
    }
    // A connect that waited a second or more had its SYN sent again (the
    // kernel's first retransmission is at 1 s): counted, not hidden in a
    // percentile.
    let retried = |times: &[Duration]| {
        times
            .iter()
            .filter(|t| **t >= Duration::from_secs(1))
            .count()
    };
    cx.notes.push(format!(
        "connection setup: {} connections each from a runner under public (its instance's \
         nftables rules) and one under all (the default bridge, no rules) to a stand-in \
         public host, timed inside the runners; {} under public and {} under all waited for \
         a SYN retransmission (>= 1 s)",
        ruled_times.len(),
        retried(&ruled_times),
        retried(&open_times)
    ));
    let status = |s: crate::egress_tier::Service| async move {
        s.process
            .terminate(Duration::from_secs(30))
            .await
            .map(|_| ())
    };
    status(public).await.map_err(fail)?;
    status(all).await.map_err(fail)?;
    Ok(())
}

/// `count` connection setups from inside `runner` to `target`.
async fn connect_times(
    egress: &Egress,
    runner: &Runner,
    target: &str,
    count: usize,
) -> Result<Vec<Duration>> {
    let answer = egress
        .runner_get(
            runner,
            &format!("/probe/connect?addr={target}&count={count}"),
        )
        .await
        .map_err(|reason| anyhow!(reason))?;
    anyhow::ensure!(
        answer["ok"] == true,
        "runner {} could not connect to {target}: {answer}",
        runner.session
    );
    answer["micros"]
        .as_array()
        .context("no micros in the probe's answer")?
        .iter()
        .map(|m| {
            m.as_u64()
                .map(Duration::from_micros)
                .context("a time that is not a number")
        })
        .collect()
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
