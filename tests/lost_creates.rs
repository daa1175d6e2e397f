//! Creates whose answer was lost while Quo's lists lagged: the lookup before a second POST
//! misses, so a twin can be made (Quo has no idempotency key, and the sandbox here accepts a
//! repeated externalId, as Quo's older API did). The ledger keeps what the lost POST sent, and
//! the next scan that lists the twin resolves it: what a person typed on it moves to the linked
//! contact (and on to the CRM), then the twin is deleted; a twin of a record that left the CRM
//! follows `sync.on_source_delete`.

mod common;

use common::{Backend, TestApp, WEBHOOK_KEY, csv, custom_value};
use quo_sync::sandbox::webhooks::{WebhookScheme, WebhookTarget};
use quo_sync::sandbox::{Fault, SandboxConfig};
use serde_json::json;

fn rows(n: u32) -> Vec<String> {
    (1..=n).map(|i| common::row(&format!("c-{i}"), i)).collect()
}

const SCAN_EVERY_CYCLE: &str = "[reverse]\npoll_interval = \"1ms\"\n";

/// A sandbox that accepts a second contact with the same externalId.
async fn spawn(rows: &[String], extra: &str) -> TestApp {
    spawn_on(Backend::Sqlite, rows, extra).await.unwrap()
}

async fn spawn_on(backend: Backend, rows: &[String], extra: &str) -> Option<TestApp> {
    let sandbox = SandboxConfig {
        conflict_on_duplicate: false,
        ..SandboxConfig::default()
    };
    TestApp::spawn_on(backend, &csv(rows), sandbox, extra).await
}

/// The first POST of the next cycle lands but its answer is lost, and the contact it makes
/// stays out of every list answer (lookups included) until the faults are cleared.
async fn lose_the_next_create_behind_a_lagging_list(app: &TestApp) {
    common::sandbox_fault(
        &app.sandbox.base_url(),
        json!({"kind": "lagging_list", "next_created": 1, "scope": "all"}),
    )
    .await;
    app.sandbox.inject(Fault::DropAfterWrite { count: 1 });
}

/// The records with more than one contact in Quo.
fn twinned(app: &TestApp, ids: &[&str]) -> Vec<String> {
    ids.iter()
        .filter(|id| app.sandbox.count_by_external_id(id) > 1)
        .map(|id| id.to_string())
        .collect()
}

async fn unconfirmed(app: &TestApp, id: &str) -> usize {
    app.ledger().unconfirmed_for(id).await.unwrap().len()
}

/// The record with a twin and the twin's id, after a lost create was sent again.
async fn make_a_twin(app: &TestApp, ids: &[&str]) -> (String, String) {
    lose_the_next_create_behind_a_lagging_list(app).await;
    app.cycle().await; // the lost POST: its record stays a pending create
    app.cycle().await; // both lookups miss, so the record is created again
    let twinned = twinned(app, ids);
    let [id] = twinned.as_slice() else {
        panic!("expected one record with a twin, got {twinned:?}")
    };
    let linked = app.row(id).await.quo_id.expect("linked").0;
    let twin = app
        .sandbox
        .contacts()
        .into_iter()
        .find(|c| c["externalId"] == id.as_str() && c["id"] != linked.as_str())
        .expect("a twin");
    (id.clone(), twin["id"].as_str().unwrap().to_string())
}

/// c-1..c-3 are synced; c-4 is added, its POST lands but the answer is lost (and the contact
/// stays out of every list), then c-4 leaves the CRM. Returns the rows with c-4.
async fn lose_a_create_whose_record_then_leaves_the_crm(app: &TestApp) -> Vec<String> {
    app.cycle().await;
    lose_the_next_create_behind_a_lagging_list(app).await;
    let mut grown = rows(3);
    grown.push(common::row("c-4", 4));
    app.write_csv(&csv(&grown));
    app.cycle().await; // c-4's POST lands unseen
    assert_eq!(app.sandbox.count_by_external_id("c-4"), 1);
    app.write_csv(&csv(&rows(3)));
    app.cycle().await; // c-4 left the CRM; its lookups miss, so its intent is forgotten
    grown
}

