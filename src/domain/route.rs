//! Where a runner is reached: its gateway route (the digests of its token
//! that name it, and the address behind it), shared by the lifecycle that makes it, the heartbeats
//! that keep the running set, and the gateway that proxies to it.

use std::fmt;
use std::sync::Arc;

/// Where the gateway reaches a runner: `host:port`, the loopback and its
/// published port on one engine, the node's host and port on Swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerAddress(Arc<str>);

impl fmt::Display for RunnerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A running runner's keys and address, as the gateway routes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The SHA-256 digests of the tokens that reach it (see
    /// [`token::route_keys`](super::token::route_keys)): the gateway hashes
    /// a host's token and looks the digest up.
    pub keys: Vec<String>,
    pub address: RunnerAddress,
}

impl Route {
    /// The route of a runner: straight to its container's `address` when
    /// the backend knows it (one hop, as a client going through the
    /// engine's port proxy makes), else to its published `host_port` on
    /// `node_host` (a Swarm node) or on this host's loopback; `None`
    /// without a port (an isolated runner).
    pub fn of(
        keys: Vec<String>,
        host_port: Option<u16>,
        node_host: Option<&str>,
        address: Option<&str>,
    ) -> Option<Self> {
        let port = host_port?;
        let address = match (address, node_host) {
            (Some(address), _) => address.to_owned(),
            (None, Some(host)) if host.contains(':') => format!("[{host}]:{port}"),
            (None, Some(host)) => format!("{host}:{port}"),
            (None, None) => format!("127.0.0.1:{port}"),
        };
        Some(Self {
            keys,
            address: RunnerAddress(address.into()),
        })
    }
}
