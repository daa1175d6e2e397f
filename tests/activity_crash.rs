//! SIGKILL of the real binary between the CRM's write of an activity and quo-sync's commit of
//! it: the fake CRM stores the create, then holds its answer while the process is killed.
//! Restarted, quo-sync finds the activity `writing` in its ledger: where the CRM has a lookup
//! (HubSpot, by the unique `quo_activity_id`), it adopts the object and makes no second one;
//! where it has none (Pipedrive), it sends the create again and counts the possible duplicate,
//! at most one per crash, as docs/activity.md says.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::unlimited_sandbox;
use quo_sync::ledger::Ledger;
use quo_sync::sandbox::SandboxHandle;
use quo_sync::sandbox::activity::{CallOutcome, CallSpec, Direction};
use serde_json::{Value, json};
use support::activity::{number_of, point_at, receiver, set, text, until, vendor_example};
use support::token_crm::TokenCrm;

/// `table` (a vendor's examples) served by `quo-sync run` on a free port, subscribed to the
/// sandbox's activity events, cycling every second with the activity poller off: the config
/// file under `dir`, and the port of the webhook receiver.
async fn service_config(
    dir: &Path,
    sandbox: &SandboxHandle,
    mut table: toml::Table,
) -> (PathBuf, u16) {
    let (port, key) = receiver(sandbox).await;
    point_at(&mut table, sandbox, &dir.join("ledger.db"), port, &key);
    set(&mut table, &["schedule", "interval"], text("1s"));
    set(&mut table, &["activity", "poll_interval"], text("0s"));
    let path = dir.join("quo-sync.toml");
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    (path, port)
}

fn run(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn quo-sync run")
}

/// Kills the process while the CRM holds the answer to the create it just stored; restarts it;
/// returns the CRM's objects for the call and the ledger.
async fn kill_between_write_and_commit(
    crm: &TokenCrm,
    sandbox: &SandboxHandle,
    (config, port): (&Path, u16),
    dir: &Path,
) -> (Vec<Value>, Ledger, String) {
    let mut child = run(config);
    let ledger = Ledger::open(&dir.join("ledger.db")).await.unwrap();
    until("contacts synced", Duration::from_secs(30), || async {
        sandbox.contacts().len() == 3
    })
    .await;
    // The service listens before the webhook fires (the poller is off: a delivery refused
    // now would be retried by the sandbox, not filled).
    until("the service listening", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    crm.hold_creates(Some(Duration::from_secs(30)));
    sandbox.set_activity_enrichment_delay(Duration::from_secs(3600), Duration::from_secs(3600));
    let call = sandbox.activity_call(CallSpec {
        number: number_of(1),
        direction: Direction::Incoming,
        outcome: CallOutcome::Missed,
        ..CallSpec::default()
    });
    until(
        "the CRM stored the create",
        Duration::from_secs(20),
        || async { crm.objects().len() == 1 },
    )
    .await;
    let row = ledger
        .activity_rows(std::slice::from_ref(&call))
        .await
        .unwrap();
    assert_eq!(
        row[0].state().as_str(),
        "writing",
        "the intent was committed before the create"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    crm.hold_creates(None);
    let mut child = run(config);
    until(
        "the interrupted create settled",
        Duration::from_secs(30),
        || async {
            let rows = ledger
                .activity_rows(std::slice::from_ref(&call))
                .await
                .unwrap();
            rows[0].state().as_str() == "written"
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    (crm.objects(), ledger, call)
}

fn contacts_hubspot() -> Vec<(String, Value)> {
    (1..=3)
        .map(|n| {
            (
                format!("{}", 1000 + n),
                json!({"firstname": format!("H{n}"), "lastname": "Spot", "phone": number_of(n)}),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_with_a_lookup_gets_no_second_activity_after_a_sigkill_between_write_and_commit() {
    let sandbox = unlimited_sandbox().await;
    let crm = support::hubspot::start(contacts_hubspot()).await;
    let dir = tempfile::tempdir().unwrap();
    let hubspot = vendor_example(
        dir.path(),
        "hubspot",
        &[("https://api.hubapi.com", crm.base_url.clone())],
        &[("token", support::hubspot::TOKEN)],
    );
    let (config, port) = service_config(dir.path(), &sandbox, hubspot).await;
    let (objects, ledger, call) =
        kill_between_write_and_commit(&crm, &sandbox, (&config, port), dir.path()).await;
    let for_call: Vec<_> = objects
        .iter()
        .filter(|o| o["properties"]["quo_activity_id"] == call)
        .collect();
    assert_eq!(
        for_call.len(),
        1,
        "adopted by lookup, not created twice: {objects:#?}"
    );
    let row = &ledger
        .activity_rows(std::slice::from_ref(&call))
        .await
        .unwrap()[0];
    assert_eq!(
        row.crm_id.as_deref(),
        for_call[0]["id"].as_str(),
        "the ledger holds the CRM's id"
    );
    assert_eq!(row.possible_duplicates, 0);
    assert!(
        crm.books().objects.lookups >= 1,
        "the restart looked the activity up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_without_a_lookup_gets_at_most_one_duplicate_per_crash_and_it_is_counted() {
    let sandbox = unlimited_sandbox().await;
    let persons: Vec<Value> = (1..=3)
        .map(|n| json!({"id": n, "first_name": format!("P{n}"), "last_name": "Drive", "phone": [{"label": "mobile", "value": number_of(n)}], "email": []}))
        .collect();
    let crm = support::pipedrive::start(persons).await;
    let dir = tempfile::tempdir().unwrap();
    let pipedrive = vendor_example(
        dir.path(),
        "pipedrive",
        &[("https://yourcompany.pipedrive.com", crm.base_url.clone())],
        &[("token", support::pipedrive::TOKEN)],
    );
    let (config, port) = service_config(dir.path(), &sandbox, pipedrive).await;
    let (objects, ledger, call) =
        kill_between_write_and_commit(&crm, &sandbox, (&config, port), dir.path()).await;
    let for_call = objects
        .iter()
        .filter(|o| o["note"].as_str().unwrap_or_default().contains(&call))
        .count();
    assert_eq!(
        for_call, 2,
        "no lookup: the create was sent again, one duplicate"
    );
    assert_eq!(
        ledger.activity_possible_duplicates().await.unwrap(),
        1,
        "and it is counted"
    );
    let status = quo_sync::ops::status(&ledger).await.unwrap().render();
    assert!(status.contains("possible duplicates 1"), "{status}");
}
