//! Cold provisions under `RUNNER_EGRESS=public` (a network of the instance's
//! own, its rules in this host's nftables) against provisions under `all`
//! (the engine's default bridge, no rules), interleaved in one run.

use std::collections::HashMap;

use crate::harness::{Context, Result, figure, interleaved, ms, percentile};

use bollard::Docker;

/// Cold provisions under `RUNNER_EGRESS=public` (a network of the
/// instance's own, its rules installed in this host's nftables) against
/// `all` (the default bridge, no rules), interleaved in one run. The rules
/// and networks are removed afterwards.
pub async fn egress(cx: &mut Context) -> Result<()> {
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
    let (public_times, all_times) = interleaved(
        samples,
        async |i| public.provision(Some(&format!("egress-{i}"))).await,
        async |i| all.provision(Some(&format!("egress-{i}"))).await,
    )
    .await?;
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
