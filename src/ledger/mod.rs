//! The ledger: per CRM record, the Quo contact id and the last snapshot both sides agreed on.
//!
//! It is the product's memory: a lost Quo id means a duplicate contact on the next cycle. So the
//! intent to create is committed before the POST, the returned id is committed in the same
//! transaction that records the outcome, and SQLite runs in WAL mode with full fsync.
//! Two backends share one schema (`db`): SQLite by default, PostgreSQL when `ledger.url` is set.
//! Migrations live in `migrations/<backend>/` and are embedded in the binary.

mod copy;
pub(crate) mod db;
mod inbox;
mod quarantine;
mod records;
mod runs;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use db::{Pool, on_pool};

pub use copy::CopyReport;
pub use db::{BadPgUrl, PgUrl};

pub use inbox::{InboxEvent, NewInboxEvent};
pub use quarantine::{NewQuarantine, QuarantineEntry, QuarantineStage};
pub use records::{
    IndexEntry, LedgerIndex, RecordRow, RecordState, SyncedRecord, fingerprint_digest,
};
pub use runs::{ConflictRow, RunCounts, RunRow};

/// Ledger failures: the database could not be opened, migrated, read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The SQLite file or PostgreSQL database could not be opened or created.
    #[error("cannot open ledger {path}: {source}")]
    Open {
        /// The file, or the database URL without its password.
        path: String,
        /// The driver error.
        source: sqlx::Error,
    },
    /// Embedded migrations failed.
    #[error("cannot migrate ledger {path}: {source}")]
    Migrate {
        /// The file, or the database URL without its password.
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
    /// `ledger copy` found rows in its target.
    #[error(
        "ledger copy: the target {target} is not empty ({rows} rows in {table}); copy only into a new, empty ledger"
    )]
    TargetNotEmpty {
        /// The target, without password.
        target: String,
        /// The first table found with rows.
        table: &'static str,
        /// Its row count.
        rows: i64,
    },
    /// `ledger copy` counted different rows in the target than it read from the source.
    #[error(
        "ledger copy: table {table} has {source_rows} rows in the source but {target_rows} in the target"
    )]
    CountMismatch {
        /// The table.
        table: &'static str,
        /// Rows read.
        source_rows: i64,
        /// Rows found after the copy.
        target_rows: i64,
    },
}

/// Where a ledger lives.
#[derive(Debug, Clone)]
pub enum LedgerTarget {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PgUrl),
}

impl LedgerTarget {
    /// Reads `postgres://…` as a PostgreSQL URL and anything else as an SQLite file path.
    pub fn parse(text: &str) -> Result<Self, BadPgUrl> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Ok(Self::Postgres(PgUrl::parse(text)?))
        } else {
            Ok(Self::Sqlite(PathBuf::from(
                text.strip_prefix("sqlite://").unwrap_or(text),
            )))
        }
    }
}

impl fmt::Display for LedgerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => write!(f, "{url}"),
        }
    }
}

/// The ledger database.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: Pool,
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
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|source| LedgerError::Migrate {
                path: display.clone(),
                source,
            })?;
        Ok(Self {
            pool: Pool::Sqlite(pool),
            path: display,
        })
    }

    /// Connects to (and migrates) a PostgreSQL ledger. Concurrent first starts are safe: the
    /// migrator holds an advisory lock while it runs.
    pub async fn connect(url: &PgUrl) -> Result<Self, LedgerError> {
        let display = url.to_string();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(url.options())
            .await
            .map_err(|source| LedgerError::Open {
                path: display.clone(),
                source,
            })?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|source| LedgerError::Migrate {
                path: display.clone(),
                source,
            })?;
        Ok(Self {
            pool: Pool::Postgres(pool),
            path: display,
        })
    }

    /// Opens the ledger wherever it lives.
    pub async fn open_target(target: &LedgerTarget) -> Result<Self, LedgerError> {
        match target {
            LedgerTarget::Sqlite(path) => Self::open(path).await,
            LedgerTarget::Postgres(url) => Self::connect(url).await,
        }
    }

    /// Opens the configured ledger: PostgreSQL when `ledger.url` is set (saying once that
    /// `ledger.path` is ignored), else the SQLite file.
    pub async fn open_config(config: &crate::config::LedgerConfig) -> Result<Self, LedgerError> {
        let target = config.target().map_err(|e| LedgerError::Open {
            path: "ledger.url".into(),
            source: sqlx::Error::Configuration(e.into()),
        })?;
        if let LedgerTarget::Postgres(url) = &target {
            tracing::info!(
                event = "ledger_postgres",
                ledger = %url,
                ignored_path = %config.path.display(),
                "ledger.url is set: using the PostgreSQL ledger; ledger.path is ignored"
            );
        }
        Self::open_target(&target).await
    }

    /// The file this ledger lives in, or its database URL without the password.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Checks the database answers (readiness).
    pub async fn ping(&self) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(drop))?;
        Ok(())
    }

    /// Reads a named value from `meta`.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT value FROM meta WHERE key = $1"
        )
        .bind(key)
        .fetch_optional(p)
        .await)?)
    }

    /// Deletes named values from `meta`.
    pub async fn delete_meta(&self, keys: &[&str]) -> Result<(), LedgerError> {
        for key in keys {
            on_pool!(&self.pool, |p| sqlx::query(
                "DELETE FROM meta WHERE key = $1"
            )
            .bind(key)
            .execute(p)
            .await
            .map(drop))?;
        }
        Ok(())
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
        on_pool!(&self.pool, |p| {
            sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(p)
            .await.map(drop)
        })?;
        Ok(())
    }

    /// Raw SQL returning one integer, for tests and diagnostics (`$1..` bound to `binds`).
    #[doc(hidden)]
    pub async fn debug_query_i64(&self, sql: &str, binds: &[&str]) -> Result<i64, LedgerError> {
        let sql = sql.to_string();
        Ok(on_pool!(&self.pool, |p| binds
            .iter()
            .fold(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)), |q, b| q
                .bind(*b))
            .fetch_one(p)
            .await)?)
    }

    /// Raw SQL returning one text column, for tests and diagnostics.
    #[doc(hidden)]
    pub async fn debug_query_strings(&self, sql: &str) -> Result<Vec<String>, LedgerError> {
        let sql = sql.to_string();
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            sqlx::AssertSqlSafe(sql)
        )
        .fetch_all(p)
        .await)?)
    }

    /// Raw SQL statement, for tests and diagnostics; returns rows affected.
    #[doc(hidden)]
    pub async fn debug_execute(&self, sql: &str) -> Result<u64, LedgerError> {
        let sql = sql.to_string();
        Ok(on_pool!(&self.pool, |p| sqlx::query(sqlx::AssertSqlSafe(
            sql
        ))
        .execute(p)
        .await
        .map(|d| d.rows_affected()))?)
    }

    /// Closes the pool; on SQLite, first flushes the WAL into the main file (clean shutdown).
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => {
                let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(pool)
                    .await;
                pool.close().await;
            }
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}
