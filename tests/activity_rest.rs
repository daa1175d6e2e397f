//! Activity logging into REST CRMs, one test per vendor example: the vendor's contacts example
//! plus its activity example (`config/activity-<vendor>.example.toml`), against a fake that
//! follows the vendor's public docs, with the service running and the sandbox delivering 500
//! calls and texts with lost, duplicated and reordered deliveries. Every activity the example
//! logs lands exactly once, on the right contact, with its late summary written into the same
//! CRM object.

mod common;
mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use common::unlimited_sandbox;
use quo_sync::config::Config;
use quo_sync::sandbox::SandboxHandle;
use quo_sync::sandbox::activity::{ActivityFaults, CallOutcome, CallSpec, Direction, MessageSpec};
use serde_json::{Value, json};
use support::activity::{number_of, point_at, receiver, set, text, until, vendor_example};
use support::token_desk::TokenDesk;
use tokio_util::sync::CancellationToken;

const CONTACTS: u32 = 20;
const ACTIVITIES: u32 = 500;

/// What a vendor's object says: its activity id, contact, and text.
struct Reading {
    activity: fn(&Value) -> String,
    record: fn(&Value) -> String,
    text: fn(&Value) -> String,
}

/// Runs the service on `table` against `sandbox` while 500 activities happen; returns the
/// activities the sandbox made, by id, with the record each belongs to.
async fn run_scenario(
    mut table: toml::Table,
    sandbox: &SandboxHandle,
    dir: &Path,
    texts_logged: bool,
) -> (HashMap<String, String>, HashSet<String>) {
    let (port, key) = receiver(sandbox).await;
    point_at(&mut table, sandbox, &dir.join("ledger.db"), port, &key);
    let rest_rate = toml::Value::Integer(500);
    set(
        &mut table,
        &["source", "rest", "requests_per_second"],
        rest_rate,
    );
    set(&mut table, &["activity", "poll_interval"], text("400ms"));
    set(&mut table, &["activity", "enrichment_window"], text("1h"));
    set(&mut table, &["activity", "backfill"], text("0s"));
    set(&mut table, &["log", "level"], text("warn"));
    let path = dir.join("quo-sync.toml");
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    let config = Config::load_with_env(&path, std::iter::empty()).expect("the examples load");
    let cancel = CancellationToken::new();
    let ctx = quo_sync::app::build_context(&config, "run", cancel.clone())
        .await
        .unwrap();
    let report = quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply)
        .await
        .unwrap();
    assert_eq!(report.counts.created, u64::from(CONTACTS), "{report:?}");
    let service = {
        let ctx = ctx.clone();
        tokio::spawn(async move { quo_sync::app::run_service(&ctx, &config, None).await })
    };
    sandbox.set_activity_enrichment_delay(Duration::from_millis(10), Duration::from_millis(400));
    sandbox.set_activity_faults(ActivityFaults {
        drop_ratio: 0.2,
        duplicate_ratio: 0.2,
        reorder_batch: 5,
        seed: 11,
    });
    // The service listens and its poller has taken its first marks (activity from now on).
    until("the service listening", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    until(
        "the poller's first marks",
        Duration::from_secs(10),
        || async {
            let mark = |m| ctx.ledger.meta_time(m);
            mark(quo_sync::activity::poller::CALLS_MARK)
                .await
                .is_ok_and(|t| t.is_some())
                && (!texts_logged
                    || mark(quo_sync::activity::poller::MESSAGES_MARK)
                        .await
                        .is_ok_and(|t| t.is_some()))
        },
    )
    .await;
    let mut owner = HashMap::new();
    let mut calls = HashSet::new();
    for i in 0..ACTIVITIES {
        let n = i % CONTACTS + 1;
        let direction = if i % 2 == 0 {
            Direction::Incoming
        } else {
            Direction::Outgoing
        };
        let user_id = Some(["USada0000001", "USgrace00002"][(i % 2) as usize].to_string());
        let id = if i % 4 != 3 {
            let outcome = match i % 8 {
                2 | 5 => CallOutcome::Missed,
                6 => CallOutcome::Voicemail,
                _ => CallOutcome::Answered,
            };
            let id = sandbox.activity_call(CallSpec {
                number: number_of(n),
                direction,
                outcome,
                duration: if outcome == CallOutcome::Missed {
                    0
                } else {
                    20 + u64::from(n)
                },
                user_id,
                recorded: true,
                created_at: None,
            });
            calls.insert(id.clone());
            id
        } else {
            sandbox.activity_message(MessageSpec {
                number: number_of(n),
                direction,
                text: format!("text {i}"),
                user_id,
                created_at: None,
            })
        };
        owner.insert(id, n.to_string());
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    until("enrichments landed", Duration::from_secs(30), || async {
        sandbox.activity_pending() == 0
    })
    .await;
    sandbox.set_activity_faults(ActivityFaults::default());
    let expected = if texts_logged {
        owner.len()
    } else {
        calls.len()
    } as i64;
    until("every logged activity written and final", Duration::from_secs(120), || async {
        let open = ctx
            .ledger
            .debug_query_i64("SELECT COUNT(*) FROM activities WHERE state IN ('pending', 'writing') OR (final = 0 AND state <> 'filtered')", &[])
            .await
            .unwrap();
        let written = ctx.ledger.debug_query_i64("SELECT COUNT(*) FROM activities WHERE state = 'written'", &[]).await.unwrap();
        written == expected && open == 0
    })
    .await;
    assert!(sandbox.activity_fault_counters().dropped > 0);
    cancel.cancel();
    service.await.unwrap().unwrap();
    (owner, calls)
}

/// Every activity the example logs is one object, on the right contact, summary in place.
fn check(
    objects: &[Value],
    reading: &Reading,
    owner: &HashMap<String, String>,
    expected: &HashSet<String>,
    record_of: impl Fn(&str) -> String,
    calls: &HashSet<String>,
    sandbox: &SandboxHandle,
) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for object in objects {
        *seen.entry((reading.activity)(object)).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "activities written twice: {twice:?}");
    let written: HashSet<String> = seen.keys().cloned().collect();
    assert_eq!(
        &written, expected,
        "exactly the activities the example logs"
    );
    let answered: HashSet<String> = sandbox
        .activity_calls()
        .into_iter()
        .filter(|c| c["status"] == "completed")
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    for object in objects {
        let id = (reading.activity)(object);
        assert_eq!(
            (reading.record)(object),
            record_of(&owner[&id]),
            "{id} on its contact"
        );
        if answered.contains(&id) && calls.contains(&id) {
            assert!(
                (reading.text)(object).contains("renewal"),
                "{id}: the late summary is in the same object: {object}"
            );
        }
    }
}

