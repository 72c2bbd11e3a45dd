//! Service settings: every one is an environment variable (the names the first
//! orchestrator used) and a command-line flag. An invalid value stops the
//! service at start with a message naming the variable, never a silent default.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The Docker label that marks a runner and names its session (from the seed).
pub const SESSION_LABEL: &str = "taylored-runner-session-id";
/// The Docker label that scopes a runner to one orchestrator instance.
pub const INSTANCE_LABEL: &str = "taylored-orchestrator-id";
/// The Docker label that marks a runner started for the warm pool.
pub const POOLED_LABEL: &str = "taylored-runner-pooled";
/// The Docker label that marks the shared runner of `REUSE_RUNNER_MODE`.
pub const SINGLETON_LABEL: &str = "taylored-runner-singleton";
/// The instance that owns runners carrying only the session label (those the
/// first orchestrator started).
pub const DEFAULT_INSTANCE: &str = "default";

#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the REST service (the default when no command is given).
    Serve,
    /// Exit 0 if the service on PORT answers `GET /healthz` with a 2xx within
    /// 3 s, else 1 (the container image's HEALTHCHECK; needs no shell).
    Healthcheck,
    /// Inspect the runners recorded in DATABASE_URL (read-only; safe while
    /// the service runs).
    Runners {
        #[command(subcommand)]
        command: RunnersCommand,
    },
    /// Print what a start's reconcile would adopt, remove or drop, changing
    /// nothing (the service reconciles by itself; only a dry run is offered).
    Reconcile {
        #[arg(long, required = true)]
        dry_run: bool,
    },
    /// This instance's egress rules (RUNNER_EGRESS) on the engine's host.
    Egress {
        #[command(subcommand)]
        command: EgressCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum EgressCommand {
    /// Print the nftables ruleset this instance installs.
    Show,
    /// Install (or put back) the rules once, as the service does at start.
    Apply,
    /// Delete this instance's rules (its table); other instances' stay.
    Remove,
}

#[derive(Debug, Subcommand)]
pub enum RunnersCommand {
    /// One line per runner.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A runner's row and its audit trail.
    Show {
        session_id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What a user may want to change between deployments.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Port of the REST service.
    #[arg(long, env = "PORT", default_value_t = 3001, value_name = "PORT")]
    pub port: u16,

    /// Address the REST service listens on.
    #[arg(
        long,
        env = "LISTEN_ADDRESS",
        default_value = "0.0.0.0",
        value_name = "LISTEN_ADDRESS"
    )]
    pub listen_address: IpAddr,

    /// `production` hides error details from clients.
    #[arg(
        long,
        env = "NODE_ENV",
        default_value = "development",
        value_name = "NODE_ENV"
    )]
    pub node_env: String,

    /// One shared runner for every client instead of one per session.
    #[arg(long, env = "REUSE_RUNNER_MODE", default_value = "false", value_name = "REUSE_RUNNER_MODE",
          value_parser = parse_strict_bool, action = clap::ArgAction::Set)]
    pub reuse_runner_mode: bool,

    /// Host (optionally with a scheme) that clients use to reach runners.
    #[arg(long, env = "RUNNERS_HOST", default_value = "localhost", value_name = "RUNNERS_HOST",
          value_parser = parse_runners_host)]
    pub runners_host: String,

    /// Seconds without a heartbeat after which a runner is removed.
    #[arg(long, env = "INACTIVITY_TIMEOUT_SECONDS", default_value = "60",
          value_name = "INACTIVITY_TIMEOUT_SECONDS", value_parser = parse_positive_seconds)]
    pub inactivity_timeout: Duration,

    /// Seconds between two sweeps for inactive runners.
    #[arg(long, env = "CLEANUP_INTERVAL_SECONDS", default_value = "30",
          value_name = "CLEANUP_INTERVAL_SECONDS", value_parser = parse_positive_seconds)]
    pub cleanup_interval: Duration,

    /// SQLite database: a file path or a `sqlite:` URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://orchestrator.db",
        value_name = "DATABASE_URL"
    )]
    pub database_url: String,

    /// Image that runners are started from.
    #[arg(long, env = "DOCKER_IMAGE_NAME", default_value = "runner-image",
          value_name = "DOCKER_IMAGE_NAME", value_parser = parse_non_blank)]
    pub docker_image_name: String,

    /// Extra container ports 2999 down to 3000-N published on the same host
    /// ports (meant for the single-runner mode).
    #[arg(long, env = "FREE_DOORS", default_value_t = 0, value_name = "FREE_DOORS",
          value_parser = clap::value_parser!(u16).range(0..=20))]
    pub free_doors: u16,

    /// Docker Engine address (`unix://`, `tcp://`, `http://`); unset means the
    /// local socket.
    #[arg(long, env = "DOCKER_HOST", value_name = "DOCKER_HOST")]
    pub docker_host: Option<String>,

    /// Name of this orchestrator instance; it only ever touches runners that
    /// carry it, so several instances can share one Docker host.
    #[arg(long, env = "ORCHESTRATOR_ID", default_value = DEFAULT_INSTANCE,
          value_name = "ORCHESTRATOR_ID", value_parser = parse_instance_id)]
    pub orchestrator_id: String,

    /// What the startup reconciler does with a running runner it has no row for.
    #[arg(
        long,
        env = "ORPHAN_POLICY",
        default_value = "adopt",
        value_name = "ORPHAN_POLICY"
    )]
    pub orphan_policy: OrphanPolicy,

    /// Comma-separated origins allowed by CORS; `*` (the default) allows all.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", default_value = "*",
          value_name = "CORS_ALLOWED_ORIGINS", value_parser = parse_origins)]
    pub cors_allowed_origins: AllowedOrigins,

    /// Started runners kept waiting for provisions without a session id
    /// (they answer at once); 0 turns the pool off.
    #[arg(long, env = "WARM_POOL_SIZE", default_value_t = 0, value_name = "WARM_POOL_SIZE",
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub warm_pool_size: u32,

    #[command(flatten)]
    pub limits: RunnerLimits,

    #[command(flatten)]
    pub admission: Admission,

    /// What runs runners: `docker` (one Docker Engine, a container each) or
    /// `swarm` (a Docker Swarm manager in `DOCKER_HOST`, a service each).
    #[arg(
        long,
        env = "RUNNER_BACKEND",
        default_value = "docker",
        value_name = "RUNNER_BACKEND"
    )]
    pub runner_backend: BackendKind,

    #[command(flatten)]
    pub swarm: SwarmSettings,

    #[command(flatten)]
    pub access: AccessSettings,

    #[command(flatten)]
    pub egress: crate::egress::EgressSettings,

    /// Host address that runner ports are published on.
    #[arg(
        long,
        env = "RUNNER_BIND_ADDRESS",
        default_value = "0.0.0.0",
        value_name = "RUNNER_BIND_ADDRESS"
    )]
    pub runner_bind_address: IpAddr,

    /// Seconds a runner gets to exit after SIGTERM before it is killed.
    #[arg(long, env = "RUNNER_STOP_TIMEOUT_SECONDS", default_value_t = 2,
          value_name = "RUNNER_STOP_TIMEOUT_SECONDS",
          value_parser = clap::value_parser!(u32).range(0..=60))]
    pub runner_stop_timeout_seconds: u32,

    /// Start runners with an init process (Docker's `Init`, tini) as PID 1,
    /// which forwards SIGTERM to the runner and reaps its zombies.
    #[arg(long, env = "RUNNER_INIT", default_value = "true", value_name = "RUNNER_INIT",
          value_parser = parse_strict_bool, action = clap::ArgAction::Set)]
    pub runner_init: bool,

    /// Seconds a single HTTP request may take before it is answered 408.
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value = "60",
          value_name = "REQUEST_TIMEOUT_SECONDS", value_parser = parse_positive_seconds)]
    pub request_timeout: Duration,

    /// Seconds between two reconciles while serving (engine events are
    /// handled at once; this catches what the event stream missed).
    #[arg(long, env = "RECONCILE_INTERVAL_SECONDS", default_value = "30",
          value_name = "RECONCILE_INTERVAL_SECONDS", value_parser = parse_positive_seconds)]
    pub reconcile_interval: Duration,

    /// Milliseconds between two writes of the heartbeats received meanwhile
    /// (one transaction each): the most the database's `last_heartbeat_at`
    /// lags behind the heartbeats answered.
    #[arg(long, env = "HEARTBEAT_FLUSH_INTERVAL_MS", default_value = "1000",
          value_name = "HEARTBEAT_FLUSH_INTERVAL_MS", value_parser = parse_flush_interval)]
    pub heartbeat_flush_interval: Duration,

    /// Seconds that in-flight requests get to finish after SIGTERM; what is
    /// cut off then is repaired by the next start's reconcile.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value = "30",
          value_name = "SHUTDOWN_TIMEOUT_SECONDS", value_parser = parse_positive_seconds)]
    pub shutdown_timeout: Duration,

    /// `text` for people, `json` for log collectors.
    #[arg(
        long,
        env = "LOG_FORMAT",
        default_value = "text",
        value_name = "LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

