//! The operator console on `service.listen`: one server-rendered page (`GET /`) and the JSON
//! behind it (`/api/...`), so a person who runs quo-sync can see that a cycle failed and why,
//! find the stuck row, and retry or discard it without a shell.
//!
//! Safe by default: mounted only when `service.console = true`; beyond loopback a token is
//! required (config error otherwise), sent as a bearer token or through the login form, which
//! sets an HttpOnly, SameSite=Strict cookie holding a value derived from the token (never the
//! token). Without a token, only requests naming this machine in `Host` (and `Origin`, on a
//! POST) are served, against DNS rebinding (`origin`). Every POST needs the CSRF token printed in the page, every response carries a strict
//! Content-Security-Policy, and every CRM value is HTML-escaped before it reaches the page.

mod auth;
mod control;
mod origin;
mod page;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use secrecy::SecretString;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::ledger::Ledger;

pub use auth::CSRF_HEADER;
pub use page::{ServiceState, esc, service_state};

/// The content security policy on every console response: same-origin script and style only,
/// no inline code, no framing, forms post only back here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Whether this process is the one running cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs cycles.
    Leader,
    /// Waits for the leader's lease to lapse.
    Standby,
}

/// Hook for the leader lease: the console asks it on every render. Until a lease exists, a
/// process that serves the console runs cycles and so reports `Leader`.
pub type RoleHook = Arc<dyn Fn() -> Role + Send + Sync>;

/// What the console knows about the service beyond the ledger.
#[derive(Clone)]
pub struct ServiceInfo {
    /// `schedule.interval`, to tell when the next cycle is due.
    pub interval: Duration,
    /// `quo.requests_per_second`, the budget the rate is measured against.
    pub requests_per_second: u32,
    /// Leader or standby (see [`RoleHook`]).
    pub role: RoleHook,
}

impl ServiceInfo {
    /// A process that runs every cycle itself (no lease).
    pub fn always_leader(interval: Duration, requests_per_second: u32) -> Self {
        Self {
            interval,
            requests_per_second,
            role: Arc::new(|| Role::Leader),
        }
    }
}

/// Everything the console's handlers share.
#[derive(Clone)]
pub struct Console {
    ledger: Ledger,
    auth: Arc<auth::Auth>,
    /// The names a console without a token answers to (see `origin`).
    names: origin::LocalNames,
    wake: Arc<Notify>,
    service: ServiceInfo,
}

impl Console {
    /// A console over `ledger`; `wake` starts a cycle early after a retry.
    pub fn new(
        ledger: Ledger,
        token: Option<SecretString>,
        wake: Arc<Notify>,
        service: ServiceInfo,
    ) -> Self {
        Self {
            ledger,
            auth: Arc::new(auth::Auth::new(token)),
            names: origin::LocalNames::new(None),
            wake,
            service,
        }
    }

    /// The address the console listens on (`service.listen`): a console without a token also
    /// answers to that name.
    pub fn listening_on(mut self, addr: Option<std::net::SocketAddr>) -> Self {
        self.names = origin::LocalNames::new(addr);
        self
    }
}

/// The console's routes, to merge into the service router.
pub fn routes(console: Console) -> Router {
    let protected = Router::new()
        .route("/", get(page_handler))
        .route("/api/status", get(api_status))
        .route("/api/runs", get(api_runs))
        .route("/api/quarantine", get(api_quarantine))
        .route("/api/conflicts", get(api_conflicts))
        .route("/api/activities", get(api_activities))
        .route("/api/csrf", get(api_csrf))
        .route("/api/quarantine/{key}/retry", post(retry))
        .route("/api/quarantine/{key}/discard", post(discard))
        .route("/api/pause", post(control::pause))
        .route("/api/resume", post(control::resume))
        .route("/api/run-now", post(control::run_now))
        .route_layer(middleware::from_fn_with_state(
            console.clone(),
            auth::require,
        ));
    Router::new()
        .merge(protected)
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/console.css", get(css))
        .route("/console.js", get(js))
        .layer(middleware::from_fn_with_state(
            console.clone(),
            origin::same_machine,
        ))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

async fn security_headers(request: axum::extract::Request, next: middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: the page's own form posts must carry its `Origin`
    // (browsers send `Origin: null` under `no-referrer`), which `origin` checks; other sites
    // still get no referrer.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
        .into_response()
}

/// A ledger failure, shown without detail beyond its message (no secrets live in the ledger).
fn ledger_error(e: crate::ledger::LedgerError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "error": format!("ledger unavailable: {e}") })),
    )
        .into_response()
}