#[tokio::test]
async fn a_twin_made_behind_a_lagging_list_is_merged_into_the_linked_contact_and_deleted() {
    twin_scenario(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_twin_made_behind_a_lagging_list_is_merged_and_deleted_on_postgres() {
    twin_scenario(Backend::Postgres).await;
}

async fn twin_scenario(backend: Backend) {
    let Some(app) = spawn_on(backend, &rows(2), SCAN_EVERY_CYCLE).await else {
        return;
    };
    let (id, twin_id) = make_a_twin(&app, &["c-1", "c-2"]).await;
    let id = &id;
    assert_eq!(
        unconfirmed(&app, id).await,
        1,
        "the lost POST is remembered"
    );
    let status = quo_sync::ops::status(app.ledger()).await.unwrap();
    assert_eq!(status.unconfirmed_creates, 1);
    assert!(status.render().contains("unconfirmed creates 1"));
    let linked = app.row(id).await.quo_id.expect("linked").0;
    // Someone finds the twin in the Quo app and types on it.
    app.sandbox
        .app_edit(
            &twin_id,
            json!({"defaultFields": {"company": "Typed On The Twin"},
                   "customFields": [{"key": "notes", "value": "met at the fair"}]}),
        )
        .expect("app edit");

    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    app.cycle().await; // the scan lists the twin: its edits move over, then it is deleted
    app.cycle().await; // the linked contact's new values reach the CRM

    assert_eq!(app.sandbox.count_by_external_id(id), 1, "the twin is gone");
    let kept = app.contact_for(id);
    assert_eq!(
        kept["id"],
        linked.as_str(),
        "the linked contact is the one kept"
    );
    assert_eq!(kept["defaultFields"]["company"], "Typed On The Twin");
    assert_eq!(custom_value(&kept, "notes"), json!("met at the fair"));
    assert!(
        app.csv_text().contains("Typed On The Twin"),
        "the edit made on the twin reached the CRM:\n{}",
        app.csv_text()
    );
    assert_eq!(unconfirmed(&app, id).await, 0, "the lost POST is resolved");
    // And nothing moves any more.
    app.sandbox.reset_stats();
    app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0);
}

#[tokio::test]
async fn an_untouched_twin_is_deleted_without_writing_to_the_linked_contact() {
    let app = spawn(&rows(2), SCAN_EVERY_CYCLE).await;
    let (id, _) = make_a_twin(&app, &["c-1", "c-2"]).await;
    let id = &id;
    let linked = app.row(id).await.quo_id.expect("linked").0;
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    app.sandbox.reset_stats();
    app.cycle().await;
    let writes = app.sandbox.stats().writes;
    assert_eq!(
        (writes.updates, writes.deletes),
        (0, 1),
        "one DELETE, no PATCH"
    );
    assert_eq!(app.sandbox.count_by_external_id(id), 1);
    assert_eq!(app.contact_for(id)["id"], linked.as_str());
    assert_eq!(unconfirmed(&app, id).await, 0);
}

#[tokio::test]
async fn a_contact_made_for_a_record_that_left_the_crm_is_deleted_by_policy() {
    let extra = format!("{SCAN_EVERY_CYCLE}[sync]\non_source_delete = \"delete\"\n");
    let app = spawn(&rows(3), &extra).await;
    lose_a_create_whose_record_then_leaves_the_crm(&app).await;
    assert_eq!(
        unconfirmed(&app, "c-4").await,
        1,
        "the lost POST is remembered"
    );
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    app.cycle().await;
    assert_eq!(
        app.sandbox.count_by_external_id("c-4"),
        0,
        "no contact is left for a record the CRM deleted"
    );
    assert_eq!(unconfirmed(&app, "c-4").await, 0);
    app.assert_one_contact_per_record(&["c-1".into(), "c-2".into(), "c-3".into()])
        .await;
}

#[tokio::test]
async fn a_lost_create_that_never_landed_is_ruled_out_only_by_passes_long_after_it() {
    // The POST was lost before reaching Quo: nothing to find, and the entry must not stay
    // forever.
    let app = spawn(&rows(2), SCAN_EVERY_CYCLE).await;
    let id = quo_sync::domain::ExternalId::parse("c-1").unwrap();
    app.ledger()
        .record_intent_with(
            &id,
            Some(&quo_sync::domain::Snapshot {
                first_name: Some("First1".into()),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    app.cycle().await;
    app.assert_one_contact_per_record(&["c-1".into(), "c-2".into()])
        .await;
    assert_eq!(unconfirmed(&app, "c-1").await, 1);
    // Passes that follow the POST closely prove nothing: a list may still lag it.
    for _ in 0..=quo_sync::ledger::PASSES_TO_RULE_OUT {
        app.cycle().await;
    }
    assert_eq!(unconfirmed(&app, "c-1").await, 1, "not ruled out yet");
    // Passes started well past any lag, listing no copy, rule it out.
    let later = chrono::Utc::now() + quo_sync::ledger::RULE_OUT_AFTER;
    for pass in 1..=quo_sync::ledger::PASSES_TO_RULE_OUT {
        assert_eq!(unconfirmed(&app, "c-1").await, 1, "before pass {pass}");
        app.ledger().unconfirmed_pass_finished(later).await.unwrap();
    }
    assert_eq!(unconfirmed(&app, "c-1").await, 0, "ruled out");
    app.assert_one_contact_per_record(&["c-1".into(), "c-2".into()])
        .await;
}

/// With webhooks, Quo names the contact a lost POST made: the pending create reads it by id and
/// adopts it, so no twin is made even while every list still hides it.
#[tokio::test]
async fn a_webhook_for_a_lost_create_lets_it_adopt_its_contact_despite_the_lagging_list() {
    let extra = format!(
        "[reverse]\nwebhook_secret = \"{}\"\npoll_interval = \"0s\"\n",
        common::whsec()
    );
    let app = spawn(&rows(2), &extra).await;
    let url = app.start_receiver().await;
    app.sandbox.set_webhook(Some(WebhookTarget {
        url,
        secret_key: WEBHOOK_KEY.to_vec(),
        scheme: WebhookScheme::Standard,
    }));
    lose_the_next_create_behind_a_lagging_list(&app).await;
    app.cycle().await; // one POST's answer is lost; both creates are announced
    app.wait_for_inbox(2).await;
    let mut lost = Vec::new();
    for id in ["c-1", "c-2"] {
        if app.row(id).await.quo_id.is_none() {
            lost.push(id);
        }
    }
    let [lost] = lost.as_slice() else {
        panic!("expected one pending create, got {lost:?}")
    };
    let made = app.sandbox.contacts();
    let made = made.iter().find(|c| c["externalId"] == *lost).unwrap();

    app.cycle().await; // the list still hides it; the webhook does not
    assert_eq!(app.sandbox.count_by_external_id(lost), 1, "no twin");
    assert_eq!(
        app.row(lost).await.quo_id.expect("linked").0,
        made["id"].as_str().unwrap(),
        "the contact the lost POST made is the one linked"
    );
    assert_eq!(unconfirmed(&app, lost).await, 0);
    app.assert_one_contact_per_record(&["c-1".into(), "c-2".into()])
        .await;
}

/// A person types on the twin, then the CRM changes the same field later (and it reaches the
/// linked contact): resolving the twin must not bring the older value back over the newer one.
#[tokio::test]
async fn a_twins_older_edit_does_not_revert_a_later_crm_edit_and_is_recorded_as_a_conflict() {
    let app = spawn(&rows(2), SCAN_EVERY_CYCLE).await;
    let (id, twin_id) = make_a_twin(&app, &["c-1", "c-2"]).await;
    app.sandbox
        .app_edit(
            &twin_id,
            json!({"defaultFields": {"company": "Typed On The Twin"},
                   "customFields": [{"key": "notes", "value": "noted on the twin"}]}),
        )
        .expect("app edit");
    // Later, the CRM changes the same field; the twin is still hidden from every list.
    let n: u32 = id.trim_start_matches("c-").parse().unwrap();
    let edited: Vec<String> = (1..=2)
        .map(|i| {
            let row = common::row(&format!("c-{i}"), i);
            if i == n {
                row.replace(&format!(",Acme {i},"), ",CRM Later,")
            } else {
                row
            }
        })
        .collect();
    app.write_csv(&csv(&edited));
    app.cycle().await;
    let linked = app.row(&id).await.quo_id.expect("linked").0;
    let linked_contact = app
        .sandbox
        .contacts()
        .into_iter()
        .find(|c| c["id"] == linked.as_str())
        .unwrap();
    assert_eq!(linked_contact["defaultFields"]["company"], "CRM Later");
    // Someone also keeps a note, not synced to the CRM, on the linked contact.
    app.sandbox
        .app_edit(
            &linked,
            json!({"customFields": [{"key": "notes", "value": "noted on the linked one"}]}),
        )
        .expect("app edit");

    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    app.cycle().await; // the scan lists the twin
    app.cycle().await;

    assert_eq!(app.sandbox.count_by_external_id(&id), 1, "the twin is gone");
    assert_eq!(
        app.contact_for(&id)["defaultFields"]["company"],
        "CRM Later",
        "the later CRM edit stands"
    );
    assert!(
        app.csv_text().contains("CRM Later") && !app.csv_text().contains("Typed On The Twin"),
        "the CRM keeps its later value:\n{}",
        app.csv_text()
    );
    let conflicts = app.ledger().conflicts(100).await.unwrap();
    let conflict = conflicts
        .iter()
        .find(|c| c.external_id == id && c.field == "company")
        .unwrap_or_else(|| panic!("a conflict names the field: {conflicts:?}"));
    assert_eq!(conflict.winner, "crm");
    assert!(
        conflict
            .quo_value
            .as_deref()
            .is_some_and(|v| v.contains("Typed On The Twin")),
        "the conflict keeps the twin's value: {conflict:?}"
    );
    let notes = conflicts
        .iter()
        .find(|c| c.external_id == id && c.field == "notes")
        .unwrap_or_else(|| panic!("the clashing note is recorded: {conflicts:?}"));
    assert!(
        notes
            .quo_value
            .as_deref()
            .is_some_and(|v| v.contains("noted on the twin")),
        "{notes:?}"
    );
    assert_eq!(
        custom_value(&app.contact_for(&id), "notes"),
        json!("noted on the linked one")
    );
    assert_eq!(unconfirmed(&app, &id).await, 0);
}

/// A record leaves the CRM while its create's answer is lost, a person edits the contact that
/// POST made, and the record comes back: the contact is adopted with what the lost POST sent
/// as the base, so the person's edit is kept (and reaches the CRM) instead of being overwritten.
#[tokio::test]
async fn a_returning_record_adopts_its_lost_creates_contact_keeping_what_was_typed_on_it() {
    let app = spawn(&rows(3), SCAN_EVERY_CYCLE).await;
    let grown = lose_a_create_whose_record_then_leaves_the_crm(&app).await;
    assert_eq!(unconfirmed(&app, "c-4").await, 1);
    let made = app.contact_for("c-4");
    app.sandbox
        .app_edit(
            made["id"].as_str().unwrap(),
            json!({"defaultFields": {"role": "Typed In Quo"}}),
        )
        .expect("app edit");

    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    app.write_csv(&csv(&grown)); // the record is restored in the CRM
    app.cycle().await;
    app.cycle().await;

    assert_eq!(app.sandbox.count_by_external_id("c-4"), 1, "no twin");
    assert_eq!(app.row("c-4").await.quo_id.expect("linked").0, made["id"]);
    assert_eq!(
        app.contact_for("c-4")["defaultFields"]["role"],
        "Typed In Quo",
        "the edit made in Quo is kept"
    );
    let c4 = app
        .csv_text()
        .lines()
        .find(|l| l.starts_with("c-4,"))
        .unwrap()
        .to_string();
    assert!(c4.contains("Typed In Quo"), "and reached the CRM: {c4}");
    assert_eq!(unconfirmed(&app, "c-4").await, 0, "its entry is settled");
}

/// A pass that lists a copy resets the entry's run of misses: only passes in a row that list
/// none, all started well after the entry, rule it out.
#[tokio::test]
async fn an_entry_is_ruled_out_only_after_passes_in_a_row_that_list_no_copy() {
    use chrono::{TimeDelta, Utc};
    use quo_sync::ledger::{PASSES_TO_RULE_OUT, RULE_OUT_AFTER};
    let app = spawn(&rows(1), "").await;
    let ledger = app.ledger();
    let id = quo_sync::domain::ExternalId::parse("c-1").unwrap();
    ledger
        .unconfirmed_add(&id, &quo_sync::domain::Snapshot::default())
        .await
        .unwrap();
    // A pass that ended now, started `after` the entry; what it ruled out.
    let pass = async |after: TimeDelta| {
        let started = Utc::now() + after + TimeDelta::milliseconds(1);
        ledger.unconfirmed_pass_finished(started).await.unwrap()
    };
    assert!(pass(RULE_OUT_AFTER / 2).await.is_empty());
    assert_eq!(unconfirmed(&app, "c-1").await, 1, "too soon to count");
    for _ in 1..PASSES_TO_RULE_OUT {
        assert!(pass(RULE_OUT_AFTER).await.is_empty());
    }
    // One more miss would rule it out, but a pass lists a copy.
    ledger.unconfirmed_seen("c-1").await.unwrap();
    for _ in 1..PASSES_TO_RULE_OUT {
        assert!(pass(RULE_OUT_AFTER).await.is_empty());
        assert_eq!(unconfirmed(&app, "c-1").await, 1, "the misses started over");
    }
    assert_eq!(pass(RULE_OUT_AFTER).await, vec!["c-1".to_string()]);
    assert_eq!(unconfirmed(&app, "c-1").await, 0);
}

/// The answer to the PATCH that carries the twin's values over is lost. Under merge semantics an
/// item sent without an id is appended each time a PATCH lands, so a blind resend would double
/// it: the next pass reads both contacts again, sends nothing twice, and still removes the twin.
#[tokio::test]
async fn a_lost_answer_to_the_carry_over_patch_appends_nothing_twice() {
    let sandbox = SandboxConfig {
        conflict_on_duplicate: false,
        patch_mode: quo_sync::sandbox::PatchMode::Merge,
        ..SandboxConfig::default()
    };
    let app = TestApp::spawn_on(Backend::Sqlite, &csv(&rows(2)), sandbox, SCAN_EVERY_CYCLE)
        .await
        .unwrap();
    let (id, twin_id) = make_a_twin(&app, &["c-1", "c-2"]).await;
    app.sandbox
        .app_edit(
            &twin_id,
            json!({"defaultFields": {"emails": [{"name": "personal", "value": "home@example.org"}]}}),
        )
        .expect("app edit");
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    app.sandbox.reset_stats();
    app.sandbox.inject(Fault::DropAfterWrite { count: 1 });
    app.cycle().await;
    let stats = app.sandbox.stats();
    assert_eq!(
        (stats.faults.dropped_after_write, stats.writes.updates > 0),
        (1, true),
        "the carry-over PATCH landed and its answer was lost: {stats:?}"
    );
    for _ in 0..2 {
        app.cycle().await;
    }
    assert_eq!(app.sandbox.count_by_external_id(&id), 1, "the twin is gone");
    let home: Vec<_> = common::items(&app.contact_for(&id), "emails")
        .into_iter()
        .filter(|(_, value)| value == "home@example.org")
        .collect();
    assert_eq!(home.len(), 1, "carried over once: {home:?}");
    assert_eq!(unconfirmed(&app, &id).await, 0);
}

/// A create's answer is lost behind a lagging list; the CRM then changes the record, and the
/// next POST (with the new value) is refused with 409 because the first contact exists. When
/// the list catches up, that contact is adopted with what the first POST sent as the base, not
/// what the refused one sent: the CRM's change is a change, and is not reverted.
#[tokio::test]
async fn a_contact_adopted_after_409s_is_merged_against_the_post_that_made_it() {
    let sandbox = SandboxConfig {
        conflict_on_duplicate: true,
        ..SandboxConfig::default()
    };
    let app = TestApp::spawn_on(Backend::Sqlite, &csv(&rows(1)), sandbox, SCAN_EVERY_CYCLE)
        .await
        .unwrap();
    lose_the_next_create_behind_a_lagging_list(&app).await;
    app.cycle().await; // the lost POST: its record stays a pending create
    assert_eq!(
        app.sandbox.fault_counters().dropped_after_write,
        1,
        "the POST's answer was lost"
    );
    let edited = common::row("c-1", 1).replace(",Acme 1,", ",Renamed In CRM,");
    app.write_csv(&csv(&[edited]));
    app.cycle().await; // lookups miss; the POST with the new value meets 409s
    let stats = app.sandbox.stats();
    assert!(
        stats.faults.contacts_left_out > 0
            && stats
                .by_route_status
                .get("POST /v1/contacts 409")
                .is_some_and(|n| *n > 0),
        "the lookups missed the hidden contact and the next POST met a 409: {stats:?}"
    );
    assert_eq!(
        unconfirmed(&app, "c-1").await,
        1,
        "the lost POST is remembered"
    );
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    app.cycle().await; // the contact is listed and adopted
    app.cycle().await;
    assert_eq!(app.sandbox.count_by_external_id("c-1"), 1);
    assert_eq!(
        app.contact_for("c-1")["defaultFields"]["company"],
        "Renamed In CRM"
    );
    assert!(
        app.csv_text().contains("Renamed In CRM"),
        "the CRM keeps its change:\n{}",
        app.csv_text()
    );
    assert_eq!(unconfirmed(&app, "c-1").await, 0, "its entry is settled");
}

/// As above, but a person also changes the same field on the hidden contact in the Quo app: the
/// contact now differs as much from the refused POST (the intent) as from the POST that made it.
/// The base must be the POST that made it, so both sides changed the field and the conflict is
/// recorded and decided by the policy; with the refused POST as the base, the CRM's value
/// looked unchanged and Quo's overwrote it with no conflict recorded (found by the convergence
/// test, seed 123: a CRM edit lost silently).
#[tokio::test]
async fn a_contact_adopted_after_409s_and_edited_in_quo_records_the_conflict() {
    let sandbox = SandboxConfig {
        conflict_on_duplicate: true,
        ..SandboxConfig::default()
    };
    let app = TestApp::spawn_on(
        Backend::Sqlite,
        &csv(&rows(1)),
        sandbox,
        "[reverse]\npoll_interval = \"1ms\"\nconflict = \"crm\"\n",
    )
    .await
    .unwrap();
    lose_the_next_create_behind_a_lagging_list(&app).await;
    app.cycle().await; // the lost POST: its record stays a pending create
    assert_eq!(app.sandbox.fault_counters().dropped_after_write, 1);
    let edited = common::row("c-1", 1).replace(",Acme 1,", ",Renamed In CRM,");
    app.write_csv(&csv(&[edited]));
    app.cycle().await; // lookups miss; the POST with the new value meets 409s
    assert!(
        app.sandbox
            .stats()
            .by_route_status
            .get("POST /v1/contacts 409")
            .is_some_and(|n| *n > 0),
        "the next POST met a 409"
    );
    let hidden = app.sandbox.contacts();
    let [contact] = hidden.as_slice() else {
        panic!("one contact, made by the lost POST: {hidden:?}")
    };
    app.sandbox
        .app_edit(
            contact["id"].as_str().unwrap(),
            json!({"defaultFields": {"company": "Renamed In Quo"}}),
        )
        .expect("the hidden contact is edited in the app");
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    app.cycle().await; // the contact is listed and adopted
    app.cycle().await;
    let conflicts = app.ledger().conflicts(10).await.unwrap();
    let company: Vec<_> = conflicts.iter().filter(|c| c.field == "company").collect();
    assert!(
        company.len() == 1
            && company[0].crm_value.as_deref() == Some("\"Renamed In CRM\"")
            && company[0].quo_value.as_deref() == Some("\"Renamed In Quo\"")
            && company[0].winner == "crm",
        "both sides changed company since the POST that made the contact: one conflict, CRM's value wins under `crm`: {conflicts:?}"
    );
    assert_eq!(
        app.contact_for("c-1")["defaultFields"]["company"],
        "Renamed In CRM"
    );
    assert!(app.csv_text().contains("Renamed In CRM"));
}

/// The answer to the twin's DELETE is lost: the retry meets a 404, which means gone, so the
/// entry is settled and the linked contact is left alone.
#[tokio::test]
async fn a_lost_answer_to_the_twins_delete_still_settles_it() {
    let app = spawn(&rows(2), SCAN_EVERY_CYCLE).await;
    let (id, twin_id) = make_a_twin(&app, &["c-1", "c-2"]).await;
    let linked = app.row(&id).await.quo_id.expect("linked").0;
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    app.sandbox.inject(Fault::DropAfterWrite { count: 1 });
    app.sandbox.reset_stats();
    app.cycle().await; // an untouched twin: its DELETE is the cycle's first write
    let stats = app.sandbox.stats();
    assert_eq!(stats.writes.updates, 0, "nothing to carry over");
    assert_eq!(
        (stats.faults.dropped_after_write, stats.writes.deletes),
        (1, 1),
        "the DELETE landed and its answer was lost: {stats:?}"
    );
    assert!(
        app.sandbox
            .contacts()
            .iter()
            .all(|c| c["id"] != twin_id.as_str()),
        "the twin is gone"
    );
    assert_eq!(app.contact_for(&id)["id"], linked.as_str());
    assert_eq!(
        unconfirmed(&app, &id).await,
        0,
        "the lost answer did not keep it open"
    );
}
