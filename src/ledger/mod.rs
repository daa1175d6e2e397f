//! The ledger: per CRM record, the Quo contact id and the last snapshot both sides agreed on.
//!
//! It is the product's memory: a lost Quo id means a duplicate contact on the next cycle. So the
//! intent to create is committed before the POST, the returned id is committed in the same
//! transaction that records the outcome, and SQLite runs in WAL mode with full fsync.
//! Migrations live in `migrations/` and are embedded in the binary.

mod inbox;
mod quarantine;
mod records;
mod runs;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use inbox::{InboxEvent, NewInboxEvent};
pub use quarantine::{NewQuarantine, QuarantineEntry, QuarantineStage};
pub use records::{
    IndexEntry, LedgerIndex, RecordRow, RecordState, SyncedRecord, fingerprint_digest,
};
pub use runs::{ConflictRow, RunCounts, RunRow};

/// Ledger failures: the database could not be opened, migrated, read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The SQLite file could not be opened or created.
    #[error("cannot open ledger {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The driver error.
        source: sqlx::Error,
    },
    /// Embedded migrations failed.
    #[error("cannot migrate ledger {path}: {source}")]
    Migrate {
        /// The file.
        path: String,
        /// The migration error.
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("ledger query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored JSON column could not be decoded.
    #[error("ledger row for {external_id} has unreadable {column}: {reason}")]
    Corrupt {
        /// The record.
        external_id: String,
        /// The column.
        column: &'static str,
        /// The decode error.
        reason: String,
    },
}

/// The ledger database.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: SqlitePool,
    path: String,
}

/// RFC 3339 "now" with milliseconds, the one time format stored in the ledger.
pub(crate) fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Ledger {
    /// Opens (creating if missing) and migrates the ledger at `path`.
    pub async fn open(path: &Path) -> Result<Self, LedgerError> {
        let display = path.display().to_string();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| LedgerError::Open {
                path: display.clone(),
                source: sqlx::Error::Io(e),
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| LedgerError::Open {
                path: display.clone(),
                source,
            })?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| LedgerError::Open {
                path: display.clone(),
                source,
            })?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| LedgerError::Migrate {
                path: display.clone(),
                source,
            })?;
        Ok(Self {
            pool,
            path: display,
        })
    }

    /// The file this ledger lives in.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The underlying pool (for read-only reports).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Checks the database answers (readiness).
    pub async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Reads a named value from `meta`.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, LedgerError> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Reads a named RFC 3339 time from `meta` (`None` when absent or unreadable).
    pub async fn meta_time(
        &self,
        key: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, LedgerError> {
        Ok(self
            .meta(key)
            .await?
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc)))
    }

    /// Writes a named value to `meta`.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<(), LedgerError> {
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Flushes the WAL into the main file (clean shutdown).
    pub async fn close(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await;
        self.pool.close().await;
    }
}
