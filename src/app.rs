//! Wiring: turns a validated `Config` into running parts (ledger, client, source, cycle
//! context), and runs them as a one-shot cycle or a long-lived service that stops cleanly on
//! SIGINT/SIGTERM. `main.rs` only parses arguments and maps errors to exit codes.
//!
//! Writers take the ledger's writer lease first ([`acquire_writer`]); `run` that cannot get it
//! stands by and takes over when it is free or expired ([`run_replica`]). A leader works on a
//! fenced ledger and a cancel token that fires when the lease is lost, so the cycle stops
//! starting new work and its late writes are refused by the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::FutureExt;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::ledger::{Candidate, LeaderLease, LeaseError, Ledger, LedgerError};
use crate::ops::http::ReplicaRole;
use crate::ops::listener::ListenerLimits;
use crate::ops::live::ServiceStatus;
use crate::quo::client::{ClientSettings, QuoClient};
use crate::quo::grace::{AfterRefusal, AuthGrace, Credential, Credentials};
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
    /// The writer lease is held by another process (exit 4).
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A service stopped because a credential was refused (`auth_failed`): before this process
    /// ever saw it accepted (`grace_s: None`, exit 2: the configuration), or, after it had
    /// worked, for longer than its grace (exit 1: a supervisor restarts the service).
    #[error("{}", auth_failed_message(*.credential, *.grace_s, .reason))]
    AuthFailed {
        /// Quo's key or the CRM's credential.
        credential: Credential,
        /// The grace that ran out, in seconds; `None`: never accepted by this process.
        grace_s: Option<u64>,
        /// The last refusal, as reported (never carries the secret).
        reason: String,
    },
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
    /// Whether Quo refused the API key or the CRM its credentials, so the service stops (exit
    /// 2 when the credential never worked in this process, or in a one-shot command; exit 1
    /// when it worked and was then refused for longer than its grace).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, AppError::Sync(e) if e.is_auth_failure())
            || matches!(self, AppError::AuthFailed { .. })
    }

    /// Whether this is the operator's configuration to fix (exit code 2): a credential refused
    /// before it was ever accepted is one (a one-shot command's refusal too: it has no grace).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            AppError::Config(_) | AppError::Sync(SyncError::Mapping(_))
        ) || matches!(self, AppError::Sync(e) if e.is_auth_failure())
            || matches!(self, AppError::AuthFailed { grace_s: None, .. })
            || matches!(
                self,
                AppError::Source(SourceError::MissingColumn { .. } | SourceError::Config(_))
                    | AppError::Sync(SyncError::Source(SourceError::CredentialsRefused { .. }))
            )
            || matches!(self, AppError::Source(SourceError::MissingColumn { .. }))
            || matches!(
                self,
                AppError::Sync(SyncError::Source(SourceError::MissingColumn { .. }))
            )
            || matches!(self, AppError::Ledger(e) if e.is_config())
    }

    /// Whether another process holds the writer lease (exit code 4).
    pub fn is_lease_held(&self) -> bool {
        matches!(
            self,
            AppError::Lease(LeaseError::Held { .. })
                | AppError::Ledger(LedgerError::MigrationBlocked { .. })
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
    let ledger = Ledger::open_config(&config.ledger).await?;
    build_context_on(config, kind, cancel, ledger)
}

/// Builds everything a cycle needs, on `ledger` (a writer's fenced ledger).
pub fn build_context_on(
    config: &Config,
    kind: &'static str,
    cancel: CancellationToken,
    ledger: Ledger,
) -> Result<SyncContext, AppError> {
    let source = Arc::new(Source::from_config_mapped(&config.source, &config.mapping)?);
    source.attach_ledger(&ledger);
    build_context_with_source(config, kind, cancel, ledger, source)
}

/// Builds everything a cycle needs, on `ledger`, reading `source` (a replica keeps one source
/// across leader terms: its change watcher knows what quo-sync itself last wrote).
pub fn build_context_with_source(
    config: &Config,
    kind: &'static str,
    cancel: CancellationToken,
    ledger: Ledger,
    source: Arc<Source>,
) -> Result<SyncContext, AppError> {
    source.set_list_read_every(config.schedule.interval.0);
    warn_shared_source_label(config, &ledger);
    let mut client = build_client(config)?;
    if let Some(fence) = ledger.write_fence() {
        client = client.with_write_fence(fence);
    }
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
            scope: crate::sync::ScopeRules::from_config(&config.sync).map_err(|e| {
                AppError::Config(crate::config::ConfigError::BadValue {
                    file: "(config)".into(),
                    key: "sync.filter".into(),
                    reason: e.to_string(),
                })
            })?,
            day_one: crate::sync::DayOneSettings {
                match_existing: config.sync.match_existing,
                adopt_sources: config
                    .sync
                    .adopt_sources
                    .iter()
                    .map(|s| s.trim().to_string())
                    .collect(),
                create_in_crm: config.reverse.create_in_crm && config.reverse.enabled,
                new_record_id: config.reverse.new_record_id.clone(),
                quo_id_field: config.reverse.quo_id_field.clone(),
                export_existing: false,
            },
        },
        cancel,
        progress: Arc::default(),
        scan_gate: Arc::default(),
    })
}

