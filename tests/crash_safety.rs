//! Kill the real binary with SIGKILL at many points of a cycle, restart it, and check the end
//! state: exactly one Quo contact per record and every Quo id in the ledger.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Backend, TestApp, csv, row};
use quo_sync::sandbox::SandboxConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_never_duplicates_or_loses_an_id() {
    sigkill_scenario(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_never_duplicates_or_loses_an_id_on_postgres() {
    sigkill_scenario(Backend::Postgres).await;
}

async fn sigkill_scenario(backend: Backend) {
    let ids: Vec<String> = (1..=40).map(|i| format!("k-{i}")).collect();
    let rows: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| row(id, i as u32 + 1))
        .collect();
    let Some(app) = TestApp::spawn_on(
        backend,
        &csv(&rows),
        SandboxConfig {
            latency: Duration::from_millis(15),
            conflict_on_duplicate: false,
            ..SandboxConfig::default()
        },
        "",
    )
    .await
    else {
        return;
    };
    // A fixed, varied schedule of kill points (ms after start): deterministic yet spread over
    // start-up, mid-create and commit windows.
    let kill_after_ms = [5u64, 40, 90, 25, 160, 60, 230, 110, 15, 300, 75, 140];
    for delay in kill_after_ms {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quo-sync"))
            .args(["once", "--config"])
            .arg(&app.config_path)
            .env("QUO_SYNC__QUO__CONCURRENCY", "8")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn quo-sync");
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let _ = child.kill(); // SIGKILL on Unix
        let _ = child.wait();
    }
    // Finally let a run complete.
    let status = Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["once", "--config"])
        .arg(&app.config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run quo-sync");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        app.sandbox.contacts().len(),
        40,
        "one contact per record, no more"
    );
    app.assert_one_contact_per_record(&ids).await;
}
