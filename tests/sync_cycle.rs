//! CRM → Quo against the in-process sandbox over real HTTP: initial load, idempotent re-runs,
//! minimal PATCHes under both PATCH semantics, quarantine, faults and duplicate safety.

mod common;

use common::{Backend, TestApp, csv, custom_value, items, row};
use quo_sync::sandbox::{Fault, PatchMode, SandboxConfig};
use serde_json::json;

fn ids(n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("c-{i}")).collect()
}

fn rows(n: u32) -> Vec<String> {
    (1..=n).map(|i| row(&format!("c-{i}"), i)).collect()
}

#[tokio::test]
async fn initial_load_creates_each_record_once_and_records_every_id() {
    let app = TestApp::spawn(&csv(&rows(12))).await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 12);
    assert_eq!(report.counts.quarantined, 0);
    assert_eq!(app.sandbox.contacts().len(), 12);
    assert_eq!(app.creates_answered(), 12, "one POST per record");
    app.assert_created_once(&ids(12)).await;

    let contact = app.contact_for("c-3");
    assert_eq!(contact["source"], "quo-sync");
    assert_eq!(contact["defaultFields"]["firstName"], "First3");
    assert_eq!(contact["defaultFields"]["company"], "Acme 3");
    assert_eq!(
        items(&contact, "phoneNumbers"),
        vec![("phone".to_string(), "+14155551003".to_string())]
    );
    assert_eq!(
        items(&contact, "emails"),
        vec![("email".to_string(), "first3@example.com".to_string())]
    );
    assert_eq!(custom_value(&contact, "lead-score").as_f64(), Some(3.0));
    assert_eq!(custom_value(&contact, "vip"), json!(true));
    assert_eq!(custom_value(&contact, "tags"), json!(["vip", "enterprise"]));
    assert_eq!(
        custom_value(&contact, "renewal-date"),
        json!("2026-03-01T00:00:00.000Z")
    );
}

