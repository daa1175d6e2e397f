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

/// A record added to the CRM while the key points at another workspace is not created there
/// once the cycle's scan has read linked contacts back and not found them: creates wait until
/// the key is shown to answer for our workspace again. (Created there, its contact would be the
/// one linked id the next read-back finds, vouching for the wrong workspace, and every absence
/// would then be acted on: the whole CRM re-created in it.)
#[tokio::test]
async fn a_record_added_while_the_key_points_at_another_workspace_is_created_at_home_only() {
    let app = synced_app("recreate", 1.0).await;
    let mut rows21 = rows(20);
    rows21.push(row("c-21", 21));
    app.write_csv(&csv(&rows21));
    app.sandbox.set_foreign_workspace(true);
    for _ in 0..3 {
        let report = app.cycle().await;
        assert!(report.mass_delete_refused, "{report:#?}");
        assert_eq!(report.counts.created, 0, "{report:#?}");
        assert_nothing_unlinked_or_leaked(&app).await;
    }
    app.sandbox.set_foreign_workspace(false);
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 1, "{report:#?}");
    let ids: Vec<String> = (1..=21).map(|i| format!("c-{i}")).collect();
    app.assert_one_contact_per_record(&ids).await;
    assert!(app.sandbox.foreign_contacts().is_empty());
}

/// A record deleted from the CRM while the key points at another workspace: the DELETE there
/// is not sent, or its 404 is not taken for "already gone", so the record stays linked and its
/// contact at home is deleted once the key points home again (not left behind as a stray).
#[tokio::test]
async fn a_record_deleted_while_the_key_points_at_another_workspace_is_deleted_at_home() {
    let app = TestApp::spawn_with(
        &csv(&rows(20)),
        SandboxConfig::default(),
        "[sync]\non_source_delete = \"delete\"\nmax_delete_fraction = 1.0\n\
         [reverse]\npoll_interval = \"1ms\"\non_quo_delete = \"recreate\"\n",
    )
    .await;
    app.cycle().await;
    let gone = app.quo_id("c-20");
    app.write_csv(&csv(&rows(19)));
    // A deletion needs two complete reads that agree: the first at home, the second not.
    app.cycle().await;
    app.sandbox.set_foreign_workspace(true);
    for _ in 0..2 {
        let report = app.cycle().await;
        assert_eq!(report.counts.deleted, 0, "{report:#?}");
        assert_eq!(
            app.row("c-20").await.quo_id.map(|q| q.0).as_deref(),
            Some(gone.as_str()),
            "c-20 was unlinked by a DELETE another workspace answered"
        );
    }
    app.sandbox.set_foreign_workspace(false);
    let report = app.cycle().await;
    assert_eq!(report.counts.deleted, 1, "{report:#?}");
    assert!(
        app.sandbox.contact(&gone).is_none(),
        "c-20's contact stays at home"
    );
    assert_eq!(app.sandbox.contacts().len(), 19);
    assert!(app.sandbox.foreign_contacts().is_empty());
}

