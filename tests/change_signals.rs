//! CRM changes reach Quo without waiting for `schedule.interval` (an hour here): a CSV edit is
//! picked up by the file watcher, quo-sync's own write-back starts no extra cycle, and a signed
//! `POST /webhooks/crm` starts a read of the REST CRM (bad signature → 401, oversized → 413,
//! and neither reads anything).

mod common;
mod support;

use std::time::{Duration, Instant};

use common::{TestApp, csv, row};
use hmac::{Hmac, KeyInit, Mac};
use quo_sync::config::Config;
use quo_sync::sandbox::{SandboxConfig, SandboxHandle};
use serde_json::{Value, json};
use sha2::Sha256;
use support::fake_crm::{Auth, FakeCrm};
use tokio_util::sync::CancellationToken;

/// Polls `check` every 20 ms until it holds or `deadline` passes.
async fn wait_for(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {deadline:?}");
}

fn first_name(sandbox: &SandboxHandle, external_id: &str) -> Option<String> {
    sandbox
        .contacts()
        .into_iter()
        .find(|c| c["externalId"] == external_id)
        .and_then(|c| c["defaultFields"]["firstName"].as_str().map(str::to_string))
}

#[tokio::test]
async fn a_csv_edit_starts_a_cycle_and_our_own_write_back_does_not() {
    let rows: Vec<String> = (1..=3).map(|i| row(&format!("w-{i}"), i)).collect();
    let app = TestApp::spawn_with(
        &csv(&rows),
        SandboxConfig::default(),
        "[schedule]\ninterval = \"1h\"\n[reverse]\npoll_interval = \"250ms\"\n",
    )
    .await;
    let config = Config::load_with_env(&app.config_path, std::iter::empty()).unwrap();
    let cancel = CancellationToken::new();
    let mut ctx = app.ctx.clone();
    ctx.cancel = cancel.clone();
    let service =
        tokio::spawn(async move { quo_sync::app::run_service(&ctx, &config, None).await });
    wait_for("first cycle", Duration::from_secs(10), async || {
        app.sandbox.contacts().len() == 3
    })
    .await;

    // An edit to the file: the contact changes long before the hourly interval.
    let edited: Vec<String> = rows
        .iter()
        .map(|r| r.replacen("w-1,First1,", "w-1,Edited1,", 1))
        .collect();
    app.write_csv(&csv(&edited));
    wait_for(
        "the CSV edit reaches Quo",
        Duration::from_secs(3),
        async || first_name(&app.sandbox, "w-1").as_deref() == Some("Edited1"),
    )
    .await;

    // An edit in the Quo app is written back to the file by quo-sync itself …
    let quo_id = app.quo_id("w-2");
    app.sandbox
        .app_edit(&quo_id, json!({"defaultFields": {"lastName": "FromQuo"}}))
        .unwrap();
    wait_for(
        "the app edit is written to the CSV",
        Duration::from_secs(5),
        async || app.csv_text().contains("FromQuo"),
    )
    .await;
    let finished = async || {
        let runs = app.ctx.ledger.recent_runs(1000).await.unwrap();
        (runs.iter().all(|r| r.finished_at.is_some()), runs.len())
    };
    wait_for(
        "the write-back cycle finishes",
        Duration::from_secs(5),
        async || finished().await.0,
    )
    .await;
    let (_, runs_after_write) = finished().await;
    // … and that write starts no further cycle (the watcher sees the bytes it wrote).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, runs_later) = finished().await;
    assert_eq!(
        runs_later, runs_after_write,
        "our own write-back started a cycle"
    );

    cancel.cancel();
    service.await.unwrap().unwrap();
}

fn contacts() -> Vec<Value> {
    (1..=3)
        .map(|i| {
            json!({
                "id": format!("h{i}"),
                "firstName": format!("Hook{i}"),
                "lastName": "Crm",
                "phone": format!("+1415555{:04}", 4000 + i),
                "updated_at": "2026-01-01T00:00:00Z",
            })
        })
        .collect()
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

const SECRET: &str = "crm-webhook-secret";

#[tokio::test]
async fn a_signed_crm_webhook_starts_a_read_and_bad_ones_read_nothing() {
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let crm = FakeCrm::start(Auth::None, contacts()).await;
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let text = format!(
        r#"
[quo]
base_url = "{quo}"
api_key = "{key}"
requests_per_second = 1000

[ledger]
path = "{ledger}"

[source]
kind = "rest"

[source.rest]
base_url = "{crm}"
list_path = "/offset/contacts"
records_pointer = "/results"
id_pointer = "/id"
updated_at_pointer = "/updated_at"
updated_since_param = "updated_since"
fields = {{ first_name = "/firstName", last_name = "/lastName", phone = "/phone" }}
webhook = {{ secret = "{SECRET}", max_body_bytes = 1024 }}

[mapping]
default_region = "US"
first_name = "first_name"
last_name = "last_name"
phones = [{{ field = "phone", label = "mobile" }}]

[schedule]
interval = "1h"

[service]
listen = "{addr}"
"#,
        quo = sandbox.base_url(),
        key = sandbox.api_key(),
        ledger = dir.path().join("l.db").display(),
        crm = crm.base_url,
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load_with_env(&path, std::iter::empty()).unwrap();
    let cancel = CancellationToken::new();
    let ctx = quo_sync::app::build_context(&config, "run", cancel.clone())
        .await
        .unwrap();
    let service =
        tokio::spawn(async move { quo_sync::app::run_service(&ctx, &config, None).await });
    wait_for("first cycle", Duration::from_secs(10), async || {
        sandbox.contacts().len() == 3
    })
    .await;
    let reads = || crm.count("GET", "/offset/");
    wait_for(
        "the first read is done",
        Duration::from_secs(5),
        async || reads() == 1,
    )
    .await;

    let url = format!("http://{addr}/webhooks/crm");
    let http = reqwest::Client::new();
    let body = br#"{"event":"contact.updated","ids":["h1"]}"#.to_vec();

    // Wrong signature: 401, nothing read.
    let status = http
        .post(&url)
        .header("X-Signature", sign("another-secret", &body))
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401);
    let status = http
        .post(&url)
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401, "unsigned");
    // Oversized (even if signed): 413, nothing read.
    let big = vec![b'x'; 4096];
    let status = http
        .post(&url)
        .header("X-Signature", sign(SECRET, &big))
        .body(big)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 413);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(reads(), 1, "refused webhooks read nothing");

    // A CRM edit plus a signed notice: read incrementally and in Quo well before the interval.
    let mut record = crm.contact("h1").unwrap();
    record["firstName"] = json!("Hooked");
    record["updated_at"] = json!(chrono::Utc::now().to_rfc3339());
    crm.replace("h1", record);
    let status = http
        .post(&url)
        .header("X-Signature", sign(SECRET, &body))
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202);
    wait_for(
        "the webhook's record reaches Quo",
        Duration::from_secs(3),
        async || first_name(&sandbox, "h1").as_deref() == Some("Hooked"),
    )
    .await;
    let last = crm
        .requests()
        .into_iter()
        .rfind(|r| r.method == "GET")
        .unwrap();
    assert!(
        last.query.contains_key("updated_since"),
        "an incremental read: {:?}",
        last.query
    );

    cancel.cancel();
    service.await.unwrap().unwrap();
}
