//! The runner records and their audit trail, in SQLite.
//!
//! Every write is either a single statement or a transaction opened with
//! `BEGIN IMMEDIATE` (a deferred transaction that reads and then writes fails
//! at once with "database is locked" instead of waiting). No transaction is
//! ever held across a Docker call: callers claim a row, commit, call Docker,
//! and record the outcome in a second write.

mod migrate;

use std::collections::HashMap;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};

use crate::backend::{NetworkMode, RunnerNode, StartedRunner};
use crate::domain::{RunnerKind, SessionId};

pub use migrate::MigrationError;

/// Everything the database layer can fail with; callers never see sqlx's
/// own error type.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A statement failed (the database is locked, full, read-only, ...).
    #[error(transparent)]
    Query(#[from] sqlx::Error),
    #[error("DATABASE_URL `{url}` is not a valid SQLite URL")]
    InvalidUrl {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot open the database `{url}`")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot open the database `{url}` read-only")]
    OpenReadOnly {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the database `{url}`")]
    Migrate {
        url: String,
        #[source]
        source: MigrationError,
    },
    #[error(
        "another orchestrator is already using the database `{}` (it holds `{}`); \
         two services on one database would fight over its runners",
        database.display(),
        lock.display()
    )]
    Locked { database: PathBuf, lock: PathBuf },
    #[error("cannot create the database lock file `{}`", path.display())]
    LockFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock `{}`", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

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

/// A running runner as the start loads it into memory (see `heartbeats`).
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct RunningRunner {
    pub session_id: String,
    pub kind: RunnerKind,
    pub token: String,
    pub host_port: Option<u16>,
    pub node_host: Option<String>,
    /// See [`StartedRunner::address`].
    pub address: Option<String>,
}

/// Who changed a runner; the `actor` column of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Api,
    Reconciler,
    Reaper,
}

impl Actor {
    fn as_str(self) -> &'static str {
        match self {
            Actor::Api => "api",
            Actor::Reconciler => "reconciler",
            Actor::Reaper => "reaper",
        }
    }
}

/// What happened to a runner; the `action` column of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Provisioned,
    ProvisionFailed,
    Deprovisioned,
    Reaped,
    /// A row and its running container found at start and kept.
    Kept,
    /// A running labelled container without a row, taken into the database.
    Adopted,
    /// A container removed because nothing should run it (orphan, stopped,
    /// duplicate).
    ContainerRemoved,
    /// A row deleted because its container was gone or not running.
    Dropped,
    /// The engine reported the tracked container died, was OOM-killed or
    /// removed.
    EngineEvent,
    /// A warm runner handed to a client.
    ClaimedFromPool,
    /// The egress rules installed where there were none.
    EgressApplied,
    /// The egress rules put back after they were changed.
    EgressRepaired,
}

impl AuditAction {
    fn as_str(self) -> &'static str {
        match self {
            AuditAction::Provisioned => "provisioned",
            AuditAction::ProvisionFailed => "provision_failed",
            AuditAction::Deprovisioned => "deprovisioned",
            AuditAction::Reaped => "reaped",
            AuditAction::Kept => "kept",
            AuditAction::Adopted => "adopted",
            AuditAction::ContainerRemoved => "container_removed",
            AuditAction::Dropped => "dropped",
            AuditAction::EngineEvent => "engine_event",
            AuditAction::ClaimedFromPool => "claimed_from_pool",
            AuditAction::EgressApplied => "egress_applied",
            AuditAction::EgressRepaired => "egress_repaired",
        }
    }
}

/// One line of the audit trail, as written.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub session_id: &'a str,
    pub container_id: Option<&'a str>,
    pub actor: Actor,
    pub action: AuditAction,
    pub reason: &'a str,
}

/// One line of the audit trail, as read back.
#[derive(Debug, Clone, PartialEq, Eq, FromRow, serde::Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: String,
    pub session_id: String,
    pub container_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub reason: String,
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
    /// Its gateway token (see `gateway::token`).
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
    /// Its row's token when kept, a fresh one when adopted (a kept row
    /// keeps its own whatever this says).
    pub token: String,
}

/// The row changes of one reconcile, written together by
/// [`Db::write_changes`].
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

/// Formats a time the way every timestamp column stores it.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The steps of an `EXPLAIN QUERY PLAN`, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPlan(pub Vec<String>);