/// Records held on day one (a person entered twice, another integration's contact) stay held
/// while the key points at another workspace: its complete listing does not show the contacts
/// they match, and each answers 404 there, but that absence is not acted on (the workspace
/// index keeps them), so nothing is created for them, there or at home afterwards.
#[tokio::test]
async fn a_key_for_another_workspace_does_not_release_records_held_on_day_one() {
    let app = TestApp::spawn_with(
        &csv(&rows(4)),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"1ms\"\n",
    )
    .await;
    app.sandbox
        .seed_existing_csv(
            "first_name,last_name,email,phone,notes,source\n\
             Kay,Twice,,(415) 555-1003,,\n\
             Kay,Again,first3@example.com,,,\n\
             Zed,Zapped,,(415) 555-1004,,zapier\n",
        )
        .unwrap();
    let report = app.cycle().await;
    assert_eq!(
        (report.counts.created, report.counts.held),
        (2, 2),
        "{report:#?}"
    );
    app.sandbox.set_foreign_workspace(true);
    for _ in 0..3 {
        let report = app.cycle().await;
        assert_eq!(report.counts.created, 0, "{report:#?}");
    }
    assert!(
        app.sandbox.foreign_contacts().is_empty(),
        "held records were created in the other workspace: {:#?}",
        app.sandbox.foreign_contacts()
    );
    app.sandbox.set_foreign_workspace(false);
    for _ in 0..2 {
        app.cycle().await;
    }
    for held in ["c-3", "c-4"] {
        assert_eq!(
            app.sandbox.count_by_external_id(held),
            0,
            "{held} made a contact"
        );
        let row = app
            .ledger()
            .record(&quo_sync::domain::ExternalId::parse(held).unwrap())
            .await
            .unwrap();
        assert!(row.and_then(|r| r.quo_id).is_none(), "{held} is linked");
    }
    assert_eq!(app.sandbox.contacts().len(), 5);
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

/// `n` records against a sandbox that accepts a second contact with the same externalId (as
/// Quo's older API did), so a POST sent twice can make a twin; `extra` TOML appended.
async fn spawn_twinnable_with(n: u32, extra: &str) -> TestApp {
    TestApp::spawn_with(
        &csv(&rows(n)),
        SandboxConfig {
            conflict_on_duplicate: false,
            ..SandboxConfig::default()
        },
        extra,
    )
    .await
}

/// [`spawn_twinnable_with`], synced once, scans off until [`scan_every_cycle`].
async fn spawn_twinnable(n: u32) -> TestApp {
    let mut app = spawn_twinnable_with(n, "[reverse]\npoll_interval = \"1ms\"\n").await;
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

/// The record with a twin and (linked id, twin id), after a create whose answer was lost
/// behind a lagging list was sent again (the lag lasts until the faults are cleared).
async fn make_a_twin(app: &TestApp, ids: &[&str]) -> (String, String, String) {
    hide_next_created(app, 1, "all", None).await;
    app.sandbox
        .inject(quo_sync::sandbox::Fault::DropAfterWrite { count: 1 });
    app.cycle().await; // the lost POST: its record stays a pending create
    app.cycle().await; // both lookups miss, so the record is created again
    let twinned: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| app.sandbox.count_by_external_id(id) > 1)
        .collect();
    let [id] = twinned.as_slice() else {
        panic!("expected one record with a twin, got {twinned:?}")
    };
    let linked = app.row(id).await.quo_id.expect("linked").0;
    let twin = app
        .sandbox
        .contacts()
        .into_iter()
        .find(|c| c["externalId"] == *id && c["id"] != linked.as_str())
        .expect("a twin");
    (
        id.to_string(),
        linked,
        twin["id"].as_str().unwrap().to_string(),
    )
}

/// The mapping without `company` and `role`: those fields are Quo's alone.
async fn without_company_and_role(app: &mut TestApp) {
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    let config = config
        .replace("company = \"company\"\n", "")
        .replace("role = \"role\"\n", "");
    std::fs::write(&app.config_path, config).unwrap();
    app.restart().await;
}

/// Typed on a twin outside the mapping: a company (a default field the mapping does not
/// manage) the linked contact lacks is carried over; a role the linked contact holds otherwise
/// and a value of a custom field type the API cannot write are recorded as conflicts. Nothing
/// goes with the twin's DELETE unrecorded, and a later PATCH keeps the carried company.
#[tokio::test]
async fn what_was_typed_on_a_twin_outside_the_mapping_is_carried_over_or_recorded() {
    let mut app = spawn_twinnable_with(2, "[reverse]\npoll_interval = \"1ms\"\n").await;
    without_company_and_role(&mut app).await;
    app.sandbox
        .define_custom_field("Rating", "rating", "rating", None, None)
        .unwrap();
    let (id, linked, twin) = make_a_twin(&app, &["c-1", "c-2"]).await;
    app.sandbox
        .app_edit(
            &twin,
            serde_json::json!({"defaultFields": {"company": "Typed On The Twin", "role": "Twin role"},
                   "customFields": [{"key": "rating", "value": 5}]}),
        )
        .expect("app edit");
    app.sandbox
        .app_edit(
            &linked,
            serde_json::json!({"defaultFields": {"role": "Linked role"}}),
        )
        .expect("app edit");
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    app.cycle().await; // the scan lists the twin
    app.cycle().await;

    assert_eq!(app.sandbox.count_by_external_id(&id), 1, "the twin is gone");
    let contact = app.contact_for(&id);
    assert_eq!(contact["id"], linked.as_str());
    assert_eq!(contact["defaultFields"]["company"], "Typed On The Twin");
    assert_eq!(contact["defaultFields"]["role"], "Linked role");
    let conflicts = app.ledger().conflicts(100).await.unwrap();
    let named = |field: &str| {
        conflicts
            .iter()
            .find(|c| c.external_id == id && c.field == field)
            .unwrap_or_else(|| panic!("no conflict for {field}: {conflicts:#?}"))
    };
    let role = named("role");
    assert!(role.quo_value.as_deref().unwrap().contains("Twin role"));
    assert_eq!(role.winner, "crm");
    let rating = named("rating");
    assert_eq!(rating.quo_value.as_deref(), Some("5"));
    assert_eq!(rating.policy, "twin_not_carried");
    assert_eq!(unconfirmed(&app, &id).await, 0);

    // A CRM edit PATCHes the contact: the company typed in Quo is not cleared.
    let n: u32 = id.trim_start_matches("c-").parse().unwrap();
    let edited: Vec<String> = (1..=2)
        .map(|i| {
            let row = row(&format!("c-{i}"), i);
            if i == n {
                row.replace(&format!("First{i},"), "Renamed,")
            } else {
                row
            }
        })
        .collect();
    app.write_csv(&csv(&edited));
    let report = app.cycle().await;
    assert_eq!(report.counts.updated, 1, "{report:#?}");
    let contact = app.contact_for(&id);
    assert_eq!(contact["defaultFields"]["firstName"], "Renamed");
    assert_eq!(contact["defaultFields"]["company"], "Typed On The Twin");
}

/// A twin and the app that made it, with scans every cycle (the twin stays hidden from every
/// list until the faults are cleared).
async fn app_with_a_twin(extra: &str) -> (TestApp, String, String, String) {
    let app =
        spawn_twinnable_with(2, &format!("[reverse]\npoll_interval = \"1ms\"\n{extra}")).await;
    let (id, linked, twin) = make_a_twin(&app, &["c-1", "c-2"]).await;
    (app, id, linked, twin)
}

/// Quo refuses the PATCH that carries what was typed on a twin over (here: a multi-select value
/// the field no longer offers). It is not tried for good: what it would have carried is
/// recorded as conflicts, the twin is deleted, and the entry ends.
#[tokio::test]
async fn a_refused_carry_over_ends_recorded_as_conflicts() {
    let (app, id, linked, twin) = app_with_a_twin("").await;
    let options = |o: &[&str]| Some(o.iter().map(|s| s.to_string()).collect());
    app.sandbox
        .define_custom_field(
            "Segments",
            "segments",
            "multi-select",
            options(&["a", "b"]),
            None,
        )
        .unwrap();
    app.sandbox
        .app_edit(
            &twin,
            serde_json::json!({"customFields": [{"key": "segments", "value": ["a"]}]}),
        )
        .expect("app edit");
    app.sandbox
        .define_custom_field(
            "Segments",
            "segments",
            "multi-select",
            options(&["b"]),
            None,
        )
        .unwrap();
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    for _ in 0..3 {
        app.cycle().await;
    }
    assert_eq!(app.sandbox.count_by_external_id(&id), 1, "the twin is gone");
    assert_eq!(app.contact_for(&id)["id"], linked.as_str());
    assert_eq!(unconfirmed(&app, &id).await, 0, "the entry ended");
    let conflicts = app.ledger().conflicts(100).await.unwrap();
    let segments = conflicts
        .iter()
        .find(|c| c.external_id == id && c.field == "segments")
        .unwrap_or_else(|| panic!("the refused value is recorded: {conflicts:#?}"));
    assert_eq!(segments.policy, "twin_not_carried");
    assert!(segments.quo_value.as_deref().unwrap().contains("\"a\""));
}

/// The ledger's contact for the record no longer carries its externalId (a person changed it in
/// Quo): which contact is the twin cannot be told, so neither is deleted, and the entry ends as
/// abandoned, with the reason, for an operator.
#[tokio::test]
async fn a_twin_is_not_deleted_when_the_linked_contact_is_not_ours() {
    let (app, id, linked, twin) = app_with_a_twin("").await;
    app.sandbox
        .app_edit(&linked, serde_json::json!({"externalId": "moved-by-hand"}))
        .expect("app edit");
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    for _ in 0..3 {
        app.cycle().await;
    }
    assert!(app.sandbox.contact(&twin).is_some(), "the twin was deleted");
    assert!(app.sandbox.contact(&linked).is_some());
    assert_eq!(unconfirmed(&app, &id).await, 0, "the entry ended");
    assert_abandoned(&app, &id, &twin).await;
}

/// One of `id`'s unconfirmed creates ended as abandoned, naming `contact`.
async fn assert_abandoned(app: &TestApp, id: &str, contact: &str) {
    let abandoned = app.ledger().unconfirmed_abandoned(10).await.unwrap();
    assert!(
        abandoned
            .iter()
            .any(|(external_id, _, reason)| external_id == id && reason.contains(contact)),
        "{abandoned:#?}"
    );
}

/// A contact a lost create made, of a record gone from the CRM, that Quo cannot serve (every
/// request for it answers 500): after a few attempts its entry ends as abandoned, with the
/// reason, instead of being retried (and alerted on) for good. It is not deleted.
#[tokio::test]
async fn an_unreadable_stray_ends_abandoned_with_the_reason() {
    let app = spawn_twinnable_with(
        2,
        "[sync]\non_source_delete = \"delete\"\n[reverse]\npoll_interval = \"1ms\"\n",
    )
    .await;
    app.cycle().await;
    // c-3's POST lands behind a lagging list and its answer is lost; then c-3 leaves the CRM
    // and the pending create is forgotten (its POST kept as an entry).
    hide_next_created(&app, 1, "all", None).await;
    app.sandbox
        .inject(quo_sync::sandbox::Fault::DropAfterWrite { count: 1 });
    app.write_csv(&csv(&rows(3)));
    app.cycle().await;
    app.write_csv(&csv(&rows(2)));
    app.cycle().await;
    assert_eq!(unconfirmed(&app, "c-3").await, 1);
    let stray = app
        .sandbox
        .contacts()
        .into_iter()
        .find(|c| c["externalId"] == "c-3");
    let stray = stray.expect("the lost create's contact")["id"]
        .as_str()
        .unwrap()
        .to_string();
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    common::sandbox_fault(
        &app.sandbox.base_url(),
        serde_json::json!({"kind": "broken_contacts", "ids": [stray], "status": 500}),
    )
    .await;
    for _ in 0..6 {
        app.cycle().await;
    }
    assert_eq!(unconfirmed(&app, "c-3").await, 0, "the entry ended");
    assert!(app.sandbox.contact(&stray).is_some(), "not deleted unread");
    assert_abandoned(&app, "c-3", &stray).await;
    let status = quo_sync::ops::status(app.ledger()).await.unwrap();
    assert!(status.render().contains(&stray), "{}", status.render());
}

/// An unlinked contact with our source and a record's externalId, made long after that record's
/// unconfirmed create (another deployment sharing `quo.source`): left alone, and the entry is
/// still ruled out by the passes that follow instead of being kept alive by it for good.
#[tokio::test]
async fn a_copy_not_ours_does_not_keep_an_entry_alive() {
    let app = spawn_twinnable_with(2, "[reverse]\npoll_interval = \"1ms\"\n").await;
    app.cycle().await;
    let c1 = quo_sync::domain::ExternalId::parse("c-1").unwrap();
    app.ledger()
        .unconfirmed_add(&c1, &quo_sync::domain::Snapshot::default())
        .await
        .unwrap();
    // The entry was written an hour ago.
    let db = app.dir.path().join("ledger.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let hour_ago = (chrono::Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
    sqlx::query("UPDATE unconfirmed_creates SET sent_at = $1")
        .bind(&hour_ago)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let stranger = app.sandbox.app_create(
        serde_json::json!({"defaultFields": {"firstName": "Someone"}, "externalId": "c-1"}),
        "quo-sync",
    );
    for _ in 0..=quo_sync::ledger::PASSES_TO_RULE_OUT {
        app.cycle().await;
    }
    assert_eq!(unconfirmed(&app, "c-1").await, 0, "ruled out");
    assert!(
        app.sandbox
            .contact(stranger["id"].as_str().unwrap())
            .is_some()
    );
    assert_eq!(app.sandbox.count_by_external_id("c-1"), 2);
}

/// Whether this test process can make a mount namespace and run a command as another user
/// (root with `unshare` and `setpriv`, as on the CI machine).
fn can_hide_proc() -> bool {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    let tool = |name: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    root && tool("unshare") && tool("setpriv")
}

/// A live leader whose process another user cannot see in `/proc` (mounted `hidepid=2`, as
/// systemd `ProtectProc=invisible` does): a `once` run as that other user on the same machine
/// must not take it for dead and take its lease; it exits 4 (the lease is held) and the leader
/// keeps leading.
#[tokio::test]
async fn a_leader_hidden_from_proc_is_not_taken_for_dead() {
    if !can_hide_proc() {
        // CI runs as root (`.ci/run` installs with apt-get) with util-linux's unshare and
        // setpriv, so there this is a failure, and elsewhere a visible skip.
        common::skip("needs root, unshare and setpriv");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncBufReadExt;
    let sandbox = quo_sync::sandbox::SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let csv_path = dir.path().join("contacts.csv");
    std::fs::write(&csv_path, csv(&rows(3))).unwrap();
    let config = dir.path().join("quo-sync.toml");
    std::fs::write(
        &config,
        format!(
            "[quo]\nbase_url = \"{}\"\napi_key = \"{}\"\ntimeout = \"5s\"\n\
             [ledger]\npath = \"{}\"\n[ha]\nlease = \"2s\"\n\
             [source]\nkind = \"csv\"\npath = \"{}\"\n{}",
            sandbox.base_url(),
            sandbox.api_key(),
            dir.path().join("ledger.db").display(),
            csv_path.display(),
            common::MAPPING
        ),
    )
    .unwrap();
    for file in [&csv_path, &config] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_quo-sync");
    // The leader, as root.
    let mut leader = tokio::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("QUO_SYNC_CONFIG")
        .env("QUO_SYNC__SCHEDULE__INTERVAL", "200ms")
        .env("QUO_SYNC__LOG__FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(leader.stderr.take().unwrap()).lines();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut cycled = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cycled {
        assert!(std::time::Instant::now() < deadline, "no cycle");
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the leader runs");
        cycled = line.contains("\"cycle_finished\"");
        log.lock().unwrap().push_str(&line);
    }
    // SQLite creates its files 0644: let the other user write the ledger.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("ledger.db") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
    }
    let sink = log.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push_str(&line);
        }
    });
    // `once` as nobody, in a mount namespace where /proc hides other users' processes.
    let out = tokio::process::Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t proc -o hidepid=2 proc /proc && exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$0\" once --config \"$1\"",
            bin,
        ])
        .arg(&config)
        .env_remove("QUO_SYNC_CONFIG")
        .env("QUO_SYNC__LOG__FORMAT", "json")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("once finishes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("held by another writer"), "{stderr}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    leader.kill().await.unwrap();
    reader.abort();
    let log = log.lock().unwrap().clone();
    assert!(!log.contains("\"leader_lost\""), "{log}");
    assert_eq!(sandbox.contacts().len(), 3);
}

