//! Egress probes: what code inside a runner can reach, asked over HTTP so
//! that the egress tests see it with real packets from the runner's own
//! network namespace.
//!
//! - `GET /probe/tcp?addr=IP:PORT` (IPv6 as `[addr]:port`): a TCP connect
//!   (2 s), an HTTP request written, up to 256 bytes read (2 s); answers
//!   `{"ok":true,"reply":"…"}` or `{"ok":false,"error":"…"}`.
//! - `GET /probe/dns?name=NAME`: an A query over UDP to the first
//!   `nameserver` of `/etc/resolv.conf` (2 s); answers
//!   `{"ok":true,"addresses":["1.2.3.4"]}` or `{"ok":false,"error":"…"}`.
//!   The query is encoded and parsed here: glibc's resolver in a static
//!   binary in a `FROM scratch` image is unreliable.
//!
//! - `GET /probe/connect?addr=IP:PORT&count=N` (N from 1 to 1000, default
//!   20): N TCP connections set up and closed one after another, each timed
//!   from `connect` to established; answers `{"ok":true,"micros":[…]}` or the
//!   first failure. The benchmark times connection setup through the egress
//!   rules with it, inside the runner's own namespace.
//!
//! All of them always answer 200: the outcome is in the body.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

/// The JSON body for `/probe/tcp` or `/probe/dns`, or `None` for any other
/// path. `query` reads a raw query parameter.
pub fn answer(path: &str, query: impl Fn(&str) -> Option<String>) -> Option<String> {
    let outcome = match path {
        "/probe/tcp" => match query("addr").as_deref().map(percent_decode) {
            Some(addr) => tcp(&addr).map(|reply| format!("\"reply\":{}", json_string(&reply))),
            None => Err("missing addr".to_owned()),
        },
        "/probe/dns" => match query("name").as_deref().map(percent_decode) {
            Some(name) => dns(&name).map(|addresses| {
                let list: Vec<String> = addresses
                    .iter()
                    .map(|a| json_string(&a.to_string()))
                    .collect();
                format!("\"addresses\":[{}]", list.join(","))
            }),
            None => Err("missing name".to_owned()),
        },
        "/probe/connect" => match query("addr").as_deref().map(percent_decode) {
            Some(addr) => {
                let count = query("count").map_or(Ok(20), |count| match count.parse() {
                    Ok(n @ 1..=1000) => Ok(n),
                    _ => Err(format!("bad count {count:?} (want 1 to 1000)")),
                });
                count
                    .and_then(|count| connect_times(&addr, count))
                    .map(|micros| {
                        let list: Vec<String> = micros.iter().map(u128::to_string).collect();
                        format!("\"micros\":[{}]", list.join(","))
                    })
            }
            None => Err("missing addr".to_owned()),
        },
        _ => return None,
    };
    Some(match outcome {
        Ok(fields) => format!("{{\"ok\":true,{fields}}}"),
        Err(error) => format!("{{\"ok\":false,\"error\":{}}}", json_string(&error)),
    })
}

/// Connects, writes [`PROBE`], reads what comes back (up to 256 bytes).
/// What a TCP probe sends: an HTTP request, which the stand-in hosts (any
/// line) and HTTP servers (the runner's own port among them) both answer.
pub const PROBE: &[u8] = b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n";

pub fn tcp(addr: &str) -> Result<String, String> {
    let target: SocketAddr = addr
        .parse()
        .map_err(|_| format!("bad address {addr:?} (want IP:PORT or [IPv6]:PORT)"))?;
    let mut stream =
        TcpStream::connect_timeout(&target, TIMEOUT).map_err(|e| describe("connect", &e))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| describe("set timeout", &e))?;
    stream.write_all(PROBE).map_err(|e| describe("write", &e))?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 256];
    while reply.len() < 256 {
        match stream.read(&mut buffer[..256 - reply.len()]) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buffer[..n]),
            // What arrived before the timeout is the reply; nothing at all is
            // a failure.
            Err(e) if reply.is_empty() => return Err(describe("read", &e)),
            Err(_) => break,
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// How long each of `count` TCP connections to `addr` took to set up, in
/// microseconds; each is closed before the next.
pub fn connect_times(addr: &str, count: u32) -> Result<Vec<u128>, String> {
    let target: SocketAddr = addr
        .parse()
        .map_err(|_| format!("bad address {addr:?} (want IP:PORT or [IPv6]:PORT)"))?;
    (0..count)
        .map(|_| {
            let began = std::time::Instant::now();
            let stream = TcpStream::connect_timeout(&target, TIMEOUT)
                .map_err(|e| describe("connect", &e))?;
            let took = began.elapsed().as_micros();
            drop(stream);
            Ok(took)
        })
        .collect()
}

