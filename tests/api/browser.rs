//! A real browser (headless Chromium) on a page of another origin does what
//! the Angular client does: provision, heartbeat, then Socket.IO at the
//! endpoint the provision returned, over polling and over a WebSocket.

use crate::helpers::{BrowserRun, run_browser_client, spawn_app, spawn_app_with};

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> String {
    let url = reqwest::Url::parse(url).unwrap();
    url.origin().ascii_serialization()
}

/// A browser client run that must pass every step.
async fn passing_run(api_base: &str) -> BrowserRun {
    let run = run_browser_client(api_base)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(run.ok, "the browser client failed: {run:#?}");
    run
}

/// The page did Socket.IO's polling handshake, then a websocket-transport
/// open and echo.
fn assert_socket_io_round_trip(run: BrowserRun) {
    assert!(run.polling_handshake.unwrap().starts_with(r#"0{"sid":""#));
    assert!(run.open_packet.unwrap().starts_with(r#"0{"sid":""#));
    assert!(run.sent.as_deref().unwrap().starts_with(r#"42["echo",{"#));
    assert_eq!(run.echoed, run.sent);
}

#[tokio::test]
async fn a_browser_on_another_origin_provisions_and_talks_to_its_runner() {
    let app = spawn_app().await;
    let run = passing_run(&app.api.base).await;

    let endpoint = run.endpoint.clone().unwrap();
    let session = run.session_id.clone().unwrap();
    let origins = [&run.page_origin, &app.api.base, &endpoint].map(|url| origin(url));
    assert!(
        origins[0] != origins[1] && origins[0] != origins[2],
        "the page must be cross-origin to the API and the runner: {origins:?}"
    );
    // The runner the page talked to is the one recorded for its session.
    let row = app.env.row(&session).await.expect("the session's row");
    assert!(
        endpoint.ends_with(&format!(":{}", row.host_port.unwrap())),
        "{endpoint} is not the runner of {row:?}"
    );
    assert_socket_io_round_trip(run);
}

/// The control: the same page is stopped by CORS when the API does not
/// allow its origin, so the test above passes only through CORS.
#[tokio::test]
async fn a_browser_on_an_origin_the_api_refuses_gets_no_runner() {
    let app = spawn_app_with(&["--cors-allowed-origins=http://elsewhere.test"]).await;
    let run = run_browser_client(&app.api.base)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(!run.ok, "the browser client passed: {run:#?}");
    let error = run.error.unwrap_or_default();
    assert!(error.contains("Failed to fetch"), "{error}");
    assert!(run.session_id.is_none(), "{:?}", run.steps);
    app.assert_untouched().await;
}

/// Through the gateway: the page reaches its runner at an unguessable host
/// under `runners.localhost` (which Chromium resolves to the loopback) on the
/// service's own port, over polling and over a WebSocket, as the Angular
/// client's `io(endpoint)` would.
#[tokio::test]
async fn a_browser_talks_to_its_runner_through_the_gateway() {
    let app = spawn_app_with(&["--runner-access=gateway"]).await;
    let run = passing_run(&app.api.base).await;

    let endpoint = run.endpoint.clone().unwrap();
    let session = run.session_id.clone().unwrap();
    let url = reqwest::Url::parse(&endpoint).unwrap();
    let host = url.host_str().unwrap();
    let token = host
        .strip_suffix(".runners.localhost")
        .unwrap_or_else(|| panic!("{endpoint} is not under the gateway's domain"));
    assert!(
        token.len() >= 32 && !token.contains(&session),
        "the token must be unguessable and not the session id: {endpoint}"
    );
    let api_port = reqwest::Url::parse(&app.api.base).unwrap().port();
    assert_eq!(url.port(), api_port, "the gateway is on the service's port");
    assert_socket_io_round_trip(run);
}
