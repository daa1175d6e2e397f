//! The `quo-sync` binary: argument parsing and exit codes; everything else is in the library.
//!
//! Exit codes: 0 success; 2 configuration or usage error; 3 the cycle finished but some records
//! were quarantined; 4 another process holds the ledger's writer lease (a one-shot writer that
//! could not get it within `--wait`); 1 anything else.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secrecy::SecretString;

use quo_sync::app::{self, AppError};
use quo_sync::config::Config;
use quo_sync::ops;
use quo_sync::sandbox::{PatchMode, SandboxConfig, SandboxHandle};
use quo_sync::sync::{Mode, plan::render_table};

/// mimalloc: rows are allocated on the reader thread and freed on the planner's, which glibc's
/// per-thread arenas handle slowly (measured: about a third of a million-row cycle).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_QUARANTINED: u8 = 3;
const EXIT_LEASE_HELD: u8 = 4;
/// How long `run` waits for in-flight work after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

#[derive(Parser)]
#[command(
    name = "quo-sync",
    version,
    about = "Keeps CRM contacts and Quo contacts in agreement, both ways."
)]
struct Cli {
    /// The TOML configuration file.
    #[arg(
        long,
        global = true,
        env = "QUO_SYNC_CONFIG",
        default_value = "config/quo-sync.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
enum LedgerAction {
    /// Copy the configured ledger into a new, empty one (SQLite <-> PostgreSQL), checking the
    /// row count of every table.
    Copy {
        /// `postgres://user@host:port/db` (password from the URL or PGPASSWORD) or an SQLite path.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_CONFIG } else { 0 });
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        match dispatch(cli).await {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                if error
                    .downcast_ref::<AppError>()
                    .is_some_and(AppError::is_lease_held)
                {
                    eprintln!(
                        "quo-sync: {} (wait with --wait 30s, or stop that process)",
                        error_chain(&error)
                    );
                    return ExitCode::from(EXIT_LEASE_HELD);
                }
                let config_error = error
                    .downcast_ref::<AppError>()
                    .is_some_and(AppError::is_config)
                    || error
                        .downcast_ref::<quo_sync::config::ConfigError>()
                        .is_some();
                eprintln!("quo-sync: error: {}", error_chain(&error));
                ExitCode::from(if config_error {
                    EXIT_CONFIG
                } else {
                    EXIT_FAILURE
                })
            }
        }
    })
}

/// The error and its causes joined by `: `, skipping a cause whose text the message before it
/// already includes (error types that embed their source would otherwise print it twice).
fn error_chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// Points the config at a fresh in-process sandbox with a throwaway ledger.
async fn attach_sandbox(
    config: &mut Config,
) -> anyhow::Result<(SandboxHandle, tempfile_dir::TempDir)> {
    let sandbox = SandboxHandle::start(SandboxConfig::default())
        .await
        .context("starting the sandbox")?;
    config.quo.base_url = sandbox.base_url();
    config.quo.api_key = Some(SecretString::from(sandbox.api_key().to_string()));
    let dir = tempfile_dir::TempDir::new()?;
    config.ledger.path = dir.path().join("quo-sync.db");
    config.ledger.url = None;
    // Work on a copy: a demo must never rewrite the operator's CSV.
    if let Some(csv) = config
        .source
        .path
        .clone()
        .filter(|_| config.source.kind == quo_sync::config::SourceKind::Csv)
    {
        let copy = dir.path().join(
            csv.file_name()
                .unwrap_or_else(|| std::ffi::OsStr::new("contacts.csv")),
        );
        std::fs::copy(&csv, &copy).with_context(|| format!("copying {}", csv.display()))?;
        config.source.path = Some(copy);
    }
    tracing::info!(event = "sandbox_started", base_url = %sandbox.base_url(), ledger = %config.ledger.path.display(), "syncing into the built-in Quo sandbox with a throwaway ledger");
    Ok((sandbox, dir))
}

