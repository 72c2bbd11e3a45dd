//! Every error the API answers, with the seed document's codes and messages.
//! All of them are JSON `{"error": CODE, "message": ...}`; a 500 adds
//! `details` only outside production, decided by [`show_details`] alone.

use std::borrow::Cow;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::backend::EngineError;
use crate::db::DbError;
use crate::domain::InvalidSessionId;
use crate::lifecycle::RunnerError;

/// What a 503 tells clients to wait before trying again.
const RETRY_AFTER_SECONDS: &str = "5";

/// What a request for a session id was for; it words the 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Deprovision,
    Heartbeat,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("session id required")]
    SessionIdRequired(Operation),
    #[error("invalid session id: {0}")]
    InvalidSessionId(InvalidSessionId),
    #[error("invalid network mode: {0}")]
    InvalidNetworkMode(&'static str),
    /// A provision's `egress` that is unknown or would widen the policy.
    #[error("invalid egress: {0}")]
    InvalidEgress(String),
    #[error("runner not found")]
    RunnerNotFound,
    /// The gateway knows no running runner under this host name.
    #[error("no runner at this host")]
    NoRunnerAtHost,
    /// The gateway could not get an answer from the runner; says why.
    #[error("runner unreachable: {0}")]
    RunnerUnreachable(String),
    #[error("singleton runner not found")]
    SingletonNotFound,
    #[error("docker image {0} not found")]
    ImageNotFound(String),
    #[error("docker network {0} not found")]
    NetworkNotFound(String),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("unexpected JSON: {0}")]
    UnexpectedJson(String),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request timed out")]
    Timeout,
    #[error("docker engine unavailable")]
    DockerUnavailable,
    #[error("runner limit reached")]
    RunnerLimitReached,
    /// Too many provisions from one client; wait this many seconds.
    #[error("rate limited")]
    RateLimited(u64),
    /// The startup reconcile has not finished; the text says why.
    #[error("not ready: {0}")]
    NotReady(String),
    /// Clients see the details only outside production (see
    /// `show_details`).
    #[error("internal error: {}", .details.as_deref().unwrap_or("unknown"))]
    Internal { details: Option<String> },
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a str>,
}

/// A 500's details, carried on its response to [`show_details`].
#[derive(Debug, Clone)]
struct Details(String);

impl From<RunnerError> for ApiError {
    fn from(error: RunnerError) -> Self {
        match error {
            RunnerError::NotFound => ApiError::RunnerNotFound,
            RunnerError::SingletonMismatch => ApiError::SingletonNotFound,
            RunnerError::Engine(EngineError::ImageNotFound(image)) => {
                ApiError::ImageNotFound(image)
            }
            RunnerError::Engine(EngineError::NetworkNotFound(network)) => {
                ApiError::NetworkNotFound(network)
            }
            RunnerError::LimitReached => ApiError::RunnerLimitReached,
            // The only thing a request can ask that a backend cannot do.
            RunnerError::Engine(EngineError::Unsupported(reason)) => {
                ApiError::InvalidNetworkMode(reason)
            }
            RunnerError::Engine(EngineError::Unavailable(reason)) => {
                tracing::warn!(%reason, "request refused: Docker Engine unavailable");
                ApiError::DockerUnavailable
            }
            other => {
                tracing::error!(error = %other, "request failed");
                ApiError::Internal {
                    details: Some(other.to_string()),
                }
            }
        }
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        RunnerError::from(error).into()
    }
}

