//! Two-way integrity: nothing typed on either side is lost, reverted or doubled, whatever Quo's
//! PATCH does to arrays, whatever answers get lost, and whatever a server puts in a header.

mod common;

use std::time::Duration;

use common::{TestApp, csv, custom_value, free_addr, items, poll, readyz};
use quo_sync::ledger::RecordState;
use quo_sync::sandbox::{Fault, PatchMode, SandboxConfig};
use serde_json::json;

fn rows(n: u32) -> Vec<String> {
    (1..=n).map(|i| common::row(&format!("c-{i}"), i)).collect()
}

fn with_mode(mode: PatchMode) -> SandboxConfig {
    SandboxConfig {
        patch_mode: mode,
        ..SandboxConfig::default()
    }
}

/// The reverse path is off (or its webhook was missed): the only copy of Quo the ledger has is
/// the one from the last write. A CRM edit must not send that stale copy back.
async fn app_edits_survive_a_crm_driven_patch(mode: PatchMode) {
    let app = TestApp::spawn_with(
        &csv(&rows(3)),
        with_mode(mode),
        "[reverse]\nenabled = false\n",
    )
    .await;
    app.cycle().await;
    let id = app.contact_for("c-2")["id"].as_str().unwrap().to_string();
    app.sandbox
        .app_edit(
            &id,
            json!({"defaultFields": {"emails": [{"name": "home", "value": "home2@example.com"}]},
                   "customFields": [{"key": "notes", "value": "call after 5pm"}]}),
        )
        .expect("app edit");
    let mut changed = rows(3);
    changed[1] = changed[1].replace("Acme 2", "Globex");
    app.write_csv(&csv(&changed));
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(report.counts.updated, 1);

    let contact = app.contact_for("c-2");
    assert_eq!(contact["defaultFields"]["company"], "Globex");
    assert_eq!(custom_value(&contact, "notes"), json!("call after 5pm"));
    assert!(
        items(&contact, "emails").contains(&("home".into(), "home2@example.com".into())),
        "{:?}",
        items(&contact, "emails")
    );
    // One batched read and one PATCH: freshness costs one request per 50 updates.
    let stats = app.sandbox.stats();
    assert_eq!(stats.writes_total(), 1, "{stats:?}");
    assert_eq!(
        stats.by_route_status.get("GET /v1/contacts 200"),
        Some(&1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn app_edits_survive_a_crm_driven_patch_under_replace_semantics() {
    app_edits_survive_a_crm_driven_patch(PatchMode::Replace).await;
}

#[tokio::test]
async fn app_edits_survive_a_crm_driven_patch_under_merge_semantics() {
    app_edits_survive_a_crm_driven_patch(PatchMode::Merge).await;
}

/// A managed field edited in Quo after our last read (no webhook, no scan due), and another
/// edited in the CRM: the PATCH must merge, not send the ledger's old value back over Quo's
/// edit; Quo's edit goes to the CRM.
#[tokio::test]
async fn a_quo_edit_made_since_our_copy_is_merged_before_the_patch() {
    let app = TestApp::spawn_with(
        &csv(&rows(2)),
        with_mode(PatchMode::Replace),
        "[reverse]\npoll_interval = \"1h\"\n",
    )
    .await;
    app.cycle().await;
    let contact = app.contact_for("c-1");
    let id = contact["id"].as_str().unwrap().to_string();
    let mut emails = contact["defaultFields"]["emails"].clone();
    emails[0]["value"] = json!("typed-in-quo@example.com");
    app.sandbox
        .app_edit(&id, json!({"defaultFields": {"emails": emails}}))
        .expect("app edit");
    let mut changed = rows(2);
    changed[0] = changed[0].replace("Acme 1", "Initech");
    app.write_csv(&csv(&changed));
    app.cycle().await;
    let contact = app.contact_for("c-1");
    assert_eq!(contact["defaultFields"]["company"], "Initech");
    assert_eq!(
        items(&contact, "emails"),
        vec![("email".to_string(), "typed-in-quo@example.com".to_string())],
        "the Quo-side edit is kept"
    );
    let text = std::fs::read_to_string(&app.csv_path).unwrap();
    assert!(
        text.contains("typed-in-quo@example.com"),
        "and reaches the CRM: {text}"
    );
    // Both sides agree now: nothing more to send.
    app.sandbox.reset_stats();
    app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0);
}

/// Under merge semantics an item without `id` is appended each time a PATCH is applied: a
/// PATCH whose answer is lost must be read back, never resent blindly.
#[tokio::test]
async fn a_lost_patch_answer_never_doubles_an_added_email_or_phone() {
    let app = TestApp::spawn_with(&csv(&rows(6)), with_mode(PatchMode::Merge), "").await;
    app.cycle().await;
    let changed: Vec<String> = rows(6)
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // Add a work email and a mobile to every record.
            let mut fields: Vec<String> = r.split(',').map(str::to_string).collect();
            fields[6] = format!("work{i}@example.com");
            fields[8] = format!("(415) 555-{:04}", 2000 + i);
            fields.join(",")
        })
        .collect();
    app.write_csv(&csv(&changed));
    app.sandbox.inject(Fault::DropAfterWrite { count: 6 });
    let report = app.cycle().await;
    assert_eq!(report.counts.quarantined, 0);
    assert_eq!(app.sandbox.stats().dropped_connections, 6);
    for (i, id) in (1..=6).map(|i| format!("c-{i}")).enumerate() {
        let contact = app.contact_for(&id);
        let works: Vec<_> = items(&contact, "emails")
            .into_iter()
            .filter(|(name, _)| name == "work")
            .collect();
        assert_eq!(
            works,
            vec![("work".into(), format!("work{i}@example.com"))],
            "{id}"
        );
        let mobiles: Vec<_> = items(&contact, "phoneNumbers")
            .into_iter()
            .filter(|(name, _)| name == "mobile")
            .collect();
        assert_eq!(mobiles.len(), 1, "{id}: {mobiles:?}");
    }
    // And the ledger learned the new items' ids: the next cycle sends nothing.
    app.sandbox.reset_stats();
    app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0);
}

