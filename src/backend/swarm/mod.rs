//! [`RunnerBackend`] on Docker Swarm (`RUNNER_BACKEND=swarm`): `DOCKER_HOST`
//! names a manager, and a runner is a service of one replica whose port is
//! published in host mode on the node that runs its task. The service's
//! make-up is in [`spec`], its host ports in [`ports`], and what the swarm
//! says about services, tasks and nodes in `observe`.
//!
//! Swarm reports no task events, so the drift reconcile's timer
//! (`RECONCILE_INTERVAL_SECONDS`) is what notices a runner that stopped or a
//! node that was lost; [`RunnerBackend::events`] yields nothing here.

mod egress;
mod observe;
pub mod ports;
pub mod spec;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::TaskState;

use self::observe::{latest_task, published_port, service_port};
use self::ports::PortPool;
use self::spec::ServiceTemplate;
use super::docker::error::status_of;
use super::{
    EngineError, NodeCoverage, ObservedRunner, RunnerBackend, RunnerEvents, RunnerSpec,
    StartedRunner, Stop,
};
use crate::config::Settings;

/// How often a starting runner's task is looked at.
const TASK_POLL: Duration = Duration::from_millis(100);
/// How long the manager may take to answer `info`/`nodes` for the memory.
const INFO_TIMEOUT: Duration = Duration::from_secs(2);

/// A handle on a swarm manager, bound to this instance's image and labels.
#[derive(Debug)]
pub struct SwarmBackend {
    docker: Docker,
    image: String,
    template: ServiceTemplate,
    ports: PortPool,
    start_timeout: Duration,
}

impl SwarmBackend {
    /// Connects lazily: no request is made until the first call.
    pub fn connect(settings: &Settings) -> Result<Self, EngineError> {
        Ok(Self {
            docker: super::docker::client(settings)?,
            image: settings.docker_image_name.clone(),
            template: ServiceTemplate::new(settings),
            ports: PortPool::new(settings.swarm.runner_port_range),
            start_timeout: settings.swarm.runner_start_timeout,
        })
    }

