//! Runner egress: where code inside a runner may connect to
//! (`RUNNER_EGRESS`), enforced outside the runner by nftables rules on the
//! engine's host, never by the runner's cooperation.
//!
//! - [`policy`](crate::domain::egress): the policies, the ranges that are never public, the
//!   allow-list;
//! - [`ruleset`]: the rules of one instance, rendered from those (pure);
//! - [`firewall`]: where rules go (the `nft` command, or memory in tests);
//! - [`Egress`] (here): the networks each policy's runners join, applying
//!   the rules at start, and checking (and repairing) them on every
//!   periodic reconcile.
//!
//! Runners of each enforced policy get a bridge network of their own
//! (`taylored-runners-<instance>`, or `RUNNER_NETWORK`, and
//! `<that>-none` for provisions that narrow to `none`); the rules match
//! those bridges, so that they apply to this instance's runners only.

pub mod firewall;
pub mod ruleset;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::backend::{NetworkMode, NodeCoverage, RunnerBackend};
use crate::config::{EGRESS_AGENT_LABEL as AGENT_LABEL, Settings};
use crate::db::{Actor, AuditAction, AuditEntry, Db};
use crate::metrics::Metrics;
use crate::shutdown::Ticks;

pub use crate::domain::egress::{AllowList, EgressPolicy};
pub use firewall::{Firewall, FirewallError, MemoryFirewall, Nft};
pub use ruleset::{Binding, Ruleset};

/// The audit log's session column for the egress rules' own entries.
pub const AUDIT_SUBJECT: &str = "(egress)";

/// The network runners of each policy join, derived from the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressNetworks {
    /// `RUNNER_EGRESS`.
    pub policy: EgressPolicy,
    /// The instance's runner network: `RUNNER_NETWORK`, else (when the
    /// policy is enforced) `taylored-runners-<instance>`; `None`: the
    /// engine's default bridge (`all` only).
    pub default: Option<String>,
    /// The networks of narrower policies, for provisions that ask for one.
    pub narrowed: Vec<(EgressPolicy, String)>,
}

impl EgressNetworks {
    /// The networks of `settings` (`RUNNER_EGRESS`, `RUNNER_NETWORK`).
    pub fn of(settings: &Settings) -> Self {
        Self::new(
            settings.egress.runner_egress,
            settings.limits.runner_network.as_deref(),
            &settings.orchestrator_id,
        )
    }

    pub fn new(policy: EgressPolicy, runner_network: Option<&str>, instance: &str) -> Self {
        let base = crate::config::runner_network_base(runner_network, instance);
        let narrowed = [EgressPolicy::None, EgressPolicy::Public]
            .into_iter()
            .filter(|narrower| *narrower < policy)
            .map(|narrower| (narrower, format!("{base}-{narrower}")))
            .collect();
        Self {
            policy,
            default: crate::config::runner_network(policy, runner_network, instance),
            narrowed,
        }
    }

    /// Every network with rules, and its policy.
    pub fn enforced(&self) -> Vec<(EgressPolicy, String)> {
        let default = self
            .default
            .iter()
            .filter(|_| self.policy.is_enforced())
            .map(|network| (self.policy, network.clone()));
        default.chain(self.narrowed.iter().cloned()).collect()
    }

    /// The network a provision joins: `requested` (its body's `egress`) may
    /// narrow the policy, never widen it; a runner under an enforced
    /// policy joins no network of the browser's choosing.
    pub fn network_for(
        &self,
        requested: Option<EgressPolicy>,
        mode: NetworkMode,
    ) -> Result<NetworkMode, EgressRefusal> {
        let policy = requested.unwrap_or(self.policy);
        if !self.policy.allows(policy) {
            return Err(EgressRefusal::Widens(self.policy));
        }
        match mode {
            // No network at all is narrower than any policy.
            NetworkMode::Isolated => Ok(NetworkMode::Isolated),
            NetworkMode::Named(_) if self.policy.is_enforced() || policy != self.policy => {
                Err(EgressRefusal::NamedNetwork(self.policy))
            }
            mode if policy == self.policy => Ok(mode),
            _ => Ok(NetworkMode::Named(
                self.narrowed
                    .iter()
                    .find(|(narrower, _)| *narrower == policy)
                    .map(|(_, network)| network.clone())
                    .expect("every narrower policy has a network"),
            )),
        }
    }
}

/// Why a provision's `egress` or `networkMode` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EgressRefusal {
    #[error(
        "egress may only narrow RUNNER_EGRESS={0} (to none, or public under all), never widen it"
    )]
    Widens(EgressPolicy),
    #[error(
        "networkMode may only be \"none\" under RUNNER_EGRESS={0}: another network would escape its rules"
    )]
    NamedNetwork(EgressPolicy),
}

