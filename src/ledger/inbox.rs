//! The `inbox` table: webhook events, stored before they are acknowledged and processed later,
//! so an acknowledged event survives a crash, and a redelivered one is recognised by its id.
//!
//! Every replica stores deliveries (a load balancer picks any of them), so the leader must
//! hear of what a standby stored: whoever stores an event or a CRM notice bumps the intake
//! signal (a counter in `meta`), and the leader watches it ([`Ledger::watch_intake`]). A counter
//! polled four times a second works the same across processes on SQLite and PostgreSQL, costs a
//! one-row read, and needs no connection held open (LISTEN/NOTIFY would, and would lose what
//! was sent while it reconnects).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::db::on_pool;
use super::{Ledger, LedgerError, now_text};

/// Meta key of the intake signal.
const INTAKE_SIGNAL: &str = "intake.signal";

/// How often the leader reads the intake signal.
pub const INTAKE_POLL: Duration = Duration::from_millis(250);

/// An event as received.
#[derive(Debug, Clone, PartialEq)]
pub struct NewInboxEvent<'a> {
    /// Quo's event id (stable across redeliveries).
    pub event_id: &'a str,
    /// `contact.updated` or `contact.deleted`.
    pub event_type: &'a str,
    /// The contact it concerns.
    pub quo_id: Option<&'a str>,
    /// The raw body.
    pub payload: &'a str,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct InboxEvent {
    /// Quo's event id.
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// The contact.
    pub quo_id: Option<String>,
    /// The raw body.
    pub payload: String,
    /// When it arrived.
    pub received_at: String,
    /// When it was applied.
    pub processed_at: Option<String>,
    /// What applying it did.
    pub outcome: Option<String>,
}

impl Ledger {
    /// Stores an event; returns `false` when its id was already stored (a redelivery).
    pub async fn inbox_put(&self, event: NewInboxEvent<'_>) -> Result<bool, LedgerError> {
        let done = on_pool!(&self.pool, |p| {
            sqlx::query(
            "INSERT INTO inbox (event_id, event_type, quo_id, payload, received_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT(event_id) DO NOTHING",
        )
        .bind(event.event_id)
        .bind(event.event_type)
        .bind(event.quo_id)
        .bind(event.payload)
        .bind(now_text())
        .execute(p)
        .await.map(|d| d.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Events not yet applied, oldest first.
    pub async fn inbox_pending(&self, limit: i64) -> Result<Vec<InboxEvent>, LedgerError> {
        Ok(on_pool!(&self.pool, |p, pg| sqlx::query_as(if pg {
            "SELECT * FROM inbox WHERE processed_at IS NULL ORDER BY received_at, seq LIMIT $1"
        } else {
            "SELECT * FROM inbox WHERE processed_at IS NULL ORDER BY received_at, rowid LIMIT $1"
        })
        .bind(limit)
        .fetch_all(p)
        .await)?)
    }

    /// Marks an event applied with what it did.
    pub async fn inbox_done(&self, event_id: &str, outcome: &str) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "UPDATE inbox SET processed_at = $1, outcome = $2 WHERE event_id = $3"
        )
        .bind(now_text())
        .bind(outcome)
        .bind(event_id)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// Deletes applied events processed before `before` (RFC 3339); pending ones are kept
    /// whatever their age. Returns how many went.
    pub async fn inbox_prune(&self, before: &str) -> Result<u64, LedgerError> {
        let done = on_pool!(&self.pool, |p| sqlx::query(
            "DELETE FROM inbox WHERE processed_at IS NOT NULL AND processed_at < $1"
        )
        .bind(before)
        .execute(p)
        .await
        .map(|d| d.rows_affected()))?;
        Ok(done)
    }

    /// Tells the leader, wherever it runs, that intake was stored (bumps the intake signal).
    pub async fn signal_intake(&self) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "INSERT INTO meta (key, value) VALUES ($1, '1') ON CONFLICT(key)
             DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT)"
        )
        .bind(INTAKE_SIGNAL)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// The intake signal's value (0 before anything was signalled).
    pub async fn intake_signal(&self) -> Result<i64, LedgerError> {
        Ok(self
            .meta(INTAKE_SIGNAL)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Until `cancel`, wakes `wake` within [`INTAKE_POLL`] of any process signalling intake,
    /// unless a cycle that started since already covers it: `covered` is the signal's value when
    /// the latest cycle started (this process's own receivers wake it directly; that cycle
    /// covers their signal, and a second wake would run a second cycle for nothing).
    pub async fn watch_intake(
        &self,
        wake: Arc<Notify>,
        covered: Arc<AtomicI64>,
        cancel: CancellationToken,
    ) {
        let mut last = self.intake_signal().await.ok();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(INTAKE_POLL) => {}
                _ = cancel.cancelled() => return,
            }
            match self.intake_signal().await {
                Ok(now) if Some(now) != last => {
                    if last.is_some() && now > covered.load(Ordering::Acquire) {
                        tracing::debug!(
                            event = "intake_signalled",
                            "intake stored by another replica; waking the cycle loop"
                        );
                        wake.notify_one();
                    }
                    last = Some(now);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(event = "intake_signal_unreadable", error = %e, "cannot read the intake signal; trying again")
                }
            }
        }
    }

    /// Events waiting to be applied.
    pub async fn inbox_depth(&self) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM inbox WHERE processed_at IS NULL"
        )
        .fetch_one(p)
        .await)?)
    }
}
