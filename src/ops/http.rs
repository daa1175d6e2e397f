//! The service listener (`service.listen`): `/healthz` (the process answers), `/readyz` (the
//! ledger answers; with `service.readiness = "cycles"` also the last N cycles did not all fail) and `/metrics` (Prometheus text format); the
//! operator console (`crate::ops::console`) mounts beside them when `service.console = true`.
//! With more than one replica on a ledger, every replica serves them: `/readyz` says `leader` or
//! `standby` (a standby is ready: it stores webhooks and takes over when the leader goes) and
//! `/metrics` carries the `quo_sync_leader` gauge (1 leader, 0 standby). While the Quo workspace
//! is in doubt (`reverse::doubt`), `/readyz` says so: not ready on the replica that writes, ready
//! with the reason on a standby; `quo_sync_workspace_doubted` is 1. The ledger counts behind
//! `/metrics` are read at most once per [`LEDGER_READ_TTL`], however many scrapers ask.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::Readiness;
use crate::ledger::Ledger;
use crate::quo::grace::Credentials;

/// Bucket bounds (seconds) of the duration histograms: Prometheus histograms, not summaries,
/// so the series of several replicas add up (`histogram_quantile(sum by (le) (rate(...)))`).
/// From a limiter wait of a few milliseconds to a cycle over a million rows.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// Installs the global Prometheus recorder; `None` when one is already installed.
pub fn install_metrics() -> Option<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets(DURATION_BUCKETS)
        .ok()?
        .install_recorder()
        .ok()
}

/// How the readiness probe is judged (`service.readiness`, `service.readiness_failed_cycles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadinessRule {
    /// What counts.
    pub readiness: Readiness,
    /// Failed cycles in a row that make a `cycles` replica unready.
    pub failed_cycles: u32,
}

impl Default for ReadinessRule {
    fn default() -> Self {
        Self {
            readiness: Readiness::Ledger,
            failed_cycles: 3,
        }
    }
}

impl ReadinessRule {
    /// The rule `[service]` configures.
    pub fn from_config(service: &crate::config::ServiceConfig) -> Self {
        Self {
            readiness: service.readiness,
            failed_cycles: service.readiness_failed_cycles.max(1),
        }
    }
}

/// Registers the series dashboards and alerts rely on at zero, so `rate()` and `absent()` see
/// them before the first failure, 429 or webhook (Quo's or the CRM's).
pub fn register_service_metrics() {
    metrics::counter!("quo_sync_cycles_failed_total").increment(0);
    metrics::counter!("quo_sync_quo_rate_limited_total").increment(0);
    metrics::counter!("quo_sync_conflicts_total").increment(0);
    metrics::counter!("quo_sync_duplicates_removed_total").increment(0);
    for outcome in ["stored", "duplicate", "rejected"] {
        metrics::counter!("quo_sync_webhooks_total", "outcome" => outcome).increment(0);
    }
    for outcome in ["accepted", "duplicate", "rejected"] {
        metrics::counter!("quo_sync_crm_webhooks_total", "outcome" => outcome).increment(0);
    }
    // A replica starts as a standby; `ReplicaRole::set_leader` raises it once the lease is held.
    metrics::gauge!("quo_sync_leader").set(0.0);
    metrics::gauge!("quo_sync_paused").set(0.0);
    metrics::gauge!("quo_sync_workspace_doubted").set(0.0);
    metrics::gauge!(
        "quo_sync_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => crate::GIT_COMMIT
    )
    .set(1.0);
}
/// This replica's role, shared between the run loop (which sets it) and the listener.
#[derive(Debug, Clone, Default)]
pub struct ReplicaRole {
    /// The held lease's epoch; 0 while standing by.
    epoch: Arc<AtomicI64>,
}

impl ReplicaRole {
    /// Now the leader with `epoch`.
    pub fn set_leader(&self, epoch: i64) {
        self.epoch.store(epoch.max(1), Ordering::Release);
        metrics::gauge!("quo_sync_leader").set(1.0);
    }

    /// Now a standby.
    pub fn set_standby(&self) {
        self.epoch.store(0, Ordering::Release);
        metrics::gauge!("quo_sync_leader").set(0.0);
    }

    /// The held epoch, if leading.
    pub fn leader_epoch(&self) -> Option<i64> {
        Some(self.epoch.load(Ordering::Acquire)).filter(|e| *e > 0)
    }
}

