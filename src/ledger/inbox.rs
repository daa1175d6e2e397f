//! The `inbox` table: webhook events, stored before they are acknowledged and processed later,
//! so an acknowledged event survives a crash, and a redelivered one is recognised by its id.

use super::db::on_pool;
use super::{Ledger, LedgerError, now_text};

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

    /// Events waiting to be applied.
    pub async fn inbox_depth(&self) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM inbox WHERE processed_at IS NULL"
        )
        .fetch_one(p)
        .await)?)
    }
}
