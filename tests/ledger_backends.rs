//! The ledger on both backends: the same calls give the same rows on SQLite and PostgreSQL,
//! `ledger copy` moves a ledger built by real cycles both ways (checked by counts and rows), and
//! a PostgreSQL URL's password never shows in output, errors or Debug.

mod common;

use std::path::Path;

use common::{Backend, TestApp, csv, row};
use quo_sync::domain::ExternalId;
use quo_sync::ledger::{
    Ledger, LedgerTarget, NewInboxEvent, NewQuarantine, PgUrl, QuarantineStage, RecordState,
    RunCounts,
};
use quo_sync::sandbox::SandboxConfig;

async fn open(backend: Backend, dir: &Path) -> Option<Ledger> {
    Some(match backend {
        Backend::Sqlite => Ledger::open(&dir.join("ledger.db")).await.unwrap(),
        Backend::Postgres => {
            let url = common::pg::database().await?;
            Ledger::connect(&PgUrl::parse(&url).unwrap()).await.unwrap()
        }
    })
}

async fn ledger_behaviour(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(ledger) = open(backend, dir.path()).await else {
        return;
    };
    ledger.ping().await.unwrap();

    // Records: an intent, counted by state, visible in the index.
    let a = ExternalId::parse("a-1").unwrap();
    ledger.record_intent(&a).await.unwrap();
    ledger.record_intent(&a).await.unwrap();
    let row = ledger.record(&a).await.unwrap().expect("intent row");
    assert_eq!(row.state, RecordState::PendingCreate);
    assert_eq!(row.quo_id, None);
    assert_eq!(
        ledger.count_by_state().await.unwrap(),
        vec![("pending_create".to_string(), 1)]
    );
    ledger.record_failure(&a, "boom").await.unwrap();
    ledger.record_failure(&a, "boom again").await.unwrap();
    let row = ledger.record(&a).await.unwrap().unwrap();
    assert_eq!(
        (row.attempts, row.last_error.as_deref()),
        (2, Some("boom again"))
    );
    let index = ledger.load_index().await.unwrap();
    assert_eq!(index.len(), 1);
    assert!(!index["a-1"].has_quo_id);
    assert_eq!(index["a-1"].state, RecordState::PendingCreate);
    ledger.forget(&a).await.unwrap();
    assert!(ledger.record(&a).await.unwrap().is_none());

    // Quarantine: attempts count once per run, unseen entries leave, discard hides.
    let bad = NewQuarantine {
        external_id: Some("q-1"),
        location: "contacts.csv:3",
        stage: QuarantineStage::Mapping,
        field: Some("lead_score"),
        value: Some("high"),
        reason: "not a number",
        raw: Some("q-1,high"),
    };
    assert_eq!(
        ledger.quarantine(bad.clone(), "run-1").await.unwrap(),
        "q-1"
    );
    ledger.quarantine(bad.clone(), "run-1").await.unwrap();
    ledger.quarantine(bad.clone(), "run-2").await.unwrap();
    let entry = ledger.quarantined_one("q-1").await.unwrap().unwrap();
    assert_eq!(entry.attempts, 2, "{entry:?}");
    assert_eq!(entry.value.as_deref(), Some("high"));
    ledger
        .quarantine(
            NewQuarantine {
                external_id: None,
                location: "contacts.csv:9",
                stage: QuarantineStage::Read,
                ..bad.clone()
            },
            "run-1",
        )
        .await
        .unwrap();
    assert_eq!(ledger.quarantined_count().await.unwrap(), 2);
    assert_eq!(ledger.release_unseen("run-2").await.unwrap(), 1);
    assert!(ledger.discard("q-1").await.unwrap());
    assert_eq!(ledger.quarantined_count().await.unwrap(), 0);
    assert_eq!(ledger.quarantined_all().await.unwrap().len(), 1);
    assert!(!ledger.discard("nope").await.unwrap());
    assert!(ledger.release("q-1").await.unwrap());

    // Inbox: a redelivery is recognised, pending in arrival order, pruned once applied.
    for id in ["e-2", "e-1", "e-3"] {
        let put = ledger
            .inbox_put(NewInboxEvent {
                event_id: id,
                event_type: "contact.updated",
                quo_id: Some("q"),
                payload: "{}",
            })
            .await
            .unwrap();
        assert!(put);
    }
    let again = NewInboxEvent {
        event_id: "e-1",
        event_type: "contact.updated",
        quo_id: None,
        payload: "{}",
    };
    assert!(!ledger.inbox_put(again).await.unwrap(), "redelivery");
    assert_eq!(ledger.inbox_depth().await.unwrap(), 3);
    let pending = ledger.inbox_pending(10).await.unwrap();
    let ids: Vec<&str> = pending.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    ledger.inbox_done("e-2", "applied").await.unwrap();
    assert_eq!(ledger.inbox_depth().await.unwrap(), 2);
    assert_eq!(ledger.inbox_prune("9999-01-01T00:00:00Z").await.unwrap(), 1);

    // Runs and conflicts.
    ledger.start_run("run-a", "once").await.unwrap();
    let counts = RunCounts {
        created: 5,
        requests: 9,
        ..RunCounts::default()
    };
    ledger
        .finish_run("run-a", "ok", &counts, 1234, None)
        .await
        .unwrap();
    ledger.start_run("run-b", "run").await.unwrap();
    let runs = ledger.recent_runs(10).await.unwrap();
    assert_eq!(runs.len(), 2);
    let finished = ledger.last_finished_run().await.unwrap().unwrap();
    assert_eq!(
        (finished.id.as_str(), finished.created, finished.duration_ms),
        ("run-a", 5, 1234)
    );
    let v = serde_json::json!("x");
    ledger
        .record_conflict("c-1", "company", &v, &v, &v, "crm", "crm", Some("run-a"))
        .await
        .unwrap();
    let conflicts = ledger.conflicts(10).await.unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].id, 1);
    assert_eq!(ledger.conflict_count().await.unwrap(), 1);

    // Meta.
    ledger.set_meta("k", "v1").await.unwrap();
    ledger.set_meta("k", "v2").await.unwrap();
    assert_eq!(ledger.meta("k").await.unwrap().as_deref(), Some("v2"));
    ledger.delete_meta(&["k"]).await.unwrap();
    assert_eq!(ledger.meta("k").await.unwrap(), None);
    ledger.close().await;
}

