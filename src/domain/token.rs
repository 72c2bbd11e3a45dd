//! A runner's token: the secret first label of its host name behind the
//! gateway. Whoever knows it reaches the runner, so it is never derived from
//! the session id (which the client chooses and sends in the clear to the
//! API), and never written where anyone who can list containers reads it.
//!
//! What the runner's labels carry instead (see [`TokenLabels`]):
//!
//! - a **nonce**, 128 random bits drawn for this runner, and
//! - the token's **SHA-256 digest**, by which the gateway routes: it hashes
//!   the host's first label and looks the digest up.
//!
//! The token is `HMAC-SHA256(key, nonce)` cut to 128 bits, with the
//! service's [`TokenKey`] (`GATEWAY_TOKEN_KEY_FILE`). A start that lost its
//! database reads the nonce back from the engine and derives the same token
//! again, so provision answers the endpoint the browser already holds; the
//! digest tells whether the key is still the one that made it. Without the
//! key the labels give the token away to nobody: the nonce is public, the
//! digest is one-way.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Random bytes in a token (128 bits), and in a nonce.
const TOKEN_BYTES: usize = 16;
/// Bytes of a token key.
pub const KEY_BYTES: usize = 32;
/// Tells these HMACs from any other use of the key.
const DOMAIN: &[u8] = b"taylored-runner-token/v1\0";

/// The secret tokens are derived from (`GATEWAY_TOKEN_KEY_FILE`).
#[derive(Clone)]
pub struct TokenKey([u8; KEY_BYTES]);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// The wrong shape for a key file's contents.
#[derive(Debug, thiserror::Error)]
#[error("a token key is 64 hex digits (got {0} characters)")]
pub struct InvalidKey(usize);

impl TokenKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system's random source");
        Self(bytes)
    }

    /// A key as its file holds it: 64 hex digits, surrounding blanks ignored.
    pub fn parse(text: &str) -> Result<Self, InvalidKey> {
        let text = text.trim();
        let bytes = decode_hex(text).ok_or(InvalidKey(text.len()))?;
        let key: [u8; KEY_BYTES] = bytes.try_into().map_err(|_| InvalidKey(text.len()))?;
        Ok(Self(key))
    }

    /// The key as a file holds it (64 hex digits and a newline).
    pub fn to_file_text(&self) -> String {
        format!("{}\n", encode_hex(&self.0))
    }

    /// A new runner's token and the labels that let this key derive it again.
    pub fn issue(&self) -> (String, TokenLabels) {
        let mut nonce = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut nonce).expect("the operating system's random source");
        let nonce = encode_hex(&nonce);
        let token = self.derive(&nonce);
        let labels = TokenLabels {
            sha256: digest(&token),
            nonce,
        };
        (token, labels)
    }

    /// The token of a runner with these labels, if this key made it.
    pub fn recover(&self, labels: &TokenLabels) -> Option<String> {
        let token = self.derive(&labels.nonce);
        (digest(&token) == labels.sha256).then_some(token)
    }

    fn derive(&self, nonce: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(DOMAIN);
        mac.update(nonce.as_bytes());
        encode_hex(&mac.finalize().into_bytes()[..TOKEN_BYTES])
    }
}

/// What a runner's labels say about its token: enough to route to it
/// (`sha256`) and, with the key, to derive it again (`nonce`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLabels {
    pub nonce: String,
    pub sha256: String,
}

/// The gateway's key for a token: its SHA-256 digest, in hex.
pub fn digest(token: &str) -> String {
    encode_hex(&Sha256::digest(token.as_bytes()))
}

/// The gateway's keys of a runner: its token's digest, and the digest its
/// labels carry when that is another (a rebuild that could not derive the
/// token gives the runner a new one, and the old host keeps working).
pub fn route_keys(token: &str, labelled: Option<&str>) -> Vec<String> {
    let own = digest(token);
    match labelled {
        Some(other) if other != own => vec![own, other.to_owned()],
        _ => vec![own],
    }
}

/// A fresh token not derived from any key: 32 lowercase hex digits, a
/// valid DNS label whatever case a browser or proxy gives the host name.
/// For runners whose labels carry no nonce this key can use (the first
/// orchestrator's, or made under another key).
pub fn generate() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    encode_hex(&bytes)
}

/// Whether `label` has a token's shape; anything else cannot name a runner.
pub fn is_token(label: &str) -> bool {
    label.len() == TOKEN_BYTES * 2 && is_lower_hex(label)
}

/// Whether `value` has a digest's shape (64 lowercase hex digits).
pub fn is_digest(value: &str) -> bool {
    value.len() == 64 && is_lower_hex(value)
}

/// Whether `value` has a nonce's shape (32 lowercase hex digits).
pub fn is_nonce(value: &str) -> bool {
    is_token(value)
}

fn is_lower_hex(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn tokens_are_128_bit_hex_labels_and_never_repeat() {
        let key = TokenKey::generate();
        let tokens: HashSet<String> = (0..1000)
            .map(|i| {
                if i % 2 == 0 {
                    generate()
                } else {
                    key.issue().0
                }
            })
            .collect();
        assert_eq!(tokens.len(), 1000);
        for token in &tokens {
            assert!(is_token(token), "{token}");
        }
        // Every digit shows up: the bytes are not constant or biased to a few.
        let digits: HashSet<char> = tokens.iter().flat_map(|t| t.chars()).collect();
        assert_eq!(digits.len(), 16);
    }

    #[test]
    fn only_the_token_shape_is_a_token() {
        assert!(is_token(&"a".repeat(32)));
        for label in ["", "abc", &"A".repeat(32), &"g".repeat(32), &"a".repeat(33)] {
            assert!(!is_token(label), "{label}");
        }
    }

    #[test]
    fn the_key_that_issued_a_token_recovers_it_from_the_labels_alone() {
        let key = TokenKey::generate();
        let (token, labels) = key.issue();
        assert!(
            is_nonce(&labels.nonce) && is_digest(&labels.sha256),
            "{labels:?}"
        );
        assert_eq!(labels.sha256, digest(&token));
        // The labels do not hold the token.
        assert!(!labels.nonce.contains(&token) && !labels.sha256.contains(&token));
        assert_eq!(key.recover(&labels).as_deref(), Some(token.as_str()));
        // The same key, read back from its file.
        let reread = TokenKey::parse(&key.to_file_text()).unwrap();
        assert_eq!(reread.recover(&labels).as_deref(), Some(token.as_str()));
    }

    #[test]
    fn another_key_or_altered_labels_recover_nothing() {
        let key = TokenKey::generate();
        let (_, labels) = key.issue();
        assert_eq!(TokenKey::generate().recover(&labels), None);
        let mut altered = labels.clone();
        let other = if altered.nonce.starts_with('0') {
            "1"
        } else {
            "0"
        };
        altered.nonce.replace_range(0..1, other);
        assert_ne!(altered.nonce, labels.nonce);
        assert_eq!(key.recover(&altered), None);
    }

    #[test]
    fn a_key_file_is_64_hex_digits() {
        let text = format!("  {}\n", "ab".repeat(32));
        assert!(TokenKey::parse(&text).is_ok());
        for bad in [
            "",
            "ab",
            &"ab".repeat(31),
            &"zz".repeat(32),
            &"é".repeat(32),
        ] {
            let error = TokenKey::parse(bad).unwrap_err().to_string();
            assert!(error.contains("64 hex digits"), "{error}");
        }
    }

    #[test]
    fn digests_are_sha256_in_hex() {
        // SHA-256("abc"), from FIPS 180-2.
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
