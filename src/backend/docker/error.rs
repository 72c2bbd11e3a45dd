//! Bollard's errors as [`EngineError`]s: what is a transport failure, and
//! which 404 means what.

use bollard::errors::Error as BollardError;

use crate::backend::{EngineError, NetworkMode};

impl From<BollardError> for EngineError {
    /// Transport failures (socket gone, connection reset, timeout) mean the
    /// engine is unavailable; answers from the engine are refusals.
    fn from(error: BollardError) -> Self {
        match error {
            BollardError::RequestTimeoutError
            | BollardError::IOError { .. }
            | BollardError::HttpClientError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::SocketNotFoundError(_) => EngineError::Unavailable(error.to_string()),
            other => EngineError::Refused(other.to_string()),
        }
    }
}

/// The HTTP status of an engine error response, if it is one.
pub(in crate::backend) fn status_of(error: &BollardError) -> Option<u16> {
    match error {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine reports a missing image at create and (on some versions) a
/// missing network only at start; both are 404s told apart by their text.
pub(super) fn classify_start_error(
    error: BollardError,
    image: &str,
    network_mode: &NetworkMode,
) -> EngineError {
    match &error {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => {
            let message = message.to_ascii_lowercase();
            if message.contains("network") {
                EngineError::NetworkNotFound(
                    network_mode.as_stored().unwrap_or_default().to_owned(),
                )
            } else if message.contains("image") {
                EngineError::ImageNotFound(image.to_owned())
            } else {
                error.into()
            }
        }
        _ => error.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_found(message: &str) -> BollardError {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message: message.to_owned(),
        }
    }

    #[test]
    fn start_404s_are_told_apart_by_their_text() {
        let mode = NetworkMode::Named("mine".into());
        assert!(matches!(
            classify_start_error(not_found("network mine not found"), "img", &mode),
            EngineError::NetworkNotFound(name) if name == "mine"
        ));
        assert!(matches!(
            classify_start_error(not_found("No such image: img:latest"), "img", &mode),
            EngineError::ImageNotFound(image) if image == "img"
        ));
        assert!(matches!(
            classify_start_error(not_found("something else"), "img", &mode),
            EngineError::Refused(_)
        ));
    }

    #[test]
    fn transport_failures_mean_unavailable() {
        assert!(EngineError::from(BollardError::RequestTimeoutError).is_unavailable());
        assert!(!EngineError::from(not_found("x")).is_unavailable());
    }
}
