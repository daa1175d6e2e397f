//! Day one at scale: a workspace of 10,000 contacts and a CRM of 5,000 records, 3,000 of whom
//! are already in Quo (2,000 by phone, 1,000 by email only, each with a note typed in the app).
//! Of the other records, 10 match two contacts each (20 ambiguous contacts: a person entered
//! twice), 50 match a contact of another integration (Zapier, not in `sync.adopt_sources`) and
//! 10 a native integration's (HubSpot); 1,930 are new. The remaining 6,920 contacts are people
//! the CRM does not have.
//!
//! `plan` reports what the first cycle then does: 1,930 created, 3,000 adopted, 70 held, with
//! no write. The cycle sends one custom-field read, 200 listing pages and 200 more for the
//! listing that confirms the first (Quo's list lags: `sync::confirm`), one PATCH per adoption
//! and one POST per create, leaves every held contact as it was and every note in
//! place, and the second cycle sends no write.

mod common;

use std::collections::HashMap;

use common::{HEADER, TestApp, custom_value};
use quo_sync::sandbox::SandboxConfig;
use serde_json::Value;

const RECORDS: usize = 5_000;
const CONTACTS: usize = 10_000;
/// Records 0..2000 exist by phone, 2000..3000 by email.
const BY_PHONE: usize = 2_000;
const EXISTING: usize = 3_000;
/// Records 3000..3010 match two contacts each; 3010..3060 a Zapier contact; 3060..3070 a HubSpot
/// one.
const AMBIGUOUS: std::ops::Range<usize> = 3_000..3_010;
const FOREIGN: std::ops::Range<usize> = 3_010..3_060;
const NATIVE: std::ops::Range<usize> = 3_060..3_070;

fn phone(n: usize) -> String {
    format!("+1415{:07}", 2_000_000 + n)
}

fn email(n: usize) -> String {
    format!("person{n}@example.com")
}

fn crm_csv() -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for n in 0..RECORDS {
        out.push_str(&format!(
            "r-{n},First{n},Last{n},Acme {n},Buyer,{},,{},,{},yes,2026-03-01,vip,https://e{n}.example.com,2026-01-01T00:00:00Z\n",
            email(n),
            phone(n),
            n % 100
        ));
    }
    out
}

/// The workspace, as a seed CSV.
fn workspace_csv() -> String {
    let mut lines: Vec<String> = Vec::with_capacity(CONTACTS);
    let mut push = |line: String| lines.push(line);
    for n in 0..BY_PHONE {
        push(format!("App{n},Typed,,{},typed in the app {n},", phone(n)));
    }
    for n in BY_PHONE..EXISTING {
        push(format!(
            "App{n},Typed,{},,typed in the app {n},",
            email(n).to_uppercase()
        ));
    }
    for n in AMBIGUOUS {
        push(format!("Twice{n},ByPhone,,{},,", phone(n)));
        push(format!("Twice{n},ByEmail,{},,,", email(n)));
    }
    for n in FOREIGN {
        push(format!("Zap{n},Zapped,,{},,zapier", phone(n)));
    }
    for n in NATIVE {
        push(format!("Hub{n},Spotted,{},,,hubspot", email(n)));
    }
    let matched = lines.len();
    for i in matched..CONTACTS {
        lines.push(format!("Stranger{i},Else,stranger{i}@elsewhere.example,,,"));
    }
    format!(
        "first_name,last_name,email,phone,notes,source\n{}\n",
        lines.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_contacts_five_thousand_records() {
    let app = TestApp::spawn_with(&crm_csv(), SandboxConfig::default(), "").await;
    assert_eq!(
        app.sandbox.seed_existing_csv(&workspace_csv()).unwrap(),
        CONTACTS
    );
    let before: HashMap<String, Value> = app
        .sandbox
        .contacts()
        .into_iter()
        .map(|c| (c["id"].as_str().unwrap().to_string(), c))
        .collect();

    // The plan first: the same counts, and nothing written anywhere.
    let plan = app.plan().await;
    let c = &plan.counts;
    assert_eq!(
        (c.created, c.adopted, c.held, c.updated),
        (1_930, 3_000, 70, 0),
        "{c:?}"
    );
    assert_eq!(
        quo_sync::sync::plan::summary_line(&plan.operations),
        "plan: 1930 create, 3000 adopt, 70 held (5000 records)"
    );
    assert_eq!(
        app.sandbox.stats().writes_total(),
        0,
        "a plan writes nothing"
    );
    assert_eq!(app.ledger().record_count().await.unwrap(), 0);

    app.sandbox.reset_stats();
    let report = app.cycle().await;
    let c = &report.counts;
    assert_eq!((c.created, c.adopted, c.held), (1_930, 3_000, 70), "{c:?}");
    let pages = CONTACTS as u64 / 50;
    assert_eq!(
        c.requests,
        1 + 2 * pages + 3_000 + 1_930,
        "one custom-field read, the listing and the one that confirms it, one PATCH per adoption, one POST per create"
    );
    assert_eq!(c.listing_pages, 2 * pages);
    assert_eq!(
        quo_sync::ops::summary::minimum_requests(&report),
        c.requests,
        "the summary's minimum counts the listing and the adoptions"
    );
    let writes = app.sandbox.stats().writes;
    assert_eq!(
        (writes.creates, writes.updates, writes.deletes),
        (1_930, 3_000, 0)
    );

    // Quo: every record has exactly one contact; adopted ones are the contacts people made.
    let after: Vec<Value> = app.sandbox.contacts();
    assert_eq!(after.len(), CONTACTS + 1_930);
    let mut by_external_id: HashMap<String, Vec<&Value>> = HashMap::new();
    for contact in &after {
        if let Some(id) = contact["externalId"].as_str() {
            by_external_id
                .entry(id.to_string())
                .or_default()
                .push(contact);
        }
    }
    for n in 0..EXISTING {
        let mine = &by_external_id[&format!("r-{n}")];
        assert_eq!(mine.len(), 1, "r-{n}");
        let contact = mine[0];
        assert!(
            before.contains_key(contact["id"].as_str().unwrap()),
            "r-{n} adopted, not created"
        );
        assert_eq!(contact["source"], "quo-sync");
        assert_eq!(contact["defaultFields"]["firstName"], format!("First{n}"));
        assert_eq!(
            custom_value(contact, "notes"),
            format!("typed in the app {n}"),
            "the note typed on r-{n}'s contact survives"
        );
    }
    for n in 3_070..RECORDS {
        assert_eq!(
            by_external_id[&format!("r-{n}")].len(),
            1,
            "r-{n} created once"
        );
    }
    for n in AMBIGUOUS.chain(FOREIGN).chain(NATIVE) {
        assert!(
            !by_external_id.contains_key(&format!("r-{n}")),
            "r-{n} is held"
        );
        let held = app
            .ledger()
            .quarantined_one(&format!("r-{n}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(held.stage, "match");
    }
    // Held contacts (and the strangers) are exactly as they were.
    let unchanged = after
        .iter()
        .filter(|c| c["source"] != "quo-sync")
        .inspect(|c| assert_eq!(&before[c["id"].as_str().unwrap()], *c))
        .count();
    assert_eq!(unchanged, CONTACTS - EXISTING);

    // The ledger links every adopted and created record.
    let states = app.ledger().count_by_state().await.unwrap();
    assert_eq!(states, vec![("synced".to_string(), 4_930)]);
    assert_eq!(app.ledger().held_count().await.unwrap(), 70);

    app.sandbox.reset_stats();
    let second = app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0, "{:?}", second.counts);
    assert_eq!(second.counts.held, 70);
}
