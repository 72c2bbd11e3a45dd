//! The service's one HTTP service: it routes every request by its host, a
//! name under `GATEWAY_DOMAIN` to the gateway, any other to the API.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, header};
use axum::response::IntoResponse;
use futures_util::future::{BoxFuture, Either};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::gateway::{Destination, Gateway, destination};
use crate::http::ApiError;
use crate::readiness::Readiness;
use crate::service::Service;

/// The service's one HTTP service: the gateway for hosts under its domain
/// (in gateway mode), the API for every other.
#[derive(Clone)]
pub struct Front {
    api: Router,
    gateway: Option<Arc<Gateway>>,
}

impl Front {
    /// `gateway` is `None` in `RUNNER_ACCESS=ports`: every host is the API's.
    pub fn new(api: Router, gateway: Option<Gateway>) -> Self {
        Self {
            api,
            gateway: gateway.map(Arc::new),
        }
    }
}

impl tower::Service<Request<Incoming>> for Front {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<
        <Router as tower::Service<Request<Incoming>>>::Future,
        BoxFuture<'static, Result<Response<Body>, Infallible>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready, and so is the gateway.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        if let Some(gateway) = &self.gateway {
            match destination(request_host(&request), gateway.domain()) {
                Destination::Api => {}
                Destination::Runner(token) => {
                    let gateway = Arc::clone(gateway);
                    return Either::Right(Box::pin(async move {
                        Ok(gateway.proxy(token, request).await)
                    }));
                }
                Destination::NoRunner => {
                    let response = ApiError::NoRunnerAtHost.into_response();
                    return Either::Right(Box::pin(async move { Ok(response) }));
                }
            }
        }
        Either::Left(tower::Service::call(&mut self.api, request))
    }
}

/// The host a request is for: the authority of an absolute URI wins over
/// `Host` (RFC 9112 3.2.2).
fn request_host<B>(request: &Request<B>) -> Option<&str> {
    request
        .uri()
        .authority()
        .map(|authority| authority.as_str())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|host| host.to_str().ok())
        })
}

/// The front of `service`: the API, and in `RUNNER_ACCESS=gateway` the
/// runner gateway for hosts under `GATEWAY_DOMAIN`. `shutdown` ends the
/// gateway's open WebSockets.
pub fn front(service: &Service, readiness: Readiness, shutdown: CancellationToken) -> Front {
    let settings = &service.settings;
    let gateway = settings.gateway_mode().then(|| {
        Gateway::new(
            settings,
            service.heartbeats.running().clone(),
            readiness.clone(),
            shutdown,
            Arc::clone(&service.metrics),
        )
    });
    Front::new(crate::http::router(service, readiness), gateway)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Summary;
    use crate::test_support::Harness;

    #[tokio::test]
    async fn in_ports_mode_every_host_is_the_apis() {
        let harness = Harness::new(&[]).await;
        let readiness = Readiness::default();
        readiness.ready(Summary::default());
        let front = front(&harness.service, readiness, CancellationToken::new());
        assert!(front.gateway.is_none());
    }
}
