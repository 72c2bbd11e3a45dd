//! A minimal runner for tests and the example compose stack.
//!
//! It plays the part of the real runner (a Node.js HTTP + Socket.IO server) as
//! far as the orchestrator can see: it listens on `PORT` and answers every
//! request with a small JSON document. It uses only `std` so that it links
//! statically and runs in an empty (`FROM scratch`) image.
//!
//! Two modes play the hostile user code that the runner's limits must hold:
//! `--hog-memory-mb N` allocates N MiB a second after start (past a memory
//! limit it is OOM-killed), and `--spawn-until-refused` starts threads until
//! the PID limit refuses one, frees a few so it can still answer, and reports
//! how many it got.
//!
//! Signals as the real runner takes them: with `TEST_RUNNER_ON_SIGTERM=ignore`
//! it installs no SIGTERM handler, as a Node.js server does not, so as PID 1
//! it ignores SIGTERM (the kernel drops unhandled signals to PID 1) and a
//! `docker stop` waits out its whole grace period, unless an init process
//! is PID 1. `GET /orphan` leaves an orphaned zombie for PID 1 to reap, as a
//! user's snippet that starts a background process does, and answers with
//! its PID; `GET /process/<pid>` answers with that process's state (`Z` for
//! a zombie) or `gone`.
//!
//! Egress probes ([`probe`]): `GET /probe/tcp?addr=IP:PORT` and
//! `GET /probe/dns?name=NAME` say what code inside the runner reaches;
//! `GET /probe/connect` times connection setup.
//!
//! WebSocket as the real runner's Socket.IO server speaks it
//! ([`engine_io`]): `/socket.io/` answers engine.io's polling handshake and
//! upgrades to its websocket transport, which answers probes and pings,
//! pings every interval and echoes every message; an upgrade on any other
//! path is a plain echo. A thread serves each connection.

mod engine_io;
mod http;
mod probe;
mod ws;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use http::{Request, Response};

unsafe extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// As PID 1 in a container the kernel ignores signals that have no handler, so
/// without this `docker stop` would wait out its whole grace period.
extern "C" fn exit_now(_signum: i32) {
    unsafe { _exit(0) }
}

fn main() {
    let ignore_sigterm = std::env::var("TEST_RUNNER_ON_SIGTERM").is_ok_and(|mode| mode == "ignore");
    unsafe {
        if !ignore_sigterm {
            signal(SIGTERM, exit_now);
        }
        signal(SIGINT, exit_now);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut threads_started = 0;
    match args.first().map(String::as_str) {
        Some("--exit") => return,
        Some("--orphan-parent") => {
            // Starts a child that exits at once and leaves without waiting for
            // it: the child's zombie goes to PID 1.
            #[allow(clippy::zombie_processes, reason = "the zombie is the point")]
            let child = std::process::Command::new(std::env::current_exe().expect("own path"))
                .arg("--exit")
                .spawn()
                .expect("spawn the orphan");
            println!("{}", child.id());
            unsafe { _exit(0) }
        }
        Some("--hog-memory-mb") => {
            let mib: usize = args
                .get(1)
                .and_then(|n| n.parse().ok())
                .expect("--hog-memory-mb N");
            std::thread::spawn(move || hog_memory(mib));
        }
        Some("--spawn-until-refused") => threads_started = spawn_until_refused(),
        _ => {}
    }
    let config = Config {
        threads_started,
        ping_interval: std::env::var("TEST_RUNNER_PING_INTERVAL_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(engine_io::PING_INTERVAL, Duration::from_millis),
    };
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let listener = TcpListener::bind((
        "0.0.0.0",
        port.parse::<u16>().expect("PORT must be a port number"),
    ))
    .expect("cannot bind PORT");
    eprintln!("test runner listening on {port}");
    serve(listener, config);
}

/// What every connection's answer depends on.
#[derive(Clone, Copy)]
struct Config {
    /// Reported by `--spawn-until-refused`.
    threads_started: usize,
    /// Engine.io's ping interval.
    ping_interval: Duration,
}

fn serve(listener: TcpListener, config: Config) {
    for stream in listener.incoming().flatten() {
        // Answer inline when no thread can be had (PID limit reached).
        let mut stream = Some(stream);
        let spawned = std::thread::Builder::new().spawn({
            let stream = stream.take();
            move || {
                let _ = stream.map(|stream| answer(stream, config));
            }
        });
        if spawned.is_err()
            && let Some(stream) = stream
        {
            let _ = answer(stream, config);
        }
    }
}

fn hog_memory(mib: usize) {
    std::thread::sleep(Duration::from_secs(1));
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        // Filled, so the pages are really used.
        hoard.push(vec![1u8; 1 << 20]);
    }
    eprintln!("holding {mib} MiB");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        std::hint::black_box(&hoard);
    }
}

