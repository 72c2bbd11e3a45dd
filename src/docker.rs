//! The Docker Engine as this service uses it: start a runner, list this
//! instance's runners, remove one. Everything else about Docker stays here.

use std::collections::HashMap;
use std::net::IpAddr;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, NetworkCreateRequest, PortBinding,
    ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::config::{
    DEFAULT_INSTANCE, INSTANCE_LABEL, POOLED_LABEL, RunnerLimits, SESSION_LABEL, SINGLETON_LABEL,
    Settings,
};
use crate::shutdown::Ticks;

/// The port the runner listens on inside its container (the runner reads
/// `PORT`; the first orchestrator set 3000).
pub const RUNNER_PORT: u16 = 3000;
const RUNNER_PORT_KEY: &str = "3000/tcp";
/// The network mode that gives a runner no network and no published port.
pub const ISOLATED_NETWORK: &str = "none";
/// How long a health check waits for the engine.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Most runner starts sent to the engine at once; further provisions wait
/// their turn here. The engine gains little from more in parallel on a small
/// host, and 100 at once (a class) made each of its calls slow enough to
/// reach `ENGINE_TIMEOUT_SECONDS` on a busy 2-core machine.
const STARTS_AT_ONCE: usize = 8;

/// How a runner is stopped before its container is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, then SIGKILL after `RUNNER_STOP_TIMEOUT_SECONDS`: for a
    /// runner a user may still be using.
    Graceful,
    /// SIGKILL at once: for containers nobody uses (never reached
    /// `running`, orphans, duplicates, leftovers).
    Kill,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("Docker image {0} not found")]
    ImageNotFound(String),
    #[error("Docker network {0} not found")]
    NetworkNotFound(String),
    #[error("container {0} is running but publishes no port for {RUNNER_PORT_KEY}")]
    PortNotPublished(String),
    /// The engine could not be reached or did not answer in time.
    #[error("Docker Engine unavailable: {0}")]
    Unavailable(String),
    #[error("Docker Engine error: {0}")]
    Docker(BollardError),
}

impl From<BollardError> for EngineError {
    /// Transport failures (socket gone, connection reset, timeout) mean the
    /// engine is unavailable; answers from the engine are ordinary errors.
    fn from(error: BollardError) -> Self {
        match error {
            BollardError::RequestTimeoutError
            | BollardError::IOError { .. }
            | BollardError::HttpClientError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::SocketNotFoundError(_) => EngineError::Unavailable(error.to_string()),
            other => EngineError::Docker(other),
        }
    }
}

impl EngineError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EngineError::Unavailable(_))
    }
}

/// Seconds any single engine request may take (on top of a stop's grace).
const ENGINE_TIMEOUT_SECONDS: u64 = 20;

/// What a runner container is made of, apart from its image and instance.
#[derive(Debug, Clone)]
pub struct RunnerSpec<'a> {
    pub session_id: &'a str,
    pub container_name: &'a str,
    /// `None` is the engine's default bridge; `Some("none")` no network.
    pub network_mode: Option<&'a str>,
    pub singleton: bool,
    pub pooled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedRunner {
    pub container_id: String,
    /// `None` when the runner has no network.
    pub host_port: Option<u16>,
}

/// A container of this instance as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    pub session_id: String,
    pub running: bool,
    pub singleton: bool,
    /// Started for the warm pool (it may have been claimed since).
    pub pooled: bool,
    pub host_port: Option<u16>,
    pub network_mode: Option<String>,
    /// Seconds since the epoch; orders duplicates.
    pub created: i64,
}

/// A handle on the engine, bound to this instance's image and labels.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    image: String,
    instance: String,
    bind_address: IpAddr,
    free_doors: u16,
    stop_timeout_seconds: u32,
    /// `RUNNER_INIT`: an init process as PID 1 of every runner.
    init: bool,
    limits: RunnerLimits,
    /// Whether the last health check reached the engine; lets requests fail
    /// fast instead of each waiting for a timeout while it is down.
    reachable: Arc<AtomicBool>,
    /// Bounds the starts in flight (see `STARTS_AT_ONCE`).
    starts: Arc<tokio::sync::Semaphore>,
}

