//! The closed little internet this tier runs in, made and removed by
//! `world.sh`: an engine host namespace with its own Docker Engine, a world
//! namespace behind it with the targets, and a door from this namespace.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::netns::{self, Facts};

/// The world's facts (`world.sh env`); taken down when dropped.
pub struct World {
    name: String,
    /// `unix://…`, the engine's socket.
    pub socket: String,
    pub engine_netns: String,
    /// The engine host's veth to the world, its only way out.
    pub uplink_device: String,
    /// The engine host's address on that veth.
    pub uplink_address: String,
    /// The engine host's address on the door: the service's and the
    /// runners' published ports are reached there.
    pub door_address: String,
    pub public: String,
    pub private: String,
    pub metadata: String,
    pub dns: String,
    /// `address:port` of the listener in the engine host answering `host`.
    pub host_listener: String,
    pub nsenter: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/egress/world.sh")
}

/// What the tier needs from this machine, said plainly when it is missing.
pub fn check_prerequisites() -> Result<(), String> {
    netns::check_prerequisites(
        "network namespaces, a Docker Engine and nftables of its own",
        &["python3", "nft"],
    )
}

impl World {
    /// Brings the world up with `images` loaded into its engine.
    pub fn up(name: &str, images: &[&str]) -> Result<Self, String> {
        let output = Command::new(script())
            .arg("up")
            .arg(name)
            .args(images)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|error| format!("run world.sh: {error}"))?;
        // From here on, whatever was made is taken down on drop.
        let mut world = Self {
            name: name.to_owned(),
            socket: String::new(),
            engine_netns: String::new(),
            uplink_device: String::new(),
            uplink_address: String::new(),
            door_address: String::new(),
            public: String::new(),
            private: String::new(),
            metadata: String::new(),
            dns: String::new(),
            host_listener: String::new(),
            nsenter: netns::which("nsenter").ok_or("no nsenter")?,
        };
        if !output.status.success() {
            return Err(format!("world.sh up failed ({})", output.status));
        }
        let facts = Facts::parse("world.sh", &output.stdout);
        let fact = |key: &str| facts.get(key);
        world.socket = fact("EGRESS_SOCKET")?;
        world.engine_netns = fact("EGRESS_ENGINE_NETNS")?;
        world.uplink_device = fact("EGRESS_UPLINK_DEVICE")?;
        world.uplink_address = fact("EGRESS_UPLINK_ADDRESS")?;
        world.door_address = fact("EGRESS_DOOR_ENGINE_ADDRESS")?;
        world.public = fact("EGRESS_PUBLIC")?;
        world.private = fact("EGRESS_PRIVATE")?;
        world.metadata = fact("EGRESS_METADATA")?;
        world.dns = fact("EGRESS_DNS")?;
        world.host_listener = fact("EGRESS_HOST_LISTENER")?;
        world.check_routes()?;
        Ok(world)
    }

    /// `nsenter --net=<engine host>`, to run a program there.
    pub fn in_engine_host(&self, program: &str) -> Command {
        let mut command = Command::new(&self.nsenter);
        command
            .arg(format!("--net=/run/netns/{}", self.engine_netns))
            .arg(program);
        command
    }

    /// Every target leaves the engine host by the veth to the world, never
    /// by a real interface: checked before any probe, loudly.
    pub fn check_routes(&self) -> Result<(), String> {
        for target in [&self.public, &self.private, &self.metadata, &self.dns] {
            let output = Command::new("ip")
                .args(["-n", &self.engine_netns, "route", "get", target])
                .output()
                .map_err(|error| format!("ip route get: {error}"))?;
            let route = String::from_utf8_lossy(&output.stdout);
            let device = route
                .split_whitespace()
                .skip_while(|word| *word != "dev")
                .nth(1);
            if !output.status.success() || device != Some(self.uplink_device.as_str()) {
                return Err(format!(
                    "ROUTE CHECK FAILED: {target} from {} goes `{}`, not by {}; \
                     refusing to probe anything",
                    self.engine_netns,
                    route.trim(),
                    self.uplink_device
                ));
            }
        }
        Ok(())
    }

    /// The docker CLI against this world's engine.
    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new("docker")
            .arg("-H")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(|error| format!("docker {args:?}: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "docker {args:?}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The world's name (its parts are named after it).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for World {
    fn drop(&mut self) {
        netns::take_down(&script(), &self.name);
    }
}
