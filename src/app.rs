//! Wiring: turns a validated `Config` into running parts (ledger, client, source, cycle
//! context), and runs them as a one-shot cycle or a long-lived service that stops cleanly on
//! SIGINT/SIGTERM. `main.rs` only parses arguments and maps errors to exit codes.
//!
//! Writers take the ledger's writer lease first ([`acquire_writer`]); `run` that cannot get it
//! stands by and takes over when it is free or expired ([`run_replica`]). A leader works on a
//! fenced ledger and a cancel token that fires when the lease is lost, so the cycle stops
//! starting new work and its late writes are refused by the database.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::ledger::{Candidate, LeaderLease, LeaseError, Ledger, LedgerError};
use crate::ops::listener::ListenerLimits;
use crate::quo::client::{ClientSettings, QuoClient};
use crate::quo::grace::Credential;
use crate::quo::limiter::RateLimiter;
use crate::quo::retry::RetryPolicy;
use crate::source::{Source, SourceError};
use crate::sync::{CycleReport, CycleSettings, Mode, SyncContext, SyncError, run_cycle};

mod cycles;
mod listeners;
mod load_config;
mod service;
use cycles::auth_failed_message;
pub use service::{run_replica, run_replica_observed, run_service};

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

/// Serves `router` on `listener` until `cancel` fires, with the default header and request
/// timeouts (see [`crate::ops::listener`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    cancel: CancellationToken,
) {
    crate::ops::listener::serve(listener, router, ListenerLimits::default(), cancel).await;
}
