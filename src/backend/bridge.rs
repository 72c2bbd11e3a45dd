//! The bridge interface of a runner network this service creates: named
//! after the network, so that the egress rules can match this instance's
//! runners by interface.

use sha2::{Digest, Sha256};

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
