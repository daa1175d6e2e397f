//! The `inbox` table: webhook events, stored before they are acknowledged and processed later,
//! so an acknowledged event survives a crash, and a redelivered one is recognised by its id.

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
        let done = sqlx::query(
            "INSERT INTO inbox (event_id, event_type, quo_id, payload, received_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT(event_id) DO NOTHING",
        )
        .bind(event.event_id)
        .bind(event.event_type)
        .bind(event.quo_id)
        .bind(event.payload)
        .bind(now_text())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Events not yet applied, oldest first.
    pub async fn inbox_pending(&self, limit: i64) -> Result<Vec<InboxEvent>, LedgerError> {
        Ok(sqlx::query_as(
            "SELECT * FROM inbox WHERE processed_at IS NULL ORDER BY received_at, rowid LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Marks an event applied with what it did.
    pub async fn inbox_done(&self, event_id: &str, outcome: &str) -> Result<(), LedgerError> {
        sqlx::query("UPDATE inbox SET processed_at = ?, outcome = ? WHERE event_id = ?")
            .bind(now_text())
            .bind(outcome)
            .bind(event_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes applied events processed before `before` (RFC 3339); pending ones are kept
    /// whatever their age. Returns how many went.
    pub async fn inbox_prune(&self, before: &str) -> Result<u64, LedgerError> {
        let done =
            sqlx::query("DELETE FROM inbox WHERE processed_at IS NOT NULL AND processed_at < ?")
                .bind(before)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    /// Events waiting to be applied.
    pub async fn inbox_depth(&self) -> Result<i64, LedgerError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM inbox WHERE processed_at IS NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