#[tokio::test]
async fn an_immediate_second_cycle_sends_zero_writes() {
    second_cycle_scenario(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_immediate_second_cycle_sends_zero_writes_on_postgres() {
    second_cycle_scenario(Backend::Postgres).await;
}

async fn second_cycle_scenario(backend: Backend) {
    let Some(app) = TestApp::spawn_on(backend, &csv(&rows(8)), SandboxConfig::default(), "").await
    else {
        return;
    };
    app.cycle().await;
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(report.counts.unchanged, 8);
    assert_eq!((report.counts.created, report.counts.updated), (0, 0));
    let stats = app.sandbox.stats();
    assert_eq!(stats.writes_total(), 0, "{stats:?}");
    // The one request is the custom-field lookup that starts every cycle.
    assert_eq!(stats.requests_total, 1, "{stats:?}");
}

async fn one_changed_field_sends_exactly_one_patch(mode: PatchMode) {
    let app = TestApp::spawn_with(
        &csv(&rows(5)),
        SandboxConfig {
            patch_mode: mode,
            ..SandboxConfig::default()
        },
        "",
    )
    .await;
    app.cycle().await;
    // Someone adds things in the Quo app that the mapping does not manage.
    let id = app.contact_for("c-2")["id"].as_str().unwrap().to_string();
    app.sandbox
        .app_edit(&id, json!({"defaultFields": {"emails": [{"name": "home", "value": "home2@example.com"}]}, "customFields": [{"key": "notes", "value": "met at expo"}]}))
        .expect("app edit");
    // Let the ledger learn Quo's copy the way the reverse path would.
    let fresh = app.ctx.client.get_contact(&id).await.unwrap().unwrap();
    app.ledger()
        .update_quo_contact(&quo_sync::domain::ExternalId::parse("c-2").unwrap(), &fresh)
        .await
        .unwrap();

    let mut changed = rows(5);
    changed[1] = changed[1].replace("Acme 2", "Globex");
    app.write_csv(&csv(&changed));
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(report.counts.updated, 1);
    let stats = app.sandbox.stats();
    assert_eq!(stats.writes_total(), 1, "{stats:?}");
    assert_eq!(
        stats.by_route_status.get("PATCH /v1/contacts/{id} 200"),
        Some(&1),
        "{stats:?}"
    );

    let contact = app.contact_for("c-2");
    assert_eq!(contact["defaultFields"]["company"], "Globex");
    assert_eq!(contact["defaultFields"]["firstName"], "First2");
    assert_eq!(
        items(&contact, "emails"),
        vec![
            ("email".to_string(), "first2@example.com".to_string()),
            ("home".to_string(), "home2@example.com".to_string())
        ]
    );
    assert_eq!(
        items(&contact, "phoneNumbers"),
        vec![("phone".to_string(), "+14155551002".to_string())]
    );
    assert_eq!(custom_value(&contact, "tags"), json!(["vip", "enterprise"]));
    assert_eq!(
        custom_value(&contact, "notes"),
        json!("met at expo"),
        "unmanaged custom field survives"
    );
}

#[tokio::test]
async fn one_changed_field_is_one_patch_under_merge_semantics() {
    one_changed_field_sends_exactly_one_patch(PatchMode::Merge).await;
}

#[tokio::test]
async fn one_changed_field_is_one_patch_under_replace_semantics() {
    one_changed_field_sends_exactly_one_patch(PatchMode::Replace).await;
}

#[tokio::test]
async fn removing_a_phone_in_the_crm_removes_it_in_quo_under_both_semantics() {
    for mode in [PatchMode::Merge, PatchMode::Replace] {
        let mut two_phones = rows(2);
        two_phones[0] =
            two_phones[0].replace(",(415) 555-1001,,", ",(415) 555-1001,(415) 555-2001,");
        let app = TestApp::spawn_with(
            &csv(&two_phones),
            SandboxConfig {
                patch_mode: mode,
                ..SandboxConfig::default()
            },
            "",
        )
        .await;
        app.cycle().await;
        assert_eq!(items(&app.contact_for("c-1"), "phoneNumbers").len(), 2);
        app.write_csv(&csv(&rows(2)));
        let report = app.cycle().await;
        assert_eq!(report.counts.updated, 1);
        assert_eq!(
            items(&app.contact_for("c-1"), "phoneNumbers"),
            vec![("phone".to_string(), "+14155551001".to_string())],
            "{mode:?}"
        );
    }
}

#[tokio::test]
async fn bad_values_are_quarantined_while_the_rest_sync_and_retried_once_fixed() {
    let mut data = rows(4);
    data.push(row("bad-phone", 5).replace("(415) 555-1005", "555-CALL-NOW"));
    data.push(row("bad-score", 6).replace(",6,yes,", ",lots,yes,"));
    let app = TestApp::spawn(&csv(&data)).await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 4);
    assert_eq!(report.counts.quarantined, 2);
    let quarantine = app.ledger().quarantined().await.unwrap();
    let phone = quarantine
        .iter()
        .find(|q| q.key == "bad-phone")
        .expect("bad phone quarantined");
    assert_eq!(phone.field.as_deref(), Some("phone"));
    assert_eq!(phone.value.as_deref(), Some("555-CALL-NOW"));
    assert!(phone.location.ends_with("line 6"), "{}", phone.location);
    let score = quarantine
        .iter()
        .find(|q| q.key == "bad-score")
        .expect("bad score quarantined");
    assert_eq!(
        (score.field.as_deref(), score.value.as_deref()),
        (Some("lead_score"), Some("lots"))
    );
    assert_eq!(app.sandbox.count_by_external_id("bad-phone"), 0);

    // Still bad: still quarantined, nothing lost.
    let report = app.cycle().await;
    assert_eq!(report.counts.quarantined, 2);

    // Fixed: synced and out of quarantine.
    let mut fixed = rows(4);
    fixed.push(row("bad-phone", 5));
    fixed.push(row("bad-score", 6));
    app.write_csv(&csv(&fixed));
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 2);
    assert!(app.ledger().quarantined().await.unwrap().is_empty());
    app.assert_created_once(&["bad-phone".to_string(), "bad-score".to_string()])
        .await;
}