impl QueryPlan {
    /// Whether every table access is an index search: a `SCAN` reads every
    /// row, which the reaper cannot afford every sweep.
    pub fn searches_only_indexes(&self) -> bool {
        let mut accesses = self
            .0
            .iter()
            .filter(|step| step.starts_with("SEARCH") || step.starts_with("SCAN"))
            .peekable();
        accesses.peek().is_some() && accesses.all(|step| step.contains("USING INDEX"))
    }
}

#[derive(Debug, Clone)]
pub struct Db {
    pool: SqlitePool,
    /// Held for the life of the service; see [`Db::connect`].
    _lock: Option<Arc<File>>,
}

/// Every column of a [`RunnerRow`], for `SELECT` and `RETURNING` alike.
macro_rules! runner_columns {
    () => {
        "session_id, kind, state, container_name, container_id, host_port, network_mode, \
         created_at, updated_at, last_heartbeat_at, pooled, node, node_host, token"
    };
}

/// `SELECT` of every runner column followed by the rest of a query, as one
/// static string (sqlx accepts only static SQL without an audit marker).
macro_rules! select_runners {
    ($($rest:literal),+) => {
        concat!(
            "SELECT ",
            runner_columns!(),
            " FROM runners ",
            $($rest),+
        )
    };
}

/// The reaper's query (idle, unfinished, or too old), shared with its
/// `EXPLAIN QUERY PLAN`.
macro_rules! reapable_sql {
    () => {
        select_runners!(
            "WHERE (state = 'running' AND pooled = 0 AND last_heartbeat_at < ?1) \
             OR state = 'removing' \
             OR (state = 'running' AND pooled = 0 AND created_at < ?2)"
        )
    };
}

impl Db {
    /// Opens (creating if missing) the database and applies migrations.
    /// Opens the database for the service: takes an exclusive lock on
    /// `<file>.lock` first (two services on one state would fight over its
    /// runners), then applies migrations.
    pub async fn connect(database_url: &str) -> Result<Self, DbError> {
        let options = connect_options(database_url)?;
        let lock = lock_database(options.get_filename())?;
        Ok(Self {
            _lock: lock,
            ..Self::open(database_url, options).await?
        })
    }

    /// Opens an existing database read-only, without the service lock and
    /// without migrating: for operators' commands beside a running service.
    pub async fn connect_read_only(database_url: &str) -> Result<Self, DbError> {
        let options = base_options(database_url)?.read_only(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|source| DbError::OpenReadOnly {
                url: database_url.to_owned(),
                source,
            })?;
        Ok(Self { pool, _lock: None })
    }

    /// Opens the database without the service lock, for tests and tools
    /// that read or repair it beside a running service.
    pub async fn connect_unlocked(database_url: &str) -> Result<Self, DbError> {
        Self::open(database_url, connect_options(database_url)?).await
    }

