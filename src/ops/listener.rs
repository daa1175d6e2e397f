//! Serving a router on a TCP listener so that no client can hold a connection: every request's
//! headers must arrive within `header_timeout` (the connection is closed otherwise) and the
//! whole request, body included, within `request_timeout` (408 otherwise). Every listener
//! quo-sync opens goes through [`serve`]: the service listener, the webhook receiver, and
//! whatever tests mount.
//!
//! Why hyper directly: `axum::serve` gives its HTTP/1 connections no timer, and without one
//! hyper cannot time out a slow header (a slowloris client trickling a byte every few seconds
//! holds its connection, and a few hundred of them the listener). The connection loop here is
//! the one `axum::serve` runs, plus the timer, the two timeouts and a bounded graceful shutdown.

use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How long each part of a request may take.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// The headers of each request, from the connection's first byte (or the end of the
    /// previous request) to the blank line.
    pub header_timeout: Duration,
    /// A whole request, body and answer included.
    pub request_timeout: Duration,
}

impl Default for ListenerLimits {
    /// `[service]`'s defaults: 10 s for headers, 30 s for a request.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl ListenerLimits {
    /// The limits `[service]` configures.
    pub fn from_config(service: &crate::config::ServiceConfig) -> Self {
        Self {
            header_timeout: service.header_timeout.0,
            request_timeout: service.request_timeout.0,
        }
    }
}

/// Serves `router` on `listener` with `limits` until `cancel` fires; then lets requests in
/// flight finish, for at most one `request_timeout`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ListenerLimits,
    cancel: CancellationToken,
) {
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.request_timeout,
        within,
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    warn!(event = "accept_failed", error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(event = "connection_closed", error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.request_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        debug!(
            event = "listener_shutdown_timeout",
            "requests still in flight at shutdown were dropped"
        );
    }
}

/// Answers 408 when a request (reading its body included) takes longer than `limit`.
async fn within(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!("request not completed within {}s\n", limit.as_secs_f64()),
        )
            .into_response(),
    }
}