async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::CheckConfig => {
            let config = load_config(&cli.config)?;
            println!(
                "{}: OK ({}, ledger {}, Quo {}, {} req/s, API key {})",
                cli.config.display(),
                config.describe_source(),
                config
                    .ledger
                    .target()
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                config.quo.base_url,
                config.quo.requests_per_second,
                if config.quo.api_key.is_some() {
                    "set"
                } else {
                    "NOT set (needed by run, once, plan)"
                }
            );
            Ok(0)
        }
        Command::Sandbox {
            listen,
            api_key,
            requests_per_second,
            patch_mode,
            latency_ms,
        } => {
            quo_sync::telemetry::init(quo_sync::config::LogFormat::Json, "info");
            let patch_mode = match patch_mode.as_str() {
                "merge" => PatchMode::Merge,
                "replace" => PatchMode::Replace,
                other => anyhow::bail!(AppError::Config(quo_sync::config::ConfigError::BadValue {
                    file: "(command line)".into(),
                    key: "--patch-mode".into(),
                    reason: format!("expected merge or replace, got {other:?}"),
                })),
            };
            let config = SandboxConfig {
                api_key,
                requests_per_second,
                patch_mode,
                latency: std::time::Duration::from_millis(latency_ms),
                ..SandboxConfig::default()
            };
            let sandbox = SandboxHandle::start_on(config, listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            eprintln!(
                "Quo sandbox listening on {} (Authorization: {})",
                sandbox.base_url(),
                sandbox.api_key()
            );
            let cancel = app::shutdown_token();
            cancel.cancelled().await;
            sandbox.shutdown().await;
            Ok(0)
        }
        Command::Status { json } => {
            let ledger = open_ledger(&cli.config).await?;
            let status = quo_sync::ops::status(&ledger).await?;
            let writer = ledger.lease_holder().await?;
            if json {
                let mut value = serde_json::to_value(&status)?;
                value["writer"] = serde_json::to_value(&writer)?;
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", status.render());
                println!("{}", render_writer(writer.as_ref()));
            }
            Ok(0)
        }
        Command::Runs { limit, json } => {
            let ledger = open_ledger(&cli.config).await?;
            let runs = ledger.recent_runs(limit).await?;
            emit(json, &runs, |r| ops::render_runs(r))?;
            Ok(0)
        }
        Command::Conflicts { limit, json } => {
            let ledger = open_ledger(&cli.config).await?;
            let conflicts = ledger.conflicts(limit).await?;
            emit(json, &conflicts, |c| ops::render_conflicts(c))?;
            Ok(0)
        }
        Command::Quarantine { action } => quarantine(&cli.config, action).await,
        Command::Ledger {
            action: LedgerAction::Copy { to },
        } => {
            let target = quo_sync::ledger::LedgerTarget::parse(&to)?;
            let source = open_ledger(&cli.config).await?;
            let target = quo_sync::ledger::Ledger::open_target(&target).await?;
            let report = source.copy_to(&target).await;
            source.close().await;
            target.close().await;
            let report = report?;
            println!("copied ledger {} -> {}", source.path(), report.target);
            for (table, rows) in &report.tables {
                println!("  {table:<12} {rows:>9} rows");
            }
            println!("row counts checked: every table matches the source");
            Ok(0)
        }
        Command::Reconcile { repair, json, wait } => {
            let config = load_config(&cli.config)?;
            quo_sync::telemetry::init(config.log.format, "warn");
            // Only --repair writes; a plain comparison is a read and needs no lease.
            let writer = if repair {
                Some(app::acquire_writer(&config, "reconcile", wait, app::shutdown_token()).await?)
            } else {
                None
            };
            let ctx = match &writer {
                Some(w) => {
                    app::build_context_on(&config, "reconcile", w.cancel.clone(), w.ledger.clone())?
                }
                None => {
                    app::build_context(
                        &config,
                        "reconcile",
                        tokio_util::sync::CancellationToken::new(),
                    )
                    .await?
                }
            };
            let spinner = ops::progress::progress_bar("reconciling");
            let report = quo_sync::ops::reconcile::reconcile(
                &ctx.ledger,
                &ctx.client,
                &ctx.source,
                &config.mapping,
                repair,
            )
            .await?;
            if let Some(bar) = spinner {
                bar.finish_and_clear();
            }
            match writer {
                Some(w) => w.release().await,
                None => ctx.ledger.close().await,
            }
            emit(json, &report, |r| r.render())?;
            Ok(0)
        }
        Command::Run {
            with_sandbox,
            allow_mass_delete,
        } => {
            let mut config = load_config(&cli.config)?;
            quo_sync::telemetry::init(config.log.format, &config.log.level);
            let _sandbox = if with_sandbox {
                Some(attach_sandbox(&mut config).await?)
            } else {
                None
            };
            let cancel = app::shutdown_token();
            let metrics = quo_sync::ops::http::install_metrics();
            // Checked before standing by: a bad API key should fail now, not at takeover.
            app::build_client(&config)?;
            // In-flight work gets a grace period after SIGTERM; what is cut short is safe
            // (intents are committed before POSTs and resolved by lookup on the next start).
            tokio::select! {
                result = app::run_replica(&config, cancel.clone(), metrics, allow_mass_delete) => result?,
                _ = async {
                    cancel.cancelled().await;
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                } => {
                    tracing::warn!(event = "shutdown_forced", grace_s = SHUTDOWN_GRACE.as_secs(), "in-flight work did not finish in time; exiting (interrupted creates are resolved on the next start)");
                }
            }
            Ok(0)
        }
        Command::Once {
            with_sandbox,
            json,
            allow_mass_delete,
            wait,
        } => {
            let mut config = load_config(&cli.config)?;
            quo_sync::telemetry::init(config.log.format, &config.log.level);
            let _sandbox = if with_sandbox {
                Some(attach_sandbox(&mut config).await?)
            } else {
                None
            };
            let writer = app::acquire_writer(&config, "once", wait, app::shutdown_token()).await?;
            let mut ctx = app::build_context_on(
                &config,
                "once",
                writer.cancel.clone(),
                writer.ledger.clone(),
            )?;
            ctx.settings.allow_mass_delete = allow_mass_delete;
            let progress = ops::progress::watch_progress(&ctx);
            let report = app::once(&ctx, Mode::Apply).await;
            progress.abort();
            writer.release().await;
            let report = report?;
            if json {
                let mut value = serde_json::to_value(&report)?;
                value["peak_rss_mib"] = serde_json::json!(quo_sync::telemetry::peak_rss_mib());
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else if std::io::stdout().is_terminal() || with_sandbox {
                let c = &report.counts;
                println!(
                    "created {}  updated {}  unchanged {}  deleted {}  quarantined {}  requests {}  429s {}  in {:.1}s",
                    c.created,
                    c.updated,
                    c.unchanged,
                    c.deleted,
                    c.quarantined,
                    c.requests,
                    c.rate_limited,
                    report.duration_ms as f64 / 1000.0
                );
            }
            Ok(
                if report.counts.quarantined > 0 || report.mass_delete_refused {
                    EXIT_QUARANTINED
                } else {
                    0
                },
            )
        }
        Command::Plan { json, with_sandbox } => {
            let mut config = load_config(&cli.config)?;
            quo_sync::telemetry::init(config.log.format, "warn");
            let _sandbox = if with_sandbox {
                Some(attach_sandbox(&mut config).await?)
            } else {
                None
            };
            let ctx =
                app::build_context(&config, "plan", tokio_util::sync::CancellationToken::new())
                    .await?;
            let progress = ops::progress::watch_progress(&ctx);
            let report = app::once(&ctx, Mode::DryRun).await;
            progress.abort();
            let report = report?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "counts": report.counts, "operations": report.operations })
                    )?
                );
            } else {
                let c = &report.counts;
                println!(
                    "plan: create {}  update {}  delete {}  unchanged {}  quarantine {}",
                    c.created, c.updated, c.deleted, c.unchanged, c.quarantined
                );
                print!("{}", render_table(&report.operations));
            }
            Ok(0)
        }
    }
}

