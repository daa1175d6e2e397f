//! The command line as clap reads it: the commands, their flags and their defaults. These are
//! promises operators script against: add freely, rename never.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Where the configuration is looked for when neither `--config` nor `QUO_SYNC_CONFIG` names
/// it, in this order (`config/quo-sync.toml` is the repository's sample, for the quick start).
pub const CONFIG_LOOKUP: &[&str] = &[
    "quo-sync.toml",
    "config/quo-sync.toml",
    "/etc/quo-sync/quo-sync.toml",
];

/// Shown under `--help`: examples, exit codes, where the configuration is read from.
const AFTER_HELP: &str = "\
Examples:
  quo-sync once --with-sandbox              one cycle of the sample against the built-in sandbox
  quo-sync --config my.toml check-config --print
  quo-sync --config my.toml plan            what a cycle would do; sends no writes
  quo-sync --config my.toml run             the service (SIGTERM/SIGINT/SIGHUP stop it cleanly)
  quo-sync ledger backup --to /backup/quo-sync.db
  quo-sync completions bash > /etc/bash_completion.d/quo-sync

Exit codes:
  0  success
  1  anything else (network, ledger, I/O); run: a credential that worked, then was refused
     for longer than its grace (quo.auth_grace, source.rest.auth_grace)
  2  configuration or usage error, a TLS setup that fails, a credential Quo or the CRM refused
     before this process saw it accepted (one-shot commands: any refusal)
  3  the cycle finished but records were quarantined, or a mass deletion was refused
  4  another process holds the ledger's writer lease (one-shot writers, after --wait)

Configuration, the first that applies:
  1. --config PATH
  2. QUO_SYNC_CONFIG
  3. ./quo-sync.toml
  4. ./config/quo-sync.toml (the repository's sample)
  5. /etc/quo-sync/quo-sync.toml
Relative paths inside it are read beside the file. Every key can be overridden as
QUO_SYNC__<SECTION>__<KEY>. Logs: RUST_LOG wins over log.level.";

#[derive(Parser)]
#[command(
    name = "quo-sync",
    version = quo_sync::VERSION,
    about = "Keeps CRM contacts and Quo contacts in agreement, both ways.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The TOML configuration file (default: see "Configuration" below).
    #[arg(long, global = true, env = "QUO_SYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// On a terminal: show every record's line and the span ids (-vv: debug level, -vvv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The configuration file: `--config`/`QUO_SYNC_CONFIG`, else the first of
    /// [`CONFIG_LOOKUP`] that exists.
    pub fn config_path(&self) -> Result<PathBuf, quo_sync::config::ConfigError> {
        if let Some(path) = &self.config {
            return Ok(path.clone());
        }
        CONFIG_LOOKUP
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| quo_sync::config::ConfigError::Unreadable {
                file: CONFIG_LOOKUP.join(", "),
                reason: "no configuration file found: pass --config PATH or set QUO_SYNC_CONFIG"
                    .into(),
            })
    }
}

