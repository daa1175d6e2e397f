//! `quo-sync webhooks list|ensure|remove`: quo-sync's own webhooks by hand (what a leader does at
//! each start when `reverse.public_url` is set). `ensure` and `remove` write the ledger, so they
//! take the writer lease; keys are never printed.

use std::path::Path;

use quo_sync::activity::registration::{ACTIVITY, CONTACTS, Registrar};
use quo_sync::app;
use quo_sync::config::Config;
use quo_sync::quo::client::QuoClient;
use quo_sync::quo::dated::DatedClient;

use super::args::WebhooksAction;
use super::commands::{emit, load_config};

/// Runs a `webhooks` subcommand.
pub async fn webhooks(config_path: &Path, action: WebhooksAction) -> anyhow::Result<u8> {
    let config = load_config(config_path)?;
    quo_sync::telemetry::init(config.log.format, "warn");
    let client = app::build_client(&config)?;
    match action {
        WebhooksAction::List { json } => list(&config, &client, json).await,
        WebhooksAction::Ensure { json, wait } => {
            ensure(config_path, &config, &client, json, wait).await
        }
        WebhooksAction::Remove { purpose, wait } => {
            remove(&config, &client, purpose.as_deref(), wait).await
        }
    }
}

/// `webhooks list`: every webhook of the workspace, and which quo-sync registered (for what).
async fn list(config: &Config, client: &QuoClient, json: bool) -> anyhow::Result<u8> {
    let ledger = quo_sync::ledger::Ledger::open_config(&config.ledger).await?;
    let listed = Registrar::new(DatedClient::new(client), ledger.clone())
        .list()
        .await?;
    ledger.close().await;
    let rows: Vec<serde_json::Value> = listed
        .iter()
        .map(|(s, purpose)| {
            serde_json::json!({
                "id": s.id, "url": s.url, "status": s.status, "events": s.events,
                "label": s.label, "registered_by_quo_sync_for": purpose,
            })
        })
        .collect();
    emit(json, &rows, |rows| {
        let mut out = format!(
            "{:<8} {:<9} {:<10} {:<52} EVENTS\n",
            "ID", "STATUS", "OURS", "URL"
        );
        for r in rows {
            out.push_str(&format!(
                "{:<8} {:<9} {:<10} {:<52} {}\n",
                r["id"].as_str().unwrap_or_default(),
                r["status"].as_str().unwrap_or_default(),
                r["registered_by_quo_sync_for"].as_str().unwrap_or("-"),
                r["url"].as_str().unwrap_or_default(),
                r["events"].as_array().map(|e| e.len()).unwrap_or(0),
            ));
        }
        out
    })?;
    Ok(0)
}

/// `webhooks ensure`: registers (or repairs) the webhooks the configuration wants, under the
/// writer lease.
async fn ensure(
    config_path: &Path,
    config: &Config,
    client: &QuoClient,
    json: bool,
    wait: std::time::Duration,
) -> anyhow::Result<u8> {
    let wanted = quo_sync::activity::wanted_webhooks(config);
    if wanted.is_empty() {
        anyhow::bail!(app::AppError::Config(quo_sync::config::ConfigError::BadValue {
            file: config_path.display().to_string(),
            key: "reverse.public_url".into(),
            reason: "set the URL at which Quo reaches reverse.listen (and [activity] or reverse.listen without reverse.webhook_secret) to register webhooks".into(),
        }));
    }
    let writer = app::acquire_writer(config, "webhooks", wait, app::shutdown_token()).await?;
    let client = match writer.ledger.write_fence() {
        Some(fence) => client.clone().with_write_fence(fence),
        None => client.clone(),
    };
    let dated = DatedClient::new(&client);
    let done = Registrar::new(dated, writer.ledger.clone())
        .ensure(&wanted)
        .await;
    writer.release().await;
    let done = done?;
    emit(json, &done, |done| {
        done.iter()
            .map(|d| {
                format!(
                    "{:<9} #{:<8} {}{}\n",
                    d.purpose,
                    d.subscription_id,
                    d.action,
                    d.detail
                        .as_ref()
                        .map(|x| format!(" ({x})"))
                        .unwrap_or_default()
                )
            })
            .collect()
    })?;
    Ok(0)
}

/// `webhooks remove [activity|contacts]`: removes quo-sync's own webhooks (both when no
/// purpose is named), under the writer lease.
async fn remove(
    config: &Config,
    client: &QuoClient,
    purpose: Option<&str>,
    wait: std::time::Duration,
) -> anyhow::Result<u8> {
    let purposes: Vec<&str> = match purpose {
        None => vec![ACTIVITY, CONTACTS],
        Some(p) if p == ACTIVITY || p == CONTACTS => {
            vec![if p == ACTIVITY { ACTIVITY } else { CONTACTS }]
        }
        Some(other) => anyhow::bail!(app::AppError::Config(
            quo_sync::config::ConfigError::BadValue {
                file: "(command line)".into(),
                key: "webhooks remove".into(),
                reason: format!("expected activity or contacts, got {other:?}"),
            }
        )),
    };
    let writer = app::acquire_writer(config, "webhooks", wait, app::shutdown_token()).await?;
    let registrar = Registrar::new(DatedClient::new(client), writer.ledger.clone());
    let mut result = Ok(());
    for p in purposes {
        match registrar.remove(p).await {
            Ok(Some(id)) => println!("{p:<9} #{id} removed"),
            Ok(None) => println!("{p:<9} none registered"),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    writer.release().await;
    result?;
    Ok(0)
}
