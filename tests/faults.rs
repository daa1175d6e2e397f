//! Faults from outside the happy path (issue #21): a key that points at another workspace, POSTs
//! whose outcome became unknown, a leader whose lease ran out under a write, what was typed on a
//! twin outside the mapping, and a live leader whose process another user cannot see.

mod common;

use std::time::Duration;

use common::{TestApp, csv, row};
use quo_sync::sandbox::SandboxConfig;

fn rows(n: u32) -> Vec<String> {
    (1..=n).map(|i| row(&format!("c-{i}"), i)).collect()
}

/// `n` rows, c-1's company changed (so the next cycle PATCHes it).
fn rows_with_c1_edited(n: u32) -> Vec<String> {
    let mut rows = rows(n);
    rows[0] = rows[0].replace("Acme 1,", "Initech,");
    rows
}

/// 20 records synced, a scan every cycle, `reverse.on_quo_delete = policy`.
async fn synced_app(policy: &str, fraction: f64) -> TestApp {
    let app = TestApp::spawn_with(
        &csv(&rows(20)),
        SandboxConfig::default(),
        &format!(
            "[sync]\nmax_delete_fraction = {fraction}\n\
             [reverse]\npoll_interval = \"1ms\"\non_quo_delete = \"{policy}\"\n"
        ),
    )
    .await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 20);
    app
}

/// What a key for another workspace must leave as it was: every record linked to its contact,
/// nothing written into the other workspace.
async fn assert_nothing_unlinked_or_leaked(app: &TestApp) {
    assert_eq!(app.ledger().linked_count().await.unwrap(), 20);
    for i in 1..=20 {
        let id = format!("c-{i}");
        let row = app.row(&id).await;
        assert!(row.quo_id.is_some(), "{id} unlinked: {row:?}");
    }
    assert!(
        app.sandbox.foreign_contacts().is_empty(),
        "contacts leaked into the other workspace: {:#?}",
        app.sandbox.foreign_contacts()
    );
    assert_eq!(app.sandbox.contacts().len(), 20);
}

/// The key points at another workspace for a while (every id answers 404, lists are empty):
/// under `recreate` nothing is re-created there, no record is unlinked, the cycle reports the
/// refusal; once the key points home again, the CRM edit made meanwhile goes through.
#[tokio::test]
async fn a_key_for_another_workspace_recreates_nothing_there() {
    wrong_workspace_scenario("recreate", 0.1).await;
}

/// The same under `unlink` (which used to unlink every record, sticky, so sync silently
/// stopped).
#[tokio::test]
async fn a_key_for_another_workspace_unlinks_nothing() {
    wrong_workspace_scenario("unlink", 0.1).await;
}

/// With the fraction guard wide open (`max_delete_fraction = 1.0`) the workspace check alone
/// stops it: a sample of linked contacts read back is not there.
#[tokio::test]
async fn a_key_for_another_workspace_is_caught_by_the_read_back_even_without_the_guard() {
    wrong_workspace_scenario("recreate", 1.0).await;
}

async fn wrong_workspace_scenario(policy: &str, fraction: f64) {
    let app = synced_app(policy, fraction).await;
    app.write_csv(&csv(&rows_with_c1_edited(20)));
    app.sandbox.set_foreign_workspace(true);
    for _ in 0..2 {
        let report = app.cycle().await;
        assert_nothing_unlinked_or_leaked(&app).await;
        assert!(report.mass_delete_refused, "{report:#?}");
        assert_eq!(report.status(), "mass_delete_refused");
    }
    app.sandbox.set_foreign_workspace(false);
    let report = app.cycle().await;
    assert!(!report.mass_delete_refused, "{report:#?}");
    assert_eq!(report.counts.updated, 1, "{report:#?}");
    assert_nothing_unlinked_or_leaked(&app).await;
    assert_eq!(
        app.contact_for("c-1")["defaultFields"]["company"],
        "Initech"
    );
}

/// Genuine deletions in the Quo app, within the guard, still take effect once the workspace
/// check has read linked contacts back: the check tells a wrong workspace from a deletion.
#[tokio::test]
async fn deletions_made_in_quo_within_the_guard_are_still_applied() {
    let app = synced_app("unlink", 0.1).await;
    for id in ["c-3", "c-4"] {
        let quo_id = app.quo_id(id);
        assert!(app.sandbox.app_delete(&quo_id));
    }
    let report = app.cycle().await;
    assert!(!report.mass_delete_refused, "{report:#?}");
    assert_eq!(app.ledger().linked_count().await.unwrap(), 18);
    for id in ["c-3", "c-4"] {
        assert!(app.row(id).await.quo_id.is_none(), "{id} still linked");
    }
}

/// `quo-sync once` against a key for another workspace exits 3 and logs `mass_delete_refused`.
#[tokio::test]
async fn once_exits_3_when_the_key_points_at_another_workspace() {
    let app = synced_app("recreate", 0.1).await;
    app.sandbox.set_foreign_workspace(true);
    app.ctx.ledger.close().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["once", "--config"])
        .arg(&app.config_path)
        .env_remove("QUO_SYNC_CONFIG")
        .env("QUO_SYNC__LOG__FORMAT", "json")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("once finishes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("\"mass_delete_refused\""), "{stderr}");
    assert!(app.sandbox.foreign_contacts().is_empty());
}