/// `quo.source` tells our contacts from everyone else's (lists, lookups, twins): two
/// deployments sharing one label in one workspace take each other's contacts for theirs. A
/// PostgreSQL ledger usually means a fleet, where a second deployment is likely: say so when the
/// label is still the default.
fn warn_shared_source_label(config: &Config, ledger: &Ledger) {
    if ledger.backend() == "postgres"
        && config.quo.source == crate::config::QuoConfig::default().source
    {
        warn!(event = "quo_source_default", source = %config.quo.source, "quo.source is the default label on a PostgreSQL ledger: it must be unique per deployment (two deployments sharing it in one workspace take each other's contacts for theirs); set quo.source to a name of this deployment");
    }
}

/// A process allowed to write: the held lease, the fenced ledger its writes go through, and a
/// cancel token that fires on shutdown or when the lease is lost.
pub struct Writer {
    /// The lease (renewed in the background).
    pub lease: LeaderLease,
    /// The fenced ledger.
    pub ledger: Ledger,
    /// Cancelled on shutdown or lease loss: pass it as the cycle's cancel token.
    pub cancel: CancellationToken,
    base: Ledger,
}

impl Writer {
    /// Closes the fenced ledger and hands the lease over at once.
    pub async fn release(self) {
        self.ledger.close().await;
        self.lease.release().await;
        self.base.close().await;
    }
}

/// Takes the writer lease for a one-shot `command`, waiting up to `wait` for a holder to let
/// go; then migrates (under the lease) and opens the fenced ledger.
pub async fn acquire_writer(
    config: &Config,
    command: &str,
    wait: Duration,
    shutdown: CancellationToken,
) -> Result<Writer, AppError> {
    let base = Ledger::connect_config(&config.ledger).await?;
    let who = Candidate::this_process(command);
    let lease = LeaderLease::acquire_within(
        &base,
        &who,
        config.ha.lease.0,
        wait,
        config.ha.poll_interval(),
    )
    .await?;
    let ledger = match open_as_leader(&base, &lease).await {
        Ok(ledger) => ledger,
        Err(e) => {
            lease.release().await;
            return Err(e);
        }
    };
    let cancel = link_cancel(&shutdown, &lease);
    Ok(Writer {
        lease,
        ledger,
        cancel,
        base,
    })
}

/// Migrates under the held lease and opens the fenced ledger.
async fn open_as_leader(base: &Ledger, lease: &LeaderLease) -> Result<Ledger, AppError> {
    if base.migrations_pending().await? {
        base.migrate().await?;
    }
    Ok(base.fenced(lease).await?)
}

/// A child of `shutdown` that also fires when `lease` is lost.
fn link_cancel(shutdown: &CancellationToken, lease: &LeaderLease) -> CancellationToken {
    let cancel = shutdown.child_token();
    let lost = lease.lost();
    let linked = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = lost.cancelled() => linked.cancel(),
            _ = linked.cancelled() => {}
        }
    });
    cancel
}

/// A token cancelled on the first SIGINT, SIGTERM or SIGHUP: in-flight work finishes and a
/// leader releases its writer lease, so a standby takes over at its next poll (SIGHUP is a
/// clean stop, not a reload: a supervisor restarts the process with the new config). A second
/// signal exits at once (code 1): what it cuts short is safe, interrupted creates are resolved
/// by lookup on the next start.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        info!(
            event = "shutdown_requested",
            signal, "shutdown requested: finishing in-flight work (a second signal exits at once)"
        );
        trigger.cancel();
        let again = wait_for_signal().await;
        warn!(
            event = "shutdown_forced",
            signal = again,
            "second signal: exiting now; interrupted creates are resolved on the next start"
        );
        std::process::exit(1);
    });
    token
}

