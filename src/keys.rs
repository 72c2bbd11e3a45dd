//! The token key's file: the one secret that, beside what the engine's
//! labels hold, brings every gateway endpoint back after the database is
//! lost (see [`crate::domain::token`]).
//!
//! `GATEWAY_TOKEN_KEY_FILE` names it; unset, it is `<database>.token-key`
//! beside the database file (which survives a deleted, damaged or replaced
//! database, not a lost volume: put it elsewhere, or on a Docker secret, for
//! that). A missing file is created with a fresh key, readable by its owner
//! only; an existing one is used as it is, and one that is not a key is an
//! error (a new key would silently change every future runner's token
//! derivation, and leave the old ones unrecoverable).

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::domain::token::TokenKey;

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the token key file {path} (GATEWAY_TOKEN_KEY_FILE): {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the token key file {path} (GATEWAY_TOKEN_KEY_FILE): {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token key file {path} (GATEWAY_TOKEN_KEY_FILE) holds no key: {source}")]
    Invalid {
        path: PathBuf,
        source: crate::domain::token::InvalidKey,
    },
}

/// The file of the key: `explicit`, else beside `database`; `None` for a
/// database in memory with no file named (a key for this process only).
pub fn key_path(explicit: Option<&Path>, database: Option<&Path>) -> Option<PathBuf> {
    explicit.map(Path::to_path_buf).or_else(|| {
        database.map(|db| {
            let mut name = db.as_os_str().to_owned();
            name.push(".token-key");
            PathBuf::from(name)
        })
    })
}

/// The key at `path`, created there if missing.
pub fn load_or_create(path: &Path) -> Result<TokenKey, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => TokenKey::parse(&text).map_err(|source| KeyError::Invalid {
            path: path.to_owned(),
            source,
        }),
        Err(error) if error.kind() == ErrorKind::NotFound => create(path),
        Err(source) => Err(KeyError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn create(path: &Path) -> Result<TokenKey, KeyError> {
    let failed = |source| KeyError::Create {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let key = TokenKey::generate();
    // Written beside and renamed into place: a crash never leaves half a
    // key, and a second process racing this one keeps the first key made.
    let partial = path.with_extension("token-key.partial");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(failed)?;
    file.write_all(key.to_file_text().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(failed)?;
    match std::fs::hard_link(&partial, path) {
        Ok(()) => {
            let _ = std::fs::remove_file(&partial);
            tracing::info!(path = %path.display(), "created a new token key");
            Ok(key)
        }
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&partial);
            load_or_create(path)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            Err(failed(error))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_key_lives_beside_the_database_unless_named() {
        let db = Path::new("/data/orchestrator.db");
        assert_eq!(
            key_path(None, Some(db)),
            Some(PathBuf::from("/data/orchestrator.db.token-key"))
        );
        let named = Path::new("/run/secrets/token-key");
        assert_eq!(key_path(Some(named), Some(db)), Some(named.to_owned()));
        assert_eq!(key_path(None, None), None);
    }

    #[test]
    fn a_missing_key_is_created_private_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/token-key");
        let key = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (token, labels) = key.issue();
        let again = load_or_create(&path).unwrap();
        assert_eq!(again.recover(&labels), Some(token));
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["token-key"]);
    }

    #[test]
    fn a_file_that_holds_no_key_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token-key");
        std::fs::write(&path, "not a key").unwrap();
        let error = load_or_create(&path).unwrap_err().to_string();
        assert!(error.contains("holds no key"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
    }
}
