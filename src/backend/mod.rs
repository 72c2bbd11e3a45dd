//! The seam to whatever runs the runners. [`RunnerBackend`] is everything
//! the service asks of an engine; the lifecycle, the reconciler, the drift
//! watcher, capacity, startup and `/readyz` reach the engine only through it.
//!
//! Implementations: [`docker::DockerBackend`] (one Docker Engine) and
//! [`memory::MemoryBackend`] (in memory, for tests that need no engine).
//! A runner's id is opaque to the service (a container id here; a Swarm
//! service id for a backend that spreads runners over nodes, which would
//! also report the host each runner is published on next to its port).

pub mod bridge;
pub mod docker;
mod error;
pub mod health;
pub mod labels;
pub mod memory;
mod network_mode;
pub mod swarm;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::config::{BackendKind, Settings};
use crate::domain::RunnerKind;
use crate::domain::token::TokenLabels;

pub use error::EngineError;
pub use network_mode::NetworkMode;

/// The port the runner listens on inside its container (the runner reads
/// `PORT`; the first orchestrator set 3000).
pub const RUNNER_PORT: u16 = 3000;

/// How a runner is stopped before it is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, then SIGKILL after `RUNNER_STOP_TIMEOUT_SECONDS`: for a
    /// runner a user may still be using.
    Graceful,
    /// SIGKILL at once: for runners nobody uses (never reached `running`,
    /// orphans, duplicates, leftovers).
    Kill,
}

/// What a runner is made of, apart from what the backend's settings fix
/// for every runner (image, instance, limits).
#[derive(Debug, Clone)]
pub struct RunnerSpec<'a> {
    pub session_id: &'a str,
    /// Unique per session and instance, so that the engine itself refuses a
    /// second runner for one session.
    pub name: &'a str,
    pub network_mode: &'a NetworkMode,
    pub kind: RunnerKind,
    /// Started for the warm pool (labelled so, for a restart to know).
    pub pooled: bool,
    /// Its token's nonce and digest, for its labels (`None`: a runner
    /// without a gateway token, as the first orchestrator's).
    pub token: Option<&'a TokenLabels>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedRunner {
    pub id: String,
    /// The host port clients reach it on; `None` when it has no network.
    pub host_port: Option<u16>,
    /// The node it runs on, for a backend that spreads runners over nodes;
    /// `None`: the one engine's host (`RUNNERS_HOST`).
    pub node: Option<RunnerNode>,
    /// Where this service reaches the runner's port itself (its container's
    /// address on its network, `ip:3000`), if the backend knows one.
    pub address: Option<String>,
}

/// The node of a runner on a backend with several (Swarm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerNode {
    /// The node's hostname, as operators know it.
    pub name: String,
    /// Where clients reach the node's published ports: its
    /// `taylored.runners-host` label, else its address.
    pub host: String,
    /// Whether the node is `ready`; a runner on a node that is not is lost.
    pub ready: bool,
}

/// A runner of this instance as the engine reports it, running or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRunner {
    pub id: String,
    pub name: String,
    pub session_id: String,
    pub running: bool,
    pub kind: RunnerKind,
    /// Started for the warm pool (it may have been claimed since).
    pub pooled: bool,
    pub host_port: Option<u16>,
    pub network_mode: NetworkMode,
    /// Seconds since the epoch; orders duplicates.
    pub created: i64,
    /// See [`StartedRunner::node`].
    pub node: Option<RunnerNode>,
    /// See [`StartedRunner::address`].
    pub address: Option<String>,
    /// What its labels say about its gateway token.
    pub token: Option<TokenLabels>,
}

/// A runner of this instance that stopped or vanished, as the engine's
/// event stream reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerEvent {
    pub session_id: String,
    pub runner_id: String,
    pub kind: RunnerKind,
    /// `die`, `oom` or `destroy`, with the exit code where there is one.
    pub description: String,
    /// Seconds since the epoch, to resume the stream after a reconnect.
    pub time: i64,
}

/// The stream of [`RunnerBackend::events`]; it ends when the engine closes
/// it, and the caller reconnects with a `since`.
pub type RunnerEvents = BoxStream<'static, Result<RunnerEvent, EngineError>>;

