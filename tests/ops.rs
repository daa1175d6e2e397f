//! Operator commands against ledgers built by real cycles on the sandbox, driving the real
//! binary the way an operator would: stdout text, JSON fields, exit codes, ledger rows and the
//! contacts Quo ends up with.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Backend, TestApp, csv, row};
use quo_sync::domain::ExternalId;
use quo_sync::sandbox::SandboxConfig;
use serde_json::{Value, json};

/// Runs `quo-sync --config <config> args…` and returns (exit code, stdout, stderr).
async fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out: Output = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("QUO_SYNC_CONFIG")
        .output()
        .await
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`cli`], asserting `code` and parsing stdout as JSON.
async fn cli_json(config: &Path, args: &[&str], code: i32) -> Value {
    let (got, stdout, stderr) = cli(config, args).await;
    assert_eq!(got, code, "{args:?}\nstdout: {stdout}\nstderr: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

/// Like [`cli`], asserting `code` and returning stdout.
async fn cli_ok(config: &Path, args: &[&str], code: i32) -> String {
    let (got, stdout, stderr) = cli(config, args).await;
    assert_eq!(got, code, "{args:?}\nstdout: {stdout}\nstderr: {stderr}");
    stdout
}

fn rows(n: u32) -> Vec<String> {
    (1..=n).map(|i| row(&format!("r-{i}"), i)).collect()
}

/// A row whose lead score cannot be mapped to a number: quarantined at the mapping stage.
fn bad_row(id: &str, n: u32) -> String {
    let good = row(id, n);
    good.replace(&format!(",{n},yes,"), ",high,yes,")
}

#[tokio::test]
async fn status_and_runs_show_what_the_cycle_did() {
    status_scenario(Backend::Sqlite).await;
}

#[tokio::test]
async fn status_and_runs_show_what_the_cycle_did_on_postgres() {
    status_scenario(Backend::Postgres).await;
}

async fn status_scenario(backend: Backend) {
    let mut all = rows(3);
    all.push(bad_row("q-1", 9));
    let Some(app) = TestApp::spawn_on(backend, &csv(&all), SandboxConfig::default(), "").await
    else {
        return;
    };
    let report = app.cycle().await;
    assert_eq!((report.counts.created, report.counts.quarantined), (3, 1));
    let cfg = &app.config_path;

    let text = cli_ok(cfg, &["status"], 0).await;
    assert!(text.contains("records       synced 3"), "{text}");
    assert!(text.contains("quarantined   1"), "{text}");
    assert!(text.contains("oldest      q-1"), "{text}");
    assert!(text.contains("created 3"), "{text}");
    assert!(text.contains("reverse inbox 0 pending"), "{text}");
    assert!(text.contains("conflicts     0"), "{text}");

    let status = cli_json(cfg, &["status", "--json"], 0).await;
    assert_eq!(status["records"]["synced"], 3, "{status:#}");
    assert_eq!(status["quarantined"], 1);
    assert_eq!(status["oldest_quarantined"]["key"], "q-1");
    assert_eq!(status["oldest_quarantined"]["stage"], "mapping");
    assert_eq!(status["last_run"]["status"], "quarantined");
    assert_eq!(status["last_run"]["created"], 3);
    assert_eq!(status["last_run"]["quarantined"], 1);
    assert_eq!(status["pending_reverse_events"], 0);
    assert_eq!(status["conflicts"], 0);
    assert_eq!(status["last_error"], Value::Null);

    // A second cycle: two runs, newest first.
    app.cycle().await;
    let text = cli_ok(cfg, &["runs"], 0).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("STARTED"), "{text}");
    assert!(lines[2].contains("quarantined"), "{text}");
    let runs = cli_json(cfg, &["runs", "--json"], 0).await;
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["unchanged"], 3);
    assert_eq!(runs[0]["created"], 0);
    assert_eq!(runs[1]["created"], 3);
    assert_eq!(runs[1]["kind"], "once");
    assert!(runs[1]["requests"].as_i64().unwrap() >= 4, "{runs:#?}");
    let limited = cli_json(cfg, &["runs", "--json", "--limit", "1"], 0).await;
    assert_eq!(limited.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn quarantine_list_show_discard_and_retry() {
    quarantine_scenario(Backend::Sqlite).await;
}

#[tokio::test]
async fn quarantine_list_show_discard_and_retry_on_postgres() {
    quarantine_scenario(Backend::Postgres).await;
}

async fn quarantine_scenario(backend: Backend) {
    let mut all = rows(2);
    all.push(bad_row("q-1", 9));
    let Some(app) = TestApp::spawn_on(backend, &csv(&all), SandboxConfig::default(), "").await
    else {
        return;
    };
    app.cycle().await;
    let cfg = &app.config_path;

    let list = cli_ok(cfg, &["quarantine", "list"], 0).await;
    assert!(list.starts_with("KEY"), "{list}");
    let line = list
        .lines()
        .find(|l| l.starts_with("q-1"))
        .expect("q-1 listed");
    assert!(line.contains("mapping") && line.contains("high"), "{line}");
    let shown = cli_json(cfg, &["quarantine", "show", "q-1"], 0).await;
    assert_eq!(shown["key"], "q-1");
    assert_eq!(shown["external_id"], "q-1");
    assert_eq!(shown["value"], "high");
    assert!(
        shown["raw"].as_str().unwrap().contains("First9"),
        "{shown:#}"
    );
    let (code, _, stderr) = cli(cfg, &["quarantine", "show", "nope"]).await;
    assert_ne!(code, 0);
    assert!(stderr.contains("nope"), "{stderr}");

    // Discard needs --yes: without it, exit 2 and nothing changes.
    let (code, _, stderr) = cli(cfg, &["quarantine", "discard", "q-1"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert!(
        app.ledger().quarantined().await.unwrap()[0]
            .discarded_at
            .is_none()
    );
    let out = cli_ok(cfg, &["quarantine", "discard", "q-1", "--yes"], 0).await;
    assert!(out.contains("discarded q-1"), "{out}");
    let list = cli_ok(cfg, &["quarantine", "list"], 0).await;
    assert!(!list.contains("q-1"), "{list}");
    let status = cli_json(cfg, &["status", "--json"], 0).await;
    assert_eq!(status["quarantined"], 0);
    assert_eq!(status["oldest_quarantined"], Value::Null);
    let all_list = cli_ok(cfg, &["quarantine", "list", "--all"], 0).await;
    assert!(
        all_list.contains("q-1") && all_list.contains("(discarded)"),
        "{all_list}"
    );
    let json_all = cli_json(cfg, &["quarantine", "list", "--all", "--json"], 0).await;
    assert!(json_all[0]["discarded_at"].is_string());
    let (code, _, _) = cli(cfg, &["quarantine", "discard", "nope", "--yes"]).await;
    assert_ne!(code, 0);

    // Fix the row in the CRM, retry: synced, exit 0, quarantine empty.
    let mut fixed = rows(2);
    fixed.push(row("q-1", 9));
    app.write_csv(&csv(&fixed));
    let out = cli_ok(cfg, &["quarantine", "retry", "q-1"], 0).await;
    assert!(out.contains("q-1: synced"), "{out}");
    assert_eq!(app.sandbox.count_by_external_id("q-1"), 1);
    assert_eq!(
        app.contact_for("q-1")["defaultFields"]["firstName"],
        "First9"
    );
    assert!(app.ledger().quarantined_all().await.unwrap().is_empty());
    let list = cli_ok(cfg, &["quarantine", "list", "--all"], 0).await;
    assert_eq!(list.lines().count(), 1, "{list}");
    let row = app
        .ledger()
        .record(&ExternalId::parse("q-1").unwrap())
        .await
        .unwrap()
        .expect("ledger row");
    assert_eq!(row.state.as_str(), "synced");
}

#[tokio::test]
async fn retry_all_and_retry_usage() {
    let mut all = rows(1);
    all.push(bad_row("q-1", 8));
    all.push(bad_row("q-2", 9));
    let app = TestApp::spawn(&csv(&all)).await;
    app.cycle().await;
    let cfg = &app.config_path;
    assert_eq!(app.ledger().quarantined().await.unwrap().len(), 2);

    // Neither a key nor --all: usage, exit 2.
    assert_eq!(cli(cfg, &["quarantine", "retry"]).await.0, 2);
    // Still broken: exit 3, still quarantined.
    let out = cli_ok(cfg, &["quarantine", "retry", "q-1"], 3).await;
    assert!(out.contains("q-1: still quarantined"), "{out}");
    // An unknown key is an error, not "synced".
    let (code, stdout, stderr) = cli(cfg, &["quarantine", "retry", "nope"]).await;
    assert_ne!(code, 0, "{stdout}");
    assert!(!stdout.contains("synced"), "{stdout}");
    assert!(stderr.contains("nope"), "{stderr}");

    let mut fixed = rows(1);
    fixed.push(row("q-1", 8));
    fixed.push(row("q-2", 9));
    app.write_csv(&csv(&fixed));
    let out = cli_ok(cfg, &["quarantine", "retry", "--all"], 0).await;
    assert!(
        out.contains("q-1: synced") && out.contains("q-2: synced"),
        "{out}"
    );
    assert_eq!(app.sandbox.count_by_external_id("q-1"), 1);
    assert_eq!(app.sandbox.count_by_external_id("q-2"), 1);
    assert!(app.ledger().quarantined_all().await.unwrap().is_empty());
    let status = cli_json(cfg, &["status", "--json"], 0).await;
    assert_eq!(status["records"]["synced"], 3, "{status:#}");
    assert_eq!(status["last_run"]["status"], "ok");
}

#[tokio::test]
async fn conflicts_show_a_real_conflict() {
    let app = TestApp::spawn_conflict("crm", "2001-01-01T00:00:00Z").await;
    app.cycle().await;
    let cfg = &app.config_path;

    let conflicts = cli_json(cfg, &["conflicts", "--json"], 0).await;
    let conflicts = conflicts.as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:#?}");
    let c = &conflicts[0];
    assert_eq!(c["external_id"], "r-1");
    assert_eq!(c["field"], "company");
    assert_eq!(c["crm_value"], "\"CRM Co\"");
    assert_eq!(c["quo_value"], "\"Quo Co\"");
    assert_eq!(c["base_value"], "\"Acme 1\"");
    assert_eq!(c["winner"], "crm");
    assert_eq!(c["policy"], "crm");
    assert!(c["run_id"].is_string());

    let text = cli_ok(cfg, &["conflicts"], 0).await;
    let line = text.lines().nth(1).expect("one conflict line");
    assert!(line.contains("r-1") && line.contains("company"), "{line}");
    assert!(line.contains("\"CRM Co\" -> \"Quo Co\""), "{line}");
    let status = cli_json(cfg, &["status", "--json"], 0).await;
    assert_eq!(status["conflicts"], 1);
}

#[tokio::test]
async fn reconcile_finds_orphans_duplicates_missing_and_drift_and_repair_deletes_nothing() {
    let app = TestApp::spawn(&csv(&rows(4))).await;
    app.cycle().await;
    let cfg = &app.config_path;

    // An orphan: ours by source, unknown to the ledger and the CRM.
    let orphan = app.sandbox.app_create(
        json!({"defaultFields": {"firstName": "Orphan"}, "externalId": "orph-1"}),
        "quo-sync",
    );
    // A duplicate of r-2, made after ours.
    let dup = app.sandbox.app_create(
        json!({"defaultFields": {"firstName": "Dup"}, "externalId": "r-2"}),
        "quo-sync",
    );
    // r-3's contact deleted in the Quo app; r-4 edited there.
    let r3 = app.quo_id("r-3");
    assert!(app.sandbox.app_delete(&r3));
    app.sandbox
        .app_edit(
            &app.quo_id("r-4"),
            json!({"defaultFields": {"company": "Drifted"}}),
        )
        .unwrap();
    let contacts_before = app.sandbox.contacts().len();
    app.sandbox.reset_stats();

    let report = cli_json(cfg, &["reconcile", "--json"], 0).await;
    assert_eq!(report["repaired"], false);
    assert_eq!(report["contacts_in_quo"], contacts_before);
    assert_eq!(report["records_in_source"], 4);
    assert_eq!(report["linked"], 3, "{report:#}");
    assert_eq!(report["orphans"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(report["orphans"][0]["external_id"], "orph-1");
    assert_eq!(report["orphans"][0]["quo_id"], orphan["id"]);
    assert_eq!(report["orphans"][0]["in_source"], false);
    assert_eq!(report["missing_in_quo"], json!([["r-3", r3]]));
    let dups = report["duplicates"]["r-2"]
        .as_array()
        .expect("r-2 duplicated");
    assert_eq!(dups.len(), 2);
    assert_eq!(dups[1], dup["id"], "newest last");
    assert_eq!(report["drift"]["r-4"], json!(["company"]), "{report:#}");
    assert_eq!(report["drift"].as_object().unwrap().len(), 1, "{report:#}");
    // Read-only: no writes to Quo and nothing new in the ledger.
    assert_eq!(app.sandbox.stats().writes_total(), 0);
    assert!(
        app.ledger()
            .record(&ExternalId::parse("orph-1").unwrap())
            .await
            .unwrap()
            .is_none()
    );

    let text = cli_ok(cfg, &["reconcile"], 0).await;
    assert!(text.contains("orphans                      1"), "{text}");
    assert!(text.contains("  orphan     orph-1"), "{text}");
    assert!(text.contains(&format!("  missing    r-3 {r3}")), "{text}");
    assert!(text.contains("  duplicate  r-2"), "{text}");
    assert!(text.contains("  drift      r-4 company"), "{text}");
    assert!(text.contains("read-only"), "{text}");

    // Repair deletes nothing, and leaves an orphan the CRM does not have unadopted (adopting it
    // would let `on_source_delete = "delete"` remove it); it stays listed for the operator.
    let repaired = cli_json(cfg, &["reconcile", "--repair", "--json"], 0).await;
    assert_eq!(repaired["repaired"], true);
    assert_eq!(repaired["adopted"], 0, "{repaired:#}");
    assert_eq!(repaired["orphans"][0]["external_id"], "orph-1");
    assert_eq!(app.sandbox.stats().writes.deletes, 0);
    assert_eq!(app.sandbox.contacts().len(), contacts_before);
    assert_eq!(app.sandbox.count_by_external_id("r-2"), 2);
    assert!(
        app.ledger()
            .record(&ExternalId::parse("orph-1").unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // Once the CRM has the record, repair adopts the orphan.
    let mut with_orphan = rows(4);
    with_orphan.push(row("orph-1", 9));
    app.write_csv(&csv(&with_orphan));
    let repaired = cli_json(cfg, &["reconcile", "--repair", "--json"], 0).await;
    assert_eq!(repaired["adopted"], 1, "{repaired:#}");
    assert_eq!(repaired["orphans"], json!([]));
    let adopted = app
        .ledger()
        .record(&ExternalId::parse("orph-1").unwrap())
        .await
        .unwrap()
        .expect("orphan adopted");
    assert_eq!(
        adopted.quo_id.map(|q| q.as_str().to_string()),
        orphan["id"].as_str().map(str::to_string)
    );
}

#[tokio::test]
async fn a_lost_ledger_is_rebuilt_by_repair_and_the_next_cycle_creates_nothing() {
    let n = 15;
    let mut app = TestApp::spawn(&csv(&rows(n))).await;
    app.cycle().await;
    let ids: Vec<String> = (1..=n).map(|i| format!("r-{i}")).collect();
    let quo_ids: Vec<String> = ids.iter().map(|id| app.quo_id(id)).collect();

    // The ledger is lost: the file and its WAL and shared memory.
    app.ledger().close().await;
    let ledger = app.dir.path().join("ledger.db");
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", ledger.display());
        let _ = std::fs::remove_file(&path);
        assert!(!Path::new(&path).exists());
    }

    let report = cli_json(&app.config_path, &["reconcile", "--repair", "--json"], 0).await;
    assert_eq!(report["adopted"], n, "{report:#}");
    assert_eq!(report["orphans"], json!([]));
    assert_eq!(app.sandbox.stats().writes.deletes, 0);

    app.restart().await;
    for (id, quo_id) in ids.iter().zip(&quo_ids) {
        let row = app
            .ledger()
            .record(&ExternalId::parse(id).unwrap())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("ledger row for {id}"));
        assert_eq!(
            row.quo_id.as_ref().map(|q| q.as_str()),
            Some(quo_id.as_str())
        );
        assert_eq!(row.state.as_str(), "synced");
    }

    app.sandbox.reset_stats();
    let cycle = app.cycle().await;
    let stats = app.sandbox.stats();
    assert_eq!(stats.writes.creates, 0, "{stats:?} {cycle:?}");
    assert_eq!(stats.writes.deletes, 0, "{stats:?}");
    assert_eq!(cycle.counts.created, 0);
    app.assert_created_once(&ids).await;
    // Every CRM record equals Quo's copy, so a further cycle sends nothing at all.
    app.sandbox.reset_stats();
    app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0);
}

#[tokio::test]
async fn run_stops_cleanly_on_sigterm() {
    let app = TestApp::spawn(&csv(&rows(3))).await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["run", "--config"])
        .arg(&app.config_path)
        .env_remove("QUO_SYNC_CONFIG")
        .env("QUO_SYNC__SCHEDULE__INTERVAL", "200ms")
        .env("QUO_SYNC__LOG__FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.sandbox.contacts().len() < 3 {
        assert!(Instant::now() < deadline, "contacts never arrived");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().expect("pid").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("run stops within 10 s of SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("\"service_stopped\""), "{stderr}");
    assert!(stderr.contains("\"shutdown_requested\""), "{stderr}");
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    for i in 1..=3 {
        assert_eq!(app.sandbox.count_by_external_id(&format!("r-{i}")), 1);
    }
}

#[tokio::test]
async fn a_failed_cycle_is_one_clear_error_and_a_failed_run() {
    let app = TestApp::spawn(&csv(&rows(1))).await;
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(
        &app.config_path,
        config.replace(
            &format!("api_key = \"{}\"", app.sandbox.api_key()),
            "api_key = \"wrong-key\"",
        ),
    )
    .unwrap();
    let (code, _, stderr) = cli(&app.config_path, &["once"]).await;
    // A refused credential is the operator's to fix: exit 2, as for the CRM's (#22).
    assert_eq!(code, 2, "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("quo-sync: error:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(line.matches("refused the API key").count(), 1, "{line}");
    let status = cli_json(&app.config_path, &["status", "--json"], 0).await;
    assert_eq!(status["last_run"]["status"], "failed");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("refused the API key")
    );
}
