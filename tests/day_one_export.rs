//! Contacts made in the Quo app reach the CRM (`reverse.create_in_crm`): a CSV row or a REST
//! record, once each, under lost answers and a SIGKILL between the CRM create and the adoption
//! PATCH; contacts that existed before the first cycle only with `--export-existing`.

mod common;
mod support;

use std::process::Stdio;
use std::time::Duration;

use common::{TestApp, csv, items, row};
use quo_sync::sandbox::{Fault, SandboxConfig};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

const EXPORT: &str = "[reverse]\ncreate_in_crm = true\npoll_interval = \"1ms\"\n";

/// A contact as a salesperson makes it in the app after a call: a phone under a label the
/// mapping does not write.
fn made_in_app(app: &TestApp, first: &str, phone: &str) -> Value {
    app.sandbox.app_create(
        json!({"defaultFields": {"firstName": first, "lastName": "Caller", "company": "Walk-in",
               "phoneNumbers": [{"name": "main", "value": phone}]},
               "customFields": [{"key": "notes", "value": "called about pricing"}]}),
        "",
    )
}

/// Returns once this machine's clock has passed the `createdAt` of `contact` (to its precision).
async fn wait_past(contact: &Value) {
    let stamp = contact["createdAt"].as_str().expect("createdAt");
    let made = chrono::DateTime::parse_from_rfc3339(stamp).expect("a time");
    let whole = !stamp.contains('.');
    common::poll("the clock past the contact's createdAt", async || {
        let now = chrono::Utc::now();
        let made = made.to_utc();
        if whole {
            now.timestamp() > made.timestamp()
        } else {
            now.timestamp_millis() > made.timestamp_millis()
        }
    })
    .await;
}

/// The CSV lines whose id is `id`.
fn rows_of(app: &TestApp, id: &str) -> Vec<String> {
    app.csv_text()
        .lines()
        .filter(|l| l.starts_with(&format!("{id},")))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn contacts_made_in_the_app_become_csv_rows_once_each() {
    let app = TestApp::spawn_with(&csv(&[row("c-1", 1)]), SandboxConfig::default(), EXPORT).await;
    let early = made_in_app(&app, "Early", "+14155559000");
    // Made before quo-sync starts: a stamp in the start's own millisecond would count as new.
    wait_past(&early).await;
    app.cycle().await; // the first cycle: what exists now existed before quo-sync
    assert!(rows_of(&app, &format!("quo-{}", early["id"].as_str().unwrap())).is_empty());

    let sally = made_in_app(&app, "Sally", "+14155559001");
    // A contact with c-1's phone matches a CRM record; one without phone or email has no way
    // to match anything: neither is exported.
    let twin_of_c1 = app.sandbox.app_create(
        json!({"defaultFields": {"firstName": "Dup", "phoneNumbers": [{"name": "main", "value": "+14155551001"}]}}),
        "",
    );
    let bare = app
        .sandbox
        .app_create(json!({"defaultFields": {"firstName": "Bare"}}), "");
    let report = app.cycle().await;
    assert_eq!(report.counts.exported, 1, "{:?}", report.counts);
    let sally_id = sally["id"].as_str().unwrap();
    let new_id = format!("quo-{sally_id}");
    let rows = rows_of(&app, &new_id);
    assert_eq!(rows.len(), 1, "{}", app.csv_text());
    assert!(
        rows[0].starts_with(&format!("{new_id},Sally,Caller,Walk-in,,,,+14155559001,")),
        "{}",
        rows[0]
    );
    assert!(app.csv_text().ends_with('\n'));
    // Adopted: our source, the new id, the phone under the mapping's label, the note kept.
    let adopted = app.sandbox.contact(sally_id).unwrap();
    assert_eq!(adopted["source"], "quo-sync");
    assert_eq!(adopted["externalId"], new_id.as_str());
    assert_eq!(
        items(&adopted, "phoneNumbers"),
        vec![("phone".to_string(), "+14155559001".to_string())]
    );
    assert_eq!(
        common::custom_value(&adopted, "notes"),
        "called about pricing"
    );
    assert_eq!(app.row(&new_id).await.quo_id.unwrap().0, sally_id);
    for other in [&twin_of_c1, &bare, &early] {
        let id = other["id"].as_str().unwrap();
        assert!(rows_of(&app, &format!("quo-{id}")).is_empty());
        assert_eq!(app.sandbox.contact(id).unwrap()["source"], Value::Null);
    }

    // Nothing left to do: no write on either side.
    let before = app.csv_text();
    app.sandbox.reset_stats();
    app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0);
    assert_eq!(app.csv_text(), before, "not appended twice");

    // A later CRM edit of the row is one PATCH.
    app.write_csv(&before.replace(",Walk-in,", ",Signed Up Co,"));
    let report = app.cycle().await;
    let writes = app.sandbox.stats().writes;
    assert_eq!(
        (writes.creates, writes.updates),
        (0, 1),
        "{:?}",
        report.counts
    );
    assert_eq!(
        app.sandbox.contact(sally_id).unwrap()["defaultFields"]["company"],
        "Signed Up Co"
    );

    // --export-existing brings the contacts made before the first cycle too.
    let mut ctx = app.ctx.clone();
    ctx.settings.day_one.export_existing = true;
    let report = quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply)
        .await
        .unwrap();
    assert_eq!(report.counts.exported, 1, "{:?}", report.counts);
    assert_eq!(
        rows_of(&app, &format!("quo-{}", early["id"].as_str().unwrap())).len(),
        1
    );
    assert!(rows_of(&app, &format!("quo-{}", bare["id"].as_str().unwrap())).is_empty());
}

