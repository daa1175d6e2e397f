//! Deciding what syncs (issue #27), on the sandbox: `sync.filter`, `sync.on_leave_scope`,
//! `sync.mode`, computed mapping entries, pause/resume and run-now, and `check-config` on a
//! bad filter.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestApp, csv, row};
use quo_sync::domain::ExternalId;
use quo_sync::ledger::RecordState;
use quo_sync::sandbox::SandboxConfig;

/// Rows `r-1` … `r-n` (lead score n).
fn rows(n: u32) -> Vec<String> {
    (1..=n).map(|i| row(&format!("r-{i}"), i)).collect()
}

/// The ledger row of `id`.
async fn ledger_row(app: &TestApp, id: &str) -> quo_sync::ledger::RecordRow {
    app.ledger()
        .record(&ExternalId::parse(id).unwrap())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("ledger row for {id}"))
}

/// Appends TOML to the config and reloads it (as a restarted service would).
async fn reconfigure(app: &mut TestApp, extra: &str) {
    let mut text = std::fs::read_to_string(&app.config_path).unwrap();
    text.push_str(extra);
    std::fs::write(&app.config_path, text).unwrap();
    app.restart().await;
}

#[tokio::test]
async fn a_filter_keeps_12_of_40_rows_and_only_12_contacts_are_created() {
    let app = TestApp::spawn_with(
        &csv(&rows(40)),
        SandboxConfig::default(),
        "[sync]\nfilter = 'record.lead_score != \"\" && int(record.lead_score) > 28'\n",
    )
    .await;
    let plan = app.plan().await;
    assert_eq!(plan.counts.created, 12, "{:?}", plan.counts);
    assert_eq!((plan.counts.in_scope, plan.counts.out_of_scope), (12, 28));

    let report = app.cycle().await;
    assert_eq!(report.counts.created, 12);
    assert_eq!(report.counts.out_of_scope, 28);
    assert_eq!(app.sandbox.contacts().len(), 12, "only the 12 in scope");
    assert_eq!(app.sandbox.stats().writes.creates, 12);
    for i in 1..=40 {
        let id = format!("r-{i}");
        assert_eq!(
            app.sandbox.count_by_external_id(&id),
            usize::from(i > 28),
            "{id}"
        );
    }
    assert_eq!(ledger_row(&app, "r-3").await.state, RecordState::OutOfScope);

    // The next cycle recognises every row by its fingerprint: nothing sent, judgements kept.
    app.sandbox.reset_stats();
    let again = app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0);
    assert_eq!(
        (
            again.counts.unchanged,
            again.counts.out_of_scope,
            again.counts.in_scope
        ),
        (12, 28, 12)
    );
    let status = quo_sync::ops::status(app.ledger()).await.unwrap();
    assert_eq!((status.scope.in_scope, status.scope.out_of_scope), (12, 28));
}

/// `rows` under a filter on `role` (`Buyer` is in scope) with `on_leave_scope = policy`, a
/// guard at 0.5 and a scan every cycle.
async fn spawn_filtered(rows: &[String], policy: &str) -> TestApp {
    TestApp::spawn_with(
        &csv(rows),
        SandboxConfig::default(),
        &format!(
            "[sync]\nfilter = 'record.role == \"Buyer\"'\non_leave_scope = \"{policy}\"\nmax_delete_fraction = 0.5\n[reverse]\npoll_interval = \"1ms\"\n"
        ),
    )
    .await
}

/// Three records synced under a filter on `role`; r-2 is then edited out of scope and back.
async fn leave_and_return(policy: &str) -> (TestApp, String) {
    let app = spawn_filtered(&rows(3), policy).await;
    app.cycle().await;
    let quo_id = app.quo_id("r-2");
    let out = rows(3)
        .into_iter()
        .map(|r| {
            if r.starts_with("r-2,") {
                r.replace(",Buyer,", ",Lead,").replace("Acme 2", "Moved Co")
            } else {
                r
            }
        })
        .collect::<Vec<_>>();
    app.write_csv(&csv(&out));
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(report.counts.left_scope, 1, "{:?}", report.counts);
    assert_eq!(
        app.sandbox.stats().writes.updates,
        0,
        "no PATCH out of scope"
    );
    (app, quo_id)
}

/// r-2 back in scope, with the company it got while out.
fn back_in_scope(app: &TestApp) {
    let back = rows(3)
        .into_iter()
        .map(|r| {
            if r.starts_with("r-2,") {
                r.replace("Acme 2", "Moved Co")
            } else {
                r
            }
        })
        .collect::<Vec<_>>();
    app.write_csv(&csv(&back));
}

