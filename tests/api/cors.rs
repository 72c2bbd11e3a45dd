//! The browser client is cross-origin and sends JSON, so every call is
//! preceded by a preflight.

use crate::helpers::{spawn_app, spawn_app_with};

const ORIGIN: &str = "http://localhost:4200";

#[tokio::test]
async fn preflight_from_any_origin_passes_by_default() {
    let app = spawn_app().await;
    for path in [
        "/api/runner/provision",
        "/api/runner/heartbeat",
        "/api/runner/deprovision",
    ] {
        let response = app
            .api
            .client
            .request(reqwest::Method::OPTIONS, app.api.url(path))
            .header("Origin", ORIGIN)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "content-type,x-session-id",
            )
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let headers = response.headers();
        assert_eq!(headers["access-control-allow-origin"], "*");
        assert!(
            headers["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .contains("POST")
        );
        let allowed = headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            allowed.contains("content-type") && allowed.contains("x-session-id"),
            "{allowed}"
        );
    }
}

#[tokio::test]
async fn the_browser_clients_exact_requests_work_cross_origin() {
    let app = spawn_app().await;
    let client = &app.api.client;

    let provision = client
        .post(app.api.url("/api/runner/provision"))
        .header("Origin", ORIGIN)
        .json(&serde_json::json!({}));
    let reply = app.api.send(provision).await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.headers["access-control-allow-origin"], "*");
    let session = reply.session_id().to_owned();

    let heartbeat = client
        .post(app.api.url("/api/runner/heartbeat"))
        .header("Origin", ORIGIN)
        .json(&serde_json::json!({ "sessionId": session }));
    let reply = app.api.send(heartbeat).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["access-control-allow-origin"], "*");

    let deprovision = client
        .post(app.api.url("/api/runner/deprovision"))
        .header("Origin", ORIGIN)
        .header("X-Session-Id", &session)
        .json(&serde_json::json!({ "sessionId": session }));
    let reply = app.api.send(deprovision).await;
    assert_eq!(reply.status, 200);

    // Errors carry the CORS header too, or the browser could not read them.
    let heartbeat = client
        .post(app.api.url("/api/runner/heartbeat"))
        .header("Origin", ORIGIN)
        .json(&serde_json::json!({ "sessionId": session }));
    let reply = app.api.send(heartbeat).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.headers["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn allowed_origins_can_be_restricted() {
    let app = spawn_app_with(&["--cors-allowed-origins=http://app.example"]).await;
    let preflight = |origin: &'static str| {
        app.api
            .client
            .request(
                reqwest::Method::OPTIONS,
                app.api.url("/api/runner/provision"),
            )
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
    };
    let allowed = preflight("http://app.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let refused = preflight("http://evil.example").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
