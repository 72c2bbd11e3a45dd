//! Request extractors that turn every malformed input into an [`ApiError`]
//! before a handler runs, so nothing unvalidated reaches Docker or the DB.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
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
        // hyper has the body's size from its `Content-Length` (which it has
        // checked), so the header is not read again.
        if request.body().size_hint().lower() > BODY_LIMIT_BYTES as u64 {
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
///
/// A body of known length ends with its last byte, so no frame is asked
/// for after it: hyper's body channel would be polled once more for the end
/// it has already told.
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    let mut frames = body.into_data_stream();
    let mut whole: Option<Bytes> = None;
    let mut more: Option<Vec<u8>> = None;
    while !frames.is_end_stream() {
        let Some(frame) = frames.next().await else {
            break;
        };
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

/// `None` without a content type; otherwise whether it is JSON
/// (`application/json`, `application/*+json`, any parameters, any case).
/// Compares in place rather than lowercasing a copy: every body pays it.
fn declared_json(headers: &HeaderMap) -> Option<bool> {
    let value = headers.get(CONTENT_TYPE)?.to_str().unwrap_or_default();
    let end = value.bytes().position(|b| b == b';').unwrap_or(value.len());
    let essence = value[..end].trim_ascii();
    Some(
        essence.eq_ignore_ascii_case("application/json")
            || (starts_with_ignore_case(essence, "application/")
                && ends_with_ignore_case(essence, "+json")),
    )
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len()
        && text.as_bytes()[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
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
        assert_eq!(
            declared_json(&with_type(" APPLICATION/VND.API+JSON ;charset=utf-8")),
            Some(true)
        );
        assert_eq!(declared_json(&with_type("application/+json")), Some(true));
        assert_eq!(declared_json(&with_type("application/json5")), Some(false));
        assert_eq!(declared_json(&with_type("text/json")), Some(false));
        assert_eq!(declared_json(&with_type("+json")), Some(false));
        assert_eq!(declared_json(&with_type("")), Some(false));
        assert_eq!(declared_json(&with_type("text/plain")), Some(false));
        assert_eq!(
            declared_json(&with_type("application/x-www-form-urlencoded")),
            Some(false)
        );
    }

    /// A body sent as these frames.
    fn chunked<const N: usize>(chunks: [String; N]) -> Body {
        let frames = chunks.map(|chunk| Ok::<_, std::io::Error>(Bytes::from(chunk)));
        Body::from_stream(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn bodies_are_read_whole_in_one_frame_or_many() {
        let whole = read_body(Body::from(r#"{"sessionId":"s"}"#)).await.unwrap();
        assert_eq!(whole, r#"{"sessionId":"s"}"#);
        let parts = [r#"{"sess"#, r#"ionId""#, r#":"s"}"#].map(String::from);
        assert_eq!(read_body(chunked(parts)).await.unwrap(), whole);
        assert!(read_body(Body::empty()).await.unwrap().is_empty());
        let half = "x".repeat(BODY_LIMIT_BYTES / 2 + 1);
        assert!(matches!(
            read_body(chunked([half.clone(), half])).await,
            Err(ApiError::PayloadTooLarge)
        ));
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
