//! Day one's seams: a lost answer to an adoption, a record whose own create is still pending
//! when it matches a contact made in the app, a listing cut short, a contact made in the app
//! while the workspace is listed, two records on one phone, a contact deleted in Quo behind the
//! index's back, and a held record fixed in the CRM.

mod common;

use std::time::Duration;

use common::{TestApp, csv, custom_value, items, row};
use quo_sync::reverse::scan::{Scope, scan_pass};
use quo_sync::sandbox::{Fault, SandboxConfig, WebhookScheme, WebhookTarget};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// `GET /v1/contacts` answers so far.
fn list_requests(app: &TestApp) -> u64 {
    app.sandbox
        .stats()
        .by_route_status
        .get("GET /v1/contacts 200")
        .copied()
        .unwrap_or(0)
}

/// `n` people in Quo that no CRM record matches.
fn strangers(n: usize) -> String {
    let mut out = String::from("first_name,last_name,email\n");
    for i in 0..n {
        out.push_str(&format!("Stranger,{i},stranger{i}@elsewhere.example\n"));
    }
    out
}

/// Contacts whose phones include `e164`.
fn with_phone(app: &TestApp, e164: &str) -> Vec<serde_json::Value> {
    app.sandbox
        .contacts()
        .into_iter()
        .filter(|c| items(c, "phoneNumbers").iter().any(|(_, v)| v == e164))
        .collect()
}

/// The adoption PATCH lands but its answer is lost: the contact is read back and the adoption
/// is confirmed, so no item is appended twice and the record is linked once.
#[tokio::test]
async fn a_lost_answer_to_the_adoption_patch_is_confirmed_by_a_read() {
    let app = TestApp::spawn(&csv(&[row("c-1", 1)])).await;
    app.sandbox
        .seed_existing_csv("first_name,phone,notes\nBob,(415) 555-1001,typed in the app\n")
        .unwrap();
    app.sandbox.inject(Fault::DropAfterWrite { count: 1 });
    let report = app.cycle().await;
    assert_eq!(app.sandbox.fault_counters().dropped_after_write, 1);
    assert_eq!(report.counts.adopted, 1, "{:?}", report.counts);
    assert_eq!(app.sandbox.contacts().len(), 1, "nothing created");
    let bob = app.contact_for("c-1");
    assert_eq!(bob["source"], "quo-sync");
    let emails = items(&bob, "emails");
    assert_eq!(
        emails,
        vec![("email".to_string(), "first1@example.com".to_string())],
        "the CRM's email, once"
    );
    assert_eq!(items(&bob, "phoneNumbers").len(), 1);
    assert_eq!(custom_value(&bob, "notes"), "typed in the app");
    assert_eq!(
        app.row("c-1").await.quo_id.unwrap().0,
        bob["id"].as_str().unwrap()
    );
    let conflicts = app.ledger().conflicts(50).await.unwrap();
    let first_names: Vec<_> = conflicts
        .iter()
        .filter(|c| c.field == "firstName" && c.policy == "adopted")
        .collect();
    assert_eq!(first_names.len(), 1, "recorded once: {conflicts:#?}");
    assert_eq!(first_names[0].quo_value.as_deref(), Some("\"Bob\""));
    app.sandbox.reset_stats();
    app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0);
}

