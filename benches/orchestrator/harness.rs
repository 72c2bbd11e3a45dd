//! The harness every part shares, measuring nothing itself: the service as a
//! child process and its clients, the load generators, the timing and
//! percentile helpers, and the figure line that prints each measurement
//! next to the baseline a part gives and their ratio.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Sizes;
use crate::support::cleanup::{remove_instances, remove_instances_blocking};
use crate::support::service::{ServiceProcess, service_command};

use bollard::Docker;
use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use taylored_orchestrator::config::Settings;
use taylored_orchestrator::db::{Db, timestamp};
use taylored_orchestrator::service::Service as InProcess;

pub type Result<T> = anyhow::Result<T>;

// ---------------------------------------------------------------------------
// Figures and timing.

/// One line of the summary table.
pub struct Figure {
    pub name: String,
    pub measured: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub met: &'static str,
}

pub fn figure(
    name: impl Into<String>,
    measured: impl Into<String>,
    baseline: impl Into<String>,
    ratio: f64,
    target: impl Into<String>,
    met: Option<bool>,
) -> Figure {
    Figure {
        name: name.into(),
        measured: measured.into(),
        baseline: baseline.into(),
        ratio: if ratio < 0.1 {
            format!("{ratio:.4}x")
        } else {
            format!("{ratio:.2}x")
        },
        target: target.into(),
        met: match met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        },
    }
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

pub fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `samples` rounds of one call of `a` and one of `b` (given the round's
/// index), each timed; which goes first alternates, so neither always
/// follows the other. Returns `(a's times, b's times)`.
pub async fn interleaved(
    samples: usize,
    mut a: impl AsyncFnMut(usize) -> Result<()>,
    mut b: impl AsyncFnMut(usize) -> Result<()>,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut a_times, mut b_times) = (Vec::new(), Vec::new());
    for i in 0..samples {
        for turn in 0..2 {
            let a_turn = (turn + i) % 2 == 0;
            let started = Instant::now();
            if a_turn {
                a(i).await?;
                a_times.push(started.elapsed());
            } else {
                b(i).await?;
                b_times.push(started.elapsed());
            }
        }
    }
    Ok((a_times, b_times))
}

// ---------------------------------------------------------------------------
// Docker: the instances of a run (the runner image and cleanup: tests/support).

/// The instance ids this run used; every container labelled with one of
/// them is removed when the guard drops (also on panic).
#[derive(Clone, Default)]
pub struct Instances(Arc<Mutex<Vec<String>>>);

impl Instances {
    pub fn new_instance(&self, prefix: &str, section: &str) -> String {
        let id = format!("{prefix}-{section}");
        self.0.lock().unwrap().push(id.clone());
        id
    }
}

pub struct CleanupGuard(pub Instances);

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        let instances = self.0.0.lock().map(|ids| ids.clone()).unwrap_or_default();
        let removed = remove_instances_blocking(instances);
        eprintln!("cleanup: removed {removed} leftover containers");
    }
}

/// Force-removes every container of `instance`; returns how many.
pub async fn remove_instance_containers(instance: &str) -> usize {
    remove_instances(&[instance.to_owned()]).await
}

// ---------------------------------------------------------------------------
// The service as a child process.

pub struct Service {
    pub process: ServiceProcess,
    pub base: String,
    /// The "ready" line's reconcile summary.
    pub summary: String,
    pub client: reqwest::Client,
    /// Its `ORCHESTRATOR_ID`, which labels its runners.
    pub instance: String,
    pub db_path: PathBuf,
}

pub struct ServiceConfig<'a> {
    pub image: &'a str,
    pub instance: &'a str,
    pub db_path: &'a Path,
    pub extra_env: &'a [(&'a str, String)],
}

pub async fn spawn_service(config: &ServiceConfig<'_>) -> Result<Service> {
    let mut service = spawn_listening(config).await?;
    service.wait_ready().await?;
    Ok(service)
}

/// [`spawn_service`] until it listens, before its startup reconcile is done.
pub async fn spawn_listening(config: &ServiceConfig<'_>) -> Result<Service> {
    let mut command = service_command(
        &config.db_path.display().to_string(),
        config.instance,
        config.image,
    );
    command
        .env("CLEANUP_INTERVAL_SECONDS", "3600")
        .env("INACTIVITY_TIMEOUT_SECONDS", "3600");
    for (key, value) in config.extra_env {
        command.env(key, value);
    }
    let process = ServiceProcess::spawn_listening(command, Duration::from_secs(600))
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(Service {
        base: format!("http://127.0.0.1:{}", process.port),
        summary: String::new(),
        process,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?,
        instance: config.instance.to_owned(),
        db_path: config.db_path.to_owned(),
    })
}

/// `POST {base}/api/runner/provision`, for `session` if given.
pub fn provision_request(
    client: &reqwest::Client,
    base: &str,
    session: Option<&str>,
) -> reqwest::RequestBuilder {
    let request = client
        .post(format!("{base}/api/runner/provision"))
        .json(&serde_json::json!({}));
    match session {
        Some(session) => request.header("X-Session-Id", session),
        None => request,
    }
}

