//! The swarm this tier runs against, made and removed by `cluster.sh`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::netns::{self, Facts};

use crate::support::images::TestImages;

/// One engine of the swarm.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its hostname, as the swarm names it.
    pub hostname: String,
    /// `unix://…`, its engine's socket.
    pub socket: String,
    /// Its address on the test network (where its runners are reached).
    pub address: String,
    pub netns: String,
    /// Its engine's process.
    pub pid: i32,
}

/// A swarm on this machine; taken down when dropped.
pub struct Cluster {
    name: String,
    pub nodes: Vec<Node>,
    /// How many of `nodes`, from the first, are managers.
    managers: usize,
    /// The namespace clients connect from.
    pub client_netns: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/swarm/cluster.sh")
}

/// What the tier needs from this machine, said plainly when it is missing.
pub fn check_prerequisites() -> Result<(), String> {
    netns::check_prerequisites(
        "network namespaces and Docker Engines of its own",
        // nft and ldd: the egress agent's image.
        &["curl", "nft", "ldd"],
    )
}

impl Cluster {
    /// Brings up `nodes` engines as a swarm, the first `managers` of them
    /// managers, with the runner image on every node, and the stubborn image
    /// on the first node only (for a node that lacks the image).
    pub fn up(
        name: &str,
        nodes: usize,
        managers: usize,
        images: &TestImages,
    ) -> Result<Self, String> {
        let output = Command::new(script())
            .args([
                "up",
                name,
                &nodes.to_string(),
                &managers.to_string(),
                &images.runner,
            ])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|error| format!("run cluster.sh: {error}"))?;
        // From here on, whatever was made is taken down on drop.
        let mut cluster = Self {
            name: name.to_owned(),
            nodes: Vec::new(),
            managers,
            client_netns: String::new(),
        };
        if !output.status.success() {
            return Err(format!("cluster.sh up failed ({})", output.status));
        }
        let facts = Facts::parse("cluster.sh", &output.stdout);
        let fact = |key: &str| facts.get(key);
        cluster.client_netns = fact("SWARM_CLIENT_NETNS")?;
        for k in 1..=nodes {
            cluster.nodes.push(Node {
                hostname: format!("{name}-n{k}"),
                socket: fact(&format!("SWARM_NODE_{k}_SOCKET"))?,
                address: fact(&format!("SWARM_NODE_{k}_ADDRESS"))?,
                netns: fact(&format!("SWARM_NODE_{k}_NETNS"))?,
                pid: fact(&format!("SWARM_NODE_{k}_PID"))?
                    .parse()
                    .map_err(|_| "a node's engine pid is not a number".to_owned())?,
            });
        }
        cluster.load(&images.stubborn, &cluster.nodes[0].clone())?;
        Ok(cluster)
    }

    /// Where `cluster.sh` keeps this cluster's state (`/run/swarm-<name>`).
    pub fn state_dir(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/run/swarm-{}", self.name))
    }

    /// The first manager, which formed the swarm (its leader until lost).
    pub fn manager(&self) -> &Node {
        &self.nodes[0]
    }

    /// The managers, the first first.
    pub fn managers(&self) -> &[Node] {
        &self.nodes[..self.managers.min(self.nodes.len())]
    }

    /// Takes `node` off the network and kills its engine, as a machine that
    /// died: its runners' containers are left as they were, unreachable.
    pub fn kill(&self, node: &Node) -> Result<(), String> {
        let down = Command::new("ip")
            .args([
                "netns",
                "exec",
                &node.netns,
                "ip",
                "link",
                "set",
                "eth0",
                "down",
            ])
            .status()
            .map_err(|error| error.to_string())?;
        if !down.success() {
            return Err(format!("could not take {}'s link down", node.hostname));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(node.pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(|error| format!("kill {}'s engine: {error}", node.hostname))
    }

    /// Loads `image` from this machine's engine on `node`.
    pub fn load(&self, image: &str, node: &Node) -> Result<(), String> {
        let status = Command::new("sh")
            .args([
                "-c",
                &format!("docker save {image} | docker -H {} load -q", node.socket),
            ])
            .stdout(Stdio::null())
            .status()
            .map_err(|error| error.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("could not load {image} on {}", node.hostname))
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        netns::take_down(&script(), &self.name);
    }
}