#[tokio::test]
async fn a_malformed_csv_row_is_quarantined_and_the_rest_sync() {
    let mut text = csv(&rows(3));
    text.push_str("c-4,only,three\n");
    text.push_str(&format!("{}\n", row("c-5", 5)));
    let app = TestApp::spawn(&text).await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 4);
    assert_eq!(report.counts.quarantined, 1);
    let quarantine = app.ledger().quarantined().await.unwrap();
    assert_eq!(quarantine.len(), 1);
    assert_eq!(quarantine[0].stage, "read");
    assert!(
        quarantine[0].location.ends_with("line 5"),
        "{:?}",
        quarantine[0]
    );
}

#[tokio::test]
async fn a_429_burst_and_a_500_burst_converge_with_every_record_synced() {
    let app = TestApp::spawn_with(
        &csv(&rows(40)),
        SandboxConfig {
            latency: std::time::Duration::from_millis(20),
            ..SandboxConfig::default()
        },
        "",
    )
    .await;
    // Start the load, then hit it mid-flight so the bursts land on concurrent creates.
    let ctx = app.ctx.clone();
    let cycle =
        tokio::spawn(
            async move { quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply).await },
        );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.sandbox.stats().writes.creates < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the load never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    app.sandbox.inject(Fault::Status {
        status: 429,
        count: 8,
        retry_after: Some(0),
    });
    app.sandbox.inject(Fault::Status {
        status: 500,
        count: 8,
        retry_after: None,
    });
    let report = cycle.await.unwrap().expect("cycle converges");
    assert_eq!(report.counts.created, 40, "{report:?}");
    assert!(report.counts.rate_limited >= 8, "{report:?}");
    assert_eq!(app.sandbox.stats().injected_faults, 16);
    app.assert_created_once(&ids(40)).await;
}

async fn dropped_responses_create_no_duplicates(conflict_on_duplicate: bool) {
    let app = TestApp::spawn_with(
        &csv(&rows(10)),
        SandboxConfig {
            conflict_on_duplicate,
            ..SandboxConfig::default()
        },
        "",
    )
    .await;
    app.sandbox.inject(Fault::DropAfterWrite { count: 5 });
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 10, "{report:?}");
    assert_eq!(
        app.sandbox.fault_counters().dropped_after_write,
        5,
        "five answers were lost"
    );
    // Each lost create was found by lookup: ten POSTs, none sent twice (with 409 on, a second
    // POST would still end with one contact, but it would draw a 409).
    assert_eq!(app.creates_answered(), 10);
    app.assert_created_once(&ids(10)).await;
    assert_eq!(app.sandbox.contacts().len(), 10);
    // And the next cycle agrees there is nothing to do.
    let report = app.cycle().await;
    assert_eq!(report.counts.unchanged, 10, "{report:?}");
}

#[tokio::test]
async fn responses_dropped_after_commit_create_no_duplicates_with_409() {
    dropped_responses_create_no_duplicates(true).await;
}

#[tokio::test]
async fn responses_dropped_after_commit_create_no_duplicates_without_409() {
    dropped_responses_create_no_duplicates(false).await;
}

