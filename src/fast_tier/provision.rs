//! Provision, heartbeat and deprovision through the router, and the JSON
//! errors of bad input.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use super::{Service, audit, json_post};
use crate::backend::memory::StartFailure;
use crate::db::RunnerState;
use crate::lifecycle::NO_ENDPOINT;

#[tokio::test]
async fn a_new_session_gets_a_runner_its_row_and_an_audit_line() {
    let service = Service::new(&[]).await;
    let answer = service.provision(Some("s-1")).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.body["message"], "Runner provisioned successfully.");
    let runner = service.running_runner("s-1");
    assert_eq!(
        answer.body,
        json!({
            "message": "Runner provisioned successfully.",
            "endpoint": format!("http://localhost:{}", runner.host_port.unwrap()),
            "sessionId": "s-1",
        })
    );
    let row = service.existing_row("s-1").await;
    assert_eq!(row.state, RunnerState::Running);
    assert_eq!(row.container_id, Some(runner.id.clone()));
    assert!(!row.pooled);
    assert_eq!(
        service.audit("s-1").await,
        [audit("api", "provisioned", "provision request")]
    );
}

#[tokio::test]
async fn a_provision_without_a_session_id_or_body_gets_a_generated_one() {
    let service = Service::new(&[]).await;
    let answer = service.provision(None).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    let session = answer.session();
    assert!(uuid::Uuid::parse_str(&session).is_ok(), "{session}");
    service.running_runner(&session);
    assert_eq!(
        service.existing_row(&session).await.state,
        RunnerState::Running
    );

    // The browser's `{}` is the same request.
    let answer = service.provision_with(None, json!({})).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    assert_ne!(answer.session(), session);
    assert_eq!(service.rows().await.len(), 2);
}

#[tokio::test]
async fn an_existing_session_gets_its_runner_back_without_a_start() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("s-1").await;
    let first = service.existing_row("s-1").await;

    let again = service.provision(Some("s-1")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.body,
        json!({
            "message": "Runner already exists for this session.",
            "endpoint": format!("http://localhost:{}", runner.host_port.unwrap()),
            "sessionId": "s-1",
        })
    );
    assert_eq!(service.backend().calls().start, 1);
    assert_eq!(service.running_runner("s-1"), runner);
    assert_eq!(service.existing_row("s-1").await, first);
    assert_eq!(service.audit("s-1").await.len(), 1);
}

#[tokio::test]
async fn an_isolated_runner_has_no_port_and_says_so() {
    let service = Service::new(&[]).await;
    let answer = service
        .provision_with(Some("iso"), json!({ "networkMode": "none" }))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    assert_eq!(answer.endpoint(), NO_ENDPOINT);
    let runner = service.running_runner("iso");
    assert_eq!(runner.host_port, None);
    assert_eq!(runner.network_mode, crate::backend::NetworkMode::Isolated);
    let row = service.existing_row("iso").await;
    assert_eq!(
        (row.host_port, row.network_mode),
        (None, crate::backend::NetworkMode::Isolated)
    );
    // Its heartbeats and the answer to the next provision are as for any runner.
    assert_eq!(service.heartbeat("iso").await.status, StatusCode::OK);
    let again = service.provision(Some("iso")).await;
    assert_eq!(
        (again.status, again.endpoint()),
        (StatusCode::OK, NO_ENDPOINT)
    );
}

#[tokio::test]
async fn a_named_network_is_joined_only_if_it_exists() {
    // Only without egress rules: a named network would escape them.
    let service = Service::new(&["--runner-egress=all"]).await;
    let refused = service
        .provision_with(Some("n-1"), json!({ "networkMode": "lab" }))
        .await;
    refused.assert_error(
        StatusCode::BAD_REQUEST,
        "NETWORK_NOT_FOUND",
        "Docker network lab not found.",
    );
    // The failed start is undone: no row, no runner, and the audit says why.
    assert_eq!(service.row("n-1").await, None);
    assert_eq!(service.runners_of("n-1"), []);
    let trail = service.audit("n-1").await;
    assert_eq!(trail.len(), 1);
    assert_eq!(
        (trail[0].0.as_str(), trail[0].1.as_str()),
        ("api", "provision_failed")
    );

    service.backend().add_network("lab");
    let answer = service
        .provision_with(Some("n-1"), json!({ "networkMode": "lab" }))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    let runner = service.running_runner("n-1");
    assert_eq!(
        runner.network_mode,
        crate::backend::NetworkMode::Named("lab".into())
    );
}

