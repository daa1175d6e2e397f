//! The whole daemon against the in-process fake REST CRM and the Quo sandbox: forward sync for
//! two CRM shapes, in-app edits written back at the right JSON pointer, no echo, incremental and
//! full reads, deletions, auth failures, retry bursts, looping cursors and write-back conflicts.

mod common;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use common::{custom_value, free_addr, items, poll, readyz};
use quo_sync::config::Config;
use quo_sync::sandbox::{SandboxConfig, SandboxHandle};
use quo_sync::sync::{CycleReport, Mode, SyncContext, run_cycle};
use serde_json::{Value, json};
use support::fake_crm::{Auth, FakeCrm, Fault, updated_at};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "crm-TOKEN-e2e-7f3a9c0b5d";

/// A CRM shape: its records, the `[source.rest]` keys that read them, and the `[mapping]`.
struct Shape {
    name: &'static str,
    /// The fake CRM's URL prefix for this paging style (its list requests start with it).
    prefix: &'static str,
    contacts: Vec<Value>,
    rest: &'static str,
    mapping: &'static str,
    /// JSON pointer of the company in a stored record.
    company_pointer: &'static str,
    /// JSON pointer of the first name in a stored record.
    first_name_pointer: &'static str,
}

/// HubSpot-like: nested properties, labelled email and phone arrays, cursor paging.
fn hubspot(n: usize) -> Shape {
    let contacts = (1..=n)
        .map(|i| {
            json!({
                "id": format!("c{i:03}"),
                "properties": {
                    "firstname": format!("First{i}"),
                    "lastname": format!("Last{i}"),
                    "company": format!("Acme {i}"),
                },
                "emails": [
                    {"label": "work", "value": format!("w{i}@example.com")},
                    {"label": "home", "value": format!("h{i}@example.com")},
                ],
                "phones": [{"label": "mobile", "value": format!("+1415555{:04}", 1000 + i)}],
                "score": i,
                "updated_at": updated_at(i).to_rfc3339(),
            })
        })
        .collect();
    Shape {
        name: "hubspot",
        prefix: "/cursor/",
        contacts,
        rest: r#"
list_path = "/cursor/contacts"
records_pointer = "/results"
page_size_param = "limit"
page_size = 5
paging = { style = "cursor", param = "after", cursor_pointer = "/paging/next/after", stop_on_short_page = false }
fields = { first_name = "/properties/firstname", last_name = "/properties/lastname", company = "/properties/company", score = "/score" }
arrays = [
  { pointer = "/emails", label_key = "label", value_key = "value", prefix = "email" },
  { pointer = "/phones", label_key = "label", value_key = "value", prefix = "phone" },
]
update = { method = "PATCH", path = "/contacts/{id}" }
"#,
        mapping: r#"
[mapping]
default_region = "US"
first_name = "first_name"
last_name = "last_name"
company = "company"
emails = [{ field = "email.work", label = "work" }, { field = "email.home", label = "home" }]
phones = [{ field = "phone.mobile", label = "mobile" }]
custom_fields = [{ name = "Lead Score", field = "score" }]
"#,
        company_pointer: "/properties/company",
        first_name_pointer: "/properties/firstname",
    }
}

/// json-server-like: flat records with a nested company, a bare array, Link header paging.
fn json_server(n: usize) -> Shape {
    let contacts = (1..=n)
        .map(|i| {
            json!({
                "id": format!("j{i:03}"),
                "firstName": format!("Jo{i}"),
                "lastName": format!("Server{i}"),
                "company": {"name": format!("Json {i}"), "size": 10 * i},
                "email": format!("jo{i}@example.org"),
                "phone": format!("(415) 555-{:04}", 2000 + i),
                "tags": ["vip", "enterprise"],
                "updated_at": updated_at(i).to_rfc3339(),
            })
        })
        .collect();
    Shape {
        name: "json-server",
        prefix: "/link/",
        contacts,
        rest: r#"
list_path = "/link/contacts"
query = { _page = 1 }
page_size_param = "_limit"
page_size = 5
records_pointer = ""
paging = { style = "link_header", stop_on_short_page = false }
fields = { first_name = "/firstName", last_name = "/lastName", company = "/company/name", email = "/email", phone = "/phone", tags = "/tags" }
update = { method = "PATCH", path = "/contacts/{id}", set_updated_at = true }
"#,
        mapping: r#"
[mapping]
default_region = "US"
first_name = "first_name"
last_name = "last_name"
company = "company"
emails = [{ field = "email", label = "work" }]
phones = [{ field = "phone", label = "mobile" }]
custom_fields = [{ name = "Tags", field = "tags", delimiter = ";" }]
"#,
        company_pointer: "/company/name",
        first_name_pointer: "/firstName",
    }
}

