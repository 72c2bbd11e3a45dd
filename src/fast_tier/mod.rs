//! The fast tier (issue 11): the service's behaviour through its HTTP
//! router, its workers' single steps and the in-memory backend, with no
//! Docker Engine (`cargo test --lib`). Every test looks at what it names in
//! the HTTP answers, the database rows, the backend's runners and the audit
//! log. Races are made deterministic with the backend's holds
//! (`hold_starts`, `hold_removes`), never with sleeps.
//!
//! This file holds what the tests share; it is the one place that knows how
//! the service's parts are put together.

mod backup;
mod burst;
mod egress;
mod limits;
mod provision;
mod races;
mod reaper;
mod reconcile;
mod warm_pool;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::backend::memory::MemoryBackend;
use crate::backend::{ObservedRunner, RunnerBackend, RunnerSpec};
use crate::config::OrphanPolicy;
use crate::db::{Db, RunnerRow, RunnerState, timestamp};
use crate::domain::RunnerKind;
use crate::domain::Summary;
use crate::lifecycle::Runners;
use crate::readiness::Readiness;
use crate::reaper::{ReapOutcome, Reaper};
use crate::reconcile::Reconciler;
use crate::test_support::Harness;
use crate::warm_pool::WarmPool;

/// The address requests come from unless a test says otherwise.
pub const CLIENT: [u8; 4] = [127, 0, 0, 1];

/// One HTTP answer: status, headers and the JSON body (`Null` if none).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// Asserts an error answer: status, `error` code and exact `message`.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str, message: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["error"], code, "{self:?}");
        assert_eq!(self.body["message"], message, "{self:?}");
    }

    /// Asserts an error answer by status and code; returns its message.
    #[track_caller]
    pub fn error(&self, status: StatusCode, code: &str) -> &str {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["error"], code, "{self:?}");
        self.body["message"].as_str().expect("a message")
    }

    /// The `sessionId` of a provision's answer.
    pub fn session(&self) -> String {
        self.body["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {self:?}"))
            .to_owned()
    }

    pub fn endpoint(&self) -> &str {
        self.body["endpoint"]
            .as_str()
            .unwrap_or_else(|| panic!("no endpoint in {self:?}"))
    }
}

/// One audit line as the tests compare it: (actor, action, reason).
pub type Audit = (String, String, String);

pub fn audit(actor: &str, action: &str, reason: &str) -> Audit {
    (actor.to_owned(), action.to_owned(), reason.to_owned())
}

/// The service over the memory backend: its router (ready unless built
/// with [`Service::starting`]) and its parts.
pub struct Service {
    pub harness: Harness,
    pub router: Router,
    pub readiness: Readiness,
}

impl Service {
    /// A service whose startup reconcile is done, with settings `args`
    /// (flags, e.g. `--warm-pool-size=2`).
    pub async fn new(args: &[&str]) -> Self {
        let service = Self::starting(args).await;
        service.readiness.ready(Summary::default());
        service
    }

    /// A service that has not reconciled yet.
    pub async fn starting(args: &[&str]) -> Self {
        let harness = Harness::new(args).await;
        let readiness = Readiness::default();
        let router = crate::http::router(&harness.service, readiness.clone());
        Self {
            harness,
            router,
            readiness,
        }
    }

    pub fn backend(&self) -> &MemoryBackend {
        &self.harness.backend
    }

    pub fn runners(&self) -> &Runners {
        &self.harness.runners
    }

    pub fn db(&self) -> &Db {
        self.harness.db()
    }

    /// The reaper with the settings' timeouts; step it with `sweep`.
    pub fn reaper(&self) -> Reaper {
        self.harness.service.reaper()
    }

    /// The warm pool of `size` runners; step it with `try_once`.
    pub fn warm_pool(&self, size: u32) -> WarmPool {
        self.harness.service.warm_pool(size)
    }

    /// Writes the heartbeats answered since the last write; how many.
    pub async fn flush_heartbeats(&self) -> Result<usize, crate::db::DbError> {
        self.harness.service.heartbeats.flush().await
    }

    /// Loads the running sessions that heartbeats are answered from, as a
    /// start does once its reconcile has written its rows.
    pub async fn load_running(&self) -> Result<usize, crate::db::DbError> {
        self.harness.service.heartbeats.load_running().await
    }

