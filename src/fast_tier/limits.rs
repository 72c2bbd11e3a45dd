//! The limits: runners at once, provisions per client address, body size.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use futures_util::stream;
use serde_json::json;

use super::{Service, provision_request, send};

const LIMIT_MESSAGE: &str = "The maximum number of runners is reached; try again later.";

fn from(address: [u8; 4], mut request: Request<Body>) -> Request<Body> {
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((address, 50000))));
    request
}

#[tokio::test]
async fn max_concurrent_runners_refuses_new_runners_with_503() {
    let service = Service::new(&["--max-concurrent-runners=2"]).await;
    service.provisioned("a").await;
    service.provisioned("b").await;

    let refused = service.provision(Some("c")).await;
    refused.assert_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "RUNNER_LIMIT_REACHED",
        LIMIT_MESSAGE,
    );
    assert_eq!(refused.headers["retry-after"], "5");
    assert_eq!(service.row("c").await, None);
    assert_eq!(service.runners_of("c"), []);
    assert_eq!(service.backend().calls().start, 2);

    // Existing sessions are still answered at the limit.
    assert_eq!(service.provision(Some("a")).await.status, StatusCode::OK);
    // A removal makes room.
    assert_eq!(service.deprovision("a").await.status, StatusCode::OK);
    service.provisioned("c").await;
}

#[tokio::test]
async fn the_auto_limit_comes_from_the_engines_memory() {
    let service = Service::new(&["--runner-memory=512m"]).await;
    // Room for one runner at a quarter of its limit each.
    service.backend().set_memory_total(128 << 20);
    service.provisioned("a").await;
    service
        .provision(Some("b"))
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE, "RUNNER_LIMIT_REACHED");
    assert_eq!(service.backend().calls().memory_total, 1);
}

#[tokio::test]
async fn warm_runners_count_against_the_limit() {
    let service = Service::new(&["--max-concurrent-runners=1", "--warm-pool-size=1"]).await;
    let pool = service.warm_pool(1);
    pool.try_once(&Default::default()).await.unwrap();
    service
        .provision(Some("cold"))
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE, "RUNNER_LIMIT_REACHED");
    // The waiting warm runner is still handed out.
    assert_eq!(service.provision(None).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn concurrent_provisions_never_overshoot_the_limit() {
    let service = Service::new(&["--max-concurrent-runners=2"]).await;
    service.backend().hold_starts();
    let a = tokio::spawn(send(
        service.router.clone(),
        provision_request(Some("a"), None),
    ));
    let b = tokio::spawn(send(
        service.router.clone(),
        provision_request(Some("b"), None),
    ));
    super::held_starts(service.backend(), 2).await;
    // Two rows are claimed and their starts are with the engine: the third
    // is refused without waiting for them.
    service
        .provision(Some("c"))
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE, "RUNNER_LIMIT_REACHED");
    service.backend().release_starts();
    assert_eq!(a.await.unwrap().status, StatusCode::CREATED);
    assert_eq!(b.await.unwrap().status, StatusCode::CREATED);
    assert_eq!(service.rows().await.len(), 2);
    assert_eq!(service.backend().runners().len(), 2);
}

#[tokio::test]
async fn a_client_address_past_its_burst_gets_429_others_do_not() {
    let service = Service::new(&[
        "--provision-rate-per-minute=1",
        "--provision-burst=2",
        "--max-concurrent-runners=0",
    ])
    .await;
    let client = [10, 0, 0, 1];
    for session in ["a", "b"] {
        let answer = service
            .send(from(client, provision_request(Some(session), None)))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    }
    let limited = service
        .send(from(client, provision_request(Some("c"), None)))
        .await;
    let message = limited.error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    assert!(
        message.starts_with("Too many provisions from this client; try again in "),
        "{message}"
    );
    let wait: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(service.row("c").await, None);
    assert_eq!(service.backend().calls().start, 2);

    // Another address has its own burst; heartbeats are not limited.
    let other = service
        .send(from([10, 0, 0, 2], provision_request(Some("c"), None)))
        .await;
    assert_eq!(other.status, StatusCode::CREATED);
    for _ in 0..5 {
        let heartbeat = service
            .send(from(client, super::heartbeat_request("a")))
            .await;
        assert_eq!(heartbeat.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn forwarded_for_counts_only_when_trusted() {
    let forwarded = |session: &str, address: &str| {
        let mut request = provision_request(Some(session), None);
        request
            .headers_mut()
            .insert("x-forwarded-for", address.parse().unwrap());
        request
    };
    let trusting = Service::new(&[
        "--provision-rate-per-minute=1",
        "--provision-burst=1",
        "--trust-forwarded-for=true",
    ])
    .await;
    assert_eq!(
        trusting.send(forwarded("a", "203.0.113.1")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        trusting
            .send(forwarded("b", "203.0.113.2, 10.0.0.1"))
            .await
            .status,
        StatusCode::CREATED
    );
    trusting
        .send(forwarded("c", "203.0.113.1"))
        .await
        .error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");

    let wary = Service::new(&["--provision-rate-per-minute=1", "--provision-burst=1"]).await;
    assert_eq!(
        wary.send(forwarded("a", "203.0.113.1")).await.status,
        StatusCode::CREATED
    );
    wary.send(forwarded("b", "203.0.113.2"))
        .await
        .error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
}

#[tokio::test]
async fn a_body_over_16_kib_is_413_json_declared_or_not() {
    let service = Service::new(&[]).await;
    let padding = "x".repeat(crate::http::BODY_LIMIT_BYTES);
    let big = json!({ "sessionId": "s-1", "padding": padding }).to_string();

    // With its length declared: refused before it is read.
    let declared = Request::builder()
        .method("POST")
        .uri("/api/runner/provision")
        .header("content-type", "application/json")
        .header("content-length", big.len())
        .body(Body::from(big.clone()))
        .unwrap();
    service.send(declared).await.assert_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        "The request body is too large.",
    );

    // Streamed without a length, on every route.
    for path in [
        "/api/runner/provision",
        "/api/runner/heartbeat",
        "/api/runner/deprovision",
    ] {
        let chunks: Vec<Result<String, std::io::Error>> = big
            .as_bytes()
            .chunks(1024)
            .map(|chunk| Ok(String::from_utf8(chunk.to_vec()).unwrap()))
            .collect();
        let streamed = Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from_stream(stream::iter(chunks)))
            .unwrap();
        service.send(streamed).await.assert_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "The request body is too large.",
        );
    }
    assert_eq!(service.backend().calls().start, 0);
    assert!(service.rows().await.is_empty());

    // Just under the limit is read (unknown fields are ignored).
    let fits =
        json!({ "networkMode": "none", "p": "x".repeat(crate::http::BODY_LIMIT_BYTES - 64) });
    let answer = service.provision_with(Some("s-1"), fits).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    assert_eq!(answer.endpoint(), crate::lifecycle::NO_ENDPOINT);
}
