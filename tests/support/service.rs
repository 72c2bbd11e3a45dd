//! The service binary as the API tests and the benchmark start it: its
//! command, and the running process with the JSON log it writes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

/// `orchestrator` on loopback with a port of its own, this run's database,
/// instance and image, fast runner stops, no admission limits (tests provision
/// in bursts from one address, and the benchmark's restart part starts 500
/// runners, more than `MAX_CONCURRENT_RUNNERS=auto` allows on a 24 GiB host),
/// and JSON logs on a piped stderr (where [`ServiceProcess`] reads the port
/// and readiness). Only `PATH` and `DOCKER_HOST` come from the caller's
/// environment.
pub fn service_command(database_url: &str, instance: &str, image: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("LISTEN_ADDRESS", "127.0.0.1")
        .env("DATABASE_URL", database_url)
        .env("ORCHESTRATOR_ID", instance)
        .env("DOCKER_IMAGE_NAME", image)
        .env("RUNNERS_HOST", "127.0.0.1")
        .env("RUNNER_BIND_ADDRESS", "127.0.0.1")
        .env("RUNNER_STOP_TIMEOUT_SECONDS", "1")
        .env("PROVISION_RATE_PER_MINUTE", "0")
        .env("MAX_CONCURRENT_RUNNERS", "0")
        .env("LOG_FORMAT", "json")
        // The API tiers run beside whatever else is on this host's engine:
        // the egress tier (tests/egress) proves the rules in a namespace of
        // its own.
        .env("RUNNER_EGRESS", "all")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        command.env("DOCKER_HOST", host);
    }
    command
}

/// The JSON log lines a process wrote so far, and whether its stderr has
/// closed (it exited). Waiters wake on every line.
#[derive(Clone)]
pub struct Logs(Arc<watch::Sender<LogState>>);

#[derive(Default)]
struct LogState {
    lines: Vec<Value>,
    closed: bool,
}

impl Logs {
    /// Reads `stderr` on a thread of its own for the life of the process (a
    /// full pipe would block it).
    fn drain(stderr: impl std::io::Read + Send + 'static) -> Self {
        let logs = Self(Arc::new(watch::Sender::new(LogState::default())));
        let sender = logs.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // A line that is not JSON (a panic, an error printed
                // before logging starts) is kept as `{"stderr": line}`.
                let event = serde_json::from_str::<Value>(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "stderr": line }));
                sender.send_modify(|state| state.lines.push(event));
            }
            sender.send_modify(|state| state.closed = true);
        });
        logs
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Value> {
        self.0.borrow().lines.clone()
    }

    /// The first line with this `message`.
    pub fn find(&self, message: &str) -> Option<Value> {
        let state = self.0.borrow();
        state
            .lines
            .iter()
            .find(|e| e["message"] == message)
            .cloned()
    }

    /// A field of the first line with this `message`, as text.
    pub fn field(&self, message: &str, field: &str) -> Option<String> {
        self.find(message).map(|event| match &event[field] {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
    }

    /// Waits for the first line with this `message`; fails if the process
    /// exits or `limit` passes first.
    pub async fn wait_for(&self, message: &str, limit: Duration) -> Result<Value, String> {
        self.wait_for_line(limit, message, |event| event["message"] == message)
            .await
    }

    /// Waits for the first line that `matches`; `what` names it in the error.
    pub async fn wait_for_line(
        &self,
        limit: Duration,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let mut receiver = self.0.subscribe();
        let waited = receiver.wait_for(|state| state.closed || state.lines.iter().any(&matches));
        let state = tokio::time::timeout(limit, waited)
            .await
            .map_err(|_| format!("no `{what}` log line within {limit:?}"))?
            .expect("the sender lives as long as self");
        let found = state.lines.iter().find(|event| matches(event)).cloned();
        found.ok_or_else(|| {
            let tail = state.lines.iter().rev().take(8).rev();
            let tail: Vec<String> = tail.map(Value::to_string).collect();
            format!(
                "the service exited before a `{what}` log line; its last lines:\n{}",
                tail.join("\n")
            )
        })
    }

    /// Waits until `count` lines carry this `message`.
    pub async fn wait_for_count(
        &self,
        message: &str,
        count: usize,
        limit: Duration,
    ) -> Result<(), String> {
        let seen = |state: &LogState| {
            state
                .lines
                .iter()
                .filter(|event| event["message"] == message)
                .count()
        };
        let mut receiver = self.0.subscribe();
        let waited = receiver.wait_for(|state| state.closed || seen(state) >= count);
        let state = tokio::time::timeout(limit, waited)
            .await
            .map_err(|_| format!("fewer than {count} `{message}` log lines within {limit:?}"))?
            .expect("the sender lives as long as self");
        match seen(&state) {
            n if n >= count => Ok(()),
            n => Err(format!(
                "the service exited after {n} `{message}` log lines"
            )),
        }
    }

    async fn wait_closed(&self, limit: Duration) -> bool {
        let mut receiver = self.0.subscribe();
        let closed = receiver.wait_for(|state| state.closed);
        matches!(tokio::time::timeout(limit, closed).await, Ok(Ok(_)))
    }
}

/// The service binary, running; killed when dropped.
pub struct ServiceProcess {
    pub port: u16,
    pub logs: Logs,
    /// When it was spawned.
    pub started: Instant,
    /// From spawn to the `listening` line (database open, port bound).
    pub spawn_to_listening: Duration,
    /// From spawn to the `ready` line (the startup reconcile done); zero
    /// until [`ServiceProcess::wait_ready`].
    pub spawn_to_ready: Duration,
    child: Child,
}

impl ServiceProcess {
    /// Spawns `command` (a [`service_command`]) and waits, at most `limit`
    /// for each, until it listens and is ready.
    pub async fn spawn(command: Command, limit: Duration) -> Result<Self, String> {
        let mut process = Self::spawn_listening(command, limit).await?;
        process.wait_ready(limit).await?;
        Ok(process)
    }

    /// Waits, at most `limit`, for the `ready` line (the startup reconcile
    /// done) and records when it came.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        self.logs.wait_for("ready", limit).await?;
        self.spawn_to_ready = self.started.elapsed();
        Ok(())
    }

    /// [`ServiceProcess::spawn`] up to its `listening` line only: runner
    /// requests sent now are held until the startup reconcile is done.
    pub async fn spawn_listening(mut command: Command, limit: Duration) -> Result<Self, String> {
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|error| format!("spawn the orchestrator binary: {error}"))?;
        let logs = Logs::drain(child.stderr.take().expect("stderr is piped"));
        let mut process = Self {
            port: 0,
            logs,
            started,
            spawn_to_listening: Duration::ZERO,
            spawn_to_ready: Duration::ZERO,
            child,
        };
        let listening = process.logs.wait_for("listening", limit).await?;
        process.spawn_to_listening = started.elapsed();
        let address = listening["address"].as_str().unwrap_or_default();
        process.port = address
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| format!("no port in {listening}"))?;
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash or an OOM kill of the service would.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM, as `docker stop` does, without waiting.
    pub fn send_sigterm(&self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("send SIGTERM");
    }

    /// Waits, at most `limit`, for the process to exit (its log closes).
    pub async fn wait_exit(mut self, limit: Duration) -> Result<ExitStatus, String> {
        if !self.logs.wait_closed(limit).await {
            return Err(format!("the orchestrator did not exit within {limit:?}"));
        }
        self.child.wait().map_err(|error| error.to_string())
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(self, limit: Duration) -> Result<ExitStatus, String> {
        self.send_sigterm();
        self.wait_exit(limit).await
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