/// `Retry-After: 18446744073709551615` once crashed the process building a `Duration`. Both it
/// and a plausible ten minutes are clamped to `quo.max_backoff` (50 ms here): the cycle takes
/// about 0.1 s, and the 5 s bound fails anything that honours even one of them for longer than
/// 2.5 s (the policy's own 30 s cap, a day, the header as sent).
#[tokio::test]
async fn a_hostile_retry_after_is_clamped_and_the_cycle_completes() {
    let app = TestApp::spawn(&csv(&rows(3))).await;
    for retry_after in [u64::MAX, 600] {
        app.sandbox.inject(Fault::Status {
            status: 429,
            count: 1,
            retry_after: Some(retry_after),
        });
    }
    let started = std::time::Instant::now();
    let report = tokio::time::timeout(std::time::Duration::from_secs(10), app.cycle())
        .await
        .expect("a Retry-After honoured past max_backoff stalls the cycle");
    let took = started.elapsed();
    assert_eq!(report.counts.created, 3);
    assert_eq!(report.counts.rate_limited, 2);
    assert_eq!(app.sandbox.fault_counters().status_answers, 2);
    assert!(
        took < std::time::Duration::from_secs(5),
        "two 429s with Retry-After clamped to 50 ms took {took:?}"
    );
}