/// An A query to the first nameserver of /etc/resolv.conf.
pub fn dns(name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let conf = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("read /etc/resolv.conf: {e}"))?;
    let server = first_nameserver(&conf).ok_or("no nameserver in /etc/resolv.conf")?;
    let bind: SocketAddr = match server {
        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
    };
    let socket = UdpSocket::bind(bind).map_err(|e| describe("bind", &e))?;
    socket
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| describe("set timeout", &e))?;
    socket
        .connect((server, 53))
        .map_err(|e| describe(&format!("connect to {server}:53"), &e))?;
    let id = query_id();
    let query = encode_query(id, name)?;
    socket
        .send(&query)
        .map_err(|e| describe(&format!("send to {server}:53"), &e))?;
    let mut buffer = [0u8; 1500];
    loop {
        let n = socket
            .recv(&mut buffer)
            .map_err(|e| describe(&format!("receive from {server}:53"), &e))?;
        match parse_response(id, &buffer[..n]) {
            // A stray datagram of another id: keep waiting.
            Err(ParseError::OtherId) => continue,
            Err(ParseError::Bad(reason)) => return Err(format!("from {server}: {reason}")),
            Ok(addresses) if addresses.is_empty() => {
                return Err(format!("{server} answered no A record"));
            }
            Ok(addresses) => return Ok(addresses),
        }
    }
}

fn describe(what: &str, error: &std::io::Error) -> String {
    let kind = match error.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout",
        ErrorKind::ConnectionReset => "reset",
        ErrorKind::HostUnreachable => "host unreachable",
        ErrorKind::NetworkUnreachable => "network unreachable",
        _ => "error",
    };
    format!("{what} {kind}: {error}")
}

fn query_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}

/// The first `nameserver` line's address.
pub fn first_nameserver(conf: &str) -> Option<IpAddr> {
    conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "nameserver")
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// A standard query (recursion desired) for the A records of `name`.
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut packet = Vec::with_capacity(32 + name.len());
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00]); // RD
    packet.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("bad name {name:?}"));
        }
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    Ok(packet)
}

#[derive(Debug, PartialEq)]
pub enum ParseError {
    /// The answer of another query.
    OtherId,
    Bad(String),
}

/// The A records of a response to query `id`.
pub fn parse_response(id: u16, packet: &[u8]) -> Result<Vec<Ipv4Addr>, ParseError> {
    let bad = |reason: &str| ParseError::Bad(reason.to_owned());
    if packet.len() < 12 {
        return Err(bad("short response"));
    }
    if u16::from_be_bytes([packet[0], packet[1]]) != id {
        return Err(ParseError::OtherId);
    }
    if packet[2] & 0x80 == 0 {
        return Err(bad("not a response"));
    }
    let rcode = packet[3] & 0x0f;
    if rcode != 0 {
        let name = match rcode {
            1 => "FORMERR",
            2 => "SERVFAIL",
            3 => "NXDOMAIN",
            4 => "NOTIMP",
            5 => "REFUSED",
            _ => "error",
        };
        return Err(ParseError::Bad(format!("rcode {rcode} ({name})")));
    }
    let questions = u16::from_be_bytes([packet[4], packet[5]]);
    let answers = u16::from_be_bytes([packet[6], packet[7]]);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(packet, at).ok_or_else(|| bad("truncated question"))? + 4;
    }
    let mut addresses = Vec::new();
    for _ in 0..answers {
        at = skip_name(packet, at).ok_or_else(|| bad("truncated answer"))?;
        let fixed = packet
            .get(at..at + 10)
            .ok_or_else(|| bad("truncated answer"))?;
        let kind = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let length = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        at += 10;
        let data = packet
            .get(at..at + length)
            .ok_or_else(|| bad("truncated record data"))?;
        if kind == 1 && class == 1 && length == 4 {
            addresses.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += length;
    }
    Ok(addresses)
}

/// The offset just past the name at `at` (labels, or a compression pointer).
fn skip_name(packet: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let length = *packet.get(at)?;
        match length {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => {
                packet.get(at + 1)?;
                return Some(at + 2);
            }
            l => at += 1 + l as usize,
        }
    }
}