/// `plan` shows the contact on its way to the CRM, and writes nothing.
#[tokio::test]
async fn plan_shows_a_contact_on_its_way_to_the_crm() {
    let app = TestApp::spawn_with(&csv(&[row("c-1", 1)]), SandboxConfig::default(), EXPORT).await;
    app.cycle().await;
    let sally = made_in_app(&app, "Sally", "+14155559001");
    app.cycle().await; // indexes Sally (the scan), exports her
    let second = made_in_app(&app, "Sam", "+14155559002");
    // A dry run does not scan: a webhook or the service's scanner would have indexed Sam.
    quo_sync::reverse::intake::index_contact(
        app.ledger(),
        &app.ctx.client,
        second["id"].as_str().unwrap(),
    )
    .await
    .unwrap();
    let csv_before = app.csv_text();
    app.sandbox.reset_stats();
    let plan = app.plan().await;
    assert_eq!(plan.counts.exported, 1, "{:?}", plan.operations);
    let op = plan
        .operations
        .iter()
        .find(|o| o.action.as_str() == "create_in_crm")
        .unwrap();
    assert_eq!(op.quo_id.as_deref(), second["id"].as_str());
    assert_eq!(
        op.external_id,
        format!("quo-{}", second["id"].as_str().unwrap())
    );
    assert_eq!(app.sandbox.stats().writes_total(), 0);
    assert_eq!(app.csv_text(), csv_before);
    let _ = sally;
}

/// The adoption PATCH after the CRM create loses its answer: the row is there once, the
/// contact is adopted once, and the next cycle writes nothing.
#[tokio::test]
async fn a_lost_answer_after_the_crm_create_makes_nothing_twice() {
    let app = TestApp::spawn_with(&csv(&[row("c-1", 1)]), SandboxConfig::default(), EXPORT).await;
    app.cycle().await;
    let sally = made_in_app(&app, "Sally", "+14155559001");
    app.sandbox.inject(Fault::DropAfterWrite { count: 1 });
    app.cycle().await;
    assert_eq!(app.sandbox.fault_counters().dropped_after_write, 1);
    let id = sally["id"].as_str().unwrap();
    let new_id = format!("quo-{id}");
    assert_eq!(rows_of(&app, &new_id).len(), 1);
    assert_eq!(app.row(&new_id).await.quo_id.unwrap().0, id);
    assert_eq!(
        items(&app.sandbox.contact(id).unwrap(), "phoneNumbers").len(),
        1,
        "nothing appended twice"
    );
    app.sandbox.reset_stats();
    let before = app.csv_text();
    app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0);
    assert_eq!(app.csv_text(), before);
}