    /// One reaper sweep as of `ahead` from now.
    pub async fn sweep(&self, ahead: Duration) -> ReapOutcome {
        self.sweep_at(Utc::now() + ahead).await
    }

    pub async fn sweep_at(&self, now: DateTime<Utc>) -> ReapOutcome {
        self.reaper().try_once(now).await.expect("a sweep")
    }

    pub fn reconciler(&self) -> Reconciler {
        self.harness.service.reconciler()
    }

    pub fn reconciler_with(&self, policy: OrphanPolicy) -> Reconciler {
        self.harness.service.reconciler_with(policy)
    }

    /// What a restart on this database and engine does before it serves:
    /// the startup reconcile, which also fills the running set that
    /// heartbeats are answered from. Its deferred repairs are run to the end too, and the
    /// summaries of both parts returned.
    pub async fn restart(&self, policy: OrphanPolicy) -> (Summary, Summary) {
        let reconciler = self.reconciler_with(policy);
        let (before, repairs) = reconciler.run_startup().await.expect("a startup reconcile");
        let after = repairs.run(&reconciler).await;
        (before, after)
    }

    /// Sends `request` from [`CLIENT`] unless it names its own address.
    pub async fn send(&self, request: Request<Body>) -> Answer {
        send(self.router.clone(), request).await
    }

    /// `POST /api/runner/provision`, with `X-Session-Id` if given and a
    /// JSON body if given.
    pub async fn provision(&self, session: Option<&str>) -> Answer {
        send(self.router.clone(), provision_request(session, None)).await
    }

    pub async fn provision_with(&self, session: Option<&str>, body: Value) -> Answer {
        send(self.router.clone(), provision_request(session, Some(body))).await
    }

    /// `POST /api/runner/heartbeat` as the browser sends it.
    pub async fn heartbeat(&self, session: &str) -> Answer {
        send(self.router.clone(), heartbeat_request(session)).await
    }

    /// `POST /api/runner/deprovision` as the browser sends it (body and
    /// header).
    pub async fn deprovision(&self, session: &str) -> Answer {
        send(self.router.clone(), deprovision_request(session)).await
    }

    pub async fn row(&self, session: &str) -> Option<RunnerRow> {
        self.db().find(session).await.expect("a row query")
    }

    /// The session's row, which must exist.
    pub async fn existing_row(&self, session: &str) -> RunnerRow {
        self.row(session)
            .await
            .unwrap_or_else(|| panic!("no row for {session}"))
    }

    pub async fn rows(&self) -> Vec<RunnerRow> {
        self.db().all().await.expect("rows")
    }

    pub async fn audit(&self, session: &str) -> Vec<Audit> {
        self.db()
            .audit_trail(session)
            .await
            .expect("the audit trail")
            .into_iter()
            .map(|record| (record.actor, record.action, record.reason))
            .collect()
    }

    /// The backend's runners of a session (running or not).
    pub fn runners_of(&self, session: &str) -> Vec<ObservedRunner> {
        self.backend()
            .runners()
            .into_iter()
            .filter(|runner| runner.session_id == session)
            .collect()
    }

    /// The session's one runner on the backend, which must be running.
    #[track_caller]
    pub fn running_runner(&self, session: &str) -> ObservedRunner {
        let runners = self.runners_of(session);
        assert_eq!(runners.len(), 1, "{runners:?}");
        assert!(runners[0].running, "{runners:?}");
        runners[0].clone()
    }

    /// Provisions `session`, which must get a new runner; returns it after
    /// checking the answer, the row and the backend agree.
    pub async fn provisioned(&self, session: &str) -> ObservedRunner {
        let answer = self.provision(Some(session)).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        assert_eq!(answer.session(), session);
        let runner = self.running_runner(session);
        let port = runner.host_port.expect("a published port");
        assert_eq!(answer.endpoint(), format!("http://localhost:{port}"));
        let row = self.existing_row(session).await;
        assert_eq!(row.state, RunnerState::Running);
        assert_eq!(row.container_id.as_deref(), Some(runner.id.as_str()));
        assert_eq!(row.host_port, Some(port));
        runner
    }