/// What `/readyz` and the metrics say of the rules.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressStatus {
    pub policy: EgressPolicy,
    /// Whether the rules are in place (always true for `all`).
    pub enforced: bool,
    pub table: String,
    /// Why they are not, and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// On a swarm: the nodes whose egress agent runs, and those without.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCoverage>,
}

impl serde::Serialize for EgressPolicy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The warning `all` is named with, at start and on `/readyz`.
pub const ALL_WARNING: &str = "RUNNER_EGRESS=all: code in runners can reach this host, its \
     private network and the cloud metadata service (169.254.169.254)";

/// How a check of the rules ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// In place as rendered.
    Intact,
    /// Installed where there were none (the first start, or a table
    /// deleted by hand).
    Applied,
    /// Put back: the table differed from what was rendered.
    Repaired,
}

/// Applies this instance's rules and keeps them in place.
#[derive(Debug, Clone)]
pub struct Egress {
    instance: String,
    networks: EgressNetworks,
    allow: AllowList,
    backend: Arc<dyn RunnerBackend>,
    firewall: Arc<dyn Firewall>,
    metrics: Arc<Metrics>,
    /// Where applying and repairing are audited; none for the operator's
    /// `egress apply` on a host without the service's database.
    db: Option<Db>,
    status: Arc<Mutex<EgressStatus>>,
    /// Under `all`, whether a provision has narrowed the policy yet: until
    /// then there is nothing to install (no network, no table).
    narrowed: Arc<std::sync::atomic::AtomicBool>,
}

impl Egress {
    pub fn new(
        settings: &Settings,
        backend: Arc<dyn RunnerBackend>,
        firewall: Arc<dyn Firewall>,
        metrics: Arc<Metrics>,
        db: Option<Db>,
    ) -> Self {
        let egress = &settings.egress;
        let networks = EgressNetworks::of(settings);
        let status = EgressStatus {
            policy: egress.runner_egress,
            enforced: !egress.runner_egress.is_enforced(),
            table: ruleset::table_name(&settings.orchestrator_id),
            problem: None,
            warning: (!egress.runner_egress.is_enforced()).then(|| ALL_WARNING.to_owned()),
            nodes: None,
        };
        metrics.egress_policy(egress.runner_egress.as_str());
        Self {
            instance: settings.orchestrator_id.clone(),
            networks,
            allow: egress.runner_egress_allow.clone(),
            backend,
            firewall,
            metrics,
            db,
            status: Arc::new(Mutex::new(status)),
            narrowed: Arc::default(),
        }
    }

    /// Whether there are rules to keep: always under an enforced policy,
    /// under `all` once a provision narrowed it.
    fn needed(&self) -> bool {
        self.networks.policy.is_enforced()
            || self.narrowed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn networks(&self) -> &EgressNetworks {
        &self.networks
    }

    pub fn status(&self) -> EgressStatus {
        self.status.lock().expect("egress status").clone()
    }

    /// Makes sure a provision may narrow the policy: its networks and rules
    /// in place (installed now, under `all`, for the first one); the reason
    /// if they are not.
    pub async fn narrowing(&self) -> Result<(), String> {
        if !self
            .narrowed
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.check().await?;
        }
        match &self.status().problem {
            None => Ok(()),
            Some(problem) => Err(problem.clone()),
        }
    }

    /// The rules as they would be installed now (their networks created).
    pub async fn ruleset(&self) -> Result<Ruleset, String> {
        let mut bindings = Vec::new();
        for (policy, network) in self.networks.enforced() {
            let interface = self
                .backend
                .runner_bridge(&network)
                .await
                .map_err(|error| {
                    format!(
                        "cannot set up the runner network `{network}` for RUNNER_EGRESS: {error}"
                    )
                })?;
            bindings.push(Binding { interface, policy });
        }
        Ok(Ruleset::new(&self.instance, &bindings, &self.allow))
    }

    /// Makes the installed rules what they should be, and says what it did.
    /// An error says what is missing and how to fix it; the status carries
    /// it to `/readyz`.
    pub async fn check(&self) -> Result<Checked, String> {
        if !self.needed() {
            return Ok(Checked::Intact);
        }
        let outcome = self.check_uncounted().await;
        let mut status = self.status.lock().expect("egress status");
        match &outcome {
            Ok(_) => {
                status.enforced = true;
                status.problem = None;
            }
            Err(problem) => {
                status.enforced = !self.networks.policy.is_enforced();
                status.problem = Some(problem.clone());
            }
        }
        self.metrics.egress_enforced(outcome.is_ok());
        outcome
    }

