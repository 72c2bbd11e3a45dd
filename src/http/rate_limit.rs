//! Per-client limit on provisions (governor, through tower_governor), so one
//! client cannot start runners by the thousand.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::IntoResponse;
use axum::routing::MethodRouter;
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

use super::ApiError;
use crate::config::Admission;

/// How often addresses that stopped provisioning are forgotten.
const FORGET_INTERVAL: Duration = Duration::from_secs(60);

/// The client's address: the peer's, or the first `X-Forwarded-For` entry
/// when the service is told it sits behind a proxy that sets it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress {
    trust_forwarded_for: bool,
}

impl KeyExtractor for ClientAddress {
    type Key = IpAddr;

    fn extract<T>(&self, request: &Request<T>) -> Result<IpAddr, GovernorError> {
        let forwarded = self
            .trust_forwarded_for
            .then(|| request.headers().get("x-forwarded-for"))
            .flatten()
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .and_then(|first| first.trim().parse().ok());
        forwarded
            .or_else(|| {
                request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|info| info.0.ip())
            })
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// Applies the limit to `route`, unless `PROVISION_RATE_PER_MINUTE` is 0:
/// `PROVISION_BURST` requests from one address at once, then one every
/// `60 s / PROVISION_RATE_PER_MINUTE` (a generic cell rate, so an address
/// that pauses earns its burst back). Every request to the route counts, also
/// one refused later (a malformed session id), so a flood of bad requests is
/// limited too.
pub fn limit<S>(route: MethodRouter<S>, admission: &Admission) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let per_minute = admission.provision_rate_per_minute;
    if per_minute == 0 {
        return route;
    }
    let config = Arc::new(
        GovernorConfigBuilder::default()
            .key_extractor(ClientAddress {
                trust_forwarded_for: admission.trust_forwarded_for,
            })
            .period(Duration::from_secs(60) / per_minute)
            .burst_size(admission.provision_burst)
            .finish()
            .expect("a positive period and burst"),
    );
    let limiter = config.limiter().clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(FORGET_INTERVAL);
        loop {
            ticks.tick().await;
            limiter.retain_recent();
        }
    });
    route.layer(
        GovernorLayer::new(config).error_handler(|error| match error {
            GovernorError::TooManyRequests { wait_time, .. } => {
                ApiError::RateLimited(wait_time).into_response()
            }
            other => {
                tracing::error!(%other, "cannot rate-limit a request");
                ApiError::Internal { details: None }.into_response()
            }
        }),
    )
}
