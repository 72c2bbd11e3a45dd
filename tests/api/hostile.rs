//! Hostile input: what a broken or malicious browser could send to the
//! runner endpoints, much of it over raw TCP because no HTTP client would.
//!
//! Every request the service sees gets a 4xx JSON error `{"error",
//! "message"}` at once, or after `--request-timeout` for a client that stops
//! sending its body. What hyper refuses before the service sees a request (an
//! oversize or malformed head) gets hyper's bare status, and a head that is
//! never finished a closed connection after the same timeout. Nothing reaches
//! the database or the engine, and the service stays healthy.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use taylored_orchestrator::backend::NetworkMode;
use taylored_orchestrator::server::LINGER_IDLE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::oneshot;

use crate::helpers::{Api, TestApp, eventually, spawn_app, spawn_app_with};

const PROVISION: &str = "/api/runner/provision";
const HEARTBEAT: &str = "/api/runner/heartbeat";
const DEPROVISION: &str = "/api/runner/deprovision";
const ENDPOINTS: [&str; 3] = [PROVISION, HEARTBEAT, DEPROVISION];
/// The endpoints that read a session id from the body.
const SESSION_ENDPOINTS: [&str; 2] = [HEARTBEAT, DEPROVISION];

/// `--request-timeout` in the tests that measure it, short so that slow
/// clients are cut off quickly (the others keep the default 60 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// An answer that needs no timeout comes at once (measured: a few ms); the
/// rest is room for a loaded CI machine.
const PROMPT: Duration = Duration::from_secs(5);
/// How much later than `REQUEST_TIMEOUT` a slow client may be cut off.
const SLACK: Duration = Duration::from_secs(3);
/// A connection still open without an answer after this is a hang.
const HANG: Duration = Duration::from_secs(30);

const JSON: &[u8] = b"Content-Type: application/json\r\n";

/// The service with `REQUEST_TIMEOUT`, for the tests that measure it.
async fn spawn_app_timing_out() -> TestApp {
    spawn_app_with(&["--request-timeout=2"]).await
}

/// What the service did on a raw connection.
#[derive(Debug)]
struct Answer {
    /// `None`: it closed the connection without answering.
    status: Option<u16>,
    /// The JSON body; `Value::Null` if there is none or it is not JSON.
    body: Value,
    /// From the connect to the end of the answer (or to the close).
    elapsed: Duration,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

/// Bytes to send after a pause.
type Chunk = (Duration, Vec<u8>);

fn at_once(bytes: impl Into<Vec<u8>>) -> Vec<Chunk> {
    vec![(Duration::ZERO, bytes.into())]
}

/// A raw TCP connection to the service. The chunks are written by a task of
/// their own while answers are read (a server may answer before a large
/// request is fully sent); the connection stays open until the `Raw` is
/// dropped, which also stops the writing.
struct Raw {
    reader: OwnedReadHalf,
    buffer: Vec<u8>,
    opened: Instant,
    _keep_open: oneshot::Sender<()>,
}

impl Raw {
    async fn open(app: &TestApp, chunks: Vec<Chunk>) -> Raw {
        let opened = Instant::now();
        let (reader, mut writer) = connect(app).await.into_split();
        let (keep_open, closed) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let write = async {
                for (pause, bytes) in chunks {
                    // A slow client's pause: the behaviour under test.
                    tokio::time::sleep(pause).await;
                    if writer.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                () = write => {}
                _ = closed => {}
            }
        });
        Raw {
            reader,
            buffer: Vec::new(),
            opened,
            _keep_open: keep_open,
        }
    }

    /// The next final answer (1xx are skipped), or the close.
    async fn answer(&mut self) -> Answer {
        let mut chunk = vec![0; 64 * 1024];
        loop {
            if let Some((length, status, body)) = parse_answer(&self.buffer) {
                self.buffer.drain(..length);
                if (100..200).contains(&status) {
                    continue;
                }
                return Answer {
                    status: Some(status),
                    body,
                    elapsed: self.opened.elapsed(),
                };
            }
            let remaining = HANG.saturating_sub(self.opened.elapsed());
            let read = tokio::time::timeout(remaining, self.reader.read(&mut chunk)).await;
            match read {
                Ok(Ok(0) | Err(_)) => {
                    return Answer {
                        status: None,
                        body: Value::Null,
                        elapsed: self.opened.elapsed(),
                    };
                }
                Ok(Ok(read)) => self.buffer.extend_from_slice(&chunk[..read]),
                Err(_) => panic!(
                    "no answer and the connection still open after {HANG:?} (got {:?})",
                    String::from_utf8_lossy(&self.buffer)
                ),
            }
        }
    }
}