/// SIGKILL right after the CRM row is written, before the adoption PATCH lands: the restarted
/// process finds the row (by its id) and adopts the contact; nothing is made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_between_the_crm_create_and_the_adoption_patch() {
    let app = TestApp::spawn_with(&csv(&[row("c-1", 1)]), SandboxConfig::default(), EXPORT).await;
    app.cycle().await;
    let sally = made_in_app(&app, "Sally", "+14155559001");
    let id = sally["id"].as_str().unwrap().to_string();
    let new_id = format!("quo-{id}");
    let contacts_before = app.sandbox.contacts().len();
    // Every request now takes long enough that the PATCH after the create is still in flight
    // when the kill lands.
    app.sandbox.set_latency(Duration::from_millis(400));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["once", "--config"])
        .arg(&app.config_path)
        .env("QUO_SYNC__LOG__FORMAT", "json")
        .env("QUO_SYNC__LOG__LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let created = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("\"event\":\"crm_record_created\"") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(created, Ok(true), "the CRM create was logged");
    child.kill().await.unwrap(); // SIGKILL
    assert_eq!(rows_of(&app, &new_id).len(), 1, "the row was written");
    assert_eq!(
        app.sandbox.contact(&id).unwrap()["source"],
        Value::Null,
        "the kill landed before the adoption PATCH"
    );

    app.sandbox.set_latency(Duration::ZERO);
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["once", "--config"])
        .arg(&app.config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(rows_of(&app, &new_id).len(), 1, "the row is not made twice");
    assert_eq!(
        app.sandbox.contacts().len(),
        contacts_before,
        "no contact made"
    );
    let adopted = app.sandbox.contact(&id).unwrap();
    assert_eq!(adopted["source"], "quo-sync");
    assert_eq!(adopted["externalId"], new_id.as_str());
    assert_eq!(app.row(&new_id).await.quo_id.unwrap().0, id);
}

/// A REST CRM: the record is made through `[source.rest.create]` and carries the contact's Quo
/// id (`reverse.quo_id_field`). The create's answer is lost (applied, then a 502): it is not sent
/// again; the next read finds the record by the Quo id it carries (the contact has only an
/// email, which this mapping does not carry, so nothing else could tie them), and the contact is
/// adopted for it. A later CRM edit of the record is one PATCH.
#[tokio::test]
async fn rest_a_create_whose_answer_was_lost_is_found_by_the_quo_id_it_carries() {
    let (sandbox, crm, _dir, ctx) = rest_export_world().await;
    let cycle = async || {
        quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply)
            .await
            .unwrap()
    };
    assert_eq!(cycle().await.counts.created, 1);
    let sally = sandbox.app_create(
        json!({"defaultFields": {"firstName": "Sally", "lastName": "Caller",
               "emails": [{"name": "work", "value": "sally@walk-in.example"}]}}),
        "",
    );
    let sally_id = sally["id"].as_str().unwrap();
    crm.lose_create_answers(1);
    cycle().await;
    assert_eq!(crm.count("POST", "/contacts"), 1);
    let made = crm.contact("n1").expect("the lost create landed");
    assert_eq!(
        made["quoId"], sally_id,
        "the record carries the contact's Quo id"
    );
    assert_eq!(made["firstName"], "Sally");
    assert_eq!(
        sandbox.contact(sally_id).unwrap()["source"],
        Value::Null,
        "not adopted yet"
    );

    cycle().await;
    assert_eq!(crm.count("POST", "/contacts"), 1, "never sent twice");
    let adopted = sandbox.contact(sally_id).unwrap();
    assert_eq!(adopted["source"], "quo-sync");
    assert_eq!(adopted["externalId"], "n1");
    let row = ctx
        .ledger
        .record(&quo_sync::domain::ExternalId::parse("n1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.quo_id.unwrap().0, sally_id);
    assert_eq!(
        sandbox.contacts().len(),
        2,
        "no contact made for the record"
    );

    let mut edited = crm.contact("n1").unwrap();
    edited["company"] = json!("Signed Up Co");
    edited["updated_at"] = json!(chrono::Utc::now().to_rfc3339());
    crm.replace("n1", edited);
    sandbox.reset_stats();
    cycle().await;
    let writes = sandbox.stats().writes;
    assert_eq!((writes.creates, writes.updates), (0, 1));
    assert_eq!(
        sandbox.contact(sally_id).unwrap()["defaultFields"]["company"],
        "Signed Up Co"
    );
}

/// A contact made in the app while the first cycle still runs (its listing of the workspace
/// answered, the CRM read not yet) was made after quo-sync started: the next cycle makes its
/// record. The line between "there before" and "made since" is the first cycle's start, so a
/// contact made mid-cycle, or in the millisecond the cycle ends, is never taken for one that was
/// there before and left out for good.
#[tokio::test]
async fn rest_a_contact_made_in_the_app_during_the_first_cycle_reaches_the_crm() {
    let (sandbox, crm, _dir, ctx) = rest_export_world().await;
    crm.push_delays([1500]);
    let first = first_cycle_past_its_listing(&ctx, &sandbox).await;
    let mid = sandbox.app_create(
        json!({"defaultFields": {"firstName": "Mid", "lastName": "Cycle",
               "phoneNumbers": [{"name": "mobile", "value": "+14155552777"}]}}),
        "",
    );
    let mid_id = mid["id"].as_str().unwrap();
    assert_eq!(first.await.unwrap().counts.created, 1, "Jo's contact");
    assert_eq!(crm.count("POST", "/contacts"), 0, "nothing exported yet");

    quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply)
        .await
        .unwrap();
    assert_eq!(
        crm.count("POST", "/contacts"),
        1,
        "the mid-cycle contact's record"
    );
    assert_eq!(crm.contact("n1").expect("its record")["quoId"], mid_id);
    assert_eq!(sandbox.contact(mid_id).unwrap()["externalId"], "n1");
}