/// A record whose create's answer was lost, edited back out of scope (to the very row it was
/// last judged out of scope on) before the create is resolved: once the lookup finds its
/// contact, the record leaves scope (here: unlinked), instead of taking that row for one already
/// judged and staying linked and updated as if in scope.
#[tokio::test]
async fn a_lost_create_resolved_after_its_record_left_scope_again_leaves() {
    let lead = |rows: Vec<String>| -> Vec<String> {
        rows.into_iter()
            .map(|r| {
                if r.starts_with("r-2,") {
                    r.replace(",Buyer,", ",Lead,")
                } else {
                    r
                }
            })
            .collect()
    };
    let app = spawn_filtered(&lead(rows(3)), "unlink").await;
    let report = app.cycle().await;
    assert_eq!(report.counts.out_of_scope, 1, "{:?}", report.counts);
    // In scope: its POST lands, the answer is lost and no list shows the contact yet.
    app.write_csv(&csv(&rows(3)));
    common::sandbox_fault(
        &app.sandbox.base_url(),
        serde_json::json!({"kind": "lagging_list", "next_created": 1, "scope": "all"}),
    )
    .await;
    app.sandbox
        .inject(quo_sync::sandbox::Fault::DropAfterWrite { count: 1 });
    app.sandbox.set_webhook(None);
    app.cycle().await;
    assert_eq!(
        app.sandbox.count_by_external_id("r-2"),
        1,
        "the POST landed"
    );
    assert_eq!(
        ledger_row(&app, "r-2").await.state,
        RecordState::PendingCreate
    );
    // Out of scope again, the very row judged at first; then the contact shows.
    app.write_csv(&csv(&lead(rows(3))));
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    for _ in 0..3 {
        app.cycle().await;
    }
    let row = ledger_row(&app, "r-2").await;
    assert_eq!(
        (row.state, row.quo_id),
        (RecordState::LeftScope, None),
        "r-2 is out of scope, its contact found: it must leave (unlink)"
    );
    assert_eq!(
        app.sandbox.count_by_external_id("r-2"),
        1,
        "no second contact"
    );
}

/// A Quo edit of a field the filter reads, written back to the CRM, takes the record out of
/// scope: the next cycle judges the row it wrote and the record leaves scope (here: unlinked),
/// instead of taking the written row for unchanged and updating it as if in scope.
#[tokio::test]
async fn a_quo_edit_written_back_that_takes_a_record_out_of_scope_makes_it_leave() {
    let app = spawn_filtered(&rows(3), "unlink").await;
    app.cycle().await;
    let quo_id = app.quo_id("r-2");
    app.sandbox
        .app_edit(
            &quo_id,
            serde_json::json!({"defaultFields": {"role": "Lead"}}),
        )
        .unwrap();
    // The CRM changed another field meanwhile: the write-back is followed by a PATCH to Quo,
    // which must not commit the written row as judged either.
    let edited: Vec<String> = rows(3)
        .into_iter()
        .map(|r| r.replace("Acme 2,", "Moved Co,"))
        .collect();
    app.write_csv(&csv(&edited));
    let report = app.cycle().await;
    assert_eq!(
        (report.counts.written_to_crm, report.counts.updated),
        (1, 1),
        "{:?}",
        report.counts
    );
    assert!(app.csv_text().contains(",Lead,"), "{}", app.csv_text());
    let report = app.cycle().await;
    assert_eq!(report.counts.left_scope, 1, "{:?}", report.counts);
    let row = ledger_row(&app, "r-2").await;
    assert_eq!((row.state, row.quo_id), (RecordState::LeftScope, None));
    assert!(app.sandbox.contact(&quo_id).is_some(), "the contact stays");
}

#[tokio::test]
async fn a_record_that_leaves_scope_is_kept_and_relinks_with_no_duplicate() {
    let (app, quo_id) = leave_and_return("keep").await;
    let row = ledger_row(&app, "r-2").await;
    assert_eq!(row.state, RecordState::LeftScope);
    assert_eq!(
        row.quo_id.as_ref().map(|q| q.as_str()),
        Some(quo_id.as_str())
    );
    assert!(app.sandbox.contact(&quo_id).is_some(), "the contact stays");

    // An edit made in Quo to the out-of-scope contact is not written to the CRM.
    let before = app.csv_text();
    app.sandbox
        .app_edit(
            &quo_id,
            serde_json::json!({"defaultFields": {"role": "Edited in Quo"}}),
        )
        .unwrap();
    app.cycle().await;
    assert_eq!(app.csv_text(), before, "nothing written to the CRM");

    back_in_scope(&app);
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(app.sandbox.count_by_external_id("r-2"), 1, "no duplicate");
    assert_eq!(app.quo_id("r-2"), quo_id, "relinked to its contact");
    assert_eq!(app.sandbox.stats().writes.creates, 0);
    assert_eq!(
        app.contact_for("r-2")["defaultFields"]["company"],
        "Moved Co",
        "what changed while out reaches Quo once back: {:?}",
        report.operations
    );
    assert_eq!(ledger_row(&app, "r-2").await.state, RecordState::Synced);
    assert_eq!(
        app.contact_for("r-2")["defaultFields"]["role"],
        "Buyer",
        "the edit made in Quo while out of scope is overwritten by the CRM's value on return"
    );
    assert!(!app.csv_text().contains("Edited in Quo"));
}