#[tokio::test]
async fn host_and_container_networks_are_refused_before_the_engine() {
    let service = Service::new(&[]).await;
    for mode in ["host", "container:abc"] {
        service
            .provision_with(Some("s-1"), json!({ "networkMode": mode }))
            .await
            .assert_error(
                StatusCode::BAD_REQUEST,
                "INVALID_NETWORK_MODE",
                "This network mode is not allowed for runners.",
            );
    }
    service
        .provision_with(Some("s-1"), json!({ "networkMode": "-bad name" }))
        .await
        .error(StatusCode::BAD_REQUEST, "INVALID_NETWORK_MODE");
    assert_eq!(service.backend().calls().start, 0);
    assert!(service.rows().await.is_empty());
}

#[tokio::test]
async fn malformed_bodies_get_json_errors_and_touch_nothing() {
    let service = Service::new(&[]).await;
    let raw = |body: &'static str, content_type: &'static str| {
        Request::builder()
            .method("POST")
            .uri("/api/runner/provision")
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap()
    };
    service
        .send(raw("{not json", "application/json"))
        .await
        .error(StatusCode::BAD_REQUEST, "INVALID_JSON");
    service
        .send(raw(r#"{"networkMode": 5}"#, "application/json"))
        .await
        .error(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_BODY");
    service
        .send(raw("networkMode=none", "application/x-www-form-urlencoded"))
        .await
        .assert_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "The request body must be JSON (Content-Type: application/json).",
        );
    assert_eq!(service.backend().calls().start, 0);
    assert!(service.rows().await.is_empty());
}

#[tokio::test]
async fn invalid_session_ids_are_refused_on_every_route() {
    let service = Service::new(&[]).await;
    let too_long = "x".repeat(129);
    for path in [
        "/api/runner/provision",
        "/api/runner/heartbeat",
        "/api/runner/deprovision",
    ] {
        for bad in ["a b", too_long.as_str()] {
            service
                .send(json_post(path, Some(bad), None))
                .await
                .error(StatusCode::BAD_REQUEST, "INVALID_SESSION_ID");
        }
    }
    // In the body too.
    service
        .send(json_post(
            "/api/runner/heartbeat",
            None,
            Some(json!({ "sessionId": "a\tb" })),
        ))
        .await
        .error(StatusCode::BAD_REQUEST, "INVALID_SESSION_ID");
    assert_eq!(service.backend().calls().start, 0);
    assert!(service.rows().await.is_empty());
}

#[tokio::test]
async fn heartbeat_and_deprovision_need_a_session_id() {
    let service = Service::new(&[]).await;
    service
        .send(json_post("/api/runner/heartbeat", None, Some(json!({}))))
        .await
        .assert_error(
            StatusCode::BAD_REQUEST,
            "SESSION_ID_REQUIRED",
            "Session ID is required for heartbeat.",
        );
    service
        .send(json_post("/api/runner/deprovision", None, None))
        .await
        .assert_error(
            StatusCode::BAD_REQUEST,
            "SESSION_ID_REQUIRED",
            "Session ID is required for deprovisioning.",
        );
}

#[tokio::test]
async fn a_known_sessions_heartbeat_is_answered_and_written() {
    let service = Service::new(&[]).await;
    service.provisioned("s-1").await;
    let before = service.existing_row("s-1").await.last_heartbeat_at;
    let after_provision = super::next_millisecond().await;

    let answer = service.heartbeat("s-1").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.body,
        json!({ "message": "Heartbeat received for session s-1." })
    );
    // The header alone works too, as in the first orchestrator.
    let by_header = service
        .send(json_post("/api/runner/heartbeat", Some("s-1"), None))
        .await;
    assert_eq!(by_header.status, StatusCode::OK);

    assert_eq!(service.flush_heartbeats().await.unwrap(), 1);
    let written = service.existing_row("s-1").await.last_heartbeat_at;
    assert!(written > before, "{written} after {before}");
    assert!(written >= crate::db::timestamp(after_provision));
}

#[tokio::test]
async fn an_unknown_sessions_heartbeat_is_404_and_writes_nothing() {
    let service = Service::new(&[]).await;
    service.heartbeat("nobody").await.assert_error(
        StatusCode::NOT_FOUND,
        "RUNNER_NOT_FOUND",
        "No active runner found for this session ID.",
    );
    assert_eq!(service.flush_heartbeats().await.unwrap(), 0);
    assert!(service.rows().await.is_empty());
    assert_eq!(service.audit("nobody").await, []);
}

#[tokio::test]
async fn the_body_session_id_wins_over_the_header() {
    let service = Service::new(&[]).await;
    service.provisioned("body").await;
    let answer = service
        .send(json_post(
            "/api/runner/heartbeat",
            Some("header"),
            Some(json!({ "sessionId": "body" })),
        ))
        .await;
    assert_eq!(
        answer.body,
        json!({ "message": "Heartbeat received for session body." })
    );
}

#[tokio::test]
async fn deprovision_removes_the_runner_and_the_row_then_404s() {
    let service = Service::new(&[]).await;
    let runner = service.provisioned("s-1").await;
    service.provisioned("other").await;

    let answer = service.deprovision("s-1").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.body,
        json!({ "message": "Runner for session s-1 deprovisioned successfully." })
    );
    service.assert_gone("s-1").await;
    assert!(
        service
            .backend()
            .runners()
            .iter()
            .all(|r| r.id != runner.id)
    );
    assert_eq!(
        service.audit("s-1").await,
        [
            audit("api", "provisioned", "provision request"),
            audit("api", "deprovisioned", "deprovision request"),
        ]
    );
    // The other session is untouched.
    service.running_runner("other");
    assert_eq!(service.heartbeat("other").await.status, StatusCode::OK);

    service.deprovision("s-1").await.assert_error(
        StatusCode::NOT_FOUND,
        "RUNNER_NOT_FOUND",
        "No active runner found for this session ID.",
    );
    // A provision after it gets a fresh runner.
    let fresh = service.provisioned("s-1").await;
    assert_ne!(fresh.id, runner.id);
}

