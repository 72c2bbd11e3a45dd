//! Engine.io v4 (the transport under Socket.IO) as the real runner's
//! Socket.IO server speaks it with `cors: { origin: true }`, far enough for a
//! client to connect and for a proxy in between to be tested: the polling
//! handshake, the websocket transport (open packet, probe, upgrade, pings)
//! and an echo of every message.
//!
//! A stand-in, not a server: sids are not remembered (any sid is accepted),
//! a poll is answered at once with a noop (`6`) where a real server holds it
//! until it has a packet, and a client that stops answering pings is not
//! dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::http::{Request, Response};
use crate::ws::Message;

/// Socket.IO's default path.
pub const PATH: &str = "/socket.io/";

/// Socket.IO's defaults; the interval can be shortened for tests
/// (`TEST_RUNNER_PING_INTERVAL_MS`).
pub const PING_INTERVAL: Duration = Duration::from_millis(25_000);
const PING_TIMEOUT_MS: u64 = 20_000;
const MAX_PAYLOAD: u64 = 1_000_000;

/// The open packet (`0` + handshake JSON) of a new session.
pub fn open_packet(sid: &str, ping_interval: Duration) -> String {
    format!(
        r#"0{{"sid":"{sid}","upgrades":["websocket"],"pingInterval":{},"pingTimeout":{PING_TIMEOUT_MS},"maxPayload":{MAX_PAYLOAD}}}"#,
        ping_interval.as_millis()
    )
}

/// A session id of 20 characters, unique in this process and hard to guess.
pub fn new_sid() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = std::collections::hash_map::RandomState::new();
    let mut hasher = random.build_hasher();
    hasher.write_u64(count);
    let high = hasher.finish();
    hasher.write_u64(std::process::id().into());
    let low = hasher.finish();
    format!("{high:016x}{low:016x}")[..20].to_owned()
}

/// What a websocket-transport session sends first: the open packet, unless
/// the client upgrades a polling session (`sid` in the query).
pub fn greeting(request: &Request, ping_interval: Duration) -> Option<Message> {
    match request.query("sid") {
        Some(_) => None,
        None => Some(Message::Text(open_packet(&new_sid(), ping_interval))),
    }
}

/// The answer to a message on the websocket transport: `2probe` → `3probe`,
/// ping `2` → pong `3`, upgrade `5` and pong `3` need none, and everything
/// else (`42["echo",…]`, any text or binary frame) comes back verbatim.
pub fn reply(message: Message) -> Option<Message> {
    match &message {
        Message::Text(text) => match text.as_str() {
            "2probe" => Some(Message::Text("3probe".to_owned())),
            "2" => Some(Message::Text("3".to_owned())),
            "3" | "5" => None,
            _ => Some(message),
        },
        _ => Some(message),
    }
}

/// An HTTP request to [`PATH`]: the CORS preflight, the polling handshake,
/// a poll, and a POST of packets.
pub fn polling(request: &Request, ping_interval: Duration) -> Response {
    if request.method == "OPTIONS" {
        return preflight(request);
    }
    let response = if request.query("EIO") != Some("4") {
        error(5, "Unsupported protocol version")
    } else if request.query("transport") != Some("polling") {
        error(0, "Transport unknown")
    } else {
        match (request.method.as_str(), request.query("sid")) {
            ("GET", None) => Response::new(
                "200 OK",
                "text/plain; charset=UTF-8",
                open_packet(&new_sid(), ping_interval),
            ),
            ("GET", Some(_)) => Response::new("200 OK", "text/plain; charset=UTF-8", "6"),
            ("POST", Some(_)) => Response::new("200 OK", "text/html", "ok"),
            _ => error(3, "Bad request"),
        }
    };
    allow_origin(request, response)
}