/// Waits for SIGINT, SIGTERM or SIGHUP and names it.
#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}

/// One cycle (`once` and `plan`).
pub async fn once(ctx: &SyncContext, mode: Mode) -> Result<CycleReport, AppError> {
    Ok(run_cycle(ctx, mode).await?)
}

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

/// The operator console's routes when `service.console` is on (empty otherwise).
fn console_routes(config: &Config, ledger: &Ledger, wake: &Arc<Notify>) -> axum::Router {
    if !config.service.console || config.service.listen.is_none() {
        return axum::Router::new();
    }
    crate::ops::console::routes(
        crate::ops::console::Console::new(
            ledger.clone(),
            config.service.console_token.clone(),
            wake.clone(),
            crate::ops::console::ServiceInfo::always_leader(
                config.schedule.interval.0,
                config.quo.requests_per_second,
            ),
        )
        .listening_on(config.service.listen),
    )
}

/// The console of a replica: it shows leader or standby as `role` says.
fn replica_console_routes(
    config: &Config,
    ledger: &Ledger,
    wake: &Arc<Notify>,
    role: &ReplicaRole,
) -> axum::Router {
    if !config.service.console || config.service.listen.is_none() {
        return axum::Router::new();
    }
    let role = role.clone();
    let mut info = crate::ops::console::ServiceInfo::always_leader(
        config.schedule.interval.0,
        config.quo.requests_per_second,
    );
    info.role = Arc::new(move || match role.leader_epoch() {
        Some(_) => crate::ops::console::Role::Leader,
        None => crate::ops::console::Role::Standby,
    });
    crate::ops::console::routes(
        crate::ops::console::Console::new(
            ledger.clone(),
            config.service.console_token.clone(),
            wake.clone(),
            info,
        )
        .listening_on(config.service.listen),
    )
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

/// Binds the health/metrics router and the webhook receiver (on one port or two).
async fn start_listeners(
    config: &Config,
    ledger: &Ledger,
    source: &Arc<Source>,
    ops: axum::Router,
    wake: &Arc<Notify>,
    cancel: &CancellationToken,
    status: &ServiceStatus,
) -> Result<Vec<tokio::task::JoinHandle<()>>, AppError> {
    use crate::reverse::receiver::Receiver;
    // The contact webhook: with the configured secret, or with the key of the one quo-sync
    // registered itself (reverse.public_url).
    let contact_routes = |receiver: Receiver| crate::activity::contact_routes(config, receiver);
    let receiver = (config.reverse.enabled && config.reverse.listen.is_some()).then(|| Receiver {
        ledger: ledger.clone(),
        secret: config.reverse.webhook_secret.clone(),
        wake: wake.clone(),
        max_body_bytes: config.reverse.max_body_bytes,
        read_timeout: config.reverse.read_timeout.0,
        received: status.webhooks(),
    });
    let mut routers: Vec<(std::net::SocketAddr, axum::Router)> = Vec::new();
    if let Some(addr) = config.service.listen {
        let mut router = ops;
        if let Some(receiver) = receiver
            .clone()
            .filter(|_| config.reverse.listen == Some(addr))
        {
            router = router.merge(contact_routes(receiver));
        }
        routers.push((addr, router));
    }
    if let (Some(receiver), Some(addr)) = (receiver, config.reverse.listen)
        && config.service.listen != Some(addr)
    {
        let health = axum::routing::get(|| async { "ok\n" });
        routers.push((addr, contact_routes(receiver).route("/healthz", health)));
    }
    // Quo's call and message webhooks (activity logging), beside the contact webhooks.
    if let (Some(activity), Some(addr)) = (
        crate::activity::receiver_routes(config, ledger),
        config.reverse.listen.or(config.service.listen),
    ) {
        match routers.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, router)) => *router = router.clone().merge(activity),
            None => routers.push((addr, activity)),
        }
    }
    // CRM change signals (CSV file watch, POST /webhooks/crm) wake the loop like Quo webhooks.
    let signals = crate::source::watch::Signals::start(
        source.clone(),
        config.source.watch,
        ledger.clone(),
        wake.clone(),
        cancel.clone(),
    )?;
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
        servers.push(tokio::spawn(crate::ops::listener::serve(
            listener,
            router,
            ListenerLimits::from_config(&config.service),
            cancel.clone(),
        )));
    }
    // The file watcher lives as long as the listeners (it stops when dropped).
    let until = cancel.clone();
    servers.push(tokio::spawn(async move {
        until.cancelled().await;
        drop(signals);
    }));
    Ok(servers)
}