/// A sandbox, a fake CRM, a temp dir with config and ledger, and a cycle context.
struct RestApp {
    sandbox: SandboxHandle,
    crm: FakeCrm,
    dir: TempDir,
    config_path: PathBuf,
    ctx: SyncContext,
}

impl RestApp {
    /// `rest_extra` goes into `[source.rest]`; `extra` (whole sections) after `[mapping]`.
    async fn spawn(shape: &Shape, rest_extra: &str, extra: &str) -> RestApp {
        Self::spawn_with_token(shape, TOKEN, rest_extra, extra).await
    }

    async fn spawn_with_token(
        shape: &Shape,
        token: &str,
        rest_extra: &str,
        extra: &str,
    ) -> RestApp {
        let sandbox = SandboxHandle::start(SandboxConfig {
            requests_per_second: 0,
            ..SandboxConfig::default()
        })
        .await
        .expect("sandbox starts");
        let crm = FakeCrm::start(Auth::Bearer(TOKEN.into()), shape.contacts.clone()).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("quo-sync.toml");
        let toml = format!(
            r#"
[quo]
base_url = "{base}"
api_key = "{key}"
requests_per_second = 1000
max_retries = 10
max_backoff = "50ms"
timeout = "5s"

[ledger]
path = "{ledger}"

[source]
kind = "rest"

[source.rest]
base_url = "{crm}"
id_pointer = "/id"
updated_at_pointer = "/updated_at"
requests_per_second = 1000
max_retries = 4
retry_base = "1ms"
max_backoff = "50ms"
timeout = "5s"
auth = {{ kind = "bearer", token = "{token}" }}
{rest}
{rest_extra}
{mapping}
{extra}
"#,
            base = sandbox.base_url(),
            key = sandbox.api_key(),
            ledger = dir.path().join("ledger.db").display(),
            crm = crm.base_url,
            rest = shape.rest,
            mapping = shape.mapping,
        );
        std::fs::write(&config_path, toml).expect("write config");
        let config = Config::load_with_env(&config_path, std::iter::empty()).expect("config loads");
        let ctx = quo_sync::app::build_context(&config, "once", CancellationToken::new())
            .await
            .expect("context builds");
        RestApp {
            sandbox,
            crm,
            dir,
            config_path,
            ctx,
        }
    }

    async fn cycle(&self) -> CycleReport {
        run_cycle(&self.ctx, Mode::Apply).await.expect("cycle runs")
    }

    /// The one sandbox contact for an external id.
    fn contact_for(&self, external_id: &str) -> Value {
        let matches: Vec<_> = self
            .sandbox
            .contacts()
            .into_iter()
            .filter(|c| c["externalId"] == external_id)
            .collect();
        assert_eq!(
            matches.len(),
            1,
            "one contact for {external_id}: {matches:#?}"
        );
        matches.into_iter().next().unwrap()
    }

