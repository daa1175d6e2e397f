//! The ledger: per CRM record, the Quo contact id and the last snapshot both sides agreed on.
//!
//! It is the product's memory: a lost Quo id means a duplicate contact on the next cycle. So the
//! intent to create is committed before the POST, the returned id is committed in the same
//! transaction that records the outcome, and SQLite runs in WAL mode with full fsync.
//! Migrations live in `migrations/` and are embedded in the binary; they run only under the
//! writer lease (`lease.rs`), which also fences every write of a leader.

mod inbox;
mod lease;
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
pub use lease::{
    Attempt, Candidate, FENCED_MESSAGE, Fence, LeaderLease, LeaseError, LeaseHolder, host_name,
};
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
    /// This process no longer holds the writer lease (checked locally before outside writes).
    #[error("{FENCED_MESSAGE} (epoch {epoch})")]
    Fenced {
        /// The epoch we held.
        epoch: i64,
    },
    /// The schema needs migrating but another process holds the writer lease.
    #[error("ledger {path} needs migrating and is held by {holder}; retry when it is free")]
    MigrationBlocked {
        /// The file.
        path: String,
        /// Who holds the lease.
        holder: String,
    },
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

impl LedgerError {
    /// Whether a write was refused because the writer lease is no longer ours.
    pub fn is_fenced(&self) -> bool {
        match self {
            LedgerError::Fenced { .. } => true,
            LedgerError::Query(sqlx::Error::Database(e)) => e.message().contains(FENCED_MESSAGE),
            _ => false,
        }
    }
}

/// The ledger database.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: SqlitePool,
    path: String,
    options: std::sync::Arc<SqliteConnectOptions>,
    /// Set on a leader's ledger: the lease its writes depend on.
    fence: Option<std::sync::Arc<Fence>>,
}

/// How long `Ledger::open` waits for a writer holding the lease to finish migrating.
const MIGRATION_WAIT: Duration = Duration::from_secs(10);

/// RFC 3339 "now" with milliseconds, the one time format stored in the ledger.
pub(crate) fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Opens the pool, retrying while another process holds the file's lock: switching a new file
/// to WAL answers "database is locked" without waiting for the busy timeout, so concurrent
/// first starts would otherwise fail.
async fn connect_when_unlocked(options: &SqliteConnectOptions) -> Result<SqlitePool, sqlx::Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
        {
            Err(sqlx::Error::Database(e))
                if e.message().contains("database is locked")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => return other,
        }
    }
}

impl Ledger {
    /// Opens (creating if missing) and migrates the ledger at `path`. Pending migrations run
    /// under a brief writer lease; when another process holds it, waits for that process to
    /// have migrated (it does so first).
    pub async fn open(path: &Path) -> Result<Self, LedgerError> {
        let ledger = Self::connect(path).await?;
        let deadline = std::time::Instant::now() + MIGRATION_WAIT;
        let who = Candidate::this_process("migrate");
        let lease = Duration::from_secs(30);
        while ledger.migrations_pending().await? {
            match LeaderLease::try_acquire(&ledger, &who, lease).await {
                Ok(held) => {
                    let migrated = ledger.migrate().await;
                    held.release().await;
                    migrated?;
                }
                Err(LeaseError::Held { holder, .. }) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(LedgerError::MigrationBlocked {
                            path: ledger.path.clone(),
                            holder: holder.to_string(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(LeaseError::Ledger(e)) => return Err(e),
            }
        }
        Ok(ledger)
    }

    /// Opens (creating if missing) the ledger at `path` and its lease table, without migrating:
    /// a writer takes the lease first, then calls [`Ledger::migrate`].
    pub async fn connect(path: &Path) -> Result<Self, LedgerError> {
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
        let pool = connect_when_unlocked(&options)
            .await
            .map_err(|source| LedgerError::Open {
                path: display.clone(),
                source,
            })?;
        let ledger = Self {
            pool,
            path: display,
            options: std::sync::Arc::new(options),
            fence: None,
        };
        ledger.bootstrap_lease().await?;
        Ok(ledger)
    }

    /// Whether embedded migrations have not all been applied yet.
    pub async fn migrations_pending(&self) -> Result<bool, LedgerError> {
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await?;
        if table.is_none() {
            return Ok(true);
        }
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1")
                .fetch_all(&self.pool)
                .await?;
        Ok(sqlx::migrate!("./migrations")
            .iter()
            .any(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version)))
    }

    /// Applies pending migrations. Call only while holding the writer lease.
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        sqlx::migrate!("./migrations")
            .run(&self.pool)
            .await
            .map_err(|source| LedgerError::Migrate {
                path: self.path.clone(),
                source,
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
