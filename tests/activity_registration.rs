//! quo-sync registers its own webhooks (`reverse.public_url`): at start, through the dated API,
//! the activity webhook and the contact webhook, with the keys kept in the ledger and never
//! shown; deliveries signed with them are accepted; a disabled or deleted subscription is
//! repaired by `quo-sync webhooks ensure`, one found without a key is adopted, and
//! `webhooks remove` takes them away.

mod common;
mod support;

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{TestApp, csv, row};
use quo_sync::config::LogFormat;
use quo_sync::sandbox::SandboxConfig;
use quo_sync::sandbox::activity::{CallOutcome, CallSpec, Direction};
use quo_sync::telemetry::{CaptureWriter, init_with_writer};
use support::activity::{csv_rows, free_port, number_of, until};

/// Every log line of this binary's tests, at `trace`: the process has one subscriber, so both
/// tests share it (what one asserts about the other's lines holds for both).
fn logs() -> &'static CaptureWriter {
    static LOGS: OnceLock<CaptureWriter> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CaptureWriter::default();
        assert!(init_with_writer(LogFormat::Json, "trace", logs.clone()));
        logs
    })
}

/// The forms a signing key could take in a log line or an output: as configured
/// (`whsec_…`), bare base64, and the Debug of its decoded bytes.
fn key_forms(key: &str) -> Vec<String> {
    use base64::Engine;
    let bare = key.trim_start_matches("whsec_");
    let mut forms = vec![key.to_string(), bare.to_string(), format!("{key:?}")];
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(bare) {
        forms.push(format!("{bytes:?}"));
    }
    forms
}

/// Asserts no form of any of `keys` is in `text` (`what` names the text).
fn assert_no_key(keys: &[String], text: &str, what: &str) {
    for key in keys {
        for form in key_forms(key) {
            assert!(!text.contains(&form), "a signing key is in {what}");
        }
    }
}

