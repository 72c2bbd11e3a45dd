//! The REST API: routes, middleware and handlers.

mod error;
mod extract;
mod rate_limit;

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Json, Router};
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

pub use error::{ApiError, Operation};
pub use extract::SESSION_HEADER;
use extract::{OptionalJson, SessionBody, SessionHeader};

use crate::backend::health::EngineHealth;
use crate::backend::{NetworkMode, RunnerBackend};
use crate::config::AllowedOrigins;
use crate::db::Db;
use crate::domain::SessionId;
use crate::egress::{Egress, EgressPolicy};
use crate::lifecycle::{Heartbeat, Provisioned, RunnerError, Runners};
use crate::metrics::Metrics;
use crate::readiness::{RECONCILE_PATIENCE, Readiness};
use crate::service::Service;

/// The largest request body accepted; the API's bodies are a few dozen bytes.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// How long browsers may cache a CORS preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// What the handlers share; each extracts only the part it uses.
///
/// axum clones the state for every request, and every reference count a
/// clone bumps is a write to memory that all workers share (a dozen `Arc`s
/// when the parts sat side by side): behind one `Arc`, a request bumps one.
#[derive(Clone)]
struct AppState(Arc<StateParts>);

/// The parts of [`AppState`].
struct StateParts {
    /// Extractors clone it for every request, so it sits behind one `Arc`.
    runners: Arc<Runners>,
    readiness: Readiness,
    checks: ReadinessChecks,
    scrape: Scrape,
    reuse_runner_mode: ReuseRunnerMode,
    egress: Arc<Egress>,
}

/// `State<Part>` for each part of the state, as `#[derive(FromRef)]` gives
/// for the fields of a struct.
macro_rules! state_parts {
    ($($field:ident: $part:ty),* $(,)?) => {$(
        impl FromRef<AppState> for $part {
            fn from_ref(state: &AppState) -> Self {
                state.0.$field.clone()
            }
        }
    )*};
}

state_parts! {
    egress: Arc<Egress>,
    runners: Arc<Runners>,
    readiness: Readiness,
    checks: ReadinessChecks,
    scrape: Scrape,
    reuse_runner_mode: ReuseRunnerMode,
}

/// What `/readyz` asks beyond the startup phase.
#[derive(Clone)]
struct ReadinessChecks {
    egress: Arc<Egress>,
    db: Db,
    health: EngineHealth,
    backend: Arc<dyn RunnerBackend>,
}

/// What `/metrics` renders.
#[derive(Clone)]
struct Scrape {
    db: Db,
    metrics: Arc<Metrics>,
}

/// `REUSE_RUNNER_MODE`: one shared runner, never deprovisioned.
#[derive(Clone, Copy)]
struct ReuseRunnerMode(bool);

pub fn router(service: &Service, readiness: Readiness) -> Router {
    let settings = &service.settings;
    // Production never shows clients what went wrong inside.
    let show_details = !settings.is_production();
    // One stack, added once: every `Router::layer` wraps each route again,
    // in a boxed service that is cloned and called for every request.
    let middleware = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(cors(&settings.cors_allowed_origins))
        .layer(HandleErrorLayer::new(|_: BoxError| async {
            ApiError::Timeout
        }))
        .timeout(settings.request_timeout)
        // The handlers' answers, the only ones with a 500's details, in a
        // plain map: axum's `middleware::map_response` boxes a future for
        // every request to run a function that awaits nothing.
        .map_response(move |response: Response| {
            if show_details {
                error::show_details(response)
            } else {
                response
            }
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES));
    let state = AppState(Arc::new(StateParts {
        runners: Arc::new(service.runners.clone()),
        readiness,
        egress: Arc::new(service.egress.clone()),
        checks: ReadinessChecks {
            egress: Arc::new(service.egress.clone()),
            db: service.db.clone(),
            health: service.health.clone(),
            backend: Arc::clone(&service.backend),
        },
        scrape: Scrape {
            db: service.db.clone(),
            metrics: Arc::clone(&service.metrics),
        },
        reuse_runner_mode: ReuseRunnerMode(settings.reuse_runner_mode),
    }));
    let runner_api = Router::new()
        .route(
            "/api/runner/provision",
            rate_limit::limit(post(provision), &settings.admission),
        )
        .route("/api/runner/deprovision", post(deprovision))
        .route("/api/runner/heartbeat", post(heartbeat));
    Router::new()
        .route("/", get(liveness))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(runner_api)
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware)
        .with_state(state)
}

