//! The binary's command line (not part of the library): the arguments (`args.rs`), what each
//! command does (`commands.rs`), the commands that read or copy the ledger (`ledger.rs`), the
//! quarantine commands (`quarantine.rs`) and the webhook registration commands (`webhooks.rs`).
//! The library does the work; this layer turns its results into output and exit codes.

mod args;
mod commands;
mod control;
mod ledger;
mod link;
mod quarantine;
mod webhooks;

pub use args::Cli;
pub use commands::dispatch;

/// Anything else went wrong.
pub const EXIT_FAILURE: u8 = 1;
/// A configuration or usage error.
pub const EXIT_CONFIG: u8 = 2;
/// The cycle finished, but records were quarantined or a mass deletion was refused.
pub const EXIT_QUARANTINED: u8 = 3;
/// Another process holds the ledger's writer lease past `--wait`.
pub const EXIT_LEASE_HELD: u8 = 4;
