//! The gateway over the memory backend, proxying to a stand-in runner
//! served in this process (HTTP and WebSocket echo): routing, headers,
//! WebSockets, errors and activity, with no engine.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::routing::{any, get, post};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::*;
use crate::backend::NetworkMode;
use crate::domain::Summary;
use crate::domain::{Route, RunnerKind, SessionId, token};
use crate::test_support::Harness;

/// A runner stand-in: `/headers` answers the request's headers as JSON,
/// `/echo` streams a POST's body back, `/ws` echoes WebSocket messages.
async fn stand_in_runner() -> SocketAddr {
    async fn headers(headers: HeaderMap) -> axum::Json<serde_json::Value> {
        let map: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("?").into()))
            .collect();
        axum::Json(map.into())
    }
    async fn echo(mut socket: WebSocket) {
        while let Some(Ok(message)) = socket.recv().await {
            if socket.send(message).await.is_err() {
                return;
            }
        }
    }
    let app = Router::new()
        .route("/headers", get(headers))
        .route(
            "/echo",
            post(|body: Body| async move { Response::new(body) }),
        )
        .route(
            "/ws",
            any(|ws: WebSocketUpgrade| async move { ws.on_upgrade(echo) }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// The service in gateway mode, serving on a port of its own, with one
/// provisioned session `s-1` whose route points at a stand-in runner.
struct World {
    harness: Harness,
    port: u16,
    token: String,
    readiness: Readiness,
    _shutdown: tokio_util::sync::DropGuard,
}

impl World {
    async fn new(args: &[&str]) -> Self {
        let args: Vec<&str> = ["--runner-access=gateway"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        let harness = Harness::new(&args).await;
        let session = SessionId::parse("s-1").unwrap();
        harness
            .runners
            .provision(Some(session), &NetworkMode::Default)
            .await
            .unwrap();
        let token = harness.db().find("s-1").await.unwrap().unwrap().token;
        let runner = stand_in_runner().await;
        let route = Route::of(vec![token::digest(&token)], Some(runner.port()), None, None);
        harness
            .service
            .lifecycle
            .track_running("s-1", RunnerKind::Session, route);
        let readiness = Readiness::default();
        readiness.ready(Summary::default());
        let shutdown = CancellationToken::new();
        let front = crate::server::front(&harness.service, readiness.clone(), shutdown.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(crate::server::serve(
            listener,
            front,
            Duration::from_secs(60),
            shutdown.clone(),
        ));
        Self {
            harness,
            port,
            token,
            readiness,
            _shutdown: shutdown.drop_guard(),
        }
    }

    fn host(&self, token: &str) -> String {
        format!("{token}.runners.localhost:{}", self.port)
    }

    /// A request to the gateway's port for `host`.
    fn request(&self, method: reqwest::Method, host: &str, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("http://127.0.0.1:{}{path}", self.port))
            .header(header::HOST, host)
    }

    async fn get_json(&self, host: &str, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .request(reqwest::Method::GET, host, path)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// A WebSocket to the runner of `token` through the gateway.
    async fn websocket(
        &self,
        token: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
        let mut request = format!("ws://127.0.0.1:{}/ws", self.port)
            .into_client_request()
            .unwrap();
        let host = self.host(token).parse().unwrap();
        request.headers_mut().insert(header::HOST, host);
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let (socket, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        socket
    }

    /// Heartbeats written by a flush (the gateway's activity among them).
    async fn flushed(&self) -> usize {
        self.harness.service.heartbeats.flush().await.unwrap()
    }
}

#[tokio::test]
async fn http_reaches_the_runner_with_forwarded_headers_and_without_hop_by_hop_ones() {
    let world = World::new(&[]).await;
    let host = world.host(&world.token);
    let response = world
        .request(reqwest::Method::GET, &host, "/headers?x=1")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["host"], host.as_str());
    assert_eq!(seen["x-forwarded-host"], host.as_str());
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.get("x-private"), None, "{seen}");

    // A body streams through both ways.
    let body = "x".repeat(1 << 20);
    let response = world
        .request(reqwest::Method::POST, &host, "/echo")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), body);
}

#[tokio::test]
async fn a_websocket_is_carried_both_ways() {
    let world = World::new(&[]).await;
    let mut socket = world.websocket(&world.token).await;
    for message in [
        Message::text("42[\"echo\",1]"),
        Message::binary(vec![0u8, 1, 2, 255]),
    ] {
        socket.send(message.clone()).await.unwrap();
        assert_eq!(socket.next().await.unwrap().unwrap(), message);
    }
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn other_hosts_reach_the_api_and_unknown_or_removed_runners_answer_404() {
    let world = World::new(&[]).await;
    let liveness = world
        .request(
            reqwest::Method::GET,
            &format!("localhost:{}", world.port),
            "/",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        liveness.text().await.unwrap(),
        "Orchestrator service is running!"
    );

    for host in [
        world.host(&token::generate()),
        format!("www.runners.localhost:{}", world.port),
    ] {
        let (status, body) = world.get_json(&host, "/headers").await;
        assert_eq!(
            (status, &body["error"]),
            (404, &"RUNNER_NOT_FOUND".into()),
            "{host}"
        );
    }
    // The session id is not an address.
    let (status, _) = world.get_json(&world.host("s-1"), "/headers").await;
    assert_eq!(status, 404);

    let host = world.host(&world.token);
    assert_eq!(world.get_json(&host, "/headers").await.0, 200);
    world
        .harness
        .runners
        .deprovision(&SessionId::parse("s-1").unwrap())
        .await
        .unwrap();
    let (status, body) = world.get_json(&host, "/headers").await;
    assert_eq!((status, &body["error"]), (404, &"RUNNER_NOT_FOUND".into()));
}

#[tokio::test]
async fn a_runner_that_does_not_answer_is_a_502_and_a_starting_service_a_503() {
    let world = World::new(&[]).await;
    // Nothing listens on a port just released.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let token = token::generate();
    let route = Route::of(vec![token::digest(&token)], Some(closed.port()), None, None);
    let lifecycle = &world.harness.service.lifecycle;
    lifecycle.track_running("s-1", RunnerKind::Session, route);
    let (status, body) = world.get_json(&world.host(&token), "/").await;
    assert_eq!(
        (status, &body["error"]),
        (502, &"RUNNER_UNREACHABLE".into()),
        "{body}"
    );

    world.readiness.waiting("test".to_owned());
    let (status, body) = world.get_json(&world.host(&token), "/").await;
    assert_eq!((status, &body["error"]), (503, &"NOT_READY".into()));
}

#[tokio::test]
async fn requests_and_open_websockets_count_as_heartbeats() {
    // An activity tick every 250 ms.
    let world = World::new(&["--inactivity-timeout=1"]).await;
    assert_eq!(world.flushed().await, 0);
    let host = world.host(&world.token);
    assert_eq!(world.get_json(&host, "/headers").await.0, 200);
    assert_eq!(world.flushed().await, 1);

    let mut socket = world.websocket(&world.token).await;
    world.flushed().await;
    // Nothing but the open WebSocket makes the next heartbeat.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while world.flushed().await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat from the open WebSocket"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    socket.send(Message::text("still open")).await.unwrap();
    assert!(socket.next().await.is_some());
}

#[test]
fn open_websockets_are_seen_well_within_the_inactivity_timeout() {
    assert_eq!(
        activity_interval(Duration::from_secs(60)),
        Duration::from_secs(15)
    );
    assert_eq!(
        activity_interval(Duration::from_secs(600)),
        Duration::from_secs(15)
    );
    assert_eq!(
        activity_interval(Duration::from_secs(1)),
        Duration::from_millis(250)
    );
}

#[test]
fn a_route_goes_straight_to_the_container_when_its_address_is_known() {
    let route = |address, node_host| {
        Route::of(vec!["t".into()], Some(40000), node_host, address)
            .unwrap()
            .address
            .to_string()
    };
    assert_eq!(route(Some("172.18.0.5:3000"), None), "172.18.0.5:3000");
    assert_eq!(route(None, None), "127.0.0.1:40000");
    assert_eq!(route(None, Some("10.0.0.3")), "10.0.0.3:40000");
    assert_eq!(route(None, Some("fd00::3")), "[fd00::3]:40000");
    assert!(Route::of(vec!["t".into()], None, None, Some("172.18.0.5:3000")).is_none());
}

/// Polls the service's metrics until `line` appears (a tunnel is counted
/// once both sides have upgraded, just after the 101).
async fn metrics_show(world: &World, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = world.harness.service.metrics.render(&[]);
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{line}` in the metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_gateway_counts_its_answers_and_its_open_websockets() {
    let world = World::new(&[]).await;
    let (status, _) = world.get_json(&world.host(&world.token), "/headers").await;
    assert_eq!(status, 200);
    let unknown = world.host(&"0".repeat(32));
    assert_eq!(world.get_json(&unknown, "/").await.0, 404);
    metrics_show(
        &world,
        r#"orchestrator_gateway_requests_total{result="proxied"} 1"#,
    )
    .await;
    metrics_show(
        &world,
        r#"orchestrator_gateway_requests_total{result="not_found"} 1"#,
    )
    .await;

    let mut socket = world.websocket(&world.token).await;
    metrics_show(
        &world,
        r#"orchestrator_gateway_requests_total{result="websocket"} 1"#,
    )
    .await;
    metrics_show(&world, "orchestrator_gateway_open_websockets 1").await;
    socket.close(None).await.unwrap();
    while socket.next().await.is_some() {}
    // The client's connection ends, as a browser's does after the close.
    drop(socket);
    metrics_show(&world, "orchestrator_gateway_open_websockets 0").await;
}