/// A leader's fence for tests: `left` of lease time from now, writes of at most `window` each.
fn fence_for(left: Duration, window: Duration) -> quo_sync::quo::fence::WriteFence {
    let deadline = std::time::Instant::now() + left;
    quo_sync::quo::fence::WriteFence::new(
        std::sync::Arc::new(move || deadline.checked_duration_since(std::time::Instant::now())),
        window,
    )
}

/// A leader's PATCH to a slow Quo: its timeout is capped by the lease's write window, so it is
/// over (abandoned by us) before the lease runs out, instead of landing late (a connect may take
/// 10 s and a request 30 s); and with less than the window left, no write is started at all.
#[tokio::test]
async fn a_leaders_write_never_outlives_its_lease() {
    let app = TestApp::spawn(&csv(&rows(1))).await;
    app.cycle().await;
    let quo_id = app.quo_id("c-1");
    let config =
        quo_sync::config::Config::load_with_env(&app.config_path, std::iter::empty()).unwrap();
    let base = quo_sync::app::build_client(&config).unwrap();
    let body = quo_sync::quo::types::PatchContact {
        default_fields: Some(quo_sync::quo::types::PatchDefaultFields {
            role: Some(Some("Late".into())),
            ..Default::default()
        }),
        custom_fields: None,
        external_id: None,
        source: None,
        source_url: None,
    };
    // 1 s of lease left, writes of at most 700 ms; Quo takes 2 s to answer.
    let left = Duration::from_secs(1);
    let client = base
        .clone()
        .with_write_fence(fence_for(left, Duration::from_millis(700)));
    app.sandbox.inject(quo_sync::sandbox::Fault::Latency {
        extra: Duration::from_secs(2),
        count: 1,
    });
    let started = std::time::Instant::now();
    let outcome = client.update_contact(&quo_id, &body).await;
    let took = started.elapsed();
    assert!(
        took < left,
        "the write was still in flight {took:?} after it started, past the lease's {left:?}: {outcome:?}"
    );
    assert!(
        matches!(
            outcome,
            Err(quo_sync::quo::client::QuoError::Ambiguous { .. })
        ),
        "{outcome:?}"
    );
    // 200 ms left, writes of 1 s: the PATCH is not sent.
    let patches = || {
        app.sandbox
            .stats()
            .by_route_status
            .iter()
            .filter(|(k, _)| k.starts_with("PATCH "))
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    let before = patches();
    let client = base.with_write_fence(fence_for(
        Duration::from_millis(200),
        Duration::from_secs(1),
    ));
    let outcome = client.update_contact(&quo_id, &body).await;
    assert!(
        matches!(outcome, Err(quo_sync::quo::client::QuoError::Fenced { .. })),
        "{outcome:?}"
    );
    assert_eq!(patches(), before, "a PATCH was sent");
}

/// `ha.lease` too short for the configured timeouts is refused at start (exit 2), naming the
/// key: its writes would be cut short between renewals.
#[tokio::test]
async fn a_lease_too_short_for_the_timeouts_is_refused() {
    let app = TestApp::spawn(&csv(&rows(1))).await;
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(
        &app.config_path,
        config.replace("timeout = \"5s\"", "timeout = \"30s\"") + "\n[ha]\nlease = \"1s\"\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["check-config", "--config"])
        .arg(&app.config_path)
        .env_remove("QUO_SYNC_CONFIG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ha.lease") && stderr.contains("quo.timeout"),
        "{stderr}"
    );
}

/// `quo.source` must be unique per deployment (two sharing it in one workspace take each other's
/// contacts for theirs): on a PostgreSQL ledger, where a fleet is likely, a writer warns at start
/// while it is still the default.
#[tokio::test]
async fn a_default_source_label_on_postgres_is_warned_about() {
    let Some(app) = TestApp::spawn_on(
        common::Backend::Postgres,
        &csv(&rows(1)),
        SandboxConfig::default(),
        "",
    )
    .await
    else {
        return;
    };
    app.ctx.ledger.close().await;
    let once = |source: Option<&str>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"));
        cmd.args(["once", "--config"])
            .arg(&app.config_path)
            .env_remove("QUO_SYNC_CONFIG")
            .env("QUO_SYNC__LOG__FORMAT", "json");
        if let Some(source) = source {
            cmd.env("QUO_SYNC__QUO__SOURCE", source);
        }
        cmd.output()
    };
    let out = once(None).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("\"quo_source_default\""), "{stderr}");
    let out = once(Some("acme-eu")).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("\"quo_source_default\""), "{stderr}");
}