impl Settings {
    /// Parses settings from command-line `args`, falling back to the
    /// environment; lets tests build settings without touching the process.
    pub fn from_env_and_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_from(args).map(|cli| cli.settings)
    }

    /// The networks runners join under `RUNNER_EGRESS` (see `egress`).
    pub fn egress_networks(&self) -> crate::egress::EgressNetworks {
        crate::egress::EgressNetworks::new(
            self.egress.runner_egress,
            self.limits.runner_network.as_deref(),
            &self.orchestrator_id,
        )
    }

    pub fn is_production(&self) -> bool {
        self.node_env == "production"
    }

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

/// Who may start runners, and for how long they may live.
#[derive(Debug, Clone, Args)]
pub struct Admission {
    /// Most runners at once (warm ones included); further provisions answer
    /// 503. `auto` derives it from the engine's memory (see `capacity`), 0
    /// means no limit.
    #[arg(long, env = "MAX_CONCURRENT_RUNNERS", default_value = "auto",
          value_name = "MAX_CONCURRENT_RUNNERS", value_parser = parse_max_runners)]
    pub max_concurrent_runners: MaxRunners,

    /// Sustained provisions per minute per client address (0: no limit).
    #[arg(
        long,
        env = "PROVISION_RATE_PER_MINUTE",
        default_value_t = 120,
        value_name = "PROVISION_RATE_PER_MINUTE"
    )]
    pub provision_rate_per_minute: u32,

    /// Provisions one client address may send at once before the sustained
    /// rate applies: a class behind one NAT starts together.
    #[arg(long, env = "PROVISION_BURST", default_value_t = 120, value_name = "PROVISION_BURST",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub provision_burst: u32,

    /// Take the client address from `X-Forwarded-For` (only behind a proxy
    /// that sets it; anyone can send the header).
    #[arg(long, env = "TRUST_FORWARDED_FOR", default_value = "false", value_name = "TRUST_FORWARDED_FOR",
          value_parser = parse_strict_bool, action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,

    /// Seconds after which a runner is removed however active (unset: never).
    #[arg(long, env = "MAX_RUNNER_AGE_SECONDS", value_name = "MAX_RUNNER_AGE_SECONDS",
          value_parser = parse_positive_seconds)]
    pub max_runner_age: Option<Duration>,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Docker,
    Swarm,
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

