//! The ledger: per CRM record, the Quo contact id and the last snapshot both sides agreed on.
//!
//! It is the product's memory: a lost Quo id means a duplicate contact on the next cycle. So the
//! intent to create is committed before the POST, the returned id is committed in the same
//! transaction that records the outcome, and SQLite runs in WAL mode with full fsync.
//! Two backends share one schema (`db`): SQLite by default, PostgreSQL when `ledger.url` is set.
//! Migrations live in `migrations/<backend>/` and are embedded in the binary; they run only
//! under the writer lease (`lease.rs`), which also fences every write of a leader.

mod absences;
mod activity;
mod adoptions;
mod backup;
mod control;
mod copy;
mod crm_notices;
mod crm_tokens;
pub(crate) mod db;
mod exports;
mod fencing;
mod inbox;
mod index;
mod leader;
mod lease;
mod phone_history;
mod quarantine;
mod records;
mod runs;
mod scope;
mod unconfirmed;
pub mod workspace;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use db::{Pool, on_pool};

pub use absences::CrmHold;
pub use activity::{
    ActivityEventRow, ActivityRow, ActivityState, NewActivityEvent, RecordPhones,
    WebhookRegistration,
};
pub use adoptions::{Adoption, AdoptionIntent, MatchDecision};
pub use backup::{BackupError, BackupReport};
pub use control::{Control, Pause};
pub use copy::CopyReport;
pub use crm_tokens::StoredRefreshToken;
pub use db::{BadPgUrl, PgUrl};
pub use exports::{Export, ExportState};

