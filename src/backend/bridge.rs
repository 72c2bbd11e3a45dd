//! The bridge interface of a runner network this service creates: named
//! after the network, so that the egress rules can match this instance's
//! runners by interface.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// The engine's option that names a bridge network's interface.
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// At most 15 characters, the kernel's limit, and stable for the network's
/// name: `tr` and the first 12 hex digits of its SHA-256.
pub fn bridge_name(network: &str) -> String {
    let digest = Sha256::digest(network.as_bytes());
    let hex: String = digest[..6]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("tr{hex}")
}

/// The driver options of a runner network this service creates (or, on a
/// swarm, of each node's half of it): its bridge named by [`bridge_name`],
/// inter-container traffic off.
pub fn bridge_options(network: &str) -> HashMap<String, String> {
    HashMap::from([
        (
            "com.docker.network.bridge.enable_icc".to_owned(),
            "false".to_owned(),
        ),
        (BRIDGE_NAME_OPTION.to_owned(), bridge_name(network)),
    ])
}

/// On a swarm, the name of the config-only network each node holds for the
/// swarm-scoped runner network `network` (`--config-from`): the node's egress
/// agent creates it, and a node without it runs none of that network's
/// tasks.
pub fn config_network(network: &str) -> String {
    format!("{network}-config")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_name_fits_the_kernels_limit_and_is_stable() {
        let name = bridge_name("taylored-runners-some-long-instance-name");
        assert!(name.len() <= 15, "{name}");
        assert_eq!(
            name,
            bridge_name("taylored-runners-some-long-instance-name")
        );
        assert_ne!(name, bridge_name("taylored-runners-other"));
        assert!(name.starts_with("tr") && name[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
