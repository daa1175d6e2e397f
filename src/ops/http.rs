//! The service listener (`service.listen`): `/healthz` (the process answers), `/readyz` (the
//! ledger answers and the last cycle did not fail) and `/metrics` (Prometheus text format); the
//! operator console (`crate::ops::console`) mounts beside them when `service.console = true`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::ledger::Ledger;

/// Installs the global Prometheus recorder; `None` when one is already installed.
pub fn install_metrics() -> Option<PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().ok()
}

/// Registers the series dashboards and alerts rely on at zero, so `rate()` and `absent()` see
/// them before the first failure, 429 or webhook.
pub fn register_service_metrics() {
    metrics::counter!("quo_sync_cycles_failed_total").increment(0);
    metrics::counter!("quo_sync_quo_rate_limited_total").increment(0);
    metrics::counter!("quo_sync_conflicts_total").increment(0);
    for outcome in ["stored", "duplicate", "rejected"] {
        metrics::counter!("quo_sync_webhooks_total", "outcome" => outcome).increment(0);
    }
    // Until the leader lease lands, the process that runs cycles is the leader.
    metrics::gauge!("quo_sync_leader").set(1.0);
}

#[derive(Clone)]
struct Ops {
    ledger: Ledger,
    metrics: Option<PrometheusHandle>,
}

/// The routes `/healthz`, `/readyz`, `/metrics`, plus the operator console when given.
pub fn router_with_console(
    ledger: Ledger,
    metrics: Option<PrometheusHandle>,
    console: Option<crate::ops::console::Console>,
) -> Router {
    let router = router(ledger, metrics);
    match console {
        Some(console) => router.merge(crate::ops::console::routes(console)),
        None => router,
    }
}

/// The routes: `/healthz`, `/readyz`, `/metrics`.
pub fn router(ledger: Ledger, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render))
        .with_state(Ops { ledger, metrics })
}

async fn ready(State(ops): State<Ops>) -> (StatusCode, String) {
    if let Err(e) = ops.ledger.ping().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("ledger unavailable: {e}\n"),
        );
    }
    match ops.ledger.last_finished_run().await {
        Ok(run) => match run {
            Some(run) if run.status == "failed" => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "last cycle failed: {}\n",
                    run.error.clone().unwrap_or_default()
                ),
            ),
            _ => (StatusCode::OK, "ready\n".into()),
        },
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("ledger unavailable: {e}\n"),
        ),
    }
}

async fn render(State(ops): State<Ops>) -> (StatusCode, String) {
    let Some(handle) = &ops.metrics else {
        return (
            StatusCode::NOT_FOUND,
            "metrics recorder not installed\n".into(),
        );
    };
    if let Ok(depth) = ops.ledger.inbox_depth().await {
        metrics::gauge!("quo_sync_inbox_depth").set(depth as f64);
    }
    if let Ok(quarantined) = ops.ledger.quarantined_count().await {
        metrics::gauge!("quo_sync_quarantined_records").set(quarantined as f64);
    }
    handle.run_upkeep();
    (StatusCode::OK, handle.render())
}
