//! What an operator sees while the Quo workspace is in doubt (issue #21, a key for the wrong
//! workspace): a synced ledger is pointed at another workspace (the sandbox answers 404 for
//! every id and lists nothing), and `quo-sync status` (text and `--json`, a separate process),
//! `/readyz` of the writing replica and of a standby, `/metrics` and the console in a real
//! Chromium all say since when, why, what is held and what to do; the right key clears every
//! one of them. Own test binary: the metrics recorder is global.

#[allow(dead_code)] // the console tests use the rest of it
#[path = "console/browser.rs"]
mod browser;
mod common;

use std::sync::Arc;
use std::time::Duration;

use browser::{Browser, client};
use common::{TestApp, csv, row};
use quo_sync::ops::console::{Console, ServiceInfo};
use quo_sync::sandbox::SandboxConfig;
use tokio_util::sync::CancellationToken;

fn rows(ids: impl IntoIterator<Item = u32>) -> Vec<String> {
    ids.into_iter().map(|i| row(&format!("c-{i}"), i)).collect()
}

/// `quo-sync status` run as its own process on `app`'s config: (stdout, exit code).
async fn status_cli(app: &TestApp, json: bool) -> (String, Option<i32>) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"));
    command.args(["status", "--config"]).arg(&app.config_path);
    if json {
        command.arg("--json");
    }
    let out = command.env_remove("QUO_SYNC_CONFIG").output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("status finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8(out.stdout).unwrap(), out.status.code())
}

async fn status_json(app: &TestApp) -> serde_json::Value {
    serde_json::from_str(&status_cli(app, true).await.0).expect("status --json")
}

/// Serves `router` on a loopback port; its base URL.
async fn serve(router: axum::Router, cancel: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(quo_sync::app::serve(listener, router, cancel.clone()));
    base
}

