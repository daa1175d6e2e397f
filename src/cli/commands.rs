//! What each command does: load the configuration, call the library, print the outcome and
//! choose the exit code.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use secrecy::SecretString;

use quo_sync::app::{self, AppError};
use quo_sync::config::Config;
use quo_sync::ops;
use quo_sync::sandbox::{PatchMode, SandboxConfig, SandboxHandle};
use quo_sync::sync::{Mode, plan::render_table};

use super::args::{Cli, Command, LedgerAction, PatchModeArg};
use super::{EXIT_FAILURE, EXIT_QUARANTINED};

/// Runs the command line's command; the exit code on success.
pub async fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    if let Some(code) = without_config(&cli.command).await? {
        return Ok(code);
    }
    let config_path = &cli.config_path()?;
    let config_path = config_path.as_path();
    let verbose = cli.verbose;
    match cli.command {
        Command::Completions { .. } | Command::Man => Ok(0),
        Command::Healthcheck {
            addr,
            path,
            timeout,
            ..
        } => healthcheck_configured(config_path, addr, &path, timeout).await,
        Command::CheckConfig { print } => check_config(config_path, print),
        Command::Pause { duration } => super::control::pause(config_path, duration).await,
        Command::Resume => super::control::resume(config_path).await,
        Command::RunNow => super::control::run_now(config_path).await,
        Command::Sandbox {
            listen,
            api_key,
            requests_per_second,
            patch_mode,
            latency_ms,
            seed_existing,
            simulate_calls,
        } => {
            let options = SandboxOptions {
                api_key,
                requests_per_second,
                patch_mode,
                latency_ms,
                seed_existing,
                simulate_calls,
            };
            sandbox(listen, options).await
        }
        Command::Webhooks { action } => super::webhooks::webhooks(config_path, action).await,
        Command::Status { json } => super::ledger::status(config_path, json).await,
        Command::Runs { limit, json } => super::ledger::runs(config_path, limit, json).await,
        Command::Conflicts { limit, json } => {
            super::ledger::conflicts(config_path, limit, json).await
        }
        Command::Quarantine { action } => super::quarantine::quarantine(config_path, action).await,
        Command::Link {
            external_id,
            quo_contact_id,
            create,
            wait,
            ..
        } => {
            let request = link_request(quo_contact_id, create);
            super::link::link(config_path, &external_id, request, wait).await
        }
        Command::Ledger {
            action: LedgerAction::Copy { to },
        } => super::ledger::copy(config_path, to).await,
        Command::Ledger {
            action: LedgerAction::Backup { to },
        } => super::ledger::backup(config_path, &to).await,
        Command::Reconcile { repair, json, wait } => {
            reconcile(config_path, repair, json, wait, verbose).await
        }
        command @ (Command::Run { .. } | Command::Once { .. } | Command::Plan { .. }) => {
            sync_command(config_path, command, verbose).await
        }
    }
}

/// The commands that need no configuration file (shell completions, the manual page, a
/// healthcheck given its address): their exit code, or `None` for every other command.
async fn without_config(command: &Command) -> anyhow::Result<Option<u8>> {
    match command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "quo-sync", &mut std::io::stdout());
            Ok(Some(0))
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            Ok(Some(0))
        }
        Command::Healthcheck {
            addr: Some(addr),
            path,
            timeout,
        } => healthcheck(*addr, path, *timeout).await.map(Some),
        _ => Ok(None),
    }
}

