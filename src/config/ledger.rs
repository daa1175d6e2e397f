//! `[ledger]`: where the product's memory lives (a SQLite file, or PostgreSQL for a fleet).
//!
//! The ledger reads it (`LedgerTarget::from_config`); config only carries the keys.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::print;

/// `[ledger]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// SQLite file, created if missing (ignored when `url` is set).
    pub path: PathBuf,
    /// PostgreSQL URL (`postgres://user:password@host:5432/db`); wins over `path`.
    #[serde(serialize_with = "print::database_url")]
    pub url: Option<SecretString>,
    /// A file holding the PostgreSQL URL (Docker/Kubernetes secrets).
    pub url_file: Option<PathBuf>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("quo-sync.db"),
            url: None,
            url_file: None,
        }
    }
}
