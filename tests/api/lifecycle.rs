use bollard::models::ContainerSummaryStateEnum;
use taylored_orchestrator::config::{INSTANCE_LABEL, SESSION_LABEL};
use taylored_orchestrator::db::RunnerState;
use taylored_orchestrator::domain::SessionId;

use crate::helpers::{TestEnv, assert_runner_answers, images, spawn_app, spawn_app_with};

#[tokio::test]
async fn liveness_answers_200() {
    let app = spawn_app().await;
    let response = reqwest::get(app.api.url("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        "Orchestrator service is running!"
    );
}

#[tokio::test]
async fn browser_provision_creates_a_runner_that_answers_on_its_endpoint() {
    let app = spawn_app().await;

    let reply = app.api.provision(None).await;

    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.message(), "Runner provisioned successfully.");
    let session = reply.session_id();
    assert_eq!(uuid::Uuid::parse_str(session).unwrap().get_version_num(), 4);
    assert!(
        reply.endpoint().starts_with("http://127.0.0.1:"),
        "{reply:?}"
    );
    assert_runner_answers(reply.endpoint()).await;

    let row = app.env.row(session).await.expect("row written");
    assert_eq!(row.state, RunnerState::Running);
    assert_eq!(
        reply.endpoint(),
        format!("http://127.0.0.1:{}", row.host_port.unwrap())
    );
    let trail = app.service.db.audit_trail(session).await.unwrap();
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0].action, "provisioned");
}

#[tokio::test]
async fn runner_container_has_the_seed_image_labels_env_and_a_deterministic_name() {
    let app = spawn_app().await;
    let reply = app.api.provision(Some("label-check")).await;
    assert_eq!(reply.status, 201);

    let row = app.env.row("label-check").await.unwrap();
    let inspected = app.env.inspect(row.container_id.as_deref().unwrap()).await;
    let config = inspected.config.unwrap();
    let labels = config.labels.unwrap();
    assert_eq!(labels[SESSION_LABEL], "label-check");
    assert_eq!(labels[INSTANCE_LABEL], app.env.instance);
    assert_eq!(config.image.as_deref(), Some(images().runner.as_str()));
    assert!(config.env.unwrap().contains(&"PORT=3000".to_owned()));
    let expected_name = SessionId::parse("label-check")
        .unwrap()
        .container_name(&app.env.instance);
    assert_eq!(
        inspected.name.as_deref(),
        Some(format!("/{expected_name}").as_str())
    );
    let bindings = inspected.host_config.unwrap().port_bindings.unwrap();
    let binding = &bindings["3000/tcp"].as_ref().unwrap()[0];
    assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
}

#[tokio::test]
async fn provision_of_an_existing_session_returns_it_with_200() {
    let app = spawn_app().await;
    let first = app.api.provision(Some("same")).await;
    let second = app.api.provision(Some("same")).await;

    assert_eq!(first.status, 201);
    assert_eq!(second.status, 200);
    assert_eq!(second.message(), "Runner already exists for this session.");
    assert_eq!(second.endpoint(), first.endpoint());
    assert_eq!(second.session_id(), "same");
    assert_eq!(app.env.containers().await.len(), 1);
}

#[tokio::test]
async fn provision_accepts_no_body_at_all() {
    let app = spawn_app().await;
    let reply = app.api.send(app.api.post("/api/runner/provision")).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_runner_answers(reply.endpoint()).await;
}

#[tokio::test]
async fn isolated_network_mode_gives_no_port() {
    let app = spawn_app().await;
    let reply = app
        .api
        .send(
            app.api
                .post("/api/runner/provision")
                .json(&serde_json::json!({ "networkMode": "none" })),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(
        reply.endpoint(),
        "N/A (isolated network or no ports mapped)"
    );
    let row = app.env.row(reply.session_id()).await.unwrap();
    assert_eq!(row.host_port, None);
    let inspected = app.env.inspect(row.container_id.as_deref().unwrap()).await;
    assert_eq!(
        inspected.host_config.unwrap().network_mode.as_deref(),
        Some("none")
    );
    // It is a real runner all the same: heartbeats and deprovision work.
    assert_eq!(app.api.heartbeat(reply.session_id()).await.status, 200);
    assert_eq!(app.api.deprovision(reply.session_id()).await.status, 200);
}

#[tokio::test]
async fn heartbeat_names_the_session() {
    let app = spawn_app().await;
    let session = app.api.provision(None).await.session_id().to_owned();

    let reply = app.api.heartbeat(&session).await;

    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.message(),
        format!("Heartbeat received for session {session}.")
    );
}

