//! What the swarm says about this instance's runners: their services, the
//! latest task of each, and the nodes those run on. A runner counts as
//! running only if its task runs, is meant to, and its node is `ready`: a
//! lost node's tasks read `running` for a long while after it went down.

use crate::backend::labels;
use std::collections::HashMap;

use bollard::models::{
    EndpointPortConfigPublishModeEnum, Node, NodeState, Service, Task, TaskState, TaskStatus,
};
use bollard::query_parameters::{ListServicesOptionsBuilder, ListTasksOptionsBuilder};

use super::SwarmBackend;
use super::spec::RUNNERS_HOST_LABEL;
use crate::backend::{EngineError, NetworkMode, ObservedRunner, RUNNER_PORT, RunnerNode};
use crate::config::SESSION_LABEL;

impl SwarmBackend {
    /// This instance's runners, all or one session's.
    pub(super) async fn observe(
        &self,
        session: Option<&str>,
    ) -> Result<Vec<ObservedRunner>, EngineError> {
        let label = match session {
            Some(session) => format!("{SESSION_LABEL}={session}"),
            None => SESSION_LABEL.to_owned(),
        };
        let filters = HashMap::from([("label", vec![label.as_str()])]);
        let options = ListServicesOptionsBuilder::new().filters(&filters).build();
        let services: Vec<Service> = self
            .docker
            .list_services(Some(options))
            .await?
            .into_iter()
            .filter(|service| labels::owned_by(&labels_of(service), &self.template.instance))
            .collect();
        if services.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = services.iter().filter_map(|s| s.id.clone()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.observe_services(services, &ids).await
    }

    pub(super) async fn observe_services(
        &self,
        services: Vec<Service>,
        ids: &[&str],
    ) -> Result<Vec<ObservedRunner>, EngineError> {
        let tasks = self.tasks_of(ids).await?;
        let nodes = self.nodes().await?;
        let mut by_service: HashMap<&str, Vec<&Task>> = HashMap::new();
        for task in &tasks {
            if let Some(service) = task.service_id.as_deref() {
                by_service.entry(service).or_default().push(task);
            }
        }
        Ok(services
            .iter()
            .filter_map(|service| {
                let id = service.id.as_deref()?;
                let task = latest_task(by_service.remove(id).unwrap_or_default().into_iter());
                observed(service, task, &nodes)
            })
            .collect())
    }

    /// The tasks of these services (a service keeps its old tasks too).
    pub(super) async fn tasks_of(&self, service_ids: &[&str]) -> Result<Vec<Task>, EngineError> {
        let filters = HashMap::from([("service", service_ids.to_vec())]);
        let options = ListTasksOptionsBuilder::new().filters(&filters).build();
        Ok(self.docker.list_tasks(Some(options)).await?)
    }

    /// Every node by ID, with the host its runners are reached on.
    pub(super) async fn nodes(&self) -> Result<HashMap<String, RunnerNode>, EngineError> {
        let nodes = self.docker.list_nodes(None).await?;
        Ok(nodes
            .iter()
            .filter_map(|node| Some((node.id.clone()?, runner_node(node))))
            .collect())
    }
}

fn observed(
    service: &Service,
    task: Option<&Task>,
    nodes: &HashMap<String, RunnerNode>,
) -> Option<ObservedRunner> {
    let spec = service.spec.as_ref()?;
    let labels = spec.labels.clone().unwrap_or_default();
    let status = task
        .and_then(|task| task.status.clone())
        .unwrap_or_default();
    let node = task
        .and_then(|task| task.node_id.as_deref())
        .and_then(|id| nodes.get(id))
        .cloned();
    let running = status.state == Some(TaskState::RUNNING)
        && task.and_then(|task| task.desired_state) == Some(TaskState::RUNNING)
        && node.as_ref().is_some_and(|node| node.ready);
    Some(ObservedRunner {
        id: service.id.clone()?,
        name: spec.name.clone().unwrap_or_default(),
        session_id: labels.get(SESSION_LABEL)?.clone(),
        running,
        kind: labels::kind_of(&labels),
        pooled: labels::pooled(&labels),
        host_port: published_port(&status).or_else(|| service_port(service)),
        network_mode: NetworkMode::Default,
        created: service
            .created_at
            .as_deref()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map_or(0, |at| at.timestamp()),
        node,
        address: None,
        token: labels::token_of(&labels),
    })
}

/// The newest of a service's tasks (a higher version is a later state).
pub(super) fn latest_task<'a>(tasks: impl Iterator<Item = &'a Task>) -> Option<&'a Task> {
    tasks.max_by_key(|task| {
        (
            task.created_at.clone().unwrap_or_default(),
            task.version.as_ref().and_then(|v| v.index).unwrap_or(0),
        )
    })
}