async fn get(url: &str) -> (u16, String) {
    let response = client().get(url).send().await.expect("request");
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The `quo_sync_workspace_doubted` sample of `/metrics`, polled until it reads `want` (the
/// ledger gauges are cached for `LEDGER_READ_TTL`).
async fn doubted_gauge_becomes(base: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, text) = get(&format!("{base}/metrics")).await;
        assert_eq!(code, 200, "{text}");
        let sample = text
            .lines()
            .find(|l| l.starts_with("quo_sync_workspace_doubted "))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string());
        if sample.as_deref() == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "quo_sync_workspace_doubted never read {want}: {sample:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Twelve records synced; c-12 leaves the CRM (read once at home: a deletion needs two reads
/// that agree), then the key points at another workspace while c-13 is added. Every surface an
/// operator looks at says the workspace is in doubt, since when, why, what is held and what to
/// do; the right key clears them all, and what was held goes through.
#[tokio::test]
async fn an_operator_sees_the_workspace_doubt_everywhere_until_the_right_key_clears_it() {
    let app = TestApp::spawn_with(
        &csv(&rows(1..=12)),
        SandboxConfig::default(),
        "[sync]\non_source_delete = \"delete\"\nmax_delete_fraction = 1.0\n\
         [reverse]\npoll_interval = \"1ms\"\non_quo_delete = \"recreate\"\n",
    )
    .await;
    assert_eq!(app.cycle().await.counts.created, 12);
    app.write_csv(&csv(&rows(1..=11)));
    app.cycle().await;

    // The operator's surfaces, served from their own ledger handle (another replica's view):
    // the writing replica's routes with the console, and a standby's.
    let path = std::path::PathBuf::from(app.ledger().path());
    let ops_ledger = quo_sync::ledger::Ledger::open(&path).await.unwrap();
    let metrics = quo_sync::ops::http::install_metrics().expect("the only recorder");
    quo_sync::ops::http::register_service_metrics();
    let console = Console::new(
        ops_ledger.clone(),
        None,
        Arc::default(),
        ServiceInfo::always_leader(Duration::from_secs(300), 10),
    );
    let cancel = CancellationToken::new();
    let base = serve(
        quo_sync::ops::http::router_with_console(ops_ledger.clone(), Some(metrics), Some(console)),
        &cancel,
    )
    .await;
    let standby = serve(
        quo_sync::ops::http::replica_router(
            ops_ledger.clone(),
            None,
            quo_sync::ops::http::ReplicaRole::default(),
            Default::default(),
        ),
        &cancel,
    )
    .await;
    // Before: nothing in doubt anywhere.
    assert_eq!(
        get(&format!("{base}/readyz")).await,
        (200, "ready\n".into())
    );
    doubted_gauge_becomes(&base, "0").await;
    let before = status_json(&app).await;
    assert_eq!(before["workspace_doubted"], false, "{before}");
    assert!(before["workspace_doubt"].is_null(), "{before}");

    let mut rows13 = rows(1..=11);
    rows13.push(row("c-13", 13));
    app.write_csv(&csv(&rows13));
    app.sandbox.set_foreign_workspace(true);
    for _ in 0..2 {
        let report = app.cycle().await;
        assert_eq!(
            (report.counts.created, report.counts.deleted),
            (0, 0),
            "{report:#?}"
        );
    }
    assert!(app.sandbox.foreign_contacts().is_empty());

    // `status --json`: the existing fields as they were, and the doubt.
    let json = status_json(&app).await;
    assert_eq!(json["records"]["synced"], 12, "{json}");
    assert!(
        json["last_run"].is_object() && json.get("writer").is_some(),
        "{json}"
    );
    assert_eq!(json["workspace_doubted"], true, "{json}");
    let doubt = &json["workspace_doubt"];
    let (sampled, missing) = (
        doubt["sampled"].as_u64().unwrap(),
        doubt["missing"].as_u64().unwrap(),
    );
    assert!(sampled >= 1 && missing == sampled, "{doubt}");
    assert_eq!(doubt["found"], 0, "{doubt}");
    let reason = format!("{missing} of {sampled} linked contacts read back answered 404");
    assert_eq!(doubt["reason"], reason.as_str(), "{doubt}");
    let since = doubt["since"].as_str().expect("since").to_string();
    let before_s = before["last_run"]["started_at"].as_str().unwrap();
    assert!(since.as_str() > before_s, "{since} after the last good run");
    assert_eq!(
        doubt["held"],
        serde_json::json!({"creates_deferred": 1, "deletions_held": 1, "absences_held": 12}),
        "c-13 not created, c-12's contact not deleted, the 404s of all 12 linked contacts not acted on: {doubt}"
    );
    assert!(doubt["held_at"].is_string(), "{doubt}");
    let next = doubt["next_step"].as_str().unwrap();
    assert!(
        next.contains("quo.api_key") && next.contains("quo-sync once --allow-mass-delete"),
        "{next}"
    );

    // `status`: the same in lines.
    let (text, _) = status_cli(&app, false).await;
    println!("{text}");
    assert!(
        text.contains(&format!("workspace     IN DOUBT since {since}: {reason}")),
        "{text}"
    );
    assert!(
        text.contains("  holding     creates deferred 1, deletions held 1, absences held 12 (")
            && text.contains("(the cycle of "),
        "{text}"
    );
    assert!(
        text.contains("  next step   check that quo.api_key"),
        "{text}"
    );

    // `/readyz`: the writing replica is not ready, with the reason; liveness stays healthy (a
    // restart does not fix a key); a standby is ready and says it.
    let (code, body) = get(&format!("{base}/readyz")).await;
    println!("{body}");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with(&format!(
            "not ready: the Quo workspace is in doubt since {since} ({reason}); creates and deletions are held"
        )),
        "{body}"
    );
    assert_eq!(get(&format!("{base}/healthz")).await, (200, "ok\n".into()));
    let (code, body) = get(&format!("{standby}/readyz")).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("ready (standby); the Quo workspace is in doubt since"),
        "{body}"
    );

    // `/metrics`.
    doubted_gauge_becomes(&base, "1").await;

    // The console, in a real browser: a banner over everything, and the health pill.
    let browser = Browser::start(1100, 900).await;
    if let Some(browser) = &browser {
        browser.goto(&format!("{base}/")).await;
        let banner = browser.text("#workspace-doubt").await.unwrap_or_default();
        assert!(
            banner.contains("Quo workspace in doubt: creates and deletions are held")
                && banner.contains(&reason)
                && banner.contains("creates deferred 1, deletions held 1")
                && banner.contains("quo.api_key"),
            "{banner}"
        );
        assert_eq!(
            browser.text("#health").await.as_deref(),
            Some("workspace in doubt")
        );
        // It is the first thing on the page, on a desktop and on a phone, and never makes the
        // phone scroll sideways.
        for (width, height) in [(1100, 900), (390, 844)] {
            browser.resize(width, height).await;
            let layout = browser.execute(BANNER_CHECK).await;
            assert_eq!(layout["first"], true, "{layout}");
            assert!(layout["top"].as_f64().unwrap() < 200.0, "{layout}");
            assert!(layout["sideways"].as_f64().unwrap() <= 0.0, "{layout}");
            assert_eq!(layout["pillReadable"], true, "{layout}");
            let shot = format!(
                "{}/workspace-doubt-{width}.png",
                env!("CARGO_TARGET_TMPDIR")
            );
            std::fs::write(shot, browser.screenshot().await).unwrap();
        }
    }

    // The right key again: the first cycle's read-back clears the doubt, and what was held goes
    // through (c-13 created at home, c-12's contact deleted).
    app.sandbox.set_foreign_workspace(false);
    let report = app.cycle().await;
    assert_eq!(
        (report.counts.created, report.counts.deleted),
        (1, 1),
        "{report:#?}"
    );
    let ids: Vec<String> = (1..=11).chain([13]).map(|i| format!("c-{i}")).collect();
    app.assert_one_contact_per_record(&ids).await;
    assert!(app.sandbox.foreign_contacts().is_empty());

    let json = status_json(&app).await;
    assert_eq!(json["workspace_doubted"], false, "{json}");
    assert!(json["workspace_doubt"].is_null(), "{json}");
    let (text, _) = status_cli(&app, false).await;
    assert!(!text.contains("IN DOUBT"), "{text}");
    assert_eq!(
        get(&format!("{base}/readyz")).await,
        (200, "ready\n".into())
    );
    assert_eq!(
        get(&format!("{standby}/readyz")).await,
        (200, "ready (standby)\n".into())
    );
    doubted_gauge_becomes(&base, "0").await;
    if let Some(browser) = browser {
        browser.goto(&format!("{base}/")).await;
        assert!(browser.find("#workspace-doubt").await.is_empty());
        assert_ne!(
            browser.text("#health").await.as_deref(),
            Some("workspace in doubt")
        );
        browser.close().await;
    }
    cancel.cancel();
}

