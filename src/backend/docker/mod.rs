//! [`RunnerBackend`] on one Docker Engine: a runner is a container. The
//! container's make-up is in [`spec`], listing and removal in `containers`,
//! the event stream in `events`, the record of warm claims in [`claims`].

mod claims;
mod containers;
pub(super) mod error;
mod events;
pub mod spec;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, NetworkCreateRequest};
use bollard::query_parameters::CreateContainerOptionsBuilder;

use self::claims::ClaimRecord;
use self::error::{classify_start_error, status_of};
use self::spec::{ContainerSpec, RUNNER_PORT_KEY};
use super::{
    EngineError, ObservedRunner, RunnerBackend, RunnerEvents, RunnerSpec, StartedRunner, Stop,
};
use crate::backend::bridge::{BRIDGE_NAME_OPTION, bridge_name, bridge_options, config_network};
use crate::backend::labels::CLAIMED_SUFFIX;
use crate::config::{INSTANCE_LABEL, POOLED_AT_LABEL, Settings};

/// Seconds any single engine request may take (on top of a stop's grace).
const ENGINE_TIMEOUT_SECONDS: u64 = 20;
/// How long `docker info` may take when asked for the host's memory.
const INFO_TIMEOUT: Duration = Duration::from_secs(2);

/// A handle on the engine, bound to this instance's image and labels.
#[derive(Debug, Clone)]
pub struct DockerBackend {
    docker: Docker,
    spec: ContainerSpec,
    stop_timeout_seconds: u32,
    /// The engine of a swarm node, for its egress agent: a runner network
    /// is then the node's config-only half of the manager's swarm-scoped
    /// one (see [`DockerBackend::connect_swarm_node`]).
    swarm_node: bool,
    /// Where warm claims are recorded on the engine (see [`claims`]).
    claims: Arc<ClaimRecord>,
}

impl DockerBackend {
    /// Connects lazily: no request is made until the first call.
    pub fn connect(settings: &Settings) -> Result<Self, EngineError> {
        let docker = client(settings)?;
        let claims = ClaimRecord::new(
            docker.clone(),
            settings.orchestrator_id.clone(),
            settings.docker_image_name.clone(),
        );
        Ok(Self {
            docker,
            spec: ContainerSpec::new(settings),
            stop_timeout_seconds: settings.runner_stop_timeout_seconds,
            swarm_node: false,
            claims: Arc::new(claims),
        })
    }

    /// The engine of a swarm node, as its egress agent (`orchestrator
    /// egress node`) sees it: [`RunnerBackend::runner_bridge`] creates the
    /// config-only network the swarm-scoped runner network takes its bridge
    /// from on this node, and names that bridge. It starts no runner.
    pub fn connect_swarm_node(settings: &Settings) -> Result<Self, EngineError> {
        Ok(Self {
            swarm_node: true,
            ..Self::connect(settings)?
        })
    }

    /// `ORCHESTRATOR_ID`: the instance label value of this service's runners.
    pub fn instance(&self) -> &str {
        &self.spec.instance
    }

    /// The create request for a runner (public for the benchmark's baseline,
    /// which sends the very same body to the engine without the service).
    pub fn container_body(&self, runner: &RunnerSpec<'_>) -> ContainerCreateBody {
        self.spec.body(runner)
    }

