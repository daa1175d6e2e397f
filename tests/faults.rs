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

/// A sandbox that accepts a second contact with the same externalId (as Quo's older API did),
/// so a POST sent twice can make a twin; scans are off until [`scan_every_cycle`].
async fn spawn_twinnable(n: u32) -> TestApp {
    let mut app = TestApp::spawn_with(
        &csv(&rows(n)),
        SandboxConfig {
            conflict_on_duplicate: false,
            ..SandboxConfig::default()
        },
        "[reverse]\npoll_interval = \"1ms\"\n",
    )
    .await;
    app.ctx.settings.poll_interval = None;
    app.cycle().await;
    app
}

/// Scans again in every cycle, so the twins a lagging list hid are found.
fn scan_every_cycle(app: &mut TestApp) {
    app.ctx.settings.poll_interval = Some(Duration::from_millis(1));
}

async fn unconfirmed(app: &TestApp, id: &str) -> usize {
    app.ledger().unconfirmed_for(id).await.unwrap().len()
}

/// The next `n` contacts created stay out of list answers (`scope`, for `lists` list requests
/// or until cleared).
async fn hide_next_created(app: &TestApp, n: u32, scope: &str, lists: Option<u32>) {
    let mut spec = serde_json::json!({"kind": "lagging_list", "next_created": n, "scope": scope});
    if let Some(lists) = lists {
        spec["lists"] = lists.into();
    }
    common::sandbox_fault(&app.sandbox.base_url(), spec).await;
}

/// The next `n` writes are applied, then answered 502.
async fn applied_then_502(app: &TestApp, n: u32) {
    common::sandbox_fault(
        &app.sandbox.base_url(),
        serde_json::json!({"kind": "status_after_write", "status": 502, "count": n}),
    )
    .await;
}

/// Clears the faults and scans until the workspace holds one contact per record again (or
/// fails after a few cycles), with no unconfirmed create left.
async fn converges(app: &mut TestApp, ids: &[&str]) {
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    scan_every_cycle(app);
    for _ in 0..4 {
        app.cycle().await;
    }
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    app.assert_one_contact_per_record(&ids).await;
    for id in &ids {
        assert_eq!(unconfirmed(app, id).await, 0, "{id}: entries left");
    }
}

/// Retries run out after 5xx resends, each POST having landed behind a lagging list: every one
/// is on record, so every twin it made is found and removed later.
#[tokio::test]
async fn every_post_of_a_create_that_ran_out_of_retries_after_5xx_is_on_record() {
    let mut app = spawn_twinnable(2).await;
    app.write_csv(&csv(&rows(3)));
    // `max_retries = 10`: eleven POSTs, each applied, answered 502 and hidden from lists.
    hide_next_created(&app, 11, "all", None).await;
    applied_then_502(&app, 11).await;
    let report = app.cycle().await;
    assert_eq!(report.counts.quarantined, 1, "{report:#?}");
    assert_eq!(app.sandbox.count_by_external_id("c-3"), 11);
    assert_eq!(
        unconfirmed(&app, "c-3").await,
        11,
        "each POST that may have landed is on record"
    );
    converges(&mut app, &["c-1", "c-2", "c-3"]).await;
}

/// A 5xx'd POST is resent and the second one times out (its connection lost after Quo applied
/// it): both are on record, not only the last one's intent.
#[tokio::test]
async fn a_create_that_timed_out_after_a_5xx_resend_leaves_both_posts_on_record() {
    let mut app = spawn_twinnable(2).await;
    app.write_csv(&csv(&rows(3)));
    hide_next_created(&app, 2, "all", None).await;
    applied_then_502(&app, 1).await;
    app.sandbox
        .inject(quo_sync::sandbox::Fault::DropAfterWrite { count: 1 });
    let report = app.cycle().await;
    assert_eq!(report.counts.quarantined, 1, "{report:#?}");
    assert_eq!(app.sandbox.count_by_external_id("c-3"), 2);
    assert_eq!(unconfirmed(&app, "c-3").await, 2);
    converges(&mut app, &["c-1", "c-2", "c-3"]).await;
}

/// The lookup after a 5xx adopts the contact an earlier cycle's lost POST made, not the one the
/// 5xx'd POST may have made: that POST stays on record, and its twin is removed later. The CRM
/// changed after the first POST, so the entry the adopted contact settles is the oldest one, and
/// the two later POSTs (a lost answer, then the 5xx) must each still have theirs.
#[tokio::test]
async fn a_5xx_resolved_by_adopting_an_older_contact_keeps_its_own_post_on_record() {
    let mut app = spawn_twinnable(2).await;
    app.write_csv(&csv(&rows(3)));
    // Six lookups miss: one after each lost answer, two before each later POST.
    hide_next_created(&app, 3, "by_external_id", Some(6)).await;
    app.sandbox
        .inject(quo_sync::sandbox::Fault::DropAfterWrite { count: 2 });
    app.cycle().await;
    let mut edited = rows(3);
    edited[2] = edited[2].replace("Acme 3,", "Globex,");
    app.write_csv(&csv(&edited));
    app.cycle().await;
    assert_eq!(app.sandbox.count_by_external_id("c-3"), 2);
    // The third POST lands and answers 502; the lookup after it (the lag over) adopts the
    // oldest contact, the first POST's.
    applied_then_502(&app, 1).await;
    app.cycle().await;
    assert_eq!(app.sandbox.count_by_external_id("c-3"), 3);
    assert_eq!(
        unconfirmed(&app, "c-3").await,
        2,
        "one entry per twin: the lost answer's and the 5xx'd POST's"
    );
    converges(&mut app, &["c-1", "c-2", "c-3"]).await;
    assert_eq!(app.contact_for("c-3")["defaultFields"]["company"], "Globex");
}
