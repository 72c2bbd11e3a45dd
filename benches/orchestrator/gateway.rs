//! WebSocket echo round trips and HTTP requests through the gateway against
//! the same straight to the runner's loopback port, interleaved one for one,
//! and the service's memory per idle proxied WebSocket against its memory
//! before them.

use std::time::{Duration, Instant};

use crate::harness::{Context, Result, figure, ms, percentile};
use crate::support::wait::poll_until;

use futures_util::StreamExt;
use taylored_orchestrator::db::Db;

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket to `path` on `port`, with `host` as its `Host`.
async fn open_socket(port: u16, host: &str, path: &str) -> Result<Socket> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = format!("ws://{host}{path}").into_client_request()?;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (socket, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(socket)
}

/// One echo round trip of a Socket.IO-sized event.
async fn echo(socket: &mut Socket) -> Result<Duration> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let event = r#"42["echo",{"output":"hello from the runner"}]"#;
    let started = Instant::now();
    socket.send(Message::text(event)).await?;
    match socket.next().await {
        Some(Ok(Message::Text(text))) if text.as_str() == event => Ok(started.elapsed()),
        other => anyhow::bail!("the echo answered {other:?}"),
    }
}

/// `GET /` answered 200, timed.
async fn timed_get(client: &reqwest::Client, url: &str) -> Result<Duration> {
    let started = Instant::now();
    let response = client.get(url).send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    response.bytes().await?;
    Ok(started.elapsed())
}

/// Through the gateway against straight to the runner's loopback port:
/// WebSocket echo round trips and HTTP requests (interleaved one for one),
/// then the service's memory per idle WebSocket it carries.
pub async fn gateway(cx: &mut Context) -> Result<()> {
    let image = std::env::var("BENCH_GATEWAY_IMAGE").unwrap_or_else(|_| cx.image.clone());
    let env = [
        ("RUNNER_ACCESS", "gateway".to_owned()),
        ("DOCKER_IMAGE_NAME", image),
        // The stand-in runner spends a thread per connection, and the idle
        // sockets below are hundreds of them.
        ("RUNNER_PIDS_LIMIT", "4096".to_owned()),
    ];
    let service = cx.part_service("gateway", &env).await?;
    service.provision(Some("gateway-session")).await?;
    let row = Db::connect_unlocked(&service.db_url())
        .await?
        .find("gateway-session")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no row for the provisioned session"))?;
    let runner_port = row
        .host_port
        .ok_or_else(|| anyhow::anyhow!("no runner port"))?;
    let gateway_port = service.process.port;
    let host = format!("{}.runners.localhost:{gateway_port}", row.token);
    let samples = cx.sizes.gateway_samples;
    println!(
        "\n[gateway] {samples} WebSocket echoes and {samples} GET / through the gateway and straight to the runner, interleaved"
    );

    let direct_url = format!("http://127.0.0.1:{runner_port}/");
    let gateway_url = format!("http://{host}/");
    let client = reqwest::Client::builder()
        .resolve(
            &format!("{}.runners.localhost", row.token),
            std::net::SocketAddr::from(([127, 0, 0, 1], gateway_port)),
        )
        .build()?;
    let ready = poll_until(Duration::from_secs(10), "the runner answering", || async {
        timed_get(&client, &direct_url).await.ok()
    });
    ready.await.map_err(anyhow::Error::msg)?;
    let (mut direct_http, mut gateway_http) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        direct_http.push(timed_get(&client, &direct_url).await?);
        gateway_http.push(timed_get(&client, &gateway_url).await?);
    }
    let (direct, through) = (
        percentile(&direct_http, 0.5),
        percentile(&gateway_http, 0.5),
    );
    cx.push(figure(
        "HTTP GET through the gateway p50",
        format!("{:.2} ms", ms(through)),
        format!("{:.2} ms direct", ms(direct)),
        ms(through) / ms(direct),
        "-",
        None,
    ));

    let direct_host = format!("127.0.0.1:{runner_port}");
    let sockets = async {
        let direct = open_socket(runner_port, &direct_host, "/echo").await?;
        let through = open_socket(gateway_port, &host, "/echo").await?;
        Ok::<_, anyhow::Error>((direct, through))
    };
    let (mut direct_socket, mut gateway_socket) = match sockets.await {
        Ok(sockets) => sockets,
        Err(error) => {
            cx.notes.push(format!(
                "gateway: no WebSocket figures, the runner image does not take WebSockets ({error:#}); \
                 set BENCH_GATEWAY_IMAGE to one that does"
            ));
            return service.finish().await;
        }
    };
    let (mut direct_ws, mut gateway_ws) = (Vec::new(), Vec::new());
    for _ in 0..samples.min(10) {
        echo(&mut direct_socket).await?;
        echo(&mut gateway_socket).await?;
    }
    for _ in 0..samples {
        direct_ws.push(echo(&mut direct_socket).await?);
        gateway_ws.push(echo(&mut gateway_socket).await?);
    }
    let (direct, through) = (percentile(&direct_ws, 0.5), percentile(&gateway_ws, 0.5));
    let ratio = ms(through) / ms(direct);
    cx.push(figure(
        "WebSocket echo through the gateway p50",
        format!("{:.3} ms", ms(through)),
        format!("{:.3} ms direct", ms(direct)),
        ratio,
        "<= 1.3x",
        Some(ratio <= 1.3),
    ));
    let (direct, through) = (percentile(&direct_ws, 0.95), percentile(&gateway_ws, 0.95));
    cx.push(figure(
        "WebSocket echo through the gateway p95",
        format!("{:.3} ms", ms(through)),
        format!("{:.3} ms direct", ms(direct)),
        ms(through) / ms(direct),
        "-",
        None,
    ));

    let count = cx.sizes.gateway_sockets;
    let (_, before) = service.memory_kib();
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        let mut socket = open_socket(gateway_port, &host, "/echo").await?;
        echo(&mut socket).await?;
        idle.push(socket);
    }
    let (_, after) = service.memory_kib();
    let per_socket = (after.saturating_sub(before)) as f64 * 1024.0 / count as f64;
    cx.push(figure(
        format!("RSS per idle proxied WebSocket ({count})"),
        format!("{:.1} KiB", per_socket / 1024.0),
        format!("{:.1} MiB before", before as f64 / 1024.0),
        after as f64 / before.max(1) as f64,
        "-",
        None,
    ));
    drop(idle);
    service.finish().await
}