/// The same return while the key points at another workspace (the contact answers 404): the
/// record is not relinked on its old base, which would merge the edit made in Quo while it was
/// out into the CRM later; it comes back once the key points home, with the CRM's values.
#[tokio::test]
async fn a_record_back_in_scope_while_the_key_points_elsewhere_waits_for_its_contact() {
    let (app, quo_id) = leave_and_return("keep").await;
    app.sandbox
        .app_edit(
            &quo_id,
            serde_json::json!({"defaultFields": {"lastName": "Typed while out"}}),
        )
        .unwrap();
    app.cycle().await;
    app.write_csv(&csv(&rows(3)));
    app.sandbox.set_foreign_workspace(true);
    for _ in 0..2 {
        app.cycle().await;
    }
    assert_eq!(ledger_row(&app, "r-2").await.state, RecordState::LeftScope);
    app.sandbox.set_foreign_workspace(false);
    for _ in 0..3 {
        app.cycle().await;
    }
    assert_eq!(app.quo_id("r-2"), quo_id, "relinked to its contact");
    let contact = app.contact_for("r-2");
    assert_eq!(contact["defaultFields"]["lastName"], "Last2", "{contact:#}");
    assert!(!app.csv_text().contains("Typed while out"));
    assert!(app.sandbox.foreign_contacts().is_empty());
}

/// A record that left scope and comes back with its row exactly as it was when it left (only
/// the filter's field went out and back): the edit made in Quo meanwhile is not merged into the
/// CRM, and both sides agree again (the CRM's value is sent), rather than the contact keeping a
/// value the CRM never gets while nothing looks changed.
#[tokio::test]
async fn a_record_back_in_scope_unchanged_gets_the_crms_values_again() {
    let (app, quo_id) = leave_and_return("keep").await;
    app.sandbox
        .app_edit(
            &quo_id,
            serde_json::json!({"defaultFields": {"lastName": "Typed while out"}}),
        )
        .unwrap();
    app.cycle().await;
    app.write_csv(&csv(&rows(3)));
    app.cycle().await;
    app.cycle().await;
    assert_eq!(app.quo_id("r-2"), quo_id, "relinked to its contact");
    let contact = app.contact_for("r-2");
    assert_eq!(contact["defaultFields"]["lastName"], "Last2", "{contact:#}");
    assert_eq!(contact["defaultFields"]["company"], "Acme 2", "{contact:#}");
    assert!(!app.csv_text().contains("Typed while out"));
    assert_eq!(ledger_row(&app, "r-2").await.state, RecordState::Synced);
}

#[tokio::test]
async fn a_record_that_leaves_scope_is_unlinked_and_relinks_with_no_duplicate() {
    let (app, quo_id) = leave_and_return("unlink").await;
    let row = ledger_row(&app, "r-2").await;
    assert_eq!(row.state, RecordState::LeftScope);
    assert_eq!(row.quo_id, None, "unlinked");
    assert!(
        app.sandbox.contact(&quo_id).is_some(),
        "the contact stays in Quo"
    );

    back_in_scope(&app);
    app.sandbox.reset_stats();
    app.cycle().await;
    assert_eq!(app.sandbox.count_by_external_id("r-2"), 1, "no duplicate");
    assert_eq!(app.quo_id("r-2"), quo_id, "relinked to the same contact");
    assert_eq!(app.sandbox.stats().writes.creates, 0);
    assert_eq!(
        app.contact_for("r-2")["defaultFields"]["company"],
        "Moved Co"
    );
    assert_eq!(
        ledger_row(&app, "r-2").await.quo_id.map(|q| q.0),
        Some(quo_id)
    );
}

