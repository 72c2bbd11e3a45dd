//! The runner gateway (`RUNNER_ACCESS=gateway`) against real runners: HTTP
//! and WebSocket (Socket.IO's engine.io handshake) through the service's own
//! port, no runner port beyond the loopback, unknown and removed runners,
//! restarts, activity, a runner that does not answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::faults::{Damage, moved_aside};
use crate::helpers::{TestApp, TestEnv, eventually, wait_for};

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

const GATEWAY: &str = "--runner-access=gateway";

/// The host and port of an endpoint `http://<host>:<port>`.
fn host_and_port(endpoint: &str) -> (String, u16) {
    let authority = endpoint.strip_prefix("http://").expect("an http endpoint");
    let (host, port) = authority.rsplit_once(':').expect("a port");
    (host.to_owned(), port.parse().unwrap())
}

/// A client that reaches the gateway's endpoints (`*.runners.localhost` has
/// no DNS here) on the service's loopback port, as a browser would.
fn client(endpoint: &str) -> reqwest::Client {
    let (host, port) = host_and_port(endpoint);
    reqwest::Client::builder()
        .resolve(&host, SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get(endpoint: &str, path: &str) -> (u16, Value) {
    let response = client(endpoint)
        .get(format!("{endpoint}{path}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits for the runner behind `endpoint` to answer through the gateway (a
/// just-started runner may not listen yet).
async fn assert_answers_through_gateway(endpoint: &str) {
    let what = format!("the runner at {endpoint} answering through the gateway");
    let body = wait_for(Duration::from_secs(10), &what, || async {
        let (status, body) = get(endpoint, "/").await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(body["runner"], "ok", "{body}");
}

/// A WebSocket to `path` of the runner behind `endpoint`, through the gateway.
async fn websocket(endpoint: &str, path: &str) -> Socket {
    let (_, port) = host_and_port(endpoint);
    let url = format!("{}{path}", endpoint.replacen("http://", "ws://", 1));
    let request = url.into_client_request().unwrap();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (socket, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap_or_else(|error| panic!("WebSocket to {endpoint}{path}: {error}"));
    socket
}

async fn next_text(socket: &mut Socket) -> String {
    let next = tokio::time::timeout(Duration::from_secs(10), socket.next()).await;
    match next.expect("a message within 10 s") {
        Some(Ok(Message::Text(text))) => text.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn provision(app: &TestApp, session: &str) -> String {
    let reply = app.api.provision(Some(session)).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    reply.endpoint().to_owned()
}

#[tokio::test]
async fn http_reaches_the_runner_through_the_gateway_at_an_unguessable_host() {
    let app = TestEnv::new().spawn(&[GATEWAY]).await;
    let endpoint = provision(&app, "gw-http").await;
    let (host, port) = host_and_port(&endpoint);
    assert_eq!(
        port,
        app.api
            .base
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap()
    );
    let token = host
        .strip_suffix(".runners.localhost")
        .expect("under GATEWAY_DOMAIN");
    assert_eq!(token.len(), 32, "{token}");
    assert!(!token.contains("gw-http"));
    assert_eq!(app.env.row("gw-http").await.unwrap().token, token);

    assert_answers_through_gateway(&endpoint).await;
    let (status, body) = get(&endpoint, "/some/path?x=1").await;
    assert_eq!((status, &body["path"]), (200, &"/some/path?x=1".into()));
    // The API is still the API on every other host.
    assert_eq!(app.api.heartbeat("gw-http").await.status, 200);
    let again = app.api.provision(Some("gw-http")).await;
    assert_eq!((again.status, again.endpoint()), (200, endpoint.as_str()));
}

#[tokio::test]
async fn a_socket_io_client_connects_through_the_gateway() {
    let app = TestEnv::new().spawn(&[GATEWAY]).await;
    let endpoint = provision(&app, "gw-ws").await;
    assert_answers_through_gateway(&endpoint).await;

    // engine.io v4: the polling handshake, then the upgrade to websocket.
    let http = client(&endpoint);
    let polling = format!("{endpoint}/socket.io/?EIO=4&transport=polling");
    let open = http.get(&polling).send().await.unwrap();
    assert_eq!(open.status(), 200);
    let open = open.text().await.unwrap();
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').unwrap_or(&open))
        .unwrap_or_else(|_| panic!("not an engine.io open packet: {open}"));
    let sid = handshake["sid"].as_str().expect("a sid").to_owned();
    let posted = http
        .post(format!("{polling}&sid={sid}"))
        .body("40")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.text().await.unwrap(), "ok");

    let mut socket = websocket(
        &endpoint,
        &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
    )
    .await;
    socket.send(Message::text("2probe")).await.unwrap();
    assert_eq!(next_text(&mut socket).await, "3probe");
    socket.send(Message::text("5")).await.unwrap();
    socket.send(Message::text("2")).await.unwrap();
    assert_eq!(next_text(&mut socket).await, "3");
    let event = r#"42["echo",{"code":"print(1)"}]"#;
    socket.send(Message::text(event)).await.unwrap();
    assert_eq!(next_text(&mut socket).await, event);
    let bytes = Message::binary(vec![0u8, 159, 146, 150]);
    socket.send(bytes.clone()).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), bytes);
    socket.close(None).await.unwrap();

    // The websocket transport straight away: the open packet first.
    let mut direct = websocket(&endpoint, "/socket.io/?EIO=4&transport=websocket").await;
    assert!(next_text(&mut direct).await.starts_with("0{"));
}

#[tokio::test]
async fn no_runner_port_is_bound_beyond_the_loopback() {
    // The bind address would open it to every interface in `ports` mode.
    let app = TestEnv::new()
        .spawn(&[GATEWAY, "--runner-bind-address=0.0.0.0", "--free-doors=1"])
        .await;
    provision(&app, "gw-loopback").await;
    let container = app
        .env
        .row("gw-loopback")
        .await
        .unwrap()
        .container_id
        .unwrap();
    let inspected = app.env.inspect(&container).await;
    let configured = inspected.host_config.unwrap().port_bindings.unwrap();
    let bound = inspected.network_settings.unwrap().ports.unwrap();
    let mut seen = 0;
    for bindings in configured.values().chain(bound.values()) {
        for binding in bindings.iter().flatten() {
            assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"), "{binding:?}");
            seen += 1;
        }
    }
    // The runner port and one free door, as configured and as bound.
    assert_eq!(seen, 4);
}

#[tokio::test]
async fn unknown_and_removed_runners_answer_404() {
    let app = TestEnv::new().spawn(&[GATEWAY]).await;
    let endpoint = provision(&app, "gw-removed").await;
    assert_answers_through_gateway(&endpoint).await;
    let (host, port) = host_and_port(&endpoint);
    let unknown = format!("http://{}.runners.localhost:{port}", "0".repeat(32));
    let (status, body) = get(&unknown, "/").await;
    assert_eq!(
        (status, &body["error"]),
        (404, &"RUNNER_NOT_FOUND".into()),
        "{body}"
    );
    assert!(host.ends_with(".runners.localhost"));

    assert_eq!(app.api.deprovision("gw-removed").await.status, 200);
    let (status, body) = get(&endpoint, "/").await;
    assert_eq!(
        (status, &body["error"]),
        (404, &"RUNNER_NOT_FOUND".into()),
        "{body}"
    );
}

#[tokio::test]
async fn the_endpoint_keeps_working_across_a_restart() {
    let env = TestEnv::new();
    let port = free_port();
    let port_arg = format!("--port={port}");
    let app = env.spawn(&[GATEWAY, &port_arg]).await;
    let endpoint = provision(&app, "gw-restart").await;
    assert_answers_through_gateway(&endpoint).await;

    let env = app.stop().await;
    let app = env.spawn(&[GATEWAY, &port_arg]).await;
    assert_eq!(app.reconciled.kept, 1);
    assert_answers_through_gateway(&endpoint).await;
    let again = app.api.provision(Some("gw-restart")).await;
    assert_eq!((again.status, again.endpoint()), (200, endpoint.as_str()));
}

/// Deletes the (stopped) service's database, and the token key's file
/// beside it too when `key_too`.
fn lose_the_database(env: &TestEnv, key_too: bool) {
    let db = env.db_path.display().to_string();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{db}{suffix}"));
    }
    assert!(!env.db_path.exists());
    let key = format!("{db}.token-key");
    assert!(
        std::path::Path::new(&key).exists(),
        "no token key beside {db}"
    );
    if key_too {
        std::fs::remove_file(&key).unwrap();
    }
}

#[tokio::test]
async fn the_endpoint_survives_a_deleted_database() {
    let env = TestEnv::new();
    let port = free_port();
    let port_arg = format!("--port={port}");
    let app = env.spawn(&[GATEWAY, &port_arg]).await;
    let endpoint = provision(&app, "gw-rebuilt").await;
    assert_answers_through_gateway(&endpoint).await;

    // The database alone: the labels' nonce and the key give the same token.
    let env = app.stop().await;
    lose_the_database(&env, false);
    let app = env.spawn(&[GATEWAY, &port_arg]).await;
    assert_eq!(app.reconciled.adopted, 1);
    assert_answers_through_gateway(&endpoint).await;
    let again = app.api.provision(Some("gw-rebuilt")).await;
    assert_eq!((again.status, again.endpoint()), (200, endpoint.as_str()));
    assert_eq!(app.api.heartbeat("gw-rebuilt").await.status, 200);
    let trail = env.db().await.audit_trail("(database)").await.unwrap();
    assert!(
        trail
            .iter()
            .any(|entry| entry.action == "rebuilt"
                && entry.reason.contains("rebuilt from the engine")),
        "{trail:?}"
    );

    // The key as well: the host the browser holds still reaches the runner
    // (routed by the digest in its labels), and provision answers a new one
    // that reaches it too.
    let env = app.stop().await;
    lose_the_database(&env, true);
    let app = env.spawn(&[GATEWAY, &port_arg]).await;
    assert_eq!(app.reconciled.adopted, 1);
    assert_answers_through_gateway(&endpoint).await;
    let again = app.api.provision(Some("gw-rebuilt")).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_ne!(again.endpoint(), endpoint);
    assert_answers_through_gateway(again.endpoint()).await;
}

/// A gateway-mode database replaced with bytes that are not SQLite, or with
/// one from a newer orchestrator: moved aside, and every runner keeps its
/// endpoint (derived again from its labels and the key beside the file).
#[tokio::test]
async fn a_damaged_database_keeps_every_endpoint() {
    for damage in [Damage::NotSqlite, Damage::Newer] {
        let env = TestEnv::new();
        let port = free_port().to_string();
        let gateway = [("RUNNER_ACCESS", "gateway"), ("PORT", port.as_str())];
        let app = env.spawn_binary(&gateway).await;
        let sessions = ["gw-damaged-1", "gw-damaged-2"];
        let mut endpoints = Vec::new();
        for session in sessions {
            let reply = app.api.provision(Some(session)).await;
            assert_eq!(reply.status, 201, "{reply:?}");
            endpoints.push(reply.endpoint().to_owned());
        }
        assert!(app.terminate().await.success());
        damage.inflict(&env).await;

        let app = env.spawn_binary(&gateway).await;
        assert_eq!(moved_aside(&env.db_path).len(), 1, "{damage:?}");
        for (session, endpoint) in sessions.iter().zip(&endpoints) {
            assert_answers_through_gateway(endpoint).await;
            let again = app.api.provision(Some(session)).await;
            assert_eq!(
                (again.status, again.endpoint()),
                (200, endpoint.as_str()),
                "{damage:?}"
            );
            assert_eq!(app.api.heartbeat(session).await.status, 200, "{damage:?}");
        }
        let trail = env.db().await.audit_trail("(database)").await.unwrap();
        assert!(
            trail.len() == 1
                && trail[0].action == "rebuilt"
                && trail[0].reason.contains("was damaged")
                && trail[0].reason.contains("adopted=2"),
            "{damage:?}: {trail:?}"
        );
        let (ok, listed, _) = crate::operator::operator(&env, &["runners", "list"]);
        assert!(
            ok && sessions.iter().all(|session| listed.contains(session)),
            "{damage:?}: {listed}"
        );
        assert!(app.terminate().await.success());
    }
}

/// Traffic through the gateway, and nothing else, keeps `busy` alive while
/// `idle` (provisioned alike, no traffic) is reaped, and past twice the
/// timeout. `traffic` runs until it is dropped.
async fn assert_activity_keeps_alive(app: &TestApp, busy: &str, idle: &str, timeout: Duration) {
    let started = Instant::now();
    app.env
        .until_row_dropped(idle, Duration::from_secs(30))
        .await;
    let what = format!("twice the inactivity timeout with `{busy}` alive");
    eventually(Duration::from_secs(30), &what, || async {
        assert!(app.env.row(busy).await.is_some(), "`{busy}` was reaped");
        started.elapsed() > timeout * 2
    })
    .await;
    assert_eq!(app.api.heartbeat(busy).await.status, 200);
}

const REAPING: [&str; 3] = [GATEWAY, "--inactivity-timeout=2", "--cleanup-interval=1"];

#[tokio::test]
async fn http_requests_through_the_gateway_keep_a_runner_alive() {
    let app = TestEnv::new().spawn(&REAPING).await;
    let endpoint = provision(&app, "gw-busy").await;
    provision(&app, "gw-idle").await;
    assert_answers_through_gateway(&endpoint).await;
    let traffic = tokio::spawn(async move {
        loop {
            get(&endpoint, "/").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    assert_activity_keeps_alive(&app, "gw-busy", "gw-idle", Duration::from_secs(2)).await;
    traffic.abort();
}

#[tokio::test]
async fn an_open_websocket_keeps_a_runner_alive() {
    let app = TestEnv::new().spawn(&REAPING).await;
    let endpoint = provision(&app, "gw-open").await;
    provision(&app, "gw-closed").await;
    assert_answers_through_gateway(&endpoint).await;
    // A plain echo on any other path; silent once open.
    let mut socket = websocket(&endpoint, "/echo").await;
    assert_activity_keeps_alive(&app, "gw-open", "gw-closed", Duration::from_secs(2)).await;
    socket.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_text(&mut socket).await, "still here");
}

#[tokio::test]
async fn a_runner_that_does_not_answer_is_a_502() {
    let env = TestEnv::new();
    let port = free_port();
    let port_arg = format!("--port={port}");
    let app = env.spawn(&[GATEWAY, &port_arg]).await;
    let endpoint = provision(&app, "gw-frozen").await;
    // Started again with a short wait for response heads (a provision on a
    // busy engine may take longer than that).
    let env = app.stop().await;
    let app = env
        .spawn(&[GATEWAY, &port_arg, "--request-timeout=2"])
        .await;
    assert_answers_through_gateway(&endpoint).await;
    let container = app
        .env
        .row("gw-frozen")
        .await
        .unwrap()
        .container_id
        .unwrap();
    app.env.docker.pause_container(&container).await.unwrap();
    let (status, body) = get(&endpoint, "/").await;
    app.env.docker.unpause_container(&container).await.unwrap();
    assert_eq!(
        (status, &body["error"]),
        (502, &"RUNNER_UNREACHABLE".into()),
        "{body}"
    );
    assert_answers_through_gateway(&endpoint).await;
}

/// A port nothing listens on now, for a service that must keep its port
/// across a restart.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
