//! The runner records and their audit trail, in SQLite.
//!
//! Every write is either a single statement or a transaction opened with
//! `BEGIN IMMEDIATE` (a deferred transaction that reads and then writes fails
//! at once with "database is locked" instead of waiting). No transaction is
//! ever held across a Docker call: callers claim a row, commit, call Docker,
//! and record the outcome in a second write.

mod audit;
mod backup;
mod damage;
mod error;
mod heartbeats;
mod migrate;
mod reconcile;
mod rows;
mod runners;
#[cfg(test)]
mod tests;

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use audit::{Actor, AuditAction, AuditEntry, AuditRecord};
pub use backup::{Backup, integrity_check};
pub use damage::MovedAside;
pub use error::DbError;
pub use migrate::MigrationError;
pub use rows::{
    Claim, FoundRunner, NewRunner, RowChanges, RunnerRow, RunnerState, RunningRunner, TrackedRunner,
};

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
    /// The damaged file this start moved aside, if it did.
    moved_aside: Option<Arc<MovedAside>>,
    /// Whether this start created the file (there was none).
    created: bool,
    /// The database file (`None`: in memory).
    path: Option<Arc<Path>>,
}

impl Db {
    /// Opens the database for the service, creating it if missing: takes
    /// an exclusive lock on `<file>.lock` first (two services on one state
    /// would fight over its runners), checks it (`PRAGMA quick_check`) and
    /// applies migrations. A damaged file is moved aside and a new one
    /// created (see `damage`); [`Db::moved_aside`] says so.
    pub async fn connect(database_url: &str) -> Result<Self, DbError> {
        let options = connect_options(database_url)?;
        let path = options.get_filename().to_owned();
        let lock = lock_database(&path)?;
        let in_memory = path.as_os_str().is_empty() || path == Path::new(":memory:");
        let created = !in_memory && !path.exists();
        let (db, moved_aside) = match Self::open(database_url, options.clone()).await {
            Ok(db) => (db, None),
            Err(error) => {
                let why = damage::diagnose(&error).filter(|_| path.is_file());
                let Some(why) = why else {
                    return Err(error);
                };
                let to = damage::move_aside(&path, chrono::Utc::now()).map_err(|source| {
                    DbError::MoveAside {
                        path: path.clone(),
                        why: why.clone(),
                        source,
                    }
                })?;
                tracing::error!(
                    database = %path.display(),
                    moved_to = %to.display(),
                    "the database is damaged ({why}): moved aside; a new one is rebuilt from \
                     the engine"
                );
                let moved = MovedAside {
                    from: path.clone(),
                    to,
                    why,
                };
                (
                    Self::open(database_url, options).await?,
                    Some(Arc::new(moved)),
                )
            }
        };
        Ok(Self {
            _lock: lock,
            moved_aside,
            created,
            path: (!in_memory).then(|| Arc::from(path.as_path())),
            ..db
        })
    }

    /// The damaged database this start moved aside, if it did.
    pub fn moved_aside(&self) -> Option<&MovedAside> {
        self.moved_aside.as_deref()
    }

    /// Whether this start found no database file and created one.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The database file, if it is one (not in memory).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Opens an existing database read-only, without the service lock and
    /// without migrating: for operators' commands beside a running service.
    pub async fn connect_read_only(database_url: &str) -> Result<Self, DbError> {
        let options = base_options(database_url)?.read_only(true);
        let pool = pool(options, 1)
            .await
            .map_err(|source| DbError::OpenReadOnly {
                url: database_url.to_owned(),
                source,
            })?;
        Ok(Self {
            pool,
            _lock: None,
            moved_aside: None,
            created: false,
            path: None,
        })
    }

    /// Opens the database without the service lock, for tests and tools
    /// that read or repair it beside a running service.
    pub async fn connect_unlocked(database_url: &str) -> Result<Self, DbError> {
        Self::open(database_url, connect_options(database_url)?).await
    }

    async fn open(database_url: &str, options: SqliteConnectOptions) -> Result<Self, DbError> {
        let pool = pool(options, 8).await.map_err(|source| DbError::Open {
            url: database_url.to_owned(),
            source,
        })?;
        let problems: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_all(&pool)
            .await
            .map_err(|source| DbError::Open {
                url: database_url.to_owned(),
                source,
            })?;
        if problems != ["ok"] {
            pool.close().await;
            return Err(DbError::Damaged {
                path: database_url.into(),
                problems: problems.join("; "),
            });
        }
        let applied = migrate::run(&pool)
            .await
            .map_err(|source| DbError::Migrate {
                url: database_url.to_owned(),
                source,
            })?;
        for migration in applied {
            tracing::info!(%migration, "applied database migration");
        }
        Ok(Self {
            pool,
            _lock: None,
            moved_aside: None,
            created: false,
            path: None,
        })
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

    /// SQLite's plan for `sql` with `parameters` bound.
    async fn explain(&self, sql: &str, parameters: &[String]) -> Result<QueryPlan, DbError> {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(explain));
        for parameter in parameters {
            query = query.bind(parameter);
        }
        let steps: Vec<(i64, i64, i64, String)> = query.fetch_all(&self.pool).await?;
        Ok(QueryPlan(
            steps.into_iter().map(|(_, _, _, detail)| detail).collect(),
        ))
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

async fn pool(options: SqliteConnectOptions, connections: u32) -> Result<SqlitePool, sqlx::Error> {
    SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await
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
