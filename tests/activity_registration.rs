//! quo-sync registers its own webhooks (`reverse.public_url`): at start, through the dated API,
//! the activity webhook and the contact webhook, with the keys kept in the ledger and never
//! shown; deliveries signed with them are accepted; a disabled or deleted subscription is
//! repaired by `quo-sync webhooks ensure`, one found without a key is adopted, and
//! `webhooks remove` takes them away.

mod common;
mod support;

use std::process::Command;
use std::time::Duration;

use common::{TestApp, csv, row};
use quo_sync::sandbox::SandboxConfig;
use quo_sync::sandbox::activity::{CallOutcome, CallSpec, Direction};
use support::activity::{csv_rows, free_port, number_of, until};

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

    // Keys never shown: not in status, not in `webhooks list`.
    let keys: Vec<String> = registrations
        .iter()
        .map(|r| r.signing_key.clone())
        .collect();
    let (code, status) = cli(&app, &["status", "--json"]);
    assert_eq!(code, 0, "{status}");
    let (code, list) = cli(&app, &["webhooks", "list"]);
    assert_eq!(code, 0, "{list}");
    for key in &keys {
        let bare = key.trim_start_matches("whsec_");
        assert!(
            !status.contains(bare) && !list.contains(bare),
            "a signing key was shown"
        );
    }
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
    assert_eq!(
        app.sandbox.webhook_subscriptions().len(),
        2,
        "no second subscription"
    );

    let (code, out) = cli(&app, &["webhooks", "remove"]);
    assert_eq!(code, 0, "{out}");
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
    // Several of the registration's quarter-second looks at the pause.
    tokio::time::sleep(Duration::from_millis(1500)).await;
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
