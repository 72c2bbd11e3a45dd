//! The runner gateway (`RUNNER_ACCESS=gateway`): runners are reached through
//! the service's own port, each under a host name of its own,
//! `<token>.<GATEWAY_DOMAIN>`, so that no runner port is open beyond the
//! loopback (or, on Swarm, beyond the orchestrator) and only who was given
//! a runner's endpoint can reach it.
//!
//! [`Front`](crate::server::Front) routes every request by its host: a name under the domain goes
//! to [`Gateway`], anything else to the API as before. The gateway finds
//! the token's runner in memory by the token's SHA-256 digest (the running
//! set of `heartbeats`, with no SQLite read), proxies HTTP with streaming bodies and WebSocket upgrades
//! both ways, and records the traffic as the runner's heartbeats (through
//! their batching; no write per request).

mod headers;
mod host;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use chrono::Utc;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

pub use host::{Destination, destination};

use crate::config::Settings;
use crate::domain::token;
use crate::heartbeats::Heartbeats;
use crate::http::ApiError;
use crate::metrics::{GatewayResult, Metrics};
use crate::readiness::{RECONCILE_PATIENCE, Readiness};

/// How long a runner may take to accept a connection before it counts as
/// not answering.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Proxies requests for `<token>.<GATEWAY_DOMAIN>` to the token's runner.
pub struct Gateway {
    domain: String,
    /// The running set, which holds each runner's token and address.
    routes: Heartbeats,
    readiness: Readiness,
    client: Client<HttpConnector, Incoming>,
    /// What clients used, for `X-Forwarded-Proto`.
    scheme: &'static str,
    /// Longest wait for a runner's response head.
    head_timeout: Duration,
    /// How often an open WebSocket counts as a heartbeat.
    activity_interval: Duration,
    /// Ends open WebSocket tunnels when the service stops.
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Gateway {
    /// The domain whose hosts name runners (`GATEWAY_DOMAIN`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn new(
        settings: &Settings,
        routes: Heartbeats,
        readiness: Readiness,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Self {
            domain: settings.access.gateway_domain.clone(),
            routes,
            readiness,
            client: Client::builder(TokioExecutor::new()).build(connector),
            scheme: settings.access.gateway_public_scheme.as_str(),
            head_timeout: settings.request_timeout,
            activity_interval: activity_interval(settings.inactivity_timeout),
            shutdown,
            metrics,
        }
    }

    /// Proxies `request` to the runner of `token`.
    pub async fn proxy(
        self: Arc<Self>,
        token: String,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let metrics = Arc::clone(&self.metrics);
        let (response, result) = self.forward(token, request).await;
        metrics.gateway_request(result);
        response
    }

    /// The runner's answer, or the gateway's own, and which it was.
    async fn forward(
        self: Arc<Self>,
        token: String,
        mut request: Request<Incoming>,
    ) -> (Response<Body>, GatewayResult) {
        // Before the startup reconcile the running set is empty: a 404 would
        // tell a client its runner is gone when it is about to be kept.
        if let Err(reason) = self.readiness.admit(RECONCILE_PATIENCE).await {
            return (
                ApiError::NotReady(reason).into_response(),
                GatewayResult::NotReady,
            );
        }
        // Routed by the token's digest: that is what the engine's labels
        // carry, and what a rebuild from them brings back.
        let key = token::digest(&token);
        let Some(address) = self.routes.visit(&key, Utc::now()) else {
            let answer = ApiError::NoRunnerAtHost.into_response();
            return (answer, GatewayResult::NotFound);
        };
        let client = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip());
        let upgrade = headers::strip_hop_by_hop(request.headers_mut());
        headers::add_forwarded(request.headers_mut(), client, self.scheme);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str());
        let Ok(uri) = Uri::try_from(format!("http://{address}{path}")) else {
            return (
                ApiError::RouteNotFound.into_response(),
                GatewayResult::NotFound,
            );
        };
        *request.uri_mut() = uri;
        let answered = tokio::time::timeout(self.head_timeout, self.client.request(request)).await;
        let mut response = match answered {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                tracing::debug!(%address, %error, "runner not answering");
                let answer = ApiError::RunnerUnreachable(format!("{error}")).into_response();
                return (answer, GatewayResult::Unreachable);
            }
            Err(_) => {
                let reason = format!("no answer within {} s", self.head_timeout.as_secs());
                let answer = ApiError::RunnerUnreachable(reason).into_response();
                return (answer, GatewayResult::Unreachable);
            }
        };
        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let kept_upgrade = headers::strip_hop_by_hop(response.headers_mut());
        let result = match (client_upgrade, switched) {
            (Some(client_upgrade), true) if kept_upgrade.is_some() => {
                let runner_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(self.tunnel(key, client_upgrade, runner_upgrade));
                GatewayResult::WebSocket
            }
            (_, true) => {
                // A switch nobody asked for cannot be carried.
                let answer = ApiError::RunnerUnreachable("an unrequested protocol switch".into());
                return (answer.into_response(), GatewayResult::Unreachable);
            }
            _ => GatewayResult::Proxied,
        };
        (response.map(Body::new), result)
    }

    /// Carries an upgraded connection (a WebSocket) both ways until either
    /// side closes it, the runner is removed or the service stops; while
    /// open it counts as the runner's heartbeat every `activity_interval`.
    async fn tunnel(self: Arc<Self>, key: String, client: OnUpgrade, runner: OnUpgrade) {
        let (client, runner) = match tokio::try_join!(client, runner) {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "WebSocket upgrade failed");
                return;
            }
        };
        let _open = self.metrics.gateway_tunnel();
        let (mut client, mut runner) = (TokioIo::new(client), TokioIo::new(runner));
        let copy = tokio::io::copy_bidirectional(&mut client, &mut runner);
        tokio::pin!(copy);
        let mut ticks = tokio::time::interval(self.activity_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = &mut copy => return,
                _ = ticks.tick() => {
                    if self.routes.visit(&key, Utc::now()).is_none() {
                        return;
                    }
                }
                () = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// Often enough that an open WebSocket is always seen within the inactivity
/// timeout, with room for a late tick.
fn activity_interval(inactivity_timeout: Duration) -> Duration {
    (inactivity_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(15))
}

#[cfg(test)]
mod tests;