#[tokio::test]
async fn a_record_that_leaves_scope_is_deleted_behind_the_guard_and_comes_back_once() {
    let (app, quo_id) = leave_and_return("delete").await;
    assert!(app.sandbox.contact(&quo_id).is_none(), "deleted in Quo");
    assert_eq!(app.sandbox.stats().writes.deletes, 1);
    let row = ledger_row(&app, "r-2").await;
    assert_eq!((row.state, row.quo_id), (RecordState::LeftScope, None));

    back_in_scope(&app);
    app.cycle().await;
    assert_eq!(
        app.sandbox.count_by_external_id("r-2"),
        1,
        "created once again"
    );
    assert_ne!(app.quo_id("r-2"), quo_id);

    // Two of three leaving at once is past max_delete_fraction (0.5 of 3 allows 1): nothing
    // is deleted, and the records stay linked until an operator allows it.
    let out: Vec<String> = rows(3)
        .into_iter()
        .map(|r| {
            if r.starts_with("r-1,") || r.starts_with("r-3,") {
                r.replace(",Buyer,", ",Lead,")
            } else {
                r
            }
        })
        .collect();
    app.write_csv(&csv(&out));
    app.sandbox.reset_stats();
    let refused = app.cycle().await;
    assert!(refused.mass_delete_refused);
    assert_eq!(app.sandbox.stats().writes.deletes, 0);
    assert_eq!(app.sandbox.contacts().len(), 3);
    assert_eq!(ledger_row(&app, "r-1").await.state, RecordState::Synced);
}

#[tokio::test]
async fn update_only_creates_nothing_and_still_updates() {
    let mut app = TestApp::spawn(&csv(&rows(2))).await;
    app.cycle().await;
    reconfigure(&mut app, "[sync]\nmode = \"update_only\"\n").await;
    let mut edited = rows(3);
    edited[0] = edited[0].replace("Acme 1", "Enriched Co");
    app.write_csv(&csv(&edited));

    let plan = app.plan().await;
    assert_eq!(plan.counts.skipped_by_mode, 1, "{:?}", plan.operations);
    assert!(
        plan.operations
            .iter()
            .any(|op| op.external_id == "r-3" && op.action.as_str() == "skip"),
        "{:?}",
        plan.operations
    );
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(
        (
            report.counts.created,
            report.counts.updated,
            report.counts.skipped_by_mode
        ),
        (0, 1, 1)
    );
    assert_eq!(app.sandbox.stats().writes.creates, 0);
    assert_eq!(app.sandbox.count_by_external_id("r-3"), 0);
    assert_eq!(
        app.contact_for("r-1")["defaultFields"]["company"],
        "Enriched Co"
    );
    assert_eq!(ledger_row(&app, "r-3").await.state, RecordState::Skipped);
    let status = quo_sync::ops::status(app.ledger()).await.unwrap();
    assert_eq!(status.scope.skipped_by_mode, 1);

    // Skipped stays skipped while the row is unchanged (recognised by its fingerprint).
    app.sandbox.reset_stats();
    let again = app.cycle().await;
    assert_eq!(again.counts.skipped_by_mode, 1);
    assert_eq!(app.sandbox.stats().writes_total(), 0);
}

#[tokio::test]
async fn create_only_never_patches_a_managed_field() {
    let app = TestApp::spawn_with(
        &csv(&rows(2)),
        SandboxConfig::default(),
        "[sync]\nmode = \"create_only\"\n",
    )
    .await;
    assert_eq!(app.cycle().await.counts.created, 2);
    let mut edited = rows(3);
    edited[0] = edited[0]
        .replace("Acme 1", "CRM Co")
        .replace("first1@example.com", "new1@example.com");
    app.write_csv(&csv(&edited));
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 1, "new records are still created");
    assert_eq!(report.counts.skipped_by_mode, 1);
    assert_eq!(app.sandbox.stats().writes.updates, 0, "no PATCH");
    assert_eq!(app.contact_for("r-1")["defaultFields"]["company"], "Acme 1");
    // And not on the next cycle either.
    app.sandbox.reset_stats();
    app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0);
}

#[tokio::test]
async fn a_computed_company_reaches_quo_and_is_never_written_back() {
    let mut app = TestApp::spawn_with(
        &csv(&rows(2)),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"1ms\"\n",
    )
    .await;
    let text = std::fs::read_to_string(&app.config_path)
        .unwrap()
        .replace(
            "company = \"company\"",
            "company = { expr = 'record.company + \" / \" + record.role.upperAscii()' }",
        )
        .replace(
            "first_name = \"first_name\"",
            "first_name = { expr = 'record.first_name.title()' }",
        );
    std::fs::write(&app.config_path, text).unwrap();
    app.restart().await;
    app.cycle().await;
    let contact = app.contact_for("r-1");
    assert_eq!(contact["defaultFields"]["company"], "Acme 1 / BUYER");
    assert_eq!(contact["defaultFields"]["firstName"], "First1");

    // One-way: a Quo edit of the computed company changes no CSV cell, and Quo is set back
    // to the computed value.
    let before = app.csv_text();
    app.sandbox
        .app_edit(
            &app.quo_id("r-1"),
            serde_json::json!({"defaultFields": {"company": "Typed in Quo"}}),
        )
        .unwrap();
    app.cycle().await;
    assert_eq!(app.csv_text(), before);
    assert_eq!(
        app.contact_for("r-1")["defaultFields"]["company"],
        "Acme 1 / BUYER"
    );
}