/// `%XX` escapes decoded (brackets and colons of an address may come escaped).
pub fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn encodes_an_a_query() {
        let packet = encode_query(0xabcd, "example.com.").unwrap();
        assert_eq!(
            packet,
            [
                0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p',
                b'l', b'e', 3, b'c', b'o', b'm', 0, 0, 1, 0, 1
            ]
        );
        assert!(encode_query(1, "a..b").is_err());
        assert!(encode_query(1, &"x".repeat(64)).is_err());
    }

    /// A response as a server writes it: the question echoed, a CNAME, then
    /// two A records with compressed names.
    fn response(id: u16, rcode: u8) -> Vec<u8> {
        let mut packet = encode_query(id, "example.com").unwrap();
        packet[2] = 0x81;
        packet[3] = 0x80 | rcode;
        packet[7] = 3; // three answers
        // CNAME example.com -> a.example.com
        packet.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4, 1, b'a', 0xc0, 12]);
        for last in [1u8, 2] {
            packet.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 11, 11, 11]);
            packet.push(last);
        }
        packet
    }

    #[test]
    fn parses_a_records_and_skips_others() {
        assert_eq!(
            parse_response(7, &response(7, 0)),
            Ok(vec![
                Ipv4Addr::new(11, 11, 11, 1),
                Ipv4Addr::new(11, 11, 11, 2)
            ])
        );
    }

    #[test]
    fn refuses_errors_other_ids_and_truncation() {
        assert_eq!(parse_response(8, &response(7, 0)), Err(ParseError::OtherId));
        assert_eq!(
            parse_response(7, &response(7, 3)),
            Err(ParseError::Bad("rcode 3 (NXDOMAIN)".to_owned()))
        );
        let whole = response(7, 0);
        assert!(matches!(
            parse_response(7, &whole[..whole.len() - 2]),
            Err(ParseError::Bad(_))
        ));
        assert!(matches!(
            parse_response(7, &whole[..5]),
            Err(ParseError::Bad(_))
        ));
        let query = encode_query(7, "example.com").unwrap();
        assert_eq!(
            parse_response(7, &query),
            Err(ParseError::Bad("not a response".to_owned()))
        );
    }

    #[test]
    fn reads_the_first_nameserver() {
        let conf = "# comment\nsearch x\nnameserver 11.11.11.11\nnameserver 8.8.8.8\n";
        assert_eq!(first_nameserver(conf), Some("11.11.11.11".parse().unwrap()));
        assert_eq!(
            first_nameserver("nameserver ::1\n"),
            Some("::1".parse().unwrap())
        );
        assert_eq!(first_nameserver("search x\n"), None);
    }

    #[test]
    fn a_query_round_trips_through_a_udp_server() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            let (n, from) = server.recv_from(&mut buffer).unwrap();
            let mut reply = buffer[..n].to_vec();
            reply[2] |= 0x80;
            reply[7] = 1;
            reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 11, 11, 11, 11]);
            server.send_to(&reply, from).unwrap();
        });
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(address).unwrap();
        client
            .send(&encode_query(42, "anything.test").unwrap())
            .unwrap();
        let mut buffer = [0u8; 512];
        let n = client.recv(&mut buffer).unwrap();
        assert_eq!(
            parse_response(42, &buffer[..n]),
            Ok(vec![Ipv4Addr::new(11, 11, 11, 11)])
        );
    }

    #[test]
    fn tcp_probe_reads_the_reply_and_names_failures() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut line = vec![0u8; PROBE.len()];
            stream.read_exact(&mut line).unwrap();
            assert_eq!(line, PROBE);
            stream.write_all(b"public\n").unwrap();
        });
        assert_eq!(tcp(&format!("127.0.0.1:{port}")), Ok("public\n".to_owned()));
        // The listener is gone: refused.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let error = tcp(&format!("127.0.0.1:{closed_port}")).unwrap_err();
        assert!(error.contains("refused"), "{error}");
        assert!(tcp("nonsense").unwrap_err().contains("bad address"));
    }

    #[test]
    fn connect_probe_times_each_connection_and_names_failures() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = std::thread::spawn(move || {
            let connections: Vec<_> = (0..3).map(|_| listener.accept().unwrap()).collect();
            connections.len()
        });
        let body = answer("/probe/connect", |key| match key {
            "addr" => Some(addr.clone()),
            "count" => Some("3".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(accepted.join().unwrap(), 3);
        let micros = body
            .strip_prefix("{\"ok\":true,\"micros\":[")
            .and_then(|rest| rest.strip_suffix("]}"))
            .unwrap_or_else(|| panic!("{body}"));
        assert_eq!(
            micros
                .split(',')
                .filter(|m| m.parse::<u64>().is_ok())
                .count(),
            3,
            "{body}"
        );
        let bad = answer("/probe/connect", |key| match key {
            "addr" => Some("127.0.0.1:1".to_owned()),
            "count" => Some("0".to_owned()),
            _ => None,
        })
        .unwrap();
        assert!(bad.contains("bad count"), "{bad}");
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        assert!(
            connect_times(&closed_addr, 2)
                .unwrap_err()
                .contains("refused")
        );
    }

    #[test]
    fn answers_json_with_decoded_parameters() {
        let body = answer("/probe/tcp", |key| {
            (key == "addr").then(|| "%5B%3A%3A1%5D%3A1".to_owned())
        })
        .unwrap();
        assert!(
            body.starts_with("{\"ok\":false,\"error\":\"connect "),
            "{body}"
        );
        assert_eq!(
            answer("/probe/dns", |_| None).unwrap(),
            "{\"ok\":false,\"error\":\"missing name\"}"
        );
        assert_eq!(answer("/other", |_| None), None);
        assert_eq!(percent_decode("%5b1%3A2%5D+x%zz"), "[1:2] x%zz");
        assert_eq!(json_string("a\"b\\\n\u{1}"), "\"a\\\"b\\\\\\n\\u0001\"");
    }
}