impl Engine {
    /// Connects lazily: no request is made until the first call.
    pub fn connect(settings: &Settings) -> Result<Self, EngineError> {
        let docker = match &settings.docker_host {
            Some(host) => Docker::connect_with_host(host)?,
            None => Docker::connect_with_defaults()?,
        };
        // The grace of a stop must fit in one request's time.
        let timeout = ENGINE_TIMEOUT_SECONDS + u64::from(settings.runner_stop_timeout_seconds);
        let docker = docker.with_timeout(Duration::from_secs(timeout));
        Ok(Self {
            docker,
            image: settings.docker_image_name.clone(),
            instance: settings.orchestrator_id.clone(),
            bind_address: settings.runner_bind_address,
            free_doors: settings.free_doors,
            stop_timeout_seconds: settings.runner_stop_timeout_seconds,
            init: settings.runner_init,
            limits: settings.limits.clone(),
            reachable: Arc::new(AtomicBool::new(true)),
            starts: Arc::new(tokio::sync::Semaphore::new(STARTS_AT_ONCE)),
        })
    }

    pub fn image(&self) -> &str {
        &self.image
    }

    /// `ORCHESTRATOR_ID`: the instance label value of this service's runners.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Asks the engine whether it is there (within `HEALTH_TIMEOUT`) and
    /// records the answer for [`Engine::is_reachable`].
    pub async fn ping(&self) -> Result<(), EngineError> {
        let result = match tokio::time::timeout(HEALTH_TIMEOUT, self.docker.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(EngineError::from(error)),
            Err(_) => Err(EngineError::Unavailable(
                "no answer to a ping within 2 s".to_owned(),
            )),
        };
        let reachable = result.is_ok();
        if self.reachable.swap(reachable, Ordering::Relaxed) != reachable {
            if reachable {
                tracing::info!("Docker Engine reachable again");
            } else {
                tracing::warn!(error = %result.as_ref().unwrap_err(), "Docker Engine unreachable");
            }
        }
        result
    }

