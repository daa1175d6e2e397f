//! Wiring: turns a validated `Config` into running parts (ledger, client, source, cycle
//! context), and runs them as a one-shot cycle or a long-lived service that stops cleanly on
//! SIGINT/SIGTERM. `main.rs` only parses arguments and maps errors to exit codes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::Config;
use crate::ledger::{Ledger, LedgerError};
use crate::quo::client::{ClientSettings, QuoClient};
use crate::quo::limiter::RateLimiter;
use crate::quo::retry::RetryPolicy;
use crate::source::{Source, SourceError};
use crate::sync::{CycleReport, CycleSettings, Mode, SyncContext, SyncError, run_cycle};

/// Failures while assembling the parts.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Configuration (exit 2).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Source construction.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A cycle.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
}

impl AppError {
    /// Whether this is the operator's configuration to fix (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            AppError::Config(_) | AppError::Sync(SyncError::Mapping(_))
        ) || matches!(
            self,
            AppError::Source(SourceError::MissingColumn { .. } | SourceError::Config(_))
                | AppError::Sync(SyncError::Source(SourceError::CredentialsRefused { .. }))
        ) || matches!(self, AppError::Source(SourceError::MissingColumn { .. }))
            || matches!(
                self,
                AppError::Sync(SyncError::Source(SourceError::MissingColumn { .. }))
            )
    }
}

/// Builds the Quo client from `[quo]`.
pub fn build_client(config: &Config) -> Result<QuoClient, AppError> {
    let key = config.require_api_key()?.clone();
    let limiter = RateLimiter::per_second(config.quo.requests_per_second);
    limiter.set_background_share(config.reverse.scan_share);
    Ok(QuoClient::new(
        ClientSettings {
            base_url: config.quo.base_url.clone(),
            api_key: key,
            source: config.quo.source.clone(),
            timeout: config.quo.timeout.0,
            retry: RetryPolicy {
                max_retries: config.quo.max_retries,
                base: Duration::from_millis(200),
                cap: config.quo.max_backoff.0,
            },
        },
        limiter,
    ))
}

/// Builds everything a cycle needs.
pub async fn build_context(
    config: &Config,
    kind: &'static str,
    cancel: CancellationToken,
) -> Result<SyncContext, AppError> {
    let client = build_client(config)?;
    let ledger = Ledger::open(&config.ledger.path).await?;
    let source = Arc::new(Source::from_config(&config.source)?);
    source.attach_ledger(&ledger);
    Ok(SyncContext {
        ledger,
        client,
        source,
        mapping: config.mapping.clone(),
        settings: CycleSettings {
            on_source_delete: config.sync.on_source_delete,
            on_quo_delete: config.reverse.on_quo_delete,
            concurrency: config.quo.concurrency,
            source_url_template: config.quo.source_url_template.clone(),
            kind,
            reverse_enabled: config.reverse.enabled,
            poll_interval: config.reverse.effective_poll_interval(),
            merge_policy: crate::reverse::merge::MergePolicy {
                conflict: Some(config.reverse.conflict),
                fields: config.reverse.fields.clone(),
                // One-way sync: the CRM owns managed fields; unmanaged Quo edits are still kept.
                default_direction: (!config.reverse.enabled)
                    .then_some(crate::config::FieldDirection::ToQuo),
            },
            max_delete_fraction: config.sync.max_delete_fraction,
            allow_mass_delete: false,
            inbox_retention: config.reverse.inbox_retention.0,
            list_lag: config.quo.list_lag.0,
        },
        cancel,
        progress: Arc::default(),
    })
}

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!(
            event = "shutdown_requested",
            "shutdown requested: finishing in-flight work"
        );
        trigger.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// One cycle (`once` and `plan`).
pub async fn once(ctx: &SyncContext, mode: Mode) -> Result<CycleReport, AppError> {
    Ok(run_cycle(ctx, mode).await?)
}