#[derive(Clone)]
struct Ops {
    ledger: Ledger,
    metrics: Option<PrometheusHandle>,
    role: Option<ReplicaRole>,
    /// The ledger gauges of `/metrics`, counted at most once per [`LEDGER_READ_TTL`].
    gauges: Arc<Cached<LedgerGauges>>,
    readiness: ReadinessRule,
    /// The service's refusal clocks: not ready while Quo or the CRM refuses a credential.
    auth: Option<Credentials>,
}

/// How long `/metrics` reuses the counts it read from the ledger: several scrapers every few
/// seconds would otherwise run `COUNT(*)` over a large ledger back to back, beside the cycles.
pub const LEDGER_READ_TTL: Duration = Duration::from_secs(5);

/// The ledger gauges of `/metrics` (`None`: the query failed).
#[derive(Clone, Copy, Default)]
struct LedgerGauges {
    inbox_depth: Option<i64>,
    quarantined: Option<i64>,
    unconfirmed: Option<i64>,
    /// Whether `quo-sync pause` is in force (`quo_sync_paused`).
    paused: Option<bool>,
    /// Whether the Quo workspace is in doubt (`quo_sync_workspace_doubted`).
    doubted: Option<bool>,
}

/// A value computed at most once per TTL; concurrent readers wait for the one computing it.
struct Cached<T> {
    ttl: Duration,
    slot: tokio::sync::Mutex<Option<(Instant, T)>>,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Self {
            ttl: LEDGER_READ_TTL,
            slot: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T: Clone> Cached<T> {
    /// The value, from `load` when the kept one is missing or older than the TTL.
    async fn get_or<F: std::future::Future<Output = T>>(&self, load: impl FnOnce() -> F) -> T {
        let mut slot = self.slot.lock().await;
        if let Some((at, value)) = slot.as_ref()
            && at.elapsed() < self.ttl
        {
            return value.clone();
        }
        let value = load().await;
        *slot = Some((Instant::now(), value.clone()));
        value
    }
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

/// The routes: `/healthz`, `/readyz` (default rule: the ledger answers), `/metrics`.
pub fn router(ledger: Ledger, metrics: Option<PrometheusHandle>) -> Router {
    router_with(ledger, metrics, ReadinessRule::default())
}

/// The routes, `/readyz` judged by `readiness`.
pub fn router_with(
    ledger: Ledger,
    metrics: Option<PrometheusHandle>,
    readiness: ReadinessRule,
) -> Router {
    routes(Ops {
        ledger,
        metrics,
        role: None,
        gauges: Arc::default(),
        readiness,
        auth: None,
    })
}

/// The routes of a replica that leads or stands by according to `role`.
pub fn replica_router(
    ledger: Ledger,
    metrics: Option<PrometheusHandle>,
    role: ReplicaRole,
    readiness: ReadinessRule,
) -> Router {
    routes(Ops {
        ledger,
        metrics,
        role: Some(role),
        gauges: Arc::default(),
        readiness,
        auth: None,
    })
}

/// The routes of the service (a replica when `role` is given), whose `/readyz` also says not
/// ready while Quo or the CRM refuses a credential that worked (`auth`), whatever `readiness`
/// says.
pub fn service_router(
    ledger: Ledger,
    metrics: Option<PrometheusHandle>,
    role: Option<ReplicaRole>,
    readiness: ReadinessRule,
    auth: Credentials,
) -> Router {
    routes(Ops {
        ledger,
        metrics,
        role,
        gauges: Arc::default(),
        readiness,
        auth: Some(auth),
    })
}

fn routes(ops: Ops) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render))
        .with_state(ops)
}

