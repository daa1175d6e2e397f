//! `quo-sync ledger backup --to FILE`: a consistent copy of the SQLite ledger while the service
//! keeps running.
//!
//! `VACUUM INTO` reads one snapshot of the database (a read transaction: in WAL mode the
//! leader's writes go on meanwhile) and writes it, compacted, to a new file. The copy is then
//! opened on its own and checked (`PRAGMA integrity_check`, the record count) before it is
//! reported, so a backup that says it worked can be restored. A PostgreSQL ledger is backed up
//! with the database's own tool, `pg_dump`.

use std::path::Path;

use sqlx::Connection;

use super::db::Pool;
use super::{Ledger, LedgerError};

/// What a finished backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// Rows in `records` in the copy.
    pub records: i64,
    /// The copy's size.
    pub bytes: u64,
}

/// Why a backup was not made.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The ledger is PostgreSQL.
    #[error(
        "the ledger is PostgreSQL ({ledger}): back it up with pg_dump, e.g. `pg_dump --format=custom --file=quo-sync.dump '{ledger}'`"
    )]
    Postgres {
        /// The URL without its password.
        ledger: String,
    },
    /// The target exists: a backup never overwrites.
    #[error("{0} already exists: a backup is written to a new file")]
    TargetExists(String),
    /// The copy failed or does not check out.
    #[error("backup to {target}: {reason}")]
    Failed {
        /// The file.
        target: String,
        /// Why.
        reason: String,
    },
    /// The ledger could not be read.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl Ledger {
    /// Writes a consistent, checked copy of this SQLite ledger to `target` (a new file).
    pub async fn backup_to(&self, target: &Path) -> Result<BackupReport, BackupError> {
        let Pool::Sqlite(pool) = &self.pool else {
            return Err(BackupError::Postgres {
                ledger: self.path.clone(),
            });
        };
        let shown = target.display().to_string();
        let failed = |reason: String| BackupError::Failed {
            target: shown.clone(),
            reason,
        };
        if target.exists() {
            return Err(BackupError::TargetExists(shown.clone()));
        }
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| failed(e.to_string()))?;
        }
        let name = target
            .to_str()
            .ok_or_else(|| failed("the path is not UTF-8".into()))?;
        sqlx::query("VACUUM INTO $1")
            .bind(name)
            .execute(pool)
            .await
            .map_err(|e| failed(e.to_string()))?;
        // Check the copy on a connection of its own, read-only.
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(target)
            .read_only(true);
        let mut copy = sqlx::SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut copy)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if integrity != "ok" {
            return Err(failed(format!("integrity check: {integrity}")));
        }
        let records: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records")
            .fetch_one(&mut copy)
            .await
            .map_err(|e| failed(e.to_string()))?;
        copy.close().await.ok();
        let bytes = std::fs::metadata(target)
            .map_err(|e| failed(e.to_string()))?
            .len();
        Ok(BackupReport { records, bytes })
    }
}