/// Parks threads until the kernel refuses one, then lets eight of them go.
fn spawn_until_refused() -> usize {
    let mut releases = Vec::new();
    while let Ok(handle) = {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        releases.push(release);
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = wait.recv();
            })
    } {
        drop(handle);
        if releases.len() >= 100_000 {
            break;
        }
    }
    let started = releases.len() - 1;
    releases.truncate(releases.len().saturating_sub(9));
    std::mem::forget(releases);
    eprintln!("started {started} threads before the limit");
    started
}

/// Runs `--orphan-parent` and returns the PID of the orphan it left.
fn orphan() -> u32 {
    let output = std::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("--orphan-parent")
        .output()
        .expect("run the orphan's parent");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// The state letter of `/proc/<pid>/stat` (`Z`: zombie), or `gone`.
fn process_state(pid: &str) -> String {
    pid.bytes()
        .all(|byte| byte.is_ascii_digit())
        .then(|| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .flatten()
        .and_then(|stat| {
            let after_name = &stat[stat.rfind(')')? + 1..];
            after_name.split_whitespace().next().map(str::to_owned)
        })
        .unwrap_or_else(|| "gone".to_owned())
}

fn answer(mut stream: TcpStream, config: Config) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let request = Request::read(&mut reader)?;
    if request.is_websocket_upgrade() {
        stream.set_read_timeout(None)?;
        return websocket(&request, reader, stream, config);
    }
    let probed = probe::answer(request.path(), |key| request.query(key).map(str::to_owned));
    let response = if request.path() == engine_io::PATH {
        engine_io::polling(&request, config.ping_interval)
    } else if let Some(body) = probed {
        Response::new("200 OK", "application/json", body)
    } else {
        runner_json(&request, config)
    };
    response.write_to(&mut stream)
}

/// Accepts the upgrade: engine.io's websocket transport on its path, a plain
/// echo elsewhere. `reader` may hold the first frames already.
fn websocket(
    request: &Request,
    reader: BufReader<TcpStream>,
    mut stream: TcpStream,
    config: Config,
) -> std::io::Result<()> {
    let key = request.header("sec-websocket-key").unwrap_or_default();
    stream.write_all(ws::handshake_response(key).as_bytes())?;
    if request.path() == engine_io::PATH {
        let session = ws::Session {
            greeting: engine_io::greeting(request, config.ping_interval),
            heartbeat: Some((config.ping_interval, ws::Message::Text("2".to_owned()))),
        };
        ws::serve(reader, stream, session, engine_io::reply)
    } else {
        let session = ws::Session {
            greeting: None,
            heartbeat: None,
        };
        ws::serve(reader, stream, session, Some)
    }
}

/// The answer on every other path: a small JSON document naming the path.
fn runner_json(request: &Request, config: Config) -> Response {
    let path = request.target.as_str();
    let extra = match path {
        "/orphan" => format!(",\"orphan_pid\":{}", orphan()),
        _ => match path.strip_prefix("/process/") {
            Some(pid) => format!(",\"state\":\"{}\"", process_state(pid)),
            None => String::new(),
        },
    };
    let body = format!(
        "{{\"runner\":\"ok\",\"path\":\"{}\",\"threads_started\":{}{extra}}}",
        path.escape_default(),
        config.threads_started
    );
    Response::new("200 OK", "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read};
    use ws::{BINARY, CLOSE, TEXT};

    /// The runner on a port of its own, engine.io pinging every 300 ms.
    fn runner() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = Config {
            threads_started: 0,
            ping_interval: Duration::from_millis(300),
        };
        std::thread::spawn(move || serve(listener, config));
        port
    }

    /// A client connection after a successful upgrade of `target`.
    fn upgrade(port: u16, target: &str) -> BufReader<TcpStream> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            assert!(
                reader.read_line(&mut head).unwrap() > 0,
                "connection closed: {head}"
            );
        }
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{head}"
        );
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{head}"
        );
        reader
    }

    fn send(connection: &mut BufReader<TcpStream>, opcode: u8, payload: &[u8]) {
        let frame = ws::encode(opcode, payload, Some([0xA1, 0xB2, 0xC3, 0xD4]));
        connection.get_mut().write_all(&frame).unwrap();
    }

    fn receive(connection: &mut BufReader<TcpStream>) -> (u8, Vec<u8>) {
        let frame = ws::read_frame(connection).unwrap();
        assert!(frame.fin);
        (frame.opcode, frame.payload)
    }

    fn text(connection: &mut BufReader<TcpStream>) -> String {
        let (opcode, payload) = receive(connection);
        assert_eq!(opcode, TEXT);
        String::from_utf8(payload).unwrap()
    }

    /// The next text frame that is not the server's ping.
    fn answer_text(connection: &mut BufReader<TcpStream>) -> String {
        loop {
            let text = text(connection);
            if text != "2" {
                return text;
            }
        }
    }

    #[test]
    fn engine_io_over_websocket() {
        let port = runner();
        let mut connection = upgrade(port, "/socket.io/?EIO=4&transport=websocket");
        let open = text(&mut connection);
        assert!(
            open.starts_with(r#"0{"sid":""#) && open.contains(r#""pingInterval":300,"#),
            "{open}"
        );
        send(&mut connection, TEXT, b"2probe");
        assert_eq!(answer_text(&mut connection), "3probe");
        send(&mut connection, TEXT, b"5");
        let echo = format!(r#"42["echo","{}"]"#, "x".repeat(70_000));
        send(&mut connection, TEXT, echo.as_bytes());
        assert_eq!(answer_text(&mut connection), echo);
        send(&mut connection, TEXT, b"2");
        assert_eq!(answer_text(&mut connection), "3");
        send(&mut connection, BINARY, &[0, 1, 2]);
        let binary = loop {
            match receive(&mut connection) {
                (TEXT, ping) if ping == b"2" => continue,
                other => break other,
            }
        };
        assert_eq!(binary, (BINARY, vec![0, 1, 2]));
        // The server's ping, answered; nothing else arrives before the next one.
        assert_eq!(text(&mut connection), "2");
        send(&mut connection, TEXT, b"3");
        assert_eq!(text(&mut connection), "2");
        send(&mut connection, CLOSE, &1000u16.to_be_bytes());
        assert_eq!(
            receive(&mut connection),
            (CLOSE, 1000u16.to_be_bytes().to_vec())
        );
        assert_eq!(
            connection.read(&mut [0; 1]).unwrap(),
            0,
            "closed after the close frame"
        );
    }

    #[test]
    fn upgrade_of_a_polling_session_sends_no_open_packet() {
        let port = runner();
        let mut connection = upgrade(port, "/socket.io/?EIO=4&transport=websocket&sid=abc");
        send(&mut connection, TEXT, b"2probe");
        assert_eq!(text(&mut connection), "3probe");
    }

    #[test]
    fn other_paths_echo_without_pings() {
        let port = runner();
        let mut connection = upgrade(port, "/anything?x=1");
        for message in ["2", "2probe", "hello"] {
            send(&mut connection, TEXT, message.as_bytes());
            assert_eq!(text(&mut connection), message);
        }
        send(&mut connection, ws::PING, b"p");
        assert_eq!(receive(&mut connection), (ws::PONG, b"p".to_vec()));
        connection
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        let error = ws::read_frame(&mut connection).unwrap_err();
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::WouldBlock,
            "a frame arrived unasked"
        );
    }

    #[test]
    fn http_answers_stay_as_they_were() {
        let port = runner();
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(stream, "GET /some/path HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("Content-Type: application/json\r\n"),
            "{answer}"
        );
        assert!(
            answer.ends_with(r#"{"runner":"ok","path":"/some/path","threads_started":0}"#),
            "{answer}"
        );
    }
}