/// A new connection to the service.
async fn connect(app: &TestApp) -> TcpStream {
    let port: u16 = app.api.base.rsplit(':').next().unwrap().parse().unwrap();
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

/// A complete response at the start of `buffer`: its length, status and
/// JSON body.
fn parse_answer(buffer: &[u8]) -> Option<(usize, u16, Value)> {
    let head_end = buffer.windows(4).position(|window| window == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    let body = buffer.get(head_end..head_end + length)?;
    let body = serde_json::from_slice(body).unwrap_or(Value::Null);
    Some((head_end + length, status, body))
}

/// Sends `request` on a fresh connection and waits for the answer.
async fn send(app: &TestApp, request: Vec<u8>) -> Answer {
    Raw::open(app, at_once(request)).await.answer().await
}

/// A POST with `headers` (raw lines) and a `Content-Length` for `body`.
fn post(path: &str, headers: &[u8], body: &[u8]) -> Vec<u8> {
    let mut request = head(path, headers);
    request.truncate(request.len() - 2);
    request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    request.extend_from_slice(body);
    request
}

/// The head of a POST with `headers` (raw lines) and no framing.
fn head(path: &str, headers: &[u8]) -> Vec<u8> {
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: orchestrator\r\n").into_bytes();
    request.extend_from_slice(headers);
    request.extend_from_slice(b"\r\n");
    request
}

fn header(name: &str, value: &[u8]) -> Vec<u8> {
    [name.as_bytes(), b": ", value, b"\r\n"].concat()
}

/// A 4xx JSON error from the service, answered at once.
#[track_caller]
fn assert_json_error(answer: &Answer, status: u16, codes: &[&str], what: &str) {
    assert_eq!(answer.status, Some(status), "{what}: {answer:?}");
    assert!(codes.contains(&answer.error()), "{what}: {answer:?}");
    let message = answer.body["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{what}: {answer:?}");
    assert!(answer.elapsed < PROMPT, "{what}: answered after {answer:?}");
}

/// Refused by hyper before the service saw a request: its bare status
/// without a body (`None`: the connection closed), answered at once.
#[track_caller]
fn assert_refused_by_hyper(answer: &Answer, status: Option<u16>, what: &str) {
    assert_eq!(answer.status, status, "{what}: {answer:?}");
    assert_eq!(answer.body, Value::Null, "{what}: {answer:?}");
    assert!(answer.elapsed < PROMPT, "{what}: answered after {answer:?}");
}

/// Cut off after `REQUEST_TIMEOUT`, not before and not much later.
#[track_caller]
fn assert_cut_off_on_time(answer: &Answer, what: &str) {
    let earliest = REQUEST_TIMEOUT - Duration::from_millis(50);
    assert!(
        (earliest..REQUEST_TIMEOUT + SLACK).contains(&answer.elapsed),
        "{what}: cut off after {:?}, expected about {REQUEST_TIMEOUT:?}",
        answer.elapsed
    );
}

/// A client that opens a connection per request. The service closes idle
/// keep-alive connections after the request timeout, and a pooled one
/// reused at that very moment fails (the usual keep-alive race, which
/// clients retry); with a 2 s timeout a test would run into it.
fn unpooled(app: &TestApp) -> Api {
    Api {
        base: app.api.base.clone(),
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(HANG)
            .build()
            .unwrap(),
    }
}

/// Nothing reached the database or the engine, and the service still
/// answers: `/healthz` and a real provision.
async fn assert_untouched_then_healthy(app: &TestApp) {
    let api = unpooled(app);
    app.assert_untouched().await;
    let started = Instant::now();
    let health = api.get("/healthz").await;
    assert_eq!(health.status, 200, "{health:?}");
    assert!(
        started.elapsed() < PROMPT,
        "/healthz took {:?}",
        started.elapsed()
    );
    // Under a short request timeout a provision on a busy machine may be
    // answered 408; it still completes, and asking again returns its runner.
    let session = uuid::Uuid::new_v4().to_string();
    let mut timed_out = 0;
    loop {
        let provisioned = api.provision(Some(&session)).await;
        match provisioned.status {
            201 => return,
            200 if timed_out > 0 => return,
            408 if timed_out < 10 => timed_out += 1,
            _ => panic!("provision after {timed_out} timeouts: {provisioned:?}"),
        }
    }
}

#[tokio::test]
async fn huge_and_numerous_headers_are_refused() {
    let app = spawn_app().await;
    let mib = vec![b'x'; 1 << 20];
    let thousand_headers: Vec<u8> = (0..1000)
        .flat_map(|i| header(&format!("X-Padding-{i}"), b"x"))
        .collect();
    let ninety_headers: Vec<u8> = (0..90)
        .flat_map(|i| header(&format!("X-Padding-{i}"), b"x"))
        .collect();
    let long_id = vec![b'x'; 8 * 1024];
    for path in ENDPOINTS {
        // hyper reads at most ~400 KiB of head and 100 headers.
        for (what, headers) in [
            ("1 MiB X-Session-Id", header("X-Session-Id", &mib)),
            ("1 MiB other header", header("X-Padding", &mib)),
            ("1000 headers", thousand_headers.clone()),
        ] {
            let answer = send(&app, post(path, &[JSON, &headers].concat(), b"{}")).await;
            assert_refused_by_hyper(&answer, Some(431), &format!("{what} to {path}"));
        }
        let answer = send(
            &app,
            post(
                path,
                &[JSON, &header("X-Session-Id", &long_id)].concat(),
                b"{}",
            ),
        )
        .await;
        let what = format!("8 KiB X-Session-Id to {path}");
        assert_json_error(&answer, 400, &["INVALID_SESSION_ID"], &what);
        // Below hyper's limits the service answers.
        let body = br#"{"networkMode": 1, "sessionId": 1}"#;
        let answer = send(&app, post(path, &[JSON, &ninety_headers].concat(), body)).await;
        let what = format!("90 headers to {path}");
        assert_json_error(&answer, 422, &["INVALID_BODY"], &what);
    }
    let long_uri = format!("{HEARTBEAT}?{}", "q".repeat(100_000));
    let answer = send(&app, post(&long_uri, JSON, b"{}")).await;
    assert_refused_by_hyper(&answer, Some(414), "100 KB URI");
    assert_untouched_then_healthy(&app).await;
}

#[tokio::test]
async fn ten_megabyte_bodies_get_413_at_once() {
    let app = spawn_app().await;
    let ten_mb: Vec<u8> = [br#"{"sessionId": ""#.as_slice(), &[b'x'; 10_000_000]].concat();
    let chunked = [
        format!("{:x}\r\n", ten_mb.len()).as_bytes(),
        &ten_mb,
        b"\r\n0\r\n\r\n",
    ]
    .concat();
    let declared = [JSON, b"Content-Length: 10000000\r\n"].concat();
    for path in ENDPOINTS {
        let cases = [
            ("sent", post(path, JSON, &ten_mb)),
            (
                "not JSON",
                post(path, b"Content-Type: text/plain\r\n", &ten_mb),
            ),
            // Refused on its Content-Length, not after the request timeout.
            ("declared, never sent", head(path, &declared)),
            (
                "declared with Expect: 100-continue",
                head(
                    path,
                    &[&declared, b"Expect: 100-continue\r\n".as_slice()].concat(),
                ),
            ),
            (
                "chunked",
                [
                    head(path, &[JSON, b"Transfer-Encoding: chunked\r\n"].concat()),
                    chunked.clone(),
                ]
                .concat(),
            ),
        ];
        for (what, request) in cases {
            let answer = send(&app, request).await;
            let what = format!("10 MB body {what} to {path}");
            assert_json_error(&answer, 413, &["PAYLOAD_TOO_LARGE"], &what);
        }
    }
    assert_untouched_then_healthy(&app).await;
}

/// What a client that sends its whole request before it looks at the
/// answer (Python's `http.client` and `requests`, browsers) went through.
#[derive(Debug)]
struct SentWhole {
    /// How writing the request ended: a refused body must still be taken.
    written: std::io::Result<()>,
    /// Everything read until the service closed.
    received: String,
    /// How reading ended: at end-of-file, not with a reset.
    read: std::io::Result<()>,
}

/// Writes `request` from one task while this one reads until the service
/// closes; the client closes its side once the request is written.
async fn send_whole(stream: TcpStream, request: Vec<u8>) -> SentWhole {
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move { writer.write_all(&request).await });
    let mut received = Vec::new();
    let read = tokio::time::timeout(HANG, reader.read_to_end(&mut received))
        .await
        .expect("the service did not close the connection")
        .map(drop);
    let written = writing.await.unwrap();
    SentWhole {
        written,
        received: String::from_utf8_lossy(&received).into_owned(),
        read,
    }
}

/// An 8 MiB body refused with 413 (on its `Content-Length`, or once over
/// the limit while streaming) is taken in full and the client reads the
/// whole 413 JSON, then the end of the connection: without lingering, the
/// service closed on the unread body, the client's write failed with a
/// broken pipe or a reset, and `requests` reported that instead of the 413.
#[tokio::test]
async fn a_client_that_keeps_sending_a_refused_body_gets_the_413() {
    let app = spawn_app().await;
    let body: Vec<u8> = [br#"{"sessionId": ""#.as_slice(), &[b'x'; 8 << 20]].concat();
    let chunked: Vec<u8> = body
        .chunks(64 * 1024)
        .flat_map(|chunk| [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat())
        .chain(b"0\r\n\r\n".iter().copied())
        .collect();
    for path in ENDPOINTS {
        let cases = [
            ("declared", post(path, JSON, &body)),
            (
                "chunked",
                [
                    head(path, &[JSON, b"Transfer-Encoding: chunked\r\n"].concat()),
                    chunked.clone(),
                ]
                .concat(),
            ),
        ];
        for (what, request) in cases {
            let what = format!("8 MiB body {what} to {path}");
            let sent = send_whole(connect(&app).await, request).await;
            assert!(sent.written.is_ok(), "{what}: {sent:?}");
            assert!(sent.read.is_ok(), "{what}: {sent:?}");
            let (length, status, body) = parse_answer(sent.received.as_bytes())
                .unwrap_or_else(|| panic!("{what}: no complete answer in {sent:?}"));
            assert_eq!(length, sent.received.len(), "{what}: one answer");
            assert_eq!(status, 413, "{what}: {body}");
            assert_eq!(body["error"], "PAYLOAD_TOO_LARGE", "{what}: {body}");
            assert!(body["message"].is_string(), "{what}: {body}");
        }
    }
    assert_untouched_then_healthy(&app).await;
}

/// Lingering is bounded: a client that declares a huge body, gets its 413
/// and then stalls is cut `LINGER_IDLE` later (a client that trickles is
/// cut after `LINGER_TIME`: see the unit tests of the lingering close).
#[tokio::test]
async fn a_refused_client_that_stalls_is_cut_after_the_linger_idle_time() {
    let app = spawn_app().await;
    let mut stream = connect(&app).await;
    let request = [
        head(
            PROVISION,
            &[JSON, b"Content-Length: 100000000\r\n".as_slice()].concat(),
        ),
        vec![b' '; 64 * 1024],
    ]
    .concat();
    stream.write_all(&request).await.unwrap();
    let mut received = vec![0; 64 * 1024];
    let read = stream.read(&mut received).await.unwrap();
    let (_, status, body) = parse_answer(&received[..read]).expect("the 413 in one read");
    assert_eq!((status, &body["error"]), (413, &json!("PAYLOAD_TOO_LARGE")));
    let answered = Instant::now();
    // The client stalls past the idle bound (the situation under test, not
    // a wait for the service)...
    tokio::time::sleep(LINGER_IDLE + Duration::from_secs(1)).await;
    // ...and then finds the connection closed: a write to a closed socket
    // is answered with a reset, which fails a later write. A service still
    // draining would take every probe (each one restarting its idle time).
    let stream = &tokio::sync::Mutex::new(stream);
    eventually(
        Duration::from_secs(1),
        "the connection closed",
        || async move { stream.lock().await.write_all(b" ").await.is_err() },
    )
    .await;
    eprintln!("closed {:?} after the 413", answered.elapsed());
    assert_untouched_then_healthy(&app).await;
}

#[tokio::test]
async fn deeply_nested_json_is_refused() {
    let app = spawn_app().await;
    let open = |depth: usize| "[".repeat(depth);
    let balanced = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    for path in ENDPOINTS {
        // Over the body limit, whatever it holds.
        let answer = send(&app, post(path, JSON, open(100_000).as_bytes())).await;
        let what = format!("100k [ to {path}");
        assert_json_error(&answer, 413, &["PAYLOAD_TOO_LARGE"], &what);
        // serde_json stops at 128 levels.
        let field = if path == PROVISION {
            "networkMode"
        } else {
            "sessionId"
        };
        for body in [
            open(16_000),
            balanced(8_000),
            format!(r#"{{"{field}": {}"#, open(16_000)),
            format!(r#"{{"{field}": {}}}"#, balanced(8_000)),
        ] {
            let answer = send(&app, post(path, JSON, body.as_bytes())).await;
            let what = format!("{}... to {path}", &body[..20]);
            let status = answer.status.unwrap_or_default();
            assert!(matches!(status, 400 | 422), "{what}: {answer:?}");
            assert_json_error(&answer, status, &["INVALID_JSON", "INVALID_BODY"], &what);
        }
    }
    // An unknown field is skipped without recursion, however deep.
    for path in SESSION_ENDPOINTS {
        let body = format!(r#"{{"padding": {}}}"#, balanced(8_000));
        let answer = send(&app, post(path, JSON, body.as_bytes())).await;
        let what = format!("deep unknown field to {path}");
        assert_json_error(&answer, 400, &["SESSION_ID_REQUIRED"], &what);
    }
    assert_untouched_then_healthy(&app).await;
}

#[tokio::test]
async fn wrong_types_and_shapes_are_refused() {
    let app = spawn_app().await;
    let invalid_json: &[&[u8]] = &[
        b"{} trailing",
        b"{}{}",
        b"\xef\xbb\xbf{}",
        b"{'networkMode': 'none'}",
        br#"{"networkMode": "none",}"#,
        b"NaN",
        b"{\"a\" 1}",
        b"\x00{}",
        b"{}\x00",
    ];
    let wrong_shape: &[&[u8]] = &[b"null", b"0", b"-1", b"true", b"\"text\"", b"[]", b"[{}]"];
    for path in ENDPOINTS {
        for body in invalid_json {
            let answer = send(&app, post(path, JSON, body)).await;
            let what = format!("{} to {path}", String::from_utf8_lossy(body));
            assert_json_error(&answer, 400, &["INVALID_JSON"], &what);
        }
        for body in wrong_shape {
            let answer = send(&app, post(path, JSON, body)).await;
            let what = format!("{} to {path}", String::from_utf8_lossy(body));
            assert_json_error(&answer, 422, &["INVALID_BODY"], &what);
        }
        // Numbers beyond f64: refused, whichever category serde_json gives.
        let answer = send(&app, post(path, JSON, b"1e400")).await;
        let status = answer.status.unwrap_or_default();
        assert!(matches!(status, 400 | 422), "1e400 to {path}: {answer:?}");
        assert_json_error(&answer, status, &["INVALID_JSON", "INVALID_BODY"], "1e400");
        // Bodies that are not JSON, whatever their content type says.
        for (content_type, body) in [
            (
                b"application/json; charset=utf-16".as_slice(),
                b"{\x00}\x00".as_slice(),
            ),
            (b"application/json", b"\x1f\x8b\x08\x00\x00\x00\x00\x00"),
        ] {
            let headers = header("Content-Type", content_type);
            let answer = send(&app, post(path, &headers, body)).await;
            let what = format!("{} to {path}", String::from_utf8_lossy(content_type));
            assert_json_error(&answer, 400, &["INVALID_JSON"], &what);
        }
        for content_type in [
            b"multipart/form-data; boundary=x".as_slice(),
            b"application/jsonx",
            b"application/\xff+json",
            b"",
        ] {
            let headers = header("Content-Type", content_type);
            let answer = send(&app, post(path, &headers, b"{}")).await;
            let what = format!("{} to {path}", String::from_utf8_lossy(content_type));
            assert_json_error(&answer, 415, &["UNSUPPORTED_MEDIA_TYPE"], &what);
        }
    }
    for body in [
        json!({ "networkMode": 7 }),
        json!({ "networkMode": true }),
        json!({ "networkMode": [] }),
        json!({ "networkMode": {} }),
        json!({ "networkMode": 1.5 }),
        json!({ "networkMode": ["none"] }),
    ] {
        let answer = send(&app, post(PROVISION, JSON, body.to_string().as_bytes())).await;
        assert_json_error(&answer, 422, &["INVALID_BODY"], &body.to_string());
    }
    let duplicate = br#"{"networkMode": "none", "networkMode": "none"}"#;
    let answer = send(&app, post(PROVISION, JSON, duplicate)).await;
    assert_json_error(&answer, 422, &["INVALID_BODY"], "duplicate networkMode");
    let long_name = "n".repeat(129);
    for mode in [
        "none\0",
        "\0",
        "bridge\n",
        "none ",
        " none",
        "a b",
        "é",
        "-x",
        "host",
        "container:x",
        long_name.as_str(),
    ] {
        let body = json!({ "networkMode": mode }).to_string();
        let answer = send(&app, post(PROVISION, JSON, body.as_bytes())).await;
        assert_json_error(&answer, 400, &["INVALID_NETWORK_MODE"], &body);
    }
    for path in SESSION_ENDPOINTS {
        for body in [
            json!({ "sessionId": 42 }),
            json!({ "sessionId": true }),
            json!({ "sessionId": [] }),
            json!({ "sessionId": ["abc"] }),
            json!({ "sessionId": {} }),
            json!({ "sessionId": -0.0 }),
        ] {
            let answer = send(&app, post(path, JSON, body.to_string().as_bytes())).await;
            let what = format!("{body} to {path}");
            assert_json_error(&answer, 422, &["INVALID_BODY"], &what);
        }
        let duplicate = br#"{"sessionId": "a", "sessionId": "b"}"#;
        let answer = send(&app, post(path, JSON, duplicate)).await;
        assert_json_error(&answer, 422, &["INVALID_BODY"], "duplicate sessionId");
        for body in [
            json!({ "sessionId": null }),
            json!({ "sessionId": "" }),
            json!({ "SessionId": "abc" }),
            json!({ "session_id": "abc" }),
        ] {
            let answer = send(&app, post(path, JSON, body.to_string().as_bytes())).await;
            let what = format!("{body} to {path}");
            assert_json_error(&answer, 400, &["SESSION_ID_REQUIRED"], &what);
        }
    }
    assert_untouched_then_healthy(&app).await;
}

#[tokio::test]
async fn unicode_and_nul_session_ids_are_refused() {
    let app = spawn_app().await;
    let too_long = "x".repeat(129);
    let long_unicode = "é".repeat(128);
    for path in SESSION_ENDPOINTS {
        // Escaped in JSON, so the body parses and the id is refused.
        for id in [
            "a\0b",
            "\0",
            "é",
            "🙂",
            "\u{202e}abc",
            "ａｂｃ",
            "a\u{200b}b",
            "abc\u{a0}",
            " ",
            "\t",
            "\r\n",
            "\u{7f}",
            too_long.as_str(),
            long_unicode.as_str(),
        ] {
            let body = json!({ "sessionId": id }).to_string();
            let answer = send(&app, post(path, JSON, body.as_bytes())).await;
            let what = format!("{body} to {path}");
            assert_json_error(&answer, 400, &["INVALID_SESSION_ID"], &what);
        }
        // Raw bytes that are not valid JSON strings.
        for body in [
            b"{\"sessionId\": \"a\x00b\"}".as_slice(),
            b"{\"sessionId\": \"a\nb\"}",
            br#"{"sessionId": "\ud800"}"#,
            br#"{"sessionId": "\u00"}"#,
            b"{\"sessionId\": \"\xff\xfe\"}",
            b"{\"sessionId\": \"\xc0\xaf\"}",
            b"{\"sessionId\": \"\xed\xa0\x80\"}",
        ] {
            let answer = send(&app, post(path, JSON, body)).await;
            let what = format!("{} to {path}", String::from_utf8_lossy(body));
            assert_json_error(&answer, 400, &["INVALID_JSON"], &what);
        }
        // A valid header does not excuse an invalid body id, nor the reverse.
        let headers = [JSON, &header("X-Session-Id", b"abc")].concat();
        let answer = send(&app, post(path, &headers, br#"{"sessionId": "\u0000"}"#)).await;
        assert_json_error(&answer, 400, &["INVALID_SESSION_ID"], "NUL body id");
        let headers = [JSON, &header("X-Session-Id", "é".as_bytes())].concat();
        let answer = send(&app, post(path, &headers, br#"{"sessionId": "abc"}"#)).await;
        assert_json_error(&answer, 400, &["INVALID_SESSION_ID"], "é header id");
    }
    for path in ENDPOINTS {
        // Bytes HTTP allows in a header value (obs-text) reach the service.
        for id in [
            b"caf\xe9".as_slice(),
            "é".as_bytes(),
            "🙂".as_bytes(),
            b"\xc0\xaf",
            b"a\tb",
            too_long.as_bytes(),
        ] {
            let headers = [JSON, &header("X-Session-Id", id)].concat();
            let answer = send(&app, post(path, &headers, b"{}")).await;
            let what = format!("X-Session-Id {:?} to {path}", String::from_utf8_lossy(id));
            assert_json_error(&answer, 400, &["INVALID_SESSION_ID"], &what);
        }
        // Control bytes are not HTTP: hyper refuses the head.
        for id in [b"a\x00b".as_slice(), b"\x00", b"a\rb", b"a\x01b", b"a\x7fb"] {
            let headers = [JSON, &header("X-Session-Id", id)].concat();
            let answer = send(&app, post(path, &headers, b"{}")).await;
            let what = format!("X-Session-Id {id:?} to {path}");
            assert_refused_by_hyper(&answer, Some(400), &what);
        }
    }
    assert_untouched_then_healthy(&app).await;
}

#[tokio::test]
async fn malformed_http_is_refused() {
    let app = spawn_app().await;
    let request_line = |line: &str| format!("{line}\r\nHost: a\r\nContent-Length: 2\r\n\r\n{{}}");
    // hyper's own answers.
    for (what, request, status) in [
        ("garbage", b"\x00\x01\x02\xff\r\n\r\n".to_vec(), Some(400)),
        (
            "HTTP/9.9",
            request_line("POST /api/runner/heartbeat HTTP/9.9").into(),
            Some(400),
        ),
        (
            "no version",
            request_line("POST /api/runner/heartbeat").into(),
            Some(400),
        ),
        (
            "space in path",
            request_line("POST /api/ runner HTTP/1.1").into(),
            Some(400),
        ),
        (
            "Content-Length: abc",
            head(HEARTBEAT, b"Content-Length: abc\r\n"),
            Some(400),
        ),
        (
            "Content-Length: -1",
            head(HEARTBEAT, b"Content-Length: -1\r\n"),
            Some(400),
        ),
        (
            "Content-Length beyond u64",
            head(HEARTBEAT, b"Content-Length: 99999999999999999999999\r\n"),
            Some(400),
        ),
        (
            "two Content-Lengths",
            [
                head(HEARTBEAT, b"Content-Length: 2\r\nContent-Length: 3\r\n"),
                b"{}".to_vec(),
            ]
            .concat(),
            Some(400),
        ),
        (
            "folded header",
            post(HEARTBEAT, b"X-Session-Id: a\r\n b\r\n", b"{}"),
            Some(400),
        ),
        (
            "header name with a space",
            post(HEARTBEAT, b"X Session: a\r\n", b"{}"),
            Some(400),
        ),
        (
            "space before colon",
            post(HEARTBEAT, b"X-Session-Id : a\r\n", b"{}"),
            Some(400),
        ),
        (
            "header without colon",
            post(HEARTBEAT, b"X-Session-Id\r\n", b"{}"),
            Some(400),
        ),
        (
            "unknown transfer coding",
            [
                head(HEARTBEAT, b"Transfer-Encoding: gzip\r\n"),
                b"{}".to_vec(),
            ]
            .concat(),
            Some(400),
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            None,
        ),
    ] {
        let answer = send(&app, request).await;
        assert_refused_by_hyper(&answer, status, what);
    }
    // Anything hyper passes on gets a JSON answer.
    let not_found = [
        "/api/runner/provision/",
        "//api/runner/provision",
        "/API/runner/provision",
        "/api/runner/%70rovision",
        "/api/runner/provision%00",
        "/api/runner/provision/../heartbeat",
        "/api/runner/provision;x",
        "*",
    ];
    for path in not_found {
        let answer = send(&app, post(path, JSON, b"{}")).await;
        assert_json_error(&answer, 404, &["NOT_FOUND"], path);
    }
    for method in ["PUT", "DELETE", "PATCH", "post", "FOO", "TRACE"] {
        for path in ENDPOINTS {
            let request = request_line(&format!("{method} {path} HTTP/1.1"));
            let answer = send(&app, request.into()).await;
            let what = format!("{method} {path}");
            assert_json_error(&answer, 405, &["METHOD_NOT_ALLOWED"], &what);
        }
    }
    let cases = [
        (
            "absolute-form target",
            request_line("POST http://evil.example/api/runner/heartbeat HTTP/1.1"),
        ),
        (
            "HTTP/1.0 without Host",
            "POST /api/runner/heartbeat HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}".to_owned(),
        ),
        // hyper reads the chunked body and ignores the Content-Length.
        (
            "Content-Length and chunked",
            format!(
                "{}2\r\n{{}}\r\n0\r\n\r\n",
                String::from_utf8(head(
                    HEARTBEAT,
                    b"Content-Length: 100\r\nTransfer-Encoding: chunked\r\n"
                ))
                .unwrap()
            ),
        ),
    ];
    for (what, request) in cases {
        let answer = send(&app, request.into()).await;
        assert_json_error(&answer, 400, &["SESSION_ID_REQUIRED"], what);
    }
    let bad_chunk = [
        head(HEARTBEAT, b"Transfer-Encoding: chunked\r\n"),
        b"zz\r\n{}\r\n0\r\n\r\n".to_vec(),
    ]
    .concat();
    let answer = send(&app, bad_chunk).await;
    assert_json_error(&answer, 400, &["INVALID_JSON"], "malformed chunk");
    assert_untouched_then_healthy(&app).await;
}

#[tokio::test]
async fn pipelined_bad_requests_are_answered_in_order() {
    let app = spawn_app().await;
    let requests = [
        (post(PROVISION, JSON, b"{"), "INVALID_JSON"),
        (post(HEARTBEAT, JSON, b"{}"), "SESSION_ID_REQUIRED"),
        (
            post(DEPROVISION, JSON, br#"{"sessionId": 1}"#),
            "INVALID_BODY",
        ),
        (
            post(PROVISION, &header("X-Session-Id", b"a b"), b""),
            "INVALID_SESSION_ID",
        ),
        (
            post(HEARTBEAT, JSON, br#"{"sessionId": "nobody"}"#),
            "RUNNER_NOT_FOUND",
        ),
        (post("/nowhere", JSON, b"{}"), "NOT_FOUND"),
    ];
    let rounds = 20;
    let stream: Vec<u8> = (0..rounds)
        .flat_map(|_| requests.iter().flat_map(|(request, _)| request.clone()))
        .collect();
    let mut raw = Raw::open(&app, at_once(stream)).await;
    for round in 0..rounds {
        for (_, code) in &requests {
            let answer = raw.answer().await;
            let status = answer.status.unwrap_or_default();
            assert!((400..500).contains(&status), "round {round}: {answer:?}");
            assert_eq!(answer.error(), *code, "round {round}: {answer:?}");
        }
    }
    assert_untouched_then_healthy(&app).await;
}

#[tokio::test]
async fn slow_clients_are_cut_off_after_the_request_timeout() {
    let app = spawn_app_timing_out().await;
    let drip = |first: Vec<u8>, each: &[u8], every: Duration| -> Vec<Chunk> {
        let mut chunks = at_once(first);
        chunks.extend((0..200).map(|_| (every, each.to_vec())));
        chunks
    };
    let partial_body = |path: &str| {
        let mut request = head(path, &[JSON, b"Content-Length: 100\r\n"].concat());
        request.extend_from_slice(br#"{"sessionId": "ab"#);
        request
    };
    // The service answers these: their heads are complete.
    let mut answered: Vec<(String, Vec<Chunk>)> = ENDPOINTS
        .iter()
        .map(|path| {
            (
                format!("body stalls after 16 bytes ({path})"),
                at_once(partial_body(path)),
            )
        })
        .collect();
    answered.push((
        "body sent a byte every 250 ms".into(),
        drip(
            head(HEARTBEAT, &[JSON, b"Content-Length: 1000\r\n"].concat()),
            b" ",
            Duration::from_millis(250),
        ),
    ));
    answered.push((
        "chunked body stalls after one chunk".into(),
        at_once(
            [
                head(
                    PROVISION,
                    &[JSON, b"Transfer-Encoding: chunked\r\n"].concat(),
                ),
                b"1\r\n{\r\n".to_vec(),
            ]
            .concat(),
        ),
    ));
    // hyper closes these: their heads never end.
    let closed: Vec<(String, Vec<Chunk>)> = vec![
        (
            "half a request line".into(),
            at_once("POST /api/runner/prov"),
        ),
        (
            "head without its blank line".into(),
            at_once(format!(
                "POST {PROVISION} HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
            )),
        ),
        (
            "a header line every 250 ms".into(),
            drip(
                format!("POST {HEARTBEAT} HTTP/1.1\r\n").into_bytes(),
                b"X-Padding: x\r\n",
                Duration::from_millis(250),
            ),
        ),
        (
            "a byte of the request line every 250 ms".into(),
            drip(b"P".to_vec(), b"O", Duration::from_millis(250)),
        ),
        ("nothing at all".into(), Vec::new()),
        ("half the HTTP/2 preface".into(), at_once("PRI * HT")),
    ];
    let run = |cases: Vec<(String, Vec<Chunk>)>| {
        join_all(cases.into_iter().map(|(what, chunks)| {
            let app = &app;
            async move { (what, Raw::open(app, chunks).await.answer().await) }
        }))
    };
    let (answered, closed) = tokio::join!(run(answered), run(closed));
    for (what, answer) in &answered {
        eprintln!("{what}: {:?} after {:?}", answer.status, answer.elapsed);
        assert_eq!(answer.status, Some(408), "{what}: {answer:?}");
        assert_eq!(answer.error(), "REQUEST_TIMEOUT", "{what}: {answer:?}");
        assert_cut_off_on_time(answer, what);
    }
    for (what, answer) in &closed {
        eprintln!("{what}: closed after {:?}", answer.elapsed);
        assert_eq!(answer.status, None, "{what}: {answer:?}");
        assert_cut_off_on_time(answer, what);
    }
    assert_untouched_then_healthy(&app).await;
}

#[tokio::test]
async fn stalled_connections_do_not_starve_the_service() {
    let app = spawn_app_timing_out().await;
    let mut stalled = Vec::new();
    for i in 0..300 {
        let request = if i % 3 == 0 {
            b"POST /api/runner/heart".to_vec()
        } else {
            head(HEARTBEAT, &[JSON, b"Content-Length: 100\r\n"].concat())
        };
        stalled.push(Raw::open(&app, at_once(request)).await);
    }
    // While they stall, others are served at once.
    let api = unpooled(&app);
    let started = Instant::now();
    let health = api.get("/healthz").await;
    assert_eq!(health.status, 200, "{health:?}");
    let heartbeat = api.heartbeat("nobody").await;
    assert_eq!(heartbeat.error(), "RUNNER_NOT_FOUND", "{heartbeat:?}");
    assert!(
        started.elapsed() < PROMPT,
        "served after {:?}",
        started.elapsed()
    );
    let answers = join_all(stalled.iter_mut().map(Raw::answer)).await;
    for (i, answer) in answers.iter().enumerate() {
        let expected = if i % 3 == 0 { None } else { Some(408) };
        assert_eq!(answer.status, expected, "connection {i}: {answer:?}");
        assert!(
            answer.elapsed < REQUEST_TIMEOUT + SLACK,
            "connection {i}: {answer:?}"
        );
    }
    assert_untouched_then_healthy(&app).await;
}

/// Whether the service would start a runner for this provision body (it
/// must not in these tests): an empty body, or an object whose
/// `networkMode` is absent, empty or a valid mode.
fn would_provision(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Provision {
        network_mode: Option<String>,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return true;
    }
    serde_json::from_slice::<Provision>(body).is_ok_and(|request| {
        request
            .network_mode
            .is_none_or(|mode| mode.is_empty() || mode.parse::<NetworkMode>().is_ok())
    })
}

fn json_values() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        // Near-valid session ids and network modes.
        "[ -~]{0,130}".prop_map(Value::String),
        Just(Value::String("none".into())),
    ];
    let key = prop_oneof![
        Just("sessionId".to_owned()),
        Just("networkMode".to_owned()),
        any::<String>(),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        json_values().prop_map(|value| serde_json::to_vec(&value).unwrap()),
    ]
}

/// Any body, as JSON, to any endpoint: never a 5xx, always a 4xx JSON error
/// (bodies that would start a runner are left out).
#[test]
fn arbitrary_bodies_get_a_json_4xx() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(spawn_app());
    let config = Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let inputs = (prop::sample::select(ENDPOINTS.to_vec()), bodies());
    let result = runner.run(&inputs, |(path, body)| {
        if path == PROVISION && would_provision(&body) {
            return Err(TestCaseError::reject("would start a runner"));
        }
        let reply = runtime.block_on(
            app.api.send(
                app.api
                    .post(path)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone()),
            ),
        );
        let what = format!("{path} {:?}", String::from_utf8_lossy(&body));
        prop_assert!((400..500).contains(&reply.status), "{what}: {reply:?}");
        prop_assert!(!reply.error().is_empty(), "{what}: {reply:?}");
        prop_assert!(!reply.message().is_empty(), "{what}: {reply:?}");
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    runtime.block_on(assert_untouched_then_healthy(&app));
}