/// `?limit=`: hostile until clamped.
#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<i64>,
}

impl Limit {
    fn clamped(&self, default: i64) -> i64 {
        self.limit.unwrap_or(default).clamp(1, 1000)
    }
}

/// `?all=true` lists discarded records too, as `quarantine list --all`.
#[derive(Debug, Deserialize)]
struct All {
    #[serde(default)]
    all: bool,
}

async fn page_handler(State(console): State<Console>) -> Response {
    match page::Snapshot::gather(&console).await {
        Ok(snapshot) => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            page::render(&snapshot, console.auth.csrf()),
        )
            .into_response(),
        Err(e) => ledger_error(e),
    }
}

async fn api_status(State(console): State<Console>) -> Response {
    match crate::ops::status(&console.ledger).await {
        Ok(status) => {
            let mut value = serde_json::to_value(&status).unwrap_or_default();
            let last = status.last_run.as_ref();
            value["service"] = serde_json::to_value(page::service_state(&console.service, last))
                .unwrap_or_default();
            axum::Json(value).into_response()
        }
        Err(e) => ledger_error(e),
    }
}

async fn api_runs(State(console): State<Console>, Query(limit): Query<Limit>) -> Response {
    match console.ledger.recent_runs(limit.clamped(20)).await {
        Ok(runs) => axum::Json(runs).into_response(),
        Err(e) => ledger_error(e),
    }
}

async fn api_quarantine(State(console): State<Console>, Query(all): Query<All>) -> Response {
    let entries = if all.all {
        console.ledger.quarantined_all().await
    } else {
        console.ledger.quarantined().await
    };
    match entries {
        Ok(entries) => axum::Json(entries).into_response(),
        Err(e) => ledger_error(e),
    }
}

async fn api_conflicts(State(console): State<Console>, Query(limit): Query<Limit>) -> Response {
    match console.ledger.conflicts(limit.clamped(20)).await {
        Ok(conflicts) => axum::Json(conflicts).into_response(),
        Err(e) => ledger_error(e),
    }
}

/// The last activities (no content: their facts are not sent).
async fn api_activities(State(console): State<Console>, Query(limit): Query<Limit>) -> Response {
    match console.ledger.recent_activities(limit.clamped(20)).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => ledger_error(e),
    }
}

async fn api_csrf(State(console): State<Console>) -> Response {
    axum::Json(serde_json::json!({ "csrf": console.auth.csrf() })).into_response()
}

/// A form post from the page is answered with a redirect back to it; an API call with JSON.
fn answer(headers: &HeaderMap, status: StatusCode, body: serde_json::Value) -> Response {
    let from_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if from_form && status.is_success() {
        Redirect::to("/").into_response()
    } else {
        (status, axum::Json(body)).into_response()
    }
}

async fn retry(
    State(console): State<Console>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !console.auth.csrf_ok(&headers, &body) {
        return auth::csrf_refused();
    }
    match crate::ops::retry_quarantined(&console.ledger, std::slice::from_ref(&key)).await {
        Ok(()) => {
            tracing::info!(event = "quarantine_retry_requested", key = %key, "retry requested from the console");
            console.wake.notify_one();
            answer(
                &headers,
                StatusCode::ACCEPTED,
                serde_json::json!({ "key": key, "retry": "scheduled" }),
            )
        }
        Err(crate::ops::OpsError::NotQuarantined(key)) => answer(
            &headers,
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": format!("no quarantined record {key:?}") }),
        ),
        Err(crate::ops::OpsError::Ledger(e)) => ledger_error(e),
    }
}

async fn discard(
    State(console): State<Console>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !console.auth.csrf_ok(&headers, &body) {
        return auth::csrf_refused();
    }
    match crate::ops::discard_quarantined(&console.ledger, &key).await {
        Ok(()) => answer(
            &headers,
            StatusCode::OK,
            serde_json::json!({ "key": key, "discarded": true }),
        ),
        Err(crate::ops::OpsError::NotQuarantined(key)) => answer(
            &headers,
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": format!("no quarantined record {key:?}") }),
        ),
        Err(crate::ops::OpsError::Ledger(e)) => ledger_error(e),
    }
}