#[tokio::test]
async fn paused_nothing_is_sent_and_after_resume_everything_pending_lands_once() {
    let app = TestApp::spawn_with(
        &csv(&rows(2)),
        SandboxConfig::default(),
        &format!(
            "[reverse]\nwebhook_secret = \"{}\"\npoll_interval = \"0s\"\n",
            common::whsec()
        ),
    )
    .await;
    let url = app.start_receiver().await;
    app.sandbox
        .set_webhook(Some(quo_sync::sandbox::WebhookTarget {
            url,
            secret_key: common::WEBHOOK_KEY.to_vec(),
            scheme: quo_sync::sandbox::WebhookScheme::Standard,
        }));
    app.cycle().await;
    app.cycle().await; // applies the echoes of our own creates

    let pause = quo_sync::ops::control::pause(app.ledger(), "tester@host", None)
        .await
        .unwrap();
    assert_eq!(pause.by, "tester@host");
    let mut edited = rows(2);
    edited[0] = edited[0].replace("Acme 1", "CSV Co");
    app.write_csv(&csv(&edited));
    app.sandbox
        .app_edit(
            &app.quo_id("r-2"),
            serde_json::json!({"defaultFields": {"role": "Quo Role"}}),
        )
        .unwrap();
    app.wait_for_inbox_containing("Quo Role").await;
    let before = app.csv_text();
    app.sandbox.reset_stats();
    let paused = app.cycle().await;
    assert_eq!(paused.status(), "paused");
    assert_eq!(app.sandbox.stats().writes_total(), 0, "nothing to Quo");
    assert_eq!(app.csv_text(), before, "nothing to the CRM");
    let status = quo_sync::ops::status(app.ledger()).await.unwrap();
    assert_eq!(
        status.paused.as_ref().map(|p| p.by.as_str()),
        Some("tester@host")
    );
    assert!(status.pending_reverse_events >= 1, "the webhook is kept");

    quo_sync::ops::control::resume(app.ledger(), "tester@host")
        .await
        .unwrap();
    app.cycle().await;
    assert_eq!(app.sandbox.stats().writes.updates, 1, "the CSV edit, once");
    assert_eq!(app.contact_for("r-1")["defaultFields"]["company"], "CSV Co");
    assert!(
        app.csv_text().contains("Quo Role"),
        "the Quo edit, written to the CRM"
    );
    assert_eq!(app.csv_text().matches("Quo Role").count(), 1);
    app.sandbox.reset_stats();
    app.cycle().await;
    app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0, "nothing twice");
}

#[tokio::test]
async fn a_pause_with_an_end_ends_by_itself() {
    let app = TestApp::spawn(&csv(&rows(1))).await;
    quo_sync::ops::control::pause(app.ledger(), "t", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(app.cycle().await.status(), "paused");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 1, "the pause ran out");
}