/// `MAX_CONCURRENT_RUNNERS`: derived from the engine, or set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxRunners {
    /// Derived from the engine's memory when it is first reached.
    Auto,
    /// As set; 0 means no limit (as before `auto` existed).
    Set(u32),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities(pub Vec<String>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrphanPolicy {
    Adopt,
    Remove,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    Any,
    List(Vec<String>),
}

/// Only `true` and `false`: the first orchestrator compared with `'true'`, so
/// anything else (`yes`, `1`) would silently have meant false.
fn parse_strict_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("expected `true` or `false`, got `{other}`")),
    }
}

/// `512m`, `1g`, `65536k` or plain bytes (binary multiples, as Docker).
fn parse_bytes(value: &str) -> Result<i64, String> {
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

/// Constraints as Swarm writes them: `node.labels.KEY==VALUE`,
/// `node.hostname!=NAME`, ...; each needs an operator.
fn parse_placement(value: &str) -> Result<Placement, String> {
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

fn parse_port_range(value: &str) -> Result<PortRange, String> {
    let invalid = || format!("expected FIRST-LAST host ports (e.g. 30000-32767), got `{value}`");
    let (first, last) = value.trim().split_once('-').ok_or_else(invalid)?;
    let first: u16 = first.trim().parse().map_err(|_| invalid())?;
    let last: u16 = last.trim().parse().map_err(|_| invalid())?;
    if first == 0 || first > last {
        return Err(invalid());
    }
    Ok(PortRange { first, last })
}

/// A DNS name of labels of letters, digits and hyphens, kept lowercase: the
/// gateway compares host names with it.
fn parse_domain(value: &str) -> Result<String, String> {
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

fn parse_max_runners(value: &str) -> Result<MaxRunners, String> {
    match value.trim() {
        "auto" => Ok(MaxRunners::Auto),
        number => number
            .parse()
            .map(MaxRunners::Set)
            .map_err(|_| format!("expected `auto` or a number of runners, got `{value}`")),
    }
}

fn parse_cpus(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(cpus) if cpus > 0.0 && cpus <= 1024.0 => Ok(cpus),
        _ => Err(format!("expected a number of CPUs above 0, got `{value}`")),
    }
}

fn parse_capabilities(value: &str) -> Result<Capabilities, String> {
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

fn parse_positive_seconds(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 second".to_owned()),
        Ok(seconds) if seconds <= 7 * 24 * 3600 => Ok(Duration::from_secs(seconds)),
        Ok(_) => Err("must be at most one week (604800 seconds)".to_owned()),
        Err(_) => Err(format!("expected a whole number of seconds, got `{value}`")),
    }
}

fn parse_flush_interval(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<u64>() {
        Ok(millis @ 10..=60_000) => Ok(Duration::from_millis(millis)),
        Ok(_) => Err("must be between 10 and 60000 milliseconds".to_owned()),
        Err(_) => Err(format!(
            "expected a whole number of milliseconds, got `{value}`"
        )),
    }
}

fn parse_non_blank(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(value.to_owned())
    }
}

/// Adds `http://` where the host has no scheme: the first orchestrator's
/// production compose set `RUNNERS_HOST=http://localhost` while the seed's
/// default gives `http://localhost:<port>`, and the browser needs a full URL.
fn parse_runners_host(value: &str) -> Result<String, String> {
    let host = parse_non_blank(value)?;
    let host = host.trim_end_matches('/');
    if host.contains("://") {
        Ok(host.to_owned())
    } else {
        Ok(format!("http://{host}"))
    }
}

/// Instance ids go into a Docker label and into container names.
fn parse_instance_id(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err("expected 1 to 64 characters from [A-Za-z0-9_.-]".to_owned())
    }
}