    /// The image's ID on the manager: services name it so that no node
    /// asks a registry (every node must have loaded the same image).
    async fn image_id(&self) -> Result<String, EngineError> {
        match self.docker.inspect_image(&self.image).await {
            Ok(image) => image
                .id
                .ok_or_else(|| EngineError::Refused("the image has no ID".to_owned())),
            Err(error) if status_of(&error) == Some(404) => {
                Err(EngineError::ImageNotFound(self.image.clone()))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The first start or removal after a restart learns which ports the
    /// runners that already exist hold.
    async fn seed_ports(&self) -> Result<(), EngineError> {
        if !self.ports.is_seeded() {
            let existing = self.observe(None).await?;
            self.ports
                .seed(existing.iter().filter_map(|runner| runner.host_port));
        }
        Ok(())
    }

    async fn take_port(&self) -> Result<u16, EngineError> {
        self.seed_ports().await?;
        self.ports.take().ok_or_else(|| {
            EngineError::Refused("every port of RUNNER_PORT_RANGE is taken".to_owned())
        })
    }

    /// Creates the service; a name already taken is a leftover of an
    /// earlier attempt that the caller's claim now owns.
    async fn create(&self, runner: &RunnerSpec<'_>, port: u16) -> Result<String, EngineError> {
        let image_id = self.image_id().await?;
        let spec = self.template.service(runner, &image_id, port);
        match self.docker.create_service(spec.clone(), None).await {
            Ok(created) => return created.id.ok_or_else(no_id),
            Err(error) if status_of(&error) == Some(409) => {
                tracing::warn!(
                    service = runner.name,
                    "removing a leftover service with this session's name"
                );
                self.remove(runner.name, Stop::Kill).await?;
            }
            Err(error) => return Err(error.into()),
        }
        let created = self.docker.create_service(spec, None).await?;
        created.id.ok_or_else(no_id)
    }

    /// Waits until the service's task runs and its port is bound, or fails
    /// with what Swarm said: a task rejected (image missing on its node), or
    /// none placed in time (no node fits).
    async fn wait_running(&self, service_id: &str) -> Result<StartedRunner, EngineError> {
        let deadline = Instant::now() + self.start_timeout;
        let mut waiting_because = String::from("no task yet");
        loop {
            let tasks = self.tasks_of(&[service_id]).await?;
            if let Some(task) = latest_task(tasks.iter()) {
                let status = task.status.clone().unwrap_or_default();
                let said = status
                    .err
                    .clone()
                    .filter(|err| !err.is_empty())
                    .or(status.message.clone())
                    .unwrap_or_default();
                match status.state {
                    Some(TaskState::RUNNING) => {
                        let node_id = task.node_id.clone().unwrap_or_default();
                        let nodes = self.nodes().await?;
                        let node = nodes.get(&node_id).cloned();
                        let host_port = published_port(&status)
                            .ok_or_else(|| EngineError::PortNotPublished(service_id.to_owned()))?;
                        tracing::info!(service_id, node = ?node.as_ref().map(|n| &n.name), host_port,
                            "runner service started");
                        return Ok(StartedRunner {
                            id: service_id.to_owned(),
                            host_port: Some(host_port),
                            node,
                            // Reached on its node's published port.
                            address: None,
                        });
                    }
                    Some(
                        state @ (TaskState::FAILED
                        | TaskState::REJECTED
                        | TaskState::SHUTDOWN
                        | TaskState::COMPLETE
                        | TaskState::ORPHANED
                        | TaskState::REMOVE),
                    ) => {
                        let node_id = task.node_id.clone().unwrap_or_default();
                        let node = match self.nodes().await?.remove(&node_id) {
                            Some(node) => node.name,
                            None => node_id,
                        };
                        if said.contains("No such image") {
                            return Err(EngineError::ImageNotFound(format!(
                                "{} (on swarm node {node})",
                                self.image
                            )));
                        }
                        return Err(EngineError::Refused(format!(
                            "the runner's task is {state} on swarm node {node}: {said}"
                        )));
                    }
                    _ => waiting_because = said,
                }
            }
            if Instant::now() >= deadline {
                return Err(EngineError::Refused(format!(
                    "the runner's task did not start within {} s: {waiting_because}",
                    self.start_timeout.as_secs()
                )));
            }
            tokio::time::sleep(TASK_POLL).await;
        }
    }
}

fn no_id() -> EngineError {
    EngineError::Refused("the manager created a service without an ID".to_owned())
}

#[async_trait]
impl RunnerBackend for SwarmBackend {
    async fn start(&self, runner: &RunnerSpec<'_>) -> Result<StartedRunner, EngineError> {
        // Refused before anything is created.
        self.template.network_of(runner.network_mode)?;
        let port = self.take_port().await?;
        // On failure the caller removes the service by name, which gives
        // the port back.
        let id = match self.create(runner, port).await {
            Ok(id) => id,
            Err(error) => {
                self.ports.give_back(port);
                return Err(error);
            }
        };
        self.wait_running(&id).await
    }

    async fn is_running(&self, runner: &str) -> Result<bool, EngineError> {
        let service = match self.docker.inspect_service(runner, None).await {
            Ok(service) => service,
            Err(error) if status_of(&error) == Some(404) => return Ok(false),
            Err(error) => return Err(error.into()),
        };
        let Some(id) = service.id.clone() else {
            return Ok(false);
        };
        let observed = self.observe_services(vec![service], &[id.as_str()]).await?;
        Ok(observed.first().is_some_and(|runner| runner.running))
    }

    async fn list(&self) -> Result<Vec<ObservedRunner>, EngineError> {
        self.observe(None).await
    }

    async fn list_session(&self, session_id: &str) -> Result<Vec<ObservedRunner>, EngineError> {
        self.observe(Some(session_id)).await
    }

    /// Swarm stops the task with the grace of its spec
    /// (`RUNNER_STOP_TIMEOUT_SECONDS`) either way: a service is removed as
    /// a whole, and its container on its node goes with it.
    async fn remove(&self, runner: &str, stop: Stop) -> Result<(), EngineError> {
        let service = match self.docker.inspect_service(runner, None).await {
            Ok(service) => service,
            Err(error) if status_of(&error) == Some(404) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        // Before the delete, so that its port goes to the back of the queue.
        self.seed_ports().await?;
        match self.docker.delete_service(runner).await {
            Ok(()) => {}
            Err(error) if status_of(&error) == Some(404) => {}
            Err(error) => return Err(error.into()),
        }
        if let Some(port) = service_port(&service) {
            self.ports.give_back(port);
        }
        tracing::info!(service = runner, ?stop, "runner service removed");
        Ok(())
    }

    /// A service's labels can change without touching its task: the pooled
    /// label goes `false`.
    async fn mark_claimed(&self, runner: &str, _name: &str) -> Result<(), EngineError> {
        let service = self.docker.inspect_service(runner, None).await?;
        let mut spec = service.spec.unwrap_or_default();
        let mut labels = spec.labels.take().unwrap_or_default();
        labels.insert(crate::config::POOLED_LABEL.to_owned(), "false".to_owned());
        spec.labels = Some(labels);
        let version = service
            .version
            .and_then(|version| version.index)
            .unwrap_or_default();
        let options = bollard::query_parameters::UpdateServiceOptionsBuilder::new()
            .version(i32::try_from(version).unwrap_or(i32::MAX))
            .build();
        self.docker
            .update_service(runner, spec, options, None)
            .await?;
        Ok(())
    }

    fn events(&self, _since: i64) -> RunnerEvents {
        Box::pin(futures_util::stream::pending())
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.docker.ping().await?;
        Ok(())
    }

    async fn image_present(&self) -> Result<bool, EngineError> {
        match self.image_id().await {
            Ok(_) => Ok(true),
            Err(EngineError::ImageNotFound(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn missing_image_hint(&self) -> String {
        format!(
            "the runner image {image} is not on the swarm manager; load it on every node \
             (`docker save {image} | docker -H <node> load`) or set DOCKER_IMAGE_NAME",
            image = self.image
        )
    }

    /// The memory of the nodes that are ready.
    async fn memory_total(&self) -> Result<u64, EngineError> {
        let nodes = tokio::time::timeout(INFO_TIMEOUT, self.docker.list_nodes(None))
            .await
            .map_err(|_| {
                EngineError::Unavailable("no answer to `nodes` within 2 s".to_owned())
            })??;
        let total: i64 = nodes
            .iter()
            .filter(|node| observe::node_ready(node))
            .filter_map(|node| node.description.as_ref()?.resources.as_ref()?.memory_bytes)
            .sum();
        u64::try_from(total)
            .ok()
            .filter(|&bytes| bytes > 0)
            .ok_or_else(|| EngineError::Unavailable("no ready node reports its memory".to_owned()))
    }

    /// The runner network of an enforced egress policy, swarm-scoped (see
    /// `egress`); `RUNNER_NETWORK` is refused with this backend.
    async fn ensure_network(&self) -> Result<(), EngineError> {
        match self.template.default_network() {
            Some(network) => self.swarm_network(network).await.map(drop),
            None => Ok(()),
        }
    }

    /// The swarm-scoped runner network, created if missing; its bridge's
    /// name on every node, which the nodes' egress agents bind their rules
    /// to.
    async fn runner_bridge(&self, network: &str) -> Result<String, EngineError> {
        self.swarm_network(network).await
    }

    /// The nodes whose egress agent runs (labelled for placement) and the
    /// ready ones without.
    async fn egress_nodes(&self) -> Result<Option<NodeCoverage>, EngineError> {
        self.coverage().await.map(Some)
    }
}
