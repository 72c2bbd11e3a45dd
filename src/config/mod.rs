//! Service settings: every one is an environment variable (the names the first
//! orchestrator used) and a command-line flag. An invalid value stops the
//! service at start with a message naming the variable, never a silent default.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

mod access;
mod admission;
mod backup;
mod cli;
mod egress;
mod labels;
mod parse;
mod runner;
mod swarm;
mod warm;

pub use access::{AccessSettings, PublicScheme, RunnerAccess};
pub use admission::{Admission, MaxRunners};
pub use backup::BackupSettings;
pub use cli::{Cli, Command, EgressCommand, RunnersCommand};
pub use egress::{EgressSettings, runner_network, runner_network_base};
pub use labels::{
    CLAIMS_LABEL, DEFAULT_INSTANCE, EGRESS_AGENT_LABEL, INSTANCE_LABEL, POOLED_AT_LABEL,
    POOLED_LABEL, SESSION_LABEL, SINGLETON_LABEL, TOKEN_DIGEST_LABEL, TOKEN_NONCE_LABEL,
};
pub use runner::{Capabilities, RunnerLimits};
pub use swarm::{Placement, PortRange, SwarmSettings};
pub use warm::{WarmPoolSettings, WarmPoolSize};

use access::parse_runners_host;
use parse::{
    parse_flush_interval, parse_instance_id, parse_non_blank, parse_origins,
    parse_positive_seconds, parse_strict_bool,
};

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

    #[command(flatten)]
    pub warm_pool: WarmPoolSettings,

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
    pub egress: EgressSettings,

    #[command(flatten)]
    pub backup: BackupSettings,

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

    pub fn is_production(&self) -> bool {
        self.node_env == "production"
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Docker,
    Swarm,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
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
    fn periodic_backups_need_a_directory() {
        let settings = parse(&[]).unwrap();
        assert_eq!(settings.backup.backup_interval, None);
        assert_eq!(settings.backup.backup_keep, 7);
        let error = parse(&["--backup-interval", "60"]).unwrap_err().to_string();
        assert!(error.contains("BACKUP_PATH"), "{error}");
        let settings = parse(&["--backup-interval", "60", "--backup-path", "/b"]).unwrap();
        assert_eq!(
            settings.backup.backup_interval,
            Some(Duration::from_secs(60))
        );
        for bad in [&["--backup-keep", "0"][..], &["--backup-interval", "0"][..]] {
            assert!(parse(bad).is_err(), "{bad:?}");
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
