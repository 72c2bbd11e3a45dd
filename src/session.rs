//! Session ids: checked once at the edge so that nothing unvalidated reaches
//! Docker labels, container names or the database.

use std::fmt;

use sha2::{Digest, Sha256};

/// The longest session id accepted; a UUID is 36 characters.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// A session id of 1 to 128 visible ASCII characters (`!` to `~`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSessionId {
    #[error("Session ID must be at most {MAX_SESSION_ID_LEN} characters long.")]
    TooLong,
    #[error("Session ID may only contain visible ASCII characters.")]
    NotVisibleAscii,
}

impl SessionId {
    /// Validates a client-supplied id. The empty string is not an id: callers
    /// treat it as absent, as the first orchestrator's `||` did.
    pub fn parse(raw: &str) -> Result<Self, InvalidSessionId> {
        if raw.len() > MAX_SESSION_ID_LEN {
            return Err(InvalidSessionId::TooLong);
        }
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidSessionId::NotVisibleAscii);
        }
        Ok(Self(raw.to_owned()))
    }

    /// A fresh id for a client that did not bring one.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The container name for this session's runner in `instance`.
    ///
    /// Deterministic, so that the engine itself refuses a second container for
    /// the same session; hashed, because session ids may hold characters that
    /// container names may not. A sanitised prefix keeps `docker ps` readable.
    pub fn container_name(&self, instance: &str) -> String {
        let digest = Sha256::new()
            .chain_update(instance.as_bytes())
            .chain_update([0u8])
            .chain_update(self.0.as_bytes())
            .finalize();
        let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let readable: String = self
            .0
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        if readable.is_empty() {
            format!("taylored-runner-{hash}")
        } else {
            format!("taylored-runner-{readable}-{hash}")
        }
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_uuids_and_visible_ascii() {
        let uuid = SessionId::generate();
        assert_eq!(SessionId::parse(uuid.as_str()).unwrap(), uuid);
        assert!(SessionId::parse("a").is_ok());
        assert!(SessionId::parse("user@example.com/tab#1?x=~").is_ok());
        assert!(SessionId::parse(&"x".repeat(MAX_SESSION_ID_LEN)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_invisible_ids() {
        assert_eq!(SessionId::parse(""), Err(InvalidSessionId::NotVisibleAscii));
        assert_eq!(
            SessionId::parse(&"x".repeat(MAX_SESSION_ID_LEN + 1)),
            Err(InvalidSessionId::TooLong)
        );
        for bad in [
            "with space",
            "tab\t",
            "nul\0",
            "newline\n",
            "é",
            "emoji🙂",
            "\u{7f}",
        ] {
            assert_eq!(
                SessionId::parse(bad),
                Err(InvalidSessionId::NotVisibleAscii),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn container_names_are_valid_deterministic_and_scoped() {
        let session = SessionId::parse("../etc/passwd;rm-rf").unwrap();
        let name = session.container_name("default");
        assert_eq!(name, session.container_name("default"));
        assert_ne!(name, session.container_name("other"));
        assert!(name.starts_with("taylored-runner-etcpasswdrm"));
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        );
        let symbols = SessionId::parse("!!!").unwrap().container_name("default");
        assert!(symbols.starts_with("taylored-runner-") && symbols.len() == 16 + 32);
    }
}