    /// Asserts the session has neither a row nor a runner, and that its
    /// heartbeat answers 404.
    pub async fn assert_gone(&self, session: &str) {
        assert_eq!(self.row(session).await, None);
        assert_eq!(self.runners_of(session), []);
        self.heartbeat(session).await.assert_error(
            StatusCode::NOT_FOUND,
            "RUNNER_NOT_FOUND",
            "No active runner found for this session ID.",
        );
    }

    /// Sets columns of a session's row directly, as a crash or an earlier
    /// process would have left them (`sets`: an SQL `SET` list).
    pub async fn force_row(&self, session: &str, sets: &str) {
        let sql = format!("UPDATE runners SET {sets} WHERE session_id = ?1");
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(session)
            .execute(self.db().pool())
            .await
            .expect("a row update");
        assert_eq!(done.rows_affected(), 1, "no row for {session}");
    }

    /// Makes a row look written by a process long gone: a restart looks at
    /// it at once instead of waiting for the engine to settle.
    pub async fn age_row(&self, session: &str) {
        let old = timestamp(Utc::now() - chrono::Duration::hours(1));
        self.force_row(session, &format!("updated_at = '{old}'"))
            .await;
    }

    /// Starts a runner on the backend behind the service's back, as an
    /// earlier process (or another tool) would have.
    pub async fn start_behind_the_back(&self, session: &str, kind: RunnerKind) -> ObservedRunner {
        let name = format!("leftover-{session}");
        self.backend()
            .start(&RunnerSpec {
                session_id: session,
                name: &name,
                network_mode: &crate::backend::NetworkMode::Default,
                kind,
                pooled: false,
                token: None,
            })
            .await
            .expect("a start");
        self.running_runner(session)
    }
}

/// Sends one request through `router` (from [`CLIENT`] unless it carries
/// its own `ConnectInfo`), as a `'static` future that a test may spawn.
pub async fn send(router: Router, mut request: Request<Body>) -> Answer {
    if request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_none()
    {
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((CLIENT, 40000))));
    }
    let response = router.oneshot(request).await.expect("an answer");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Answer {
        status,
        headers,
        body,
    }
}

pub fn json_post(path: &str, session_header: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut request = Request::builder().method("POST").uri(path);
    if let Some(session) = session_header {
        request = request.header(crate::http::SESSION_HEADER, session);
    }
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    request.body(body).expect("a request")
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("a request")
}

pub fn provision_request(session: Option<&str>, body: Option<Value>) -> Request<Body> {
    json_post("/api/runner/provision", session, body)
}

pub fn heartbeat_request(session: &str) -> Request<Body> {
    json_post(
        "/api/runner/heartbeat",
        None,
        Some(json!({ "sessionId": session })),
    )
}

pub fn deprovision_request(session: &str) -> Request<Body> {
    json_post(
        "/api/runner/deprovision",
        Some(session),
        Some(json!({ "sessionId": session })),
    )
}

/// The longest a test waits for the service to reach a hold: far more than
/// it ever needs, so that a broken service fails the test instead of
/// hanging it.
const HOLD_BOUND: Duration = Duration::from_secs(10);

/// Returns once `count` starts wait at the backend's hold.
pub async fn held_starts(backend: &MemoryBackend, count: usize) {
    tokio::time::timeout(HOLD_BOUND, backend.wait_for_held_starts(count))
        .await
        .unwrap_or_else(|_| panic!("{count} starts never reached the engine"));
}

/// Returns once `count` removals wait at the backend's hold.
pub async fn held_removes(backend: &MemoryBackend, count: usize) {
    tokio::time::timeout(HOLD_BOUND, backend.wait_for_held_removes(count))
        .await
        .unwrap_or_else(|_| panic!("{count} removals never reached the engine"));
}

/// Returns a time in a later millisecond than every time taken before the
/// call (the database stores milliseconds), waiting for the clock to get
/// there: what a test needs to tell "before" from "after" by the clock.
pub async fn next_millisecond() -> DateTime<Utc> {
    let before = timestamp(Utc::now());
    loop {
        let now = Utc::now();
        if timestamp(now) > before {
            return now;
        }
        tokio::task::yield_now().await;
    }
}