/// The host port a running task's runner port is bound on (listed once per
/// address family; the service chose it, so they agree).
pub(super) fn published_port(status: &TaskStatus) -> Option<u16> {
    status
        .port_status
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|port| port.target_port == Some(RUNNER_PORT.into()))
        .and_then(|port| u16::try_from(port.published_port?).ok())
        .filter(|port| *port != 0)
}

/// The host port a service asks for, from its spec.
pub(super) fn service_port(service: &Service) -> Option<u16> {
    service
        .spec
        .as_ref()?
        .endpoint_spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|port| {
            port.target_port == Some(RUNNER_PORT.into())
                && port.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST)
        })
        .and_then(|port| u16::try_from(port.published_port?).ok())
}

pub(super) fn node_ready(node: &Node) -> bool {
    node.status.as_ref().and_then(|status| status.state) == Some(NodeState::READY)
}

/// The node's public host is its `taylored.runners-host` label, else the
/// address it joined the swarm with: a manager's raft address, since a
/// manager that became leader after another was lost reads `0.0.0.0` in
/// `Status.Addr` (moby#35437), a worker's `Status.Addr`.
fn runner_node(node: &Node) -> RunnerNode {
    let label = node
        .spec
        .as_ref()
        .and_then(|spec| spec.labels.as_ref())
        .and_then(|labels| labels.get(RUNNERS_HOST_LABEL))
        .filter(|host| !host.is_empty())
        .cloned();
    let address = node_address(node);
    RunnerNode {
        name: node
            .description
            .as_ref()
            .and_then(|description| description.hostname.clone())
            .or_else(|| node.id.clone())
            .unwrap_or_default(),
        host: label.or(address).unwrap_or_default(),
        ready: node_ready(node),
    }
}

fn node_address(node: &Node) -> Option<String> {
    let raft = node
        .manager_status
        .as_ref()
        .and_then(|status| status.addr.as_deref())
        .map(|addr| addr.rsplit_once(':').map_or(addr, |(host, _port)| host))
        .map(|host| host.trim_start_matches('[').trim_end_matches(']'));
    let status = node
        .status
        .as_ref()
        .and_then(|status| status.addr.as_deref());
    [raft, status]
        .into_iter()
        .flatten()
        .find(|host| {
            host.parse::<std::net::IpAddr>()
                .map_or(!host.is_empty(), |ip| !ip.is_unspecified())
        })
        .map(str::to_owned)
}

