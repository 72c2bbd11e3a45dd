//! Test harness: a real Docker Engine, a real SQLite file per test, and the
//! real service, either in-process on port 0 or as the release binary.
//!
//! Every test gets its own `ORCHESTRATOR_ID`, so it sees and removes only the
//! runners it started; cleanup runs on drop, also when the test panics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

#[path = "../support/mod.rs"]
mod support;
pub use support::browser::{BrowserRun, run_browser_client};
pub use support::cleanup::docker;
use support::cleanup::{instance_containers, remove_instances_blocking};
use support::images::{TestImages, build_images};
pub use support::service::Logs;
use support::service::{ServiceProcess, service_command};
use support::wait::poll_until;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, ContainerSummary, HostConfig, PortBinding};
use bollard::query_parameters::{CreateContainerOptionsBuilder, InspectContainerOptions};
use serde_json::Value;
use taylored_orchestrator::config::{INSTANCE_LABEL, SESSION_LABEL, Settings};
use taylored_orchestrator::db::{Db, RunnerRow};
use taylored_orchestrator::domain::Summary;
use taylored_orchestrator::readiness::Readiness;
use taylored_orchestrator::reaper::Reaper;
use taylored_orchestrator::service::Service;
use taylored_orchestrator::startup::Application;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// The test images, built (or found) once per test process.
pub fn images() -> &'static TestImages {
    static IMAGES: OnceLock<TestImages> = OnceLock::new();
    IMAGES.get_or_init(build_images)
}

/// One test's world: an instance id, a database file, and cleanup of every
/// container carrying the instance id when the last handle is dropped.
pub struct TestEnv {
    pub instance: String,
    pub db_path: PathBuf,
    pub image: String,
    pub docker: Docker,
    _dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> Arc<Self> {
        Self::with_image(&images().runner)
    }

    /// Runners that ignore SIGTERM, as the real one does: for the tests of
    /// stops, restarts and crashes, where a kinder runner would hide waits.
    pub fn stubborn() -> Arc<Self> {
        Self::with_image(&images().stubborn)
    }

