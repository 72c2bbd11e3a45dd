//! What the database layer fails with.

use std::path::PathBuf;

use super::MigrationError;

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
    #[error("`{}` already exists; a backup never overwrites a file", .0.display())]
    BackupExists(PathBuf),
    #[error("cannot back the database up to `{}`", path.display())]
    Backup {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot write the backup `{}`", path.display())]
    BackupIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` failed SQLite's integrity check: {problems}", path.display())]
    Damaged { path: PathBuf, problems: String },
    #[error("the database `{}` is damaged ({why}) and cannot be moved aside", path.display())]
    MoveAside {
        path: PathBuf,
        why: String,
        #[source]
        source: std::io::Error,
    },
}