fn labels_of(service: &Service) -> HashMap<String, String> {
    service
        .spec
        .as_ref()
        .and_then(|spec| spec.labels.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_INSTANCE, INSTANCE_LABEL};
    use bollard::models::{
        EndpointPortConfig, NodeDescription, NodeSpec, NodeStatus, ObjectVersion, PortStatus,
        ServiceSpec,
    };

    fn node(id: &str, state: NodeState, label: Option<&str>) -> Node {
        Node {
            id: Some(id.into()),
            spec: Some(NodeSpec {
                labels: label.map(|host| HashMap::from([(RUNNERS_HOST_LABEL.into(), host.into())])),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: Some(format!("host-{id}")),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: Some(state),
                addr: Some(format!("10.0.0.{}", id.len())),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_manager_is_reached_at_its_raft_address_a_worker_at_its_status_address() {
        use bollard::models::ManagerStatus;
        let mut leader = node("leader", NodeState::READY, None);
        // A manager that became leader after the first was lost.
        leader.status.as_mut().unwrap().addr = Some("0.0.0.0".into());
        leader.manager_status = Some(ManagerStatus {
            addr: Some("10.1.2.3:2377".into()),
            ..Default::default()
        });
        assert_eq!(runner_node(&leader).host, "10.1.2.3");
        let mut v6 = leader.clone();
        v6.manager_status.as_mut().unwrap().addr = Some("[fd00::7]:2377".into());
        assert_eq!(runner_node(&v6).host, "fd00::7");
        let mut unknown = leader.clone();
        unknown.manager_status = None;
        assert_eq!(runner_node(&unknown).host, "");
        let worker = node("w", NodeState::READY, None);
        assert_eq!(runner_node(&worker).host, "10.0.0.1");
        let labelled = node("w", NodeState::READY, Some("runners-1.example.com"));
        assert_eq!(runner_node(&labelled).host, "runners-1.example.com");
    }

    fn service(session: &str) -> Service {
        Service {
            id: Some(format!("svc-{session}")),
            created_at: Some("2026-11-28T10:00:00.5Z".into()),
            spec: Some(ServiceSpec {
                name: Some(format!("taylored-runner-{session}")),
                labels: Some(HashMap::from([
                    (SESSION_LABEL.into(), session.into()),
                    (INSTANCE_LABEL.into(), "ci".into()),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task(node: &str, state: TaskState, desired: TaskState, index: u64, port: i64) -> Task {
        Task {
            node_id: Some(node.into()),
            created_at: Some(format!("2026-11-28T10:00:0{index}Z")),
            version: Some(ObjectVersion { index: Some(index) }),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(state),
                port_status: Some(PortStatus {
                    ports: Some(vec![
                        EndpointPortConfig {
                            target_port: Some(3000),
                            published_port: Some(port),
                            ..Default::default()
                        };
                        2
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn nodes(list: &[Node]) -> HashMap<String, RunnerNode> {
        list.iter()
            .map(|node| (node.id.clone().unwrap(), runner_node(node)))
            .collect()
    }

    #[test]
    fn a_runner_runs_only_if_its_task_runs_on_a_ready_node() {
        let nodes = nodes(&[
            node("a", NodeState::READY, Some("runners-a.example")),
            node("bb", NodeState::DOWN, None),
        ]);
        let on_ready = task("a", TaskState::RUNNING, TaskState::RUNNING, 1, 30001);
        let runner = observed(&service("s1"), Some(&on_ready), &nodes).unwrap();
        assert!(runner.running);
        assert_eq!(runner.host_port, Some(30001));
        assert_eq!(runner.session_id, "s1");
        assert_eq!(runner.created, 1_795_860_000);
        let node = runner.node.unwrap();
        assert_eq!(node.host, "runners-a.example");
        assert_eq!(node.name, "host-a");

        // A lost node's task still reads `running`.
        let on_down = task("bb", TaskState::RUNNING, TaskState::RUNNING, 1, 30002);
        let runner = observed(&service("s2"), Some(&on_down), &nodes).unwrap();
        assert!(!runner.running);
        let node = runner.node.unwrap();
        assert!(!node.ready);
        assert_eq!(node.host, "10.0.0.2", "the address without a label");

        let shutting = task("a", TaskState::RUNNING, TaskState::SHUTDOWN, 1, 30003);
        assert!(
            !observed(&service("s3"), Some(&shutting), &nodes)
                .unwrap()
                .running
        );
        assert!(!observed(&service("s4"), None, &nodes).unwrap().running);
    }

    #[test]
    fn the_latest_task_is_the_one_that_counts() {
        let old = task("a", TaskState::FAILED, TaskState::SHUTDOWN, 1, 30001);
        let new = task("a", TaskState::RUNNING, TaskState::RUNNING, 2, 30001);
        let tasks = [new.clone(), old];
        assert_eq!(latest_task(tasks.iter()), Some(&new));
        assert_eq!(latest_task([].iter()), None);
    }

    #[test]
    fn services_of_other_instances_are_not_ours() {
        assert!(labels::owned_by(&labels_of(&service("s")), "ci"));
        assert!(!labels::owned_by(&labels_of(&service("s")), "other"));
        assert!(labels::owned_by(&HashMap::new(), DEFAULT_INSTANCE));
    }
}