/// A recreate after a 404 goes through an intent: a POST that landed but whose answer was
/// lost (and retries ran out) is adopted next cycle, never created again.
#[tokio::test]
async fn a_recreate_whose_answer_is_lost_is_adopted_not_duplicated() {
    let mut app = TestApp::spawn_with(
        &csv(&rows(2)),
        SandboxConfig {
            conflict_on_duplicate: false,
            ..SandboxConfig::default()
        },
        "[reverse]\nenabled = false\non_quo_delete = \"recreate\"\n",
    )
    .await;
    app.cycle().await;
    let id = app.contact_for("c-1")["id"].as_str().unwrap().to_string();
    assert!(app.sandbox.app_delete(&id));
    let mut changed = rows(2);
    changed[0] = changed[0].replace("Acme 1", "Umbrella");
    app.write_csv(&csv(&changed));
    // No retries: an unknown outcome stays unresolved in this process.
    app.restart_without_retries().await;
    app.sandbox.inject(Fault::DropAfterWrite { count: 1 });
    let report = app.cycle().await;
    assert_eq!(report.counts.quarantined, 1);
    assert_eq!(
        app.sandbox.fault_counters().dropped_after_write,
        1,
        "the recreate's answer was lost"
    );
    let row = app.row("c-1").await;
    assert_eq!(
        row.state,
        RecordState::PendingCreate,
        "the dead id is forgotten, the intent kept"
    );
    assert!(row.quo_id.is_none());

    app.cycle().await;
    app.cycle().await;
    assert_eq!(
        app.sandbox.count_by_external_id("c-1"),
        1,
        "one contact, adopted"
    );
    let contact = app.contact_for("c-1");
    assert_eq!(contact["defaultFields"]["company"], "Umbrella");
    app.assert_one_contact_per_record(&["c-1".into(), "c-2".into()])
        .await;
}

/// Deleting more than `sync.max_delete_fraction` of the managed contacts in one cycle is
/// refused as a whole, until an operator allows it.
#[tokio::test]
async fn a_mass_deletion_is_refused_until_allowed() {
    let mut app = TestApp::spawn_with(
        &csv(&rows(20)),
        SandboxConfig::default(),
        "[sync]\non_source_delete = \"delete\"\nmax_delete_fraction = 0.1\n",
    )
    .await;
    app.cycle().await;
    // An export cut short: 15 of 20 rows are missing. The first read that misses them only
    // notes them; the second agrees, and the guard refuses.
    app.write_csv(&csv(&rows(5)));
    let report = app.cycle().await;
    assert!(!report.mass_delete_refused);
    assert_eq!(report.counts.deleted, 0);
    let report = app.cycle().await;
    assert!(report.mass_delete_refused);
    assert_eq!(report.status(), "mass_delete_refused");
    assert_eq!(report.counts.deleted, 0);
    assert_eq!(app.sandbox.contacts().len(), 20, "nothing deleted");

    // Two rows missing out of 20 is within 10% (and both were missing from the reads before).
    app.write_csv(&csv(&rows(18)));
    let report = app.cycle().await;
    assert!(!report.mass_delete_refused);
    assert_eq!(report.counts.deleted, 2);

    app.write_csv(&csv(&rows(5)));
    app.ctx.settings.allow_mass_delete = true;
    let report = app.cycle().await;
    assert_eq!(report.counts.deleted, 0, "first read that misses them");
    let report = app.cycle().await;
    assert_eq!(report.counts.deleted, 13);
    assert_eq!(app.sandbox.contacts().len(), 5);
    app.restart().await;
}