/// Quo's spec shows `createdAt` in whole seconds (`2022-01-01T00:00:00Z`). A contact made in
/// an earlier second than the first cycle's start stays in Quo only; one made during the first
/// cycle, after its listing, in the second the cycle started, becomes a CRM record (read as
/// milliseconds, `…05Z` is `…05.000Z`, before a start at `…05.120Z`, and it was lost).
#[tokio::test]
async fn rest_whole_second_stamps_are_compared_as_whole_seconds() {
    let (sandbox, crm, _dir, ctx) = rest_export_world().await;
    sandbox.set_response_shapes(quo_sync::sandbox::ResponseShapes {
        whole_seconds: true,
        ..Default::default()
    });
    let early = sandbox.app_create(
        json!({"defaultFields": {"firstName": "Early", "phoneNumbers": [{"name": "mobile", "value": "+14155552888"}]}}),
        "",
    );
    // Reads through the API, which stamps in whole seconds.
    let early_id = early["id"].as_str().unwrap().to_string();
    wait_past(&json!({"createdAt": sandbox_stamp(&sandbox, &early_id).await})).await;
    let first = first_cycle_past_its_listing(&ctx, &sandbox).await;
    let mid = sandbox.app_create(
        json!({"defaultFields": {"firstName": "Mid", "phoneNumbers": [{"name": "mobile", "value": "+14155552777"}]}}),
        "",
    );
    first.await.unwrap();
    quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply)
        .await
        .unwrap();
    let mid_id = mid["id"].as_str().unwrap();
    assert_eq!(crm.count("POST", "/contacts"), 1, "Mid's record only");
    assert_eq!(crm.contact("n1").expect("its record")["quoId"], mid_id);
    assert_eq!(
        sandbox.contact(&early_id).unwrap()["externalId"],
        Value::Null
    );
}

/// Starts the first cycle and returns once it has listed the workspace; the cycle goes on.
async fn first_cycle_past_its_listing(
    ctx: &quo_sync::sync::SyncContext,
    sandbox: &quo_sync::sandbox::SandboxHandle,
) -> tokio::task::JoinHandle<quo_sync::sync::CycleReport> {
    let first = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply)
                .await
                .unwrap()
        }
    });
    common::poll("the first cycle's listing of the workspace", async || {
        sandbox
            .stats()
            .by_route_status
            .get("GET /v1/contacts 200")
            .is_some_and(|n| *n >= 1)
    })
    .await;
    first
}