    /// A name conflict is a leftover of an earlier attempt that the caller's
    /// claim now owns: it is removed and the create retried once.
    async fn create(
        &self,
        runner: &RunnerSpec<'_>,
        pooled_at: Option<i64>,
    ) -> Result<String, EngineError> {
        let options = CreateContainerOptionsBuilder::new()
            .name(runner.name)
            .build();
        let mut body = self.spec.body(runner);
        if let (Some(at), Some(labels)) = (pooled_at, body.labels.as_mut()) {
            labels.insert(POOLED_AT_LABEL.to_owned(), at.to_string());
        }
        let classify = |error| classify_start_error(error, &self.spec.image, runner.network_mode);
        match self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            Ok(created) => return Ok(created.id),
            Err(error) if status_of(&error) == Some(409) => {
                tracing::warn!(
                    container = runner.name,
                    "removing a leftover container with this session's name"
                );
                self.remove(runner.name, Stop::Kill).await?;
            }
            Err(error) => return Err(classify(error)),
        }
        self.docker
            .create_container(Some(options), body)
            .await
            .map(|created| created.id)
            .map_err(classify)
    }

    /// Starts a created container and reads the host port the engine
    /// assigned at start (it is only visible now).
    async fn start_and_read_port(
        &self,
        container_id: &str,
        runner: &RunnerSpec<'_>,
    ) -> Result<(Option<u16>, Option<String>), BollardError> {
        self.docker.start_container(container_id, None).await?;
        if runner.network_mode.is_isolated() {
            return Ok((None, None));
        }
        let inspected = self.docker.inspect_container(container_id, None).await?;
        let settings = inspected.network_settings.unwrap_or_default();
        let address = settings.networks.as_ref().and_then(|networks| {
            runner_address(networks.values().map(|n| n.ip_address.as_deref()))
        });
        let bindings = settings
            .ports
            .and_then(|mut ports| ports.remove(RUNNER_PORT_KEY).flatten())
            .unwrap_or_default();
        let host_port = self.spec.pick_host_port(bindings.iter().map(|binding| {
            (
                binding.host_ip.as_deref(),
                binding
                    .host_port
                    .as_deref()
                    .and_then(|port| port.parse().ok()),
            )
        }));
        Ok((host_port, address))
    }

    /// A container's `taylored-runner-pooled-at`, read from the engine.
    async fn pooled_at_label(&self, container: &str) -> Result<Option<i64>, EngineError> {
        let inspected = self.docker.inspect_container(container, None).await?;
        Ok(inspected
            .config
            .and_then(|config| config.labels)
            .and_then(|labels| crate::backend::labels::pooled_at(&labels)))
    }
}

/// The runner's port at its container's address on its network (a runner
/// joins one), which this service reaches from the engine's host.
pub(super) fn runner_address<'a>(ips: impl Iterator<Item = Option<&'a str>>) -> Option<String> {
    ips.flatten()
        .find(|ip| !ip.is_empty())
        .map(|ip| format!("{ip}:{}", super::RUNNER_PORT))
}

/// A client for `DOCKER_HOST` (or Docker's defaults), connected lazily.
pub(super) fn client(settings: &Settings) -> Result<Docker, EngineError> {
    let docker = match &settings.docker_host {
        Some(host) => Docker::connect_with_host(host)?,
        None => Docker::connect_with_defaults()?,
    };
    // The grace of a stop must fit in one request's time.
    let timeout = ENGINE_TIMEOUT_SECONDS + u64::from(settings.runner_stop_timeout_seconds);
    Ok(docker.with_timeout(Duration::from_secs(timeout)))
}

#[async_trait]
impl RunnerBackend for DockerBackend {
    async fn start(&self, runner: &RunnerSpec<'_>) -> Result<StartedRunner, EngineError> {
        // A warm runner is labelled with its start, after the claim
        // watermark (see `claims`).
        let pooled_at = match runner.pooled {
            true => Some(self.claims.next_pooled_at().await?),
            false => None,
        };
        let id = self.create(runner, pooled_at).await?;
        if let Some(at) = pooled_at {
            self.claims.remember(&id, at);
        }
        let (host_port, address) = self
            .start_and_read_port(&id, runner)
            .await
            .map_err(|error| classify_start_error(error, &self.spec.image, runner.network_mode))?;
        if host_port.is_none() && !runner.network_mode.is_isolated() {
            return Err(EngineError::PortNotPublished(id));
        }
        tracing::info!(container = runner.name, container_id = %id, ?host_port, "runner container started");
        Ok(StartedRunner {
            id,
            host_port,
            node: None,
            address,
        })
    }

    async fn is_running(&self, runner: &str) -> Result<bool, EngineError> {
        self.inspect_running(runner).await
    }

    async fn list(&self) -> Result<Vec<ObservedRunner>, EngineError> {
        self.list_labelled(None).await
    }

    async fn list_session(&self, session_id: &str) -> Result<Vec<ObservedRunner>, EngineError> {
        self.list_labelled(Some(session_id)).await
    }

    async fn remove(&self, runner: &str, stop: Stop) -> Result<(), EngineError> {
        self.remove_container(runner, stop).await?;
        self.claims.forget(runner);
        Ok(())
    }

    fn claim_order(&self, runner: &str) -> Option<i64> {
        self.claims.pooled_at(runner)
    }