/// Runner requests wait for the startup reconcile: before it, a heartbeat
/// could answer 404 for a runner about to be adopted (and the browser never
/// heartbeats again after a 404). One that arrives while it runs is held
/// until it is done (see `readiness`); one that arrives while the service
/// cannot reconcile is answered 503. The first argument of every runner
/// handler, so it answers before any input is read; an extractor rather
/// than a route middleware, which would box the route and its future for
/// every request. It borrows the state's `Readiness` rather than cloning it
/// (as `FromRef` would): reference counts are writes that the workers share.
struct Ready;

impl FromRequestParts<AppState> for Ready {
    type Rejection = ApiError;

    async fn from_request_parts(_: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        (state.0.readiness)
            .admit(RECONCILE_PATIENCE)
            .await
            .map(|()| Self)
            .map_err(ApiError::NotReady)
    }
}

/// The process is alive.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// The service can do its work: reconciled, database writable, engine
/// reachable; otherwise 503 saying which is missing.
async fn readyz(
    State(readiness): State<Readiness>,
    State(checks): State<ReadinessChecks>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(reason) = readiness.phase().not_ready() {
        return Err(ApiError::NotReady(reason));
    }
    if let Err(error) = checks.db.check_writable().await {
        return Err(ApiError::NotReady(format!(
            "the database does not take writes: {error}"
        )));
    }
    if let Err(error) = checks.health.ping().await {
        return Err(ApiError::NotReady(format!(
            "the Docker Engine is unreachable: {error}"
        )));
    }
    match checks.backend.image_present().await {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::NotReady(checks.backend.missing_image_hint())),
        Err(error) => {
            return Err(ApiError::NotReady(format!(
                "cannot ask the Docker Engine for the runner image: {error}"
            )));
        }
    }
    let egress = checks.egress.status();
    if let (Some(problem), true) = (&egress.problem, egress.policy.is_enforced()) {
        return Err(ApiError::NotReady(problem.clone()));
    }
    Ok(Json(
        serde_json::json!({ "status": "ready", "egress": egress }),
    ))
}

/// Every origin by default, as the first orchestrator answered (the browser
/// client is always cross-origin); `CORS_ALLOWED_ORIGINS` narrows it.
/// Requested headers are mirrored, as the `cors` package did.
fn cors(origins: &AllowedOrigins) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(PREFLIGHT_MAX_AGE);
    match origins {
        AllowedOrigins::Any => layer.allow_origin(AllowOrigin::any()),
        AllowedOrigins::List(list) => layer.allow_origin(AllowOrigin::list(
            list.iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )),
    }
}

