//! A damaged database is moved aside, never overwritten and never a reason
//! to stay down: a file that is not SQLite, one that fails SQLite's
//! integrity check, or one written by a newer orchestrator (a migration
//! this binary does not know) is renamed with a timestamp, and the service
//! starts on a new file that the startup reconcile rebuilds from the
//! engine. A database that is only locked, or cannot be opened (a missing
//! directory, permissions, a directory in its place), is an error as
//! before: nothing is moved.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{DbError, MigrationError};

/// What was moved aside at this start, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAside {
    pub from: PathBuf,
    pub to: PathBuf,
    pub why: String,
}

/// SQLite's own words for a file that is not a database, or a damaged one
/// (`sqlite3_errstr` of `SQLITE_NOTADB` and `SQLITE_CORRUPT`).
const DAMAGE_MESSAGES: [&str; 2] = ["file is not a database", "database disk image is malformed"];

/// Why `error` says the database itself is damaged, or `None` when it is
/// another failure (locked, unreachable, not permitted, a divergent schema).
pub fn diagnose(error: &DbError) -> Option<String> {
    match error {
        DbError::Damaged { problems, .. } => Some(format!("integrity check: {problems}")),
        DbError::Migrate {
            source: MigrationError::NewerSchema(migration),
            ..
        } => Some(format!(
            "written by a newer orchestrator (migration {migration})"
        )),
        DbError::Locked { .. } | DbError::LockFile { .. } | DbError::Lock { .. } => None,
        other => {
            let chain = error_chain(other);
            DAMAGE_MESSAGES
                .iter()
                .find(|message| chain.contains(*message))
                .map(|message| (*message).to_owned())
        }
    }
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Renames `database` (and its `-wal` and `-shm`, when there) to
/// `<name>.damaged-<UTC time>`; returns the database's new path.
pub fn move_aside(database: &Path, now: DateTime<Utc>) -> std::io::Result<PathBuf> {
    let suffix = format!(".damaged-{}", now.format("%Y%m%dT%H%M%S%.3fZ"));
    let with = |path: &Path, extra: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(extra);
        PathBuf::from(name)
    };
    let moved = with(database, &suffix);
    std::fs::rename(database, &moved)?;
    for companion in ["-wal", "-shm"] {
        let path = with(database, companion);
        if path.exists() {
            std::fs::rename(&path, with(&path, &suffix))?;
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_damage_is_diagnosed_as_damage() {
        let open = |message: &str| DbError::Open {
            url: "x".to_owned(),
            source: sqlx::Error::Protocol(message.to_owned()),
        };
        assert_eq!(
            diagnose(&open("file is not a database")).as_deref(),
            Some("file is not a database")
        );
        assert!(diagnose(&open("unable to open database file")).is_none());
        assert!(diagnose(&open("attempt to write a readonly database")).is_none());
        let newer = DbError::Migrate {
            url: "x".to_owned(),
            source: MigrationError::NewerSchema("V99__future".to_owned()),
        };
        assert!(diagnose(&newer).unwrap().contains("newer orchestrator"));
        let divergent = DbError::Migrate {
            url: "x".to_owned(),
            source: MigrationError::Divergent {
                applied: "V1".to_owned(),
                embedded: "V1".to_owned(),
            },
        };
        assert!(diagnose(&divergent).is_none());
        let locked = DbError::Locked {
            database: "a".into(),
            lock: "a.lock".into(),
        };
        assert!(diagnose(&locked).is_none());
    }

    #[test]
    fn the_file_and_its_wal_are_moved_together() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("orchestrator.db");
        std::fs::write(&database, b"garbage").unwrap();
        std::fs::write(dir.path().join("orchestrator.db-wal"), b"wal").unwrap();
        let now = DateTime::parse_from_rfc3339("2026-12-07T02:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let moved = move_aside(&database, now).unwrap();
        assert_eq!(
            moved.file_name().unwrap(),
            "orchestrator.db.damaged-20261207T023000.000Z"
        );
        assert_eq!(std::fs::read(&moved).unwrap(), b"garbage");
        assert!(!database.exists());
        assert!(
            dir.path()
                .join("orchestrator.db-wal.damaged-20261207T023000.000Z")
                .exists()
        );
    }
}
