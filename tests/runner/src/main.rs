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

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

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
    unsafe {
        signal(SIGTERM, exit_now);
        signal(SIGINT, exit_now);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut threads_started = 0;
    match args.first().map(String::as_str) {
        Some("--hog-memory-mb") => {
            let mib: usize = args.get(1).and_then(|n| n.parse().ok()).expect("--hog-memory-mb N");
            std::thread::spawn(move || hog_memory(mib));
        }
        Some("--spawn-until-refused") => threads_started = spawn_until_refused(),
        _ => {}
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let listener = TcpListener::bind(("0.0.0.0", port.parse::<u16>().expect("PORT must be a port number")))
        .expect("cannot bind PORT");
    eprintln!("test runner listening on {port}");
    for stream in listener.incoming().flatten() {
        // Answer inline when no thread can be had (PID limit reached).
        let mut stream = Some(stream);
        let spawned = std::thread::Builder::new().spawn({
            let stream = stream.take();
            move || {
                let _ = stream.map(|stream| answer(stream, threads_started));
            }
        });
        if spawned.is_err() {
            if let Some(stream) = stream {
                let _ = answer(stream, threads_started);
            }
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

fn answer(stream: TcpStream, threads_started: usize) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers so the client sees a clean response.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let body = format!(
        "{{\"runner\":\"ok\",\"path\":\"{}\",\"threads_started\":{threads_started}}}",
        path.escape_default()
    );
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        body
    )?;
    stream.flush()
}
