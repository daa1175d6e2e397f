//! `quarantine list|show|retry|discard`: inspect and act on quarantined records.

use std::path::Path;

use quo_sync::app;
use quo_sync::config::Config;
use quo_sync::ops;
use quo_sync::sync::Mode;

use super::args::QuarantineAction;
use super::commands::{emit, load_config, open_ledger};
use super::{EXIT_CONFIG, EXIT_QUARANTINED};

/// Runs a `quarantine` subcommand; the exit code on success.
pub(super) async fn quarantine(config_path: &Path, action: QuarantineAction) -> anyhow::Result<u8> {
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