/// Cycles until `ctx.cancel` fires: every tick, or early on a webhook. While Quo or the CRM
/// refuses a credential that worked, cycles back off on its clock in `auth` instead; past its
/// grace (in a cycle or, for Quo's key, in the scanner), or at the first refusal of a credential
/// this process never saw accepted, the loop ends with [`AppError::AuthFailed`].
async fn cycle_loop(
    ctx: &SyncContext,
    config: &Config,
    (wake, auth): (&Arc<Notify>, &Credentials),
    status: &ServiceStatus,
) -> Result<(), AppError> {
    // The scan runs beside the cycles, yielding to their writes; what it finds wakes a cycle.
    let mut ctx = ctx.clone();
    // Every answer that shows Quo's key accepted stops its clock (the scanner's too).
    ctx.client = ctx.client.clone().with_auth_grace(auth.quo.clone());
    let scanner = match ctx.settings.poll_interval.take() {
        Some(poll) if ctx.settings.reverse_enabled => {
            Some(tokio::spawn(crate::reverse::scan::run_scanner(
                ctx.ledger.clone(),
                ctx.client.background(),
                ctx.settings.day_one.scan_scope(),
                poll,
                ctx.settings.delete_guard(),
                (wake.clone(), auth.quo.clone(), ctx.scan_gate.clone()),
                ctx.cancel.clone(),
            )))
        }
        _ => None,
    };
    // Calls, texts and voicemails to the CRM, beside the cycles (leader only).
    let activity = crate::activity::start(config, &ctx);
    // What any replica stores (webhooks, CRM notices) wakes this loop; this leader's reads take
    // the stored CRM notices until the loop ends.
    let stop_watch = ctx.cancel.child_token();
    // Run-now requests and the end of a pause, from any replica or shell, wake it too.
    let control = tokio::spawn(crate::ops::control::watch(
        ctx.ledger.clone(),
        wake.clone(),
        stop_watch.clone(),
    ));
    let covered = Arc::new(AtomicI64::new(i64::MIN));
    let watcher = tokio::spawn({
        let (ledger, wake, stop) = (ctx.ledger.clone(), wake.clone(), stop_watch.clone());
        let covered = covered.clone();
        async move { ledger.watch_intake(wake, covered, stop).await }
    });
    ctx.source.take_notices_from(Some(ctx.ledger.clone()));
    let result = cycles(&ctx, config, (wake, &covered), (auth, status), scanner).await;
    ctx.source.take_notices_from(None);
    stop_watch.cancel();
    let _ = watcher.await;
    let _ = control.await;
    if let Some(activity) = activity {
        activity.join().await;
    }
    result
}

/// The loop of [`cycle_loop`], with its scanner. Before each cycle, `covered` takes the intake
/// signal's value (so the watcher does not wake the loop again for intake this cycle reads), and
/// wakes that arrived meanwhile are dropped: the cycle about to start covers them.
async fn cycles(
    ctx: &SyncContext,
    config: &Config,
    (wake, covered): (&Arc<Notify>, &Arc<AtomicI64>),
    (auth, status): (&Credentials, &ServiceStatus),
    scanner: Option<tokio::task::JoinHandle<()>>,
) -> Result<(), AppError> {
    let interval = config.schedule.interval.0;
    let exhausted = auth.quo.exhausted();
    let tick = interval;
    info!(event = "cycles_started", source = %ctx.source.describe(), interval_s = interval.as_secs(), tick_ms = tick.as_millis() as u64, "cycles started");
    let stop = async |scanner: Option<tokio::task::JoinHandle<()>>| {
        ctx.cancel.cancel();
        if let Some(scanner) = scanner {
            let _ = scanner.await;
        }
    };
    loop {
        if ctx.cancel.is_cancelled() {
            break;
        }
        if let Ok(signal) = ctx.ledger.intake_signal().await {
            covered.store(signal, Ordering::Release);
        }
        let _ = wake.notified().now_or_never();
        let started = tokio::time::Instant::now();
        let mut next = None;
        status.cycle_started();
        let result = run_cycle(ctx, Mode::Apply).await;
        status.cycle_finished(&result);
        match result {
            Ok(_) => {}
            Err(SyncError::Mapping(e)) => {
                stop(scanner).await;
                return Err(SyncError::Mapping(e).into());
            }
            Err(e) if e.is_auth_failure() => match after_refusal(auth, &e) {
                Ok(pause) => next = Some(pause),
                Err(failed) => {
                    // Nothing works until the credential is fixed or the incident ends: stop,
                    // non-zero, so a supervisor notices instead of a service that looks up and
                    // does nothing.
                    stop(scanner).await;
                    return Err(failed);
                }
            },
            Err(e) => {
                error!(event = "cycle_error", error = %e, "cycle failed; retrying at the next tick")
            }
        }
        let next = next.unwrap_or_else(|| tick.saturating_sub(started.elapsed()));
        status.next_cycle_in(next);
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = wake.notified() => {
                // Let a burst of deliveries land before the cycle that applies them.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = exhausted.cancelled() => {
                // The scanner gave up on Quo's key.
                let failed = auth_failed(
                    Credential::QuoKey,
                    &auth.quo,
                    "Quo refused the API key on a scan page".into(),
                );
                stop(scanner).await;
                return Err(failed);
            }
            _ = ctx.cancel.cancelled() => break,
        }
    }
    if let Some(scanner) = scanner {
        let _ = scanner.await;
    }
    Ok(())
}