/// PATCH array semantics of the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PatchModeArg {
    /// Items sent are merged into the contact's arrays.
    Merge,
    /// Arrays sent replace the contact's.
    Replace,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run as a service: a cycle every schedule.interval until SIGINT/SIGTERM.
    Run {
        /// Start the built-in Quo sandbox and sync into it (demo; no API key, no network).
        #[arg(long)]
        with_sandbox: bool,
        /// With --with-sandbox: seed the sandbox with the people in this CSV first, as a
        /// workspace that already holds contacts (format: `quo-sync sandbox --help`).
        #[arg(long, value_name = "CSV", requires = "with_sandbox")]
        seed_existing: Option<PathBuf>,
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
        /// With --with-sandbox: seed the sandbox with the people in this CSV first, as a
        /// workspace that already holds contacts (format: `quo-sync sandbox --help`).
        #[arg(long, value_name = "CSV", requires = "with_sandbox")]
        seed_existing: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Lift the mass-deletion guard (sync.max_delete_fraction) for this cycle.
        #[arg(long)]
        allow_mass_delete: bool,
        /// With reverse.create_in_crm: also make CRM records of the contacts made in the Quo app
        /// before quo-sync's first cycle (by default only later ones are).
        #[arg(long)]
        export_existing: bool,
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
        /// With --with-sandbox: seed the sandbox with the people in this CSV first, as a
        /// workspace that already holds contacts (format: `quo-sync sandbox --help`).
        #[arg(long, value_name = "CSV", requires = "with_sandbox")]
        seed_existing: Option<PathBuf>,
    },
    /// Summarise the ledger.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration (no network) and exit 0, or 2 naming the problem.
    CheckConfig {
        /// Print the effective configuration (defaults, environment overrides and resolved
        /// paths applied) as TOML, secrets redacted.
        #[arg(long)]
        print: bool,
    },
    /// Ask the running service's `/readyz` (or `--path`) and exit 0 when it answers 200: for a
    /// container's HEALTHCHECK (the image has no curl).
    Healthcheck {
        /// The service's address; default `service.listen` of the configuration (0.0.0.0 and ::
        /// are asked on loopback).
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Which endpoint.
        #[arg(long, default_value = "/readyz")]
        path: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `quo-sync man > quo-sync.1`.
    Man,
    /// Pause syncing on every replica: no writes to Quo or the CRM until `resume` (webhooks
    /// are still received and kept, and applied after).
    Pause {
        /// End the pause by itself after this long (e.g. `1h`, `30m`).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// End a pause; the leader starts a cycle at once.
    Resume,
    /// Ask the leader, wherever it runs, to start a cycle now (within a second).
    RunNow,
    /// Recent runs with their counts and durations.
    Runs {
        /// How many (at least 1).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..))]
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
        /// How many (at least 1).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Answer a record held before create: adopt a contact already in Quo for it
    /// (`link <external-id> <quo-contact-id>`), create a new one (`--create`), or give back the
    /// contact it adopted (`--undo`: its source, externalId and replaced values; the record is
    /// held again). Applied at once by a cycle; exit 3 when the record is still held.
    Link {
        /// The record's CRM id.
        external_id: String,
        /// The Quo contact to adopt for it.
        #[arg(required_unless_present_any = ["create", "undo"], conflicts_with_all = ["create", "undo"])]
        quo_contact_id: Option<String>,
        /// Create a new contact for the record, whatever it matches.
        #[arg(long, conflicts_with = "undo")]
        create: bool,
        /// Give back the contact the record adopted, and hold the record.
        #[arg(long)]
        undo: bool,
        /// How long to wait for another writer to release the ledger (e.g. `30s`); exit 4 after.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
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
    /// Ledger maintenance: `ledger copy --to <postgres-url | sqlite-path>`, `ledger backup --to FILE`.
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
        /// PATCH array semantics.
        #[arg(long, value_enum, default_value_t = PatchModeArg::Merge)]
        patch_mode: PatchModeArg,
        /// Added latency per request, milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Start with the people in this CSV already in the workspace, as a team has them
        /// before quo-sync: columns first_name, last_name, company, role, email, work_email,
        /// phone, mobile, notes, and `source` (empty: made in the Quo app; `zapier` or another
        /// label: another integration; hubspot, salesforce, google-people, outlook: a native
        /// integration, read-only through the API) and `external_id`; other columns are ignored.
        #[arg(long, value_name = "CSV")]
        seed_existing: Option<PathBuf>,
        /// Generate calls and texts against the contacts with phone numbers, e.g. `30/min`.
        #[arg(long, value_parser = per_minute)]
        simulate_calls: Option<u32>,
    },
    /// quo-sync's own Quo webhooks (`reverse.public_url`): list, register or repair, remove.
    Webhooks {
        #[command(subcommand)]
        action: WebhooksAction,
    },
}

/// `30/min` (or `30`): a rate per minute.
fn per_minute(text: &str) -> Result<u32, String> {
    let number = text.trim().trim_end_matches("/min").trim();
    number
        .parse::<u32>()
        .map_err(|_| format!("expected a rate like `30/min`, got {text:?}"))
}

#[derive(Subcommand)]
pub enum WebhooksAction {
    /// Quo's webhook subscriptions, and which ones quo-sync registered.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register the webhooks quo-sync needs, or repair them (re-enable, reset events, recreate).
    Ensure {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How long to wait for another writer to release the ledger (e.g. `30s`); exit 4 after.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Remove quo-sync's webhooks from Quo (and their keys from the ledger).
    Remove {
        /// `activity` or `contacts`; both when absent.
        purpose: Option<String>,
        /// How long to wait for another writer to release the ledger (e.g. `30s`); exit 4 after.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
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
    /// Write a consistent copy of the SQLite ledger to a new file (`VACUUM INTO`), safe while
    /// the service runs; for a PostgreSQL ledger use `pg_dump`.
    Backup {
        /// The new file (must not exist).
        #[arg(long)]
        to: PathBuf,
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
