//! The `crm_oauth` table: the CRM's OAuth2 refresh token, shared by every process on the ledger
//! (the leader, standbys, `plan`, `reconcile`), and the claim that lets one of them at a time
//! spend it.
//!
//! Why a claim: vendors that rotate refresh tokens accept each one once, and some revoke the
//! whole family when a spent one comes back. Two processes refreshing with the same token at
//! once, or one retrying a token another has since rotated, lose every token. So a process
//! claims the row at the generation it read (one compare-and-swap statement), sends its grant,
//! and stores the rotated token as the next generation, which also ends the claim. A claim runs
//! out by the database's clock, so a process that died mid-grant holds the others up for at
//! most its time-to-live. The table is never fenced: a token the vendor rotated must be kept
//! whoever leads, and this row's own compare-and-swap already orders its writers.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;
use sqlx::Row;

use super::db::on_pool;
use super::lease::db_now_ms;
use super::{Ledger, LedgerError, now_text};

/// The stored refresh token of one OAuth2 client and where it stands.
#[derive(Clone)]
pub struct StoredRefreshToken {
    /// Fingerprint of the configured token this one descends from.
    pub configured: String,
    /// The latest rotated token, if any was stored.
    pub token: Option<SecretString>,
    /// Bumped by every stored rotation; claims are taken at a generation.
    pub generation: i64,
}

impl fmt::Debug for StoredRefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StoredRefreshToken(generation {}, token {})",
            self.generation,
            if self.token.is_some() {
                "[REDACTED]"
            } else {
                "none"
            }
        )
    }
}

impl Ledger {
    /// The stored row for the client `name` (`None` before any process claimed it).
    pub async fn crm_token(&self, name: &str) -> Result<Option<StoredRefreshToken>, LedgerError> {
        let row = on_pool!(&self.pool, |p| sqlx::query(
            "SELECT configured, refresh_token, generation FROM crm_oauth WHERE name = $1"
        )
        .bind(name)
        .fetch_optional(p)
        .await
        .and_then(|row| row
            .map(|row| Ok::<_, sqlx::Error>((
                row.try_get::<String, _>(0)?,
                row.try_get::<Option<String>, _>(1)?,
                row.try_get::<i64, _>(2)?,
            )))
            .transpose()))?;
        Ok(
            row.map(|(configured, token, generation)| StoredRefreshToken {
                configured,
                token: token.map(SecretString::from),
                generation,
            }),
        )
    }

    /// Claims the right to spend the token stored at `generation` for `ttl` (creating the row
    /// at generation 0 when there is none). `true` when `claimant` holds the claim now (a claim
    /// it already held is extended); `false` when the generation moved on or another claim is
    /// still live.
    pub async fn crm_token_claim(
        &self,
        name: &str,
        claimant: &str,
        generation: i64,
        ttl: Duration,
    ) -> Result<bool, LedgerError> {
        let done = on_pool!(&self.pool, |p, pg| {
            sqlx::query("INSERT INTO crm_oauth (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .execute(p)
                .await?;
            let sql = format!(
                "UPDATE crm_oauth SET claimed_by = $1, claim_until_ms = {now} + $2
                 WHERE name = $3 AND generation = $4
                   AND (claimed_by IS NULL OR claimed_by = $5 OR claim_until_ms <= {now})",
                now = db_now_ms(pg)
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(claimant)
                .bind(ttl.as_millis() as i64)
                .bind(name)
                .bind(generation)
                .bind(claimant)
                .execute(p)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Stores `token`, rotated from the one at `generation`, as the next generation, and ends
    /// any claim. `false` when the generation had already moved on (another process stored a
    /// token since); the stored one is then left as it is.
    pub async fn crm_token_rotated(
        &self,
        name: &str,
        generation: i64,
        configured: &str,
        token: &str,
    ) -> Result<bool, LedgerError> {
        let done = on_pool!(&self.pool, |p| {
            sqlx::query(
            "UPDATE crm_oauth SET refresh_token = $1, configured = $2, generation = generation + 1,
                    claimed_by = NULL, claim_until_ms = 0, rotated_at = $3
             WHERE name = $4 AND generation = $5"
        )
        .bind(token)
        .bind(configured)
        .bind(now_text())
        .bind(name)
        .bind(generation)
        .execute(p)
        .await
        .map(|done| done.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Ends `claimant`'s claim without storing a token (the grant did not rotate it, or failed).
    pub async fn crm_token_release(&self, name: &str, claimant: &str) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "UPDATE crm_oauth SET claimed_by = NULL, claim_until_ms = 0
             WHERE name = $1 AND claimed_by = $2"
        )
        .bind(name)
        .bind(claimant)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[tokio::test]
    async fn one_claim_at_a_time_and_a_rotation_moves_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.db")).await.unwrap();
        let ttl = Duration::from_secs(60);
        assert!(ledger.crm_token("crm").await.unwrap().is_none());
        assert!(ledger.crm_token_claim("crm", "a", 0, ttl).await.unwrap());
        assert!(!ledger.crm_token_claim("crm", "b", 0, ttl).await.unwrap());
        assert!(
            ledger.crm_token_claim("crm", "a", 0, ttl).await.unwrap(),
            "renewed"
        );
        assert!(
            ledger
                .crm_token_rotated("crm", 0, "fp", "rt-1")
                .await
                .unwrap()
        );
        let stored = ledger.crm_token("crm").await.unwrap().unwrap();
        assert_eq!(stored.generation, 1);
        assert_eq!(stored.token.unwrap().expose_secret(), "rt-1");
        assert!(!format!("{:?}", ledger.crm_token("crm").await).contains("rt-1"));
        // The old generation is gone: neither a claim nor a store at it succeeds.
        assert!(!ledger.crm_token_claim("crm", "b", 0, ttl).await.unwrap());
        assert!(
            !ledger
                .crm_token_rotated("crm", 0, "fp", "rt-x")
                .await
                .unwrap()
        );
        assert!(ledger.crm_token_claim("crm", "b", 1, ttl).await.unwrap());
        ledger.crm_token_release("crm", "b").await.unwrap();
        // An expired claim is taken over.
        assert!(
            ledger
                .crm_token_claim("crm", "a", 1, Duration::ZERO)
                .await
                .unwrap()
        );
        assert!(ledger.crm_token_claim("crm", "b", 1, ttl).await.unwrap());
    }

    #[tokio::test]
    async fn an_upgrade_moves_the_token_earlier_versions_kept_in_meta() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.db")).await.unwrap();
        // The ledger as version 0007 left it, with a rotated token in `meta`.
        ledger
            .set_meta(
                "source.rest.oauth.refresh_token",
                r#"{"configured":"fp-1","refresh_token":"rt-kept"}"#,
            )
            .await
            .unwrap();
        let super::super::db::Pool::Sqlite(pool) = &ledger.pool else {
            unreachable!("an SQLite ledger")
        };
        sqlx::raw_sql("DROP TABLE crm_oauth; DROP TABLE crm_notices;")
            .execute(pool)
            .await
            .unwrap();
        sqlx::raw_sql(include_str!(
            "../../migrations/sqlite/0010_crm_tokens_and_notices.sql"
        ))
        .execute(pool)
        .await
        .unwrap();
        let stored = ledger.crm_token("source.rest").await.unwrap().unwrap();
        assert_eq!(stored.configured, "fp-1");
        assert_eq!(stored.token.unwrap().expose_secret(), "rt-kept");
        assert_eq!(stored.generation, 1);
        assert_eq!(
            ledger
                .meta("source.rest.oauth.refresh_token")
                .await
                .unwrap(),
            None
        );
    }
}