    async fn check_uncounted(&self) -> Result<Checked, String> {
        let rules = self.ruleset().await?;
        // On a swarm the rules are each node's own (its agent's).
        let nodes = self.backend.egress_nodes().await.map_err(|error| {
            format!(
                "RUNNER_EGRESS={} cannot be checked on the swarm's nodes: {error}",
                self.networks.policy
            )
        })?;
        if let Some(coverage) = nodes {
            return self.record_coverage(coverage).await;
        }
        let what = |error: FirewallError| {
            format!(
                "RUNNER_EGRESS={} cannot be enforced: {error}; or set RUNNER_EGRESS=all to run \
                 runners without egress rules",
                self.networks.policy
            )
        };
        let installed = self.firewall.installed(&rules.table).await.map_err(what)?;
        let checked = match installed {
            Some(comments) if comments == rules.comments() => return Ok(Checked::Intact),
            Some(_) => Checked::Repaired,
            None => Checked::Applied,
        };
        self.firewall.apply(&rules).await.map_err(what)?;
        let reason = match checked {
            Checked::Repaired => {
                self.metrics.egress_repaired();
                format!(
                    "the egress rules in table inet {} differed from RUNNER_EGRESS={} (changed by \
                     hand?) and were put back",
                    rules.table, self.networks.policy
                )
            }
            _ => {
                self.metrics.egress_applied();
                format!(
                    "egress rules for RUNNER_EGRESS={} installed in table inet {} ({} rules)",
                    self.networks.policy,
                    rules.table,
                    rules.comments().len()
                )
            }
        };
        tracing::warn!(table = %rules.table, "{reason}");
        let action = match checked {
            Checked::Repaired => AuditAction::EgressRepaired,
            _ => AuditAction::EgressApplied,
        };
        self.audit(action, &reason).await;
        Ok(checked)
    }

    /// What a swarm's nodes hold, recorded: a node that gained or lost its
    /// agent is logged and audited, and with none the policy cannot be
    /// enforced.
    async fn record_coverage(&self, coverage: NodeCoverage) -> Result<Checked, String> {
        let policy = self.networks.policy;
        let previous = {
            let mut status = self.status.lock().expect("egress status");
            status.nodes.replace(coverage.clone()).unwrap_or_default()
        };
        self.metrics
            .egress_nodes(coverage.ruled.len(), coverage.missing.len());
        let gained: Vec<&String> = coverage
            .ruled
            .iter()
            .filter(|node| !previous.ruled.contains(node))
            .collect();
        for node in &gained {
            let reason = format!(
                "node {node} runs this instance's egress agent: runners under RUNNER_EGRESS={policy} \
                 may be placed there"
            );
            tracing::info!(%node, "{reason}");
            self.audit(AuditAction::EgressApplied, &reason).await;
        }
        for node in coverage
            .missing
            .iter()
            .filter(|node| !previous.missing.contains(node))
        {
            let reason = format!(
                "node {node} runs no egress agent of this instance (a global service labelled \
                 {AGENT_LABEL}={}): no runner under RUNNER_EGRESS={policy} is placed there",
                self.instance
            );
            tracing::warn!(%node, "{reason}");
            self.audit(AuditAction::EgressMissing, &reason).await;
        }
        if coverage.ruled.is_empty() {
            return Err(format!(
                "RUNNER_EGRESS={policy} cannot be enforced: no swarm node runs this instance's \
                 egress agent (`orchestrator egress node` as a global service labelled \
                 {AGENT_LABEL}={}, see docs/swarm.md#runner-egress); or set RUNNER_EGRESS=all \
                 to run runners without egress rules",
                self.instance
            ));
        }
        Ok(if gained.is_empty() {
            Checked::Intact
        } else {
            Checked::Applied
        })
    }

    async fn audit(&self, action: AuditAction, reason: &str) {
        let entry = AuditEntry {
            session_id: AUDIT_SUBJECT,
            container_id: None,
            actor: Actor::Reconciler,
            action,
            reason,
        };
        if let Some(db) = &self.db
            && let Err(error) = db.audit(&entry, Utc::now()).await
        {
            tracing::warn!(%error, "could not write the egress audit entry");
        }
    }

    /// Checks the rules every `interval` until shutdown.
    pub async fn run_until_stopped(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = Ticks::new(interval, shutdown);
        let mut last_problem = None;
        while ticks.next().await {
            let problem = self.check().await.err();
            // Said once, not every interval.
            if problem.is_some() && problem != last_problem {
                tracing::error!("{}", problem.as_deref().unwrap_or_default());
            }
            last_problem = problem;
        }
    }

    /// Deletes this instance's rules (`orchestrator egress remove`).
    pub async fn remove(&self) -> Result<bool, FirewallError> {
        self.firewall
            .remove(&ruleset::table_name(&self.instance))
            .await
    }
}

#[cfg(test)]
mod tests;
