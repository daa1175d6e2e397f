//! Pause, resume and run-now, as operators ask for them (`quo-sync pause|resume|run-now`, the
//! console's buttons) and as the leader hears them: the requests live in the ledger
//! (`ledger/control.rs`), so any replica, or a shell on another machine, reaches the leader.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ledger::{Ledger, LedgerError, Pause};

/// How often the leader reads the control state: a run-now starts a cycle within a second.
pub const CONTROL_POLL: Duration = Duration::from_millis(250);

/// Who is asking, for the record: `user@host` of a shell, or what the console says.
pub fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!(
        "{user}@{}",
        crate::ledger::Candidate::this_process("pause").host
    )
}

/// Pauses syncing for every replica, for `duration` or until resumed.
pub async fn pause(
    ledger: &Ledger,
    by: &str,
    duration: Option<Duration>,
) -> Result<Pause, LedgerError> {
    let until = duration
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| Utc::now() + d);
    let pause = ledger.pause(by, until).await?;
    warn!(event = "sync_paused", paused_by = %pause.by, until = pause.until.as_deref(), "syncing paused: no writes to Quo or the CRM until resumed; webhooks are still received and kept");
    Ok(pause)
}

/// Ends the pause (the leader starts a cycle at once); the pause that was in force.
pub async fn resume(ledger: &Ledger, by: &str) -> Result<Option<Pause>, LedgerError> {
    let was = ledger.resume().await?;
    if let Some(was) = &was {
        warn!(event = "sync_resumed", resumed_by = %by, paused_by = %was.by, "syncing resumed");
    }
    Ok(was)
}

/// Asks the leader to start a cycle now.
pub async fn run_now(ledger: &Ledger, by: &str) -> Result<(), LedgerError> {
    ledger.request_run().await?;
    info!(event = "run_now_requested", requested_by = %by, "a cycle was asked for");
    Ok(())
}

/// Until `cancel`: wakes `wake` within [`CONTROL_POLL`] of a run-now request or of the end of
/// a pause (resumed, or run out), and keeps the `quo_sync_paused` gauge current.
pub async fn watch(ledger: Ledger, wake: Arc<Notify>, cancel: CancellationToken) {
    let mut last = ledger.control().await.ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CONTROL_POLL) => {}
            _ = cancel.cancelled() => return,
        }
        let now = match ledger.control().await {
            Ok(now) => now,
            Err(e) => {
                debug!(event = "control_unreadable", error = %e, "cannot read pause and run-now; trying again");
                continue;
            }
        };
        metrics::gauge!("quo_sync_paused").set(if now.pause.is_some() { 1.0 } else { 0.0 });
        if let Some(before) = &last {
            if now.run_requests != before.run_requests {
                info!(event = "run_now", "run-now asked for; starting a cycle");
                wake.notify_one();
            }
            if before.pause.is_some() && now.pause.is_none() {
                info!(event = "pause_ended", "the pause ended; starting a cycle");
                wake.notify_one();
            }
        }
        last = Some(now);
    }
}