    fn quo_id(&self, external_id: &str) -> String {
        self.contact_for(external_id)["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Writes (PATCH/PUT) the fake CRM has received.
    fn crm_writes(&self) -> usize {
        self.crm.count("PATCH", "/") + self.crm.count("PUT", "/")
    }

    /// Rows in the ledger's `records` table.
    async fn ledger_rows(&self) -> Vec<(String, Option<String>, String)> {
        let mut rows: Vec<_> = self
            .ctx
            .ledger
            .all_records()
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.external_id.to_string(),
                    r.quo_id.as_ref().map(|q| q.to_string()),
                    format!("{r:?}"),
                )
            })
            .collect();
        rows.sort();
        rows
    }

    /// Edits a CRM record in place (as a CRM user would), bumping its `updated_at`.
    fn crm_edit(&self, id: &str, pointer: &str, value: Value) {
        let mut record = self.crm.contact(id).expect("record exists");
        *record.pointer_mut(pointer).expect("pointer exists") = value;
        record["updated_at"] = json!(chrono::Utc::now().to_rfc3339());
        self.crm.replace(id, record);
    }

    /// Edits a contact in Quo's app, then lets the 1ms poll interval elapse.
    async fn app_edit(&self, external_id: &str, patch: Value) {
        self.sandbox
            .app_edit(&self.quo_id(external_id), patch)
            .expect("contact exists");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ids(shape: &Shape) -> Vec<String> {
    shape
        .contacts
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

const POLL: &str = "[reverse]\npoll_interval = \"1ms\"\n";

async fn full_loop(shape: Shape) {
    let app = RestApp::spawn(&shape, "", POLL).await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 12, "{}: {report:?}", shape.name);
    assert_eq!(app.sandbox.contacts().len(), 12, "{}", shape.name);
    for id in ids(&shape) {
        assert_eq!(app.sandbox.count_by_external_id(&id), 1, "{id}");
    }
    // Mapped fields, including flattened arrays and a custom field.
    let (first, quo) = (
        &shape.contacts[6],
        app.contact_for(shape.contacts[6]["id"].as_str().unwrap()),
    );
    let fields = &quo["defaultFields"];
    match shape.name {
        "hubspot" => {
            assert_eq!(fields["firstName"], "First7");
            assert_eq!(fields["lastName"], "Last7");
            assert_eq!(fields["company"], "Acme 7");
            let emails = items(&quo, "emails");
            assert!(
                emails.contains(&("work".into(), "w7@example.com".into())),
                "{emails:?}"
            );
            assert!(
                emails.contains(&("home".into(), "h7@example.com".into())),
                "{emails:?}"
            );
            assert_eq!(
                items(&quo, "phoneNumbers"),
                vec![("mobile".into(), "+14155551007".into())]
            );
            assert_eq!(custom_value(&quo, "lead-score").as_f64(), Some(7.0));
        }
        _ => {
            assert_eq!(fields["firstName"], "Jo7");
            assert_eq!(fields["lastName"], "Server7");
            assert_eq!(fields["company"], "Json 7");
            assert_eq!(
                items(&quo, "emails"),
                vec![("work".into(), "jo7@example.org".into())]
            );
            assert_eq!(
                items(&quo, "phoneNumbers"),
                vec![("mobile".into(), "+14155552007".into())]
            );
            assert_eq!(custom_value(&quo, "tags"), json!(["vip", "enterprise"]));
        }
    }
    assert!(
        app.crm.count("GET", shape.prefix) >= 3,
        "paged in pages of 5"
    );
    assert_eq!(
        app.crm_writes(),
        0,
        "the forward pass writes nothing to the CRM"
    );

    // An in-app edit of the company is written back at its pointer, keeping everything else.
    let id = first["id"].as_str().unwrap();
    let before = app.crm.contact(id).unwrap();
    app.app_edit(id, json!({"defaultFields": {"company": "Edited In Quo"}}))
        .await;
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(
        report.counts.written_to_crm, 1,
        "{}: {report:?}",
        shape.name
    );
    assert_eq!(app.crm_writes(), 1, "{}", shape.name);
    assert_eq!(
        app.sandbox.stats().writes_total(),
        0,
        "nothing pushed back to Quo"
    );
    let after = app.crm.contact(id).unwrap();
    assert_eq!(
        after.pointer(shape.company_pointer),
        Some(&json!("Edited In Quo"))
    );
    let mut expected = before.clone();
    *expected.pointer_mut(shape.company_pointer).unwrap() = json!("Edited In Quo");
    expected["updated_at"] = after["updated_at"].clone();
    assert_eq!(
        after, expected,
        "{}: only the company (and updated_at) changed",
        shape.name
    );
    for other in ids(&shape).iter().filter(|o| *o != id) {
        assert_eq!(
            app.crm.contact(other),
            shape
                .contacts
                .iter()
                .find(|c| c["id"] == other.as_str())
                .cloned(),
            "{other} untouched"
        );
    }

    // No echo: a further cycle writes nothing anywhere.
    tokio::time::sleep(Duration::from_millis(5)).await;
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(
        (
            report.counts.written_to_crm,
            report.counts.updated,
            report.counts.created
        ),
        (0, 0, 0),
        "{}: {report:?}",
        shape.name
    );
    assert_eq!(app.sandbox.stats().writes_total(), 0);
    assert_eq!(app.crm_writes(), 1, "no second CRM write");
    assert_eq!(
        app.contact_for(id)["defaultFields"]["company"],
        "Edited In Quo"
    );
}

#[tokio::test]
async fn hubspot_shape_full_loop_with_write_back_and_no_echo() {
    full_loop(hubspot(12)).await;
}

#[tokio::test]
async fn json_server_shape_full_loop_with_write_back_and_no_echo() {
    full_loop(json_server(12)).await;
}

#[tokio::test]
async fn a_crm_side_edit_is_one_patch_to_quo_and_nothing_back() {
    for shape in [hubspot(12), json_server(12)] {
        let app = RestApp::spawn(&shape, "", POLL).await;
        app.cycle().await;
        let id = shape.contacts[3]["id"].as_str().unwrap();
        app.crm_edit(id, shape.first_name_pointer, json!("Renamed"));
        tokio::time::sleep(Duration::from_millis(5)).await;
        app.sandbox.reset_stats();
        let report = app.cycle().await;
        assert_eq!(report.counts.updated, 1, "{}: {report:?}", shape.name);
        let stats = app.sandbox.stats();
        assert_eq!(stats.writes.updates, 1, "{}", shape.name);
        assert_eq!(stats.writes_total(), 1, "{}", shape.name);
        assert_eq!(app.contact_for(id)["defaultFields"]["firstName"], "Renamed");
        assert_eq!(app.crm_writes(), 0, "{}: nothing written back", shape.name);
        // And the PATCH's own echo (seen by the poll) is not written back either.
        tokio::time::sleep(Duration::from_millis(5)).await;
        app.sandbox.reset_stats();
        let report = app.cycle().await;
        assert_eq!(
            (report.counts.updated, report.counts.written_to_crm),
            (0, 0)
        );
        assert_eq!(app.crm_writes(), 0, "{}", shape.name);
        assert_eq!(app.sandbox.stats().writes_total(), 0);
    }
}

#[tokio::test]
async fn incremental_reads_send_the_param_and_deletions_wait_for_a_full_read() {
    let shape = hubspot(12);
    let app = RestApp::spawn(
        &shape,
        "updated_since_param = \"updated_since\"\nfull_read_every = \"1h\"",
        "[sync]\non_source_delete = \"delete\"\n",
    )
    .await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 12);
    let firsts: Vec<_> = app.crm.requests();
    assert!(
        firsts
            .iter()
            .all(|r| !r.query.contains_key("updated_since")),
        "the first read is full"
    );

    // Second cycle: incremental, with the high-water mark; unchanged records cost no Quo write.
    app.crm.remove("c005");
    app.crm_edit("c002", "/properties/lastname", json!("Changed"));
    let seen = app.crm.requests().len();
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    let list: Vec<_> = app.crm.requests()[seen..]
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/cursor/"))
        .cloned()
        .collect();
    assert!(!list.is_empty());
    for request in &list {
        assert_eq!(
            request
                .query
                .get("updated_since")
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()),
            Some(updated_at(12).fixed_offset()),
            "the high-water mark is sent: {:?}",
            request.query
        );
    }
    assert_eq!(report.counts.updated, 1, "{report:?}");
    assert_eq!(
        report.counts.deleted, 0,
        "an incremental read cannot see deletions"
    );
    assert_eq!(app.sandbox.stats().writes_total(), 1, "only c002");
    assert_eq!(
        app.contact_for("c002")["defaultFields"]["lastName"],
        "Changed"
    );
    assert_eq!(app.sandbox.count_by_external_id("c005"), 1);

    // Force the next reads to be full: the first notices c005 is gone, the second agrees and
    // deletes it from Quo.
    let force_full_read = async || {
        app.ctx
            .ledger
            .set_meta(
                "source.last_full_read_at",
                &(chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339(),
            )
            .await
            .unwrap();
    };
    force_full_read().await;
    let report = app.cycle().await;
    assert_eq!(
        report.counts.deleted, 0,
        "one full read only notes it: {report:?}"
    );
    assert_eq!(app.sandbox.count_by_external_id("c005"), 1);
    force_full_read().await;
    let seen = app.crm.requests().len();
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert!(
        app.crm.requests()[seen..]
            .iter()
            .all(|r| !r.query.contains_key("updated_since")),
        "full read"
    );
    assert_eq!(report.counts.deleted, 1, "{report:?}");
    assert_eq!(app.sandbox.count_by_external_id("c005"), 0);
    let stats = app.sandbox.stats();
    assert_eq!((stats.writes.deletes, stats.writes_total()), (1, 1));
    assert_eq!(app.sandbox.contacts().len(), 11);
}

