//! Runner egress on a swarm. The rules are each node's own: the egress
//! agent that runs on every node (`orchestrator egress node`, a global
//! service labelled `taylored-egress-agent=<ORCHESTRATOR_ID>`) installs them
//! in its node's kernel, bound to the bridge of the node's half of each
//! runner network. The manager's part is here:
//!
//! - the runner networks, swarm-scoped bridges created `--config-from`
//!   `<network>-config`, the config-only network each node's agent creates
//!   (naming the bridge and turning inter-container traffic off): a node
//!   without it rejects the network's tasks rather than run them elsewhere;
//! - which nodes hold the rules: the ready ones where an agent task runs.
//!   Each is labelled `taylored-egress.<ORCHESTRATOR_ID>=true` and the
//!   others lose the label, so that runners under rules (placed on that
//!   label) never go to a node without them; the others are reported.

use std::collections::{HashMap, HashSet};

use bollard::models::{ConfigReference, NetworkCreateRequest, NodeSpec, TaskState};
use bollard::query_parameters::{ListServicesOptionsBuilder, UpdateNodeOptionsBuilder};

use super::SwarmBackend;
use super::observe::node_ready;
use crate::backend::bridge::{bridge_name, config_network};
use crate::backend::docker::error::status_of;
use crate::backend::{EngineError, NodeCoverage};
use crate::config::EGRESS_AGENT_LABEL as AGENT_LABEL;

/// The node label that says a node's agent runs (`true`): runners under
/// rules are placed on it.
pub fn node_label(instance: &str) -> String {
    format!("taylored-egress.{instance}")
}

/// The placement constraint of a runner under rules.
pub fn placement(instance: &str) -> String {
    format!("node.labels.{}==true", node_label(instance))
}

impl SwarmBackend {
    /// The swarm-scoped runner network `network`, created if missing; its
    /// bridge's name on every node.
    pub(super) async fn swarm_network(&self, network: &str) -> Result<String, EngineError> {
        match self.docker.inspect_network(network, None).await {
            Ok(found) if found.driver.as_deref() == Some("bridge") => {}
            Ok(found) => {
                return Err(EngineError::Refused(format!(
                    "the runner network {network} is a {} network; egress rules need a \
                     swarm-scoped bridge",
                    found.driver.as_deref().unwrap_or("driverless")
                )));
            }
            Err(error) if status_of(&error) == Some(404) => {
                let request = NetworkCreateRequest {
                    name: network.to_owned(),
                    driver: Some("bridge".to_owned()),
                    scope: Some("swarm".to_owned()),
                    // Nothing else: the engine refuses any option (labels
                    // included) beside a configuration network.
                    config_from: Some(ConfigReference {
                        network: Some(config_network(network)),
                    }),
                    ..Default::default()
                };
                match self.docker.create_network(request).await {
                    Ok(_) => tracing::info!(
                        %network,
                        "created a swarm-scoped runner network (each node's bridge from its \
                         egress agent's config-only network)"
                    ),
                    Err(error) if status_of(&error) == Some(409) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            Err(error) => return Err(error.into()),
        }
        Ok(bridge_name(network))
    }

    /// Which ready nodes run this instance's egress agent, with their node
    /// labels brought in line.
    pub(super) async fn coverage(&self) -> Result<NodeCoverage, EngineError> {
        let instance = &self.template.instance;
        let agent = format!("{AGENT_LABEL}={instance}");
        let filters = HashMap::from([("label", vec![agent.as_str()])]);
        let options = ListServicesOptionsBuilder::new().filters(&filters).build();
        let agents = self.docker.list_services(Some(options)).await?;
        let ids: Vec<String> = agents.iter().filter_map(|s| s.id.clone()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let tasks = if ids.is_empty() {
            Vec::new()
        } else {
            self.tasks_of(&ids).await?
        };
        let running_on: HashSet<String> = tasks
            .iter()
            .filter(|task| {
                task.desired_state == Some(TaskState::RUNNING)
                    && task.status.as_ref().and_then(|status| status.state)
                        == Some(TaskState::RUNNING)
            })
            .filter_map(|task| task.node_id.clone())
            .collect();
        let label = node_label(instance);
        let mut coverage = NodeCoverage::default();
        for node in self.docker.list_nodes(None).await? {
            let Some(id) = node.id.clone() else { continue };
            let ready = node_ready(&node);
            let ruled = ready && running_on.contains(&id);
            let spec = node.spec.clone().unwrap_or_default();
            let labelled = spec
                .labels
                .as_ref()
                .and_then(|labels| labels.get(&label))
                .is_some_and(|value| value == "true");
            if ruled != labelled {
                self.set_label(&id, &node, spec, &label, ruled).await?;
            }
            let name = node
                .description
                .as_ref()
                .and_then(|description| description.hostname.clone())
                .unwrap_or(id);
            match (ready, ruled) {
                (_, true) => coverage.ruled.push(name),
                (true, false) => coverage.missing.push(name),
                // A node that is down runs nothing; it is not reported.
                (false, false) => {}
            }
        }
        coverage.ruled.sort();
        coverage.missing.sort();
        Ok(coverage)
    }

    async fn set_label(
        &self,
        id: &str,
        node: &bollard::models::Node,
        mut spec: NodeSpec,
        label: &str,
        ruled: bool,
    ) -> Result<(), EngineError> {
        let mut labels = spec.labels.take().unwrap_or_default();
        if ruled {
            labels.insert(label.to_owned(), "true".to_owned());
        } else {
            labels.remove(label);
        }
        spec.labels = Some(labels);
        let version = node
            .version
            .as_ref()
            .and_then(|version| version.index)
            .unwrap_or_default();
        let options = UpdateNodeOptionsBuilder::new()
            .version(i64::try_from(version).unwrap_or(i64::MAX))
            .build();
        self.docker.update_node(id, spec, options).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runners_under_rules_are_placed_on_the_instance_s_label() {
        assert_eq!(node_label("ci-1"), "taylored-egress.ci-1");
        assert_eq!(placement("ci-1"), "node.labels.taylored-egress.ci-1==true");
    }
}
