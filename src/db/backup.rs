//! Online backups: a consistent copy of the database while the service
//! writes to it.
//!
//! `VACUUM INTO` reads the whole database in one read transaction, so the
//! copy holds every commit made before it began and none made after, and
//! (in WAL mode) writers carry on meanwhile. Copying the file by hand
//! instead can miss the commits still in `-wal`, or catch a checkpoint
//! halfway.

use std::path::{Path, PathBuf};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::{Db, DbError};

/// What one backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub path: PathBuf,
    pub bytes: u64,
}

impl Db {
    /// Writes a consistent copy of the database to `path`, which must not
    /// exist, and checks it (`PRAGMA integrity_check`). The copy is written
    /// beside `path` under a temporary name and renamed when complete, so
    /// that a crash never leaves a partial copy under `path`.
    pub async fn backup_to(&self, path: &Path) -> Result<Backup, DbError> {
        let failed = |source: std::io::Error| DbError::BackupIo {
            path: path.to_owned(),
            source,
        };
        if path.exists() {
            return Err(DbError::BackupExists(path.to_owned()));
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        // Left by a backup that crashed: never anything but a copy.
        if partial.exists() {
            std::fs::remove_file(&partial).map_err(failed)?;
        }
        let written = sqlx::query("VACUUM INTO ?")
            .bind(partial.to_string_lossy().into_owned())
            .execute(&self.pool)
            .await;
        if let Err(source) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(DbError::Backup {
                path: path.to_owned(),
                source,
            });
        }
        if let Err(error) = integrity_check(&partial).await {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
        std::fs::File::open(&partial)
            .and_then(|file| file.sync_all())
            .map_err(failed)?;
        std::fs::rename(&partial, path).map_err(failed)?;
        let bytes = std::fs::metadata(path).map_err(failed)?.len();
        Ok(Backup {
            path: path.to_owned(),
            bytes,
        })
    }
}

/// Opens the database file at `path` read-only and runs SQLite's
/// `PRAGMA integrity_check` on it: `Ok` when it says `ok`.
pub async fn integrity_check(path: &Path) -> Result<(), DbError> {
    let open_failed = |source| DbError::Open {
        url: path.display().to_string(),
        source,
    };
    let mut connection = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .map_err(open_failed)?;
    let problems: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut connection)
        .await
        .map_err(open_failed)?;
    let _ = connection.close().await;
    if problems == ["ok"] {
        Ok(())
    } else {
        Err(DbError::Damaged {
            path: path.to_owned(),
            problems: problems.join("; "),
        })
    }
}
