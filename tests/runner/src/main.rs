//! A minimal runner for tests and the example compose stack.
//!
//! It plays the part of the real runner (a Node.js HTTP + Socket.IO server) as
//! far as the orchestrator can see: it listens on `PORT` and answers every
//! request with a small JSON document. It uses only `std` so that it links
//! statically and runs in an empty (`FROM scratch`) image.

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
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let listener = TcpListener::bind(("0.0.0.0", port.parse::<u16>().expect("PORT must be a port number")))
        .expect("cannot bind PORT");
    eprintln!("test runner listening on {port}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = answer(stream);
        });
    }
}

fn answer(stream: TcpStream) -> std::io::Result<()> {
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
    let body = format!("{{\"runner\":\"ok\",\"path\":\"{}\"}}", path.escape_default());
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        body
    )?;
    stream.flush()
}