#[tokio::test]
async fn ledger_calls_behave_the_same_on_sqlite() {
    ledger_behaviour(Backend::Sqlite).await;
}

#[tokio::test]
async fn ledger_calls_behave_the_same_on_postgres() {
    ledger_behaviour(Backend::Postgres).await;
}

/// Runs the real binary without blocking the runtime the sandbox serves on; returns
/// (exit code, stdout, stderr).
async fn cli(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
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

/// Every table's rows, as comparable text, for comparing two ledgers.
async fn dump(ledger: &Ledger) -> Vec<String> {
    let mut out: Vec<String> = ledger
        .all_records()
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    out.extend(
        ledger
            .recent_runs(1000)
            .await
            .unwrap()
            .iter()
            .map(|r| format!("{r:?}")),
    );
    out.extend(
        ledger
            .quarantined_all()
            .await
            .unwrap()
            .iter()
            .map(|r| format!("{r:?}")),
    );
    out.extend(
        ledger
            .conflicts(1000)
            .await
            .unwrap()
            .iter()
            .map(|r| format!("{r:?}")),
    );
    out
}

#[tokio::test]
async fn ledger_copy_moves_a_real_ledger_to_postgres_and_back() {
    let Some(url) = common::pg::database().await else {
        return;
    };
    let mut rows: Vec<String> = (1..=12).map(|i| row(&format!("c-{i}"), i)).collect();
    rows.push(row("q-1", 99).replace(",99,yes,", ",high,yes,"));
    let app = TestApp::spawn_with(&csv(&rows), SandboxConfig::default(), "").await;
    app.cycle().await;
    rows[0] = rows[0].replace("Acme 1", "Globex");
    app.write_csv(&csv(&rows));
    let report = app.cycle().await;
    assert_eq!(report.counts.updated, 1, "{report:?}");
    app.cycle().await;
    let source = dump(app.ledger()).await;
    let source_counts = app.ledger().table_counts().await.unwrap();
    assert!(
        source_counts
            .iter()
            .any(|(t, n)| t == "records" && *n == 12),
        "{source_counts:?}"
    );
    assert!(
        source_counts
            .iter()
            .any(|(t, n)| t == "quarantine" && *n == 1),
        "{source_counts:?}"
    );
    app.ctx.ledger.close().await;

    // SQLite -> PostgreSQL, through the binary.
    let (code, stdout, stderr) =
        cli(&app.config_path, &["ledger", "copy", "--to", &url], &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("row counts checked"), "{stdout}");
    for (table, n) in &source_counts {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{table} ")))
            .unwrap_or_else(|| panic!("{table} missing: {stdout}"));
        assert!(line.contains(&format!(" {n} rows")), "{line}");
    }
    let pg = Ledger::connect(&PgUrl::parse(&url).unwrap()).await.unwrap();
    assert_eq!(dump(&pg).await, source, "PostgreSQL holds the same rows");
    assert_eq!(pg.table_counts().await.unwrap(), source_counts);
    // Conflicts keep counting past the copied ids.
    let v = serde_json::json!(1);
    pg.record_conflict("c-1", "f", &v, &v, &v, "crm", "crm", None)
        .await
        .unwrap();
    pg.close().await;

    // A non-empty target is refused, naming the problem.
    let (code, stdout, stderr) =
        cli(&app.config_path, &["ledger", "copy", "--to", &url], &[]).await;
    assert_ne!(code, 0, "{stdout}");
    assert!(stderr.contains("not empty"), "{stderr}");

    // A cycle runs on the copy with nothing to do: the ids moved with it.
    let pg_config = app.dir.path().join("pg.toml");
    let text = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(
        &pg_config,
        text.replace("[ledger]", &format!("[ledger]\nurl = \"{url}\"")),
    )
    .unwrap();
    app.sandbox.reset_stats();
    let (code, stdout, stderr) = cli(&pg_config, &["once"], &[]).await;
    assert_eq!(code, 3, "one record stays quarantined\n{stdout}\n{stderr}");
    assert_eq!(
        app.sandbox.stats().writes_total(),
        0,
        "no creates on the copied ledger"
    );

    // PostgreSQL -> SQLite.
    let back = app.dir.path().join("back.db");
    let (code, stdout, stderr) = cli(
        &pg_config,
        &["ledger", "copy", "--to", back.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let pg = Ledger::connect(&PgUrl::parse(&url).unwrap()).await.unwrap();
    let sqlite = Ledger::open(&back).await.unwrap();
    assert_eq!(dump(&sqlite).await, dump(&pg).await);
    assert_eq!(
        sqlite.table_counts().await.unwrap(),
        pg.table_counts().await.unwrap()
    );
    pg.close().await;
    sqlite.close().await;
}

#[tokio::test]
async fn a_postgres_password_never_shows() {
    let Some(url) = common::pg::database().await else {
        return;
    };
    // The throwaway cluster trusts loopback, so any password connects: it must still stay hidden.
    let secret = "s3cret-Pw-77";
    let with_password = url.replace("postgres@", &format!("postgres:{secret}@"));
    let parsed = PgUrl::parse(&with_password).unwrap();
    assert!(!format!("{parsed:?} {parsed}").contains(secret));
    let target = LedgerTarget::parse(&with_password).unwrap();
    assert!(!format!("{target:?} {target}").contains(secret));
    assert!(format!("{target}").starts_with("postgres://postgres@127.0.0.1:"));
    let ledger = Ledger::open_target(&target).await.unwrap();
    assert!(!format!("{ledger:?}").contains(secret), "{ledger:?}");
    assert!(ledger.path().starts_with("postgres://postgres@127.0.0.1:"));
    ledger.close().await;

    let app = TestApp::spawn(&csv(&[row("c-1", 1)])).await;
    let text = std::fs::read_to_string(&app.config_path).unwrap();
    let config = app.dir.path().join("pg.toml");
    std::fs::write(
        &config,
        text.replace("[ledger]", &format!("[ledger]\nurl = \"{with_password}\"")),
    )
    .unwrap();
    let parsed_config =
        quo_sync::config::Config::load_with_env(&config, std::iter::empty()).unwrap();
    assert!(!format!("{parsed_config:?}").contains(secret));

    let (code, stdout, stderr) = cli(&config, &["check-config"], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("ledger {}", parsed)), "{stdout}");
    let (code, stdout, stderr) =
        cli(&config, &["once"], &[("QUO_SYNC__LOG__LEVEL", "debug")]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        app.sandbox.contacts().len(),
        1,
        "synced through the PostgreSQL ledger"
    );
    assert_eq!(
        stderr.matches("ledger.path is ignored").count(),
        1,
        "one line says so: {stderr}"
    );
    let (code, status, _) = cli(&config, &["status", "--json"], &[]).await;
    assert_eq!(code, 0);
    for out in [&stdout, &stderr, &status] {
        assert!(!out.contains(secret), "{out}");
    }

    // The URL from a secret file, overridden by env to a closed port: the error names the
    // database, never the password.
    let url_file = app.dir.path().join("ledger-url");
    let dead = format!("postgres://postgres:{secret}@127.0.0.1:1/nowhere");
    std::fs::write(&url_file, format!("{dead}\n")).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "[ledger]",
            &format!("[ledger]\nurl_file = \"{}\"", url_file.display()),
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = cli(&config, &["status"], &[]).await;
    assert_ne!(code, 0, "{stdout}");
    assert!(
        stderr.contains("cannot open ledger postgres://postgres@127.0.0.1:1/nowhere"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(secret) && !stdout.contains(secret),
        "{stderr}"
    );
    let (code, _, stderr) = cli(
        &config,
        &["status"],
        &[("QUO_SYNC__LEDGER__URL", with_password.as_str())],
    )
    .await;
    assert_eq!(code, 0, "the env override wins over url_file: {stderr}");
}

/// A leader's fenced ledger: its writes pass while it holds the lease and are refused by the
/// database once another process took over, while unfenced writers (a standby storing a
/// webhook) still write.
async fn fencing(backend: Backend) {
    use quo_sync::ledger::{Candidate, LeaderLease};
    let dir = tempfile::tempdir().unwrap();
    let Some(ledger) = open(backend, dir.path()).await else {
        return;
    };
    let lease = std::time::Duration::from_millis(1000);
    let held = LeaderLease::try_acquire(&ledger, &Candidate::this_process("run"), lease)
        .await
        .unwrap();
    let fenced = ledger.fenced(&held).await.unwrap();
    fenced.set_meta("k", "1").await.unwrap();
    // A pause: renewals stop (dropping the lease stops them without releasing), it expires,
    // another process takes over.
    drop(held);
    tokio::time::sleep(lease + std::time::Duration::from_millis(100)).await;
    assert!(fenced.ensure_leader().is_err(), "the local deadline passed");
    let _other = LeaderLease::try_acquire(&ledger, &Candidate::this_process("run"), lease)
        .await
        .unwrap();
    let err = fenced.set_meta("k", "2").await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert_eq!(ledger.meta("k").await.unwrap().as_deref(), Some("1"));
    ledger.set_meta("k", "3").await.unwrap();
    assert_eq!(ledger.meta("k").await.unwrap().as_deref(), Some("3"));
}

#[tokio::test]
async fn a_stale_leaders_writes_are_refused_on_sqlite() {
    fencing(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_stale_leaders_writes_are_refused_on_postgres() {
    fencing(Backend::Postgres).await;
}
