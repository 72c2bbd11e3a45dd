//! Request extractors that turn every malformed input into an [`ApiError`]
//! before a handler runs, so nothing unvalidated reaches Docker or the DB.

use std::borrow::Cow;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use futures_util::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::BODY_LIMIT_BYTES;
use super::error::ApiError;
use crate::domain::{InvalidSessionId, SessionId};

/// The header the first orchestrator read session ids from.
pub const SESSION_HEADER: &str = "x-session-id";

/// [`SESSION_HEADER`] as a name, which headers are looked up by without
/// parsing it each time.
static SESSION_HEADER_NAME: HeaderName = HeaderName::from_static(SESSION_HEADER);

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
        match json_body(request).await? {
            Some(bytes) => parse_json(&bytes).map(Self),
            None => Ok(Self(T::default())),
        }
    }
}

/// The session id that a request's body names (`{"sessionId": ...}`), read
/// as [`OptionalJson`] reads bodies; an empty id counts as absent.
///
/// The id is validated straight from the body (serde borrows it unless it
/// has escapes), so a valid one costs one allocation, the [`SessionId`]'s,
/// rather than a `String` and then its copy. A bad id is kept as its error,
/// answered when the handler asks for the id: a deprovision in
/// `REUSE_RUNNER_MODE` answers without looking at it.
pub struct SessionBody(pub Result<Option<SessionId>, ApiError>);

impl<S: Send + Sync> FromRequest<S> for SessionBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        let Some(bytes) = json_body(request).await? else {
            return Ok(Self(Ok(None)));
        };
        let SessionRequest { session_id } = parse_json(&bytes)?;
        let raw = session_id.as_ref().map_or("", |BorrowedStr(raw)| raw);
        Ok(Self(parse_optional(raw)))
    }
}

/// The body of the runner requests that name a session. (serde's message
/// for a body of another shape names it: "expected struct SessionRequest".)
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionRequest<'a> {
    #[serde(borrow)]
    session_id: Option<BorrowedStr<'a>>,
}

/// A JSON string, borrowed from the body unless it has escapes. (serde
/// borrows a `Cow` only as a field of its own, not inside an `Option`.)
#[derive(Deserialize)]
struct BorrowedStr<'a>(#[serde(borrow)] Cow<'a, str>);