/// Outside production, writes a 500's details into its body: the one place
/// that decides whether clients learn what went wrong inside (the router
/// adds it unless `NODE_ENV=production`).
pub fn show_details(response: Response) -> Response {
    let Some(Details(details)) = response.extensions().get::<Details>().cloned() else {
        return response;
    };
    let internal = ApiError::Internal { details: None };
    let body = ErrorBody {
        error: internal.code(),
        message: internal.message(),
        details: Some(&details),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let bytes = serde_json::to_vec(&body).expect("an error body always serialises");
    Response::from_parts(parts, Body::from(bytes))
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::SessionIdRequired(_)
            | ApiError::InvalidSessionId(_)
            | ApiError::InvalidNetworkMode(_)
            | ApiError::InvalidEgress(_)
            | ApiError::NetworkNotFound(_)
            | ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::RunnerNotFound
            | ApiError::SingletonNotFound
            | ApiError::RouteNotFound
            | ApiError::NoRunnerAtHost => StatusCode::NOT_FOUND,
            ApiError::RunnerUnreachable(_) => StatusCode::BAD_GATEWAY,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::UnexpectedJson(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::ImageNotFound(_) | ApiError::Internal { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::DockerUnavailable | ApiError::NotReady(_) | ApiError::RunnerLimitReached => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::SessionIdRequired(_) => "SESSION_ID_REQUIRED",
            ApiError::InvalidSessionId(_) => "INVALID_SESSION_ID",
            ApiError::InvalidNetworkMode(_) => "INVALID_NETWORK_MODE",
            ApiError::InvalidEgress(_) => "INVALID_EGRESS",
            ApiError::RunnerNotFound | ApiError::SingletonNotFound | ApiError::NoRunnerAtHost => {
                "RUNNER_NOT_FOUND"
            }
            ApiError::RunnerUnreachable(_) => "RUNNER_UNREACHABLE",
            ApiError::ImageNotFound(_) => "DOCKER_IMAGE_NOT_FOUND",
            ApiError::NetworkNotFound(_) => "NETWORK_NOT_FOUND",
            ApiError::MalformedJson(_) => "INVALID_JSON",
            ApiError::UnexpectedJson(_) => "INVALID_BODY",
            ApiError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ApiError::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ApiError::RouteNotFound => "NOT_FOUND",
            ApiError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ApiError::Timeout => "REQUEST_TIMEOUT",
            ApiError::Internal { .. } => "SERVER_ERROR",
            ApiError::DockerUnavailable => "DOCKER_UNAVAILABLE",
            ApiError::RunnerLimitReached => "RUNNER_LIMIT_REACHED",
            ApiError::RateLimited(_) => "RATE_LIMITED",
            ApiError::NotReady(_) => "NOT_READY",
        }
    }

    /// Most messages are fixed texts, borrowed rather than copied.
    fn message(&self) -> Cow<'static, str> {
        match self {
            ApiError::SessionIdRequired(Operation::Deprovision) => {
                "Session ID is required for deprovisioning.".into()
            }
            ApiError::SessionIdRequired(Operation::Heartbeat) => {
                "Session ID is required for heartbeat.".into()
            }
            ApiError::InvalidSessionId(reason) => reason.to_string().into(),
            ApiError::InvalidNetworkMode(reason) => (*reason).into(),
            ApiError::InvalidEgress(reason) => reason.clone().into(),
            ApiError::RunnerNotFound => "No active runner found for this session ID.".into(),
            ApiError::NoRunnerAtHost => {
                "No active runner at this address; it may have been removed.".into()
            }
            ApiError::RunnerUnreachable(reason) => {
                format!("The runner is not answering ({reason}).").into()
            }
            ApiError::SingletonNotFound => {
                "Singleton runner not found or session ID mismatch.".into()
            }
            ApiError::ImageNotFound(image) => {
                let hint = "Ensure it has been built, typically by the 'runner-builder' service.";
                format!("Docker image {image} not found. {hint}").into()
            }
            ApiError::NetworkNotFound(network) => {
                format!("Docker network {network} not found.").into()
            }
            ApiError::MalformedJson(reason) => {
                format!("The request body is not valid JSON: {reason}").into()
            }
            ApiError::UnexpectedJson(reason) => {
                format!("The request body has an unexpected shape: {reason}").into()
            }
            ApiError::UnsupportedMediaType => {
                "The request body must be JSON (Content-Type: application/json).".into()
            }
            ApiError::PayloadTooLarge => "The request body is too large.".into(),
            ApiError::RouteNotFound => "No such endpoint.".into(),
            ApiError::MethodNotAllowed => "This method is not allowed on this endpoint.".into(),
            ApiError::Timeout => "The request took too long.".into(),
            ApiError::Internal { .. } => "An unexpected error occurred on the server.".into(),
            ApiError::DockerUnavailable => {
                "The Docker Engine is unavailable; runners cannot be started or removed right now."
                    .into()
            }
            ApiError::NotReady(reason) => {
                format!("The orchestrator is not ready yet: {reason}").into()
            }
            ApiError::RunnerLimitReached => {
                "The maximum number of runners is reached; try again later.".into()
            }
            ApiError::RateLimited(wait) => {
                format!("Too many provisions from this client; try again in {wait} s.").into()
            }
        }
    }
}

