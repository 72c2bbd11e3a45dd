//! The container a runner is: labels, published ports and the confinement
//! of its `HostConfig`. Pure, so every setting's effect is unit-tested
//! without an engine.

use crate::backend::labels;
use std::collections::HashMap;
use std::net::IpAddr;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, ResourcesUlimits};

use crate::backend::{RUNNER_PORT, RunnerSpec};
use crate::config::{RunnerLimits, Settings};

/// The runner port as the engine names it in port maps.
pub(super) const RUNNER_PORT_KEY: &str = "3000/tcp";

/// What every runner container of this instance shares.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub(super) image: String,
    pub(super) instance: String,
    bind_address: IpAddr,
    free_doors: u16,
    /// `RUNNER_INIT`: an init process as PID 1 of every runner.
    init: bool,
    pub(super) limits: RunnerLimits,
    /// The network runners join unless their provision names one:
    /// `RUNNER_NETWORK`, or the egress policy's (see `egress`).
    pub(super) default_network: Option<String>,
    /// `RUNNER_DNS`.
    dns: Vec<IpAddr>,
}

impl ContainerSpec {
    pub fn new(settings: &Settings) -> Self {
        Self {
            image: settings.docker_image_name.clone(),
            instance: settings.orchestrator_id.clone(),
            bind_address: settings.runner_publish_address(),
            free_doors: settings.free_doors,
            init: settings.runner_init,
            limits: settings.limits.clone(),
            default_network: settings.runner_network(),
            dns: settings.egress.runner_dns.clone(),
        }
    }

