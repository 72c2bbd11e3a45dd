//! Every malformed request gets a 4xx JSON error and changes nothing.

use reqwest::header::{CONTENT_TYPE, HeaderValue};

use crate::helpers::{Reply, spawn_app};

fn assert_json_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.error(), code, "{reply:?}");
    assert!(!reply.message().is_empty(), "{reply:?}");
}

#[tokio::test]
async fn malformed_bodies_are_rejected_on_every_endpoint() {
    let app = spawn_app().await;
    for path in [
        "/api/runner/provision",
        "/api/runner/heartbeat",
        "/api/runner/deprovision",
    ] {
        let post = |body: &'static str, content_type: &'static str| {
            app.api
                .client
                .post(app.api.url(path))
                .header(CONTENT_TYPE, content_type)
                .body(body)
        };
        let cases = [
            (post("{", "application/json"), 400, "INVALID_JSON"),
            (
                post("{\"sessionId\": }", "application/json"),
                400,
                "INVALID_JSON",
            ),
            (post("[1, 2]", "application/json"), 422, "INVALID_BODY"),
            (post("\"text\"", "application/json"), 422, "INVALID_BODY"),
            (
                post(
                    "{\"sessionId\": 42, \"networkMode\": 7}",
                    "application/json",
                ),
                422,
                "INVALID_BODY",
            ),
            (
                post("sessionId=abc", "application/x-www-form-urlencoded"),
                415,
                "UNSUPPORTED_MEDIA_TYPE",
            ),
            (post("{}", "text/plain"), 415, "UNSUPPORTED_MEDIA_TYPE"),
        ];
        for (request, status, code) in cases {
            let reply = app.api.send(request).await;
            assert_json_error(&reply, status, code);
        }
    }
    app.assert_untouched().await;
}

#[tokio::test]
async fn invalid_session_ids_are_rejected() {
    let app = spawn_app().await;
    let too_long = "x".repeat(129);
    for bad in [too_long.as_str(), "has space", "tab\there"] {
        let reply = app.api.provision(Some(bad)).await;
        assert_json_error(&reply, 400, "INVALID_SESSION_ID");
        let reply = app.api.heartbeat(bad).await;
        assert_json_error(&reply, 400, "INVALID_SESSION_ID");
        let reply = app.api.deprovision(bad).await;
        assert_json_error(&reply, 400, "INVALID_SESSION_ID");
    }
    for bad in ["nul\u{0}byte", "unicode-é", "emoji-🙂"] {
        let reply = app.api.heartbeat(bad).await;
        assert_json_error(&reply, 400, "INVALID_SESSION_ID");
    }
    // A header with bytes outside ASCII.
    let reply = app
        .api
        .send(
            app.api
                .post("/api/runner/provision")
                .header("X-Session-Id", HeaderValue::from_bytes(b"caf\xe9").unwrap()),
        )
        .await;
    assert_json_error(&reply, 400, "INVALID_SESSION_ID");
    app.assert_untouched().await;
}

#[tokio::test]
async fn dangerous_or_unknown_network_modes_are_rejected() {
    let app = spawn_app().await;
    let provision = |mode: &str| {
        app.api
            .post("/api/runner/provision")
            .json(&serde_json::json!({ "networkMode": mode }))
    };
    for mode in ["host", "container:abc", "../etc"] {
        let reply = app.api.send(provision(mode)).await;
        assert_json_error(&reply, 400, "INVALID_NETWORK_MODE");
    }
    let reply = app.api.send(provision("taylored-no-such-network")).await;
    assert_json_error(&reply, 400, "NETWORK_NOT_FOUND");
    app.assert_untouched().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = spawn_app().await;
    let huge = format!("{{\"sessionId\": \"{}\"}}", "x".repeat(10 * 1024 * 1024));
    for path in ["/api/runner/provision", "/api/runner/heartbeat"] {
        let reply = app
            .api
            .send(
                app.api
                    .client
                    .post(app.api.url(path))
                    .header(CONTENT_TYPE, "application/json")
                    .body(huge.clone()),
            )
            .await;
        assert_json_error(&reply, 413, "PAYLOAD_TOO_LARGE");
    }
    app.assert_untouched().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let reply = app.api.get("/api/runner/unknown").await;
    assert_json_error(&reply, 404, "NOT_FOUND");
    let reply = app.api.get("/api/runner/provision").await;
    assert_json_error(&reply, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(reply.headers["allow"], "POST");
    let reply = app.api.send(app.api.client.delete(app.api.url("/"))).await;
    assert_json_error(&reply, 405, "METHOD_NOT_ALLOWED");
    app.assert_untouched().await;
}
