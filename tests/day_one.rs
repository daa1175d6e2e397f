//! Day one in a real workspace: the people already in Quo are adopted, not created twice; what
//! cannot be decided without guessing is held; `plan` shows it all before it happens.

mod common;

use common::{TestApp, csv, custom_value, items, row};
use quo_sync::sandbox::SandboxConfig;
use serde_json::json;

/// Rows 1..=6 of the common CSV; phones are (415) 555-1001.. and emails first<n>@example.com.
fn crm() -> String {
    csv(&(1..=6)
        .map(|n| row(&format!("c-{n}"), n))
        .collect::<Vec<_>>())
}

/// A workspace where c-1 exists by phone (with a note), c-2 by email, c-3 twice (a person
/// entered twice), c-4 as a Zapier contact and c-5 as a HubSpot one; c-6 is new.
const EXISTING: &str = "first_name,last_name,email,phone,notes,source\n\
Bob,Phone-Match,,(415) 555-1001,met at the fair,\n\
Gina,Email-Match,FIRST2@example.com,,,\n\
Kay,Twice,,(415) 555-1003,,\n\
Kay,Again,first3@example.com,,,\n\
Zed,Zapped,,(415) 555-1004,,zapier\n\
Hub,Spotted,first5@example.com,,,hubspot\n\
Unrelated,Person,someone@else.example,,,\n";

#[tokio::test]
async fn day_one_adopts_the_people_already_in_quo_and_holds_what_it_cannot_decide() {
    let app = TestApp::spawn_with(&crm(), SandboxConfig::default(), "").await;
    app.sandbox.seed_existing_csv(EXISTING).unwrap();
    let before = app.sandbox.contacts();
    let report = app.cycle().await;
    let c = &report.counts;
    assert_eq!((c.created, c.adopted, c.held), (1, 2, 3), "{c:?}");
    let after = app.sandbox.contacts();
    assert_eq!(after.len(), before.len() + 1, "only c-6 is new");

    let bob = app.contact_for("c-1");
    assert_eq!(bob["source"], "quo-sync");
    assert_eq!(
        bob["defaultFields"]["firstName"], "First1",
        "the CRM's values"
    );
    assert_eq!(
        custom_value(&bob, "notes"),
        "met at the fair",
        "the note survives"
    );
    let gina = app.contact_for("c-2");
    assert_eq!(gina["defaultFields"]["lastName"], "Last2");
    assert!(
        items(&gina, "emails").contains(&("email".into(), "first2@example.com".into())),
        "{gina:#?}"
    );
    for held in ["c-3", "c-4", "c-5"] {
        assert_eq!(
            app.sandbox.count_by_external_id(held),
            0,
            "{held} made nothing"
        );
        let entry = app.ledger().quarantined_one(held).await.unwrap().unwrap();
        assert_eq!(entry.stage, "match");
        assert!(entry.value.is_some(), "{entry:?}");
    }
    // Held contacts are untouched.
    for contact in &before {
        let now = after.iter().find(|c| c["id"] == contact["id"]).unwrap();
        if now["source"] != "quo-sync" {
            assert_eq!(now, contact, "untouched");
        }
    }
    let conflicts = app.ledger().conflicts(100).await.unwrap();
    assert!(
        conflicts
            .iter()
            .any(|x| x.external_id == "c-1" && x.policy == "adopted" && x.field == "firstName"),
        "{conflicts:#?}"
    );
    // The operator sees them: `status` counts them, `quarantine list` names each with its reason.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
            .args(args)
            .arg("--config")
            .arg(&app.config_path)
            .env("QUO_SYNC__LOG__LEVEL", "warn")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let status: serde_json::Value = serde_json::from_str(&cli(&["status", "--json"])).unwrap();
    assert_eq!(status["held"], 3, "{status:#}");
    assert!(cli(&["status"]).contains("held          3 "));
    let listed = cli(&["quarantine", "list"]);
    for held in ["c-3", "c-4", "c-5"] {
        assert!(
            listed
                .lines()
                .any(|l| l.contains(held) && l.contains("quo-sync link")),
            "{held}: {listed}"
        );
    }

    app.sandbox.reset_stats();
    let second = app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0, "{:?}", second.counts);
    assert_eq!(
        second.counts.held, 3,
        "held records are evaluated every cycle"
    );
}

