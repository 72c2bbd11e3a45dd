//! Where runners may connect (`RUNNER_EGRESS`, `RUNNER_EGRESS_ALLOW`,
//! `RUNNER_DNS`) and the network an instance's runners join; the rules that
//! enforce it are `egress`'s.

use clap::Args;

use super::Settings;
use crate::domain::egress::{self as policy, AllowList, EgressPolicy};

/// `RUNNER_EGRESS` and what goes with it.
#[derive(Debug, Clone, Args)]
pub struct EgressSettings {
    /// Where runners may connect: `public` (public addresses and DNS only;
    /// never the host, private, link-local, CGNAT, multicast or reserved
    /// ranges), `none` (nothing), or `all` (no rules at all).
    #[arg(long, env = "RUNNER_EGRESS", default_value = "public", value_name = "RUNNER_EGRESS",
          value_parser = clap::builder::ValueParser::new(|value: &str| value.parse::<EgressPolicy>()))]
    pub runner_egress: EgressPolicy,

    /// Comma-separated CIDRs (optionally `:PORT`, e.g. `10.1.2.3:3128`)
    /// runners reach beyond `public`: a package mirror, a proxy.
    #[arg(long, env = "RUNNER_EGRESS_ALLOW", default_value = "", value_name = "RUNNER_EGRESS_ALLOW",
          value_parser = clap::builder::ValueParser::new(policy::parse_allow_list))]
    pub runner_egress_allow: AllowList,

    /// Comma-separated resolver addresses runners use (Docker's `--dns`);
    /// unset: the engine's (the host's resolvers). A private resolver must
    /// also be in `RUNNER_EGRESS_ALLOW` (`ADDRESS:53`) under `public`.
    #[arg(
        long,
        env = "RUNNER_DNS",
        value_name = "RUNNER_DNS",
        value_delimiter = ','
    )]
    pub runner_dns: Vec<std::net::IpAddr>,
}

impl Settings {
    /// The network runners join when a provision asks for no other:
    /// `RUNNER_NETWORK`, else (under an enforced policy)
    /// `taylored-runners-<instance>`; `None`: the engine's default bridge.
    pub fn runner_network(&self) -> Option<String> {
        runner_network(
            self.egress.runner_egress,
            self.limits.runner_network.as_deref(),
            &self.orchestrator_id,
        )
    }
}

/// The name an instance's runner networks derive from: `RUNNER_NETWORK`,
/// else `taylored-runners-<instance>`.
pub fn runner_network_base(runner_network: Option<&str>, instance: &str) -> String {
    runner_network
        .map(str::to_owned)
        .unwrap_or_else(|| format!("taylored-runners-{instance}"))
}

/// See [`Settings::runner_network`].
pub fn runner_network(
    policy: EgressPolicy,
    runner_network: Option<&str>,
    instance: &str,
) -> Option<String> {
    if policy.is_enforced() {
        Some(runner_network_base(runner_network, instance))
    } else {
        runner_network.map(str::to_owned)
    }
}
