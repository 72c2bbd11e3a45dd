//! What one runner may use: memory, CPUs, processes, files, capabilities, its
//! filesystem and its network.

use clap::Args;

use super::parse::parse_strict_bool;

/// What one runner may use. Runners execute untrusted code, so every limit
/// is on by default, with values the real runner (a Node.js server that
/// spawns language runtimes) lives with.
#[derive(Debug, Clone, Args)]
pub struct RunnerLimits {
    /// Memory limit per runner (bytes, or with k/m/g); swap is not allowed
    /// beyond it.
    #[arg(long, env = "RUNNER_MEMORY", default_value = "512m", value_name = "RUNNER_MEMORY",
          value_parser = parse_bytes)]
    pub runner_memory: i64,

    /// CPUs per runner (fractions allowed).
    #[arg(long, env = "RUNNER_CPUS", default_value = "1", value_name = "RUNNER_CPUS",
          value_parser = parse_cpus)]
    pub runner_cpus: f64,

    /// Most processes and threads per runner (stops fork bombs).
    #[arg(long, env = "RUNNER_PIDS_LIMIT", default_value_t = 256, value_name = "RUNNER_PIDS_LIMIT",
          value_parser = clap::value_parser!(i64).range(8..=1_000_000))]
    pub runner_pids_limit: i64,

    /// Open-file limit per runner process.
    #[arg(long, env = "RUNNER_NOFILE", default_value_t = 1024, value_name = "RUNNER_NOFILE",
          value_parser = clap::value_parser!(i64).range(64..=1_048_576))]
    pub runner_nofile: i64,

    /// Capabilities kept (comma-separated, e.g. `CHOWN,SETUID`); every other
    /// one is dropped.
    #[arg(long, env = "RUNNER_CAPABILITIES", default_value = "", value_name = "RUNNER_CAPABILITIES",
          value_parser = parse_capabilities)]
    pub runner_capabilities: Capabilities,

    /// A read-only root filesystem, with a writable tmpfs on /tmp.
    #[arg(long, env = "RUNNER_READ_ONLY", default_value = "false", value_name = "RUNNER_READ_ONLY",
          value_parser = parse_strict_bool, action = clap::ArgAction::Set)]
    pub runner_read_only: bool,

    /// Size of /tmp when the root filesystem is read-only.
    #[arg(long, env = "RUNNER_TMPFS_SIZE", default_value = "64m", value_name = "RUNNER_TMPFS_SIZE",
          value_parser = parse_bytes)]
    pub runner_tmpfs_size: i64,

    /// A Docker network for runners (created if missing, with traffic
    /// between its containers off); unset: `taylored-runners-<instance>`
    /// under an enforced RUNNER_EGRESS, the engine's default bridge under
    /// `all`.
    #[arg(long, env = "RUNNER_NETWORK", value_name = "RUNNER_NETWORK")]
    pub runner_network: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities(pub Vec<String>);

/// `512m`, `1g`, `65536k` or plain bytes (binary multiples, as Docker).
pub(super) fn parse_bytes(value: &str) -> Result<i64, String> {
    let value = value.trim().to_ascii_lowercase();
    let (digits, multiplier) = match value.char_indices().last() {
        Some((at, 'k')) => (&value[..at], 1 << 10),
        Some((at, 'm')) => (&value[..at], 1 << 20),
        Some((at, 'g')) => (&value[..at], 1 << 30),
        _ => (value.as_str(), 1),
    };
    let bytes = digits
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("expected a size such as 512m or 1g, got `{value}`"))?;
    if bytes < 6 << 20 {
        return Err("must be at least 6m (the engine's minimum)".to_owned());
    }
    Ok(bytes)
}

pub(super) fn parse_cpus(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(cpus) if cpus > 0.0 && cpus <= 1024.0 => Ok(cpus),
        _ => Err(format!("expected a number of CPUs above 0, got `{value}`")),
    }
}

pub(super) fn parse_capabilities(value: &str) -> Result<Capabilities, String> {
    let mut kept = Vec::new();
    for name in value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        let name = name.to_ascii_uppercase();
        let name = name.strip_prefix("CAP_").unwrap_or(&name).to_owned();
        if name == "ALL" || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            return Err(format!("`{name}` is not a capability name"));
        }
        kept.push(name);
    }
    Ok(Capabilities(kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse;

    #[test]
    fn runner_limits() {
        let defaults = parse(&[]).unwrap().limits;
        assert_eq!(defaults.runner_memory, 512 << 20);
        assert_eq!(defaults.runner_pids_limit, 256);
        assert_eq!(defaults.runner_capabilities, Capabilities::default());
        let set = parse(&[
            "--runner-memory=1g",
            "--runner-cpus=0.5",
            "--runner-capabilities=chown, CAP_SETUID",
        ])
        .unwrap()
        .limits;
        assert_eq!(set.runner_memory, 1 << 30);
        assert_eq!(set.runner_cpus, 0.5);
        assert_eq!(set.runner_capabilities.0, ["CHOWN", "SETUID"]);
        for (args, variable) in [
            (&["--runner-memory=lots"][..], "RUNNER_MEMORY"),
            (&["--runner-memory=1k"][..], "RUNNER_MEMORY"),
            (&["--runner-cpus=0"][..], "RUNNER_CPUS"),
            (&["--runner-capabilities=ALL"][..], "RUNNER_CAPABILITIES"),
            (&["--runner-pids-limit=1"][..], "RUNNER_PIDS_LIMIT"),
        ] {
            let error = parse(args).unwrap_err().to_string();
            assert!(error.contains(variable), "{args:?}: {error}");
        }
    }
}