#[tokio::test]
async fn a_missing_image_is_the_seeds_500_and_leaves_nothing() {
    let service = Service::new(&[]).await;
    service.backend().set_image_present(false);
    service.provision(Some("s-1")).await.assert_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "DOCKER_IMAGE_NOT_FOUND",
        "Docker image runner-image not found. Ensure it has been built, typically by the 'runner-builder' service.",
    );
    assert_eq!(service.row("s-1").await, None);
    assert_eq!(service.backend().runners(), []);
    service.backend().set_image_present(true);
    service.provisioned("s-1").await;
}

#[tokio::test]
async fn an_unavailable_engine_answers_503_with_retry_after_until_it_is_back() {
    let service = Service::new(&[]).await;
    service
        .backend()
        .fail_next_starts([StartFailure::Unavailable]);
    let refused = service.provision(Some("s-1")).await;
    refused.error(StatusCode::SERVICE_UNAVAILABLE, "DOCKER_UNAVAILABLE");
    assert_eq!(refused.headers["retry-after"], "5");
    assert_eq!(service.row("s-1").await, None);

    // Refused at once, without asking the engine, until a check reaches it.
    let starts = service.backend().calls().start;
    service
        .provision(Some("s-1"))
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE, "DOCKER_UNAVAILABLE");
    assert_eq!(service.backend().calls().start, starts);
    let ready = service.send(get("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{ready:?}");
    service.provisioned("s-1").await;
}