/// A JSON body's bytes, `None` if it is absent or blank. A body with a
/// content type other than JSON is refused with 415, one over
/// `BODY_LIMIT_BYTES` with 413.
async fn json_body(request: Request) -> Result<Option<Bytes>, ApiError> {
    // Refused before any of it is read: the client may not even send it.
    // hyper has the body's size from its `Content-Length` (which it has
    // checked), so the header is not read again.
    if request.body().size_hint().lower() > BODY_LIMIT_BYTES as u64 {
        return Err(ApiError::PayloadTooLarge);
    }
    let declared_json = declared_json(request.headers());
    let bytes = read_body(request.into_body()).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if declared_json == Some(false) {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(Some(bytes))
}

/// Deserializes a body: 400 for what is not JSON, 422 for JSON of another
/// shape. Every body of this API is an object: serde would also fill a
/// struct from an array of its fields in order (`[null, "none"]`), which no
/// client means, so an array is refused however well it fits.
fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    let parsed = serde_json::from_slice(bytes).map_err(|error| {
        if error.is_data() {
            ApiError::UnexpectedJson(error.to_string())
        } else {
            ApiError::MalformedJson(error.to_string())
        }
    })?;
    if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::UnexpectedJson(
            "invalid type: sequence, expected a JSON object".to_owned(),
        ));
    }
    Ok(parsed)
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
    let value = headers.get(CONTENT_TYPE)?;
    // What nearly every client sends, told at once.
    if value == "application/json" {
        return Some(true);
    }
    let value = value.to_str().unwrap_or_default();
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
        match parts.headers.get(&SESSION_HEADER_NAME) {
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

    /// What [`SessionBody`] makes of a JSON body.
    async fn session_body(body: &str) -> Result<Option<SessionId>, ApiError> {
        let request = Request::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        SessionBody::from_request(request, &()).await?.0
    }

    fn id(raw: &str) -> Option<SessionId> {
        Some(SessionId::parse(raw).unwrap())
    }

    #[tokio::test]
    async fn session_bodies() {
        for absent in [
            "",
            " \r\n",
            "{}",
            r#"{"sessionId":null}"#,
            r#"{"sessionId":""}"#,
        ] {
            assert_eq!(session_body(absent).await.unwrap(), None, "{absent:?}");
        }
        assert_eq!(
            session_body(r#"{"sessionId":"s-1"}"#).await.unwrap(),
            id("s-1")
        );
        assert_eq!(
            session_body(r#"{"other":[1],"sessionId":"s-1"}"#)
                .await
                .unwrap(),
            id("s-1")
        );
        // Escaped, so not borrowed from the body.
        assert_eq!(
            session_body(r#"{"sessionId":"a\"b\\c\u0041\/"}"#)
                .await
                .unwrap(),
            id(r#"a"b\cA/"#)
        );
        assert!(matches!(
            session_body(r#"{"sessionId":"a b"}"#).await,
            Err(ApiError::InvalidSessionId(
                InvalidSessionId::NotVisibleAscii
            ))
        ));
        let long = format!(r#"{{"sessionId":"{}"}}"#, "x".repeat(129));
        assert!(matches!(
            session_body(&long).await,
            Err(ApiError::InvalidSessionId(InvalidSessionId::TooLong))
        ));
        let text = Request::builder()
            .header(CONTENT_TYPE, "text/plain")
            .body(Body::from(r#"{"sessionId":"s-1"}"#))
            .unwrap();
        assert!(matches!(
            SessionBody::from_request(text, &()).await,
            Err(ApiError::UnsupportedMediaType)
        ));
    }

    /// The body as the handlers read it before [`SessionBody`]: an owned
    /// `String`. Its errors are the ones clients got.
    mod owned {
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        #[allow(dead_code)]
        pub struct SessionRequest {
            pub session_id: Option<String>,
        }
    }

    #[tokio::test]
    async fn bad_session_bodies_get_the_errors_of_an_owned_string() {
        let bodies = [
            "{",
            "nul",
            r#"{"sessionId":"s-1"} x"#,
            r#"{"sessionId":"\x"}"#,
            r#"{"sessionId":"\ud800"}"#,
            r#"{"sessionId":5}"#,
            r#"{"sessionId":{"a":1}}"#,
            r#"{"sessionId":"a","sessionId":"b"}"#,
            r#"["s-1", 2]"#,
            "[]",
            r#""s-1""#,
            "7",
        ];
        for body in bodies {
            let expected = match serde_json::from_str::<owned::SessionRequest>(body) {
                Err(error) if error.is_data() => format!("422 {error}"),
                Err(error) => format!("400 {error}"),
                Ok(request) => panic!("{body:?} parsed: {request:?}"),
            };
            let answer = match session_body(body).await {
                Err(ApiError::UnexpectedJson(message)) => format!("422 {message}"),
                Err(ApiError::MalformedJson(message)) => format!("400 {message}"),
                other => panic!("{body:?}: {other:?}"),
            };
            assert_eq!(answer, expected, "{body:?}");
        }
    }

    /// serde fills a struct from an array of its fields in order; no body of
    /// this API is an array, however well it fits.
    #[tokio::test]
    async fn arrays_that_fit_a_body_s_fields_are_refused() {
        for body in [r#"["s-1"]"#, "[null]", " \n[\"s-1\"]"] {
            assert!(
                matches!(
                    session_body(body).await,
                    Err(ApiError::UnexpectedJson(ref message)) if message.contains("expected a JSON object")
                ),
                "{body:?}"
            );
        }
        #[derive(Debug, Default, serde::Deserialize)]
        #[allow(dead_code)]
        struct Provision {
            network_mode: Option<String>,
            egress: Option<serde_json::Value>,
        }
        assert!(matches!(
            parse_json::<Provision>(br#"[null,"none"]"#),
            Err(ApiError::UnexpectedJson(_))
        ));
        assert!(matches!(
            parse_json::<Provision>(b"[null,"),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(parse_json::<Provision>(br#"{"egress":"none"}"#).is_ok());
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