/// A JSON answer, serialized straight into its body (what `Json` gives,
/// without its buffer and the header it sets first and then replaces).
fn json_response(status: StatusCode, body: &ErrorBody<'_>) -> Response {
    let mut response = Response::new(Body::from(error_json(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// What serde_json writes for `body`. Most errors (an unknown session's
/// heartbeat among them) have no details and texts that JSON takes as they
/// are: those are put together directly, in about half the instructions.
fn error_json(body: &ErrorBody<'_>) -> Vec<u8> {
    /// Written as it is in a JSON string: no `"`, `\` or control character.
    fn plain(text: &str) -> bool {
        !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
    }
    match body.details {
        None if plain(body.error) && plain(&body.message) => [
            r#"{"error":""#,
            body.error,
            r#"","message":""#,
            &body.message,
            r#""}"#,
        ]
        .concat()
        .into_bytes(),
        _ => serde_json::to_vec(body).expect("an error body always serialises"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code(),
            message: self.message(),
            details: None,
        };
        // axum adds the `Allow` header to 405s itself.
        let mut response = json_response(self.status(), &body);
        if let ApiError::Internal {
            details: Some(details),
        } = &self
        {
            response.extensions_mut().insert(Details(details.clone()));
        }
        let retry_after = match &self {
            ApiError::RateLimited(wait) => Some(HeaderValue::from(*wait.max(&1))),
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => {
                Some(HeaderValue::from_static(RETRY_AFTER_SECONDS))
            }
            _ => None,
        };
        if let Some(value) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of `(status, Json(body)).into_response()` with the message
    /// as an owned `String`, as the answers were made before.
    #[derive(Serialize)]
    struct Owned {
        error: &'static str,
        message: String,
    }

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn details_are_shown_for_internal_errors_only() {
        let internal = ApiError::Internal {
            details: Some("the engine said no".to_owned()),
        };
        let shown = show_details(internal.into_response());
        assert_eq!(shown.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body(shown).await,
            serde_json::json!({
                "error": "SERVER_ERROR",
                "message": "An unexpected error occurred on the server.",
                "details": "the engine said no",
            })
        );
        let hidden = ApiError::Internal {
            details: Some("the engine said no".to_owned()),
        };
        assert!(body(hidden.into_response()).await.get("details").is_none());
        let other = show_details(ApiError::RunnerNotFound.into_response());
        assert_eq!(body(other).await["error"], "RUNNER_NOT_FOUND");
    }

    proptest::proptest! {
        #[test]
        fn error_bodies_are_what_serde_writes(
            message in r#"[ -~]{0,60}|[\x00-\x7f"\\]{0,20}|\PC{0,20}"#,
            details in proptest::option::of(r#"[ -~"\\]{0,20}"#),
        ) {
            let body = ErrorBody {
                error: "RUNNER_NOT_FOUND",
                message: message.into(),
                details: details.as_deref(),
            };
            proptest::prop_assert_eq!(error_json(&body), serde_json::to_vec(&body).unwrap());
        }
    }

    #[tokio::test]
    async fn error_answers_are_the_json_they_were() {
        let errors = [
            ApiError::RunnerNotFound,
            ApiError::SessionIdRequired(Operation::Heartbeat),
            ApiError::MalformedJson("expected `:` at line 1 column 5 \"\\".to_owned()),
            ApiError::NotReady("the engine is down".to_owned()),
        ];
        for error in errors {
            let (status, code, message) = (error.status(), error.code(), error.message());
            let response = error.into_response();
            assert_eq!(response.status(), status);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let expected = Owned {
                error: code,
                message: message.into_owned(),
            };
            assert_eq!(body, serde_json::to_vec(&expected).unwrap());
        }
    }
}