/// `/readyz`. Its text names states, never error messages: those can carry CRM data (a value,
/// an id, a URL) and this route needs no login; the logs and `quo-sync status` have the detail.
async fn ready(State(ops): State<Ops>) -> (StatusCode, String) {
    let unavailable = |text: String| (StatusCode::SERVICE_UNAVAILABLE, text);
    if ops.ledger.ping().await.is_err() {
        return unavailable("ledger unavailable (details in the logs)\n".into());
    }
    if let Some((credential, refused)) = ops.auth.as_ref().and_then(Credentials::refused) {
        return unavailable(format!(
            "{} (for {}s); retrying until {} runs out\n",
            credential.refused(),
            refused.as_secs(),
            credential.grace_key()
        ));
    }
    let role = ops.role.as_ref().map(ReplicaRole::leader_epoch);
    // A key for another workspace is the operator's to fix, and a restart does not fix it (the
    // doubt is on record and outlives the process): `/healthz` stays healthy, so no supervisor
    // restarts it, while the replica that would write says not ready, with the reason, as for a
    // refused key. A standby stays ready: it stores webhooks for when the key is right again.
    let doubt = match crate::reverse::doubt::load(&ops.ledger).await {
        Ok(doubt) => doubt.map(crate::ops::doubt::DoubtReport::of),
        Err(_) => return unavailable("ledger unavailable (details in the logs)\n".into()),
    };
    if let Some(None) = role {
        return match doubt {
            Some(doubt) => (
                StatusCode::OK,
                format!("ready (standby); {}\n", doubt.readiness()),
            ),
            None => (StatusCode::OK, "ready (standby)\n".into()),
        };
    }
    if let Some(doubt) = doubt {
        return unavailable(format!("not ready: {}\n", doubt.readiness()));
    }
    if ops.readiness.readiness == Readiness::Cycles {
        let wanted = ops.readiness.failed_cycles;
        // Runs still in progress do not hide the failures before them.
        match ops.ledger.recent_runs(i64::from(wanted) + 16).await {
            Ok(runs) => {
                let finished: Vec<_> = runs
                    .iter()
                    .filter(|r| r.status != "running")
                    .take(wanted as usize)
                    .collect();
                if finished.len() == wanted as usize
                    && finished.iter().all(|r| r.status == "failed")
                {
                    return unavailable(format!(
                        "last cycle failed ({wanted} in a row; the last: run {}, finished {}); details in `quo-sync status` and the logs\n",
                        finished[0].id,
                        finished[0].finished_at.as_deref().unwrap_or("-")
                    ));
                }
            }
            Err(_) => return unavailable("ledger unavailable (details in the logs)\n".into()),
        }
    }
    match role {
        Some(Some(epoch)) => (StatusCode::OK, format!("ready (leader, epoch {epoch})\n")),
        _ => (StatusCode::OK, "ready\n".into()),
    }
}

async fn render(State(ops): State<Ops>) -> (StatusCode, String) {
    let Some(handle) = &ops.metrics else {
        return (
            StatusCode::NOT_FOUND,
            "metrics recorder not installed\n".into(),
        );
    };
    let gauges = ops
        .gauges
        .get_or(|| async {
            LedgerGauges {
                inbox_depth: ops.ledger.inbox_depth().await.ok(),
                quarantined: ops.ledger.quarantined_count().await.ok(),
                unconfirmed: ops.ledger.unconfirmed_count().await.ok(),
                paused: ops.ledger.pause_state().await.ok().map(|p| p.is_some()),
                doubted: crate::reverse::doubt::load(&ops.ledger)
                    .await
                    .ok()
                    .map(|d| d.is_some()),
            }
        })
        .await;
    if let Some(depth) = gauges.inbox_depth {
        metrics::gauge!("quo_sync_inbox_depth").set(depth as f64);
    }
    if let Some(quarantined) = gauges.quarantined {
        metrics::gauge!("quo_sync_quarantined_records").set(quarantined as f64);
    }
    if let Some(paused) = gauges.paused {
        metrics::gauge!("quo_sync_paused").set(if paused { 1.0 } else { 0.0 });
    }
    if let Some(doubted) = gauges.doubted {
        metrics::gauge!("quo_sync_workspace_doubted").set(if doubted { 1.0 } else { 0.0 });
    }
    if let Some(unconfirmed) = gauges.unconfirmed {
        metrics::gauge!("quo_sync_unconfirmed_creates").set(unconfirmed as f64);
    }
    crate::activity::status::publish(&ops.ledger).await;
    if let Some(role) = &ops.role {
        let leading = role.leader_epoch().is_some();
        metrics::gauge!("quo_sync_leader").set(if leading { 1.0 } else { 0.0 });
    }
    handle.run_upkeep();
    (StatusCode::OK, handle.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn a_burst_of_scrapes_reads_the_ledger_once_per_ttl() {
        let cache: Cached<u32> = Cached {
            ttl: Duration::from_millis(200),
            slot: tokio::sync::Mutex::new(None),
        };
        let loads = AtomicU32::new(0);
        let load = || async { loads.fetch_add(1, Ordering::SeqCst) + 1 };
        let burst = futures::future::join_all((0..50).map(|_| cache.get_or(load))).await;
        assert!(burst.iter().all(|v| *v == 1), "{burst:?}");
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(cache.get_or(load).await, 2, "read again after the TTL");
    }
}