/// A cycle failed because a credential was refused (`error.is_auth_failure()`): the pause
/// before the next try while its clock allows one (`auth_refused`), else the failure that stops
/// the service (`auth_failed`).
fn after_refusal(auth: &Credentials, error: &SyncError) -> Result<Duration, AppError> {
    let credential = refused_credential(error);
    let Some(clock) = auth.clock(credential) else {
        return Err(auth_failed(
            credential,
            &AuthGrace::new(Duration::ZERO),
            error.to_string(),
        ));
    };
    match clock.refused() {
        AfterRefusal::RetryIn(pause) => {
            warn!(event = "auth_refused", error = %error, retry_in_ms = pause.as_millis() as u64, grace_s = clock.grace().as_secs(), grace_key = credential.grace_key(), "{}; it worked before, so trying again until its grace runs out (not ready meanwhile)", credential.refused());
            Ok(pause)
        }
        AfterRefusal::GiveUp | AfterRefusal::NeverAccepted => {
            Err(auth_failed(credential, clock, error.to_string()))
        }
    }
}

/// The failure that stops the service once `credential` is given up on (logged as
/// `auth_failed`): exit 2 when `clock` never saw it accepted, exit 1 after its grace.
fn auth_failed(credential: Credential, clock: &AuthGrace, reason: String) -> AppError {
    let grace_s = clock.ever_accepted().then(|| clock.grace().as_secs());
    let failed = AppError::AuthFailed {
        credential,
        grace_s,
        reason,
    };
    error!(event = "auth_failed", error = %failed, grace_s, ever_accepted = grace_s.is_some(), "stopping: {}", credential.refused());
    failed
}

/// [`AppError::AuthFailed`]'s message.
fn auth_failed_message(credential: Credential, grace_s: Option<u64>, reason: &str) -> String {
    match grace_s {
        None => format!(
            "{} before accepting it once since this process started (check the credential): {reason}",
            credential.refused()
        ),
        Some(grace_s) => format!(
            "{} for longer than {} ({grace_s}s) after accepting it: {reason}",
            credential.refused(),
            credential.grace_key()
        ),
    }
}

/// Which credential a refusal (`error.is_auth_failure()`) is about.
fn refused_credential(error: &SyncError) -> Credential {
    match error {
        SyncError::Source(_) => Credential::Crm,
        _ => Credential::QuoKey,
    }
}

/// The refusal clocks of a service's credentials: Quo's key (`quo.auth_grace`) and the
/// source's (`source.rest.auth_grace`, kept by the source, which reports what it sees accepted).
fn credentials(config: &Config, source: &Source) -> Credentials {
    Credentials {
        quo: Arc::new(AuthGrace::new(config.quo.auth_grace.0)),
        crm: source.auth_grace().cloned(),
    }
}

/// Serves `router` on `listener` until `cancel` fires, with the default header and request
/// timeouts (see [`crate::ops::listener`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    cancel: CancellationToken,
) {
    crate::ops::listener::serve(listener, router, ListenerLimits::default(), cancel).await;
}