    /// Raises the claim watermark to the runner's start (see [`claims`]);
    /// a warm runner of an older version, without that label, is renamed.
    async fn mark_claimed(&self, runner: &str, name: &str) -> Result<(), EngineError> {
        if name.ends_with(CLAIMED_SUFFIX) {
            return Ok(());
        }
        let pooled_at = match self.claims.pooled_at(runner) {
            Some(at) => Some(at),
            None => self.pooled_at_label(runner).await?,
        };
        if let Some(at) = pooled_at {
            self.claims.cover(at).await?;
            self.claims.forget(runner);
            return Ok(());
        }
        let options = bollard::query_parameters::RenameContainerOptionsBuilder::new()
            .name(&format!("{name}{CLAIMED_SUFFIX}"))
            .build();
        Ok(self.docker.rename_container(runner, options).await?)
    }

    fn events(&self, since: i64) -> RunnerEvents {
        self.runner_events(since)
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.docker.ping().await?;
        Ok(())
    }

    async fn image_present(&self) -> Result<bool, EngineError> {
        match self.docker.inspect_image(&self.spec.image).await {
            Ok(_) => Ok(true),
            Err(error) if status_of(&error) == Some(404) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    fn missing_image_hint(&self) -> String {
        format!(
            "the runner image {image} is not on the Docker Engine; build it \
             (`docker compose build runner-builder`, or `docker build -t {image} <runner directory>`) \
             or set DOCKER_IMAGE_NAME",
            image = self.spec.image
        )
    }

    /// `docker info`'s `MemTotal`.
    async fn memory_total(&self) -> Result<u64, EngineError> {
        let info = tokio::time::timeout(INFO_TIMEOUT, self.docker.info())
            .await
            .map_err(|_| EngineError::Unavailable("no answer to `info` within 2 s".to_owned()))??;
        info.mem_total
            .and_then(|bytes| u64::try_from(bytes).ok())
            .filter(|&bytes| bytes > 0)
            .ok_or_else(|| EngineError::Unavailable("the engine reports no MemTotal".to_owned()))
    }

    /// With traffic between its containers off, so one runner cannot reach
    /// another.
    async fn ensure_network(&self) -> Result<(), EngineError> {
        match &self.spec.default_network {
            Some(name) => self.runner_bridge(name).await.map(drop),
            None => Ok(()),
        }
    }

    /// A network this service creates gets a bridge name derived from its
    /// own (`com.docker.network.bridge.name`); one created by someone else
    /// has Docker's `br-<id>`, or the name its options give.
    async fn runner_bridge(&self, name: &str) -> Result<String, EngineError> {
        if self.swarm_node {
            let config = config_network(name);
            match self.docker.inspect_network(&config, None).await {
                Ok(_) => {}
                Err(error) if status_of(&error) == Some(404) => {
                    self.create_network(&config, true).await?;
                }
                Err(error) => return Err(error.into()),
            }
            return Ok(bridge_name(name));
        }
        let network = match self.docker.inspect_network(name, None).await {
            Ok(network) => network,
            Err(error) if status_of(&error) == Some(404) => {
                self.create_network(name, false).await?;
                self.docker.inspect_network(name, None).await?
            }
            Err(error) => return Err(error.into()),
        };
        if network.driver.as_deref() != Some("bridge") {
            return Err(EngineError::Refused(format!(
                "the runner network {name} is a {} network; egress rules need a bridge",
                network.driver.as_deref().unwrap_or("driverless")
            )));
        }
        let named = network
            .options
            .as_ref()
            .and_then(|options| options.get(BRIDGE_NAME_OPTION).cloned());
        let id = network.id.unwrap_or_default();
        Ok(named.unwrap_or_else(|| format!("br-{}", &id[..id.len().min(12)])))
    }
}

impl DockerBackend {
    /// Creates the bridge network `name`, or with `config_only` a node's
    /// config-only network `<runner network>-config`; one that exists is
    /// left as it is.
    async fn create_network(&self, name: &str, config_only: bool) -> Result<(), EngineError> {
        let runner_network = match config_only {
            true => name.strip_suffix("-config").unwrap_or(name),
            false => name,
        };
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            config_only: config_only.then_some(true),
            options: Some(bridge_options(runner_network)),
            labels: Some(HashMap::from([(
                INSTANCE_LABEL.to_owned(),
                self.spec.instance.clone(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => {
                tracing::info!(network = %name, config_only, "created a runner network (inter-container traffic off)");
                Ok(())
            }
            // Created meanwhile by another instance (or, config-only, there
            // already: the engine says 409 for a name taken).
            Err(error) if status_of(&error) == Some(409) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}