/// `ledger copy` reads the ledger table by table: it refuses (exit 4) while a writer holds the
/// lease, and holds the lease itself while it copies, so no cycle writes between the tables.
#[tokio::test]
async fn ledger_copy_refuses_while_a_writer_holds_the_lease() {
    use quo_sync::ledger::{Candidate, LeaderLease};
    let app = TestApp::spawn(&csv(&rows(3))).await;
    app.cycle().await;
    let lease = LeaderLease::try_acquire(
        app.ledger(),
        &Candidate::this_process("run"),
        Duration::from_secs(15),
    )
    .await
    .unwrap();
    let target = app.dir.path().join("copy.db");
    let copy = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
            .args(["ledger", "copy", "--to"])
            .arg(&target)
            .arg("--config")
            .arg(&app.config_path)
            .env_remove("QUO_SYNC_CONFIG")
            .output()
    };
    let out = copy().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("held by another writer"), "{stderr}");
    lease.release().await;
    let out = copy().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let copied = quo_sync::ledger::Ledger::open(&target).await.unwrap();
    assert_eq!(copied.linked_count().await.unwrap(), 3);
}

/// `quo-sync once [args…]` on the app's config, JSON logs; (exit code, stderr). The app's own
/// ledger handle is closed first (the binary is the writer now): [`TestApp::restart`] to read
/// the ledger afterwards.
async fn once_binary(app: &TestApp, args: &[&str]) -> (Option<i32>, String) {
    app.ctx.ledger.close().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .arg("once")
        .args(args)
        .arg("--config")
        .arg(&app.config_path)
        .env_remove("QUO_SYNC_CONFIG")
        .env("QUO_SYNC__LOG__FORMAT", "json")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("once finishes")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `mass_delete_refused` lines of a JSON log, each parsed.
fn refusals(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["event"] == "mass_delete_refused")
        .collect()
}