    pub fn with_image(image: &str) -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        Arc::new(Self {
            instance: format!("test-{}", uuid::Uuid::new_v4().simple()),
            db_path: dir.path().join("orchestrator.db"),
            image: image.to_owned(),
            docker: docker(),
            _dir: dir,
        })
    }

    /// Settings as the test binary would get them; `extra` are flag/value
    /// pairs that override the defaults below.
    pub fn settings(&self, extra: &[&str]) -> Settings {
        let mut args = vec![
            "orchestrator".to_owned(),
            "--port=0".into(),
            "--listen-address=127.0.0.1".into(),
            "--node-env=development".into(),
            "--reuse-runner-mode=false".into(),
            format!("--database-url={}", self.db_path.display()),
            format!("--orchestrator-id={}", self.instance),
            format!("--docker-image-name={}", self.image),
            "--runners-host=127.0.0.1".into(),
            "--runner-bind-address=127.0.0.1".into(),
            "--cleanup-interval=3600".into(),
            "--inactivity-timeout=60".into(),
            "--runner-stop-timeout-seconds=1".into(),
            // Tests provision in bursts from one address.
            "--provision-rate-per-minute=0".into(),
            // Rules are proven in the egress tier's own namespaces.
            "--runner-egress=all".into(),
        ];
        let overridden = |arg: &String| {
            let flag = arg.split('=').next().unwrap_or_default();
            extra.iter().any(|e| e.split('=').next() == Some(flag))
        };
        args.retain(|arg| !overridden(arg));
        args.extend(extra.iter().map(|arg| arg.to_string()));
        Settings::from_env_and_args(args).expect("test settings")
    }

    /// This instance's containers, running or not.
    pub async fn containers(&self) -> Vec<ContainerSummary> {
        instance_containers(&self.docker, &self.instance).await
    }

    /// The warm pool's claim watermark on the engine: the number its
    /// record container is named with (`taylored-claims-<digest>-<mark>`).
    pub async fn claim_watermark(&self) -> Option<i64> {
        let label = format!("{INSTANCE_LABEL}={}", self.instance);
        let filters = HashMap::from([(
            "label",
            vec![label.as_str(), taylored_orchestrator::config::CLAIMS_LABEL],
        )]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .unwrap()
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .filter_map(|name| name.rsplit('-').next()?.parse().ok())
            .max()
    }

    pub async fn running_container_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .containers()
            .await
            .into_iter()
            .filter(|c| c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING))
            .filter_map(|c| c.id)
            .collect();
        ids.sort();
        ids
    }

    pub async fn inspect(&self, container: &str) -> bollard::models::ContainerInspectResponse {
        self.docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .unwrap()
    }

    /// Starts (or only creates) a runner container behind the
    /// orchestrator's back, labelled for this instance.
    pub async fn create_runner_container(&self, session: &str, name: &str, start: bool) -> String {
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            env: Some(vec!["PORT=3000".into()]),
            labels: Some(HashMap::from([
                (SESSION_LABEL.to_owned(), session.to_owned()),
                (INSTANCE_LABEL.to_owned(), self.instance.clone()),
            ])),
            exposed_ports: Some(vec!["3000/tcp".into()]),
            host_config: Some(HostConfig {
                port_bindings: Some(HashMap::from([(
                    "3000/tcp".to_owned(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        let id = self
            .docker
            .create_container(Some(options), body)
            .await
            .unwrap()
            .id;
        if start {
            self.docker.start_container(&id, None).await.unwrap();
        }
        id
    }

    /// The database beside the service (without its lock), as an operator
    /// would open it.
    pub async fn db(&self) -> Db {
        Db::connect_unlocked(&self.db_path.display().to_string())
            .await
            .unwrap()
    }

    /// The audit trail's actions for a session, oldest first.
    pub async fn audit_actions(&self, session: &str) -> Vec<String> {
        let trail = self.db().await.audit_trail(session).await.unwrap();
        trail.into_iter().map(|record| record.action).collect()
    }

    /// The same as `actor:action`.
    pub async fn audit_actions_by_actor(&self, session: &str) -> Vec<String> {
        let trail = self.db().await.audit_trail(session).await.unwrap();
        trail
            .into_iter()
            .map(|record| format!("{}:{}", record.actor, record.action))
            .collect()
    }

    pub async fn row(&self, session: &str) -> Option<RunnerRow> {
        self.db().await.find(session).await.unwrap()
    }

    /// Kills the session's runner behind the service's back, as a crash of
    /// the user's code would.
    pub async fn kill_runner(&self, session: &str) {
        let container = self.row(session).await.unwrap().container_id.unwrap();
        self.docker
            .kill_container(
                &container,
                None::<bollard::query_parameters::KillContainerOptions>,
            )
            .await
            .unwrap();
    }

    /// What the engine reported about this instance's containers since
    /// `since` (seconds since the epoch): `(container id, action,
    /// attributes)`, oldest first. Shows how a container was stopped (`kill`
    /// with its `signal`) and how it ended (`die` with its `exitCode`).
    pub async fn container_events(
        &self,
        since: i64,
    ) -> Vec<(String, String, HashMap<String, String>)> {
        use futures_util::StreamExt;
        let label = format!("{INSTANCE_LABEL}={}", self.instance);
        let filters = HashMap::from([("type", vec!["container"]), ("label", vec![label.as_str()])]);
        let until = (chrono::Utc::now().timestamp() + 1).to_string();
        let options = bollard::query_parameters::EventsOptionsBuilder::new()
            .since(&since.to_string())
            .until(&until)
            .filters(&filters)
            .build();
        let events: Vec<_> = self.docker.events(Some(options)).collect().await;
        events
            .into_iter()
            .map(|event| {
                let event = event.expect("engine events");
                let actor = event.actor.unwrap_or_default();
                (
                    actor.id.unwrap_or_default(),
                    event.action.unwrap_or_default(),
                    actor.attributes.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Waits until the service has dropped the session's row; returns how
    /// long that took.
    pub async fn until_row_dropped(&self, session: &str, limit: Duration) -> Duration {
        eventually(
            limit,
            &format!("the row of `{session}` dropped"),
            || async { self.row(session).await.is_none() },
        )
        .await
    }

    /// Starts the service in this process and waits until it is ready and
    /// the removals its startup reconcile left for later are done.
    pub async fn spawn(self: &Arc<Self>, extra: &[&str]) -> TestApp {
        let mut app = self.start(extra).await;
        app.reconciled =
            tokio::time::timeout(Duration::from_secs(60), app.readiness.wait_repaired())
                .await
                .expect("the service did not finish its startup reconcile within 60 s");
        app
    }

    /// Starts the service in this process without waiting for readiness.
    pub async fn start(self: &Arc<Self>, extra: &[&str]) -> TestApp {
        let application = Application::build(self.settings(extra))
            .await
            .expect("application starts");
        let port = application.port();
        let service = application.service().clone();
        let readiness = application.readiness().clone();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(application.run_until_stopped(shutdown.clone()));
        TestApp {
            api: Api::new(port),
            service,
            readiness,
            reconciled: Summary::default(),
            env: self.clone(),
            shutdown,
            server: Some(server),
        }
    }

    /// Starts the real binary on this environment's database and waits
    /// until it is ready.
    pub async fn spawn_binary(self: &Arc<Self>, extra_env: &[(&str, &str)]) -> BinaryApp {
        self.spawn_binary_without(extra_env, &[]).await
    }

    /// [`TestEnv::spawn_binary`] with the `defaults` settings left unset
    /// (the tiers turn admission off), so that the service's own defaults
    /// apply.
    pub async fn spawn_binary_without(
        self: &Arc<Self>,
        extra_env: &[(&str, &str)],
        defaults: &[&str],
    ) -> BinaryApp {
        let settings = self.settings(&[]);
        let mut command = service_command(&settings.database_url, &self.instance, &self.image);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        for key in defaults {
            command.env_remove(key);
        }
        let process = ServiceProcess::spawn(command, Duration::from_secs(60))
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        BinaryApp {
            api: Api::new(process.port),
            logs: process.logs.clone(),
            process,
            _env: self.clone(),
        }
    }
}

/// Instances of the tests that have finished. A create the engine was still
/// working on when a test's cleanup listed its containers shows up later
/// (the engine finishes it although the client is gone); every cleanup
/// sweeps the containers of all finished tests, so such a late one is
/// removed by the next test to finish.
static FINISHED: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl Drop for TestEnv {
    fn drop(&mut self) {
        let finished = {
            let mut finished = FINISHED.lock().unwrap_or_else(|e| e.into_inner());
            finished.push(self.instance.clone());
            finished.clone()
        };
        remove_instances_blocking(finished);
    }
}

/// The service running in this test process.
pub struct TestApp {
    pub api: Api,
    pub service: Service,
    pub readiness: Readiness,
    /// What the startup reconcile did (after [`TestEnv::spawn`]).
    pub reconciled: Summary,
    pub env: Arc<TestEnv>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    TestEnv::new().spawn(&[]).await
}

pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    TestEnv::new().spawn(extra).await
}

impl TestApp {
    /// A reaper of this service that the test steps with `try_once`.
    pub fn reaper(&self, inactivity_timeout: Duration) -> Reaper {
        self.service
            .reaper_with(inactivity_timeout, Duration::from_secs(30))
    }

    /// Nothing reached the engine or the database.
    pub async fn assert_untouched(&self) {
        assert!(
            self.env.containers().await.is_empty(),
            "a container was created"
        );
        assert!(
            self.service.db.all().await.unwrap().is_empty(),
            "a row was written"
        );
    }

    /// Stops the service the way SIGTERM does; its runners keep running.
    pub async fn stop(mut self) -> Arc<TestEnv> {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        self.env.clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The service as a separate process.
pub struct BinaryApp {
    pub api: Api,
    /// Every JSON log line the process wrote so far.
    pub logs: Logs,
    process: ServiceProcess,
    _env: Arc<TestEnv>,
}

impl BinaryApp {
    /// Waits until the removals the startup reconcile left for after
    /// readiness are done, and returns what it did in all.
    pub async fn wait_repaired(&self) -> String {
        let line = self
            .logs
            .wait_for("startup repairs finished", Duration::from_secs(60))
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        line["summary"].as_str().unwrap_or_default().to_owned()
    }

    /// A field of the first log line with `message`, as text.
    pub fn log_field(&self, message: &str, field: &str) -> String {
        self.logs
            .field(message, field)
            .unwrap_or_else(|| panic!("no `{message}` log line with `{field}`"))
    }

    pub fn kill_9(self) {
        self.process.kill_9();
    }

    /// Sends SIGTERM without waiting for the exit.
    pub fn send_sigterm(&self) {
        self.process.send_sigterm();
    }

    /// Waits for the exit (after [`BinaryApp::send_sigterm`]).
    pub async fn wait_exit(self) -> std::process::ExitStatus {
        let exited = self.process.wait_exit(Duration::from_secs(10)).await;
        exited.unwrap_or_else(|error| panic!("{error} of SIGTERM"))
    }

    /// Sends SIGTERM and returns the exit status.
    pub async fn terminate(self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.wait_exit().await
    }
}

/// A reply: status, headers and the JSON body (`Value::Null` if not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }

    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }

    pub fn endpoint(&self) -> &str {
        self.body["endpoint"].as_str().unwrap_or_default()
    }

    pub fn session_id(&self) -> &str {
        self.body["sessionId"].as_str().unwrap_or_default()
    }
}

/// Typed requests, shaped like the browser client's.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    fn new(port: u16) -> Self {
        Self {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A POST to `path`, to be completed by the caller.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// `GET path`, answered.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    /// `POST /api/runner/provision` with `{}`, and `X-Session-Id` if given.
    pub async fn provision(&self, session: Option<&str>) -> Reply {
        answered(self.try_provision(session).await)
    }

    pub async fn heartbeat(&self, session: &str) -> Reply {
        answered(self.try_heartbeat(session).await)
    }

    /// As the browser sends it: the id in the body and in the header.
    pub async fn deprovision(&self, session: &str) -> Reply {
        answered(self.try_deprovision(session).await)
    }

    /// Like [`Api::provision`], but a request the service never answered
    /// (it was killed mid-request) is an `Err`, not a panic: the crash
    /// harness counts those as outcome unknown.
    pub async fn try_provision(&self, session: Option<&str>) -> Result<Reply, reqwest::Error> {
        let mut request = self
            .client
            .post(self.url("/api/runner/provision"))
            .json(&serde_json::json!({}));
        if let Some(session) = session {
            request = request.header("X-Session-Id", session);
        }
        try_reply(request).await
    }

    /// Like [`Api::heartbeat`]; `Err` if the service never answered.
    pub async fn try_heartbeat(&self, session: &str) -> Result<Reply, reqwest::Error> {
        try_reply(
            self.client
                .post(self.url("/api/runner/heartbeat"))
                .json(&serde_json::json!({ "sessionId": session })),
        )
        .await
    }

    /// Like [`Api::deprovision`]; `Err` if the service never answered.
    pub async fn try_deprovision(&self, session: &str) -> Result<Reply, reqwest::Error> {
        try_reply(
            self.client
                .post(self.url("/api/runner/deprovision"))
                .header("X-Session-Id", session)
                .json(&serde_json::json!({ "sessionId": session })),
        )
        .await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        answered(try_reply(request).await)
    }
}

fn answered(reply: Result<Reply, reqwest::Error>) -> Reply {
    reply.expect("request reaches the service")
}

async fn try_reply(request: reqwest::RequestBuilder) -> Result<Reply, reqwest::Error> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await?;
    Ok(Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    })
}

/// Like [`assert_runner_answers`], but says what is wrong instead of
/// panicking, so that the crash harness can collect every violation of a run
/// before it fails. Gives up after 5 s: a runner that does not answer by then
/// is as good as gone.
pub async fn runner_answers(endpoint: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let response = client
        .get(endpoint)
        .send()
        .await
        .map_err(|error| format!("runner at {endpoint} does not answer: {error}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status != 200 || body["runner"] != "ok" {
        return Err(format!(
            "runner at {endpoint} answered {status} {body} instead of the stand-in runner"
        ));
    }
    Ok(())
}

/// GETs a runner's endpoint and checks that the stand-in runner answers.
/// A just-started container may take a moment to listen (the engine's port
/// forwarder accepts before it does), as clients' reconnects allow for.
pub async fn assert_runner_answers(endpoint: &str) {
    let what = format!("the runner at {endpoint} answering");
    let body: Value = wait_for(Duration::from_secs(5), &what, || async {
        let response = reqwest::get(endpoint).await.ok()?;
        assert_eq!(response.status(), 200);
        Some(response.json().await.unwrap())
    })
    .await;
    assert_eq!(body["runner"], "ok");
}

/// The URL of Socket.IO's websocket transport at a runner's endpoint, as
/// `io(endpoint)` opens it (`http` becomes `ws`, `https` `wss`).
pub fn socket_io_websocket_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/').replacen("http", "ws", 1);
    format!("{base}/socket.io/?EIO=4&transport=websocket")
}

pub type WebSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a WebSocket to a `ws://` URL. A host under `localhost` (a gateway
/// endpoint, `<token>.runners.localhost`) is reached on the loopback, as
/// browsers resolve it, with the URL's host in the `Host` header.
pub async fn connect_websocket(url: &str) -> Result<WebSocket, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = url
        .into_client_request()
        .map_err(|error| format!("{url}: {error}"))?;
    let host = request.uri().host().unwrap_or_default().to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let address = if host == "localhost" || host.ends_with(".localhost") {
        "127.0.0.1"
    } else {
        host.as_str()
    };
    let tcp = tokio::net::TcpStream::connect((address, port))
        .await
        .map_err(|error| format!("connect to {url}: {error}"))?;
    let (socket, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|error| format!("WebSocket upgrade at {url}: {error}"))?;
    Ok(socket)
}

/// The next message, within 10 s.
pub async fn next_message(socket: &mut WebSocket) -> Message {
    use futures_util::StreamExt;
    let next = tokio::time::timeout(Duration::from_secs(10), socket.next()).await;
    next.expect("a WebSocket message within 10 s")
        .expect("the WebSocket still open")
        .expect("a well-formed WebSocket message")
}

/// Socket.IO's websocket transport at a runner's endpoint, as the stand-in
/// runner speaks it: the open packet (returned, as JSON), the probe and the
/// echo of a `42["echo",…]` event and of a binary frame. Retries the
/// connection for 5 s: a just-started runner may not listen yet.
pub async fn assert_engine_io_echo(endpoint: &str) -> Value {
    use futures_util::SinkExt;
    let url = socket_io_websocket_url(endpoint);
    let mut socket = wait_for(
        Duration::from_secs(5),
        &format!("a WebSocket to {url}"),
        || {
            let url = url.clone();
            async move { connect_websocket(&url).await.ok() }
        },
    )
    .await;
    let open = next_message(&mut socket).await.into_text().unwrap();
    let handshake: Value = open
        .strip_prefix('0')
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("not an engine.io open packet: {open}"));
    assert!(
        handshake["sid"].as_str().is_some_and(|sid| !sid.is_empty()),
        "{open}"
    );
    assert_eq!(
        handshake["upgrades"],
        serde_json::json!(["websocket"]),
        "{open}"
    );
    let event = r#"42["echo",{"n":1,"text":"hé"}]"#;
    for (sent, answer) in [("2probe", "3probe"), (event, event)] {
        socket.send(Message::text(sent)).await.unwrap();
        assert_eq!(next_message(&mut socket).await.into_text().unwrap(), answer);
    }
    let bytes = vec![0u8, 1, 2, 255];
    socket.send(Message::binary(bytes.clone())).await.unwrap();
    assert_eq!(next_message(&mut socket).await.into_data(), bytes);
    socket.close(None).await.unwrap();
    handshake
}

/// Polls `check` until it gives a value; panics naming `what` if `limit`
/// passes first. The one way a test waits for the service or the engine.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(limit, what, check)
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

/// Waits until the clock, as the database writes it (milliseconds), is past
/// `stamp`: a time written now is later than one written then.
pub async fn clock_past(stamp: &str) {
    let what = format!("the clock passing {stamp}");
    eventually(Duration::from_secs(1), &what, || {
        std::future::ready(
            taylored_orchestrator::db::timestamp(chrono::Utc::now()).as_str() > stamp,
        )
    })
    .await;
}

/// [`wait_for`] a condition; returns how long it took.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = std::time::Instant::now();
    wait_for(limit, what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
    started.elapsed()
}
