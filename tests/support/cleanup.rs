//! The engine as the tests and the benchmark see it: the containers an
//! instance (`ORCHESTRATOR_ID`) started, and their removal, also from a
//! `Drop` (on panic too).

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::ContainerSummary;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use taylored_orchestrator::config::{INSTANCE_LABEL, SESSION_LABEL};

pub fn docker() -> Docker {
    Docker::connect_with_defaults().expect("Docker client (check DOCKER_HOST)")
}

/// `instance`'s containers, running or not.
pub async fn instance_containers(docker: &Docker, instance: &str) -> Vec<ContainerSummary> {
    let label = format!("{INSTANCE_LABEL}={instance}");
    let filters = HashMap::from([("label", vec![label.as_str(), SESSION_LABEL])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default()
}

/// Force-removes every container of the `instances`, 8 at a time, then the
/// runner networks the service created for them; returns how many
/// containers. Errors are ignored: what is gone is gone.
pub async fn remove_instances(instances: &[String]) -> usize {
    let docker = docker();
    let owned_by_one = |labels: Option<&HashMap<String, String>>| {
        labels
            .and_then(|labels| labels.get(INSTANCE_LABEL))
            .is_some_and(|owner| instances.contains(owner))
    };
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&HashMap::from([("label", vec![INSTANCE_LABEL])]))
        .build();
    let ids: Vec<String> = docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|container| owned_by_one(container.labels.as_ref()))
        .filter_map(|container| container.id)
        .collect();
    let count = ids.len();
    futures_util::stream::iter(ids)
        .for_each_concurrent(8, |id| {
            let docker = docker.clone();
            async move {
                let remove = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                let _ = docker.remove_container(&id, Some(remove)).await;
            }
        })
        .await;
    let options = ListNetworksOptionsBuilder::new()
        .filters(&HashMap::from([("label", vec![INSTANCE_LABEL])]))
        .build();
    for network in docker
        .list_networks(Some(options))
        .await
        .unwrap_or_default()
    {
        if let (Some(id), true) = (network.id, owned_by_one(network.labels.as_ref())) {
            let _ = docker.remove_network(&id).await;
        }
    }
    count
}

/// [`remove_instances`] for a `Drop`, which cannot await and may run inside
/// a runtime (or after its panic): from a thread with a runtime of its own.
pub fn remove_instances_blocking(instances: Vec<String>) -> usize {
    let cleanup = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(remove_instances(&instances))
    });
    cleanup.join().unwrap_or(0)
}