    /// Whether `DOCKER_IMAGE_NAME` is on the engine (nothing is pulled:
    /// runners start only from a local image).
    pub async fn image_present(&self) -> Result<bool, EngineError> {
        match self.docker.inspect_image(&self.image).await {
            Ok(_) => Ok(true),
            Err(error) if status_of(&error) == Some(404) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// What an operator must do when the runner image is missing.
    pub fn missing_image_hint(&self) -> String {
        format!(
            "the runner image {image} is not on the Docker Engine; build it \
             (`docker compose build runner-builder`, or `docker build -t {image} <runner directory>`) \
             or set DOCKER_IMAGE_NAME",
            image = self.image
        )
    }

    /// The engine host's memory in bytes (`docker info`'s `MemTotal`), that
    /// the default runner limit is derived from.
    pub async fn memory_total(&self) -> Result<u64, EngineError> {
        let info = tokio::time::timeout(HEALTH_TIMEOUT, self.docker.info())
            .await
            .map_err(|_| EngineError::Unavailable("no answer to `info` within 2 s".to_owned()))??;
        info.mem_total
            .and_then(|bytes| u64::try_from(bytes).ok())
            .filter(|&bytes| bytes > 0)
            .ok_or_else(|| EngineError::Unavailable("the engine reports no MemTotal".to_owned()))
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Called when a request has just reached the engine.
    pub fn mark_reachable(&self) {
        if !self.reachable.swap(true, Ordering::Relaxed) {
            tracing::info!("Docker Engine reachable again");
        }
    }

    /// Called when a request found the engine gone, so that the next ones
    /// fail fast until a health check reaches it again.
    pub fn mark_unreachable(&self) {
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!("Docker Engine unreachable");
        }
    }

    /// Pings the engine every `interval` until `shutdown`, keeping
    /// [`Engine::is_reachable`] current.
    pub async fn monitor_until_stopped(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = Ticks::new(interval, shutdown);
        while ticks.next().await {
            let _ = self.ping().await;
        }
    }

    /// Waits for a turn to start a runner (see `STARTS_AT_ONCE`); the start
    /// is made while the permit is held.
    pub async fn turn_to_start(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.starts
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// Creates and starts a runner and reads back the host port the engine
    /// assigned. On failure the caller removes whatever may have been
    /// created (by the container's name), because only it knows whether the
    /// removal must be retried.
    pub async fn start_runner(&self, spec: &RunnerSpec<'_>) -> Result<StartedRunner, EngineError> {
        let container_id = self.create(spec).await?;
        let host_port = self
            .start_and_read_port(&container_id, spec)
            .await
            .map_err(|error| match error {
                EngineError::Docker(error) => self.classify_error(error, spec),
                other => other,
            })?;
        tracing::info!(container = spec.container_name, %container_id, ?host_port, "runner container started");
        Ok(StartedRunner {
            container_id,
            host_port,
        })
    }

    /// The container name is derived from the session, so a name conflict
    /// means a leftover of an earlier attempt that the caller's claim now
    /// owns: it is removed and the create retried once.
    async fn create(&self, spec: &RunnerSpec<'_>) -> Result<String, EngineError> {
        let options = CreateContainerOptionsBuilder::new()
            .name(spec.container_name)
            .build();
        let body = self.container_body(spec);
        match self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            Ok(created) => return Ok(created.id),
            Err(error) if status_of(&error) == Some(409) => {
                tracing::warn!(
                    container = spec.container_name,
                    "removing a leftover container with this session's name"
                );
                self.remove(spec.container_name, Stop::Kill).await?;
            }
            Err(error) => return Err(self.classify_error(error, spec)),
        }
        self.docker
            .create_container(Some(options), body)
            .await
            .map(|created| created.id)
            .map_err(|error| self.classify_error(error, spec))
    }

    /// The engine reports a missing image at create and (on some versions)
    /// a missing network only at start; both are 404s told apart by text.
    fn classify_error(&self, error: BollardError, spec: &RunnerSpec<'_>) -> EngineError {
        match &error {
            BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            } => {
                let message = message.to_ascii_lowercase();
                if message.contains("network") {
                    EngineError::NetworkNotFound(spec.network_mode.unwrap_or_default().to_owned())
                } else if message.contains("image") {
                    EngineError::ImageNotFound(self.image.clone())
                } else {
                    error.into()
                }
            }
            _ => error.into(),
        }
    }

    async fn start_and_read_port(
        &self,
        container_id: &str,
        spec: &RunnerSpec<'_>,
    ) -> Result<Option<u16>, EngineError> {
        self.docker.start_container(container_id, None).await?;
        if spec.network_mode == Some(ISOLATED_NETWORK) {
            return Ok(None);
        }
        // The engine assigns the host port at start; it is only visible now.
        let inspected = self.docker.inspect_container(container_id, None).await?;
        let bindings = inspected
            .network_settings
            .and_then(|settings| settings.ports)
            .and_then(|mut ports| ports.remove(RUNNER_PORT_KEY).flatten())
            .unwrap_or_default();
        self.pick_host_port(bindings.iter().map(|binding| {
            (
                binding.host_ip.as_deref(),
                binding
                    .host_port
                    .as_deref()
                    .and_then(|port| port.parse().ok()),
            )
        }))
        .map(Some)
        .ok_or_else(|| EngineError::PortNotPublished(container_id.to_owned()))
    }

    /// Picks the binding on our bind address; without a `HostIp` the engine
    /// may bind IPv4 and IPv6 on different ports.
    fn pick_host_port<'a>(
        &self,
        bindings: impl Iterator<Item = (Option<&'a str>, Option<u16>)>,
    ) -> Option<u16> {
        let wanted = self.bind_address.to_string();
        let mut fallback = None;
        for (ip, port) in bindings {
            let Some(port) = port.filter(|port| *port != 0) else {
                continue;
            };
            if ip == Some(wanted.as_str()) {
                return Some(port);
            }
            fallback = fallback.or(Some(port));
        }
        fallback
    }

    /// The create request for a runner (public for the benchmark's baseline,
    /// which sends the very same body to the engine without the service).
    pub fn container_body(&self, spec: &RunnerSpec<'_>) -> ContainerCreateBody {
        let mut labels = HashMap::from([
            (SESSION_LABEL.to_owned(), spec.session_id.to_owned()),
            (INSTANCE_LABEL.to_owned(), self.instance.clone()),
        ]);
        if spec.singleton {
            labels.insert(SINGLETON_LABEL.to_owned(), "true".to_owned());
        }
        if spec.pooled {
            labels.insert(POOLED_LABEL.to_owned(), "true".to_owned());
        }
        let isolated = spec.network_mode == Some(ISOLATED_NETWORK);
        let (exposed_ports, port_bindings) = if isolated {
            (None, None)
        } else {
            let (exposed, bindings) = self.published_ports();
            (Some(exposed), Some(bindings))
        };
        let network_mode = spec
            .network_mode
            .or(self.limits.runner_network.as_deref())
            .map(str::to_owned);
        ContainerCreateBody {
            image: Some(self.image.clone()),
            env: Some(vec![format!("PORT={RUNNER_PORT}")]),
            labels: Some(labels),
            exposed_ports,
            host_config: Some(HostConfig {
                port_bindings,
                network_mode,
                // PID 1 forwards signals and reaps zombies: a runner whose
                // server ignores SIGTERM as PID 1 (Node.js) still stops.
                init: Some(self.init),
                ..self.confinement()
            }),
            ..Default::default()
        }
    }

    /// The limits that keep untrusted code from taking the host down: memory
    /// without extra swap, CPU, processes, open files, no privilege gain, no
    /// capabilities but those configured, optionally a read-only root.
    fn confinement(&self) -> HostConfig {
        let limits = &self.limits;
        HostConfig {
            memory: Some(limits.runner_memory),
            memory_swap: Some(limits.runner_memory),
            nano_cpus: Some((limits.runner_cpus * 1e9) as i64),
            pids_limit: Some(limits.runner_pids_limit),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".to_owned()),
                soft: Some(limits.runner_nofile),
                hard: Some(limits.runner_nofile),
            }]),
            security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: Some(limits.runner_capabilities.0.clone()),
            readonly_rootfs: Some(limits.runner_read_only),
            tmpfs: limits.runner_read_only.then(|| {
                HashMap::from([(
                    "/tmp".to_owned(),
                    format!("rw,noexec,nosuid,size={}", limits.runner_tmpfs_size),
                )])
            }),
            ..Default::default()
        }
    }

    /// Creates `RUNNER_NETWORK` if it is set and missing, with traffic
    /// between its containers off, so one runner cannot reach another.
    pub async fn ensure_runner_network(&self) -> Result<(), EngineError> {
        let Some(name) = &self.limits.runner_network else {
            return Ok(());
        };
        match self.docker.inspect_network(name, None).await {
            Ok(_) => return Ok(()),
            Err(error) if status_of(&error) == Some(404) => {}
            Err(error) => return Err(error.into()),
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".to_owned()),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_icc".to_owned(),
                "false".to_owned(),
            )])),
            labels: Some(HashMap::from([(
                INSTANCE_LABEL.to_owned(),
                self.instance.clone(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => {
                tracing::info!(network = %name, "created the runner network (inter-container traffic off)");
                Ok(())
            }
            // Created meanwhile by another instance.
            Err(error) if status_of(&error) == Some(409) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// The runner port on an engine-assigned host port, plus the
    /// `FREE_DOORS` ports 2999 down to 3000-N on the same host port numbers.
    fn published_ports(&self) -> (Vec<String>, HashMap<String, Option<Vec<PortBinding>>>) {
        let host_ip = Some(self.bind_address.to_string());
        let mut exposed = vec![RUNNER_PORT_KEY.to_owned()];
        let mut bindings = HashMap::from([(
            RUNNER_PORT_KEY.to_owned(),
            Some(vec![PortBinding {
                host_ip: host_ip.clone(),
                host_port: Some(String::new()),
            }]),
        )]);
        for door in 1..=self.free_doors {
            let port = RUNNER_PORT - door;
            let key = format!("{port}/tcp");
            exposed.push(key.clone());
            bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: host_ip.clone(),
                    host_port: Some(port.to_string()),
                }]),
            );
        }
        (exposed, bindings)
    }

    /// Removes a container, first stopping it as `stop` says. A container
    /// the engine does not know counts as removed.
    pub async fn remove(&self, container: &str, stop: Stop) -> Result<(), EngineError> {
        if stop == Stop::Graceful {
            let options = StopContainerOptionsBuilder::new()
                .t(self.stop_timeout_seconds as i32)
                .build();
            match self.docker.stop_container(container, Some(options)).await {
                Ok(()) => {}
                Err(error) if status_of(&error) == Some(404) => {
                    tracing::info!(container, "runner container already gone");
                    return Ok(());
                }
                // Stopping is a courtesy to the runner; the forced removal
                // below is what must succeed.
                Err(error) => tracing::warn!(container, %error, "stopping a runner failed"),
            }
        }
        // A forced removal kills what still runs (SIGKILL, no grace).
        let remove = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(container, Some(remove)).await {
            Ok(()) => {
                tracing::info!(container, ?stop, "runner container removed");
                Ok(())
            }
            Err(error) if status_of(&error) == Some(404) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Whether a container runs, from its own state (a missing one does not).
    pub async fn is_running(&self, container: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_container(container, None).await {
            Ok(inspected) => Ok(inspected
                .state
                .and_then(|state| state.running)
                .unwrap_or(false)),
            Err(error) if status_of(&error) == Some(404) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Every container of this instance, running or not.
    pub async fn list_runners(&self) -> Result<Vec<ObservedContainer>, EngineError> {
        self.list_labelled(SESSION_LABEL).await
    }

    /// This instance's containers for one session, running or not.
    pub async fn list_session_runners(
        &self,
        session_id: &str,
    ) -> Result<Vec<ObservedContainer>, EngineError> {
        self.list_labelled(&format!("{SESSION_LABEL}={session_id}"))
            .await
    }

    async fn list_labelled(
        &self,
        label_filter: &str,
    ) -> Result<Vec<ObservedContainer>, EngineError> {
        let filters = HashMap::from([("label", vec![label_filter])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self.docker.list_containers(Some(options)).await?;
        Ok(summaries
            .into_iter()
            .filter_map(|summary| {
                let labels = summary.labels.unwrap_or_default();
                if !belongs_to_instance(&labels, &self.instance) {
                    return None;
                }
                let ports = summary.ports.unwrap_or_default();
                let host_port = self.pick_host_port(
                    ports
                        .iter()
                        .filter(|port| port.private_port == RUNNER_PORT)
                        .map(|port| (port.ip.as_deref(), port.public_port)),
                );
                Some(ObservedContainer {
                    id: summary.id?,
                    name: summary
                        .names
                        .unwrap_or_default()
                        .first()
                        .map(|name| name.trim_start_matches('/').to_owned())
                        .unwrap_or_default(),
                    session_id: labels.get(SESSION_LABEL)?.clone(),
                    running: summary.state == Some(ContainerSummaryStateEnum::RUNNING),
                    singleton: labels.get(SINGLETON_LABEL).is_some_and(|v| v == "true"),
                    pooled: labels.get(POOLED_LABEL).is_some_and(|v| v == "true"),
                    host_port,
                    network_mode: summary
                        .host_config
                        .and_then(|config| config.network_mode)
                        .filter(|mode| !matches!(mode.as_str(), "default" | "bridge")),
                    created: summary.created.unwrap_or_default(),
                })
            })
            .collect())
    }
}

/// A runner of this instance that stopped or vanished, as the engine's
/// event stream reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerEvent {
    pub session_id: String,
    pub container_id: String,
    pub singleton: bool,
    /// `die`, `oom` or `destroy`, with the exit code where there is one.
    pub description: String,
    /// Seconds since the epoch, to resume the stream after a reconnect.
    pub time: i64,
}

impl Engine {
    /// This instance's runners dying, OOM-killed or removed, from `since`
    /// (seconds since the epoch) on. The stream ends when the engine
    /// restarts or the connection drops; the caller reconnects.
    pub fn runner_events(
        &self,
        since: i64,
    ) -> impl Stream<Item = Result<RunnerEvent, EngineError>> + use<> {
        let filters = HashMap::from([
            ("type", vec!["container"]),
            ("event", vec!["die", "oom", "destroy"]),
            ("label", vec![SESSION_LABEL]),
        ]);
        let options = bollard::query_parameters::EventsOptionsBuilder::new()
            .since(&since.to_string())
            .filters(&filters)
            .build();
        let instance = self.instance.clone();
        self.docker.events(Some(options)).filter_map(move |event| {
            let event = match event {
                Ok(event) => event,
                Err(error) => return std::future::ready(Some(Err(EngineError::from(error)))),
            };
            let actor = event.actor.unwrap_or_default();
            let attributes = actor.attributes.unwrap_or_default();
            let ours = belongs_to_instance(&attributes, &instance);
            let parsed = attributes
                .get(SESSION_LABEL)
                .filter(|_| ours)
                .map(|session| {
                    let action = event.action.unwrap_or_default();
                    let description = match attributes.get("exitCode") {
                        Some(code) => format!("{action} (exit code {code})"),
                        None => action,
                    };
                    Ok(RunnerEvent {
                        session_id: session.clone(),
                        container_id: actor.id.unwrap_or_default(),
                        singleton: attributes.get(SINGLETON_LABEL).is_some_and(|v| v == "true"),
                        description,
                        time: event.time.unwrap_or_default(),
                    })
                });
            std::future::ready(parsed)
        })
    }
}

/// Runners carry this instance's label; those that carry only the session
/// label were started by the first orchestrator and belong to the default
/// instance.
pub fn belongs_to_instance(labels: &HashMap<String, String>, instance: &str) -> bool {
    match labels.get(INSTANCE_LABEL) {
        Some(owner) => owner == instance,
        None => instance == DEFAULT_INSTANCE,
    }
}

/// The HTTP status of an engine error response, if it is one.
pub fn status_of(error: &BollardError) -> Option<u16> {
    match error {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn instance_scoping() {
        let legacy = labels(&[(SESSION_LABEL, "s")]);
        assert!(belongs_to_instance(&legacy, "default"));
        assert!(!belongs_to_instance(&legacy, "ci-1"));
        let scoped = labels(&[(SESSION_LABEL, "s"), (INSTANCE_LABEL, "ci-1")]);
        assert!(belongs_to_instance(&scoped, "ci-1"));
        assert!(!belongs_to_instance(&scoped, "default"));
    }
}