fn cli(app: &TestApp, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(args)
        .arg("--config")
        .arg(&app.config_path)
        .output()
        .expect("run quo-sync");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_registered_at_start_checked_repaired_and_removed() {
    let logs = logs();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let mut app = TestApp::spawn_with(
        &csv(&[row("r-1", 1), row("r-2", 2)]),
        SandboxConfig::default(),
        &format!("[reverse]\nlisten = \"127.0.0.1:{port}\"\npoll_interval = \"0s\"\npublic_url = \"{public}\"\n"),
    )
    .await;
    app.cycle().await;
    let activity_csv = app.dir.path().join("activity.csv");
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(
        &app.config_path,
        format!(
            "{config}\n[activity]\npoll_interval = \"0s\"\n[activity.csv]\npath = \"{}\"\n",
            activity_csv.display()
        ),
    )
    .unwrap();
    app.restart().await;
    let service = app.start_service();
    until(
        "both webhooks registered",
        Duration::from_secs(10),
        || async { app.sandbox.webhook_subscriptions().len() == 2 },
    )
    .await;
    until(
        "their keys in the ledger",
        Duration::from_secs(10),
        || async { app.ledger().webhook_registrations().await.unwrap().len() == 2 },
    )
    .await;
    let registrations = app.ledger().webhook_registrations().await.unwrap();
    assert!(
        registrations
            .iter()
            .all(|r| r.signing_key.starts_with("whsec_"))
    );
    let subscriptions = app.sandbox.webhook_subscriptions();
    let activity_sub = subscriptions
        .iter()
        .find(|s| s["url"] == format!("{public}/webhooks/quo/activity"))
        .expect("the activity webhook");
    assert_eq!(activity_sub["events"].as_array().unwrap().len(), 8);
    assert_eq!(activity_sub["resourceIds"], serde_json::json!(["*"]));

    // Deliveries signed with the registered keys are accepted: a call lands in the CSV, a
    // contact edit in the reverse inbox.
    app.sandbox
        .set_activity_enrichment_delay(Duration::from_secs(3600), Duration::from_secs(3600));
    let call = app.sandbox.activity_call(CallSpec {
        number: number_of(1),
        direction: Direction::Incoming,
        outcome: CallOutcome::Missed,
        ..CallSpec::default()
    });
    until(
        "the call in the activity file",
        Duration::from_secs(10),
        || async {
            csv_rows(&activity_csv)
                .iter()
                .any(|r| r["activity_id"] == call && r["record_id"] == "r-1")
        },
    )
    .await;
    app.sandbox.app_edit(
        &app.quo_id("r-2"),
        serde_json::json!({"defaultFields": {"company": "Registered Co"}}),
    );
    app.wait_for_inbox_containing("Registered Co").await;
    service.stop().await;
    app.restart().await;

    // Keys never shown: not in status, not in `webhooks list`, not in the service's logs.
    let mut keys: Vec<String> = registrations
        .iter()
        .map(|r| r.signing_key.clone())
        .collect();
    let (code, status) = cli(&app, &["status", "--json"]);
    assert_eq!(code, 0, "{status}");
    let (code, list) = cli(&app, &["webhooks", "list"]);
    assert_eq!(code, 0, "{list}");
    assert_no_key(&keys, &status, "`status --json`");
    assert_no_key(&keys, &list, "`webhooks list`");
    let captured = logs.contents();
    assert!(
        captured.contains("webhook_repaired") && captured.contains("activity_webhook_received"),
        "the registration and a signed delivery were logged"
    );
    assert_no_key(&keys, &captured, "the logs");
    assert!(
        list.contains("activity") && list.contains("contacts"),
        "{list}"
    );

    // Someone disables the activity webhook and deletes the contact one: ensure repairs both.
    let activity_id = activity_sub["id"].as_str().unwrap().to_string();
    assert!(
        app.sandbox
            .set_webhook_subscription_enabled(&activity_id, false)
    );
    let contacts_id = registrations
        .iter()
        .find(|r| r.purpose == "contacts")
        .unwrap()
        .subscription_id
        .clone();
    assert!(app.sandbox.delete_webhook_subscription(&contacts_id));
    let (code, out) = cli(&app, &["webhooks", "ensure"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("repaired (disabled)") && out.contains("recreated"),
        "{out}"
    );
    let recreated = app.ledger().webhook_registrations().await.unwrap();
    keys.extend(recreated.iter().map(|r| r.signing_key.clone()));
    assert_no_key(&keys, &out, "`webhooks ensure`");
    let subscriptions = app.sandbox.webhook_subscriptions();
    assert_eq!(subscriptions.len(), 2);
    assert!(subscriptions.iter().all(|s| s["status"] == "enabled"));

    // A ledger that lost its keys adopts the subscriptions at our URLs (key rotated), makes none.
    app.ledger()
        .debug_execute("DELETE FROM webhook_registrations")
        .await
        .unwrap();
    let (code, out) = cli(&app, &["webhooks", "ensure", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("\"action\": \"adopted\"").count(), 2, "{out}");
    let adopted = app.ledger().webhook_registrations().await.unwrap();
    keys.extend(adopted.iter().map(|r| r.signing_key.clone()));
    assert_no_key(&keys, &out, "`webhooks ensure --json`");
    assert_eq!(
        app.sandbox.webhook_subscriptions().len(),
        2,
        "no second subscription"
    );

    let (code, out) = cli(&app, &["webhooks", "remove"]);
    assert_eq!(code, 0, "{out}");
    assert_no_key(&keys, &out, "`webhooks remove`");
    assert_no_key(&keys, &logs.contents(), "the logs");
    assert!(app.sandbox.webhook_subscriptions().is_empty());
    assert!(
        app.ledger()
            .webhook_registrations()
            .await
            .unwrap()
            .is_empty()
    );
}

/// Registering a webhook is a write to Quo: while syncing is paused a starting leader sends none,
/// and registers both once `quo-sync resume` is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_the_registration_until_resume() {
    let logs = logs();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let mut app = TestApp::spawn_with(
        &csv(&[row("r-1", 1)]),
        SandboxConfig::default(),
        &format!("[reverse]\nlisten = \"127.0.0.1:{port}\"\npoll_interval = \"0s\"\npublic_url = \"{public}\"\n"),
    )
    .await;
    app.cycle().await;
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(
        &app.config_path,
        format!(
            "{config}\n[activity]\npoll_interval = \"0s\"\n[activity.csv]\npath = \"{}\"\n",
            app.dir.path().join("activity.csv").display()
        ),
    )
    .unwrap();
    app.restart().await;
    quo_sync::ops::control::pause(app.ledger(), "test@desk", None)
        .await
        .unwrap();
    let service = app.start_service();
    until("the service listening", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    // Three of the registration's looks at the pause (logged at trace; only this test pauses).
    until(
        "the registration waiting for resume",
        Duration::from_secs(10),
        || async {
            logs.contents()
                .matches("webhook_registration_waiting")
                .count()
                >= 3
        },
    )
    .await;
    assert!(
        logs.contents().contains("webhook_registration_paused"),
        "the wait is logged for the operator"
    );
    assert!(
        app.sandbox.webhook_subscriptions().is_empty(),
        "nothing registered while paused"
    );
    quo_sync::ops::control::resume(app.ledger(), "test@desk")
        .await
        .unwrap();
    until(
        "both webhooks registered after resume",
        Duration::from_secs(10),
        || async { app.sandbox.webhook_subscriptions().len() == 2 },
    )
    .await;
    service.stop().await;
}