/// A heartbeat of `session` to `url` (the service's `/api/runner/heartbeat`).
pub fn heartbeat_request(
    client: &reqwest::Client,
    url: &str,
    session: &str,
) -> reqwest::RequestBuilder {
    client
        .post(url)
        .json(&serde_json::json!({ "sessionId": session }))
}

impl Service {
    /// Its database file, as a database URL.
    pub fn db_url(&self) -> String {
        self.db_path.display().to_string()
    }

    /// Waits for the "ready" log line and takes its reconcile summary.
    pub async fn wait_ready(&mut self) -> Result<()> {
        self.process
            .wait_ready(Duration::from_secs(600))
            .await
            .map_err(anyhow::Error::msg)?;
        self.summary = self
            .process
            .logs
            .field("ready", "summary")
            .unwrap_or_default();
        Ok(())
    }

    /// Where a start's time went: to listening (database open, port
    /// bound), and the startup reconcile's reads (rows and the engine's
    /// list, at once) and whole, from its log line.
    pub fn startup_times(&self) -> String {
        let reconcile = |field| {
            (self.process.logs)
                .field("startup reconcile finished", field)
                .unwrap_or_default()
        };
        format!(
            "listening at {:.1} ms; reconcile {} ms, of which rows and engine list {} ms",
            ms(self.process.spawn_to_listening),
            reconcile("took_ms"),
            reconcile("read_ms")
        )
    }

    /// From spawn to the "ready" log line (startup reconcile done).
    pub fn spawn_to_ready(&self) -> Duration {
        self.process.spawn_to_ready
    }

    /// SIGTERM, as `docker stop` sends it; runners keep running.
    pub async fn stop(self) -> Result<()> {
        let status = self.process.terminate(Duration::from_secs(60)).await;
        let status = status.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(status.success(), "the service exited with {status}");
        Ok(())
    }

    /// SIGKILL, as a crash or an OOM kill of the service would.
    pub fn kill_9(self) {
        self.process.kill_9();
    }

    /// Waits for the end of the startup repairs; returns when it came
    /// (since spawn) and the whole reconcile's summary.
    pub async fn wait_repaired(&self) -> Result<(Duration, String)> {
        let logs = &self.process.logs;
        let line = logs
            .wait_for("startup repairs finished", Duration::from_secs(600))
            .await
            .map_err(anyhow::Error::msg)?;
        let summary = line["summary"].as_str().unwrap_or_default().to_owned();
        Ok((self.process.started.elapsed(), summary))
    }

    /// Stops the service and removes its runners.
    pub async fn finish(self) -> Result<()> {
        let instance = self.instance.clone();
        self.stop().await?;
        remove_instance_containers(&instance).await;
        Ok(())
    }

    pub async fn provision(&self, session: Option<&str>) -> Result<()> {
        let request = provision_request(&self.client, &self.base, session);
        let response = request.send().await?;
        let status = response.status();
        let body = response.text().await?;
        anyhow::ensure!(status.is_success(), "provision answered {status}: {body}");
        Ok(())
    }

    /// `(VmHWM, VmRSS)` of the process in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        memory_kib(self.process.pid())
    }
}

/// `(VmHWM, VmRSS)` of a process in KiB, from `/proc/<pid>/status`.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Provisions `count` sessions named `{prefix}-{i}`, `parallel` at a time.
pub async fn provision_many(
    service: &Service,
    prefix: &str,
    range: std::ops::Range<usize>,
    parallel: usize,
) -> Result<()> {
    let results: Vec<Result<()>> = futures_util::stream::iter(range)
        .map(|i| async move { service.provision(Some(&format!("{prefix}-{i}"))).await })
        .buffer_unordered(parallel)
        .collect()
        .await;
    results.into_iter().collect()
}

// ---------------------------------------------------------------------------
// The service in this process, on rows written directly.