/// `healthcheck` without `--addr`: asks the service at the configured `service.listen`.
async fn healthcheck_configured(
    config_path: &Path,
    addr: Option<SocketAddr>,
    path: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<u8> {
    let config = load_config(config_path)?;
    let Some(listen) = addr.or(config.service.listen) else {
        anyhow::bail!(AppError::Config(quo_sync::config::ConfigError::BadValue {
            file: config_path.display().to_string(),
            key: "service.listen".into(),
            reason: "healthcheck needs the service's address: set service.listen or pass --addr"
                .into(),
        }));
    };
    healthcheck(listen, path, timeout).await
}

/// What `link` is asked to do: link to the given contact, create one, or undo the link.
fn link_request(quo_contact_id: Option<String>, create: bool) -> quo_sync::ops::link::LinkRequest {
    use quo_sync::ops::link::LinkRequest;
    match (quo_contact_id, create) {
        (Some(quo_id), _) => LinkRequest::To(quo_id),
        (None, true) => LinkRequest::Create,
        (None, false) => LinkRequest::Undo,
    }
}

/// `run`, `once` and `plan`: the commands that sync (or plan to), against the configured Quo
/// workspace or the built-in sandbox.
async fn sync_command(config_path: &Path, command: Command, verbose: u8) -> anyhow::Result<u8> {
    match command {
        Command::Run {
            with_sandbox,
            seed_existing,
            allow_mass_delete,
        } => {
            let demo = demo(with_sandbox, seed_existing);
            let session = configured(config_path, demo, None, verbose).await?;
            run(session, allow_mass_delete).await
        }
        Command::Once {
            with_sandbox,
            seed_existing,
            json,
            allow_mass_delete,
            export_existing,
            wait,
        } => {
            let demo = demo(with_sandbox, seed_existing);
            let session = configured(config_path, demo, None, verbose).await?;
            let options = OnceOptions {
                json,
                allow_mass_delete,
                export_existing,
                wait,
            };
            once(session, options).await
        }
        Command::Plan {
            json,
            with_sandbox,
            seed_existing,
        } => {
            let demo = demo(with_sandbox, seed_existing);
            let session = configured(config_path, demo, Some("warn"), verbose).await?;
            plan(session, json).await
        }
        _ => unreachable!("sync_command is given run, once or plan"),
    }
}

/// `healthcheck`: GET `path` on the service at `addr` (a wildcard address is asked on
/// loopback); 0 when it answers 200, 1 otherwise, with the answer on stdout.
async fn healthcheck(
    addr: SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<u8> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match target {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{target}/{}", path.trim_start_matches('/'));
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    match client.get(&url).send().await {
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            println!("{url}: {} {}", status.as_u16(), body.trim());
            Ok(if status.is_success() { 0 } else { EXIT_FAILURE })
        }
        Err(e) => {
            println!("{url}: unreachable ({})", e.without_url());
            Ok(EXIT_FAILURE)
        }
    }
}

/// `check-config`: loads and validates the configuration (no network); `--print` shows the
/// effective configuration, secrets redacted.
fn check_config(config_path: &Path, print: bool) -> anyhow::Result<u8> {
    let config = load_config(config_path)?;
    if print {
        println!(
            "# The effective configuration of {}: defaults filled in, QUO_SYNC__* overrides\n# applied, relative paths resolved, secrets redacted.",
            config_path.display()
        );
        print!("{}", config.to_redacted_toml()?);
        return Ok(0);
    }
    println!(
        "{}: OK ({}, ledger {}, Quo {}, {} req/s, API key {})",
        config_path.display(),
        config.describe_source(),
        quo_sync::ledger::LedgerTarget::from_config(&config.ledger)
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
    if config.source.kind == quo_sync::config::SourceKind::Csv {
        let csv =
            quo_sync::source::csv::CsvSource::new(&config.source).expect_columns(&config.mapping);
        match csv.sniff_dialect() {
            Ok(dialect) => println!("{}: {}", csv.path().display(), dialect.describe()),
            Err(e) => println!("{}: cannot tell its dialect yet: {e}", csv.path().display()),
        }
    }
    Ok(0)
}

/// `--with-sandbox [--seed-existing <csv>]`: sync into a fresh in-process sandbox, seeded with
/// the people of a CSV.
struct Demo {
    seed_existing: Option<PathBuf>,
}

fn demo(with_sandbox: bool, seed_existing: Option<PathBuf>) -> Option<Demo> {
    with_sandbox.then_some(Demo { seed_existing })
}

/// How `quo-sync sandbox` starts.
struct SandboxOptions {
    api_key: String,
    requests_per_second: u32,
    patch_mode: PatchModeArg,
    latency_ms: u64,
    simulate_calls: Option<u32>,
    seed_existing: Option<PathBuf>,
}

/// Seeds `sandbox` from the seed CSV at `path`, saying how many contacts it now holds.
fn seed_sandbox(sandbox: &SandboxHandle, path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let seeded = sandbox.seed_existing_csv(&text).map_err(|reason| {
        AppError::Config(quo_sync::config::ConfigError::BadValue {
            file: "(command line)".into(),
            key: "--seed-existing".into(),
            reason: format!("{}: {reason}", path.display()),
        })
    })?;
    tracing::info!(event = "sandbox_seeded", contacts = seeded, csv = %path.display(), "the sandbox workspace holds contacts made before quo-sync");
    Ok(())
}

/// `sandbox`: serves the Quo sandbox until SIGINT/SIGTERM.
async fn sandbox(listen: SocketAddr, options: SandboxOptions) -> anyhow::Result<u8> {
    quo_sync::telemetry::init(quo_sync::config::LogFormat::Json, "info");
    let SandboxOptions {
        api_key,
        requests_per_second,
        patch_mode,
        latency_ms,
        seed_existing,
        simulate_calls,
    } = options;
    let patch_mode = match patch_mode {
        PatchModeArg::Merge => PatchMode::Merge,
        PatchModeArg::Replace => PatchMode::Replace,
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
    if let Some(path) = &seed_existing {
        seed_sandbox(&sandbox, path)?;
    }
    eprintln!(
        "Quo sandbox listening on {} (Authorization: {})",
        sandbox.base_url(),
        sandbox.api_key()
    );
    if let Some(per_minute) = simulate_calls.filter(|n| *n > 0) {
        sandbox.simulate_activity(per_minute);
        eprintln!(
            "simulating about {per_minute} calls and texts a minute against the contacts with phone numbers"
        );
    }
    let cancel = app::shutdown_token();
    cancel.cancelled().await;
    sandbox.shutdown().await;
    Ok(0)
}

/// `reconcile`: compares Quo, the ledger and the CRM; `--repair` takes the writer lease.
async fn reconcile(
    config_path: &Path,
    repair: bool,
    json: bool,
    wait: std::time::Duration,
    verbose: u8,
) -> anyhow::Result<u8> {
    let config = load_config(config_path)?;
    quo_sync::telemetry::init_verbose(config.log.format, "warn", verbose);
    config.log_resolved_paths();
    // Only --repair writes; a plain comparison is a read and needs no lease.
    let writer = if repair {
        Some(app::acquire_writer(&config, "reconcile", wait, app::shutdown_token()).await?)
    } else {
        None
    };
    let ctx = match &writer {
        Some(w) => app::build_context_on(&config, "reconcile", w.cancel.clone(), w.ledger.clone())?,
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

/// `run`: the service, until SIGINT/SIGTERM/SIGHUP (with `service.shutdown_grace` for in-flight
/// work; a second signal exits at once). On the human view's terminal one live status line says
/// what it is doing between cycles.
async fn run(session: Session, allow_mass_delete: bool) -> anyhow::Result<u8> {
    let config = &session.config;
    let cancel = app::shutdown_token();
    let metrics = quo_sync::ops::http::install_metrics();
    // Checked before standing by: a bad API key should fail now, not at takeover.
    app::build_client(config)?;
    let status = quo_sync::ops::live::ServiceStatus::default();
    let view = session.terminal.clone().map(|terminal| {
        terminal.line(&session.syncing_line(&terminal));
        quo_sync::ops::live::show(
            terminal,
            status.clone(),
            session.setting(true),
            cancel.clone(),
        )
    });
    // In-flight work gets a grace period after SIGTERM; what is cut short is safe
    // (intents are committed before POSTs and resolved by lookup on the next start).
    let grace = config.service.shutdown_grace.0;
    let result = tokio::select! {
        result = app::run_replica_observed(config, cancel.clone(), metrics, allow_mass_delete, status) => result.map_err(anyhow::Error::from),
        _ = async {
            cancel.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(event = "shutdown_forced", grace_ms = grace.as_millis() as u64, "in-flight work did not finish within service.shutdown_grace; exiting (interrupted creates are resolved on the next start)");
            Ok(())
        }
    };
    cancel.cancel();
    if let Some(view) = view {
        let _ = view.await;
    }
    result?;
    Ok(0)
}

/// `once`'s flags.
struct OnceOptions {
    json: bool,
    allow_mass_delete: bool,
    export_existing: bool,
    wait: std::time::Duration,
}

/// `once`: one cycle under the writer lease, and its summary.
async fn once(session: Session, options: OnceOptions) -> anyhow::Result<u8> {
    let OnceOptions {
        json,
        allow_mass_delete,
        export_existing,
        wait,
    } = options;
    let config = &session.config;
    let writer = app::acquire_writer(config, "once", wait, app::shutdown_token()).await?;
    let mut ctx =
        app::build_context_on(config, "once", writer.cancel.clone(), writer.ledger.clone())?;
    ctx.settings.allow_mass_delete = allow_mass_delete;
    ctx.settings.day_one.export_existing = export_existing;
    if let Some(terminal) = &session.terminal {
        terminal.line(&session.syncing_line(terminal));
    }
    let watch = ops::progress::watch_progress(&ctx, config.quo.requests_per_second);
    let report = app::once(&ctx, Mode::Apply).await;
    let writes = watch.finish().await;
    writer.release().await;
    let report = report?;
    if let Some(pause) = &report.paused
        && session.terminal.is_none()
    {
        eprintln!(
            "{}: nothing was sent to Quo or the CRM (quo-sync resume)",
            pause.describe()
        );
    }
    let stdout_terminal = std::io::stdout().is_terminal();
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["peak_rss_mib"] = serde_json::json!(quo_sync::telemetry::peak_rss_mib());
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if let Some((terminal, pause)) = session.terminal.as_ref().zip(report.paused.as_ref()) {
        for line in ops::summary::paused_lines(terminal, pause) {
            terminal.line(&line);
        }
    } else if let Some(terminal) = &session.terminal {
        let rows = ops::summary::Rows {
            held_back: ctx.progress.held_back(),
            held_matches: ctx.progress.held_matches(),
            notices: terminal.take_notices(),
        };
        for line in
            ops::summary::outcome_lines(terminal, &report, &rows, writes, session.setting(false))
        {
            terminal.line(&line);
        }
        // The human view said it all on the terminal; a piped stdout still gets its line.
        if !stdout_terminal && session.sandbox.is_some() {
            println!("{}", summary_line(&report));
        }
    } else if stdout_terminal || session.sandbox.is_some() {
        println!("{}", summary_line(&report));
    }
    Ok(
        if report.counts.quarantined > 0 || report.counts.held > 0 || report.mass_delete_refused {
            EXIT_QUARANTINED
        } else {
            0
        },
    )
}

/// `once`'s one-line summary on stdout (`created 23  updated 0 …`). Scripts read it: new
/// counts go at the end (day one's `adopted` and `held`), never between the old ones.
fn summary_line(report: &quo_sync::sync::CycleReport) -> String {
    let c = &report.counts;
    format!(
        "created {}  updated {}  unchanged {}  deleted {}  quarantined {}  requests {}  429s {}  in {:.1}s  adopted {}  held {}",
        c.created,
        c.updated,
        c.unchanged,
        c.deleted,
        c.quarantined,
        c.requests,
        c.rate_limited,
        report.duration_ms as f64 / 1000.0,
        c.adopted,
        c.held,
    )
}

/// `plan`: what a cycle would do, sending no writes: an aligned table (coloured on a terminal)
/// with a summary line, or `--json`.
async fn plan(session: Session, json: bool) -> anyhow::Result<u8> {
    let config = &session.config;
    let ctx =
        app::build_context(config, "plan", tokio_util::sync::CancellationToken::new()).await?;
    let watch = ops::progress::watch_progress(&ctx, config.quo.requests_per_second);
    let report = app::once(&ctx, Mode::DryRun).await;
    watch.finish().await;
    let report = report?;
    let dialect = ctx.source.describe_dialect();
    if json {
        let mut out = serde_json::json!({
            "counts": report.counts,
            "operations": report.operations,
            "peak_rss_mib": quo_sync::telemetry::peak_rss_mib(),
        });
        if let Some(dialect) = &dialect {
            out["source_dialect"] = serde_json::json!(dialect);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if let Some(dialect) = &dialect {
            // The source as configured (with --with-sandbox, ctx reads a throwaway copy).
            println!("source: {} read as {dialect}", session.source);
        }
        let colour = std::io::stdout().is_terminal() && console::colors_enabled();
        print!("{}", render_table(&report.operations, colour));
        if config.sync.filter.is_some() || config.sync.mode != quo_sync::config::SyncMode::Upsert {
            println!("{}", scope_line(&report.counts, config.sync.mode));
        }
        if let Some(terminal) = &session.terminal {
            let notices = terminal.take_notices();
            if !notices.is_empty() {
                for notice in notices.iter().take(ops::summary::MAX_ROWS) {
                    terminal.line(&format!(
                        "{} {}",
                        ops::summary::head(terminal, "Warning", console::Style::new().yellow()),
                        ops::summary::row_line(
                            notice.location.as_deref(),
                            notice.external_id.as_deref(),
                            notice.field.as_deref(),
                            notice.value.as_deref(),
                            &notice.message
                        )
                    ));
                }
            }
        }
    }
    Ok(0)
}

/// `scope: in scope 12, out of scope 28 (3 leave scope), skipped by mode 0 (upsert)`.
fn scope_line(c: &quo_sync::ledger::RunCounts, mode: quo_sync::config::SyncMode) -> String {
    format!(
        "scope: in scope {}, out of scope {} ({} leave scope), skipped by mode {} (sync.mode = {})",
        c.in_scope,
        c.out_of_scope,
        c.left_scope,
        c.skipped_by_mode,
        mode.as_str()
    )
}

/// A command's configuration with logging started, pointed at the built-in sandbox when asked.
struct Session {
    config: Config,
    /// The sandbox and its throwaway folder (they live as long as the session).
    sandbox: Option<(SandboxHandle, tempfile::TempDir)>,
    /// The human view's terminal, when logs go to one.
    terminal: Option<std::sync::Arc<quo_sync::telemetry::Terminal>>,
    /// What is synced, as configured (before the sandbox swapped in a copy).
    source: String,
}

impl Session {
    /// `Syncing csv config/contacts.csv → Quo sandbox at … (throwaway ledger)`.
    fn syncing_line(&self, terminal: &quo_sync::telemetry::Terminal) -> String {
        let (quo, ledger) = match &self.sandbox {
            Some((sandbox, _)) => (
                format!("the Quo sandbox at {}", sandbox.base_url()),
                "throwaway ledger".to_string(),
            ),
            None => (
                format!("Quo at {}", self.config.quo.base_url),
                match &self.config.ledger.url {
                    Some(_) => "ledger on PostgreSQL".to_string(),
                    None => format!("ledger {}", from_here(&self.config.ledger.path)),
                },
            ),
        };
        ops::summary::syncing_line(terminal, &self.source, &quo, &ledger)
    }

    fn setting(&self, service: bool) -> ops::summary::Setting {
        ops::summary::Setting {
            limit_per_s: self.config.quo.requests_per_second,
            sandbox: self.sandbox.is_some(),
            service,
        }
    }
}

/// The configuration with logging started (at `log_level`, else the configured level), pointed
/// at a fresh in-process sandbox for a `demo` (seeded with a CSV's people when it says so); the
/// sandbox lives as long as the session.
async fn configured(
    config_path: &Path,
    demo: Option<Demo>,
    log_level: Option<&str>,
    verbose: u8,
) -> anyhow::Result<Session> {
    let mut config = load_config(config_path)?;
    let level = log_level.unwrap_or(&config.log.level).to_string();
    quo_sync::telemetry::init_verbose(config.log.format, &level, verbose);
    config.log_resolved_paths();
    let source = match (&config.source.kind, &config.source.path) {
        (quo_sync::config::SourceKind::Csv, Some(path)) => format!("csv {}", from_here(path)),
        _ => config.describe_source(),
    };
    let sandbox = match demo {
        Some(demo) => {
            let (sandbox, dir) = attach_sandbox(&mut config).await?;
            if let Some(path) = &demo.seed_existing {
                seed_sandbox(&sandbox, path)?;
            }
            Some((sandbox, dir))
        }
        None => None,
    };
    Ok(Session {
        config,
        sandbox,
        terminal: quo_sync::telemetry::terminal(),
        source,
    })
}

/// `/home/me/quo-sync/config/contacts.csv` as `config/contacts.csv` when the working
/// directory holds it: the path a person typed or can type, and a line that fits.
fn from_here(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|relative| !relative.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

pub(crate) fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// Points the config at a fresh in-process sandbox with a throwaway ledger.
async fn attach_sandbox(config: &mut Config) -> anyhow::Result<(SandboxHandle, tempfile::TempDir)> {
    let sandbox = SandboxHandle::start(SandboxConfig::default())
        .await
        .context("starting the sandbox")?;
    config.quo.base_url = sandbox.base_url();
    config.quo.api_key = Some(SecretString::from(sandbox.api_key().to_string()));
    let dir = tempfile::Builder::new()
        .prefix("quo-sync-sandbox-")
        .tempdir()?;
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

/// Prints `value` as pretty JSON, or the text `table` renders from it.
pub(crate) fn emit<T: serde::Serialize>(
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

pub(super) async fn open_ledger(
    config: &std::path::Path,
) -> anyhow::Result<quo_sync::ledger::Ledger> {
    let config = load_config(config)?;
    Ok(quo_sync::ledger::Ledger::open_config(&config.ledger).await?)
}
