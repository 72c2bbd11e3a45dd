//! Session ids, and the kind of runner a session gets. Ids are checked once
//! at the edge so that nothing unvalidated reaches Docker labels, container
//! names or the database.

use std::fmt;

use sha2::{Digest, Sha256};

/// The longest session id accepted; a UUID is 36 characters.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// Whom a runner serves.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, sqlx::Type, serde::Serialize,
)]
#[sqlx(type_name = "TEXT", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    /// One runner per browser session.
    Session,
    /// The one shared runner of `REUSE_RUNNER_MODE`.
    Singleton,
}

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

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// The definition, written independently of `parse`.
        fn is_valid(raw: &str) -> bool {
            (1..=MAX_SESSION_ID_LEN).contains(&raw.len())
                && raw.bytes().all(|b| (b'!'..=b'~').contains(&b))
        }

        /// Docker's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
        fn is_docker_name(name: &str) -> bool {
            let mut chars = name.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
                && name.len() >= 2
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        }

        /// Strings near and across the boundaries: valid ids, ids one
        /// character too long, visible ASCII with controls, spaces and DEL
        /// mixed in, and any Unicode.
        fn raw_ids() -> impl Strategy<Value = String> {
            prop_oneof![
                "[!-~]{1,128}",
                "[!-~]{127,130}",
                r"[\x00-\x7f]{0,130}",
                r"[!-~ \t\r\n\x00\x7f\x{80}-\x{10FFFF}]{0,130}",
                any::<String>(),
            ]
        }

        fn valid_ids() -> impl Strategy<Value = SessionId> {
            "[!-~]{1,128}".prop_map(|raw| SessionId::parse(&raw).unwrap())
        }

        /// What `ORCHESTRATOR_ID` accepts.
        fn instances() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_.-]{1,64}"
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn parse_accepts_exactly_1_to_128_visible_ascii(raw in raw_ids()) {
                match SessionId::parse(&raw) {
                    Ok(id) => {
                        prop_assert!(is_valid(&raw), "accepted {raw:?}");
                        prop_assert_eq!(id.as_str(), raw.as_str());
                    }
                    Err(error) => {
                        prop_assert!(!is_valid(&raw), "refused {raw:?}");
                        let expected = if raw.len() > MAX_SESSION_ID_LEN {
                            InvalidSessionId::TooLong
                        } else {
                            InvalidSessionId::NotVisibleAscii
                        };
                        prop_assert_eq!(error, expected);
                    }
                }
            }

            #[test]
            fn container_names_are_docker_names(id in valid_ids(), instance in instances()) {
                let name = id.container_name(&instance);
                prop_assert!(is_docker_name(&name), "{name:?} from {id:?}");
                prop_assert!(name.starts_with("taylored-runner-"));
                prop_assert!(name.len() <= 64, "{name:?}");
            }

            #[test]
            fn container_names_are_deterministic(id in valid_ids(), instance in instances()) {
                let again = SessionId::parse(id.as_str()).unwrap();
                prop_assert_eq!(id.container_name(&instance), again.container_name(&instance));
            }

            #[test]
            fn container_names_differ_across_instances_and_sessions(
                id in valid_ids(),
                other_id in valid_ids(),
                instance in instances(),
                other_instance in instances(),
            ) {
                let name = id.container_name(&instance);
                if instance != other_instance {
                    prop_assert_ne!(&name, &id.container_name(&other_instance));
                }
                if id != other_id {
                    prop_assert_ne!(&name, &other_id.container_name(&instance));
                }
            }
        }
    }
}