#[tokio::test]
async fn refused_credentials_fail_the_cycle_and_leave_the_ledger_untouched() {
    let shape = hubspot(12);
    let wrong = "wrong-TOKEN-leak-check-123456";
    let app = RestApp::spawn_with_token(&shape, wrong, "", "").await;
    let error = run_cycle(&app.ctx, Mode::Apply).await.unwrap_err();
    let message = format!("{error} {error:?}");
    assert!(message.contains("401"), "{message}");
    assert!(
        !message.contains(wrong) && !message.contains(TOKEN),
        "{message}"
    );
    assert!(app.ledger_rows().await.is_empty());
    assert!(app.sandbox.contacts().is_empty());
    assert_eq!(app.sandbox.stats().writes_total(), 0);

    // The binary exits 1 and never prints the token (our ledger handle is closed first: one
    // process uses a ledger at a time).
    app.ctx.ledger.close().await;
    // Off the runtime thread: the sandbox and the fake CRM are served by this test's runtime.
    let config_path = app.config_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
            .args(["once", "--config"])
            .arg(&config_path)
            .env_remove("QUO_API_KEY")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A CRM that refuses its credentials exits 2, as a refused Quo key does (#22).
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        !stderr.contains(wrong) && !stdout.contains(wrong),
        "{stderr}"
    );
    assert!(stderr.contains("401"), "the failure is explained: {stderr}");
    let ledger = quo_sync::ledger::Ledger::open(&app.dir.path().join("ledger.db"))
        .await
        .unwrap();
    assert!(ledger.all_records().await.unwrap().is_empty());
    assert!(app.sandbox.contacts().is_empty());
}