/// engine.io's error answer.
fn error(code: u8, message: &str) -> Response {
    Response::new(
        "400 Bad Request",
        "application/json",
        format!(r#"{{"code":{code},"message":"{message}"}}"#),
    )
}

/// What the `cors` middleware adds with `origin: true`: the request's origin
/// reflected (nothing without one), and `Vary: Origin`.
fn allow_origin(request: &Request, response: Response) -> Response {
    with_origin(request, response).header("Vary", "Origin")
}

fn with_origin(request: &Request, response: Response) -> Response {
    match request.header("origin") {
        Some(origin) => response.header("Access-Control-Allow-Origin", origin),
        None => response,
    }
}

/// The `cors` middleware's preflight answer: `204`, its default methods, and
/// the requested headers reflected.
fn preflight(request: &Request) -> Response {
    let response = with_origin(request, Response::empty("204 No Content")).header(
        "Access-Control-Allow-Methods",
        "GET,HEAD,PUT,PATCH,POST,DELETE",
    );
    match request.header("access-control-request-headers") {
        Some(headers) => response
            .header("Access-Control-Allow-Headers", headers)
            .header("Vary", "Origin, Access-Control-Request-Headers"),
        None => response.header("Vary", "Origin"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(wire: &str) -> Request {
        Request::read(&mut wire.as_bytes()).unwrap()
    }

    fn written(response: Response) -> String {
        let mut wire = Vec::new();
        response.write_to(&mut wire).unwrap();
        String::from_utf8(wire).unwrap()
    }

    #[test]
    fn open_packet_has_socket_io_defaults() {
        assert_eq!(
            open_packet("abc", PING_INTERVAL),
            r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
        let (one, two) = (new_sid(), new_sid());
        assert_eq!(one.len(), 20);
        assert_ne!(one, two);
    }

    #[test]
    fn answers_probe_and_ping_and_echoes_the_rest() {
        let text = |text: &str| Message::Text(text.to_owned());
        assert_eq!(reply(text("2probe")), Some(text("3probe")));
        assert_eq!(reply(text("2")), Some(text("3")));
        assert_eq!(reply(text("5")), None);
        assert_eq!(reply(text("3")), None);
        for echoed in [r#"42["echo",{"n":1}]"#, "40", "hello"] {
            assert_eq!(reply(text(echoed)), Some(text(echoed)));
        }
        assert_eq!(
            reply(Message::Binary(vec![0, 1])),
            Some(Message::Binary(vec![0, 1]))
        );
    }

    #[test]
    fn polling_handshake_reflects_the_origin() {
        let wire = written(polling(
            &request(
                "GET /socket.io/?EIO=4&transport=polling&t=x HTTP/1.1\r\nOrigin: http://a.test:4200\r\n\r\n",
            ),
            PING_INTERVAL,
        ));
        assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
        assert!(
            wire.contains("Content-Type: text/plain; charset=UTF-8\r\n"),
            "{wire}"
        );
        assert!(
            wire.contains("Access-Control-Allow-Origin: http://a.test:4200\r\n"),
            "{wire}"
        );
        assert!(wire.contains("Vary: Origin\r\n"), "{wire}");
        assert!(wire.contains("\r\n\r\n0{\"sid\":\""), "{wire}");

        let wire = written(polling(
            &request(
                "POST /socket.io/?EIO=4&transport=polling&sid=s HTTP/1.1\r\nContent-Length: 2\r\n\r\n40",
            ),
            PING_INTERVAL,
        ));
        assert!(
            wire.ends_with("\r\n\r\nok") && !wire.contains("Allow-Origin"),
            "{wire}"
        );

        let wire = written(polling(
            &request("GET /socket.io/?EIO=3&transport=polling HTTP/1.1\r\n\r\n"),
            PING_INTERVAL,
        ));
        assert!(
            wire.starts_with("HTTP/1.1 400") && wire.contains(r#"{"code":5,"#),
            "{wire}"
        );
    }

    #[test]
    fn preflight_as_the_cors_middleware_answers_it() {
        let wire = written(polling(
            &request(
                "OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nOrigin: http://a.test\r\n\
                 Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n",
            ),
            PING_INTERVAL,
        ));
        assert!(wire.starts_with("HTTP/1.1 204 No Content\r\n"), "{wire}");
        for header in [
            "Access-Control-Allow-Origin: http://a.test",
            "Access-Control-Allow-Methods: GET,HEAD,PUT,PATCH,POST,DELETE",
            "Access-Control-Allow-Headers: content-type",
            "Vary: Origin, Access-Control-Request-Headers",
            "Content-Length: 0",
        ] {
            assert!(
                wire.contains(&format!("{header}\r\n")),
                "{header} missing: {wire}"
            );
        }
    }
}