    async fn open(database_url: &str, options: SqliteConnectOptions) -> Result<Self, DbError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|source| DbError::Open {
                url: database_url.to_owned(),
                source,
            })?;
        let applied = migrate::run(&pool)
            .await
            .map_err(|source| DbError::Migrate {
                url: database_url.to_owned(),
                source,
            })?;
        for migration in applied {
            tracing::info!(%migration, "applied database migration");
        }
        Ok(Self { pool, _lock: None })
    }

    /// How many runners are in each state (waiting warm ones apart), for the
    /// metrics.
    pub async fn count_by_state(&self) -> Result<Vec<(String, i64)>, DbError> {
        sqlx::query_as(
            "SELECT CASE WHEN pooled = 1 THEN 'warm_' || state ELSE state END AS s, COUNT(*) \
             FROM runners GROUP BY s ORDER BY s",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(DbError::from)
    }

    /// Proves the database takes writes (the disk is not full or read-only)
    /// without changing anything.
    pub async fn check_writable(&self) -> Result<(), DbError> {
        let transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(transaction.rollback().await?)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn find(&self, session_id: &str) -> Result<Option<RunnerRow>, DbError> {
        sqlx::query_as(select_runners!("WHERE session_id = ?"))
            .bind(session_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(DbError::from)
    }

    pub async fn find_singleton(&self) -> Result<Option<RunnerRow>, DbError> {
        sqlx::query_as(select_runners!("WHERE kind = 'singleton'"))
            .fetch_optional(&self.pool)
            .await
            .map_err(DbError::from)
    }

    pub async fn all(&self) -> Result<Vec<RunnerRow>, DbError> {
        sqlx::query_as(select_runners!("ORDER BY created_at, session_id"))
            .fetch_all(&self.pool)
            .await
            .map_err(DbError::from)
    }

    /// Rows the reaper must act on: running ones whose last heartbeat is older
    /// than `cutoff` or that were created before `born_before`, and removals
    /// that did not finish.
    pub async fn reapable(
        &self,
        cutoff: DateTime<Utc>,
        born_before: Option<DateTime<Utc>>,
    ) -> Result<Vec<RunnerRow>, DbError> {
        sqlx::query_as(reapable_sql!())
            .bind(timestamp(cutoff))
            .bind(born_before.map(timestamp))
            .fetch_all(&self.pool)
            .await
            .map_err(DbError::from)
    }

    /// SQLite's plan for [`Db::reapable`].
    pub async fn explain_reapable(&self) -> Result<QueryPlan, DbError> {
        let steps: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(concat!("EXPLAIN QUERY PLAN ", reapable_sql!()))
                .bind(timestamp(Utc::now()))
                .bind(timestamp(Utc::now()))
                .fetch_all(&self.pool)
                .await?;
        Ok(QueryPlan(
            steps.into_iter().map(|(_, _, _, detail)| detail).collect(),
        ))
    }

    /// Inserts a `provisioning` row unless the session (or, for the
    /// singleton, any shared runner) already has one, or `limit` rows (when
    /// not 0) already exist. The insert is one statement, and SQLite runs
    /// one writer at a time, so concurrent claims can neither both win nor
    /// overshoot the limit.
    pub async fn claim(
        &self,
        runner: &NewRunner<'_>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<Claim, DbError> {
        let now = timestamp(now);
        let inserted = sqlx::query(
            "INSERT INTO runners (session_id, kind, state, container_name, network_mode, \
             created_at, updated_at, last_heartbeat_at, pooled, token) \
             SELECT ?1, ?2, 'provisioning', ?3, ?4, ?5, ?5, ?5, ?7, ?8 \
             WHERE ?6 = 0 OR (SELECT COUNT(*) FROM runners) < ?6 \
             ON CONFLICT DO NOTHING",
        )
        .bind(runner.session_id.as_str())
        .bind(runner.kind)
        .bind(runner.container_name)
        .bind(runner.network_mode.as_stored())
        .bind(&now)
        .bind(limit)
        .bind(runner.pooled)
        .bind(runner.token)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Claim::Claimed);
        }
        let existing = match runner.kind {
            RunnerKind::Singleton => self.find_singleton().await?,
            RunnerKind::Session => self.find(runner.session_id.as_str()).await?,
        };
        Ok(existing.map_or(Claim::LimitReached, |row| Claim::Existing(Box::new(row))))
    }

    /// Hands the oldest waiting warm runner to a client, in one statement
    /// (two concurrent claims can never get the same runner). Its heartbeat
    /// clock starts now.
    pub async fn claim_warm(&self, now: DateTime<Utc>) -> Result<Option<RunnerRow>, DbError> {
        let now = timestamp(now);
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let claimed: Option<RunnerRow> = sqlx::query_as(concat!(
            "UPDATE runners SET pooled = 0, updated_at = ?1, last_heartbeat_at = ?1 \
                 WHERE session_id = (SELECT session_id FROM runners \
                    WHERE pooled = 1 AND state = 'running' ORDER BY created_at LIMIT 1) \
                 RETURNING ",
            runner_columns!()
        ))
        .bind(&now)
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(row) = &claimed {
            let entry = AuditEntry {
                session_id: &row.session_id,
                container_id: row.container_id.as_deref(),
                actor: Actor::Api,
                action: AuditAction::ClaimedFromPool,
                reason: "provision without a session id",
            };
            insert_audit(&mut transaction, &now, &entry).await?;
        }
        transaction.commit().await?;
        Ok(claimed)
    }

    /// Warm runners in the pool or on their way there.
    pub async fn count_pooled(&self) -> Result<i64, DbError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM runners WHERE pooled = 1 AND state != 'removing'")
            .fetch_one(&self.pool)
            .await
            .map_err(DbError::from)
    }

    /// Records that a claimed runner's container started.
    pub async fn mark_running(
        &self,
        session_id: &str,
        started: &StartedRunner,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let now = timestamp(now);
        let container_id = started.id.as_str();
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "UPDATE runners SET state = 'running', container_id = ?2, host_port = ?3, \
             updated_at = ?4, last_heartbeat_at = ?4, node = ?5, node_host = ?6, address = ?7 \
             WHERE session_id = ?1",
        )
        .bind(session_id)
        .bind(container_id)
        .bind(started.host_port)
        .bind(&now)
        .bind(started.node.as_ref().map(|node| &node.name))
        .bind(started.node.as_ref().map(|node| &node.host))
        .bind(started.address.as_deref())
        .execute(&mut *transaction)
        .await?;
        insert_audit(
            &mut transaction,
            &now,
            &AuditEntry {
                session_id,
                container_id: Some(container_id),
                actor: Actor::Api,
                action: AuditAction::Provisioned,
                reason,
            },
        )
        .await?;
        Ok(transaction.commit().await?)
    }

    /// Every running runner, with what the gateway needs to route to it:
    /// what the running set that answers heartbeats holds (see `heartbeats`).
    pub async fn running_sessions(&self) -> Result<Vec<RunningRunner>, DbError> {
        sqlx::query_as(
            "SELECT session_id, kind, token, host_port, node_host, address FROM runners \
             WHERE state = 'running'",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(DbError::from)
    }

    /// Writes a batch of heartbeat times in one statement, never moving a
    /// time back. Returns the positions in `batch` of the sessions that no
    /// longer have a running row.
    /// The query plan of the heartbeat write, for the benchmark and tests:
    /// one primary-key search per heartbeat, never a scan per heartbeat.
    pub async fn explain_heartbeats_write(&self) -> Result<QueryPlan, DbError> {
        let steps: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {HEARTBEATS_WRITE}"
        )))
        .bind("[]")
        .fetch_all(&self.pool)
        .await?;
        Ok(QueryPlan(
            steps.into_iter().map(|(_, _, _, detail)| detail).collect(),
        ))
    }

    pub async fn record_heartbeats(
        &self,
        batch: &[(&str, DateTime<Utc>)],
    ) -> Result<Vec<usize>, DbError> {
        // One statement for the whole batch: 10,000 times hold the write
        // lock for milliseconds, where one UPDATE each took a quarter second.
        let times: Vec<(&str, String)> = batch
            .iter()
            .map(|(session_id, at)| (*session_id, timestamp(*at)))
            .collect();
        let times =
            serde_json::to_string(&times).map_err(|error| sqlx::Error::Encode(error.into()))?;
        let updated: Vec<String> = sqlx::query_scalar(HEARTBEATS_WRITE)
            .bind(times)
            .fetch_all(&self.pool)
            .await?;
        let updated: std::collections::HashSet<String> = updated.into_iter().collect();
        Ok(batch
            .iter()
            .enumerate()
            .filter(|(_, (session_id, _))| !updated.contains(*session_id))
            .map(|(position, _)| position)
            .collect())
    }

    /// Moves a runner to `removing` before its container is touched, so that
    /// heartbeats stop counting and a crash leaves a removal to finish.
    /// `stale_before`, when given, makes the move of a running runner
    /// conditional on it still being idle (the reaper must not remove a runner
    /// whose heartbeat arrived after it looked). Unfinished provisions and
    /// removals always move.
    pub async fn mark_removing(
        &self,
        session_id: &str,
        stale_before: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, DbError> {
        let updated = sqlx::query(
            "UPDATE runners SET state = 'removing', updated_at = ?3 \
             WHERE session_id = ?1 AND (state IN ('provisioning', 'removing') \
                OR (state = 'running' AND (?2 IS NULL OR last_heartbeat_at < ?2)))",
        )
        .bind(session_id)
        .bind(stale_before.map(timestamp))
        .bind(timestamp(now))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Deletes a runner's row and says why in the audit log, atomically.
    pub async fn delete(&self, entry: &AuditEntry<'_>, now: DateTime<Utc>) -> Result<(), DbError> {
        let now = timestamp(now);
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM runners WHERE session_id = ?")
            .bind(entry.session_id)
            .execute(&mut *transaction)
            .await?;
        insert_audit(&mut transaction, &now, entry).await?;
        Ok(transaction.commit().await?)
    }

    /// Writes a reconcile's row changes in one transaction: a restart with
    /// hundreds of runners costs one commit, not one each. Recorded runners
    /// get a last heartbeat of at least `now`, so clients whose heartbeats
    /// failed while the service was down get a full grace period. Returns
    /// the token of each recorded runner (a kept row keeps its own).
    pub async fn write_changes(
        &self,
        changes: &RowChanges<'_>,
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, String>, DbError> {
        if changes.is_empty() {
            return Ok(HashMap::new());
        }
        let now = timestamp(now);
        // A few statements over JSON arrays, not one per runner: statements
        // cost far more than rows here.
        let dropped = json_array(changes.dropped.iter().map(|entry| entry.session_id));
        let removing = json_array(changes.removing.iter().copied());
        let observed = json_array(changes.observed.iter().map(|(runner, _)| {
            serde_json::json!({
                "session_id": runner.session_id,
                "kind": runner.kind,
                "container_name": runner.container_name,
                "container_id": runner.container_id,
                "host_port": runner.host_port,
                "network_mode": runner.network_mode.as_stored(),
                "pooled": runner.pooled,
                "node": runner.node.map(|node| &node.name),
                "node_host": runner.node.map(|node| &node.host),
                "address": runner.address,
                "token": runner.token,
            })
        }));
        let audit = json_array(
            changes
                .dropped
                .iter()
                .chain(changes.observed.iter().map(|(_, entry)| entry))
                .map(audit_json),
        );
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM runners WHERE session_id IN (SELECT value FROM json_each(?1))")
            .bind(dropped)
            .execute(&mut *transaction)
            .await?;
        sqlx::query(
            "UPDATE runners SET state = 'removing', updated_at = ?1 \
             WHERE session_id IN (SELECT value FROM json_each(?2))",
        )
        .bind(&now)
        .bind(removing)
        .execute(&mut *transaction)
        .await?;
        let tokens: Vec<(String, String)> = sqlx::query_as(
            "INSERT INTO runners (session_id, kind, state, container_name, container_id, \
             host_port, network_mode, created_at, updated_at, last_heartbeat_at, pooled, \
             node, node_host, token, address) \
             SELECT value ->> 'session_id', value ->> 'kind', 'running', \
                value ->> 'container_name', value ->> 'container_id', value ->> 'host_port', \
                value ->> 'network_mode', ?1, ?1, ?1, value ->> 'pooled', \
                value ->> 'node', value ->> 'node_host', value ->> 'token', value ->> 'address' \
             FROM json_each(?2) WHERE true \
             ON CONFLICT (session_id) DO UPDATE SET state = 'running', \
             container_name = excluded.container_name, container_id = excluded.container_id, \
             host_port = excluded.host_port, node = excluded.node, \
             node_host = excluded.node_host, address = excluded.address, updated_at = excluded.updated_at, \
             last_heartbeat_at = MAX(runners.last_heartbeat_at, excluded.last_heartbeat_at) \
             RETURNING session_id, token",
        )
        .bind(&now)
        .bind(observed)
        .fetch_all(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO audit_log (at, session_id, container_id, actor, action, reason) \
             SELECT ?1, value ->> 'session_id', value ->> 'container_id', value ->> 'actor', \
                value ->> 'action', value ->> 'reason' \
             FROM json_each(?2) ORDER BY key",
        )
        .bind(&now)
        .bind(audit)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(tokens.into_iter().collect())
    }

    pub async fn audit(&self, entry: &AuditEntry<'_>, now: DateTime<Utc>) -> Result<(), DbError> {
        let mut connection = self.pool.acquire().await?;
        insert_audit(&mut connection, &timestamp(now), entry).await
    }

    pub async fn audit_trail(&self, session_id: &str) -> Result<Vec<AuditRecord>, DbError> {
        sqlx::query_as(
            "SELECT id, at, session_id, container_id, actor, action, reason \
             FROM audit_log WHERE session_id = ? ORDER BY id",
        )
        .bind(session_id)
        .fetch_all(&self.pool)
        .await
        .map_err(DbError::from)
    }
}

/// Writes a batch of heartbeat times (`[[session, time], ...]` in `?1`) and
/// returns the sessions with a running row. The batch is materialised first
/// and `+` keeps the planner off the state indexes: otherwise it may scan the
/// running rows and search the whole batch for each (10,000 times took 56 s).
const HEARTBEATS_WRITE: &str = "WITH beat(session_id, at) AS MATERIALIZED \
     (SELECT value ->> 0, value ->> 1 FROM json_each(?1)) \
     UPDATE runners SET last_heartbeat_at = MAX(runners.last_heartbeat_at, beat.at) \
     FROM beat WHERE runners.session_id = beat.session_id AND +runners.state = 'running' \
     RETURNING runners.session_id";

/// A JSON array of `items`, for statements over `json_each`.
fn json_array<T: serde::Serialize>(items: impl Iterator<Item = T>) -> String {
    serde_json::Value::Array(items.map(|item| serde_json::json!(item)).collect()).to_string()
}

fn audit_json(entry: &AuditEntry<'_>) -> serde_json::Value {
    serde_json::json!({
        "session_id": entry.session_id,
        "container_id": entry.container_id,
        "actor": entry.actor.as_str(),
        "action": entry.action.as_str(),
        "reason": entry.reason,
    })
}

async fn insert_audit(
    connection: &mut sqlx::SqliteConnection,
    at: &str,
    entry: &AuditEntry<'_>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO audit_log (at, session_id, container_id, actor, action, reason) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(at)
    .bind(entry.session_id)
    .bind(entry.container_id)
    .bind(entry.actor.as_str())
    .bind(entry.action.as_str())
    .bind(entry.reason)
    .execute(connection)
    .await?;
    Ok(())
}

/// Takes the service's exclusive lock beside the database file. The OS
/// releases it when the process dies, so a killed service never leaves a
/// stale lock behind.
fn lock_database(database: &Path) -> Result<Option<Arc<File>>, DbError> {
    if database.as_os_str().is_empty() || database == Path::new(":memory:") {
        return Ok(None);
    }
    let mut path = database.as_os_str().to_owned();
    path.push(".lock");
    let path = PathBuf::from(path);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| DbError::LockFile {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(Arc::new(file))),
        Err(TryLockError::WouldBlock) => Err(DbError::Locked {
            database: database.to_owned(),
            lock: path,
        }),
        Err(TryLockError::Error(source)) => Err(DbError::Lock { path, source }),
    }
}

/// The service's options.
///
/// WAL lets readers (heartbeats, operator queries) run beside the writer.
/// `synchronous = NORMAL` in WAL mode survives a killed process; an OS crash
/// may lose the last commits, which the startup reconciler repairs (a lost
/// row's container is adopted, a lost deletion's row is dropped).
fn connect_options(database_url: &str) -> Result<SqliteConnectOptions, DbError> {
    Ok(base_options(database_url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true))
}

/// Accepts a `sqlite:` URL or a plain file path.
fn base_options(database_url: &str) -> Result<SqliteConnectOptions, DbError> {
    let options = if database_url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(database_url).map_err(|source| DbError::InvalidUrl {
            url: database_url.to_owned(),
            source,
        })?
    } else {
        SqliteConnectOptions::new().filename(Path::new(database_url))
    };
    Ok(options.busy_timeout(Duration::from_secs(5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_reapers_query_only_searches_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect_unlocked(&dir.path().join("plan.db").display().to_string())
            .await
            .unwrap();

        let plan = db.explain_reapable().await.unwrap();

        assert!(plan.searches_only_indexes(), "{plan:?}");
    }

    #[tokio::test]
    async fn the_heartbeat_write_finds_each_row_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect_unlocked(&dir.path().join("plan.db").display().to_string())
            .await
            .unwrap();

        let plan = db.explain_heartbeats_write().await.unwrap();

        let on_runners: Vec<&String> = plan
            .0
            .iter()
            .filter(|step| step.contains(" runners"))
            .collect();
        assert_eq!(on_runners.len(), 1, "{plan:?}");
        assert!(
            on_runners[0].starts_with("SEARCH runners USING")
                && on_runners[0].contains("(session_id=?)"),
            "{plan:?}"
        );
    }

    #[test]
    fn a_scan_or_no_access_is_not_an_indexed_plan() {
        let plan = |steps: &[&str]| QueryPlan(steps.iter().map(|s| s.to_string()).collect());
        assert!(plan(&["SEARCH runners USING INDEX by_state (state=?)"]).searches_only_indexes());
        assert!(
            !plan(&[
                "MULTI-INDEX OR",
                "SEARCH runners USING INDEX by_state (state=?)",
                "SCAN runners",
            ])
            .searches_only_indexes()
        );
        assert!(!plan(&["MULTI-INDEX OR"]).searches_only_indexes());
    }
}
