//! Cold provisions through the service against the engine's own create,
//! start and inspect of the same container body (with bollard directly),
//! interleaved one for one, then a concurrent burst of each.

use std::time::Instant;

use crate::harness::{
    Context, Result, figure, interleaved, ms, percentile, provision_many,
    remove_instance_containers,
};

use bollard::Docker;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use futures_util::StreamExt;
use taylored_orchestrator::backend::docker::DockerBackend;
use taylored_orchestrator::backend::{NetworkMode, RunnerSpec};
use taylored_orchestrator::config::Settings;
use taylored_orchestrator::domain::token::TokenKey;
use taylored_orchestrator::domain::{RunnerKind, SessionId};

/// An engine client configured as the service's (default limits), under an
/// instance label of its own so that the service never sees its containers.
pub(crate) fn raw_engine(image: &str, instance: &str) -> Result<DockerBackend> {
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

/// `n` raw starts (`raw_start`, named `<prefix>-<i>`), `concurrency` at a
/// time: their wall time, and the first failure if any (the caller removes
/// what was started either way).
pub(crate) async fn raw_starts(
    docker: &Docker,
    engine: &DockerBackend,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> (std::time::Duration, Result<()>) {
    let started = Instant::now();
    let results: Vec<Result<()>> = futures_util::stream::iter(0..n)
        .map(|i| async move { raw_start(docker, engine, &format!("{prefix}-{i}")).await })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    (started.elapsed(), results.into_iter().collect())
}

/// The engine's own work for a provision: create, start, and inspect of the
/// very container body the service sends (`DockerBackend::container_body`), with
/// bollard and nothing else.
pub(crate) async fn raw_start(
    docker: &Docker,
    engine: &DockerBackend,
    session: &str,
) -> Result<()> {
    let session = SessionId::parse(session)?;
    let name = session.container_name(engine.instance());
    // The same labels as the service's runners, token ones included.
    let (_, token) = TokenKey::generate().issue();
    let body = engine.container_body(&RunnerSpec {
        session_id: session.as_str(),
        name: &name,
        network_mode: &NetworkMode::Default,
        kind: RunnerKind::Session,
        pooled: false,
        token: Some(&token),
    });
    let options = CreateContainerOptionsBuilder::new().name(&name).build();
    let id = docker.create_container(Some(options), body).await?.id;
    docker.start_container(&id, None).await?;
    docker.inspect_container(&id, None).await?;
    Ok(())
}

/// Cold provisions interleaved with the engine's own create + start, then a
/// concurrent burst of each.
pub async fn cold(cx: &mut Context) -> Result<()> {
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
    let (service_times, raw_times) = interleaved(
        samples,
        async |i| service.provision(Some(&format!("cold-{i}"))).await,
        async |i| raw_start(&cx.docker, &raw, &format!("cold-{i}")).await,
    )
    .await?;
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
    let (raw_wall, started) = raw_starts(&cx.docker, &raw, "burst", burst, burst).await;
    started?;
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
