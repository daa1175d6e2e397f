//! The service's cycle loop: a cycle every tick or early on a webhook, the reverse scan and the
//! activity poller beside it, and the refusal clocks that decide when a refused credential stops
//! the service.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::FutureExt;

use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::ops::live::ServiceStatus;
use crate::quo::grace::{AfterRefusal, AuthGrace, Credential, Credentials};
use crate::source::Source;
use crate::sync::{Mode, SyncContext, SyncError, run_cycle};

use super::AppError;

/// Cycles until `ctx.cancel` fires: every tick, or early on a webhook. While Quo or the CRM
/// refuses a credential that worked, cycles back off on its clock in `auth` instead; past its
/// grace (in a cycle or, for Quo's key, in the scanner), or at the first refusal of a credential
/// this process never saw accepted, the loop ends with [`AppError::AuthFailed`].
pub(super) async fn cycle_loop(
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
pub(super) fn auth_failed_message(
    credential: Credential,
    grace_s: Option<u64>,
    reason: &str,
) -> String {
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
pub(super) fn credentials(config: &Config, source: &Source) -> Credentials {
    Credentials {
        quo: Arc::new(AuthGrace::new(config.quo.auth_grace.0)),
        crm: source.auth_grace().cloned(),
    }
}