/// 10 records synced under `on_source_delete = "delete"` and a guard of 0.1 (one deletion a
/// cycle), then c-11, c-12 and c-13 added: their POSTs land, their answers are lost, and no
/// list or lookup shows the contacts they made until the faults are cleared.
async fn three_lost_creates() -> TestApp {
    let app = TestApp::spawn_with(
        &csv(&rows(10)),
        SandboxConfig::default(),
        "[sync]\non_source_delete = \"delete\"\nmax_delete_fraction = 0.1\n\
         [reverse]\npoll_interval = \"1ms\"\n",
    )
    .await;
    assert_eq!(app.cycle().await.counts.created, 10);
    hide_next_created(&app, 3, "all", None).await;
    app.sandbox
        .inject(quo_sync::sandbox::Fault::DropAfterWrite { count: 3 });
    app.write_csv(&csv(&rows(13)));
    app.cycle().await;
    assert_eq!(app.sandbox.contacts().len(), 13, "the three POSTs landed");
    for id in ["c-11", "c-12", "c-13"] {
        assert_eq!(
            app.row(id).await.state,
            quo_sync::ledger::RecordState::PendingCreate,
            "{id}"
        );
    }
    app
}

const LOST: [&str; 3] = ["c-11", "c-12", "c-13"];

/// Strays (contacts that lost creates made, of records gone from the CRM) count in the
/// mass-deletion guard like any deletion (#21): three of them against ten linked records with
/// `max_delete_fraction = 0.1` are not deleted, `once` logs `mass_delete_refused` naming
/// `stray_contacts` and exits 3; `--allow-mass-delete` then deletes them.
#[tokio::test]
async fn strays_past_the_delete_fraction_are_not_deleted() {
    let mut app = three_lost_creates().await;
    // The three leave the CRM; an operator lets their pending creates be forgotten (their POSTs
    // kept as unconfirmed creates).
    app.write_csv(&csv(&rows(10)));
    app.ctx.settings.allow_mass_delete = true;
    app.cycle().await;
    app.ctx.settings.allow_mass_delete = false;
    for id in LOST {
        assert_eq!(unconfirmed(&app, id).await, 1, "{id}: its POST on record");
    }
    // The lag ends: the scan lists the three contacts, strays of records gone.
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    let (code, stderr) = once_binary(&app, &[]).await;
    assert_eq!(code, Some(3), "{stderr}");
    let refused = refusals(&stderr);
    assert!(
        refused
            .iter()
            .any(|l| l["what"] == "stray_contacts" && l["would_delete"] == 3),
        "no refusal names the strays: {refused:#?}\n{stderr}"
    );
    assert_eq!(app.sandbox.contacts().len(), 13, "a stray was deleted");

    let (code, stderr) = once_binary(&app, &["--allow-mass-delete"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(app.sandbox.contacts().len(), 10, "the strays are deleted");
    for id in LOST {
        assert_eq!(app.sandbox.count_by_external_id(id), 0, "{id}");
    }
    app.restart().await;
    for id in LOST {
        assert_eq!(unconfirmed(&app, id).await, 0, "{id}: entry left");
    }
}

/// Forgotten pending creates count in the mass-deletion guard too (#21): three records whose
/// creates no lookup finds leave the CRM at once, against ten linked with
/// `max_delete_fraction = 0.1`: none is forgotten, `once` logs `mass_delete_refused` naming
/// `pending_creates` and exits 3; `--allow-mass-delete` then forgets them, each POST kept on
/// record as an unconfirmed create.
#[tokio::test]
async fn pending_creates_past_the_delete_fraction_are_not_forgotten() {
    let mut app = three_lost_creates().await;
    app.write_csv(&csv(&rows(10)));
    let (code, stderr) = once_binary(&app, &[]).await;
    assert_eq!(code, Some(3), "{stderr}");
    let refused = refusals(&stderr);
    assert!(
        refused
            .iter()
            .any(|l| l["what"] == "pending_creates" && l["would_delete"] == 3),
        "no refusal names the pending creates: {refused:#?}\n{stderr}"
    );
    app.restart().await;
    for id in LOST {
        assert_eq!(
            app.row(id).await.state,
            quo_sync::ledger::RecordState::PendingCreate,
            "{id} was forgotten past the guard"
        );
    }

    let (code, stderr) = once_binary(&app, &["--allow-mass-delete"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    app.restart().await;
    for id in LOST {
        let row = app
            .ledger()
            .record(&quo_sync::domain::ExternalId::parse(id).unwrap())
            .await
            .unwrap();
        assert!(row.is_none(), "{id} not forgotten: {row:?}");
        assert_eq!(unconfirmed(&app, id).await, 1, "{id}: its POST on record");
    }
}
