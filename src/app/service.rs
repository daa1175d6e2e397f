//! The long-lived service (`run`): a single writer's cycles, or one replica among many on a
//! ledger that leads while it holds the writer lease and stands by otherwise.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::ledger::{Candidate, LeaderLease, LeaseError, Ledger};
use crate::ops::live::ServiceStatus;
use crate::quo::client::QuoClient;
use crate::quo::grace::Credentials;
use crate::source::Source;
use crate::sync::SyncContext;

use super::AppError;
use super::cycles::{credentials, cycle_loop};
use super::listeners::{console_routes, replica_console_routes, start_listeners};
use super::{build_client, build_context_with_source, link_cancel, open_as_leader};

/// The service for a single writer that already has its context (no lease): a cycle every
/// `interval` (never overlapping) until cancelled, started early when a webhook arrives or a
/// Quo scan is due. A failing cycle is logged and retried at the next tick; only configuration
/// errors stop the service.
pub async fn run_service(
    ctx: &SyncContext,
    config: &Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<(), AppError> {
    let wake = Arc::new(Notify::new());
    let auth = credentials(config, &ctx.source);
    let readiness = crate::ops::http::ReadinessRule::from_config(&config.service);
    let ops = crate::ops::http::service_router(
        ctx.ledger.clone(),
        metrics,
        None,
        readiness,
        auth.clone(),
    )
    .merge(console_routes(config, &ctx.ledger, &wake));
    crate::ops::http::register_service_metrics();
    metrics::gauge!("quo_sync_leader").set(1.0);
    let status = ServiceStatus::default();
    let servers = start_listeners(
        config,
        &ctx.ledger,
        &ctx.source,
        ops,
        &wake,
        &ctx.cancel,
        &status,
    )
    .await?;
    info!(event = "service_started", source = %ctx.source.describe(), interval_s = config.schedule.interval.0.as_secs(), "quo-sync service started");
    let result = cycle_loop(ctx, config, (&wake, &auth), &status).await;
    if result.is_err() {
        // Stopping for good: let the listeners go too.
        ctx.cancel.cancel();
    }
    for server in servers {
        let _ = server.await;
    }
    ctx.ledger.close().await;
    result?;
    info!(event = "service_stopped", "quo-sync stopped cleanly");
    Ok(())
}

/// `run`: one replica among any number on the same ledger. It leads while it holds the writer
/// lease, and otherwise stands by (serving health, metrics and webhooks) and asks again every
/// `ha.poll_interval()`, so it takes over within `ha.lease` plus one poll of a leader's death,
/// and at once when a leader shuts down cleanly (the lease is released).
pub async fn run_replica(
    config: &Config,
    shutdown: CancellationToken,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    allow_mass_delete: bool,
) -> Result<(), AppError> {
    run_replica_observed(
        config,
        shutdown,
        metrics,
        allow_mass_delete,
        ServiceStatus::default(),
    )
    .await
}

/// [`run_replica`], publishing what it does into `status` (the terminal's status line).
pub async fn run_replica_observed(
    config: &Config,
    shutdown: CancellationToken,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    allow_mass_delete: bool,
    status: ServiceStatus,
) -> Result<(), AppError> {
    let base = Ledger::connect_config(&config.ledger).await?;
    let role = status.role().clone();
    role.set_standby();
    let wake = Arc::new(Notify::new());
    // One source for every leader term: its change watcher must know what quo-sync wrote. A
    // rotated OAuth refresh token is kept through the base ledger (a standby never fetches one).
    let source = Arc::new(Source::from_config_mapped(&config.source, &config.mapping)?);
    source.attach_ledger(&base);
    // One refusal clock per credential for the process: what a leader term saw accepted
    // counts in the next term too.
    let auth = credentials(config, &source);
    crate::ops::http::register_service_metrics();
    let readiness = crate::ops::http::ReadinessRule::from_config(&config.service);
    let ops = crate::ops::http::service_router(
        base.clone(),
        metrics,
        Some(role.clone()),
        readiness,
        auth.clone(),
    )
    .merge(replica_console_routes(config, &base, &wake, &role));
    let servers = start_listeners(config, &base, &source, ops, &wake, &shutdown, &status).await?;
    tokio::spawn(show_quo_key_accepted(
        build_client(config)?
            .background()
            .with_auth_grace(auth.quo.clone()),
        shutdown.clone(),
    ));
    let who = Candidate::this_process("run");
    info!(event = "service_started", ledger = %base.path(), host = %who.host, pid = who.pid, lease_ms = config.ha.lease.0.as_millis() as u64, "quo-sync replica started");
    let mut result = Ok(());
    while let Some(lease) = wait_for_lease(&base, &who, config, &shutdown, &status).await {
        role.set_leader(lease.epoch());
        let term = lead(
            &base,
            &lease,
            config,
            &shutdown,
            (&wake, &auth, &status),
            &source,
            allow_mass_delete,
        )
        .await;
        role.set_standby();
        lease.release().await;
        match term {
            Err(e) if e.is_config() || e.is_auth_failure() => {
                result = Err(e);
                shutdown.cancel();
            }
            Err(e) => {
                error!(event = "leader_term_failed", error = %e, "leading failed; standing by and trying again");
                tokio::select! {
                    _ = tokio::time::sleep(config.ha.poll_interval()) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            // Shutdown ends the loop; a lost lease goes back to standing by.
            Ok(()) => {}
        }
    }
    for server in servers {
        let _ = server.await;
    }
    base.close().await;
    result?;
    info!(event = "service_stopped", "quo-sync stopped cleanly");
    Ok(())
}

/// Stands by until the lease is ours (`None` on shutdown), logging `standby` with the holder
/// whenever the holder changes.
async fn wait_for_lease(
    base: &Ledger,
    who: &Candidate,
    config: &Config,
    shutdown: &CancellationToken,
    status: &ServiceStatus,
) -> Option<LeaderLease> {
    let mut last_seen: Option<(String, i64, i64)> = None;
    while !shutdown.is_cancelled() {
        match LeaderLease::try_acquire(base, who, config.ha.lease.0).await {
            Ok(lease) => return Some(lease),
            Err(LeaseError::Held { holder, .. }) => {
                let key = (holder.host.clone(), holder.pid, holder.epoch);
                if last_seen.as_ref() != Some(&key) {
                    status.standing_by(format!("{} pid {}", holder.host, holder.pid));
                    info!(event = "standby", holder_host = %holder.host, holder_pid = holder.pid, holder_command = %holder.command, holder_since = %holder.since, holder_epoch = holder.epoch, holder_expires = %holder.expires, "standing by: another replica holds the writer lease");
                    last_seen = Some(key);
                }
            }
            Err(e) => {
                warn!(event = "lease_check_failed", error = %e, "could not ask for the writer lease; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.ha.poll_interval()) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    None
}

/// One term as leader: migrate, then cycles on the fenced ledger until shutdown or lease loss.
async fn lead(
    base: &Ledger,
    lease: &LeaderLease,
    config: &Config,
    shutdown: &CancellationToken,
    (wake, auth, status): (&Arc<Notify>, &Credentials, &ServiceStatus),
    source: &Arc<Source>,
    allow_mass_delete: bool,
) -> Result<(), AppError> {
    let ledger = open_as_leader(base, lease).await?;
    let term = link_cancel(shutdown, lease);
    let mut ctx = build_context_with_source(config, "run", term.clone(), ledger, source.clone())?;
    ctx.settings.allow_mass_delete = allow_mass_delete;
    ctx.progress = status.progress();
    status.set_stats(ctx.client.stats().clone());
    let result = cycle_loop(&ctx, config, (wake, auth), status).await;
    ctx.ledger.close().await;
    // A cycle cancels its token on a fatal Quo error (bad API key): that stops the service, as
    // it does for a single writer, unless the token fired because the lease was lost.
    if term.is_cancelled() && lease.holds() && !shutdown.is_cancelled() {
        shutdown.cancel();
    }
    term.cancel();
    result
}

/// One cheap read (the custom-field definitions) at a replica's start, so its clock knows
/// whether Quo accepts the key before this replica ever leads: a standby that takes over
/// during a Quo auth incident then backs off for `quo.auth_grace` like the leader it replaces,
/// instead of stopping with exit 2 at its first refusal. A refusal here is only logged; the
/// replica stops (exit 2) if it leads while the key is still refused.
async fn show_quo_key_accepted(client: QuoClient, cancel: CancellationToken) {
    tokio::select! {
        result = client.custom_fields() => {
            if let Err(e) = result {
                warn!(event = "quo_key_unconfirmed", error = %e, "could not show at start that Quo accepts the API key; a refusal while leading will stop this replica (exit 2)");
            }
        }
        _ = cancel.cancelled() => {}
    }
}
