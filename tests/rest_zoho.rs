//! The Zoho example config against a fake Zoho CRM: OAuth2 with `expires_in` (refreshed before
//! it runs out, so no 401 is needed), `api_domain` as the API base, `Zoho-oauthtoken` header,
//! page/per_page paging, `If-Modified-Since` with 304 as "nothing changed", and write-back as a
//! PUT of `{"data":[{…}]}`; no secret reaches the logs.
//! One test per binary: the log capture installs the global subscriber.

mod support;

use std::path::Path;
use std::time::Duration;

use quo_sync::config::LogFormat;
use quo_sync::sandbox::{SandboxConfig, SandboxHandle};
use quo_sync::sync::{Mode, run_cycle};
use quo_sync::telemetry::{CaptureWriter, init_with_writer};
use serde_json::{Value, json};
use support::token_desk::TokenDesk;
use support::vendor_run::{contact_for, example_context};
use support::zoho::FakeZoho;

const CLIENT_ID: &str = "1000.TESTCLIENT";
const SECRET: &str = "zoho-client-secret-DO-NOT-LEAK-0b1d";
const REFRESH: &str = "1000.zoho-refresh-DO-NOT-LEAK.77aa";
/// More than one page of Zoho's 200 records.
const COUNT: usize = 205;
/// Access tokens expire this long after they are issued (Zoho's hour, shortened).
const LIFETIME: Duration = Duration::from_secs(4);

fn contacts() -> Vec<Value> {
    (1..=COUNT)
        .map(|i| {
            json!({
                "id": format!("34770610000{i:08}"),
                "First_Name": format!("Zed{i}"),
                "Last_Name": format!("Oho{i}"),
                "Email": format!("zed{i}@example.com"),
                "Phone": format!("+1415556{:04}", i),
                "Mobile": null,
                "Title": "Buyer",
                "Account_Name": { "name": format!("Zylker {i}"), "id": "3477061000000900001" },
                "Created_Time": "2025-01-01T10:00:00+05:30",
            })
        })
        .collect()
}

fn write_config(dir: &Path, crm: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string("config/rest-zoho.example.toml").unwrap();
    let secret_file = dir.join("client_secret");
    let refresh_file = dir.join("refresh_token");
    std::fs::write(&secret_file, SECRET).unwrap();
    std::fs::write(&refresh_file, REFRESH).unwrap();
    let text = text
        .replace("https://accounts.zoho.com", crm)
        .replace("https://www.zohoapis.com", crm)
        .replace("1000.YOUR-SELF-CLIENT-ID", CLIENT_ID)
        .replace(
            "client_secret_env = \"ZOHO_CLIENT_SECRET\"",
            &format!(
                "client_secret_file = {:?}",
                secret_file.display().to_string()
            ),
        )
        .replace(
            "refresh_token_env = \"ZOHO_REFRESH_TOKEN\"",
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
async fn zoho_example_syncs_both_ways_with_tokens_refreshed_before_expiry_and_no_secret_in_logs() {
    let logs = CaptureWriter::default();
    assert!(init_with_writer(LogFormat::Json, "trace", logs.clone()));
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let desk = TokenDesk::new(CLIENT_ID, SECRET, REFRESH, LIFETIME);
    let crm = FakeZoho::start(contacts(), desk).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.db");
    let path = write_config(dir.path(), &crm.base_url);
    let ctx = example_context(&path, &sandbox, &ledger).await;

    // CRM → Quo: a full read, pages 1 and 2 of 200, without If-Modified-Since.
    let report = run_cycle(&ctx, Mode::Apply).await.expect("first cycle");
    assert_eq!(report.counts.created, COUNT as u64, "{report:?}");
    let first = "3477061000000000001";
    let quo = contact_for(&sandbox, first);
    assert_eq!(quo["defaultFields"]["firstName"], "Zed1");
    assert_eq!(quo["defaultFields"]["company"], "Zylker 1");
    let lists = crm.lists();
    let pages: Vec<_> = lists
        .iter()
        .map(|(q, since, _)| (q["page"].clone(), since.is_some()))
        .collect();
    assert_eq!(
        pages,
        vec![("1".to_string(), false), ("2".to_string(), false)]
    );
    assert!(lists[0].0["fields"].contains("Modified_Time"));

    // Nothing changed: If-Modified-Since is sent and the 304 is "no records", not an error.
    let report = run_cycle(&ctx, Mode::Apply).await.expect("quiet cycle");
    assert_eq!(
        report.counts.updated + report.counts.created,
        0,
        "{report:?}"
    );
    let (_, since, status) = crm.lists().last().cloned().unwrap();
    assert_eq!(status, 304);
    let since = since.expect("If-Modified-Since sent");
    assert!(since.ends_with("+00:00"), "ISO 8601 with offset: {since}");

    // The token's hour (here 4 s) nears its end: 0.75 of it gone is inside the refresh margin
    // (a quarter of the lifetime) and a second before expiry. The old token still works, so
    // only a client that refreshes ahead of expiry asks for a new one here.
    let issued = crm.desk().issued();
    let last = crm.desk().last_issued_at().expect("a token was issued");
    tokio::time::sleep_until((last + LIFETIME * 3 / 4 + Duration::from_millis(50)).into()).await;
    crm.edit(first, "Title", json!("Head of Buying"));
    let report = run_cycle(&ctx, Mode::Apply)
        .await
        .expect("incremental cycle");
    assert_eq!(report.counts.updated, 1, "{report:?}");
    assert_eq!(
        contact_for(&sandbox, first)["defaultFields"]["role"],
        "Head of Buying"
    );
    assert!(
        crm.desk().issued() > issued,
        "refreshed within the margin, before the token expired"
    );
    assert_eq!(
        (crm.unauthorized(), crm.desk().expired_uses()),
        (0, 0),
        "refreshed before expiry, never refused"
    );

    // Quo → CRM: PUT {"data":[{"Last_Name": …}]}.
    let quo_id = contact_for(&sandbox, first)["id"]
        .as_str()
        .unwrap()
        .to_string();
    sandbox
        .app_edit(&quo_id, json!({"defaultFields": {"lastName": "Zohoson"}}))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    run_cycle(&ctx, Mode::Apply)
        .await
        .expect("write-back cycle");
    let puts = crm.puts();
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert_eq!(puts[0].0, first);
    assert_eq!(puts[0].1, json!({"Last_Name": "Zohoson"}));
    assert_eq!(crm.contact(first).unwrap()["Last_Name"], "Zohoson");
    let debug = format!("{:?}", ctx.source);
    ctx.ledger.close().await;

    let captured = logs.contents();
    assert!(captured.contains("crm_token_refreshed"));
    let mut secrets = vec![SECRET.to_string(), REFRESH.to_string()];
    secrets.extend(crm.desk().all_access_tokens());
    for secret in &secrets {
        for (what, text) in [("logs", &captured), ("debug", &debug)] {
            assert!(
                !text.contains(secret.as_str()),
                "{secret} leaked into {what}"
            );
        }
    }
}
