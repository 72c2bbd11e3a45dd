//! A provisioned runner speaks Socket.IO's transports as the real one does:
//! the polling handshake (cross-origin) and the websocket transport, straight
//! to its endpoint (ports mode).

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    assert_engine_io_echo, assert_runner_answers, connect_websocket, next_message,
    socket_io_websocket_url, spawn_app,
};

const ORIGIN: &str = "http://localhost:4200";

#[tokio::test]
async fn engine_io_handshake_and_echo_straight_to_the_runner() {
    let app = spawn_app().await;
    let reply = app.api.provision(None).await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    let endpoint = reply.endpoint().to_owned();
    assert_runner_answers(&endpoint).await;

    // The polling handshake, as socket.io-client sends it first.
    let client = &app.api.client;
    let polling = format!("{endpoint}/socket.io/?EIO=4&transport=polling");
    let response = client
        .get(format!("{polling}&t=first"))
        .header("Origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/plain; charset=UTF-8");
    assert_eq!(headers["access-control-allow-origin"], ORIGIN);
    let body = response.text().await.unwrap();
    assert!(body.starts_with('0'), "{body}");
    let handshake: serde_json::Value = serde_json::from_str(&body[1..]).unwrap();
    assert_eq!(handshake["pingInterval"], 25000, "{body}");
    assert_eq!(handshake["maxPayload"], 1_000_000, "{body}");
    let sid = handshake["sid"].as_str().unwrap().to_owned();

    let response = client
        .post(format!("{polling}&sid={sid}"))
        .header("Origin", ORIGIN)
        .body("40")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");

    // The upgrade of that session: no open packet, the probe, then messages.
    let url = socket_io_websocket_url(&endpoint);
    let mut socket = connect_websocket(&format!("{url}&sid={sid}"))
        .await
        .unwrap();
    socket.send(Message::text("2probe")).await.unwrap();
    assert_eq!(
        next_message(&mut socket).await.into_text().unwrap(),
        "3probe"
    );
    socket.send(Message::text("5")).await.unwrap();
    let event = r#"42["echo","upgraded"]"#;
    socket.send(Message::text(event)).await.unwrap();
    assert_eq!(next_message(&mut socket).await.into_text().unwrap(), event);
    socket.close(None).await.unwrap();

    // A websocket-only session, as `io(endpoint, {transports: ["websocket"]})`.
    let open = assert_engine_io_echo(&endpoint).await;
    assert_ne!(open["sid"], sid);
}

#[tokio::test]
async fn an_upgrade_on_another_path_is_a_plain_echo() {
    let app = spawn_app().await;
    let reply = app.api.provision(None).await;
    let endpoint = reply.endpoint().to_owned();
    assert_runner_answers(&endpoint).await;

    let url = format!("{}/any/path", endpoint.replacen("http", "ws", 1));
    let mut socket = connect_websocket(&url).await.unwrap();
    for text in ["2probe", r#"42["echo",1]"#, "hello"] {
        socket.send(Message::text(text)).await.unwrap();
        assert_eq!(next_message(&mut socket).await.into_text().unwrap(), text);
    }
    let large = vec![7u8; 70_000];
    socket.send(Message::binary(large.clone())).await.unwrap();
    assert_eq!(next_message(&mut socket).await.into_data(), large);
    socket.close(None).await.unwrap();
}
