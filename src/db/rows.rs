//! The rows the database reads and writes, as Rust types.

use sqlx::FromRow;

use super::AuditEntry;
use crate::backend::{NetworkMode, RunnerNode};
use crate::domain::{RunnerKind, SessionId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type, serde::Serialize)]
#[sqlx(type_name = "TEXT", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum RunnerState {
    Provisioning,
    Running,
    Removing,
}

#[derive(Debug, Clone, PartialEq, Eq, FromRow, serde::Serialize)]
pub struct RunnerRow {
    pub session_id: String,
    pub kind: RunnerKind,
    pub state: RunnerState,
    pub container_name: String,
    pub container_id: Option<String>,
    pub host_port: Option<u16>,
    #[sqlx(try_from = "Option<String>")]
    pub network_mode: NetworkMode,
    pub created_at: String,
    pub updated_at: String,
    pub last_heartbeat_at: String,
    /// A warm runner waiting in the pool for a provision to claim it.
    pub pooled: bool,
    /// The Swarm node it runs on (`None` on a single engine).
    pub node: Option<String>,
    /// Where clients reach that node (the endpoint's host).
    pub node_host: Option<String>,
    /// The secret label of its host name behind the gateway.
    pub token: String,
}

/// What a periodic reconcile first compares with the engine: which
/// container a row tracks, without the rest of the row. Reading six columns
/// instead of fourteen halves the pass at 10,000 sessions; the rows that
/// disagree are then read whole, under their lock.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct TrackedRunner {
    pub session_id: String,
    pub kind: RunnerKind,
    pub state: RunnerState,
    pub container_name: String,
    pub container_id: Option<String>,
    pub host_port: Option<u16>,
}

/// A running runner as the start loads it into memory (see `heartbeats`).
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct RunningRunner {
    pub session_id: String,
    pub kind: RunnerKind,
    pub token: String,
    /// The digest its labels carry (see migration V7).
    pub token_sha256: Option<String>,
    pub host_port: Option<u16>,
    pub node_host: Option<String>,
    /// See [`StartedRunner::address`](crate::backend::StartedRunner::address).
    pub address: Option<String>,
}

/// A new runner's row, written before its container exists.
#[derive(Debug, Clone)]
pub struct NewRunner<'a> {
    pub session_id: &'a SessionId,
    pub kind: RunnerKind,
    pub container_name: &'a str,
    pub network_mode: &'a NetworkMode,
    /// Started for the warm pool rather than for a client.
    pub pooled: bool,
    /// Its gateway token (see `domain::token`).
    pub token: &'a str,
}

/// A running runner a reconcile found, to record (kept or adopted).
#[derive(Debug, Clone)]
pub struct FoundRunner<'a> {
    pub session_id: &'a str,
    pub kind: RunnerKind,
    pub container_name: &'a str,
    pub container_id: &'a str,
    pub host_port: Option<u16>,
    pub network_mode: &'a NetworkMode,
    pub pooled: bool,
    pub node: Option<&'a RunnerNode>,
    pub address: Option<&'a str>,
    /// Its row's token when kept; when adopted, the one its labels and the
    /// token key derive, else a fresh one (a kept row keeps its own
    /// whatever this says).
    pub token: String,
    /// The token digest its labels carry, for an adopted row (see
    /// migration V7).
    pub token_sha256: Option<&'a str>,
    /// When the engine created it (seconds since the epoch): an adopted
    /// row's `created_at`, so that `MAX_RUNNER_AGE_SECONDS` counts from the
    /// runner's start, not from its adoption (a kept row keeps its own).
    pub created: i64,
}

/// The row changes of one reconcile, written together by
/// [`Db::write_changes`](super::Db::write_changes).
#[derive(Debug, Default)]
pub struct RowChanges<'a> {
    /// Rows deleted (their containers are gone), each with its audit line.
    pub dropped: Vec<AuditEntry<'a>>,
    /// Rows taken out of `running` until their containers are removed.
    pub removing: Vec<&'a str>,
    /// Running containers: their rows updated (kept) or inserted (adopted).
    pub observed: Vec<(FoundRunner<'a>, AuditEntry<'a>)>,
}

impl RowChanges<'_> {
    pub fn is_empty(&self) -> bool {
        self.dropped.is_empty() && self.removing.is_empty() && self.observed.is_empty()
    }

    pub fn len(&self) -> usize {
        self.dropped.len() + self.removing.len() + self.observed.len()
    }
}

/// The outcome of trying to claim a session.
#[derive(Debug)]
pub enum Claim {
    /// The row was inserted in state `provisioning`; the caller owns it.
    Claimed,
    /// A row already existed; nothing was written.
    Existing(Box<RunnerRow>),
    /// `MAX_CONCURRENT_RUNNERS` rows exist; nothing was written.
    LimitReached,
}