pub use fencing::FENCED_MESSAGE;
pub use inbox::{INTAKE_POLL, InboxEvent, NewInboxEvent};
pub use index::{IndexEntry, LedgerIndex};
pub use leader::{Fence, LeaderLease, LeaseError, safety_margin};
pub use lease::{Attempt, Candidate, LeaseHolder, host_name};
pub use phone_history::PhoneHolding;
pub use quarantine::{NewQuarantine, QuarantineEntry, QuarantineStage};
pub use records::{RecordRow, RecordState, SyncedRecord, fingerprint_digest};
pub use runs::{ConflictRow, RunCounts, RunRow};
pub use scope::{ScopeLink, ScopeMark};
pub use unconfirmed::{
    ATTEMPTS_TO_GIVE_UP, CLOCK_SKEW, PASSES_TO_RULE_OUT, RULE_OUT_AFTER, UnconfirmedCreate,
    made_in_time,
};
pub use workspace::{AppContactCursor, WORKSPACE_CONFIRMED, WORKSPACE_LISTED, WorkspaceContact};

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
    /// The PostgreSQL server's TLS could not be set up or verified (a configuration problem:
    /// `sslmode`, `sslrootcert`, or a server without TLS).
    #[error(
        "cannot open ledger {path}: TLS failed: {reason} (check sslmode and sslrootcert in ledger.url, or PGSSLMODE/PGSSLROOTCERT)"
    )]
    Tls {
        /// The database URL without its password.
        path: String,
        /// What the TLS layer said.
        reason: String,
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
    /// Where the configured ledger lives: PostgreSQL when `ledger.url` is set, else the SQLite
    /// file.
    pub fn from_config(config: &crate::config::LedgerConfig) -> Result<Self, BadPgUrl> {
        use secrecy::ExposeSecret;
        match &config.url {
            Some(url) => Ok(Self::Postgres(PgUrl::parse(url.expose_secret())?)),
            None => Ok(Self::Sqlite(config.path.clone())),
        }
    }

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

impl LedgerError {
    /// An error opening the ledger at `path`: TLS failures are told apart (exit code 2).
    pub(crate) fn open(path: String, source: sqlx::Error) -> Self {
        // sqlx reports a failed handshake (wrong CA, wrong host name) as I/O carrying the
        // rustls error, and a server without TLS under sslmode=require as `Tls`.
        let handshake = match &source {
            sqlx::Error::Io(e) => e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map(ToString::to_string),
            sqlx::Error::Tls(e) => Some(e.to_string()),
            _ => None,
        };
        match handshake {
            Some(reason) => LedgerError::Tls { path, reason },
            None => LedgerError::Open { path, source },
        }
    }

    /// Whether the operator's configuration is to blame (exit code 2): a TLS setup that fails.
    pub fn is_config(&self) -> bool {
        matches!(self, LedgerError::Tls { .. })
    }

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
    pool: Pool,
    path: String,
    /// How this ledger's connections are made (a leader's fenced pool is made the same way).
    options: std::sync::Arc<db::ConnectOptions>,
    /// Set on a leader's ledger: the lease its writes depend on.
    fence: Option<std::sync::Arc<Fence>>,
}

/// How long `Ledger::open` waits for a writer holding the lease to finish migrating.
const MIGRATION_WAIT: Duration = Duration::from_secs(10);

/// RFC 3339 "now" with milliseconds, the one time format stored in the ledger.
pub(crate) fn now_text() -> String {
    time_text(chrono::Utc::now())
}

/// `at` as the ledger stores times: RFC 3339 in UTC to the millisecond, so that text comparison
/// is time order.
pub(crate) fn time_text(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A time Quo wrote (`createdAt`: any RFC 3339 precision or offset; its spec's examples have
/// whole seconds, `2022-01-01T00:00:00Z`) in the ledger's form, or `None` when it is not one.
/// Compared as Quo wrote it, `…00Z` sorts after `…00.500Z`.
pub(crate) fn quo_time_text(quo: &str) -> Option<String> {
    chrono::DateTime::parse_from_rfc3339(quo)
        .ok()
        .map(|t| time_text(t.to_utc()))
}

impl Ledger {
    /// Opens (creating if missing) and migrates the SQLite ledger at `path`. Pending migrations
    /// run under a brief writer lease; when another process holds it, waits for that process to
    /// have migrated (it does so first).
    pub async fn open(path: &Path) -> Result<Self, LedgerError> {
        let ledger = Self::connect_sqlite(path).await?;
        ledger.migrate_under_lease().await?;
        Ok(ledger)
    }

    /// Connects to and migrates (under the lease, as [`Ledger::open`]) a PostgreSQL ledger.
    pub async fn connect(url: &PgUrl) -> Result<Self, LedgerError> {
        let ledger = Self::connect_pg(url).await?;
        ledger.migrate_under_lease().await?;
        Ok(ledger)
    }

    /// Runs pending migrations under a brief writer lease, or waits for the holder to run them.
    async fn migrate_under_lease(&self) -> Result<(), LedgerError> {
        let deadline = std::time::Instant::now() + MIGRATION_WAIT;
        let who = Candidate::this_process("migrate");
        let lease = Duration::from_secs(30);
        while self.migrations_pending().await? {
            match LeaderLease::try_acquire(self, &who, lease).await {
                Ok(held) => {
                    let migrated = self.migrate().await;
                    held.release().await;
                    migrated?;
                }
                Err(LeaseError::Held { holder, .. }) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(LedgerError::MigrationBlocked {
                            path: self.path.clone(),
                            holder: holder.to_string(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(LeaseError::Ledger(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// Opens (creating if missing) the SQLite ledger at `path` and its lease table, without
    /// migrating: a writer takes the lease first, then calls [`Ledger::migrate`].
    pub async fn connect_sqlite(path: &Path) -> Result<Self, LedgerError> {
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
        let options = db::ConnectOptions::Sqlite(options);
        Self::connect_with(display, options).await
    }

    /// Connects to a PostgreSQL ledger and its lease table, without migrating (see
    /// [`Ledger::connect_sqlite`]).
    pub async fn connect_pg(url: &PgUrl) -> Result<Self, LedgerError> {
        let display = url.to_string();
        // Notices ("relation … already exists, skipping") are noise in an operator's log.
        let options = db::ConnectOptions::Postgres(
            url.options().options([("client_min_messages", "warning")]),
        );
        let ledger = Self::connect_with(display, options).await?;
        if let Pool::Postgres(pool) = &ledger.pool {
            db::report_pg_security(pool, url).await;
        }
        Ok(ledger)
    }

    /// Opens a pool with `options` and makes sure the lease table exists (both backends).
    async fn connect_with(
        display: String,
        options: db::ConnectOptions,
    ) -> Result<Self, LedgerError> {
        let pool = options
            .pool(None)
            .await
            .map_err(|source| LedgerError::open(display.clone(), source))?;
        let ledger = Self {
            pool,
            path: display,
            options: std::sync::Arc::new(options),
            fence: None,
        };
        ledger.bootstrap_lease().await?;
        Ok(ledger)
    }

    /// Connects to the ledger wherever it lives, without migrating.
    pub async fn connect_target(target: &LedgerTarget) -> Result<Self, LedgerError> {
        match target {
            LedgerTarget::Sqlite(path) => Self::connect_sqlite(path).await,
            LedgerTarget::Postgres(url) => Self::connect_pg(url).await,
        }
    }

    /// Connects to the configured ledger without migrating (a writer migrates under its lease).
    pub async fn connect_config(config: &crate::config::LedgerConfig) -> Result<Self, LedgerError> {
        Self::connect_target(&Self::configured_target(config)?).await
    }

    /// The configured ledger's location, saying once when `ledger.url` overrides `ledger.path`.
    fn configured_target(
        config: &crate::config::LedgerConfig,
    ) -> Result<LedgerTarget, LedgerError> {
        let target = LedgerTarget::from_config(config).map_err(|e| LedgerError::Open {
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
        Ok(target)
    }

    /// Whether embedded migrations have not all been applied yet.
    pub async fn migrations_pending(&self) -> Result<bool, LedgerError> {
        let (table, applied): (Option<String>, Vec<i64>) = on_pool!(&self.pool, |p, pg| {
            let check = if pg {
                "SELECT CAST(to_regclass('_sqlx_migrations') AS TEXT)"
            } else {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            };
            let table: Option<Option<String>> = sqlx::query_scalar(check).fetch_optional(p).await?;
            let table = table.flatten();
            let applied: Vec<i64> = if table.is_some() {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(p)
                    .await?
            } else {
                Vec::new()
            };
            Ok::<_, sqlx::Error>((table, applied))
        })?;
        if table.is_none() {
            return Ok(true);
        }
        Ok(self
            .migrator()
            .iter()
            .any(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version)))
    }

    fn migrator(&self) -> sqlx::migrate::Migrator {
        match self.pool {
            Pool::Sqlite(_) => sqlx::migrate!("./migrations/sqlite"),
            Pool::Postgres(_) => sqlx::migrate!("./migrations/postgres"),
        }
    }

    /// Applies pending migrations. Call only while holding the writer lease.
    pub async fn migrate(&self) -> Result<(), LedgerError> {
        let migrator = self.migrator();
        on_pool!(&self.pool, |p| migrator.run(p).await).map_err(|source| LedgerError::Migrate {
            path: self.path.clone(),
            source,
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
        Self::open_target(&Self::configured_target(config)?).await
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
    /// Connections still out get [`CLOSE_WAIT`] to come back; then the pool is let go without
    /// them (see there).
    pub async fn close(&self) {
        let (size, idle) = match &self.pool {
            Pool::Sqlite(pool) => {
                let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(pool)
                    .await;
                let closed = tokio::time::timeout(CLOSE_WAIT, pool.close()).await;
                if closed.is_ok() {
                    return;
                }
                (pool.size(), pool.num_idle())
            }
            Pool::Postgres(pool) => {
                let closed = tokio::time::timeout(CLOSE_WAIT, pool.close()).await;
                if closed.is_ok() {
                    return;
                }
                (pool.size(), pool.num_idle())
            }
        };
        tracing::warn!(
            event = "ledger_close_slow",
            ledger = %self.path,
            connections = size,
            idle,
            wait_ms = CLOSE_WAIT.as_millis() as u64,
            "a ledger connection did not come back to its pool in time; closing without it"
        );
    }
}

/// How long [`Ledger::close`] waits for connections still checked out. sqlx waits for every
/// one, and a connection whose return never ends (its on-release ping waiting for an answer to
/// a statement abandoned mid-flight, as a leader's cancelled work leaves behind; sqlx issue
/// #4349) held a deposed leader's term open for good: it went on calling itself leader and
/// never stood by again. A connection that comes back later is closed by the closed pool.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_returns_though_a_connection_never_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.db")).await.unwrap();
        let Pool::Sqlite(pool) = &ledger.pool else {
            unreachable!("a file ledger")
        };
        // Checked out and never returned while the pool closes: a release that never ends.
        let held = pool.acquire().await.unwrap();
        let started = std::time::Instant::now();
        tokio::time::timeout(CLOSE_WAIT * 5, ledger.close())
            .await
            .expect("close waits for the connection forever");
        assert!(
            started.elapsed() >= CLOSE_WAIT,
            "it waited for the connection"
        );
        drop(held);
    }
}
