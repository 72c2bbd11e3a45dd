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
            let child = std::process::Command::new(std::env::current_exe().expect("own path"))
                .arg("--exit")
                .spawn()
                .expect("spawn the orphan");
            println!("{}", child.id());
            unsafe { _exit(0) }
        }
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

/// Runs `--orphan-parent` and returns the PID of the orphan it left.
fn orphan() -> u32 {
    let output = std::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("--orphan-parent")
        .output()
        .expect("run the orphan's parent");
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(0)
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
    let extra = match path {
        "/orphan" => format!(",\"orphan_pid\":{}", orphan()),
        _ => match path.strip_prefix("/process/") {
            Some(pid) => format!(",\"state\":\"{}\"", process_state(pid)),
            None => String::new(),
        },
    };
    let body = format!(
        "{{\"runner\":\"ok\",\"path\":\"{}\",\"threads_started\":{threads_started}{extra}}}",
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