#[tokio::test]
async fn runner_requests_wait_for_the_startup_reconcile() {
    let service = Service::starting(&[]).await;
    // Held while it runs, not refused: a restart costs clients a few
    // milliseconds, not an error.
    let (provision, heartbeat) = (
        tokio::spawn(send_later(&service, "provision")),
        tokio::spawn(send_later(&service, "heartbeat")),
    );
    tokio::task::yield_now().await;
    assert!(!provision.is_finished() && !heartbeat.is_finished());
    assert_eq!(service.backend().calls().start, 0);
    // Liveness answers meanwhile; readiness says why not yet.
    let live = service.send(get("/")).await;
    assert_eq!(
        (live.status, live.body.as_str()),
        (StatusCode::OK, Some("Orchestrator service is running!"))
    );
    let ready = service.send(get("/readyz")).await;
    let why = ready.error(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY");
    assert!(why.contains("startup reconcile is running"), "{why}");
    service.readiness.ready(Default::default());
    assert_eq!(provision.await.unwrap().status, StatusCode::CREATED);
    // Sent at the same time as the provision: either order is a right answer.
    let heartbeat = heartbeat.await.unwrap().status;
    assert!(
        [StatusCode::OK, StatusCode::NOT_FOUND].contains(&heartbeat),
        "{heartbeat}"
    );
}

/// A provision or heartbeat of `s-1`, sent on its own task.
fn send_later(service: &Service, what: &str) -> impl Future<Output = super::Answer> + use<> {
    let router = service.router.clone();
    let request = match what {
        "provision" => super::provision_request(Some("s-1"), None),
        _ => super::heartbeat_request("s-1"),
    };
    super::send(router, request)
}

#[tokio::test]
async fn runner_requests_are_refused_while_the_service_cannot_reconcile() {
    let service = Service::starting(&[]).await;
    service
        .readiness
        .waiting("startup reconcile failed (engine down); retrying in 1s".to_owned());
    for answer in [
        service.provision(Some("s-1")).await,
        service.heartbeat("s-1").await,
        service.deprovision("s-1").await,
    ] {
        let message = answer.error(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY");
        assert!(message.contains("engine down"), "{answer:?}");
        assert_eq!(answer.headers["retry-after"], "5");
    }
    assert_eq!(service.backend().calls().start, 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let service = Service::new(&[]).await;
    service
        .send(get("/api/runner/nothing"))
        .await
        .error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let wrong = service.send(get("/api/runner/provision")).await;
    wrong.error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
    assert_eq!(service.backend().calls().start, 0);
}

#[tokio::test]
async fn the_shared_runner_mode_answers_as_the_first_orchestrator() {
    let service = Service::new(&["--reuse-runner-mode=true"]).await;
    let first = service.provision(Some("first")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let runner = service.running_runner("first");

    let second = service.provision(Some("second")).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(
        second.body,
        json!({
            "message": "Returning existing singleton runner.",
            "endpoint": first.endpoint(),
            "sessionId": "first",
        })
    );
    assert_eq!(service.backend().runners(), [runner]);
    assert_eq!(
        service.heartbeat("first").await.body,
        json!({ "message": "Heartbeat received for singleton runner." })
    );
    service.heartbeat("second").await.assert_error(
        StatusCode::NOT_FOUND,
        "RUNNER_NOT_FOUND",
        "Singleton runner not found or session ID mismatch.",
    );
    let refused = service.deprovision("first").await;
    assert_eq!(
        (refused.status, refused.body.clone()),
        (
            StatusCode::OK,
            json!({ "message": "Deprovisioning is disabled in REUSE_RUNNER_MODE." })
        )
    );
    // Answered before the session id is looked at, even a bad one.
    let bad_id = json_post(
        "/api/runner/deprovision",
        None,
        Some(json!({ "sessionId": "not an id" })),
    );
    assert_eq!(service.send(bad_id).await.body, refused.body);
    service.running_runner("first");
    assert_eq!(
        service.existing_row("first").await.kind,
        crate::domain::RunnerKind::Singleton
    );
}

#[tokio::test]
async fn production_hides_nothing_it_should_show_and_cors_answers_preflights() {
    let service = Service::new(&["--node-env=production"]).await;
    let preflight = service
        .send(
            Request::builder()
                .method("OPTIONS")
                .uri("/api/runner/provision")
                .header("origin", "http://localhost:4200")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert!(preflight.status.is_success(), "{preflight:?}");
    assert_eq!(preflight.headers["access-control-allow-origin"], "*");
    // Client errors keep their message in production.
    service.heartbeat("nobody").await.assert_error(
        StatusCode::NOT_FOUND,
        "RUNNER_NOT_FOUND",
        "No active runner found for this session ID.",
    );
}

fn get(path: &str) -> Request<Body> {
    Request::builder()
        .method("GET")
        .uri(path)
        .body(Body::empty())
        .unwrap()
}
