//! The service binary as the API tests and the benchmark start it; included
//! by both (`#[path]`), since they build as separate crates.

use std::process::{Command, Stdio};

/// `orchestrator` on loopback with a port of its own, this run's database,
/// instance and image, fast runner stops, no admission limits (tests provision
/// in bursts from one address, and the benchmark's restart part starts 500
/// runners, more than `MAX_CONCURRENT_RUNNERS=auto` allows on a 24 GiB host),
/// and JSON logs on a piped stderr (where the caller reads the port and
/// readiness). Only `PATH` and `DOCKER_HOST` come from the caller's
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
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        command.env("DOCKER_HOST", host);
    }
    command
}