fn people(n: u32) -> (String, String) {
    (format!("Ada{n}"), number_of(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_tasks_land_once_with_whoid_subtype_duration_and_owner() {
    let sandbox = unlimited_sandbox().await;
    let contacts: Vec<Value> = (1..=CONTACTS)
        .map(|n| {
            let (first, phone) = people(n);
            json!({"Id": format!("0035g00000SF{n:04}AAA"), "FirstName": first, "LastName": "Force", "Email": format!("a{n}@example.com"),
                   "Phone": phone, "MobilePhone": null, "Title": "Buyer", "Account": {"Name": "Acme"}})
        })
        .collect();
    let desk = TokenDesk::new(
        "3MVG9-test",
        "sf-secret",
        "sf-refresh",
        Duration::from_secs(3600),
    );
    let crm = support::salesforce::FakeSalesforce::start(contacts, desk, 50).await;
    crm.add_user("ada@quo.test", "0055g00000ADAAAA");
    let dir = tempfile::tempdir().unwrap();
    let table = vendor_example(
        dir.path(),
        "salesforce",
        &[
            ("https://login.salesforce.com", crm.base_url.clone()),
            ("3MVG9-your-connected-app-consumer-key", "3MVG9-test".into()),
        ],
        &[
            ("client_secret", "sf-secret"),
            ("refresh_token", "sf-refresh"),
        ],
    );
    let (owner, calls) = run_scenario(table, &sandbox, dir.path(), true).await;
    let tasks = crm.tasks();
    let reading = Reading {
        activity: |t| t["Quo_Activity_Id__c"].as_str().unwrap().to_string(),
        record: |t| t["WhoId"].as_str().unwrap().to_string(),
        text: |t| t["Description"].as_str().unwrap_or_default().to_string(),
    };
    let all: HashSet<String> = owner.keys().cloned().collect();
    check(
        &tasks,
        &reading,
        &owner,
        &all,
        |n| format!("0035g00000SF{:04}AAA", n.parse::<u32>().unwrap()),
        &calls,
        &sandbox,
    );
    for t in &tasks {
        let id = (reading.activity)(t);
        assert_eq!(
            t["TaskSubtype"],
            if calls.contains(&id) { "Call" } else { "Task" }
        );
        assert!(t["CallDurationInSeconds"].is_u64(), "{t}");
    }
    let by_ada = tasks
        .iter()
        .filter(|t| t["OwnerId"] == "0055g00000ADAAAA")
        .count();
    assert!(
        by_ada >= 200,
        "Ada's activities carry her Salesforce user as owner: {by_ada}"
    );
    let (creates, updates, _) = crm.task_calls();
    assert!(
        updates > 0,
        "late summaries updated Tasks in place ({creates} creates)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zoho_calls_land_once_related_to_the_contact() {
    let sandbox = unlimited_sandbox().await;
    let contacts: Vec<Value> = (1..=CONTACTS)
        .map(|n| {
            let (first, phone) = people(n);
            json!({"id": format!("3477061000000{n:06}"), "First_Name": first, "Last_Name": "Oho", "Email": format!("z{n}@example.com"),
                   "Phone": phone, "Mobile": null, "Title": "Buyer", "Account_Name": {"name": "Zylker", "id": "1"},
                   "Created_Time": "2025-01-01T10:00:00+05:30"})
        })
        .collect();
    let desk = TokenDesk::new(
        "1000.TEST",
        "zoho-secret",
        "zoho-refresh",
        Duration::from_secs(3600),
    );
    let crm = support::zoho::FakeZoho::start(contacts, desk).await;
    let dir = tempfile::tempdir().unwrap();
    let table = vendor_example(
        dir.path(),
        "zoho",
        &[
            ("https://accounts.zoho.com", crm.base_url.clone()),
            ("https://www.zohoapis.com", crm.base_url.clone()),
            ("1000.YOUR-SELF-CLIENT-ID", "1000.TEST".into()),
        ],
        &[
            ("client_secret", "zoho-secret"),
            ("refresh_token", "zoho-refresh"),
        ],
    );
    let (owner, calls) = run_scenario(table, &sandbox, dir.path(), true).await;
    let reading = Reading {
        activity: |c| c["Quo_Activity_Id"].as_str().unwrap().to_string(),
        record: |c| c["Who_Id"]["id"].as_str().unwrap().to_string(),
        text: |c| c["Description"].as_str().unwrap_or_default().to_string(),
    };
    let all: HashSet<String> = owner.keys().cloned().collect();
    check(
        &crm.calls(),
        &reading,
        &owner,
        &all,
        |n| format!("3477061000000{:06}", n.parse::<u32>().unwrap()),
        &calls,
        &sandbox,
    );
    assert!(crm.calls().iter().any(|c| c["Call_Type"] == "Missed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_calls_land_once_associated_with_the_contact() {
    let sandbox = unlimited_sandbox().await;
    let contacts: Vec<(String, Value)> = (1..=CONTACTS)
        .map(|n| {
            let (first, phone) = people(n);
            (format!("{}", 1000 + n), json!({"firstname": first, "lastname": "Spot", "email": format!("h{n}@example.com"), "phone": phone}))
        })
        .collect();
    let crm = support::hubspot::start(contacts).await;
    let dir = tempfile::tempdir().unwrap();
    let table = vendor_example(
        dir.path(),
        "hubspot",
        &[("https://api.hubapi.com", crm.base_url.clone())],
        &[("token", support::hubspot::TOKEN)],
    );
    let (owner, calls) = run_scenario(table, &sandbox, dir.path(), false).await;
    let reading = Reading {
        activity: |c| {
            c["properties"]["quo_activity_id"]
                .as_str()
                .unwrap()
                .to_string()
        },
        record: |c| {
            c["associations"][0]["to"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        },
        text: |c| {
            c["properties"]["hs_call_body"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        },
    };
    check(
        &crm.objects(),
        &reading,
        &owner,
        &calls,
        |n| format!("{}", 1000 + n.parse::<u32>().unwrap()),
        &calls,
        &sandbox,
    );
    assert!(
        crm.objects()
            .iter()
            .all(|c| c["properties"]["hs_call_duration"].is_u64())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipedrive_activities_land_once_with_the_person_as_participant() {
    let sandbox = unlimited_sandbox().await;
    let persons: Vec<Value> = (1..=CONTACTS)
        .map(|n| {
            let (first, phone) = people(n);
            json!({"id": n, "first_name": first, "last_name": "Drive", "org_name": "Acme",
                   "email": [{"label": "work", "value": format!("p{n}@example.com"), "primary": true}],
                   "phone": [{"label": "mobile", "value": phone, "primary": true}],
                   "update_time": "2026-01-01 00:00:00"})
        })
        .collect();
    let crm = support::pipedrive::start(persons).await;
    let dir = tempfile::tempdir().unwrap();
    let table = vendor_example(
        dir.path(),
        "pipedrive",
        &[("https://yourcompany.pipedrive.com", crm.base_url.clone())],
        &[("token", support::pipedrive::TOKEN)],
    );
    let (owner, calls) = run_scenario(table, &sandbox, dir.path(), true).await;
    let reading = Reading {
        activity: |a| {
            let note = a["note"].as_str().unwrap_or_default();
            note.split('(')
                .nth(1)
                .and_then(|r| r.split(')').next())
                .unwrap_or_default()
                .to_string()
        },
        record: |a| a["participants"][0]["person_id"].to_string(),
        text: |a| a["note"].as_str().unwrap_or_default().to_string(),
    };
    let all: HashSet<String> = owner.keys().cloned().collect();
    check(
        &crm.objects(),
        &reading,
        &owner,
        &all,
        |n| n.to_string(),
        &calls,
        &sandbox,
    );
}