/// `run-now` starts a cycle on the leader within a second, not at its next tick an hour away.
/// The service notices the request within `ops::control::CONTROL_POLL` (250 ms); the cycle's
/// start is read from the run the leader records, so a loaded test machine's own polling does
/// not count against the product.
#[tokio::test]
async fn run_now_starts_a_cycle_on_the_leader_within_a_second() {
    let app = TestApp::spawn_with(
        &csv(&rows(1)),
        SandboxConfig::default(),
        "[schedule]\ninterval = \"1h\"\n",
    )
    .await;
    let service = app.start_service();
    let runs = |app: &TestApp| {
        let ledger = app.ledger().clone();
        async move { ledger.recent_runs(10).await.unwrap() }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs(&app).await.iter().all(|r| r.finished_at.is_none()) {
        assert!(Instant::now() < deadline, "the first cycle ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another process asks, through the ledger (as `quo-sync run-now` does).
    let other = quo_sync::ledger::Ledger::open(&app.dir.path().join("ledger.db"))
        .await
        .unwrap();
    // The cycle's start is read from the run the leader records, not from when this loop
    // next sees it: on a loaded machine the test's own polling lags the product.
    let asked = chrono::Utc::now();
    quo_sync::ops::control::run_now(&other, "tester")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        if let [newest, _, ..] = runs(&app).await.as_slice() {
            break newest.started_at.clone();
        }
        assert!(Instant::now() < deadline, "no cycle after run-now");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let started = chrono::DateTime::parse_from_rfc3339(&second).unwrap();
    let after = started.signed_duration_since(asked);
    // (The ledger stamps to the millisecond: a start in the request's millisecond is after it.)
    assert!(
        after > chrono::Duration::milliseconds(-1) && after < chrono::Duration::seconds(1),
        "a cycle within a second: it started {after} after the request"
    );
    other.close().await;
    service.stop().await;
}

#[test]
fn check_config_refuses_a_bad_filter_naming_the_expression_and_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quo-sync.toml");
    for (filter, column) in [
        (r#"record.status == "customer" &&"#, 31),
        (r#"record.status == "customer" && record.tier > 2"#, 44),
    ] {
        std::fs::write(
            &path,
            format!("[source]\nkind = \"csv\"\npath = \"c.csv\"\n[sync]\nfilter = '{filter}'\n"),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_quo-sync"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("sync.filter"), "{stderr}");
        assert!(stderr.contains(filter), "names the expression: {stderr}");
        assert!(
            stderr.contains(&format!("line 1, column {column}")),
            "names the position: {stderr}"
        );
    }
}

#[tokio::test]
async fn update_only_with_matching_enriches_the_contacts_already_in_quo_and_creates_nothing() {
    // r-1 exists by phone, r-2 by email (Quo's own contacts, made in the app); r-3 matches
    // nobody.
    let app = TestApp::spawn_with(
        &csv(&rows(3)),
        SandboxConfig::default(),
        "[sync]\nmode = \"update_only\"\nmatch_existing = \"phone_or_email\"\n",
    )
    .await;
    app.sandbox
        .seed_existing_csv(
            "first_name,last_name,email,phone,notes,source\n\
             Bob,Phone-Match,,(415) 555-1001,met at the fair,\n\
             Gina,Email-Match,FIRST2@example.com,,,\n",
        )
        .unwrap();
    let plan = app.plan().await;
    assert_eq!(
        (plan.counts.adopted, plan.counts.skipped_by_mode),
        (2, 1),
        "{:?}",
        plan.operations
    );
    let report = app.cycle().await;
    let c = &report.counts;
    assert_eq!(
        (c.created, c.adopted, c.skipped_by_mode),
        (0, 2, 1),
        "{:?}",
        report.operations
    );
    assert_eq!(app.sandbox.stats().writes.creates, 0);
    assert_eq!(app.sandbox.contacts().len(), 2, "nothing new in Quo");
    assert_eq!(app.sandbox.count_by_external_id("r-3"), 0);
    let bob = app.contact_for("r-1");
    assert_eq!(bob["defaultFields"]["company"], "Acme 1", "enriched");
    assert_eq!(
        common::custom_value(&bob, "notes"),
        "met at the fair",
        "what Quo had stays"
    );
    assert_eq!(app.contact_for("r-2")["defaultFields"]["lastName"], "Last2");
    assert_eq!(ledger_row(&app, "r-3").await.state, RecordState::Skipped);

    // Linked now, they update as any other; the unmatched one stays skipped, nothing twice.
    let mut edited = rows(3);
    edited[1] = edited[1].replace("Acme 2", "Enriched Co");
    app.write_csv(&csv(&edited));
    app.sandbox.reset_stats();
    let next = app.cycle().await;
    assert_eq!(
        (
            next.counts.updated,
            next.counts.created,
            next.counts.skipped_by_mode
        ),
        (1, 0, 1)
    );
    assert_eq!(app.sandbox.stats().writes_total(), 1);
    assert_eq!(
        app.contact_for("r-2")["defaultFields"]["company"],
        "Enriched Co"
    );
}

/// Runs `quo-sync args… --config <config>` as `USER=op-tester`; (exit code, stdout, stderr).
async fn cli(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("QUO_SYNC_CONFIG")
        .env("USER", "op-tester")
        .output()
        .await
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `status --json` from the binary.
async fn status_json(config: &std::path::Path) -> serde_json::Value {
    let (code, stdout, stderr) = cli(config, &["status", "--json"]).await;
    assert_eq!(code, 0, "status --json: {stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Scrapes `/metrics` at `addr` until it shows `quo_sync_paused <value>` (the ledger gauges
/// are cached for a few seconds), within a deadline.
async fn wait_for_paused_gauge(addr: std::net::SocketAddr, value: u8) {
    let client = reqwest::Client::new();
    let want = format!("quo_sync_paused {value}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    loop {
        if let Ok(response) = client
            .get(format!("http://{addr}/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            last = response.text().await.unwrap_or_default();
            if last.lines().any(|line| line.trim() == want) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed {want:?}; last scrape's pause line: {:?}",
            last.lines().find(|l| l.starts_with("quo_sync_paused"))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// #27 as an operator meets it: `quo-sync pause --for 1h` and `resume` run as the binary;
/// `status --json` shows who paused and until when, and the scope counts; a running
/// `quo-sync run` shows `quo_sync_paused 1` on `/metrics`, then `0` after the resume.
#[tokio::test]
async fn pause_and_resume_through_the_binary_show_in_status_and_on_metrics() {
    let app = TestApp::spawn_with(
        &csv(&rows(5)),
        SandboxConfig::default(),
        "[sync]\nfilter = 'int(record.lead_score) > 3'\n",
    )
    .await;
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut run = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["run", "--config"])
        .arg(&app.config_path)
        .env_remove("QUO_SYNC_CONFIG")
        .env("QUO_SYNC__SCHEDULE__INTERVAL", "1h")
        .env("QUO_SYNC__SERVICE__LISTEN", addr.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.sandbox.contacts().len() < 2 {
        assert!(Instant::now() < deadline, "the first cycle never synced");
        assert!(run.try_wait().unwrap().is_none(), "run exited early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_paused_gauge(addr, 0).await;

    let asked = chrono::Utc::now();
    let (code, stdout, stderr) = cli(&app.config_path, &["pause", "--for", "1h"]).await;
    assert_eq!(code, 0, "pause: {stdout}\n{stderr}");
    let status = status_json(&app.config_path).await;
    let paused = &status["paused"];
    let by = paused["by"].as_str().unwrap_or_else(|| panic!("{status}"));
    assert!(by.starts_with("op-tester@"), "who paused: {paused}");
    let until = chrono::DateTime::parse_from_rfc3339(paused["until"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {paused}"));
    let ends_in = until.with_timezone(&chrono::Utc) - asked;
    assert!(
        (chrono::Duration::minutes(59)..=chrono::Duration::minutes(61)).contains(&ends_in),
        "until is an hour on: {paused}"
    );
    assert_eq!(status["scope"]["in_scope"], 2, "{status}");
    assert_eq!(status["scope"]["out_of_scope"], 3, "{status}");
    wait_for_paused_gauge(addr, 1).await;

    let (code, stdout, stderr) = cli(&app.config_path, &["resume"]).await;
    assert_eq!(code, 0, "resume: {stdout}\n{stderr}");
    assert!(stdout.contains("resumed"), "{stdout}");
    let status = status_json(&app.config_path).await;
    assert!(status["paused"].is_null(), "{status}");
    wait_for_paused_gauge(addr, 0).await;
    assert!(run.try_wait().unwrap().is_none(), "run still serves");
    run.kill().await.unwrap();
}

/// `rows(5)` with r-2's `column` (a cell holding `from`) set to `to`.
fn rows_with_r2(column_value: (&str, &str)) -> Vec<String> {
    let (from, to) = column_value;
    let mut all = rows(5);
    assert!(all[1].contains(from), "{from:?} not in {}", all[1]);
    all[1] = all[1].replacen(from, to, 1);
    all
}

/// What an operator sees of a record an expression could not be evaluated on: the open
/// quarantine entry of `id` (`quarantine list`), which must name the row (line 3: r-2, after
/// the header and r-1), `field` and `value`, at `stage`.
async fn assert_held_back_naming(app: &TestApp, id: &str, stage: &str, field: &str, value: &str) {
    let entries = app.ledger().quarantined().await.unwrap();
    let entry = entries
        .iter()
        .find(|e| e.external_id.as_deref() == Some(id))
        .unwrap_or_else(|| panic!("{id} is not held back: {entries:#?}"));
    assert_eq!(entry.stage, stage, "{entry:#?}");
    assert!(entry.location.ends_with(" line 3"), "{entry:#?}");
    assert_eq!(
        (entry.field.as_deref(), entry.value.as_deref()),
        (Some(field), Some(value)),
        "{entry:#?}"
    );
    assert_eq!(entries.len(), 1, "only {id} is held back: {entries:#?}");
    let listed = quo_sync::ops::render_quarantine(&entries);
    let line = listed
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_default();
    for shown in [stage, " line 3 ", field, value] {
        assert!(
            line.contains(shown),
            "quarantine list lacks {shown:?}:\n{listed}"
        );
    }
}

/// The other four of `rows(5)` reached Quo, r-2 did not; after the CSV is fixed a cycle
/// creates r-2 too and nothing stays held back.
async fn assert_the_rest_synced_and_the_fixed_row_follows(
    app: &TestApp,
    report: &quo_sync::sync::CycleReport,
) {
    assert_eq!(
        (report.counts.created, report.counts.quarantined),
        (4, 1),
        "{:?}",
        report.counts
    );
    assert_eq!(app.sandbox.count_by_external_id("r-2"), 0);
    assert_eq!(app.sandbox.contacts().len(), 4);

    app.write_csv(&csv(&rows(5)));
    let fixed = app.cycle().await;
    assert_eq!(fixed.counts.created, 1, "{:?}", fixed.counts);
    assert_eq!(app.sandbox.count_by_external_id("r-2"), 1);
    assert!(
        app.ledger().quarantined().await.unwrap().is_empty(),
        "r-2 is no longer held back"
    );
    assert_eq!(ledger_row(app, "r-2").await.state, RecordState::Synced);
}

/// A filter that fails on one row at run time (#27: `int()` of a lead score of "high", which
/// no configuration check can foresee) quarantines that row, naming its line, the field and
/// the value, as the filter's error (not taken for out of scope, nor passed on to the
/// mapping); the other rows are judged and created; once the CSV is fixed, the next cycle
/// syncs it.
#[tokio::test]
async fn a_filter_that_fails_on_one_row_holds_it_back_and_the_fixed_row_syncs_later() {
    let app = TestApp::spawn_with(
        &csv(&rows_with_r2((",,2,yes,", ",,high,yes,"))),
        SandboxConfig::default(),
        "[sync]\nfilter = 'int(record.lead_score) > 0'\n",
    )
    .await;
    let report = app.cycle().await;
    assert_eq!(report.counts.in_scope, 4, "{:?}", report.counts);
    assert_held_back_naming(&app, "r-2", "filter", "lead_score", "high").await;
    let reason = &app.ledger().quarantined().await.unwrap()[0].reason;
    assert!(reason.contains("sync.filter"), "{reason}");
    assert_the_rest_synced_and_the_fixed_row_follows(&app, &report).await;
}

/// A computed field that fails on one row at run time (a value map without the row's key)
/// quarantines that row, naming its line, the field the expression read and its value; the
/// other rows are created with the computed value; once the CSV is fixed, the next cycle syncs
/// it.
#[tokio::test]
async fn a_computed_field_that_fails_on_one_row_holds_it_back_and_the_fixed_row_syncs_later() {
    let mut app = TestApp::spawn(&csv(&rows_with_r2((",Buyer,", ",Intern,")))).await;
    let text = std::fs::read_to_string(&app.config_path).unwrap().replace(
        "company = \"company\"",
        "company = { expr = '{\"Buyer\": \"Purchasing\", \"Lead\": \"Prospects\"}[record.role]' }",
    );
    std::fs::write(&app.config_path, text).unwrap();
    app.restart().await;
    let report = app.cycle().await;
    assert_held_back_naming(&app, "r-2", "mapping", "role", "Intern").await;
    assert_eq!(
        app.contact_for("r-1")["defaultFields"]["company"],
        "Purchasing"
    );
    assert_the_rest_synced_and_the_fixed_row_follows(&app, &report).await;
}

/// A key for another workspace while every linked record has left scope under `keep`: the kept
/// contacts still vouch for the workspace. The scan finds none of them, the read-back fails, and
/// the new in-scope record is not created in the other workspace; the key pointed home again,
/// it is created at home and the kept contacts are untouched. (Counting synced records only,
/// quo-sync had nothing to read back and created it where the key pointed.)
#[tokio::test]
async fn kept_contacts_of_records_out_of_scope_vouch_for_the_workspace() {
    let app = spawn_filtered(&rows(2), "keep").await;
    app.cycle().await;
    let kept: Vec<String> = ["r-1", "r-2"].iter().map(|id| app.quo_id(id)).collect();
    let out_of_scope: Vec<String> = rows(2)
        .iter()
        .map(|r| r.replace(",Buyer,", ",Lead,"))
        .collect();
    app.write_csv(&csv(&out_of_scope));
    assert_eq!(app.cycle().await.counts.left_scope, 2);

    app.sandbox.set_foreign_workspace(true);
    let mut with_new = out_of_scope.clone();
    with_new.push(row("r-3", 3));
    app.write_csv(&csv(&with_new));
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 0, "{:?}", report.counts);
    assert!(
        app.sandbox.foreign_contacts().is_empty(),
        "created in the other workspace: {:?}",
        app.sandbox.foreign_contacts()
    );

    app.sandbox.set_foreign_workspace(false);
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 1, "{:?}", report.counts);
    for quo_id in &kept {
        assert!(app.sandbox.contact(quo_id).is_some(), "{quo_id} kept");
    }
    assert_eq!(
        ledger_row(&app, "r-1").await.quo_id.unwrap().as_str(),
        kept[0]
    );
}