/// `quo-sync run` against this app's config, its log in `run.log`, `/readyz` on `addr`.
fn spawn_run(app: &RestApp, addr: std::net::SocketAddr) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["run", "--config"])
        .arg(&app.config_path)
        .env_remove("QUO_SYNC_CONFIG")
        .env_remove("QUO_API_KEY")
        .env("QUO_SYNC__SCHEDULE__INTERVAL", "200ms")
        .env("QUO_SYNC__SERVICE__LISTEN", addr.to_string())
        .env("QUO_SYNC__LOG__FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(app.dir.path().join("run.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("run starts")
}

/// `run` whose CRM credential never worked stops at its first refusal with exit code 2 and
/// `auth_failed`, however long `source.rest.auth_grace` is: configuration, like a Quo key that
/// never worked (#22), which a supervisor does not restart into.
#[tokio::test]
async fn run_exits_2_at_once_when_the_crm_never_accepted_its_credential() {
    let shape = hubspot(3);
    let wrong = "wrong-TOKEN-leak-check-run-4242";
    let app = RestApp::spawn_with_token(&shape, wrong, "auth_grace = \"1h\"", "").await;
    app.ctx.ledger.close().await;
    let mut child = spawn_run(&app, free_addr());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("run stops by itself, long before source.rest.auth_grace")
        .unwrap();
    let stderr = std::fs::read_to_string(app.dir.path().join("run.log")).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"auth_failed\""), "{stderr}");
    assert!(
        stderr.contains("the CRM refused its credential"),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong), "the token is never logged");
    assert!(app.sandbox.contacts().is_empty());
}

