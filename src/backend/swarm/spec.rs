//! The Swarm service a runner is: one replica that Swarm never restarts,
//! its port published in host mode on its node, and the same confinement as
//! a container on one engine where Swarm can carry it. Pure, so every
//! setting's effect is unit-tested without a swarm.

use std::time::Duration;

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, Limit, Mount, MountTmpfsOptions, MountType, NetworkAttachmentConfig,
    ResourcesUlimits, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec,
    TaskSpecContainerSpec, TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};

use crate::backend::{EngineError, NetworkMode, RUNNER_PORT, RunnerSpec, labels};
use crate::config::{BackendKind, RunnerLimits, Settings};

/// The node label that names the host clients reach a node's runners on.
pub const RUNNERS_HOST_LABEL: &str = "taylored.runners-host";

/// What every runner service of this instance shares.
#[derive(Debug, Clone)]
pub struct ServiceTemplate {
    pub(super) instance: String,
    /// The network of the egress policy's rules (`None` under `all`).
    default_network: Option<String>,
    /// The networks of narrower policies, for provisions that ask for one.
    narrowed: Vec<String>,
    init: bool,
    stop_grace: Duration,
    limits: RunnerLimits,
    placement: Vec<String>,
}

impl ServiceTemplate {
    pub fn new(settings: &Settings) -> Self {
        let base = crate::config::runner_network_base(None, &settings.orchestrator_id);
        Self {
            instance: settings.orchestrator_id.clone(),
            default_network: settings.runner_network(),
            narrowed: ["none", "public"]
                .iter()
                .map(|policy| format!("{base}-{policy}"))
                .collect(),
            init: settings.runner_init,
            stop_grace: Duration::from_secs(settings.runner_stop_timeout_seconds.into()),
            limits: settings.limits.clone(),
            placement: settings.swarm.runner_placement.0.clone(),
        }
    }

    /// The network of the egress policy's rules, if it has one.
    pub fn default_network(&self) -> Option<&str> {
        self.default_network.as_deref()
    }

    /// The network a runner joins: the policy's (`None`: its node's default
    /// bridge, under `all`), or a narrower policy's; any other choice is
    /// refused (a runner on a network of the browser's choosing would
    /// escape the rules, and a swarm runner needs a network to be reached).
    pub fn network_of(&self, mode: &NetworkMode) -> Result<Option<String>, EngineError> {
        match mode {
            NetworkMode::Default => Ok(self.default_network.clone()),
            NetworkMode::Named(network) if self.narrowed.contains(network) => {
                Ok(Some(network.clone()))
            }
            _ => Err(EngineError::Unsupported(
                "networkMode cannot be chosen with RUNNER_BACKEND=swarm: runners use their \
                 node's network, or the egress policy's.",
            )),
        }
    }

