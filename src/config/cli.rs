//! The command line: the service (the default), and the operator commands
//! beside it. Every setting is a flag as well as an environment variable.

use clap::{Parser, Subcommand};

use super::Settings;

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
    /// Write a consistent copy of DATABASE_URL to PATH while the service
    /// runs (SQLite's `VACUUM INTO`), and check it; PATH must not exist.
    Backup { path: std::path::PathBuf },
    /// Print a new gateway token key (64 hex digits), for a file that
    /// GATEWAY_TOKEN_KEY_FILE names, e.g. a Docker secret every manager
    /// shares: `orchestrator new-token-key | docker secret create NAME -`.
    NewTokenKey,
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
    /// Keep this instance's rules on this swarm node, as its egress agent
    /// (a global service labelled `taylored-egress-agent=<ORCHESTRATOR_ID>`,
    /// DOCKER_HOST the node's own engine): installs them, puts them back
    /// every RECONCILE_INTERVAL_SECONDS, and exits non-zero when it cannot,
    /// so that the manager places no runner here. Runs until SIGTERM, which
    /// leaves the rules in place.
    Node,
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
