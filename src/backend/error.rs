//! How an engine call fails, in terms the lifecycle and the API act on
//! rather than any one engine client's error type.

use super::RUNNER_PORT;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("Docker image {0} not found")]
    ImageNotFound(String),
    #[error("Docker network {0} not found")]
    NetworkNotFound(String),
    #[error("container {0} is running but publishes no port for {RUNNER_PORT}/tcp")]
    PortNotPublished(String),
    /// The engine could not be reached or did not answer in time.
    #[error("Docker Engine unavailable: {0}")]
    Unavailable(String),
    /// The backend cannot do what was asked (e.g. a network mode Swarm
    /// services cannot have); the text says why.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The engine answered, and refused the request.
    #[error("Docker Engine error: {0}")]
    Refused(String),
}

impl EngineError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EngineError::Unavailable(_))
    }
}