/// c-1's POST lands unseen (its answer lost, its contact hidden from every list); a salesperson
/// then makes a contact with c-1's phone in the app. The next cycle's lookup for the pending
/// create misses, so c-1 adopts the app's contact; the contact the lost POST made is a twin,
/// and when a scan finally lists it, it is merged into the adopted one and deleted.
#[tokio::test]
async fn a_pending_create_that_matches_an_app_contact_leaves_no_twin() {
    let app = TestApp::spawn_with(
        &csv(&[row("c-1", 1)]),
        SandboxConfig {
            conflict_on_duplicate: false,
            ..SandboxConfig::default()
        },
        "[reverse]\npoll_interval = \"1ms\"\n",
    )
    .await;
    common::sandbox_fault(
        &app.sandbox.base_url(),
        json!({"kind": "lagging_list", "next_created": 1, "scope": "all"}),
    )
    .await;
    app.sandbox.inject(Fault::DropAfterWrite { count: 1 });
    app.cycle().await; // the POST lands, its answer is lost, its contact stays unlisted
    assert_eq!(app.sandbox.count_by_external_id("c-1"), 1);
    let lost = app
        .sandbox
        .contacts()
        .into_iter()
        .find(|c| c["externalId"] == "c-1")
        .unwrap();
    let made_in_app = app.sandbox.app_create(
        json!({"defaultFields": {"firstName": "Bobby",
               "phoneNumbers": [{"name": "mobile", "value": "+14155551001"}]},
               "customFields": [{"key": "notes", "value": "called us first"}]}),
        "",
    );

    app.cycle().await; // lookups miss (the list lags): c-1 adopts the app's contact
    let linked = app.row("c-1").await.quo_id.expect("linked").0;
    assert_eq!(linked, made_in_app["id"].as_str().unwrap());
    assert_eq!(
        app.ledger().unconfirmed_for("c-1").await.unwrap().len(),
        1,
        "the lost POST is remembered, so the contact it made is recognised"
    );

    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    app.cycle().await; // the scan lists the lost POST's contact: a twin, merged and deleted
    assert!(
        app.sandbox.contact(lost["id"].as_str().unwrap()).is_none(),
        "the twin is gone"
    );
    assert_eq!(app.sandbox.count_by_external_id("c-1"), 1);
    let kept = app.contact_for("c-1");
    assert_eq!(kept["id"], made_in_app["id"]);
    assert_eq!(custom_value(&kept, "notes"), "called us first");
    assert_eq!(
        with_phone(&app, "+14155551001").len(),
        1,
        "one contact per person"
    );
    assert!(
        app.ledger()
            .unconfirmed_for("c-1")
            .await
            .unwrap()
            .is_empty()
    );
}