/// The `writer` line of `status`: who holds the ledger's writer lease.
fn render_writer(holder: Option<&quo_sync::ledger::LeaseHolder>) -> String {
    match holder {
        Some(h) if h.live => format!(
            "writer        leader {} pid {} ({}, epoch {}, since {}, lease until {})",
            h.host, h.pid, h.command, h.epoch, h.since, h.expires
        ),
        Some(h) => format!(
            "writer        none (last: {} pid {}, {}, epoch {}, until {})",
            h.host, h.pid, h.command, h.epoch, h.expires
        ),
        None => "writer        none yet".to_string(),
    }
}

/// Prints `value` as pretty JSON, or the text `table` renders from it.
fn emit<T: serde::Serialize>(
    json: bool,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", table(value));
    }
    Ok(())
}

async fn open_ledger(config: &std::path::Path) -> anyhow::Result<quo_sync::ledger::Ledger> {
    let config = load_config(config)?;
    Ok(quo_sync::ledger::Ledger::open_config(&config.ledger).await?)
}

async fn quarantine(config_path: &std::path::Path, action: QuarantineAction) -> anyhow::Result<u8> {
    match action {
        QuarantineAction::List { all, json } => {
            let ledger = open_ledger(config_path).await?;
            let entries = if all {
                ledger.quarantined_all().await?
            } else {
                ledger.quarantined().await?
            };
            emit(json, &entries, |e| ops::render_quarantine(e))?;
            Ok(0)
        }
        QuarantineAction::Show { id } => {
            let ledger = open_ledger(config_path).await?;
            match ledger.quarantined_one(&id).await? {
                Some(entry) => {
                    println!("{}", serde_json::to_string_pretty(&entry)?);
                    Ok(0)
                }
                None => anyhow::bail!("no quarantined record {id:?}"),
            }
        }
        QuarantineAction::Discard { id, yes, wait } => {
            if !yes {
                eprintln!("quo-sync: discarding {id:?} hides it from status; add --yes to confirm");
                return Ok(EXIT_CONFIG);
            }
            let config = load_config(config_path)?;
            quo_sync::telemetry::init(config.log.format, &config.log.level);
            let writer =
                app::acquire_writer(&config, "quarantine", wait, app::shutdown_token()).await?;
            let discarded = ops::discard_quarantined(&writer.ledger, &id).await;
            writer.release().await;
            discarded?;
            println!("discarded {id}");
            Ok(0)
        }
        QuarantineAction::Retry { id, all, wait } => {
            let config = load_config(config_path)?;
            quo_sync::telemetry::init(config.log.format, &config.log.level);
            let writer =
                app::acquire_writer(&config, "quarantine", wait, app::shutdown_token()).await?;
            let outcome = retry_quarantined(&config, &writer, id, all).await;
            writer.release().await;
            outcome
        }
    }
}

