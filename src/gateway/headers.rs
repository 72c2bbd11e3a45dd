//! The headers a proxy must change: hop-by-hop headers end at each hop
//! (RFC 9110 7.6.1), except the upgrade a WebSocket handshake asks for, and
//! the runner learns who asked through the `X-Forwarded-*` headers.

use std::net::IpAddr;

use axum::http::header::{CONNECTION, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use axum::http::{HeaderMap, HeaderName, HeaderValue};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers that `Connection` need not name.
const HOP_BY_HOP: [&str; 4] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Removes the hop-by-hop headers, and returns the `Upgrade` asked for
/// (`Connection: upgrade` with an `Upgrade` header), put back so that the
/// next hop sees the same handshake.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let upgrade = named
        .contains(&UPGRADE)
        .then(|| headers.get(UPGRADE).cloned())
        .flatten();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    if let Some(protocol) = &upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol.clone());
    }
    upgrade
}

/// Appends the client's address to `X-Forwarded-For` (a proxy in front
/// has put its own client's there), and says how and under which host the
/// client reached the gateway.
pub fn add_forwarded(headers: &mut HeaderMap, client: Option<IpAddr>, scheme: &'static str) {
    if let Some(client) = client {
        let earlier: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        let value = if earlier.is_empty() {
            client.to_string()
        } else {
            format!("{}, {client}", earlier.join(", "))
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    match headers.get(HOST).cloned() {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "websocket"),
            ("content-type", "text/plain"),
            ("cookie", "io=1"),
        ]);
        assert_eq!(strip_hop_by_hop(&mut map), None);
        let left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type", "cookie"]);
    }

    #[test]
    fn a_websocket_handshake_keeps_its_upgrade() {
        let mut map = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ]);
        let upgrade = strip_hop_by_hop(&mut map);
        assert_eq!(upgrade, Some(HeaderValue::from_static("websocket")));
        assert_eq!(map[CONNECTION], "upgrade");
        assert_eq!(map[UPGRADE], "websocket");
        assert_eq!(map["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn forwarded_headers_append_the_client_and_name_scheme_and_host() {
        let mut map = headers(&[
            ("host", "t.runners.localhost:3001"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "gopher"),
        ]);
        add_forwarded(&mut map, Some(IpAddr::from([10, 0, 0, 1])), "https");
        assert_eq!(map[X_FORWARDED_FOR], "203.0.113.7, 198.51.100.2, 10.0.0.1");
        assert_eq!(map.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(map[X_FORWARDED_PROTO], "https");
        assert_eq!(map[X_FORWARDED_HOST], "t.runners.localhost:3001");

        let mut bare = headers(&[("x-forwarded-host", "forged")]);
        add_forwarded(&mut bare, Some(IpAddr::from([127, 0, 0, 1])), "http");
        assert_eq!(bare[X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(bare.get(X_FORWARDED_HOST), None);
    }
}