    /// The create request for a runner.
    pub fn body(&self, runner: &RunnerSpec<'_>) -> ContainerCreateBody {
        let labels = labels::of(runner, &self.instance);
        let (exposed_ports, port_bindings) = if runner.network_mode.is_isolated() {
            (None, None)
        } else {
            let (exposed, bindings) = self.published_ports();
            (Some(exposed), Some(bindings))
        };
        let network_mode = runner
            .network_mode
            .as_stored()
            .or(self.default_network.as_deref())
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
                dns: (!self.dns.is_empty())
                    .then(|| self.dns.iter().map(ToString::to_string).collect()),
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

    /// Picks the binding on our bind address; without a `HostIp` the engine
    /// may bind IPv4 and IPv6 on different ports.
    pub(super) fn pick_host_port<'a>(
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

    /// Whether the labels mark a runner of this instance.
    pub(super) fn owns(&self, labels: &HashMap<String, String>) -> bool {
        labels::owned_by(labels, &self.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::NetworkMode;
    use crate::backend::labels::kind_of;
    use crate::config::{
        DEFAULT_INSTANCE, INSTANCE_LABEL, POOLED_LABEL, SESSION_LABEL, SINGLETON_LABEL,
    };
    use crate::domain::RunnerKind;

    fn settings(args: &[&str]) -> Settings {
        let args = ["orchestrator", "--orchestrator-id=ci-1"]
            .iter()
            .chain(args)
            .map(|arg| arg.to_string());
        Settings::from_env_and_args(args).unwrap()
    }

    fn body(
        settings: &Settings,
        network_mode: &NetworkMode,
        kind: RunnerKind,
    ) -> ContainerCreateBody {
        ContainerSpec::new(settings).body(&RunnerSpec {
            session_id: "s-1",
            name: "runner-s-1",
            network_mode,
            kind,
            pooled: false,
            token: None,
        })
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_name_the_session_instance_and_kind() {
        let settings = settings(&[]);
        let session = body(&settings, &NetworkMode::Default, RunnerKind::Session);
        assert_eq!(
            session.labels.unwrap(),
            labels(&[(SESSION_LABEL, "s-1"), (INSTANCE_LABEL, "ci-1")])
        );
        let shared = body(&settings, &NetworkMode::Default, RunnerKind::Singleton);
        assert_eq!(shared.labels.as_ref().unwrap()[SINGLETON_LABEL], "true");
        assert_eq!(kind_of(&shared.labels.unwrap()), RunnerKind::Singleton);
        let pooled = ContainerSpec::new(&settings).body(&RunnerSpec {
            session_id: "s-2",
            name: "runner-s-2",
            network_mode: &NetworkMode::Default,
            kind: RunnerKind::Session,
            pooled: true,
            token: None,
        });
        assert_eq!(pooled.labels.unwrap()[POOLED_LABEL], "true");
    }

    #[test]
    fn runners_get_an_init_and_every_limit() {
        let body = body(
            &settings(&[
                "--runner-memory=256m",
                "--runner-cpus=0.5",
                "--runner-init=false",
            ]),
            &NetworkMode::Default,
            RunnerKind::Session,
        );
        assert_eq!(body.env.unwrap(), ["PORT=3000"]);
        let host = body.host_config.unwrap();
        assert_eq!(host.init, Some(false));
        assert_eq!(host.memory, Some(256 << 20));
        assert_eq!(host.memory_swap, host.memory, "no swap beyond the limit");
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.pids_limit, Some(256));
        assert_eq!(host.ulimits.unwrap()[0].hard, Some(1024));
        assert_eq!(host.security_opt.unwrap(), ["no-new-privileges:true"]);
        assert_eq!(host.cap_drop.unwrap(), ["ALL"]);
        assert_eq!(host.readonly_rootfs, Some(false));
        assert_eq!(host.tmpfs, None);
        let default =
            super::tests::body(&settings(&[]), &NetworkMode::Default, RunnerKind::Session);
        assert_eq!(default.host_config.unwrap().init, Some(true));
    }

    #[test]
    fn a_read_only_root_gets_a_writable_tmp() {
        let host = body(
            &settings(&["--runner-read-only=true"]),
            &NetworkMode::Default,
            RunnerKind::Session,
        )
        .host_config
        .unwrap();
        assert_eq!(host.readonly_rootfs, Some(true));
        let tmpfs = host.tmpfs.unwrap();
        assert!(
            tmpfs["/tmp"].starts_with("rw,noexec,nosuid,size="),
            "{tmpfs:?}"
        );
    }

    #[test]
    fn the_runner_port_goes_to_an_engine_chosen_port_on_the_bind_address() {
        let body = body(
            &settings(&["--runner-bind-address=127.0.0.1"]),
            &NetworkMode::Default,
            RunnerKind::Session,
        );
        assert_eq!(body.exposed_ports.unwrap(), [RUNNER_PORT_KEY]);
        let host = body.host_config.unwrap();
        // The egress policy's network (RUNNER_EGRESS=public by default).
        assert_eq!(host.network_mode.as_deref(), Some("taylored-runners-ci-1"));
        assert_eq!(host.dns, None);
        let bindings = host.port_bindings.unwrap();
        let binding = &bindings[RUNNER_PORT_KEY].as_ref().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some(""));
    }

    #[test]
    fn in_gateway_mode_every_port_is_on_the_loopback_whatever_the_bind_address() {
        let body = body(
            &settings(&[
                "--runner-access=gateway",
                "--runner-bind-address=0.0.0.0",
                "--free-doors=1",
            ]),
            &NetworkMode::Default,
            RunnerKind::Session,
        );
        let bindings = body.host_config.unwrap().port_bindings.unwrap();
        assert_eq!(bindings.len(), 2);
        for binding in bindings.values() {
            let binding = &binding.as_ref().unwrap()[0];
            assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        }
    }

    #[test]
    fn free_doors_publish_the_ports_below_on_the_same_numbers() {
        let body = body(
            &settings(&["--free-doors=2"]),
            &NetworkMode::Default,
            RunnerKind::Singleton,
        );
        assert_eq!(
            body.exposed_ports.unwrap(),
            [RUNNER_PORT_KEY, "2999/tcp", "2998/tcp"]
        );
        let bindings = body.host_config.unwrap().port_bindings.unwrap();
        for port in ["2999", "2998"] {
            let binding = &bindings[&format!("{port}/tcp")].as_ref().unwrap()[0];
            assert_eq!(binding.host_port.as_deref(), Some(port));
        }
    }

    #[test]
    fn an_isolated_runner_has_no_network_and_no_ports() {
        let body = body(
            &settings(&["--free-doors=2"]),
            &NetworkMode::Isolated,
            RunnerKind::Session,
        );
        assert_eq!(body.exposed_ports, None);
        let host = body.host_config.unwrap();
        assert_eq!(host.port_bindings, None);
        assert_eq!(host.network_mode.as_deref(), Some("none"));
    }

    #[test]
    fn a_named_network_wins_over_runner_network() {
        let settings = settings(&["--runner-network=runners"]);
        let named = NetworkMode::Named("mine".into());
        let network = |mode| {
            body(&settings, mode, RunnerKind::Session)
                .host_config
                .unwrap()
                .network_mode
        };
        assert_eq!(network(&named).as_deref(), Some("mine"));
        assert_eq!(network(&NetworkMode::Default).as_deref(), Some("runners"));
    }

    #[test]
    fn under_egress_all_runners_stay_on_the_default_bridge_and_get_runner_dns() {
        let settings = settings(&[
            "--runner-egress=all",
            "--runner-dns=11.11.11.11,2606:4700::1111",
        ]);
        let host = body(&settings, &NetworkMode::Default, RunnerKind::Session)
            .host_config
            .unwrap();
        assert_eq!(host.network_mode, None);
        assert_eq!(
            host.dns.unwrap(),
            ["11.11.11.11".to_owned(), "2606:4700::1111".to_owned()]
        );
    }

    #[test]
    fn the_port_on_the_bind_address_is_preferred() {
        let spec = ContainerSpec::new(&settings(&["--runner-bind-address=127.0.0.1"]));
        let bindings = [(Some("::"), Some(40001)), (Some("127.0.0.1"), Some(40002))];
        assert_eq!(spec.pick_host_port(bindings.into_iter()), Some(40002));
        let elsewhere = [(None, Some(0)), (Some("0.0.0.0"), Some(40003))];
        assert_eq!(spec.pick_host_port(elsewhere.into_iter()), Some(40003));
        assert_eq!(spec.pick_host_port(std::iter::empty()), None);
    }

    #[test]
    fn instance_scoping() {
        let scoped = ContainerSpec::new(&settings(&[]));
        let default = ContainerSpec {
            instance: DEFAULT_INSTANCE.to_owned(),
            ..scoped.clone()
        };
        let legacy = labels(&[(SESSION_LABEL, "s")]);
        assert!(default.owns(&legacy));
        assert!(!scoped.owns(&legacy));
        let labelled = labels(&[(SESSION_LABEL, "s"), (INSTANCE_LABEL, "ci-1")]);
        assert!(scoped.owns(&labelled));
        assert!(!default.owns(&labelled));
    }
}
