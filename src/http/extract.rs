//! Request extractors that turn every malformed input into an [`ApiError`]
//! before a handler runs, so nothing unvalidated reaches Docker or the DB.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::BODY_LIMIT_BYTES;
use super::error::ApiError;
use crate::session::{InvalidSessionId, SessionId};

/// The header the first orchestrator read session ids from.
pub const SESSION_HEADER: &str = "x-session-id";

/// A JSON body that may also be absent.
///
/// The browser sends `{}` to provision, other clients nothing at all (which
/// the first orchestrator answered with a 500); both mean "no fields". A body
/// with a content type other than JSON is refused with 415; one without a
/// content type is read as JSON.
#[derive(Debug, Default)]
pub struct OptionalJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        // Refused before any of it is read: the client may not even send it.
        if declared_length(request.headers()).is_some_and(|length| length > BODY_LIMIT_BYTES) {
            return Err(ApiError::PayloadTooLarge);
        }
        let declared_json = declared_json(request.headers());
        let bytes = read_body(request.into_body()).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        if declared_json == Some(false) {
            return Err(ApiError::UnsupportedMediaType);
        }
        serde_json::from_slice(&bytes).map(Self).map_err(|error| {
            if error.is_data() {
                ApiError::UnexpectedJson(error.to_string())
            } else {
                ApiError::MalformedJson(error.to_string())
            }
        })
    }
}

/// The body, refused past `BODY_LIMIT_BYTES` however it is sent. The small
/// bodies of this API arrive in one frame, which is taken as it is rather
/// than collected into a new buffer (a heartbeat's body is a few dozen
/// bytes, and it is the request that comes by the thousand).
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    let mut frames = body.into_data_stream();
    let mut whole: Option<Bytes> = None;
    let mut more: Option<Vec<u8>> = None;
    while let Some(frame) = frames.next().await {
        let frame = frame.map_err(|error| {
            ApiError::MalformedJson(format!("Failed to buffer the request body: {error}"))
        })?;
        let length =
            whole.as_ref().map_or(0, Bytes::len) + more.as_ref().map_or(0, Vec::len) + frame.len();
        if length > BODY_LIMIT_BYTES {
            return Err(ApiError::PayloadTooLarge);
        }
        match (&mut whole, &mut more) {
            (None, None) => whole = Some(frame),
            (Some(first), None) => {
                let mut joined = Vec::with_capacity(length);
                joined.extend_from_slice(first);
                joined.extend_from_slice(&frame);
                whole = None;
                more = Some(joined);
            }
            (_, Some(joined)) => joined.extend_from_slice(&frame),
        }
    }
    Ok(match more {
        Some(joined) => Bytes::from(joined),
        None => whole.unwrap_or_default(),
    })
}

/// The `Content-Length` (hyper has checked it is a number, if present).
fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// `None` without a content type; otherwise whether it is JSON
/// (`application/json`, `application/*+json`, any parameters).
fn declared_json(headers: &HeaderMap) -> Option<bool> {
    let value = headers.get(CONTENT_TYPE)?;
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    Some(
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json")),
    )
}

/// The optional, validated `X-Session-Id` header. An empty header counts as
/// absent, as it did for the first orchestrator.
#[derive(Debug, Default)]
pub struct SessionHeader(pub Option<SessionId>);

impl<S: Send + Sync> FromRequestParts<S> for SessionHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get(SESSION_HEADER) {
            None => Ok(Self(None)),
            Some(value) => {
                let text = value
                    .to_str()
                    .map_err(|_| ApiError::InvalidSessionId(InvalidSessionId::NotVisibleAscii))?;
                parse_optional(text).map(Self)
            }
        }
    }
}

/// Validates a session id where an empty string means "none given".
pub fn parse_optional(raw: &str) -> Result<Option<SessionId>, ApiError> {
    if raw.is_empty() {
        return Ok(None);
    }
    SessionId::parse(raw)
        .map(Some)
        .map_err(ApiError::InvalidSessionId)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn json_content_types() {
        assert_eq!(declared_json(&HeaderMap::new()), None);
        assert_eq!(declared_json(&with_type("application/json")), Some(true));
        assert_eq!(
            declared_json(&with_type("Application/JSON; charset=utf-8")),
            Some(true)
        );
        assert_eq!(
            declared_json(&with_type("application/merge-patch+json")),
            Some(true)
        );
        assert_eq!(declared_json(&with_type("text/plain")), Some(false));
        assert_eq!(
            declared_json(&with_type("application/x-www-form-urlencoded")),
            Some(false)
        );
    }

    #[test]
    fn declared_lengths() {
        let with_length = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_LENGTH, HeaderValue::from_str(value).unwrap());
            headers
        };
        assert_eq!(declared_length(&HeaderMap::new()), None);
        assert_eq!(
            declared_length(&with_length("16384")),
            Some(BODY_LIMIT_BYTES)
        );
        assert_eq!(declared_length(&with_length("10000000")), Some(10_000_000));
        assert_eq!(declared_length(&with_length("-1")), None);
    }

    #[test]
    fn empty_session_id_means_none() {
        assert!(parse_optional("").unwrap().is_none());
        assert!(parse_optional("abc").unwrap().is_some());
        assert!(matches!(
            parse_optional("a b"),
            Err(ApiError::InvalidSessionId(_))
        ));
    }
}
