//! The `crm_notices` table: signed CRM change notices (`POST /webhooks/crm`), stored by
//! whichever replica received them before it answers 202, and taken by the leader's next read.
//!
//! Why in the ledger and not in memory: a standby answers deliveries too (a load balancer picks
//! any replica), and a notice kept in its memory never reaches the leader. Stored, it survives
//! the replica that took it, and the intake signal (`inbox.rs`) wakes the leader at once.
//! A notice with a signed timestamp carries a `delivery` digest: the same delivery twice is
//! recognised while its row is kept (longer than the timestamp window), so a replay adds nothing.

use super::db::on_pool;
use super::{Ledger, LedgerError, now_text};

/// How long taken notices are kept: longer than a signed timestamp's window (±5 minutes), so a
/// replayed delivery still finds its row.
const KEEP_TAKEN: chrono::Duration = chrono::Duration::minutes(15);

impl Ledger {
    /// Stores a notice naming `ids` (`None`: "read the list"). With a `delivery` digest, `false`
    /// when that delivery was stored before (a replay or a redelivery): nothing is added.
    pub async fn crm_notice_put(
        &self,
        ids: Option<&[String]>,
        delivery: Option<&str>,
    ) -> Result<bool, LedgerError> {
        let ids = ids.map(|ids| serde_json::Value::from(ids.to_vec()).to_string());
        let done = on_pool!(&self.pool, |p| sqlx::query(
            "INSERT INTO crm_notices (delivery, ids, received_at) VALUES ($1, $2, $3)
             ON CONFLICT (delivery) DO NOTHING"
        )
        .bind(delivery)
        .bind(ids)
        .bind(now_text())
        .execute(p)
        .await
        .map(|d| d.rows_affected()))?;
        Ok(done == 1)
    }

    /// Takes every pending notice in one statement (no notice is taken twice, none skipped),
    /// oldest first: the ids each named, `None` for "read the list". Taken notices older than
    /// the replay window are pruned.
    pub async fn crm_notices_take(&self) -> Result<Vec<Option<Vec<String>>>, LedgerError> {
        let now = now_text();
        let cutoff =
            (chrono::Utc::now() - KEEP_TAKEN).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut taken: Vec<(i64, Option<String>)> = on_pool!(&self.pool, |p| {
            sqlx::query("DELETE FROM crm_notices WHERE taken_at IS NOT NULL AND received_at < $1")
                .bind(&cutoff)
                .execute(p)
                .await?;
            sqlx::query_as(
                "UPDATE crm_notices SET taken_at = $1 WHERE taken_at IS NULL RETURNING seq, ids",
            )
            .bind(&now)
            .fetch_all(p)
            .await
        })?;
        taken.sort_by_key(|(seq, _)| *seq);
        Ok(taken
            .into_iter()
            .map(|(_, ids)| {
                // A row this code wrote; unreadable ids are read as "read the list".
                ids.and_then(|ids| serde_json::from_str::<Vec<String>>(&ids).ok())
            })
            .collect())
    }

    /// Notices not yet taken (the console, metrics, tests).
    pub async fn crm_notices_pending(&self) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM crm_notices WHERE taken_at IS NULL"
        )
        .fetch_one(p)
        .await)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notices_are_taken_once_and_a_delivery_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.db")).await.unwrap();
        let ids = vec!["a".to_string(), "b".to_string()];
        assert!(ledger.crm_notice_put(Some(&ids), Some("d1")).await.unwrap());
        assert!(!ledger.crm_notice_put(Some(&ids), Some("d1")).await.unwrap());
        assert!(ledger.crm_notice_put(None, None).await.unwrap());
        assert!(ledger.crm_notice_put(None, None).await.unwrap());
        assert_eq!(ledger.crm_notices_pending().await.unwrap(), 3);
        assert_eq!(
            ledger.crm_notices_take().await.unwrap(),
            vec![Some(ids.clone()), None, None]
        );
        assert!(ledger.crm_notices_take().await.unwrap().is_empty());
        // Taken, but still known: a replay of the delivery adds nothing.
        assert!(!ledger.crm_notice_put(Some(&ids), Some("d1")).await.unwrap());
    }
}