#[tokio::test]
async fn a_lost_intent_is_resolved_by_lookup_not_a_second_create() {
    lost_intent_scenario(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_lost_intent_is_resolved_by_lookup_not_a_second_create_on_postgres() {
    lost_intent_scenario(Backend::Postgres).await;
}

async fn lost_intent_scenario(backend: Backend) {
    // A previous process created c-1 in Quo, then died before committing the id. Quo accepts a
    // repeated externalId here, so a second create would be a second contact.
    let sandbox = SandboxConfig {
        conflict_on_duplicate: false,
        ..SandboxConfig::default()
    };
    let Some(app) = TestApp::spawn_on(backend, &csv(&rows(2)), sandbox, "").await else {
        return;
    };
    let id = quo_sync::domain::ExternalId::parse("c-1").unwrap();
    app.ledger().record_intent(&id).await.unwrap();
    let body = quo_sync::sync::payload::create_body(
        &quo_sync::domain::Snapshot {
            first_name: Some("First1".into()),
            ..Default::default()
        },
        "c-1",
        "quo-sync",
        None,
    );
    app.ctx.client.create_contact(&body, &()).await.unwrap();
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 2);
    assert_eq!(app.creates_answered(), 1, "only c-2 is POSTed");
    app.assert_one_contact_per_record(&ids(2)).await;
    // Adopted and then brought up to date with the CRM.
    assert_eq!(app.contact_for("c-1")["defaultFields"]["company"], "Acme 1");
}

#[tokio::test]
async fn plan_sends_no_writes_and_names_changed_fields() {
    let app = TestApp::spawn(&csv(&rows(3))).await;
    app.cycle().await;
    let mut changed = rows(4);
    changed[0] = changed[0].replace("Buyer", "CFO");
    app.write_csv(&csv(&changed));
    app.sandbox.reset_stats();
    let plan = app.plan().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0);
    assert_eq!(
        (
            plan.counts.created,
            plan.counts.updated,
            plan.counts.unchanged
        ),
        (1, 1, 2)
    );
    let update = plan
        .operations
        .iter()
        .find(|o| o.external_id == "c-1")
        .unwrap();
    assert_eq!(update.fields, vec!["role".to_string()]);
    // Planning wrote nothing to the ledger either.
    assert!(
        app.ledger()
            .record(&quo_sync::domain::ExternalId::parse("c-4").unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn records_gone_from_the_source_are_ignored_by_default_and_deleted_when_configured() {
    let app = TestApp::spawn(&csv(&rows(3))).await;
    app.cycle().await;
    app.write_csv(&csv(&rows(2)));
    let report = app.cycle().await;
    assert_eq!(report.counts.deleted, 0);
    assert_eq!(app.sandbox.count_by_external_id("c-3"), 1);

    let app = TestApp::spawn_with(
        &csv(&rows(3)),
        SandboxConfig::default(),
        "[sync]\non_source_delete = \"delete\"\n",
    )
    .await;
    app.cycle().await;
    app.write_csv(&csv(&rows(2)));
    // One complete read that misses a record only notes it; the next that agrees deletes.
    let report = app.cycle().await;
    assert_eq!(report.counts.deleted, 0);
    assert_eq!(app.sandbox.count_by_external_id("c-3"), 1);
    let report = app.cycle().await;
    assert_eq!(report.counts.deleted, 1);
    assert_eq!(app.sandbox.count_by_external_id("c-3"), 0);
    let row = app
        .ledger()
        .record(&quo_sync::domain::ExternalId::parse("c-3").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, quo_sync::ledger::RecordState::Deleted);
}

/// A record one complete read misses (a file caught half-written, a list that skipped a page)
/// is deleted only when the next complete read misses it too; one that comes back is kept, and
/// its absence forgotten.
#[tokio::test]
async fn a_record_is_deleted_only_when_two_complete_reads_in_a_row_miss_it() {
    let app = TestApp::spawn_with(
        &csv(&rows(4)),
        SandboxConfig::default(),
        "[sync]\non_source_delete = \"delete\"\nmax_delete_fraction = 1.0\n",
    )
    .await;
    app.cycle().await;
    let absent = async || {
        let mut ids: Vec<String> = app.ledger().absences().await.unwrap().into_iter().collect();
        ids.sort();
        ids
    };

    // A read cut after two rows: nothing deleted, the two missing rows noted.
    app.write_csv(&csv(&rows(2)));
    let report = app.cycle().await;
    assert_eq!(report.counts.deleted, 0, "{report:?}");
    assert_eq!(app.sandbox.contacts().len(), 4);
    assert_eq!(absent().await, ["c-3", "c-4"]);

    // The whole file again: they are back, kept, and no longer noted.
    app.write_csv(&csv(&rows(4)));
    let report = app.cycle().await;
    assert_eq!(report.counts.deleted, 0, "{report:?}");
    assert!(absent().await.is_empty());

    // A record really removed: kept after the first read that misses it, deleted after the
    // second, and its absence then forgotten.
    app.write_csv(&csv(&rows(3)));
    let report = app.cycle().await;
    assert_eq!(report.counts.deleted, 0, "{report:?}");
    let report = app.cycle().await;
    assert_eq!(report.counts.deleted, 1, "{report:?}");
    assert_eq!(app.sandbox.count_by_external_id("c-4"), 0);
    assert_eq!(app.sandbox.contacts().len(), 3);
    app.cycle().await;
    assert!(absent().await.is_empty());
}
