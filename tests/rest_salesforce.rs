//! The Salesforce example config against a fake Salesforce org: OAuth2 with tokens that die
//! (no `expires_in`, so a 401 triggers the refresh), instance_url as the API base, SOQL with
//! `{updated_since}`, nextRecordsUrl paging, PATCH write-back; a rotated refresh token survives
//! a restart; refused credentials are a configuration error; no secret reaches the logs.
//! One test per binary: the log capture installs the global subscriber.

mod support;

use std::path::Path;
use std::time::Duration;

use quo_sync::app::AppError;
use quo_sync::config::LogFormat;
use quo_sync::sandbox::{SandboxConfig, SandboxHandle};
use quo_sync::sync::{Mode, run_cycle};
use quo_sync::telemetry::{CaptureWriter, init_with_writer};
use serde_json::{Value, json};
use support::salesforce::FakeSalesforce;
use support::token_desk::TokenDesk;
use support::vendor_run::{contact_for, example_context};

const CLIENT_ID: &str = "3MVG9-test-consumer-key";
const SECRET: &str = "sf-client-secret-DO-NOT-LEAK-91c2";
const REFRESH: &str = "sf-refresh-DO-NOT-LEAK-5e77";

fn contacts() -> Vec<Value> {
    (1..=7)
        .map(|i| {
            json!({
                "Id": format!("0035g00000SF{i:04}AAA"),
                "FirstName": format!("Ada{i}"),
                "LastName": format!("Force{i}"),
                "Email": format!("ada{i}@example.com"),
                "Phone": format!("+1415555{:04}", 3000 + i),
                "MobilePhone": null,
                "Title": "Engineer",
                "Account": { "attributes": { "type": "Account" }, "Name": format!("Acme {i}") },
            })
        })
        .collect()
}

/// The example config with only the URLs and the secrets' sources changed.
fn write_config(dir: &Path, crm: &str, secret: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string("config/rest-salesforce.example.toml").unwrap();
    let secret_file = dir.join("client_secret");
    let refresh_file = dir.join("refresh_token");
    std::fs::write(&secret_file, secret).unwrap();
    std::fs::write(&refresh_file, REFRESH).unwrap();
    let text = text
        .replace("https://login.salesforce.com", crm)
        .replace("3MVG9-your-connected-app-consumer-key", CLIENT_ID)
        .replace(
            "client_secret_env = \"SALESFORCE_CLIENT_SECRET\"",
            &format!(
                "client_secret_file = {:?}",
                secret_file.display().to_string()
            ),
        )
        .replace(
            "refresh_token_env = \"SALESFORCE_REFRESH_TOKEN\"",
            &format!(
                "refresh_token_file = {:?}",
                refresh_file.display().to_string()
            ),
        );
    let path = dir.join("quo-sync.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn salesforce_example_syncs_both_ways_with_refreshed_tokens_and_no_secret_in_logs() {
    let logs = CaptureWriter::default();
    assert!(init_with_writer(LogFormat::Json, "trace", logs.clone()));
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    // Tokens live a minute (Salesforce sends no `expires_in`, so the client learns of the end
    // only from a 401); the test ends them with `expire_all` instead of racing a short lifetime
    // against the machine's speed (600 ms failed under load: the first cycle outlived it).
    let mut desk = TokenDesk::new(CLIENT_ID, SECRET, REFRESH, Duration::from_secs(60));
    desk.rotate = true;
    let crm = FakeSalesforce::start(contacts(), desk, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.db");
    let path = write_config(dir.path(), &crm.base_url, SECRET);
    let ctx = example_context(&path, &sandbox, &ledger).await;

    // CRM → Quo: a full read (SystemModstamp > epoch), in batches of 3 via nextRecordsUrl.
    let report = run_cycle(&ctx, Mode::Apply).await.expect("first cycle");
    assert_eq!(report.counts.created, 7, "{report:?}");
    let first = "0035g00000SF0001AAA";
    let quo = contact_for(&sandbox, first);
    assert_eq!(quo["defaultFields"]["firstName"], "Ada1");
    assert_eq!(quo["defaultFields"]["company"], "Acme 1");
    assert_eq!(quo["defaultFields"]["role"], "Engineer");
    let queries = crm.queries();
    assert!(
        queries[0].ends_with("WHERE SystemModstamp > 1970-01-01T00:00:00Z ORDER BY SystemModstamp"),
        "{queries:?}"
    );
    assert_eq!(crm.desk().issued(), 1);

    // The token dies; a CRM edit is read incrementally after one 401 and one refresh.
    crm.edit(first, "Title", json!("VP Sales"));
    crm.desk().expire_all();
    let report = run_cycle(&ctx, Mode::Apply).await.expect("second cycle");
    assert_eq!(report.counts.updated, 1, "{report:?}");
    assert_eq!(
        contact_for(&sandbox, first)["defaultFields"]["role"],
        "VP Sales"
    );
    assert!(crm.unauthorized() >= 1, "the expired token was refused");
    assert!(crm.desk().issued() >= 2, "and replaced");
    let last = crm.queries().last().cloned().unwrap();
    assert!(
        !last.contains("1970-01-01") && last.contains("SystemModstamp > 20"),
        "incremental: {last}"
    );

    // Quo → CRM: an app edit is PATCHed with only the changed field (read-only ones refused by
    // the fake), 204.
    let quo_id = contact_for(&sandbox, first)["id"]
        .as_str()
        .unwrap()
        .to_string();
    sandbox
        .app_edit(&quo_id, json!({"defaultFields": {"lastName": "Lovelace"}}))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    run_cycle(&ctx, Mode::Apply).await.expect("third cycle");
    let patches = crm.patches();
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(patches[0].0, first);
    assert_eq!(patches[0].1, json!({"LastName": "Lovelace"}));
    assert_eq!(crm.contact(first).unwrap()["LastName"], "Lovelace");

    // Restart: the configured refresh token was rotated away; the one kept in the ledger works.
    ctx.ledger.close().await;
    drop(ctx);
    assert_ne!(crm.desk().current_refresh(), REFRESH);
    let issued = crm.desk().issued();
    let ctx = example_context(&path, &sandbox, &ledger).await;
    run_cycle(&ctx, Mode::Apply)
        .await
        .expect("a restart uses the rotated refresh token");
    assert_eq!(crm.desk().issued(), issued + 1);
    let debug = format!("{:?}", ctx.source);
    ctx.ledger.close().await;

    // Refused credentials: a typed error that main maps to exit 2, naming no secret.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad_path = write_config(bad_dir.path(), &crm.base_url, "wrong-secret-value");
    let bad = example_context(&bad_path, &sandbox, &bad_dir.path().join("l.db")).await;
    let error = run_cycle(&bad, Mode::Apply).await.unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(shown.contains("invalid_client"), "{shown}");
    assert!(AppError::Sync(error).is_config());
    bad.ledger.close().await;

    let captured = logs.contents();
    assert!(
        captured.contains("crm_token_refreshed"),
        "refreshes are logged"
    );
    assert!(captured.contains("crm_auth_failed"), "refusals are logged");
    let mut secrets = vec![
        SECRET.to_string(),
        REFRESH.to_string(),
        crm.desk().current_refresh(),
    ];
    secrets.extend(crm.desk().all_access_tokens());
    for secret in &secrets {
        for (what, text) in [("logs", &captured), ("error", &shown), ("debug", &debug)] {
            assert!(
                !text.contains(secret.as_str()),
                "{secret} leaked into {what}"
            );
        }
    }
}
