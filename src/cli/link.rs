//! `link <external-id> <quo-contact-id> | --create | --undo`: an operator's answer to a record
//! held before create, applied at once by a cycle under the writer lease.

use std::path::Path;

use quo_sync::app;
use quo_sync::domain::ExternalId;
use quo_sync::ops::link::{LinkRequest, decide, undo};
use quo_sync::sync::Mode;

use super::commands::load_config;
use super::{EXIT_CONFIG, EXIT_QUARANTINED};

/// Runs `link`; the exit code on success (3 when the record is still held after the cycle).
pub(super) async fn link(
    config_path: &Path,
    external_id: &str,
    request: LinkRequest,
    wait: std::time::Duration,
) -> anyhow::Result<u8> {
    let config = load_config(config_path)?;
    quo_sync::telemetry::init(config.log.format, &config.log.level);
    let Ok(external_id) = ExternalId::parse(external_id) else {
        eprintln!("quo-sync: {external_id:?} is not a CRM id");
        return Ok(EXIT_CONFIG);
    };
    let writer = app::acquire_writer(&config, "link", wait, app::shutdown_token()).await?;
    let outcome = apply(&config, &writer, &external_id, request).await;
    writer.release().await;
    outcome
}

async fn apply(
    config: &quo_sync::config::Config,
    writer: &app::Writer,
    external_id: &ExternalId,
    request: LinkRequest,
) -> anyhow::Result<u8> {
    let ctx = app::build_context_on(config, "once", writer.cancel.clone(), writer.ledger.clone())?;
    if request == LinkRequest::Undo {
        let (mapper, managed) = quo_sync::sync::mapper_for(&ctx).await?;
        let undone = undo(&ctx.ledger, &ctx.client, &mapper, &managed, external_id).await?;
        println!(
            "{external_id}: link undone; contact {} has its source and externalId back{}{}; {external_id} is held until you run `quo-sync link {external_id} <contact-id>` or `--create`",
            undone.quo_id,
            if undone.restored.is_empty() {
                String::new()
            } else {
                format!(", and {}", undone.restored.join(", "))
            },
            if undone.kept.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} changed since the adoption and stay as they are)",
                    undone.kept.join(", ")
                )
            },
        );
        return Ok(0);
    }
    decide(&ctx.ledger, &ctx.client, external_id, &request).await?;
    let report = app::once(&ctx, Mode::Apply).await?;
    let row = ctx.ledger.record(external_id).await?;
    match row.and_then(|r| r.quo_id) {
        Some(quo_id) => {
            let how = match request {
                LinkRequest::Create => "created",
                _ => "adopted",
            };
            println!("{external_id}: {how} contact {quo_id}");
            Ok(0)
        }
        None => {
            let why = ctx
                .ledger
                .quarantined_one(external_id.as_str())
                .await?
                .map(|q| q.reason)
                .unwrap_or_else(|| {
                    format!(
                        "the record was not in this cycle's read ({} records read)",
                        report.counts.unchanged + report.counts.created + report.counts.adopted
                    )
                });
            println!("{external_id}: still not linked: {why}");
            Ok(EXIT_QUARANTINED)
        }
    }
}