/// A session id in the header alone is enough; none at all is a 400.
async fn check_session_id_sources(path: &str, required_message: &str) {
    let app = spawn_app().await;
    let session = app.api.provision(None).await.session_id().to_owned();
    let by_header = app
        .api
        .send(app.api.post(path).header("X-Session-Id", &session))
        .await;
    assert_eq!(by_header.status, 200, "{by_header:?}");

    let missing = app
        .api
        .send(app.api.post(path).json(&serde_json::json!({})))
        .await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.error(), "SESSION_ID_REQUIRED");
    assert_eq!(missing.message(), required_message);

    let unknown = app
        .api
        .send(app.api.post(path).header("X-Session-Id", "nobody"))
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error(), "RUNNER_NOT_FOUND");
    assert_eq!(
        unknown.message(),
        "No active runner found for this session ID."
    );
}

#[tokio::test]
async fn heartbeat_by_header_and_its_errors() {
    check_session_id_sources(
        "/api/runner/heartbeat",
        "Session ID is required for heartbeat.",
    )
    .await;
}

#[tokio::test]
async fn deprovision_by_header_and_its_errors() {
    check_session_id_sources(
        "/api/runner/deprovision",
        "Session ID is required for deprovisioning.",
    )
    .await;
}

#[tokio::test]
async fn deprovision_removes_the_container_and_the_row() {
    let app = spawn_app().await;
    let session = app.api.provision(None).await.session_id().to_owned();

    let reply = app.api.deprovision(&session).await;

    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.message(),
        format!("Runner for session {session} deprovisioned successfully.")
    );
    assert!(app.env.containers().await.is_empty());
    assert!(app.env.row(&session).await.is_none());
    assert_eq!(app.api.heartbeat(&session).await.status, 404);
    let actions: Vec<String> = app
        .service
        .db
        .audit_trail(&session)
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.action)
        .collect();
    assert_eq!(actions, ["provisioned", "deprovisioned"]);

    // The session can be provisioned afresh.
    let again = app.api.provision(Some(&session)).await;
    assert_eq!(again.status, 201);
}

#[tokio::test]
async fn missing_image_answers_500_naming_it_and_leaves_nothing_behind() {
    let env = TestEnv::new();
    let app = env
        .spawn(&["--docker-image-name=taylored-no-such-image:missing"])
        .await;

    let reply = app.api.provision(Some("no-image")).await;

    assert_eq!(reply.status, 500);
    assert_eq!(reply.error(), "DOCKER_IMAGE_NOT_FOUND");
    assert_eq!(
        reply.message(),
        "Docker image taylored-no-such-image:missing not found. Ensure it has been built, \
         typically by the 'runner-builder' service."
    );
    assert!(app.env.row("no-image").await.is_none());
    assert!(app.env.containers().await.is_empty());
    let trail = app.service.db.audit_trail("no-image").await.unwrap();
    assert_eq!(trail[0].action, "provision_failed");
}

#[tokio::test]
async fn a_runner_that_fails_to_start_leaves_neither_container_nor_row() {
    let broken = format!("--docker-image-name={}", images().broken);
    let app = spawn_app_with(&[&broken]).await;

    let reply = app.api.provision(Some("broken")).await;

    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(reply.error(), "SERVER_ERROR");
    assert_eq!(
        reply.message(),
        "An unexpected error occurred on the server."
    );
    assert!(
        reply.body["details"]
            .as_str()
            .unwrap()
            .contains("no-such-user"),
        "{reply:?}"
    );
    assert!(app.env.row("broken").await.is_none());
    assert!(app.env.containers().await.is_empty());
}

#[tokio::test]
async fn production_hides_error_details() {
    let broken = format!("--docker-image-name={}", images().broken);
    let app = spawn_app_with(&[&broken, "--node-env=production"]).await;

    let reply = app.api.provision(None).await;

    assert_eq!(reply.status, 500);
    assert_eq!(reply.error(), "SERVER_ERROR");
    assert_eq!(
        reply.message(),
        "An unexpected error occurred on the server."
    );
    assert!(reply.body.get("details").is_none(), "{reply:?}");
}

#[tokio::test]
async fn a_leftover_container_with_the_session_name_is_replaced() {
    // A container under the session's deterministic name that no row knows
    // (left by a crash after the reconciler ran) must not block provisioning.
    let app = spawn_app().await;
    let name = SessionId::parse("leftover")
        .unwrap()
        .container_name(&app.env.instance);
    let leftover = app
        .env
        .create_runner_container("leftover", &name, false)
        .await;

    let reply = app.api.provision(Some("leftover")).await;

    assert_eq!(reply.status, 201, "{reply:?}");
    let containers = app.env.containers().await;
    assert_eq!(containers.len(), 1);
    assert_ne!(containers[0].id.as_deref(), Some(leftover.as_str()));
    assert_eq!(
        containers[0].state,
        Some(ContainerSummaryStateEnum::RUNNING)
    );
}