/// `quo-sync once --json [extra…]` on `app`'s config: exit code, the JSON report and stderr.
async fn once(app: &TestApp, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["once", "--json", "--config"])
        .arg(&app.config_path)
        .args(extra)
        .env_remove("QUO_SYNC_CONFIG")
        .env("QUO_SYNC__LOG__FORMAT", "json")
        .output()
        .await
        .expect("once runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("once --json: {e}\nstderr: {stderr}"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

/// The guard as the operator meets it: `once` exits 3 on a refused mass deletion (so cron or a
/// supervisor notices) and deletes nothing; `--allow-mass-delete` lifts the guard for that one
/// process, and the next plain `once` is guarded again.
#[tokio::test]
async fn once_exits_3_on_a_refused_mass_deletion_and_allow_mass_delete_lifts_it_for_one_run() {
    let app = TestApp::spawn_with(
        &csv(&rows(20)),
        SandboxConfig::default(),
        "[sync]\non_source_delete = \"delete\"\nmax_delete_fraction = 0.1\n",
    )
    .await;
    app.cycle().await;
    app.write_csv(&csv(&rows(5)));
    // A record is deleted only when two complete reads agree it is gone: the first read of the
    // short file only notes the absences.
    assert!(!app.cycle().await.mass_delete_refused);

    let (code, report, stderr) = once(&app, &[]).await;
    assert_eq!(code, 3, "refused: exit 3\n{stderr}");
    assert_eq!(report["mass_delete_refused"], true, "{report:#}");
    assert_eq!(report["counts"]["deleted"], 0, "{report:#}");
    assert!(stderr.contains("\"mass_delete_refused\""), "{stderr}");
    assert_eq!(app.sandbox.contacts().len(), 20, "nothing deleted");

    let (code, report, stderr) = once(&app, &["--allow-mass-delete"]).await;
    assert_eq!(code, 0, "allowed: exit 0\n{stderr}");
    assert_eq!(report["counts"]["deleted"], 15, "{report:#}");
    assert_eq!(report["mass_delete_refused"], false);
    assert_eq!(app.sandbox.contacts().len(), 5);

    // The allowance was for that process: 4 of the 5 left going is refused again.
    app.write_csv(&csv(&rows(1)));
    app.cycle().await; // the first read of it notes the absences
    let (code, report, stderr) = once(&app, &[]).await;
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(report["mass_delete_refused"], true, "{report:#}");
    assert_eq!(app.sandbox.contacts().len(), 5);
}

/// An export cut short leaves rows out for one cycle while a person edits one of their contacts
/// in Quo. The deletion is refused by the guard (or `on_source_delete` ignores it), and when the
/// rows are back the edit reaches the CRM. Found by the convergence test (seed 4): the change
/// was marked applied while its record was absent, and the scan never noticed it again.
#[tokio::test]
async fn a_quo_edit_made_while_its_row_is_missing_from_an_export_reaches_the_crm_later() {
    for on_source_delete in ["delete", "ignore"] {
        let app = TestApp::spawn_with(
            &csv(&rows(6)),
            SandboxConfig::default(),
            &format!(
                "[sync]\non_source_delete = \"{on_source_delete}\"\nmax_delete_fraction = 0.1\n\
                 [reverse]\npoll_interval = \"1ms\"\n"
            ),
        )
        .await;
        app.cycle().await;
        app.sandbox
            .app_edit(
                &app.quo_id("c-2"),
                json!({"defaultFields": {"company": "Typed While Missing"}}),
            )
            .expect("app edit");
        let all = rows(6);
        app.write_csv(&csv(&[all[0].clone(), all[4].clone(), all[5].clone()]));
        let report = app.cycle().await;
        // One cut-short read deletes nothing: deletions need two complete reads that agree.
        assert_eq!(report.counts.deleted, 0, "{on_source_delete}: {report:?}");
        app.write_csv(&csv(&all));
        app.cycle().await;
        assert!(
            app.csv_text().contains("Typed While Missing"),
            "{on_source_delete}: the Quo edit reached the CRM:\n{}",
            app.csv_text()
        );
        assert_eq!(
            app.contact_for("c-2")["defaultFields"]["company"],
            "Typed While Missing"
        );
        app.sandbox.reset_stats();
        app.cycle().await;
        assert_eq!(app.sandbox.stats().writes_total(), 0, "{on_source_delete}");
    }
}

/// A 401 met by a worker stops the cycle with an auth failure, and never passes for a
/// shutdown request (which once made `run` exit 0 as if stopped on purpose).
#[tokio::test]
async fn a_401_inside_a_worker_fails_the_cycle_without_requesting_shutdown() {
    // No scan in front: the requests after the custom-field read are the workers' POSTs.
    let app = TestApp::spawn_with(
        &csv(&rows(8)),
        SandboxConfig::default(),
        "[reverse]\nenabled = false\n",
    )
    .await;
    app.sandbox
        .set_latency(std::time::Duration::from_millis(40));
    let ctx = app.ctx.clone();
    let cycle =
        tokio::spawn(
            async move { quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply).await },
        );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !app
        .sandbox
        .stats()
        .by_route_status
        .contains_key("GET /v1/contact-custom-fields 200")
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    app.sandbox.inject(Fault::Status {
        status: 401,
        count: 1000,
        retry_after: None,
    });
    let error = cycle.await.unwrap().expect_err("the cycle fails");
    assert!(error.is_auth_failure(), "{error}");
    assert!(
        !app.ctx.cancel.is_cancelled(),
        "a refused key is not a shutdown request"
    );
}

