//! The commands that read or copy the ledger itself: `status`, `runs`, `conflicts`,
//! `ledger copy` and `ledger backup`.

use std::path::Path;

use quo_sync::{app, ops};

use super::commands::{emit, load_config, open_ledger};

/// `runs`: the ledger's most recent cycles.
pub(super) async fn runs(config_path: &Path, limit: i64, json: bool) -> anyhow::Result<u8> {
    let ledger = open_ledger(config_path).await?;
    let runs = ledger.recent_runs(limit).await?;
    emit(json, &runs, |r| ops::render_runs(r))?;
    Ok(0)
}

/// `conflicts`: the ledger's most recent conflicts.
pub(super) async fn conflicts(config_path: &Path, limit: i64, json: bool) -> anyhow::Result<u8> {
    let ledger = open_ledger(config_path).await?;
    let conflicts = ledger.conflicts(limit).await?;
    emit(json, &conflicts, |c| ops::render_conflicts(c))?;
    Ok(0)
}

/// `status`: the ledger summary and who holds the writer lease.
pub(super) async fn status(config_path: &Path, json: bool) -> anyhow::Result<u8> {
    let ledger = open_ledger(config_path).await?;
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

/// `ledger copy --to`: copies the ledger into a new, empty one and checks every table. It holds
/// the writer lease while it reads (exit 4 while another process holds it), so no cycle writes
/// between the tables it reads one after the other.
pub(super) async fn copy(config_path: &Path, to: String) -> anyhow::Result<u8> {
    let target = quo_sync::ledger::LedgerTarget::parse(&to)?;
    let config = load_config(config_path)?;
    let writer = app::acquire_writer(
        &config,
        "ledger copy",
        std::time::Duration::ZERO,
        app::shutdown_token(),
    )
    .await?;
    let source = writer.ledger.clone();
    let target = match quo_sync::ledger::Ledger::open_target(&target).await {
        Ok(target) => target,
        Err(e) => {
            writer.release().await;
            return Err(e.into());
        }
    };
    let report = source.copy_to(&target).await;
    writer.release().await;
    target.close().await;
    let report = report?;
    println!("copied ledger {} -> {}", source.path(), report.target);
    for (table, rows) in &report.tables {
        println!("  {table:<12} {rows:>9} rows");
    }
    println!("row counts checked: every table matches the source");
    Ok(0)
}

/// `ledger backup --to`: a consistent copy of the SQLite ledger, taken while the service may be
/// writing (`VACUUM INTO` reads one snapshot), checked before it is reported.
pub(super) async fn backup(config_path: &Path, to: &Path) -> anyhow::Result<u8> {
    let ledger = open_ledger(config_path).await?;
    let report = ledger.backup_to(to).await;
    ledger.close().await;
    let report = report?;
    println!(
        "backed up ledger {} -> {} ({} records, {} bytes, integrity ok)",
        ledger.path(),
        to.display(),
        report.records,
        report.bytes
    );
    Ok(0)
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