/// The service: a cycle every `interval` (never overlapping) until cancelled, started early when
/// a webhook arrives or a Quo scan is due. A failing cycle is logged and retried at the next
/// tick; only configuration errors stop the service.
pub async fn run_service(
    ctx: &SyncContext,
    config: &Config,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<(), AppError> {
    use crate::reverse::receiver::{Receiver, router as receiver_router, webhook_routes};
    let wake = Arc::new(Notify::new());
    let receiver = (config.reverse.enabled && config.reverse.listen.is_some()).then(|| Receiver {
        ledger: ctx.ledger.clone(),
        secret: config.reverse.webhook_secret.clone(),
        wake: wake.clone(),
        max_body_bytes: config.reverse.max_body_bytes,
        read_timeout: config.reverse.read_timeout.0,
    });
    let mut routers: Vec<(std::net::SocketAddr, axum::Router)> = Vec::new();
    if let Some(addr) = config.service.listen {
        let console = config.service.console.then(|| {
            crate::ops::console::Console::new(
                ctx.ledger.clone(),
                config.service.console_token.clone(),
                wake.clone(),
                crate::ops::console::ServiceInfo::always_leader(
                    config.schedule.interval.0,
                    config.quo.requests_per_second,
                ),
            )
        });
        let mut router =
            crate::ops::http::router_with_console(ctx.ledger.clone(), metrics, console);
        if let Some(receiver) = receiver
            .clone()
            .filter(|_| config.reverse.listen == Some(addr))
        {
            router = router.merge(webhook_routes(receiver));
        }
        routers.push((addr, router));
    }
    if let (Some(receiver), Some(addr)) = (receiver, config.reverse.listen)
        && config.service.listen != Some(addr)
    {
        routers.push((addr, receiver_router(receiver)));
    }
    // CRM change signals (CSV file watch, POST /webhooks/crm) wake the loop like Quo webhooks.
    let signals =
        crate::source::watch::Signals::start(ctx.source.clone(), wake.clone(), ctx.cancel.clone())?;
    if let (Some(crm), Some(addr)) = (
        signals.webhook_routes(),
        config.reverse.listen.or(config.service.listen),
    ) {
        match routers.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, router)) => *router = router.clone().merge(crm),
            None => routers.push((addr, crm)),
        }
    }
    let mut servers = Vec::new();
    for (addr, router) in routers {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| AppError::Listen {
                addr,
                reason: e.to_string(),
            })?;
        info!(event = "listener_started", addr = %addr, "HTTP listener started");
        servers.push(tokio::spawn(serve(listener, router, ctx.cancel.clone())));
    }
    let interval = config.schedule.interval.0;
    // The scan runs beside the cycles, yielding to their writes; what it finds wakes a cycle.
    let mut ctx = ctx.clone();
    let scanner = match ctx.settings.poll_interval.take() {
        Some(poll) if ctx.settings.reverse_enabled => {
            Some(tokio::spawn(crate::reverse::scan::run_scanner(
                ctx.ledger.clone(),
                ctx.client.background(),
                poll,
                wake.clone(),
                ctx.cancel.clone(),
            )))
        }
        _ => None,
    };
    let ctx = &ctx;
    let tick = interval;
    info!(event = "service_started", source = %ctx.source.describe(), interval_s = interval.as_secs(), tick_ms = tick.as_millis() as u64, "quo-sync service started");
    crate::ops::http::register_service_metrics();
    loop {
        if ctx.cancel.is_cancelled() {
            break;
        }
        let started = tokio::time::Instant::now();
        match run_cycle(ctx, Mode::Apply).await {
            Ok(_) => {}
            Err(SyncError::Mapping(e)) => return Err(SyncError::Mapping(e).into()),
            Err(e) if e.is_auth_failure() => {
                // Nothing will work until an operator fixes the key: stop, non-zero, so a
                // supervisor notices instead of a service that looks up and does nothing.
                error!(event = "auth_failed", error = %e, "Quo refused the API key; stopping");
                ctx.cancel.cancel();
                for server in servers {
                    let _ = server.await;
                }
                ctx.ledger.close().await;
                return Err(e.into());
            }
            Err(e) => {
                error!(event = "cycle_error", error = %e, "cycle failed; retrying at the next tick")
            }
        }
        let next = tick.saturating_sub(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = wake.notified() => {
                // Let a burst of deliveries land before the cycle that applies them.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = ctx.cancel.cancelled() => break,
        }
    }
    for server in servers {
        let _ = server.await;
    }
    if let Some(scanner) = scanner {
        let _ = scanner.await;
    }
    ctx.ledger.close().await;
    info!(event = "service_stopped", "quo-sync stopped cleanly");
    Ok(())
}

/// Serves `router` on `listener` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    cancel: CancellationToken,
) {
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(e) = result {
        error!(event = "http_server_failed", error = %e, "HTTP listener stopped");
    }
}