/// `run` whose CRM credential worked and is then refused (401 on every list) backs off, not
/// ready, for `source.rest.auth_grace`, then stops with `auth_failed` and exit code 1: the same
/// rule as Quo's key (#21 item 8 with #22).
#[tokio::test]
async fn run_exits_1_after_auth_grace_when_a_crm_credential_that_worked_is_refused() {
    let shape = hubspot(3);
    let app = RestApp::spawn(&shape, "auth_grace = \"3s\"", "").await;
    app.ctx.ledger.close().await;
    let addr = free_addr();
    let mut child = spawn_run(&app, addr);
    poll("the first cycle and /readyz", async || {
        app.sandbox.contacts().len() == 3 && readyz(addr).await.0 == 200
    })
    .await;
    app.crm
        .push_faults(std::iter::repeat_n(Fault::Status(401, None), 100_000));
    let refused = std::time::Instant::now();
    poll("/readyz not ready while the CRM refuses", async || {
        let (status, body) = readyz(addr).await;
        status == 503 && body.contains("the CRM refused its credential")
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running within the grace"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("run stops by itself once source.rest.auth_grace has run out")
        .unwrap();
    let stderr = std::fs::read_to_string(app.dir.path().join("run.log")).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        refused.elapsed() >= Duration::from_millis(2500),
        "not before the grace: {:?}",
        refused.elapsed()
    );
    assert!(stderr.contains("\"auth_refused\""), "{stderr}");
    assert!(stderr.contains("source.rest.auth_grace (3s)"), "{stderr}");
    assert!(!stderr.contains(TOKEN), "the token is never logged");
}

#[tokio::test]
async fn rate_limit_and_server_error_bursts_converge() {
    let shape = hubspot(12);
    let app = RestApp::spawn(&shape, "", "").await;
    app.crm.push_faults([
        Fault::Status(429, Some("0".into())),
        Fault::Status(503, None),
        Fault::Status(500, None),
    ]);
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 12, "{report:?}");
    assert_eq!(
        app.crm.count("GET", "/cursor/"),
        3 + 3,
        "three pages, three retried refusals"
    );
    // Bursts on a later cycle do not disturb what is already synced: only the edit is applied.
    let app = RestApp::spawn(&shape, "", "").await;
    app.crm.push_faults([Fault::Status(502, None)]);
    app.cycle().await;
    assert_eq!(app.sandbox.contacts().len(), 12);
    app.crm_edit("c012", "/properties/company", json!("Burst"));
    app.crm.push_faults([
        Fault::Status(429, Some("0".into())),
        Fault::Status(504, None),
    ]);
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(report.counts.updated, 1, "{report:?}");
    assert_eq!(app.sandbox.stats().writes_total(), 1);
    for id in ids(&shape) {
        assert_eq!(app.sandbox.count_by_external_id(&id), 1, "{id}");
    }
}

#[tokio::test]
async fn a_repeating_cursor_fails_the_cycle_and_deletes_nothing() {
    let shape = hubspot(12);
    let app = RestApp::spawn(&shape, "", "[sync]\non_source_delete = \"delete\"\n").await;
    app.cycle().await;
    assert_eq!(app.sandbox.contacts().len(), 12);
    app.crm.repeat_cursor();
    app.sandbox.reset_stats();
    let error = run_cycle(&app.ctx, Mode::Apply).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("cursor") && message.contains("a second time"),
        "a clear error: {message}"
    );
    assert_eq!(app.sandbox.stats().writes.deletes, 0);
    assert_eq!(app.sandbox.contacts().len(), 12);
    for id in ids(&shape) {
        assert_eq!(app.sandbox.count_by_external_id(&id), 1, "{id}");
    }
}