    /// The service for `runner`, from the image `image_id` (an ID, so that
    /// nodes never ask a registry), published on `host_port` of its node.
    /// A runner on a network of the egress rules joins it and is placed
    /// only on nodes whose egress agent runs.
    pub fn service(&self, runner: &RunnerSpec<'_>, image_id: &str, host_port: u16) -> ServiceSpec {
        let network = self.network_of(runner.network_mode).ok().flatten();
        let mut constraints = self.placement.clone();
        if network.is_some() {
            constraints.push(super::egress::placement(&self.instance));
        }
        let labels = labels::of(runner, &self.instance);
        let limits = &self.limits;
        let container = TaskSpecContainerSpec {
            image: Some(image_id.to_owned()),
            labels: Some(labels.clone()),
            env: Some(vec![format!("PORT={RUNNER_PORT}")]),
            init: Some(self.init),
            stop_grace_period: Some(i64::try_from(self.stop_grace.as_nanos()).unwrap_or(i64::MAX)),
            capability_drop: Some(vec!["ALL".to_owned()]),
            capability_add: Some(
                limits
                    .runner_capabilities
                    .0
                    .iter()
                    .map(|name| format!("CAP_{name}"))
                    .collect(),
            ),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".to_owned()),
                soft: Some(limits.runner_nofile),
                hard: Some(limits.runner_nofile),
            }]),
            read_only: Some(limits.runner_read_only),
            mounts: limits.runner_read_only.then(|| {
                vec![Mount {
                    target: Some("/tmp".to_owned()),
                    typ: Some(MountType::TMPFS),
                    tmpfs_options: Some(MountTmpfsOptions {
                        size_bytes: Some(limits.runner_tmpfs_size),
                        mode: Some(0o1777),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        };
        ServiceSpec {
            name: Some(runner.name.to_owned()),
            labels: Some(labels),
            task_template: Some(TaskSpec {
                container_spec: Some(container),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: Some((limits.runner_cpus * 1e9) as i64),
                        memory_bytes: Some(limits.runner_memory),
                        pids: Some(limits.runner_pids_limit),
                    }),
                    ..Default::default()
                }),
                // The orchestrator decides what happens to a runner that
                // stopped, not Swarm.
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    ..Default::default()
                }),
                placement: (!constraints.is_empty()).then(|| TaskSpecPlacement {
                    constraints: Some(constraints),
                    ..Default::default()
                }),
                networks: network.map(|target| {
                    vec![NetworkAttachmentConfig {
                        target: Some(target),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                ports: Some(vec![EndpointPortConfig {
                    protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                    target_port: Some(RUNNER_PORT.into()),
                    published_port: Some(host_port.into()),
                    publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Settings a Swarm service cannot carry on Engine 20.10 (API 1.41): they
/// are the nodes' own (daemon.json), and asking for them here is refused at
/// start rather than silently ignored.
pub fn unsupported_settings(settings: &Settings) -> Vec<&'static str> {
    if settings.runner_backend != BackendKind::Swarm {
        return Vec::new();
    }
    let mut refused = Vec::new();
    if settings.limits.runner_network.is_some() {
        refused.push(
            "RUNNER_NETWORK (runners use their node's bridge; turn inter-container traffic off \
             with \"icc\": false in each node's daemon.json)",
        );
    }
    if !settings.runner_bind_address.is_unspecified() {
        refused.push(
            "RUNNER_BIND_ADDRESS (Swarm publishes host-mode ports on every address of the node; \
             restrict them with the node's firewall)",
        );
    }
    if settings.free_doors > 0 {
        refused.push("FREE_DOORS (fixed host ports would collide between runners on one node)");
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::NetworkMode;
    use crate::config::{INSTANCE_LABEL, POOLED_LABEL, SESSION_LABEL, SINGLETON_LABEL};
    use crate::domain::RunnerKind;

    fn settings(args: &[&str]) -> Settings {
        let args = [
            "orchestrator",
            "--orchestrator-id=ci-1",
            "--runner-backend=swarm",
        ]
        .iter()
        .chain(args)
        .map(|arg| arg.to_string());
        Settings::from_env_and_args(args).unwrap()
    }

    fn service(settings: &Settings, kind: RunnerKind, pooled: bool) -> ServiceSpec {
        ServiceTemplate::new(settings).service(
            &RunnerSpec {
                session_id: "s-1",
                name: "taylored-runner-s1",
                network_mode: &NetworkMode::Default,
                kind,
                pooled,
                token: None,
            },
            "sha256:abc",
            30001,
        )
    }

    fn container(spec: &ServiceSpec) -> &TaskSpecContainerSpec {
        spec.task_template
            .as_ref()
            .and_then(|task| task.container_spec.as_ref())
            .unwrap()
    }

    #[test]
    fn one_replica_never_restarted_named_and_labelled_on_service_and_container() {
        let spec = service(&settings(&[]), RunnerKind::Singleton, true);
        assert_eq!(spec.name.as_deref(), Some("taylored-runner-s1"));
        let mode = spec.mode.as_ref().unwrap().replicated.as_ref().unwrap();
        assert_eq!(mode.replicas, Some(1));
        let task = spec.task_template.as_ref().unwrap();
        assert_eq!(
            task.restart_policy.as_ref().unwrap().condition,
            Some(TaskSpecRestartPolicyConditionEnum::NONE)
        );
        for labels in [spec.labels.as_ref(), container(&spec).labels.as_ref()] {
            let labels = labels.unwrap();
            assert_eq!(labels[SESSION_LABEL], "s-1");
            assert_eq!(labels[INSTANCE_LABEL], "ci-1");
            assert_eq!(labels[SINGLETON_LABEL], "true");
            assert_eq!(labels[POOLED_LABEL], "true");
        }
        assert_eq!(container(&spec).image.as_deref(), Some("sha256:abc"));
        assert_eq!(
            container(&spec).env.as_deref(),
            Some(&["PORT=3000".to_owned()][..])
        );
    }

    #[test]
    fn a_runner_under_egress_rules_joins_its_network_on_nodes_whose_agent_runs() {
        let placed = |spec: &ServiceSpec| {
            let task = spec.task_template.as_ref().unwrap();
            let networks: Vec<String> = task
                .networks
                .iter()
                .flatten()
                .filter_map(|network| network.target.clone())
                .collect();
            let constraints = task
                .placement
                .as_ref()
                .and_then(|placement| placement.constraints.clone())
                .unwrap_or_default();
            (networks, constraints)
        };
        let public = settings(&[
            "--runner-egress=public",
            "--runner-placement=node.role==worker",
        ]);
        assert_eq!(
            placed(&service(&public, RunnerKind::Session, false)),
            (
                vec!["taylored-runners-ci-1".to_owned()],
                vec![
                    "node.role==worker".to_owned(),
                    "node.labels.taylored-egress.ci-1==true".to_owned()
                ]
            )
        );
        // Under `all` a runner stays on its node's bridge, placed anywhere;
        // one narrowed to `none` joins that policy's network.
        let all = settings(&["--runner-egress=all"]);
        assert_eq!(
            placed(&service(&all, RunnerKind::Session, false)),
            (vec![], vec![])
        );
        let narrowed = NetworkMode::Named("taylored-runners-ci-1-none".to_owned());
        let template = ServiceTemplate::new(&all);
        assert_eq!(
            template.network_of(&narrowed).unwrap().as_deref(),
            Some("taylored-runners-ci-1-none")
        );
        for refused in [
            NetworkMode::Named("someone-elses".to_owned()),
            NetworkMode::Isolated,
        ] {
            assert!(template.network_of(&refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn the_runner_port_is_published_in_host_mode_on_the_given_port() {
        let spec = service(&settings(&[]), RunnerKind::Session, false);
        let ports = spec.endpoint_spec.unwrap().ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].target_port, Some(3000));
        assert_eq!(ports[0].published_port, Some(30001));
        assert_eq!(
            ports[0].publish_mode,
            Some(EndpointPortConfigPublishModeEnum::HOST)
        );
    }

    #[test]
    fn limits_go_into_the_service() {
        // Under `all`: no egress placement beside RUNNER_PLACEMENT's.
        let settings = settings(&[
            "--runner-egress=all",
            "--runner-memory=256m",
            "--runner-cpus=0.5",
            "--runner-pids-limit=64",
            "--runner-nofile=512",
            "--runner-capabilities=CHOWN",
            "--runner-read-only=true",
            "--runner-tmpfs-size=16m",
            "--runner-init=false",
            "--runner-stop-timeout-seconds=5",
            "--runner-placement=node.labels.runners==true, node.role!=manager",
        ]);
        let spec = service(&settings, RunnerKind::Session, false);
        let task = spec.task_template.as_ref().unwrap();
        let limit = task.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limit.memory_bytes, Some(256 << 20));
        assert_eq!(limit.nano_cpus, Some(500_000_000));
        assert_eq!(limit.pids, Some(64));
        assert_eq!(
            task.placement.as_ref().unwrap().constraints.as_deref(),
            Some(
                &[
                    "node.labels.runners==true".to_owned(),
                    "node.role!=manager".to_owned()
                ][..]
            )
        );
        let container = container(&spec);
        assert_eq!(container.ulimits.as_ref().unwrap()[0].hard, Some(512));
        assert_eq!(
            container.capability_drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(
            container.capability_add.as_deref(),
            Some(&["CAP_CHOWN".to_owned()][..])
        );
        assert_eq!(container.read_only, Some(true));
        assert_eq!(container.init, Some(false));
        assert_eq!(container.stop_grace_period, Some(5_000_000_000));
        let tmp = &container.mounts.as_ref().unwrap()[0];
        assert_eq!(tmp.target.as_deref(), Some("/tmp"));
        assert_eq!(tmp.typ, Some(MountType::TMPFS));
        assert_eq!(
            tmp.tmpfs_options.as_ref().unwrap().size_bytes,
            Some(16 << 20)
        );
    }

    #[test]
    fn defaults_have_no_placement_and_a_writable_root() {
        let spec = service(
            &settings(&["--runner-egress=all"]),
            RunnerKind::Session,
            false,
        );
        let task = spec.task_template.as_ref().unwrap();
        assert!(task.placement.is_none());
        assert_eq!(container(&spec).read_only, Some(false));
        assert!(container(&spec).mounts.is_none());
        assert_eq!(container(&spec).init, Some(true));
    }

    #[test]
    fn node_settings_are_refused_on_swarm_only() {
        assert!(unsupported_settings(&settings(&[])).is_empty());
        let refused = unsupported_settings(&settings(&[
            "--runner-network=runners",
            "--runner-bind-address=127.0.0.1",
            "--free-doors=2",
        ]));
        assert_eq!(refused.len(), 3);
        let docker = Settings::from_env_and_args([
            "orchestrator",
            "--runner-network=runners",
            "--runner-bind-address=127.0.0.1",
        ])
        .unwrap();
        assert!(unsupported_settings(&docker).is_empty());
    }
}
