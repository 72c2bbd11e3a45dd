//! `orchestrator healthcheck`: the container image's `HEALTHCHECK`. The
//! runtime image has no shell and no curl, so the binary checks itself: one
//! `GET /healthz` to the service's own port over a plain TCP connection, with
//! a short deadline. Exit 0 on a 2xx answer, 1 on anything else.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::Settings;

/// The path the check requests.
pub const PATH: &str = "/healthz";
/// The whole check (connect, send, read the status line) must fit in this.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Checks the service these settings describe and prints one line saying what
/// was found (Docker keeps it in the container's health log).
pub fn run(settings: &Settings) -> ExitCode {
    let address = target(settings.listen_address, settings.port);
    match check(address, TIMEOUT) {
        Ok(status) if (200..300).contains(&status) => {
            println!("healthy: GET http://{address}{PATH} answered {status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("unhealthy: GET http://{address}{PATH} answered {status}");
            ExitCode::FAILURE
        }
        Err(error) => {
            println!("unhealthy: GET http://{address}{PATH}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Where the service is reached from its own host or container: the loopback
/// address when it listens on all addresses, else the address it listens on.
pub fn target(listen_address: IpAddr, port: u16) -> SocketAddr {
    let ip = match listen_address {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, port)
}

/// Sends `GET /healthz` to `address` and returns the HTTP status of the
/// answer; an error if there is no well-formed answer within `timeout`.
pub fn check(address: SocketAddr, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|error| format!("cannot connect: {error}"))?;
    let io_error = |error: std::io::Error| match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no answer within {} ms", timeout.as_millis())
        }
        _ => error.to_string(),
    };
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(io_error)?;
    write!(
        stream,
        "GET {PATH} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: orchestrator-healthcheck\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n"
    )
    .map_err(io_error)?;
    // Only the status line matters; it is read with the remaining time as
    // the deadline of every read, so a slow server cannot stretch the check.
    let mut head = Vec::with_capacity(128);
    let mut buffer = [0u8; 128];
    while !head.windows(2).any(|pair| pair == b"\r\n") {
        if head.len() > 1024 {
            return Err("status line longer than 1 KiB".to_owned());
        }
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(io_error)?;
        match stream.read(&mut buffer).map_err(io_error)? {
            0 => break,
            read => head.extend_from_slice(&buffer[..read]),
        }
    }
    parse_status_line(&head)
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
        .ok_or_else(|| "no answer in time".to_owned())
}

/// `HTTP/1.1 200 OK\r\n...` → 200.
fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(version), Some(code))
            if version.starts_with("HTTP/")
                && code.len() == 3
                && code.bytes().all(|b| b.is_ascii_digit()) =>
        {
            code.parse()
                .map_err(|_| format!("not an HTTP answer: {line:?}"))
        }
        _ if line.is_empty() => Err("connection closed without an answer".to_owned()),
        _ => Err(format!("not an HTTP answer: {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    use super::*;

    /// A one-shot server that answers `response` and hands back the request
    /// line it received.
    fn serve_once(response: &'static [u8]) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let mut stream = stream;
            stream.write_all(response).unwrap();
            request_line
        });
        (address, handle)
    }

    #[test]
    fn requests_healthz_and_reads_the_status() {
        let (address, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}");
        assert_eq!(check(address, TIMEOUT), Ok(200));
        assert_eq!(server.join().unwrap(), "GET /healthz HTTP/1.1\r\n");
    }

    #[test]
    fn reports_a_non_2xx_status() {
        let (address, server) = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(check(address, TIMEOUT), Ok(503));
        server.join().unwrap();
    }

    #[test]
    fn refuses_what_is_not_http() {
        let (address, server) = serve_once(b"SSH-2.0-OpenSSH\r\n");
        assert!(check(address, TIMEOUT).is_err());
        server.join().unwrap();
        let (address, server) = serve_once(b"");
        let error = check(address, TIMEOUT).unwrap_err();
        assert!(error.contains("without an answer"), "{error}");
        server.join().unwrap();
    }

    #[test]
    fn fails_fast_without_a_server() {
        let address = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let error = check(address, TIMEOUT).unwrap_err();
        assert!(error.contains("cannot connect"), "{error}");
    }

    #[test]
    fn gives_up_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let started = Instant::now();
        let error = check(address, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{error}");
        assert!(
            error.contains("in time") || error.contains("within"),
            "{error}"
        );
        drop(listener);
    }

    #[test]
    fn targets_loopback_when_listening_everywhere() {
        let any_v4: IpAddr = "0.0.0.0".parse().unwrap();
        assert_eq!(target(any_v4, 3001).to_string(), "127.0.0.1:3001");
        let any_v6: IpAddr = "::".parse().unwrap();
        assert_eq!(target(any_v6, 3001).to_string(), "[::1]:3001");
        let specific: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(target(specific, 8080).to_string(), "10.0.0.5:8080");
    }
}