/// A listing of the workspace cut short (a restart) resumes from its page token: no page is
/// listed twice, and the matches it finds on the later pages are adopted.
#[tokio::test]
async fn a_listing_cut_short_resumes_from_its_page_token() {
    let mut app = TestApp::spawn(&csv(&[row("c-1", 1)])).await;
    // 180 strangers, then Bob (c-1's phone): 4 pages, Bob on the last.
    app.sandbox.seed_existing_csv(&strangers(180)).unwrap();
    app.sandbox
        .seed_existing_csv("first_name,phone\nBob,(415) 555-1001\n")
        .unwrap();
    let stop = CancellationToken::new();
    let first = scan_pass(
        app.ledger(),
        &app.ctx.client,
        Scope::Workspace,
        Some(2),
        &stop,
        app.ctx.settings.delete_guard(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((first.pages, first.complete), (2, false));
    app.restart().await;
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(list_requests(&app), 2, "only the pages not listed yet");
    assert_eq!(report.counts.adopted, 1, "{:?}", report.counts);
    assert_eq!(report.counts.created, 0);
    assert_eq!(app.sandbox.contacts().len(), 181);
}

/// A contact made in the app while the workspace is being listed, on a page already listed:
/// its webhook reaches the inbox during the listing, and the listing reads it before any record
/// is matched, so the record adopts it instead of creating a second contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_made_in_the_app_during_the_listing_is_matched() {
    let app = TestApp::spawn_with(
        &csv(&[row("c-1", 1)]),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"0s\"\n",
    )
    .await;
    app.sandbox.seed_existing_csv(&strangers(150)).unwrap();
    let url = app.start_receiver().await;
    app.sandbox.set_webhook(Some(WebhookTarget {
        url,
        secret_key: common::WEBHOOK_KEY.to_vec(),
        scheme: WebhookScheme::Standard,
    }));
    // The contact the app makes next is left out of listings (it sorts onto a listed page).
    common::sandbox_fault(
        &app.sandbox.base_url(),
        json!({"kind": "lagging_list", "next_created": 1, "scope": "unfiltered"}),
    )
    .await;
    app.sandbox.set_latency(Duration::from_millis(150));
    let cycle = {
        let ctx = app.ctx.clone();
        tokio::spawn(
            async move { quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply).await },
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app
        .ledger()
        .meta("reverse.scan_token")
        .await
        .unwrap()
        .is_none()
    {
        assert!(std::time::Instant::now() < deadline, "page 1 never listed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bobby = app.sandbox.app_create(
        json!({"defaultFields": {"firstName": "Bobby",
               "phoneNumbers": [{"name": "mobile", "value": "+14155551001"}]}}),
        "",
    );
    app.wait_for_inbox(1).await;
    assert!(
        app.ledger()
            .meta("workspace.listed_at")
            .await
            .unwrap()
            .is_none(),
        "the webhook arrived while the listing ran"
    );
    let report = cycle.await.unwrap().unwrap();
    assert_eq!(report.counts.adopted, 1, "{:?}", report.counts);
    assert_eq!(report.counts.created, 0);
    assert_eq!(app.quo_id("c-1"), bobby["id"].as_str().unwrap());
    assert_eq!(with_phone(&app, "+14155551001").len(), 1);
}

/// Two records on one phone. Both match one contact already in Quo: both are held, naming each
/// other, and the contact is untouched. A new record that shares the phone of a synced one
/// gets its own contact (the synced record's contact is not a candidate). Two new records on a
/// phone no contact has: two contacts.
#[tokio::test]
async fn two_records_on_one_phone() {
    let office = "(415) 555-7000";
    let mut a = row("a-1", 1);
    let mut b = row("b-1", 2);
    a = a.replace("(415) 555-1001", office);
    b = b.replace("(415) 555-1002", office);
    let app = TestApp::spawn(&csv(&[a.clone(), b.clone()])).await;
    app.sandbox
        .seed_existing_csv("first_name,phone\nFront,(415) 555-7000\n")
        .unwrap();
    let front = app.sandbox.contacts()[0].clone();
    let report = app.cycle().await;
    assert_eq!((report.counts.held, report.counts.created), (2, 0));
    for id in ["a-1", "b-1"] {
        let held = app.ledger().quarantined_one(id).await.unwrap().unwrap();
        assert!(
            held.reason.contains("a-1, b-1") && held.reason.contains(front["id"].as_str().unwrap()),
            "{held:?}"
        );
    }
    assert_eq!(app.sandbox.contacts(), vec![front.clone()], "untouched");

    // The operator links a-1; b-1 is a different person on the same line: its own contact.
    app.ledger()
        .set_match_decision(
            "a-1",
            &quo_sync::ledger::MatchDecision::Link(front["id"].as_str().unwrap().into()),
        )
        .await
        .unwrap();
    let report = app.cycle().await;
    assert_eq!(
        (report.counts.adopted, report.counts.created),
        (1, 1),
        "{:?}",
        report.counts
    );
    assert_eq!(app.quo_id("a-1"), front["id"].as_str().unwrap());
    assert_ne!(app.quo_id("b-1"), front["id"].as_str().unwrap());

    // Two new records on a phone nobody has: two contacts.
    let mut c = row("c-1", 3);
    let mut d = row("d-1", 4);
    c = c.replace("(415) 555-1003", "(415) 555-8000");
    d = d.replace("(415) 555-1004", "(415) 555-8000");
    app.write_csv(&csv(&[a, b, c, d]));
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 2, "{:?}", report.counts);
    assert_eq!(with_phone(&app, "+14155558000").len(), 2);
}

/// Records held because each matched two contacts. One of c-1's is deleted in the Quo app (no
/// webhook): the next scan reads the contact it no longer lists by id (404) and drops it from
/// the index, and c-1 adopts the one left. c-2's row is fixed in the CRM (its email removed) and
/// `quarantine retry` evaluates it again: it adopts the contact its phone matches.
#[tokio::test]
async fn held_records_are_evaluated_again_once_the_data_is_fixed() {
    let app = TestApp::spawn_with(
        &csv(&[row("c-1", 1), row("c-2", 2)]),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"1ms\"\n",
    )
    .await;
    app.sandbox
        .seed_existing_csv(
            "first_name,email,phone\nBob,,(415) 555-1001\nRobert,first1@example.com,\n\
             Carl,,(415) 555-1002\nCarla,first2@example.com,\n",
        )
        .unwrap();
    let report = app.cycle().await;
    assert_eq!(report.counts.held, 2);
    let id_of = |name: &str| {
        app.sandbox
            .contacts()
            .into_iter()
            .find(|c| c["defaultFields"]["firstName"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (robert, bob, carl) = (id_of("Robert"), id_of("Bob"), id_of("Carl"));
    assert!(app.sandbox.app_delete(&robert));
    let report = app.cycle().await; // the pass reads the unlisted contact by id: 404
    assert!(
        app.ledger()
            .workspace_contact(&robert)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(report.counts.adopted, 1, "{:?}", report.counts);
    assert_eq!(app.quo_id("c-1"), bob);

    app.write_csv(&csv(&[
        row("c-1", 1),
        row("c-2", 2).replace("first2@example.com", ""),
    ]));
    quo_sync::ops::retry_quarantined(app.ledger(), &["c-2".to_string()])
        .await
        .unwrap();
    let report = app.cycle().await;
    assert_eq!(report.counts.adopted, 1, "{:?}", report.counts);
    assert!(app.ledger().quarantined_one("c-2").await.unwrap().is_none());
    assert_eq!(app.quo_id("c-2"), carl);
    assert_eq!(app.sandbox.contacts().len(), 3, "nothing created");
}

/// Day one against a workspace whose list lags (#20): Quo's first listing hides Bob, who has
/// been in the workspace since before quo-sync (made in the app with c-1's phone). The index
/// built from that listing misses him, yet c-1 must not be POSTed as a second Bob: creates wait
/// until a second listing agrees, which shows Bob, and c-1 adopts him.
#[tokio::test]
async fn a_first_listing_that_lags_does_not_make_a_duplicate_person() {
    let app = TestApp::spawn(&csv(&[row("c-1", 1), row("c-2", 2)])).await;
    app.sandbox.seed_existing_csv(&strangers(60)).unwrap();
    app.sandbox
        .seed_existing_csv("first_name,phone\nBob,(415) 555-1001\n")
        .unwrap();
    let bob = with_phone(&app, "+14155551001");
    assert_eq!(bob.len(), 1);
    let bob_id = bob[0]["id"].as_str().unwrap().to_string();
    // The whole first listing (two pages) hides Bob; the list catches up after it.
    common::sandbox_fault(
        &app.sandbox.base_url(),
        json!({"kind": "lagging_list", "ids": [bob_id], "lists": 2, "scope": "unfiltered"}),
    )
    .await;
    let report = app.cycle().await;
    assert!(
        app.sandbox.fault_counters().lagging_list_answers >= 1,
        "the lag fired"
    );
    assert_eq!(
        with_phone(&app, "+14155551001").len(),
        1,
        "one Bob in Quo: {:#?}",
        with_phone(&app, "+14155551001")
    );
    assert_eq!(app.quo_id("c-1"), bob_id, "c-1 adopted the existing Bob");
    assert_eq!(report.counts.adopted, 1, "{:?}", report.counts);
    assert_eq!(report.counts.created, 1, "c-2 is new: {:?}", report.counts);
    assert_eq!(app.sandbox.contacts().len(), 62);
    // The agreement is kept: a later cycle lists nothing again.
    let lists = list_requests(&app);
    app.cycle().await;
    assert_eq!(list_requests(&app), lists);
}
