//! Loading the configuration at the application edge. Config reads and checks its own keys; the
//! keys it carries for modules that depend on it (the ledger's PostgreSQL URL, the REST
//! adapter's `[source.rest]` table) are checked by those modules, handed in here as
//! [`OwnerChecks`], so config never needs the ledger or a source. The checks run inside the load
//! at the same point as before: a bad `[source.rest]` table is a configuration error at load
//! (exit 2) with the same text.

use std::path::Path;

use crate::config::{Config, ConfigError, KeyRefusal, OwnerChecks, RestTableFacts};
use crate::ledger::LedgerTarget;
use crate::source::rest::RestSourceConfig;

/// The owners' checks of the keys config carries for them.
const OWNER_CHECKS: OwnerChecks = OwnerChecks {
    ledger: check_ledger,
    source_rest: check_source_rest,
};

fn check_ledger(ledger: &crate::config::LedgerConfig) -> Result<(), String> {
    LedgerTarget::from_config(ledger)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn check_source_rest(table: &toml::Table) -> Result<RestTableFacts, KeyRefusal> {
    RestSourceConfig::from_table(table)
        .map(|rest| RestTableFacts {
            timeout: rest.timeout.0,
        })
        .map_err(|e| KeyRefusal {
            key: e.key,
            reason: e.reason,
        })
}

impl Config {
    /// Loads `file` with environment overrides and validates it; no network.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like `load`, with the environment given (tests).
    pub fn load_with_env(
        file: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::load_checked(file, env, &OWNER_CHECKS)
    }
}