/// `plan` on the same workspace: the same counts, each record's action with the fields an
/// adoption changes and the contacts a hold names, and no write anywhere.
#[tokio::test]
async fn plan_shows_day_one_before_it_happens_and_writes_nothing() {
    let app = TestApp::spawn_with(&crm(), SandboxConfig::default(), "").await;
    app.sandbox.seed_existing_csv(EXISTING).unwrap();
    let before = app.sandbox.contacts();
    let plans_before = plan_ledgers();
    let plan = app.plan().await;
    let c = &plan.counts;
    assert_eq!((c.created, c.adopted, c.held), (1, 2, 3), "{c:?}");
    let op = |id: &str| {
        plan.operations
            .iter()
            .find(|o| o.external_id == id)
            .unwrap_or_else(|| panic!("{id} in {:#?}", plan.operations))
    };
    let bob = before
        .iter()
        .find(|c| c["defaultFields"]["firstName"] == "Bob")
        .unwrap();
    let adopt = op("c-1");
    assert_eq!(adopt.action.as_str(), "adopt");
    assert_eq!(adopt.quo_id.as_deref(), bob["id"].as_str());
    for field in ["firstName", "lastName", "source", "externalId"] {
        assert!(
            adopt.fields.iter().any(|f| f == field),
            "{field}: {adopt:?}"
        );
    }
    {
        assert!(
            !adopt.fields.iter().any(|f| f == "phoneNumbers"),
            "the phone it matched on is the same: {adopt:?}"
        );
    }
    let twice: Vec<&str> = before
        .iter()
        .filter(|c| c["defaultFields"]["firstName"] == "Kay")
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let held = op("c-3");
    assert_eq!(held.action.as_str(), "held");
    let reason = held.reason.as_deref().unwrap();
    assert!(
        twice.iter().all(|id| reason.contains(id)),
        "the reason names both contacts: {reason}"
    );
    assert!(op("c-5").reason.as_deref().unwrap().contains("hubspot"));
    assert!(op("c-4").reason.as_deref().unwrap().contains("zapier"));
    assert_eq!(op("c-6").action.as_str(), "create");
    let text = quo_sync::sync::plan::render_table(&plan.operations, false);
    assert!(
        text.starts_with("plan: 1 create, 2 adopt, 3 held (6 records)"),
        "{text}"
    );
    let bob_id = bob["id"].as_str().unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("adopt ")
            && l.contains(" c-1 ")
            && l.contains(&format!(" {bob_id} "))
            && l.contains("externalId")),
        "{text}"
    );

    assert_eq!(
        app.sandbox.stats().writes_total(),
        0,
        "a plan sends no write"
    );
    assert_eq!(app.sandbox.contacts(), before);
    assert_eq!(app.ledger().record_count().await.unwrap(), 0);
    assert_eq!(app.ledger().quarantined_count().await.unwrap(), 0);
    assert_eq!(
        app.ledger().workspace_count().await.unwrap(),
        0,
        "the real ledger holds no index"
    );
    // The plan listed into a throwaway ledger, gone with it. The temp dir is shared: a plan
    // another test or process runs at the same time has its own there until it ends, so what
    // is new since this plan started must be gone soon; this plan's own, once left, stays.
    let new: Vec<_> = plan_ledgers().difference(&plans_before).cloned().collect();
    common::poll("the throwaway plan ledgers are removed", async || {
        new.iter().all(|path| !path.exists())
    })
    .await;

    let applied = app.cycle().await;
    assert_eq!(
        (
            applied.counts.created,
            applied.counts.adopted,
            applied.counts.held
        ),
        (c.created, c.adopted, c.held),
        "the cycle does what the plan said"
    );
}

/// The throwaway ledgers of plans (`quo-sync-plan-*`) in the temp dir now.
fn plan_ledgers() -> std::collections::BTreeSet<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("quo-sync-plan-")
        })
        .map(|e| e.path())
        .collect()
}

/// `quo-sync link` answers held records: a chosen contact is adopted, `--create` makes a new
/// one, a native integration's contact is refused, and `--undo` gives an adopted contact back
/// (its source, externalId and the values the adoption replaced) and holds the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_resolves_held_records_and_undo_gives_a_contact_back() {
    let app = TestApp::spawn_with(&crm(), SandboxConfig::default(), "").await;
    app.sandbox.seed_existing_csv(EXISTING).unwrap();
    app.cycle().await;
    let by_name = |first: &str, last: &str| {
        app.sandbox
            .contacts()
            .into_iter()
            .find(|c| {
                c["defaultFields"]["firstName"] == first && c["defaultFields"]["lastName"] == last
            })
            .unwrap_or_else(|| panic!("{first} {last}"))
    };
    let link = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
            .arg("link")
            .args(args)
            .arg("--config")
            .arg(&app.config_path)
            .env("QUO_SYNC__LOG__LEVEL", "warn")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    // A person entered twice: the operator picks one; the other stays as it was.
    let kay = by_name("Kay", "Twice");
    let other = by_name("Kay", "Again");
    let (code, out) = link(&["c-3", kay["id"].as_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("c-3: adopted contact"), "{out}");
    assert_eq!(app.quo_id("c-3"), kay["id"].as_str().unwrap());
    assert_eq!(
        by_name("Kay", "Again"),
        other,
        "the other contact is untouched"
    );
    assert!(app.ledger().quarantined_one("c-3").await.unwrap().is_none());

    // A native integration's contact cannot be adopted; --create gives the record its own.
    let hub = by_name("Hub", "Spotted");
    let (code, out) = link(&["c-5", hub["id"].as_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("read-only"), "{out}");
    let (code, out) = link(&["c-5", "--create"]);
    assert_eq!(code, Some(0), "{out}");
    assert_ne!(app.quo_id("c-5"), hub["id"].as_str().unwrap());
    assert_eq!(by_name("Hub", "Spotted"), hub);

    // Undo: Bob gets his source, externalId and first name back; his note stays; c-1 is held.
    let bob_id = app.quo_id("c-1");
    let (code, out) = link(&["c-1", "--undo"]);
    assert_eq!(code, Some(0), "{out}");
    let bob = app.sandbox.contact(&bob_id).unwrap();
    assert_eq!(bob["source"], serde_json::Value::Null);
    assert_eq!(bob["externalId"], serde_json::Value::Null);
    assert_eq!(bob["defaultFields"]["firstName"], "Bob");
    assert_eq!(bob["defaultFields"]["lastName"], "Phone-Match");
    assert_eq!(custom_value(&bob, "notes"), "met at the fair");
    let report = app.cycle().await;
    assert_eq!(
        report.counts.adopted, 0,
        "an undone link is not adopted again"
    );
    let held = app.ledger().quarantined_one("c-1").await.unwrap().unwrap();
    assert!(held.reason.contains("held by an operator"), "{held:?}");
    assert_eq!(app.sandbox.count_by_external_id("c-1"), 0);
    // And the operator's next answer applies.
    let (code, out) = link(&["c-1", &bob_id]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(app.quo_id("c-1"), bob_id);
    let _ = json!({});
}