/// Prometheus text exposition (OpenMetrics).
async fn metrics(State(scrape): State<Scrape>) -> Result<Response, ApiError> {
    let counts = scrape.db.count_by_state().await?;
    let text = scrape.metrics.render(&counts);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn liveness() -> &'static str {
    "Orchestrator service is running!"
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProvisionRequest {
    network_mode: Option<String>,
    /// Narrows `RUNNER_EGRESS` for this runner (`none`, or `public` under
    /// `all`). Any JSON value, so that a number or an object is the same
    /// `400 INVALID_EGRESS` as an unknown name, not a body-shape error.
    egress: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProvisionResponse {
    message: &'static str,
    endpoint: String,
    session_id: String,
}

/// A `{"message": ...}` answer, written straight into its body rather than
/// formatted into a `String` and serialized: a heartbeat's answer is the
/// one sent by the thousand. Its texts are fixed and need no escaping; a
/// session id is visible ASCII, in which JSON escapes only `"` and `\`.
/// The bytes are what serde_json wrote for `{ message: String }`.
struct MessageResponse(Vec<u8>);

impl MessageResponse {
    const START: &str = r#"{"message":""#;
    const END: &str = r#""}"#;

    /// A fixed text.
    fn new(text: &'static str) -> Self {
        Self::write(text, "", "")
    }

    /// Fixed texts around a session id.
    fn about(before: &'static str, session: &SessionId, after: &'static str) -> Self {
        Self::write(before, session.as_str(), after)
    }

    /// `id` is visible ASCII (a session id's), escaped here.
    fn write(before: &'static str, id: &str, after: &'static str) -> Self {
        debug_assert!(
            [before, after].iter().all(|text| !text
                .bytes()
                .any(|b| b.is_ascii_control() || b == b'"' || b == b'\\')),
            "a fixed text that needs escaping"
        );
        let mut body = Vec::with_capacity(
            Self::START.len() + before.len() + 2 * id.len() + after.len() + Self::END.len(),
        );
        body.extend_from_slice(Self::START.as_bytes());
        body.extend_from_slice(before.as_bytes());
        for byte in id.bytes() {
            if matches!(byte, b'"' | b'\\') {
                body.push(b'\\');
            }
            body.push(byte);
        }
        body.extend_from_slice(after.as_bytes());
        body.extend_from_slice(Self::END.as_bytes());
        Self(body)
    }
}

impl IntoResponse for MessageResponse {
    fn into_response(self) -> Response {
        let mut response = Response::new(self.0.into());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

async fn provision(
    _: Ready,
    State(runners): State<Arc<Runners>>,
    State(egress): State<Arc<Egress>>,
    SessionHeader(session): SessionHeader,
    OptionalJson(request): OptionalJson<ProvisionRequest>,
) -> Result<(StatusCode, Json<ProvisionResponse>), ApiError> {
    let network_mode = match request.network_mode.filter(|mode| !mode.is_empty()) {
        Some(mode) => mode.parse().map_err(ApiError::InvalidNetworkMode)?,
        None => NetworkMode::Default,
    };
    let network_mode = egress_network(&egress, request.egress.as_ref(), network_mode).await?;
    let outcome =
        run_to_completion(async move { runners.provision(session, &network_mode).await }).await?;
    let (status, message, runner) = match outcome {
        Provisioned::Created(runner) | Provisioned::Claimed(runner) => (
            StatusCode::CREATED,
            "Runner provisioned successfully.",
            runner,
        ),
        Provisioned::Existing(runner) => (
            StatusCode::OK,
            "Runner already exists for this session.",
            runner,
        ),
        Provisioned::ExistingSingleton(runner) => (
            StatusCode::OK,
            "Returning existing singleton runner.",
            runner,
        ),
    };
    Ok((
        status,
        Json(ProvisionResponse {
            message,
            endpoint: runner.endpoint,
            session_id: runner.session_id,
        }),
    ))
}

/// The network a provision's runner joins under the egress policy and the
/// body's `egress`, which may narrow it only.
async fn egress_network(
    egress: &Egress,
    requested: Option<&serde_json::Value>,
    mode: NetworkMode,
) -> Result<NetworkMode, ApiError> {
    let requested = match requested {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(text)) => Some(
            text.parse::<EgressPolicy>()
                .map_err(|reason| ApiError::InvalidEgress(format!("egress: {reason}")))?,
        ),
        Some(other) => {
            return Err(ApiError::InvalidEgress(format!(
                "egress must be a string (none, public or all), not {other}"
            )));
        }
    };
    let policy = egress.networks().policy;
    let network = egress
        .networks()
        .network_for(requested, mode)
        .map_err(|refusal| ApiError::InvalidEgress(refusal.to_string()))?;
    if requested.is_some_and(|asked| asked != policy) {
        egress.narrowing().await.map_err(ApiError::NotReady)?;
    }
    Ok(network)
}

async fn deprovision(
    _: Ready,
    State(ReuseRunnerMode(reuse_runner_mode)): State<ReuseRunnerMode>,
    State(runners): State<Arc<Runners>>,
    header: SessionHeader,
    body: SessionBody,
) -> Result<MessageResponse, ApiError> {
    // The shared runner outlives every session, so the mode is checked
    // before anything else, as the first orchestrator did.
    if reuse_runner_mode {
        return Ok(MessageResponse::new(
            "Deprovisioning is disabled in REUSE_RUNNER_MODE.",
        ));
    }
    let session = required_session(body, header, Operation::Deprovision)?;
    let answer = MessageResponse::about(
        "Runner for session ",
        &session,
        " deprovisioned successfully.",
    );
    run_to_completion(async move { runners.deprovision(&session).await }).await?;
    Ok(answer)
}

async fn heartbeat(
    _: Ready,
    State(runners): State<Arc<Runners>>,
    header: SessionHeader,
    body: SessionBody,
) -> Result<MessageResponse, ApiError> {
    let session = required_session(body, header, Operation::Heartbeat)?;
    Ok(match runners.heartbeat(&session)? {
        Heartbeat::Session => {
            MessageResponse::about("Heartbeat received for session ", &session, ".")
        }
        Heartbeat::Singleton => MessageResponse::new("Heartbeat received for singleton runner."),
    })
}

/// The body's `sessionId` wins over the `X-Session-Id` header, as in the
/// first orchestrator (`req.body.sessionId || req.headers['x-session-id']`).
fn required_session(
    SessionBody(body): SessionBody,
    SessionHeader(header): SessionHeader,
    operation: Operation,
) -> Result<SessionId, ApiError> {
    body?
        .or(header)
        .ok_or(ApiError::SessionIdRequired(operation))
}

/// Runs a state-changing operation on its own task, so that a client that
/// disconnects (or a request timeout) cannot cancel it half-way between the
/// engine and the database.
async fn run_to_completion<T: Send + 'static>(
    operation: impl Future<Output = Result<T, RunnerError>> + Send + 'static,
) -> Result<T, RunnerError> {
    match tokio::spawn(operation).await {
        Ok(result) => result,
        Err(join_error) => Err(RunnerError::Panicked(join_error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::test_support::Harness;

    /// One request through the whole router, as from a client on loopback.
    async fn send(
        router: &Router,
        method: &str,
        path: &str,
        session: &str,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(SESSION_HEADER, session)
            .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
            .body(Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn provision_heartbeat_deprovision_through_the_router() {
        let harness = Harness::new(&[]).await;
        let router = harness.router();

        let (status, body) = send(&router, "POST", "/api/runner/provision", "s-1").await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["sessionId"], "s-1");
        let port = harness.backend.runners()[0].host_port.unwrap();
        assert_eq!(body["endpoint"], format!("http://localhost:{port}"));
        let (status, _) = send(&router, "POST", "/api/runner/heartbeat", "s-1").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = send(&router, "POST", "/api/runner/deprovision", "s-1").await;
        assert_eq!(status, StatusCode::OK);
        assert!(harness.backend.runners().is_empty());
        let (status, body) = send(&router, "POST", "/api/runner/heartbeat", "s-1").await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::NOT_FOUND, &"RUNNER_NOT_FOUND".into())
        );
    }

    /// What `Json(MessageResponse { message })` answered before.
    fn serialized(message: String) -> Vec<u8> {
        #[derive(Serialize)]
        struct Owned {
            message: String,
        }
        serde_json::to_vec(&Owned { message }).unwrap()
    }

    #[tokio::test]
    async fn messages_are_the_json_that_serde_wrote() {
        let ids = [
            "wrk-known",
            r#"say"hi""#,
            r"back\slash",
            r#"\""#,
            r#"""#,
            r"\",
            "!#$%&'()*+,-./:;<=>?@[]^_`{|}~",
        ];
        for raw in ids {
            let session = SessionId::parse(raw).unwrap();
            let answer = MessageResponse::about("Heartbeat received for session ", &session, ".");
            let expected = serialized(format!("Heartbeat received for session {raw}."));
            assert_eq!(answer.0, expected, "{raw:?}");
            let value: serde_json::Value = serde_json::from_slice(&answer.0).unwrap();
            assert_eq!(
                value["message"],
                format!("Heartbeat received for session {raw}.")
            );
        }
        let text = "Heartbeat received for singleton runner.";
        assert_eq!(MessageResponse::new(text).0, serialized(text.to_owned()));

        let response = MessageResponse::new(text).into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(body, serialized(text.to_owned()));
    }

    proptest::proptest! {
        #[test]
        fn every_session_id_is_escaped_as_serde_escapes_it(raw in "[!-~]{1,128}") {
            let session = SessionId::parse(&raw).unwrap();
            let answer = MessageResponse::about("Runner for session ", &session, " deprovisioned successfully.");
            let expected = serialized(format!("Runner for session {raw} deprovisioned successfully."));
            proptest::prop_assert_eq!(answer.0, expected);
        }
    }

    #[test]
    fn the_body_session_wins_over_the_header() {
        let id = |raw: &str| SessionId::parse(raw).unwrap();
        let required = |body, header: Option<&str>| {
            let header = SessionHeader(header.map(id));
            required_session(SessionBody(body), header, Operation::Heartbeat)
        };
        assert_eq!(required(Ok(Some(id("b"))), Some("h")).unwrap(), id("b"));
        assert_eq!(required(Ok(None), Some("h")).unwrap(), id("h"));
        assert!(matches!(
            required(Ok(None), None),
            Err(ApiError::SessionIdRequired(Operation::Heartbeat))
        ));
        let invalid = Err(ApiError::InvalidSessionId(
            crate::domain::InvalidSessionId::NotVisibleAscii,
        ));
        assert!(matches!(
            required(invalid, Some("h")),
            Err(ApiError::InvalidSessionId(_))
        ));
    }

    #[tokio::test]
    async fn readyz_names_a_missing_image_and_an_unreachable_engine() {
        let harness = Harness::new(&[]).await;
        let router = harness.router();
        let (status, _) = send(&router, "GET", "/readyz", "s").await;
        assert_eq!(status, StatusCode::OK);

        harness.backend.set_image_present(false);
        let (status, body) = send(&router, "GET", "/readyz", "s").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body["message"].as_str().unwrap().contains("runner-image"),
            "{body}"
        );

        harness.backend.set_reachable(false);
        let (status, body) = send(&router, "GET", "/readyz", "s").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body["message"].as_str().unwrap().contains("unreachable"),
            "{body}"
        );
        assert!(!harness.service.health.is_reachable());
    }
}
