//! The HTTP/1 server loop, serving the [`Front`] (the API and the gateway).
//!
//! It does what `axum::serve` does, plus a deadline on request heads:
//! `axum::serve` offers no settings and runs hyper without a timer, so with
//! it a client that sends part of a request line or of its headers and then
//! stalls keeps its connection open forever (`REQUEST_TIMEOUT_SECONDS` only
//! starts once the head is complete). Here hyper closes such a connection
//! after `REQUEST_TIMEOUT_SECONDS`, without an answer; an idle keep-alive
//! connection too. And a connection that ends lingers (see `linger`),
//! so that a client still sending a refused body reads the 413. Connections
//! may be upgraded (the gateway's WebSockets), so the graceful shutdown is
//! done here: `GracefulShutdown` cannot watch an upgradeable connection.

use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

mod front;
mod linger;

pub use front::{Front, front};
pub use linger::LINGER_IDLE;

use linger::LingeringClose;

/// Serves `front` until `shutdown` is cancelled, then stops accepting and
/// waits for the open connections to finish their requests. Handlers get
/// the peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    front: Front,
    head_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    on_accept_error(error).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Small frames carried both ways (the gateway's WebSockets) go out
        // at once rather than waiting for an acknowledgement.
        let _ = stream.set_nodelay(true);
        let service = front
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection = http
            .serve_connection(
                TokioIo::new(LingeringClose::new(stream, shutdown.clone())),
                TowerToHyperService::new(service),
            )
            .with_upgrades();
        // A token of the connection's own: waiting on the shared one takes
        // its locks, which every connection and worker shares, on every poll
        // of every connection.
        let stop = shutdown.child_token();
        connections.spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stop.cancelled() => {
                    // Finishes the request in flight, then closes.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// As `axum::serve`: a connection the peer gave up on is nothing; anything
/// else (e.g. out of file descriptors) is logged and retried a second later.
async fn on_accept_error(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