/// `quarantine retry`, under the writer lease: marks the records and runs a cycle.
async fn retry_quarantined(
    config: &Config,
    writer: &app::Writer,
    id: Option<String>,
    all: bool,
) -> anyhow::Result<u8> {
    let ledger = &writer.ledger;
    let keys: Vec<String> = match (id, all) {
        (Some(id), false) => vec![id],
        (None, true) => ledger
            .quarantined_all()
            .await?
            .into_iter()
            .map(|q| q.key)
            .collect(),
        _ => {
            eprintln!("quo-sync: name one record or pass --all");
            return Ok(EXIT_CONFIG);
        }
    };
    if keys.is_empty() {
        println!("nothing in quarantine");
        return Ok(0);
    }
    ops::retry_quarantined(ledger, &keys).await?;
    let ctx = app::build_context_on(config, "once", writer.cancel.clone(), ledger.clone())?;
    app::once(&ctx, Mode::Apply).await?;
    let mut still = 0usize;
    for key in &keys {
        let stuck = ledger.quarantined_one(key).await?.is_some();
        still += usize::from(stuck);
        println!(
            "{key}: {}",
            if stuck { "still quarantined" } else { "synced" }
        );
    }
    // Judged by the records asked about: other rows still quarantined do not make a
    // successful retry look like a failure (`status` lists those).
    Ok(if still > 0 { EXIT_QUARANTINED } else { 0 })
}

/// A temp folder that removes itself (a thin alias so the binary does not depend on dev crates).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    /// A folder under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        /// Creates a fresh folder.
        pub fn new() -> std::io::Result<Self> {
            let path =
                std::env::temp_dir().join(format!("quo-sync-sandbox-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&path)?;
            Ok(Self(path))
        }

        /// Its path.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