/// `run` with a key Quo refuses from the start stops at once with exit code 2 and
/// `auth_failed`, however long `quo.auth_grace` is: a key this process never saw accepted is
/// configuration (the code of a refused CRM credential too, #22), which a supervisor does not
/// restart into. The key never appears in the logs.
#[tokio::test]
async fn run_exits_2_at_once_with_auth_failed_when_quo_never_accepted_the_key() {
    let app = TestApp::spawn(&csv(&rows(2))).await;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["run", "--config"])
        .arg(&app.config_path)
        .env_remove("QUO_SYNC_CONFIG")
        .env("QUO_SYNC__QUO__API_KEY", "not-the-key-q9z")
        .env("QUO_SYNC__QUO__AUTH_GRACE", "1h")
        .env("QUO_SYNC__SCHEDULE__INTERVAL", "100ms")
        .env("QUO_SYNC__LOG__FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run starts");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("run stops by itself, long before quo.auth_grace")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"auth_failed\""), "{stderr}");
    assert!(stderr.contains("before accepting it once"), "{stderr}");
    assert!(
        !stderr.contains("not-the-key-q9z"),
        "the key is never logged"
    );
}

/// `run` whose key worked and is then refused (a Quo auth incident, or a key revoked while it
/// runs): cycles back off and `/readyz` says not ready while `quo.auth_grace` runs, then the
/// service stops with `auth_failed` and exit code 1, which a supervisor restarts (#21 item 8
/// reconciled with #22's exit 2 for a credential that never worked).
#[tokio::test]
async fn run_exits_1_after_auth_grace_when_a_quo_key_that_worked_is_refused() {
    let app = TestApp::spawn(&csv(&rows(2))).await;
    let addr = free_addr();
    let log = app.dir.path().join("run.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["run", "--config"])
        .arg(&app.config_path)
        .env_remove("QUO_SYNC_CONFIG")
        .env("QUO_SYNC__QUO__AUTH_GRACE", "3s")
        .env("QUO_SYNC__SCHEDULE__INTERVAL", "200ms")
        .env("QUO_SYNC__SERVICE__LISTEN", addr.to_string())
        .env("QUO_SYNC__LOG__FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("run starts");
    poll("the first cycle and /readyz", async || {
        app.sandbox.contacts().len() == 2 && readyz(addr).await.0 == 200
    })
    .await;
    app.sandbox.inject(Fault::Status {
        status: 401,
        count: 1_000_000,
        retry_after: None,
    });
    let refused = std::time::Instant::now();
    poll("/readyz not ready while the key is refused", async || {
        let (status, body) = readyz(addr).await;
        status == 503 && body.contains("Quo refused the API key")
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running within the grace"
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("run stops by itself once quo.auth_grace has run out")
        .unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        refused.elapsed() >= Duration::from_millis(2500),
        "not before the grace: {:?}",
        refused.elapsed()
    );
    assert!(stderr.contains("\"auth_refused\""), "{stderr}");
    assert!(stderr.contains("\"auth_failed\""), "{stderr}");
    assert!(stderr.contains("quo.auth_grace (3s)"), "{stderr}");
}

/// A create whose answer was lost is adopted later; an edit made in Quo in between is merged
/// against what the POST sent, not overwritten by the CRM's copy (found by the convergence
/// test, seed 9).
#[tokio::test]
async fn an_adopted_contact_keeps_the_quo_edit_made_before_adoption() {
    let mut app = TestApp::spawn_with(
        &csv(&rows(2)),
        SandboxConfig {
            conflict_on_duplicate: false,
            ..SandboxConfig::default()
        },
        "[reverse]\npoll_interval = \"1h\"\n",
    )
    .await;
    // No retries: an unknown outcome stays unresolved in this process.
    app.restart_without_retries().await;
    app.sandbox.inject(Fault::DropAfterWrite { count: 2 });
    let report = app.cycle().await;
    assert_eq!(
        report.counts.quarantined, 2,
        "both answers lost, retries off"
    );
    assert_eq!(app.sandbox.fault_counters().dropped_after_write, 2);
    let id = app.contact_for("c-1")["id"].as_str().unwrap().to_string();
    app.sandbox
        .app_edit(
            &id,
            json!({"defaultFields": {"role": "Typed Before Adoption"}}),
        )
        .expect("app edit");
    app.cycle().await;
    app.cycle().await;
    let contact = app.contact_for("c-1");
    assert_eq!(contact["defaultFields"]["role"], "Typed Before Adoption");
    assert!(
        app.csv_text().contains("Typed Before Adoption"),
        "{}",
        app.csv_text()
    );
    app.assert_one_contact_per_record(&["c-1".into(), "c-2".into()])
        .await;
}

/// A scan pass cut short resumes from its page token after a restart instead of starting over,
/// and finds the in-app edits on every page.
#[tokio::test]
async fn a_scan_pass_resumes_after_a_restart() {
    let mut app = TestApp::spawn_with(
        &csv(&rows(120)),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"0s\"\n",
    )
    .await;
    app.cycle().await;
    for id in ["c-3", "c-70", "c-119"] {
        let quo_id = app.contact_for(id)["id"].as_str().unwrap().to_string();
        app.sandbox
            .app_edit(
                &quo_id,
                json!({"defaultFields": {"role": format!("Edited {id}")}}),
            )
            .unwrap();
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let first = quo_sync::reverse::scan::scan(
        app.ledger(),
        &app.ctx.client,
        Some(1),
        &stop,
        app.ctx.settings.delete_guard(),
    )
    .await
    .unwrap();
    assert_eq!((first.pages, first.complete), (1, false));
    app.restart().await;
    app.sandbox.reset_stats();
    let rest = quo_sync::reverse::scan::scan(
        app.ledger(),
        &app.ctx.client,
        None,
        &stop,
        app.ctx.settings.delete_guard(),
    )
    .await
    .unwrap();
    assert!(rest.complete);
    assert_eq!(
        rest.pages, 2,
        "120 contacts are 3 pages; one was already listed"
    );
    assert_eq!(
        app.sandbox
            .stats()
            .by_route_status
            .get("GET /v1/contacts 200"),
        Some(&2)
    );
    assert_eq!(first.notices + rest.notices, 3);
    // The notices are applied by the next cycle like webhook deliveries.
    let report = app.cycle().await;
    assert_eq!(report.counts.written_to_crm, 3);
    assert!(app.csv_text().contains("Edited c-119"));
}

async fn linked(app: &TestApp, id: &str) -> bool {
    let row = app.row(id).await;
    row.state == RecordState::Synced && row.quo_id.is_some()
}

/// A lagging list leaves contacts out for a while: absence is not deletion. Nothing is
/// unlinked, and the CRM's next edit still reaches Quo (the fresh read falls back to the id).
#[tokio::test]
async fn contacts_missing_from_a_lagging_list_are_confirmed_by_id_not_unlinked() {
    let app = TestApp::spawn_with(
        &csv(&rows(6)),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"1ms\"\non_quo_delete = \"unlink\"\n",
    )
    .await;
    app.cycle().await;
    let hidden: Vec<String> = ["c-2", "c-4", "c-6"]
        .iter()
        .map(|id| app.contact_for(id)["id"].as_str().unwrap().to_string())
        .collect();
    common::sandbox_fault(
        &app.sandbox.base_url(),
        json!({"kind": "lagging_list", "ids": hidden, "scope": "all"}),
    )
    .await;
    let report = app.cycle().await;
    assert_eq!(report.counts.quarantined, 0);
    let fired = app.sandbox.fault_counters();
    assert!(
        fired.lagging_list_answers > 0 && fired.contacts_left_out >= 3,
        "the list left the three contacts out: {fired:?}"
    );
    for id in ["c-2", "c-4", "c-6"] {
        assert!(linked(&app, id).await, "{id} must stay linked");
    }
    let mut changed = rows(6);
    changed[3] = changed[3].replace("Acme 4", "Hooli");
    app.write_csv(&csv(&changed));
    app.cycle().await;
    assert_eq!(app.contact_for("c-4")["defaultFields"]["company"], "Hooli");
    common::sandbox_clear_faults(&app.sandbox.base_url()).await;
    app.cycle().await;
    app.assert_created_once(&(1..=6).map(|i| format!("c-{i}")).collect::<Vec<_>>())
        .await;
}

/// A list that answers the same page token twice is broken: the pass is abandoned without
/// concluding that the contacts it never reached are gone, and starts over later.
#[tokio::test]
async fn a_repeated_page_token_abandons_the_scan_and_deletes_nothing() {
    let app = TestApp::spawn_with(
        &csv(&rows(120)),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"1ms\"\non_quo_delete = \"unlink\"\n",
    )
    .await;
    app.cycle().await;
    common::sandbox_fault(
        &app.sandbox.base_url(),
        json!({"kind": "repeat_page_token", "count": 1}),
    )
    .await;
    app.sandbox.reset_stats();
    app.cycle().await;
    let stats = app.sandbox.stats();
    assert_eq!(
        stats.faults.repeated_page_tokens, 1,
        "the list repeated a page token"
    );
    // Page 1, then page 2 answered with the token just sent: the pass stops there (following
    // the repeat would ask for page 2 again, then page 3).
    assert_eq!(
        stats.by_route_status.get("GET /v1/contacts 200"),
        Some(&2),
        "{stats:?}"
    );
    for i in 1..=120 {
        assert!(
            linked(&app, &format!("c-{i}")).await,
            "c-{i} must stay linked"
        );
    }
    // The next pass completes.
    app.sandbox.reset_stats();
    app.cycle().await;
    assert_eq!(
        app.sandbox
            .stats()
            .by_route_status
            .get("GET /v1/contacts 200"),
        Some(&3)
    );
}

/// Quo's spec lets responses carry key-less custom-field items, numbers and booleans as
/// strings, `null` entries and unknown field types. Read leniently, a CRM edit is one clean
/// PATCH, nothing the app typed is lost, the unknown-type value is never written, and a second
/// cycle finds nothing to do.
#[tokio::test]
async fn a_tolerant_reader_patches_cleanly_under_every_lenient_response_shape() {
    let app = TestApp::spawn_with(&csv(&rows(3)), with_mode(PatchMode::Replace), "").await;
    app.cycle().await;
    let id = app.contact_for("c-1")["id"].as_str().unwrap().to_string();
    app.sandbox
        .app_edit(
            &id,
            json!({"customFields": [{"key": "notes", "value": "keep me"}]}),
        )
        .unwrap();
    common::sandbox_settings(
        &app.sandbox.base_url(),
        json!({"response_shapes": {"string_values": true, "keyless_custom_fields": true, "null_entries": true, "unknown_field_type": true}}),
    )
    .await;
    let mut changed = rows(3);
    changed[0] = changed[0].replace("Acme 1", "Vandelay");
    app.write_csv(&csv(&changed));
    let report = app.cycle().await;
    assert_eq!(report.counts.quarantined, 0, "{report:?}");
    assert_eq!(report.counts.updated, 1, "{report:?}");
    let truth = common::sandbox_truth(&app.sandbox.base_url()).await;
    let contact = truth.iter().find(|c| c["externalId"] == "c-1").unwrap();
    assert_eq!(contact["defaultFields"]["company"], "Vandelay");
    assert_eq!(custom_value(contact, "notes"), json!("keep me"));
    assert_eq!(custom_value(contact, "lead-score"), json!(1));
    assert_eq!(custom_value(contact, "vip"), json!(true));
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(app.sandbox.stats().writes_total(), 0, "{report:?}");
}

/// After a Quo edit is written to the CRM, the CRM's own edit still has to reach Quo. If that
/// follow-up PATCH fails, the ledger must not claim agreement: the next cycle sends it.
#[tokio::test]
async fn a_failed_patch_after_a_crm_write_back_is_sent_next_cycle() {
    let app = TestApp::spawn_with(
        &csv(&rows(2)),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"1ms\"\n",
    )
    .await;
    app.cycle().await;
    let id = app.contact_for("c-1")["id"].as_str().unwrap().to_string();
    app.sandbox
        .app_edit(&id, json!({"defaultFields": {"company": "From Quo"}}))
        .unwrap();
    let mut changed = rows(2);
    changed[0] = changed[0].replace(",Buyer,", ",From CRM,");
    app.write_csv(&csv(&changed));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    app.sandbox
        .set_latency(std::time::Duration::from_millis(100));
    let ctx = app.ctx.clone();
    let cycle =
        tokio::spawn(
            async move { quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply).await },
        );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !app.csv_text().contains("From Quo") {
        assert!(
            std::time::Instant::now() < deadline,
            "the CRM was never written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // Quo fails everything from the moment the CRM holds Quo's edit.
    app.sandbox.inject(Fault::Status {
        status: 500,
        count: 10_000,
        retry_after: None,
    });
    let report = cycle.await.unwrap().unwrap();
    assert_eq!(report.counts.quarantined, 1, "{report:?}");
    assert_ne!(app.contact_for("c-1")["defaultFields"]["role"], "From CRM");
    app.sandbox.clear_faults();
    app.sandbox.set_latency(std::time::Duration::ZERO);
    app.cycle().await;
    let contact = app.contact_for("c-1");
    assert_eq!(contact["defaultFields"]["role"], "From CRM");
    assert_eq!(contact["defaultFields"]["company"], "From Quo");
}

/// `delete_in_crm` from a scan deletes the CSV row once the cycle has read the file (it once
/// always failed with "changed on disk since it was read"), and only after a 404 confirmed it.
#[tokio::test]
async fn a_contact_deleted_in_quo_deletes_its_csv_row_with_delete_in_crm() {
    let app = TestApp::spawn_with(
        &csv(&rows(5)),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"1ms\"\non_quo_delete = \"delete_in_crm\"\n",
    )
    .await;
    app.cycle().await;
    let id = app.contact_for("c-2")["id"].as_str().unwrap().to_string();
    assert!(app.sandbox.app_delete(&id));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let report = app.cycle().await;
    assert_eq!(report.counts.written_to_crm, 1, "{report:?}");
    let text = app.csv_text();
    assert!(!text.contains("\nc-2,"), "{text}");
    assert!(text.contains("\nc-3,"));
    let row = app.row("c-2").await;
    assert_eq!(row.state, RecordState::Deleted);
    assert_eq!(app.sandbox.contacts().len(), 4, "nothing recreated");
}