/// Everything the service asks of the engine that runs its runners. Every
/// method sees only this instance's runners (`ORCHESTRATOR_ID`).
#[async_trait]
pub trait RunnerBackend: Send + Sync + fmt::Debug {
    /// Creates and starts a runner and reads back its host port. A name
    /// already taken is a leftover of an earlier attempt that the caller's
    /// claim now owns: it is removed and the start retried once. On failure
    /// the caller removes whatever may have been created (by name), because
    /// only it knows whether the removal must be retried.
    async fn start(&self, spec: &RunnerSpec<'_>) -> Result<StartedRunner, EngineError>;

    /// Whether a runner (by id or name) runs, from its own state rather
    /// than a list; a missing one does not.
    async fn is_running(&self, runner: &str) -> Result<bool, EngineError>;

    /// Every runner of this instance, running or not.
    async fn list(&self) -> Result<Vec<ObservedRunner>, EngineError>;

    /// This instance's runners for one session, running or not.
    async fn list_session(&self, session_id: &str) -> Result<Vec<ObservedRunner>, EngineError>;

    /// Removes a runner (by id or name), first stopping it as `stop` says.
    /// One the engine does not know counts as removed.
    async fn remove(&self, runner: &str, stop: Stop) -> Result<(), EngineError>;

    /// This instance's runners dying, OOM-killed or removed (by the service
    /// too), from `since` (seconds since the epoch) on.
    fn events(&self, since: i64) -> RunnerEvents;

    /// Whether the engine answers; [`health::EngineHealth`] bounds and
    /// records it.
    async fn ping(&self) -> Result<(), EngineError>;

    /// Whether the runner image is on the engine (nothing is pulled).
    async fn image_present(&self) -> Result<bool, EngineError>;

    /// What an operator must do when the runner image is missing.
    fn missing_image_hint(&self) -> String;

    /// The engine host's memory in bytes, that the `auto` runner limit is
    /// derived from.
    async fn memory_total(&self) -> Result<u64, EngineError>;

    /// Creates the instance's runner network (`RUNNER_NETWORK`, or the
    /// egress policy's) if there is one and it is missing.
    async fn ensure_network(&self) -> Result<(), EngineError>;

    /// Creates a runner network if missing (a bridge, traffic between its
    /// containers off) and names its bridge interface on the engine's host,
    /// which the egress rules match.
    async fn runner_bridge(&self, network: &str) -> Result<String, EngineError>;

    /// Marks a warm runner claimed on the engine itself, before the claim
    /// is recorded, so that a lost or restored database cannot hand it out
    /// again. On one engine the claim watermark is raised to the runner's
    /// start for the pool (one write covers every claim of a burst; see
    /// `backend::docker::claims`), or an older version's warm container,
    /// without that label, is renamed `<name>-claimed` (a label cannot
    /// change on a running container); on Swarm the service's pooled label
    /// is set to `false`. `runner` is its id, `name` its name.
    async fn mark_claimed(&self, runner: &str, name: &str) -> Result<(), EngineError>;

    /// Where a waiting warm runner stands in the order its claims are best
    /// marked in (lowest first), when the backend keeps one: on one engine
    /// its start for the pool, since a claim's mark also covers every
    /// runner started before it.
    fn claim_order(&self, _runner: &str) -> Option<i64> {
        None
    }

    /// On a backend whose nodes each hold their own egress rules (Swarm):
    /// which nodes hold them now, runners being placed on those only.
    /// `None` (one engine): the rules are the service's own, on its host.
    async fn egress_nodes(&self) -> Result<Option<NodeCoverage>, EngineError> {
        Ok(None)
    }
}

/// Which nodes hold the egress rules (their agent runs), by hostname.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeCoverage {
    /// Nodes whose egress agent runs: runners under rules go there.
    pub ruled: Vec<String>,
    /// Ready nodes without one: no runner under rules is placed there.
    pub missing: Vec<String>,
}

/// The backend the settings ask for. Connects lazily: no request is made
/// until the first call.
pub fn from_settings(settings: &Settings) -> Result<Arc<dyn RunnerBackend>, EngineError> {
    let refused = swarm::spec::unsupported_settings(settings);
    if !refused.is_empty() {
        return Err(EngineError::Refused(format!(
            "RUNNER_BACKEND=swarm cannot apply {}",
            refused.join("; ")
        )));
    }
    Ok(match settings.runner_backend {
        BackendKind::Docker => Arc::new(docker::DockerBackend::connect(settings)?),
        BackendKind::Swarm => Arc::new(swarm::SwarmBackend::connect(settings)?),
    })
}