/// `createdAt` of a contact as `GET /v1/contacts/{id}` answers it.
async fn sandbox_stamp(sandbox: &quo_sync::sandbox::SandboxHandle, id: &str) -> String {
    let answer: Value = reqwest::Client::new()
        .get(format!("{}/v1/contacts/{id}", sandbox.base_url()))
        .header("Authorization", sandbox.api_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["data"]["createdAt"]
        .as_str()
        .expect("createdAt")
        .to_string()
}

/// A sandbox, a REST CRM holding one record (Jo), and the context of a ledger in `dir` syncing
/// them with `reverse.create_in_crm` (see [`rest_export_context`]).
async fn rest_export_world() -> (
    quo_sync::sandbox::SandboxHandle,
    support::fake_crm::FakeCrm,
    tempfile::TempDir,
    quo_sync::sync::SyncContext,
) {
    use support::fake_crm::{Auth, FakeCrm};
    let sandbox = quo_sync::sandbox::SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let crm = FakeCrm::start(
        Auth::None,
        vec![
            json!({"id": "j001", "firstName": "Jo", "lastName": "Server", "phone": "(415) 555-2001",
                    "updated_at": "2026-01-01T00:00:00Z"}),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = rest_export_context(dir.path(), &sandbox, &crm, "").await;
    (sandbox, crm, dir, ctx)
}

/// The cycle context of a REST CRM (`crm`) with `[source.rest.create]` (plus `create_extra`
/// keys) and `reverse.quo_id_field`, its ledger in `dir`.
async fn rest_export_context(
    dir: &std::path::Path,
    sandbox: &quo_sync::sandbox::SandboxHandle,
    crm: &support::fake_crm::FakeCrm,
    create_extra: &str,
) -> quo_sync::sync::SyncContext {
    let config_path = dir.join(format!("quo-sync{}.toml", create_extra.len()));
    std::fs::write(
        &config_path,
        format!(
            r#"
[quo]
base_url = "{base}"
api_key = "{key}"
requests_per_second = 1000
max_backoff = "50ms"
list_lag = "20ms"

[ledger]
path = "{ledger}"

[source]
kind = "rest"

[source.rest]
base_url = "{crm}"
list_path = "/link/contacts"
records_pointer = ""
id_pointer = "/id"
updated_at_pointer = "/updated_at"
paging = {{ style = "link_header" }}
retry_base = "1ms"
max_backoff = "50ms"
fields = {{ first_name = "/firstName", last_name = "/lastName", company = "/company", phone = "/phone", quo_id = "/quoId" }}
update = {{ method = "PATCH", path = "/contacts/{{id}}" }}
create = {{ path = "/contacts", id_pointer = "/id"{create_extra} }}

[mapping]
first_name = "first_name"
last_name = "last_name"
company = "company"
phones = [{{ field = "phone", label = "mobile" }}]

[reverse]
create_in_crm = true
quo_id_field = "quo_id"
poll_interval = "1ms"
"#,
            base = sandbox.base_url(),
            key = sandbox.api_key(),
            ledger = dir.join("ledger.db").display(),
            crm = crm.base_url,
        ),
    )
    .unwrap();
    let config = quo_sync::config::Config::load_with_env(&config_path, std::iter::empty()).unwrap();
    quo_sync::app::build_context(&config, "once", Default::default())
        .await
        .unwrap()
}

/// The CSV append step: the new row goes after the last one in the file's own line ending (a
/// missing final line ending is added first), with the header's columns in order; a record
/// whose id the file holds already is not appended again; nothing else changes by a byte.
#[tokio::test]
async fn csv_rows_are_appended_in_the_files_own_style_and_never_twice() {
    use quo_sync::source::{CrmChange, ReadRequest, Source};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.csv");
    let original = "crm_id,first_name,phone,updated_at\r\nc-1,\"Ada, Countess\",+14155550100,2026-01-01\r\nc-2,Bob,,2026-01-02";
    std::fs::write(&path, original).unwrap();
    let source = Source::from_config(&quo_sync::config::SourceConfig {
        kind: quo_sync::config::SourceKind::Csv,
        path: Some(path.clone()),
        id_field: "crm_id".into(),
        updated_at_field: "updated_at".into(),
        rest: None,
        watch: false,
        delimiter: Default::default(),
        encoding: Default::default(),
        quote: Default::default(),
        escape: Default::default(),
        quiet_period: quo_sync::config::HumanDuration(std::time::Duration::from_secs(1)),
    })
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let read = tokio::spawn(async move {
        let summary = source.read(ReadRequest::default(), tx).await;
        (source, summary)
    });
    while rx.recv().await.is_some() {}
    let (source, summary) = read.await.unwrap();
    summary.unwrap();
    let new = |id: &str, first: &str| CrmChange {
        external_id: quo_sync::domain::ExternalId::parse(id).unwrap(),
        fields: [
            ("first_name".to_string(), first.to_string()),
            ("phone".to_string(), "+14155559001".to_string()),
        ]
        .into_iter()
        .collect(),
        updated_at: "2026-03-01T10:00:00Z".parse().unwrap(),
    };
    let quo_sync::source::Source::Csv(csv_source) = &source else {
        unreachable!()
    };
    let report = csv_source
        .append_records(&[new("quo-abc", "Sally, Jr."), new("c-2", "Not Bob")])
        .await
        .unwrap();
    assert_eq!(report.written.len(), 2, "{report:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        format!("{original}\r\nquo-abc,\"Sally, Jr.\",+14155559001,2026-03-01T10:00:00Z\r\n"),
        "c-2 is there already: not appended, not changed"
    );
}

/// A deposed leader's export: the intent is committed while the lease still holds, but the
/// lease's renewals stall (they go through a pool that is closed, as a database that stops
/// answering would) and the writer guard refuses the CSV append, which needs a second the
/// lease no longer has. Nothing is appended and the intent stays pending. The next leader
/// appends the row once and adopts the contact; a later cycle appends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_the_writer_guard_refuses_stays_pending_and_the_next_leader_makes_it_once() {
    use quo_sync::ledger::{Candidate, ExportState, LeaderLease, Ledger};
    use quo_sync::sync::{Mode, SyncContext, run_cycle};
    let app = TestApp::spawn_with(&csv(&[row("c-1", 1)]), SandboxConfig::default(), EXPORT).await;
    app.cycle().await;
    let sally = made_in_app(&app, "Sally", "+14155559001");
    let sally_id = sally["id"].as_str().unwrap().to_string();
    let new_id = format!("quo-{sally_id}");

    let lease_for = Duration::from_secs(3);
    let renewals = Ledger::open(&app.dir.path().join("ledger.db"))
        .await
        .unwrap();
    let lease = LeaderLease::try_acquire(&renewals, &Candidate::this_process("run"), lease_for)
        .await
        .unwrap();
    let deposed = app.ledger().fenced(&lease).await.unwrap();
    renewals.close().await; // every renewal fails from now on: the lease runs out locally
    let fence = deposed.write_fence().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // Under a second left (a CSV append asks for one), but the lease still holds.
    while fence
        .time_left()
        .is_some_and(|left| left > Duration::from_millis(950))
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ctx = SyncContext {
        ledger: deposed.clone(),
        ..app.ctx.clone()
    };
    let report = run_cycle(&ctx, Mode::Apply).await;
    assert!(
        rows_of(&app, &new_id).is_empty(),
        "a deposed leader appended: {}",
        app.csv_text()
    );
    if let Ok(report) = &report {
        assert_eq!(report.counts.exported, 0, "{:?}", report.counts);
    }
    assert!(!lease.holds(), "the lease ran out during the cycle");
    let open = app.ledger().open_exports().await.unwrap();
    let intent = open.get(&sally_id).expect("the intent was committed");
    assert_eq!(intent.state, ExportState::Pending, "{intent:?}");
    assert_eq!(
        app.sandbox.contact(&sally_id).unwrap()["source"],
        Value::Null
    );
    drop(lease);
    deposed.close().await;

    // The next leader, once the lease has expired in the database.
    let next = LeaderLease::acquire_within(
        app.ledger(),
        &Candidate::this_process("run"),
        Duration::from_secs(15),
        Duration::from_secs(10),
        Duration::from_millis(50),
    )
    .await
    .unwrap();
    let leader = app.ledger().fenced(&next).await.unwrap();
    let ctx = SyncContext {
        ledger: leader.clone(),
        ..app.ctx.clone()
    };
    let report = run_cycle(&ctx, Mode::Apply).await.unwrap();
    assert_eq!(report.counts.exported, 1, "{:?}", report.counts);
    assert_eq!(rows_of(&app, &new_id).len(), 1, "{}", app.csv_text());
    let adopted = app.sandbox.contact(&sally_id).unwrap();
    assert_eq!(adopted["externalId"], new_id.as_str());
    assert_eq!(app.row(&new_id).await.quo_id.unwrap().0, sally_id);
    assert!(
        !app.ledger()
            .open_exports()
            .await
            .unwrap()
            .contains_key(&sally_id),
        "the export is done"
    );
    run_cycle(&ctx, Mode::Apply).await.unwrap();
    assert_eq!(rows_of(&app, &new_id).len(), 1, "appended once");
    next.release().await;
}

/// A REST CRM whose list lags a create whose answer was lost (#20's lookup window). Within
/// `source.rest.create.lookup_window` (10 minutes by default) the cycle only looks for the
/// record: reads that do not show it send nothing, and once the list catches up the record is
/// found by the Quo id it carries and the contact adopted, one POST in all. After the window (a
/// ledger configured with 50 ms), a complete read that started past it and does not show the
/// record sends the create again, as docs/day-one.md says: a CRM whose list lags longer than
/// the window gets a second record.
#[tokio::test]
async fn rest_a_lagging_lost_create_is_looked_for_within_the_window_and_sent_again_after() {
    let (sandbox, crm, dir, ctx) = rest_export_world().await;
    let cycle = async |ctx: &quo_sync::sync::SyncContext| {
        quo_sync::sync::run_cycle(ctx, quo_sync::sync::Mode::Apply)
            .await
            .unwrap()
    };
    cycle(&ctx).await;
    let app_contact = |first: &str, phone: &str| {
        let made = sandbox.app_create(
            json!({"defaultFields": {"firstName": first, "lastName": "Caller",
                   "phoneNumbers": [{"name": "main", "value": phone}]}}),
            "",
        );
        made["id"].as_str().unwrap().to_string()
    };

    // Within the window.
    let sally = app_contact("Sally", "+14155559101");
    crm.lose_create_answers(1);
    crm.hide_creates_from_lists(1);
    cycle(&ctx).await;
    assert_eq!(crm.count("POST", "/contacts"), 1);
    assert_eq!(crm.contact("n1").unwrap()["quoId"], sally.as_str());
    for _ in 0..2 {
        cycle(&ctx).await;
        assert_eq!(
            crm.count("POST", "/contacts"),
            1,
            "not sent again while the list may lag"
        );
    }
    assert_eq!(sandbox.contact(&sally).unwrap()["source"], Value::Null);
    crm.reveal_creates();
    cycle(&ctx).await;
    assert_eq!(
        crm.count("POST", "/contacts"),
        1,
        "found, not created again"
    );
    let adopted = sandbox.contact(&sally).unwrap();
    assert_eq!(adopted["externalId"], "n1");
    assert_eq!(adopted["source"], "quo-sync");

    // After the window.
    ctx.ledger.close().await;
    let short = rest_export_context(dir.path(), &sandbox, &crm, ", lookup_window = \"50ms\"").await;
    let peter = app_contact("Peter", "+14155559102");
    crm.lose_create_answers(1);
    crm.hide_creates_from_lists(1);
    cycle(&short).await;
    assert_eq!(crm.count("POST", "/contacts"), 2);
    let intent = short.ledger.open_exports().await.unwrap()[&peter]
        .created_at
        .clone();
    let past = chrono::DateTime::parse_from_rfc3339(&intent).unwrap()
        + chrono::TimeDelta::milliseconds(60);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while chrono::Utc::now() < past {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cycle(&short).await;
    assert_eq!(
        crm.count("POST", "/contacts"),
        3,
        "sent again after the window: the documented limit"
    );
    let carrying: Vec<Value> = ["n2", "n3"]
        .iter()
        .filter_map(|id| crm.contact(id))
        .filter(|c| c["quoId"] == peter.as_str())
        .collect();
    assert_eq!(carrying.len(), 2, "two CRM records carry Peter's Quo id");
}