/// Creates (and migrates, as the service does) the database at `url` with
/// `fresh` running rows named `session-<i>` (fake container ids, heartbeat
/// now) and `stale` ones after them (heartbeat 2 h ago, no container id).
pub async fn fill_rows(url: &str, instance: &str, fresh: usize, stale: usize) -> Result<()> {
    let db = Db::connect_unlocked(url).await?;
    let now = timestamp(Utc::now());
    let old = timestamp(Utc::now() - chrono::Duration::hours(2));
    let mut transaction = db.pool().begin().await?;
    for i in 0..fresh + stale {
        let is_stale = i >= fresh;
        sqlx::query(
            "INSERT INTO runners (session_id, kind, state, container_name, container_id, \
             host_port, created_at, updated_at, last_heartbeat_at, pooled) \
             VALUES (?1, 'session', 'running', ?2, ?3, ?4, ?5, ?5, ?6, 0)",
        )
        .bind(format!("session-{i}"))
        .bind(format!("{instance}-missing-{i}"))
        .bind((!is_stale).then(|| format!("{:064x}", i + 1)))
        .bind((i % 60_000 + 1024) as i64)
        .bind(if is_stale { &old } else { &now })
        .bind(if is_stale { &old } else { &now })
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    db.pool().close().await;
    Ok(())
}

/// The service's parts for `instance` on the database at `url`, in this
/// process, with nothing running in the background.
pub async fn in_process_service(cx: &Context, url: &str, instance: &str) -> Result<InProcess> {
    let settings = Settings::from_env_and_args([
        "orchestrator".to_owned(),
        format!("--database-url={url}"),
        format!("--orchestrator-id={instance}"),
        format!("--docker-image-name={}", cx.image),
        "--runner-stop-timeout-seconds=1".to_owned(),
        // Nothing runs in the background here to install rules.
        "--runner-egress=all".to_owned(),
    ])?;
    let db = Db::connect(url).await?;
    let backend = taylored_orchestrator::backend::from_settings(&settings)?;
    let firewall = Arc::new(taylored_orchestrator::egress::Nft);
    let key = taylored_orchestrator::startup::token_key(&settings, &db)?;
    Ok(InProcess::new(
        db,
        backend,
        firewall,
        Arc::new(settings),
        key,
    ))
}

// ---------------------------------------------------------------------------
// Load.

#[derive(Clone)]
pub enum Load {
    Root(String),
    /// Heartbeats for these sessions, each client taking every `clients`-th
    /// in turn; the status every answer must have.
    Heartbeats(String, Arc<Vec<String>>, reqwest::StatusCode),
}

impl Load {
    pub fn heartbeat(url: String, session: &str, expected: reqwest::StatusCode) -> Self {
        Self::Heartbeats(url, Arc::new(vec![session.to_owned()]), expected)
    }
}

/// `clients` keep-alive connections sending `load` back to back for
/// `seconds`; returns `(answered as expected, errors)`.
pub async fn run_load(load: Load, clients: usize, seconds: f64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut workers = FuturesUnordered::new();
    for worker in 0..clients {
        let load = load.clone();
        workers.push(tokio::spawn(async move {
            // One client each: its own keep-alive connection.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut turn = worker;
            while Instant::now() < deadline {
                let (request, expected) = match &load {
                    Load::Root(url) => (client.get(url), reqwest::StatusCode::OK),
                    Load::Heartbeats(url, sessions, expected) => {
                        let session = &sessions[turn % sessions.len()];
                        turn += clients;
                        (heartbeat_request(&client, url, session), *expected)
                    }
                };
                match request.send().await {
                    Ok(response) if response.status() == expected => {
                        let _ = response.bytes().await;
                        ok += 1;
                    }
                    _ => errors += 1,
                }
            }
            (ok, errors)
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    while let Some(result) = workers.next().await {
        let (o, e) = result.unwrap_or((0, 1));
        ok += o;
        errors += e;
    }
    (ok, errors)
}

/// Runs the loads one after the other for `seconds` each, twice over (so
/// that a drift of the machine shifts them alike); returns each one's
/// answers per second, and notes the errors.
pub async fn alternate<const N: usize>(
    cx: &mut Context,
    part: &str,
    loads: [Load; N],
    clients: usize,
    seconds: f64,
) -> [f64; N] {
    let (mut answered, mut errors) = ([0u64; N], 0);
    for _ in 0..2 {
        for (load, answered) in loads.iter().zip(&mut answered) {
            let (ok, failed) = run_load(load.clone(), clients, seconds).await;
            *answered += ok;
            errors += failed;
        }
    }
    if errors > 0 {
        cx.notes.push(format!(
            "{part}: {errors} requests failed or answered another status"
        ));
    }
    answered.map(|ok| ok as f64 / (seconds * 2.0))
}

// ---------------------------------------------------------------------------
// What the parts share.

pub struct Context {
    pub sizes: Sizes,
    pub image: String,
    pub prefix: String,
    pub instances: Instances,
    pub dir: tempfile::TempDir,
    pub docker: Docker,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
    /// The warm pool's baseline, when the cold part ran first.
    pub cold_p50: Option<Duration>,
}

impl Context {
    pub fn db_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.db"))
    }

    /// [`Self::db_path`] as a database URL.
    pub fn db_url(&self, name: &str) -> String {
        self.db_path(name).display().to_string()
    }

    /// A service of its own for one part: a fresh instance and database.
    pub async fn part_service(&self, part: &str, extra_env: &[(&str, String)]) -> Result<Service> {
        let instance = self.instances.new_instance(&self.prefix, part);
        spawn_service(&ServiceConfig {
            image: &self.image,
            instance: &instance,
            db_path: &self.db_path(part),
            extra_env,
        })
        .await
    }

    pub fn push(&mut self, figure: Figure) {
        println!(
            "  {:<38} {:>14}  baseline {:>14}  ratio {:>7}  target {:<14} met: {}",
            figure.name, figure.measured, figure.baseline, figure.ratio, figure.target, figure.met
        );
        self.figures.push(figure);
    }
}