fn parse_origins(value: &str) -> Result<AllowedOrigins, String> {
    let origins: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(|origin| origin.trim_end_matches('/').to_owned())
        .collect();
    if origins.is_empty() {
        return Err("expected `*` or a comma-separated list of origins".to_owned());
    }
    if origins.iter().any(|origin| origin == "*") {
        return Ok(AllowedOrigins::Any);
    }
    for origin in &origins {
        let parsed = origin
            .parse::<axum::http::HeaderValue>()
            .map_err(|_| format!("`{origin}` is not a valid origin"))?;
        let text = parsed.to_str().unwrap_or_default();
        if !(text.starts_with("http://") || text.starts_with("https://")) {
            return Err(format!("`{origin}` must start with http:// or https://"));
        }
    }
    Ok(AllowedOrigins::List(origins))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Settings::from_env_and_args(std::iter::once("orchestrator").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_seed() {
        let settings = parse(&[]).unwrap();
        assert_eq!(settings.port, 3001);
        assert!(!settings.reuse_runner_mode);
        assert_eq!(settings.runners_host, "http://localhost");
        assert_eq!(settings.inactivity_timeout, Duration::from_secs(60));
        assert_eq!(settings.cleanup_interval, Duration::from_secs(30));
        assert_eq!(settings.docker_image_name, "runner-image");
        assert_eq!(settings.orchestrator_id, "default");
        assert_eq!(settings.orphan_policy, OrphanPolicy::Adopt);
        assert_eq!(settings.cors_allowed_origins, AllowedOrigins::Any);
        assert!(!settings.is_production());
    }

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
    fn invalid_values_name_the_variable() {
        for (args, variable) in [
            (&["--reuse-runner-mode", "yes"][..], "REUSE_RUNNER_MODE"),
            (
                &["--inactivity-timeout", "0"][..],
                "INACTIVITY_TIMEOUT_SECONDS",
            ),
            (
                &["--cleanup-interval", "soon"][..],
                "CLEANUP_INTERVAL_SECONDS",
            ),
            (&["--port", "70000"][..], "PORT"),
            (&["--free-doors", "21"][..], "FREE_DOORS"),
            (&["--orchestrator-id", "a b"][..], "ORCHESTRATOR_ID"),
            (&["--orphan-policy", "keep"][..], "ORPHAN_POLICY"),
            (
                &["--cors-allowed-origins", "example.com"][..],
                "CORS_ALLOWED_ORIGINS",
            ),
            (&["--docker-image-name", " "][..], "DOCKER_IMAGE_NAME"),
        ] {
            let error = parse(args).unwrap_err().to_string();
            assert!(error.contains(variable), "{args:?}: {error}");
        }
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

    #[test]
    fn admission_defaults_admit_a_class_behind_one_address() {
        let defaults = parse(&[]).unwrap().admission;
        assert_eq!(defaults.max_concurrent_runners, MaxRunners::Auto);
        assert_eq!(defaults.provision_rate_per_minute, 120);
        assert!(defaults.provision_burst >= 100, "{defaults:?}");
        let set = parse(&["--max-concurrent-runners=0", "--provision-burst=300"])
            .unwrap()
            .admission;
        assert_eq!(set.max_concurrent_runners, MaxRunners::Set(0));
        assert_eq!(set.provision_burst, 300);
        for (args, variable) in [
            (
                &["--max-concurrent-runners=many"][..],
                "MAX_CONCURRENT_RUNNERS",
            ),
            (
                &["--max-concurrent-runners=-1"][..],
                "MAX_CONCURRENT_RUNNERS",
            ),
            (&["--provision-burst=0"][..], "PROVISION_BURST"),
        ] {
            let error = parse(args).unwrap_err().to_string();
            assert!(error.contains(variable), "{args:?}: {error}");
        }
    }

    #[test]
    fn heartbeat_flush_interval_is_bounded() {
        let interval = |value: &str| {
            parse(&["--heartbeat-flush-interval", value]).map(|s| s.heartbeat_flush_interval)
        };
        assert_eq!(
            parse(&[]).unwrap().heartbeat_flush_interval,
            Duration::from_secs(1)
        );
        assert_eq!(interval("10").unwrap(), Duration::from_millis(10));
        for bad in ["0", "9", "60001", "1s"] {
            let error = interval(bad).unwrap_err().to_string();
            assert!(
                error.contains("HEARTBEAT_FLUSH_INTERVAL_MS"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn strict_booleans() {
        assert!(
            parse(&["--reuse-runner-mode", "true"])
                .unwrap()
                .reuse_runner_mode
        );
        assert!(
            !parse(&["--reuse-runner-mode", "false"])
                .unwrap()
                .reuse_runner_mode
        );
        assert!(parse(&["--reuse-runner-mode", "TRUE"]).is_err());
    }

    #[test]
    fn origins_list_or_any() {
        let list = parse(&[
            "--cors-allowed-origins",
            "http://a.example, https://b.example/",
        ])
        .unwrap()
        .cors_allowed_origins;
        assert_eq!(
            list,
            AllowedOrigins::List(vec!["http://a.example".into(), "https://b.example".into()])
        );
        let any = parse(&["--cors-allowed-origins", "http://a.example,*"]).unwrap();
        assert_eq!(any.cors_allowed_origins, AllowedOrigins::Any);
    }
}
