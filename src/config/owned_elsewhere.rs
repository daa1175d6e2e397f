//! Keys config carries but whose meaning belongs to a module that itself depends on config: the
//! ledger's PostgreSQL URL (`[ledger] url`) and the REST adapter's `[source.rest]` table.
//!
//! Config keeps them as plain values and asks their owners to check them through
//! [`OwnerChecks`], handed in where the configuration is loaded (`src/app/load_config.rs`), so
//! the arrows run one way: the ledger and the sources need config; config needs neither. The
//! checks still run inside the load, at the same point as every other key, with the same text.

use std::time::Duration;

use super::LedgerConfig;

/// Why a key of a table another module owns cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRefusal {
    /// The key below the table (`auth.token_env`), or empty for the table itself.
    pub key: String,
    /// What is wrong and what was expected.
    pub reason: String,
}

/// What the load needs to know of a usable `[source.rest]` table (the lease is checked against
/// its request timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestTableFacts {
    /// `source.rest.timeout`.
    pub timeout: Duration,
}

/// The owners' checks of the keys config carries for them.
#[derive(Debug, Clone, Copy)]
pub struct OwnerChecks {
    /// `[ledger]`: where the ledger lives can be worked out (a `url` that parses); the error's
    /// text names what is wrong without the password.
    pub ledger: fn(&LedgerConfig) -> Result<(), String>,
    /// `[source.rest]`: the whole table parses and validates.
    pub source_rest: fn(&toml::Table) -> Result<RestTableFacts, KeyRefusal>,
}
