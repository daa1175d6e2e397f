//! `[ledger]`: where the product's memory lives (a SQLite file, or PostgreSQL for a fleet).

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
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

impl LedgerConfig {
    /// Where the ledger lives: PostgreSQL when `url` is set, else the SQLite file.
    pub fn target(&self) -> Result<crate::ledger::LedgerTarget, crate::ledger::BadPgUrl> {
        match &self.url {
            Some(url) => Ok(crate::ledger::LedgerTarget::Postgres(
                crate::ledger::PgUrl::parse(url.expose_secret())?,
            )),
            None => Ok(crate::ledger::LedgerTarget::Sqlite(self.path.clone())),
        }
    }
}
