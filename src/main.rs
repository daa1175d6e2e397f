//! The `quo-sync` binary: argument parsing and exit codes (`cli/`); everything else is in the
//! library.
//!
//! Exit codes: 0 success; 2 configuration or usage error (a credential Quo or the CRM refuses
//! before this process ever saw it accepted included, and any refusal in a one-shot command:
//! only an operator can fix it, so a supervisor should not restart into it); 3 the cycle
//! finished but some records were quarantined; 4 another process holds the ledger's writer
//! lease (a one-shot writer that could not get it within `--wait`); 1 anything else, a
//! credential that worked and was then refused for longer than its grace included (`run`: a
//! supervisor restarts it, and a key still refused then exits 2).

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, EXIT_CONFIG, EXIT_FAILURE, EXIT_LEASE_HELD};
use quo_sync::app::AppError;

/// mimalloc: rows are allocated on the reader thread and freed on the planner's, which glibc's
/// per-thread arenas handle slowly (measured: about a third of a million-row cycle).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        match cli::dispatch(cli).await {
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
                        .is_some()
                    || error
                        .downcast_ref::<quo_sync::ledger::LedgerError>()
                        .is_some_and(quo_sync::ledger::LedgerError::is_config);
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
