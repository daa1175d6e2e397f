//! The command line as clap reads it: the commands, their flags and their defaults. These are
//! promises operators script against: add freely, rename never.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "quo-sync",
    version,
    about = "Keeps CRM contacts and Quo contacts in agreement, both ways."
)]
pub struct Cli {
    /// The TOML configuration file.
    #[arg(
        long,
        global = true,
        env = "QUO_SYNC_CONFIG",
        default_value = "config/quo-sync.toml"
    )]
    pub config: PathBuf,
    /// On a terminal: show every record's line and the span ids (-vv: debug level, -vvv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run as a service: a cycle every schedule.interval until SIGINT/SIGTERM.
    Run {
        /// Start the built-in Quo sandbox and sync into it (demo; no API key, no network).
        #[arg(long)]
        with_sandbox: bool,
        /// Lift the mass-deletion guard (sync.max_delete_fraction) for this process.
        #[arg(long)]
        allow_mass_delete: bool,
    },
    /// Run one cycle, print a summary, exit (3 when records were quarantined or the
    /// mass-deletion guard refused the cycle's deletions).
    Once {
        /// Start the built-in Quo sandbox and sync into it (demo; no API key, no network).
        #[arg(long)]
        with_sandbox: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Lift the mass-deletion guard (sync.max_delete_fraction) for this cycle.
        #[arg(long)]
        allow_mass_delete: bool,
        /// How long to wait for another writer to release the ledger (e.g. `30s`); exit 4 after.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Show what a cycle would do, sending no writes.
    Plan {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Plan against the built-in Quo sandbox.
        #[arg(long)]
        with_sandbox: bool,
    },
    /// Summarise the ledger.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration (no network) and exit 0, or 2 naming the problem.
    CheckConfig,
    /// Recent runs with their counts and durations.
    Runs {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and act on quarantined records.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Conflicts recorded by the three-way merge, newest first.
    Conflicts {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare Quo, the ledger and the CRM; `--repair` adopts orphans and rebuilds lost ids.
    Reconcile {
        /// Adopt orphans by externalId and relink; never deletes a contact.
        #[arg(long)]
        repair: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How long to wait for another writer to release the ledger (e.g. `30s`); exit 4 after.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Ledger maintenance: `ledger copy --to <postgres-url | sqlite-path>`.
    Ledger {
        #[command(subcommand)]
        action: LedgerAction,
    },
    /// Serve the Quo sandbox: a local, faithful Quo API for tests and demos.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: SocketAddr,
        /// The API key the sandbox accepts.
        #[arg(long, default_value = "sandbox-key")]
        api_key: String,
        /// Requests per second per key before 429 (0 = unlimited).
        #[arg(long, default_value_t = 10)]
        requests_per_second: u32,
        /// PATCH array semantics: merge or replace.
        #[arg(long, default_value = "merge")]
        patch_mode: String,
        /// Added latency per request, milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
}

#[derive(Subcommand)]
pub enum LedgerAction {
    /// Copy the configured ledger into a new, empty one (SQLite <-> PostgreSQL), checking the
    /// row count of every table.
    Copy {
        /// `postgres://user@host:port/db` (password from the URL or PGPASSWORD) or an SQLite path.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
pub enum QuarantineAction {
    /// List quarantined records (add --all for discarded ones too).
    List {
        /// Include discarded entries.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one entry with its raw values.
    Show {
        /// The external id (or `@<location>` for rows without one).
        id: String,
    },
    /// Retry now: run a cycle that re-maps these records even if unchanged.
    Retry {
        /// The external id.
        id: Option<String>,
        /// Every quarantined record.
        #[arg(long)]
        all: bool,
        /// How long to wait for another writer to release the ledger (e.g. `30s`); exit 4 after.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Stop counting an entry as needing attention (it is still retried each cycle).
    Discard {
        /// The external id (or `@<location>`).
        id: String,
        /// Confirm.
        #[arg(long)]
        yes: bool,
        /// How long to wait for another writer to release the ledger (e.g. `30s`); exit 4 after.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
}
