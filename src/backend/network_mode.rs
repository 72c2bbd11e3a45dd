//! Which network a runner joins, parsed once at the API boundary so that
//! nothing downstream handles a raw mode string.

use std::fmt;
use std::str::FromStr;

/// The text that asks for no network at all.
const ISOLATED: &str = "none";

/// The network a browser asked its runner to join.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum NetworkMode {
    /// The engine's default bridge, or `RUNNER_NETWORK` when it is set.
    #[default]
    Default,
    /// No network and no published port (`"none"`).
    Isolated,
    /// A named network to join.
    Named(String),
}

impl NetworkMode {
    /// The text stored in the database and sent to the engine: `NULL` (no
    /// choice), `"none"` or the network's name, as before this type existed.
    pub fn as_stored(&self) -> Option<&str> {
        match self {
            NetworkMode::Default => None,
            NetworkMode::Isolated => Some(ISOLATED),
            NetworkMode::Named(name) => Some(name),
        }
    }

    pub fn is_isolated(&self) -> bool {
        *self == NetworkMode::Isolated
    }
}

/// Network modes a browser may ask for. `host` and `container:<id>` would
/// hand untrusted code the host's or another container's network, so only
/// `none` and plain network names are accepted.
impl FromStr for NetworkMode {
    type Err = &'static str;

    fn from_str(mode: &str) -> Result<Self, Self::Err> {
        if mode == ISOLATED {
            return Ok(NetworkMode::Isolated);
        }
        if mode == "host" || mode.contains(':') {
            return Err("This network mode is not allowed for runners.");
        }
        let mut chars = mode.chars();
        let valid = mode.len() <= 128
            && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if valid {
            Ok(NetworkMode::Named(mode.to_owned()))
        } else {
            Err("networkMode must be \"none\" or a Docker network name.")
        }
    }
}

/// Reads back what [`NetworkMode::as_stored`] wrote (also what the engine
/// reports); trusted text, so it is not validated again.
impl From<Option<String>> for NetworkMode {
    fn from(stored: Option<String>) -> Self {
        match stored {
            None => NetworkMode::Default,
            Some(mode) if mode == ISOLATED => NetworkMode::Isolated,
            Some(name) => NetworkMode::Named(name),
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_stored().unwrap_or("default"))
    }
}

/// Serialised as stored (`null`, `"none"` or the name), for `runners list --json`.
impl serde::Serialize for NetworkMode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_stored().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_modes() {
        assert_eq!("none".parse(), Ok(NetworkMode::Isolated));
        assert_eq!("bridge".parse(), Ok(NetworkMode::Named("bridge".into())));
        assert_eq!(
            "taylored_runners-1.net".parse(),
            Ok(NetworkMode::Named("taylored_runners-1.net".into()))
        );
    }

    #[test]
    fn refused_modes() {
        for bad in [
            "host",
            "container:abc",
            "",
            "-x",
            "a b",
            "../x",
            &"n".repeat(129),
        ] {
            assert!(bad.parse::<NetworkMode>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stored_text_round_trips() {
        for mode in [
            NetworkMode::Default,
            NetworkMode::Isolated,
            NetworkMode::Named("runners".into()),
        ] {
            let stored = mode.as_stored().map(str::to_owned);
            assert_eq!(NetworkMode::from(stored), mode);
        }
    }
}
