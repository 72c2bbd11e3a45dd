//! How clients reach runners: their published ports under `RUNNERS_HOST`, or
//! the gateway (`RUNNER_ACCESS=gateway`), and the endpoints either gives.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::Settings;
use super::parse::parse_non_blank;

/// How clients reach runners (issue 13's gateway).
#[derive(Debug, Clone, Args)]
pub struct AccessSettings {
    /// `ports`: each runner's published port (as the first orchestrator);
    /// `gateway`: through this service's own port, routed by host name.
    #[arg(
        long,
        env = "RUNNER_ACCESS",
        default_value = "ports",
        value_name = "RUNNER_ACCESS"
    )]
    pub runner_access: RunnerAccess,

    /// Runners are reached at `<token>.<GATEWAY_DOMAIN>` (a wildcard DNS
    /// record; every `*.localhost` is the loopback already).
    #[arg(long, env = "GATEWAY_DOMAIN", default_value = "runners.localhost",
          value_name = "GATEWAY_DOMAIN", value_parser = parse_domain)]
    pub gateway_domain: String,

    /// The scheme of runner endpoints: `https` behind a TLS-terminating proxy.
    #[arg(
        long,
        env = "GATEWAY_PUBLIC_SCHEME",
        default_value = "http",
        value_name = "GATEWAY_PUBLIC_SCHEME"
    )]
    pub gateway_public_scheme: PublicScheme,

    /// The port of runner endpoints (a proxy's); unset: this service's port.
    #[arg(long, env = "GATEWAY_PUBLIC_PORT", value_name = "GATEWAY_PUBLIC_PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub gateway_public_port: Option<u16>,

    /// The file of the key runner tokens are derived from (64 hex digits),
    /// created with a fresh key when missing; unset: `<database>.token-key`
    /// beside the database file. Keep it apart from the database (another
    /// volume, a Docker secret) for endpoints to survive a lost volume.
    #[arg(
        long,
        env = "GATEWAY_TOKEN_KEY_FILE",
        value_name = "GATEWAY_TOKEN_KEY_FILE"
    )]
    pub gateway_token_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunnerAccess {
    Ports,
    Gateway,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublicScheme {
    Http,
    Https,
}

impl PublicScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            PublicScheme::Http => "http",
            PublicScheme::Https => "https",
        }
    }
}

impl Settings {
    /// Whether clients reach runners through the gateway (see `gateway`).
    pub fn gateway_mode(&self) -> bool {
        self.access.runner_access == RunnerAccess::Gateway
    }

    /// The address runner ports are published on: the loopback in gateway
    /// mode (only the gateway, on this host, reaches them), else
    /// `RUNNER_BIND_ADDRESS`.
    pub fn runner_publish_address(&self) -> IpAddr {
        if self.gateway_mode() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            self.runner_bind_address
        }
    }

    /// A runner's endpoint through the gateway:
    /// `<scheme>://<token>.<GATEWAY_DOMAIN>:<port>`.
    pub fn gateway_endpoint(&self, token: &str) -> String {
        let access = &self.access;
        let port = access.gateway_public_port.unwrap_or(self.port);
        format!(
            "{}://{token}.{}:{port}",
            access.gateway_public_scheme.as_str(),
            access.gateway_domain
        )
    }

    /// The endpoint clients connect to for a runner published on `host_port`.
    pub fn endpoint_for(&self, host_port: u16) -> String {
        format!("{}:{host_port}", self.runners_host)
    }

    /// The endpoint of a runner published on `host_port` of another host (a
    /// Swarm node), with the scheme of `RUNNERS_HOST`.
    pub fn endpoint_on(&self, host: &str, host_port: u16) -> String {
        let scheme = self
            .runners_host
            .split_once("://")
            .map_or("http", |(scheme, _)| scheme);
        format!("{scheme}://{host}:{host_port}")
    }
}

/// A DNS name of labels of letters, digits and hyphens, kept lowercase: the
/// gateway compares host names with it.
pub(super) fn parse_domain(value: &str) -> Result<String, String> {
    let domain = value.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if domain.len() <= 200 && domain.split('.').all(label_ok) {
        Ok(domain)
    } else {
        Err(format!(
            "expected a DNS name such as runners.example.com, got `{value}`"
        ))
    }
}

/// Adds `http://` where the host has no scheme: the first orchestrator's
/// production compose set `RUNNERS_HOST=http://localhost` while the seed's
/// default gives `http://localhost:<port>`, and the browser needs a full URL.
pub(super) fn parse_runners_host(value: &str) -> Result<String, String> {
    let host = parse_non_blank(value)?;
    let host = host.trim_end_matches('/');
    if host.contains("://") {
        Ok(host.to_owned())
    } else {
        Ok(format!("http://{host}"))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;

    #[test]
    fn endpoint_adds_a_scheme_only_where_missing() {
        let bare = parse(&["--runners-host", "runners.example.com"]).unwrap();
        assert_eq!(bare.endpoint_for(32768), "http://runners.example.com:32768");
        let with_scheme = parse(&["--runners-host", "http://localhost"]).unwrap();
        assert_eq!(with_scheme.endpoint_for(40000), "http://localhost:40000");
        let https = parse(&["--runners-host", "https://r.example.com/"]).unwrap();
        assert_eq!(https.endpoint_for(443), "https://r.example.com:443");
        assert_eq!(
            https.endpoint_on("10.0.0.3", 30001),
            "https://10.0.0.3:30001"
        );
        assert_eq!(bare.endpoint_on("node-2", 30002), "http://node-2:30002");
    }

    #[test]
    fn gateway_settings() {
        let defaults = parse(&[]).unwrap();
        assert!(!defaults.gateway_mode());
        assert_eq!(defaults.access.gateway_domain, "runners.localhost");
        assert_eq!(defaults.runner_publish_address().to_string(), "0.0.0.0");
        assert_eq!(
            defaults.gateway_endpoint("abc"),
            "http://abc.runners.localhost:3001"
        );
        let gateway = parse(&[
            "--runner-access=gateway",
            "--gateway-domain=Runners.Example.COM.",
            "--gateway-public-scheme=https",
            "--gateway-public-port=443",
            "--runner-bind-address=10.0.0.1",
        ])
        .unwrap();
        assert!(gateway.gateway_mode());
        assert_eq!(gateway.runner_publish_address().to_string(), "127.0.0.1");
        assert_eq!(
            gateway.gateway_endpoint("abc"),
            "https://abc.runners.example.com:443"
        );
        for (args, variable) in [
            (&["--runner-access=open"][..], "RUNNER_ACCESS"),
            (&["--gateway-domain=a..b"][..], "GATEWAY_DOMAIN"),
            (&["--gateway-domain=-a.b"][..], "GATEWAY_DOMAIN"),
            (&["--gateway-domain=a_b.c"][..], "GATEWAY_DOMAIN"),
            (
                &["--gateway-public-scheme=ftp"][..],
                "GATEWAY_PUBLIC_SCHEME",
            ),
            (&["--gateway-public-port=0"][..], "GATEWAY_PUBLIC_PORT"),
        ] {
            let error = parse(args).unwrap_err().to_string();
            assert!(error.contains(variable), "{args:?}: {error}");
        }
    }
}