/// Runs in the page: whether the doubt banner is the first section and visible near the top,
/// and how far the page scrolls sideways.
const BANNER_CHECK: &str = r#"
const banner = document.querySelector('#workspace-doubt');
const first = document.querySelector('main section');
return {
  first: !!banner && first === banner && banner.getClientRects().length > 0,
  top: banner ? banner.getBoundingClientRect().top : 1e9,
  sideways: document.documentElement.scrollWidth - window.innerWidth,
  // The health pill's words are readable: not drawn in the colour of the pill.
  pillReadable: (() => {
    const pill = getComputedStyle(document.querySelector('#health'));
    return pill.color !== pill.backgroundColor;
  })(),
};
"#;

/// The doubt is on record for every process: a process started afresh while the key still
/// points elsewhere (a restart, a replica taking over) doubts the workspace before anything
/// else and creates nothing there; and one cycle with the right key clears it even when the
/// cycle has nothing to create or delete (its read-back runs first).
#[tokio::test]
async fn a_fresh_process_keeps_the_doubt_on_record_and_one_good_read_back_clears_it() {
    let mut app = TestApp::spawn_with(
        &csv(&rows(1..=5)),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"1ms\"\n",
    )
    .await;
    assert_eq!(app.cycle().await.counts.created, 5);
    app.sandbox.set_foreign_workspace(true);
    app.cycle().await;
    let doubt = quo_sync::reverse::doubt::load(app.ledger())
        .await
        .unwrap()
        .expect("the doubt is on record");

    // A new process: its client has read nothing back yet, and no scan is due in its first
    // cycle, so only the doubt on record stands between c-6 and the other workspace.
    app.restart().await;
    app.ctx.settings.poll_interval = None;
    app.write_csv(&csv(&rows(1..=6)));
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 0, "{report:#?}");
    assert!(
        app.sandbox.foreign_contacts().is_empty(),
        "a fresh process created into the other workspace: {:#?}",
        app.sandbox.foreign_contacts()
    );
    let still = quo_sync::reverse::doubt::load(app.ledger())
        .await
        .unwrap()
        .expect("still in doubt");
    assert_eq!(still.since, doubt.since, "the doubt keeps its start");
    assert_eq!(still.held.creates_deferred, 1, "{still:?}");

    // The right key, and nothing to create or delete (c-6 left the CRM again), no scan due.
    app.write_csv(&csv(&rows(1..=5)));
    app.sandbox.set_foreign_workspace(false);
    let report = app.cycle().await;
    assert_eq!(
        (report.counts.created, report.counts.deleted),
        (0, 0),
        "{report:#?}"
    );
    assert_eq!(
        quo_sync::reverse::doubt::load(app.ledger()).await.unwrap(),
        None,
        "a read-back that found the contacts clears the doubt"
    );
    let (text, _) = status_cli(&app, false).await;
    assert!(!text.contains("IN DOUBT"), "{text}");
}
