//! Settings that only `RUNNER_BACKEND=swarm` reads: placement, the host
//! ports runners are published on, and how long a task may take to run.

use std::time::Duration;

use clap::Args;

use super::parse::parse_positive_seconds;

/// Settings that only `RUNNER_BACKEND=swarm` reads.
#[derive(Debug, Clone, Args)]
pub struct SwarmSettings {
    /// Placement constraints for runner services, comma-separated (e.g.
    /// `node.labels.runners==true`), to pin runners to labelled nodes.
    #[arg(long, env = "RUNNER_PLACEMENT", default_value = "", value_name = "RUNNER_PLACEMENT",
          value_parser = parse_placement)]
    pub runner_placement: Placement,

    /// Host ports runners are published on (in host mode, on their node),
    /// `FIRST-LAST`. The service picks them, so that no two runners share
    /// one and IPv4 and IPv6 agree (moby#42442).
    #[arg(long, env = "RUNNER_PORT_RANGE", default_value = "30000-32767",
          value_name = "RUNNER_PORT_RANGE", value_parser = parse_port_range)]
    pub runner_port_range: PortRange,

    /// Seconds a runner's task may take to run before its provision fails
    /// (image missing on the node, no node fits).
    #[arg(long, env = "RUNNER_START_TIMEOUT_SECONDS", default_value = "30",
          value_name = "RUNNER_START_TIMEOUT_SECONDS", value_parser = parse_positive_seconds)]
    pub runner_start_timeout: Duration,
}

/// `RUNNER_PLACEMENT`: Swarm placement constraints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement(pub Vec<String>);

/// `RUNNER_PORT_RANGE`: an inclusive range of host ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// Constraints as Swarm writes them: `node.labels.KEY==VALUE`,
/// `node.hostname!=NAME`, ...; each needs an operator.
pub(super) fn parse_placement(value: &str) -> Result<Placement, String> {
    let constraints: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|constraint| !constraint.is_empty())
        .map(str::to_owned)
        .collect();
    match constraints
        .iter()
        .find(|constraint| !constraint.contains("==") && !constraint.contains("!="))
    {
        Some(bad) => Err(format!(
            "`{bad}` is not a constraint (`KEY==VALUE` or `KEY!=VALUE`)"
        )),
        None => Ok(Placement(constraints)),
    }
}

pub(super) fn parse_port_range(value: &str) -> Result<PortRange, String> {
    let invalid = || format!("expected FIRST-LAST host ports (e.g. 30000-32767), got `{value}`");
    let (first, last) = value.trim().split_once('-').ok_or_else(invalid)?;
    let first: u16 = first.trim().parse().map_err(|_| invalid())?;
    let last: u16 = last.trim().parse().map_err(|_| invalid())?;
    if first == 0 || first > last {
        return Err(invalid());
    }
    Ok(PortRange { first, last })
}