#[tokio::test]
async fn a_write_back_conflict_is_retried_next_cycle_not_looped() {
    let shape = hubspot(12);
    let app = RestApp::spawn(&shape, "", POLL).await;
    app.cycle().await;
    app.app_edit("c004", json!({"defaultFields": {"lastName": "FromQuo"}}))
        .await;
    app.crm.push_write_fault(409, "edited meanwhile");
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(report.counts.written_to_crm, 0, "{report:?}");
    assert_eq!(
        app.crm_writes(),
        1,
        "one attempt, no retry loop within the cycle"
    );
    assert_eq!(
        app.crm.contact("c004").unwrap()["properties"]["lastname"],
        "Last4"
    );
    assert_eq!(app.sandbox.stats().writes_total(), 0, "Quo keeps the edit");
    assert_eq!(
        app.contact_for("c004")["defaultFields"]["lastName"],
        "FromQuo"
    );

    // The CRM accepts next cycle: the Quo change is applied, once.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = app.cycle().await;
    assert_eq!(report.counts.written_to_crm, 1, "{report:?}");
    assert_eq!(app.crm_writes(), 2);
    assert_eq!(
        app.crm.contact("c004").unwrap()["properties"]["lastname"],
        "FromQuo"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = app.cycle().await;
    assert_eq!(
        (report.counts.written_to_crm, report.counts.updated),
        (0, 0)
    );
    assert_eq!(app.crm_writes(), 2, "applied once");
}

#[tokio::test]
async fn an_in_app_edit_between_incremental_reads_is_written_back_once() {
    let shape = json_server(12);
    let app = RestApp::spawn(
        &shape,
        "updated_since_param = \"updated_since\"\nfull_read_every = \"1h\"",
        POLL,
    )
    .await;
    app.cycle().await;
    // The CRM record is unchanged, so the incremental read does not return it.
    app.app_edit("j003", json!({"defaultFields": {"lastName": "Quoside"}}))
        .await;
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(report.counts.written_to_crm, 1, "{report:?}");
    assert_eq!(app.crm_writes(), 1);
    assert_eq!(app.crm.contact("j003").unwrap()["lastName"], "Quoside");
    assert_eq!(app.crm.contact("j003").unwrap()["company"]["size"], 30);
    assert_eq!(app.sandbox.stats().writes_total(), 0);
    // The write-back moved the record's updated_at, so the next incremental read returns it:
    // that must not echo anywhere.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        app.sandbox.reset_stats();
        let report = app.cycle().await;
        assert_eq!(
            (report.counts.written_to_crm, report.counts.updated),
            (0, 0),
            "{report:?}"
        );
        assert_eq!(app.sandbox.stats().writes_total(), 0);
        assert_eq!(app.crm_writes(), 1);
    }
}

/// A record whose Quo write failed must be read again by the next incremental read: the
/// high-water mark never moves past it (it once waited for the next full read, a day later).
#[tokio::test]
async fn a_record_whose_write_failed_is_read_again_by_the_next_incremental_read() {
    let shape = hubspot(6);
    let app = RestApp::spawn(
        &shape,
        "updated_since_param = \"updated_since\"\nfull_read_every = \"1h\"",
        "",
    )
    .await;
    app.cycle().await;
    // Quo refuses this address (no dotted domain); the mapping lets it through.
    app.crm_edit("c002", "/emails/0/value", json!("w2@intranet"));
    tokio::time::sleep(Duration::from_millis(5)).await;
    app.crm_edit("c003", "/properties/lastname", json!("Later Edit"));
    let report = app.cycle().await;
    assert_eq!(
        (report.counts.updated, report.counts.quarantined),
        (1, 1),
        "{report:?}"
    );
    let mark = app
        .ctx
        .ledger
        .meta_time("source.high_water_mark")
        .await
        .unwrap()
        .unwrap();
    let failed_at = chrono::DateTime::parse_from_rfc3339(
        app.crm.contact("c002").unwrap()["updated_at"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(mark < failed_at, "mark {mark} must stay before {failed_at}");
    // The next incremental read returns c002 again, and it is tried again.
    let report = app.cycle().await;
    assert_eq!(report.counts.quarantined, 1, "{report:?}");
    let row = app
        .ctx
        .ledger
        .record(&quo_sync::domain::ExternalId::parse("c002").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.attempts, 2, "tried again, not forgotten");
}
