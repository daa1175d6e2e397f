//! The reverse scan inside the service: it polls Quo on `reverse.poll_interval` without reading
//! the CRM (the source is read on `schedule.interval` and on change signals only), a pass cut
//! short by a SIGKILL resumes from its stored page token in the next process, and a 401 on a
//! scan page pauses the scanner (and `/readyz`) for `quo.auth_grace` instead of ending it.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{TestApp, csv, free_addr, readyz, row};
use quo_sync::ledger::Ledger;
use quo_sync::sandbox::SandboxConfig;
use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

fn rows(n: u32) -> Vec<String> {
    (1..=n).map(|i| row(&format!("s-{i}"), i)).collect()
}

/// Polls `check` every 10 ms until it holds or `deadline` passes.
async fn wait_for(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within {deadline:?}");
}

/// `GET /v1/contacts` answers so far (scan pages; no other list runs in these tests).
fn list_requests(app: &TestApp) -> u64 {
    app.sandbox
        .stats()
        .by_route_status
        .get("GET /v1/contacts 200")
        .copied()
        .unwrap_or(0)
}

/// Cycles recorded in the ledger: each one reads the source, and nothing else does.
async fn cycles(app: &TestApp) -> usize {
    app.ledger().recent_runs(1000).await.unwrap().len()
}

#[tokio::test]
async fn scan_polls_do_not_read_the_source_between_intervals() {
    // 120 contacts: 3 pages per pass.
    let app = TestApp::spawn_with(
        &csv(&rows(120)),
        SandboxConfig::default(),
        "[schedule]\ninterval = \"1h\"\n[reverse]\npoll_interval = \"100ms\"\n",
    )
    .await;
    let service = app.start_service();
    wait_for("the initial load", Duration::from_secs(20), async || {
        app.sandbox.contacts().len() == 120 && cycles(&app).await == 1
    })
    .await;

    // Several complete passes over Quo (at least 4 × 3 pages) …
    let listed = list_requests(&app);
    wait_for("four scan passes", Duration::from_secs(20), async || {
        list_requests(&app) >= listed + 12
    })
    .await;
    // … and the CSV was read once, by the first cycle.
    assert_eq!(cycles(&app).await, 1, "a scan poll started a cycle");

    // What a pass finds still reaches the CRM: the notice wakes a cycle.
    let quo_id = app.quo_id("s-77");
    app.sandbox
        .app_edit(
            &quo_id,
            json!({"defaultFields": {"lastName": "FoundByScan"}}),
        )
        .unwrap();
    wait_for(
        "the scan's find in the CSV",
        Duration::from_secs(10),
        async || app.csv_text().contains("FoundByScan"),
    )
    .await;
    assert!(cycles(&app).await >= 2);

    service.stop().await;
}

#[tokio::test]
async fn a_scan_killed_mid_pass_resumes_from_its_page_token() {
    // 300 contacts: 6 pages per pass. `poll_interval = 0s` here: the initial load runs no pass.
    let app = TestApp::spawn_with(
        &csv(&rows(300)),
        SandboxConfig::default(),
        // Without matching, the first cycle lists nothing: the service's first pass is due.
        "[reverse]\npoll_interval = \"0s\"\n[sync]\nmatch_existing = \"off\"\n",
    )
    .await;
    assert_eq!(app.cycle().await.counts.created, 300);
    let pages = 6;
    // Slow pages, so the kill lands mid-pass.
    app.sandbox.set_latency(Duration::from_millis(150));
    app.sandbox.reset_stats();
    let token = async || {
        let ledger = Ledger::open(&app.dir.path().join("ledger.db"))
            .await
            .unwrap();
        let token = ledger.meta("reverse.scan_token").await.unwrap();
        ledger.close().await;
        token
    };
    let run = || {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
            .args(["run", "--config"])
            .arg(&app.config_path)
            .env_remove("QUO_SYNC_CONFIG")
            .env("QUO_SYNC__SCHEDULE__INTERVAL", "1h")
            .env("QUO_SYNC__REVERSE__POLL_INTERVAL", "1h")
            .env("QUO_SYNC__SOURCE__WATCH", "false")
            .env("QUO_SYNC__LOG__FORMAT", "json")
            .env("QUO_SYNC__LOG__LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn quo-sync");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(String::new());
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tx.send_modify(|log| log.push_str(&(line + "\n")));
            }
        });
        (child, rx)
    };

    let (mut first, _log) = run();
    wait_for("two scan pages", Duration::from_secs(20), async || {
        list_requests(&app) >= 2
    })
    .await;
    first.kill().await.unwrap(); // SIGKILL: no chance to tidy up
    let listed_before_kill = list_requests(&app);
    assert!(
        listed_before_kill < pages,
        "the kill came too late: {listed_before_kill} pages"
    );
    assert!(
        token().await.is_some(),
        "the killed pass left its page token in the ledger"
    );

    let (_second, log) = run();
    let mut watch = log.clone();
    let finished = tokio::time::timeout(
        Duration::from_secs(30),
        watch.wait_for(|log| log.contains("\"event\":\"quo_scanned\"")),
    )
    .await;
    assert!(finished.is_ok(), "the resumed pass never finished");
    let line: serde_json::Value = log
        .borrow()
        .lines()
        .find(|l| l.contains("\"event\":\"quo_scanned\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    let resumed_pages = line["pages"].as_u64().unwrap();
    // The second process listed only what was left (the page in flight at the kill may be
    // listed again), and both together no more than one pass and one page.
    assert!(
        resumed_pages <= pages - listed_before_kill + 1,
        "resumed pass listed {resumed_pages} pages after {listed_before_kill}"
    );
    assert!(
        list_requests(&app) <= pages + 1,
        "list requests in all: {}",
        list_requests(&app)
    );
    assert_eq!(line["notices"], 0, "nothing changed in Quo");
    assert!(token().await.is_none(), "a finished pass clears its token");
}

/// A contact the pass listed before the ledger linked it (a create committed while the pass
/// ran) is not "missing" at the end of the pass: it was listed, only too early to be marked.
#[tokio::test]
async fn a_contact_linked_while_the_pass_ran_is_not_called_missing() {
    let app = TestApp::spawn_with(
        &csv(&rows(120)),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"0s\"\n",
    )
    .await;
    app.cycle().await;
    // A contact on the first of 3 pages (creates ran concurrently, so which one is Quo's
    // order) is unlinked while page 1 is listed and linked again while the slow later pages
    // are fetched.
    let first_page = app.ctx.client.list_page(None).await.unwrap();
    let listed_first = first_page.contacts[1].external_id.clone().unwrap();
    let id = quo_sync::domain::ExternalId::parse(&listed_first).unwrap();
    let row = app.row(&listed_first).await;
    app.ledger().forget(&id).await.unwrap();
    app.sandbox.set_latency(Duration::from_millis(150));
    let (ledger, client) = (app.ledger().clone(), app.ctx.client.clone());
    let guard = app.ctx.settings.delete_guard();
    let pass = tokio::spawn(async move {
        let stop = CancellationToken::new();
        quo_sync::reverse::scan::scan(&ledger, &client, None, &stop, guard).await
    });
    // Page 1 is done once its notes are stored and the token for page 2 after them (marking
    // rows seen comes earlier, before the orphans are counted: too early to link s-2 again).
    wait_for("page 1 noted", Duration::from_secs(10), async || {
        app.ledger()
            .meta("reverse.scan_token")
            .await
            .unwrap()
            .is_some()
    })
    .await;
    app.ledger()
        .commit_synced(quo_sync::ledger::SyncedRecord {
            external_id: &id,
            quo_id: row.quo_id.as_ref().unwrap(),
            source_fingerprint: row.source_fingerprint.as_deref(),
            snapshot: row.snapshot.as_ref().unwrap(),
            contact: row.quo_contact.as_ref().unwrap(),
            crm_updated_at: row.crm_updated_at.clone(),
        })
        .await
        .unwrap();
    let progress = pass.await.unwrap().unwrap();
    assert!(progress.complete);
    assert!(
        progress.pages == 3 && progress.orphans == 1,
        "{listed_first} was listed before it was linked: {progress:?}"
    );
    assert_eq!(progress.notices, 0, "nothing changed or went missing");
    assert_eq!(
        app.ledger()
            .debug_query_i64("SELECT COUNT(*) FROM inbox", &[])
            .await
            .unwrap(),
        0
    );
}

/// An initial load of 60 contacts, then a service that scans every 100 ms and never cycles on
/// its own, with `/readyz` on `addr`.
async fn scanning_service(addr: std::net::SocketAddr) -> TestApp {
    TestApp::spawn_with(
        &csv(&rows(60)),
        SandboxConfig::default(),
        &format!(
            "[schedule]\ninterval = \"1h\"\n[reverse]\npoll_interval = \"100ms\"\n[service]\nlisten = \"{addr}\"\n"
        ),
    )
    .await
}

#[tokio::test]
async fn a_short_quo_auth_incident_pauses_the_scanner_and_readyz_until_it_passes() {
    let addr = free_addr();
    let app = scanning_service(addr).await;
    let service = app.start_service();
    wait_for("the initial load", Duration::from_secs(20), async || {
        app.sandbox.contacts().len() == 60 && cycles(&app).await == 1
    })
    .await;
    wait_for("a scan pass", Duration::from_secs(10), async || {
        list_requests(&app) >= 2
    })
    .await;
    assert_eq!(readyz(addr).await.0, 200);

    // Quo refuses the key for the next two requests (scan pages: nothing else runs).
    app.sandbox.inject(quo_sync::sandbox::Fault::Status {
        status: 401,
        count: 2,
        retry_after: None,
    });
    wait_for(
        "/readyz says not ready",
        Duration::from_secs(5),
        async || readyz(addr).await.0 == 503,
    )
    .await;
    let (_, body) = readyz(addr).await;
    assert!(body.contains("API key"), "{body}");
    // The incident passes: the scanner lists again and the service is ready again.
    let listed = list_requests(&app);
    wait_for(
        "the scanner lists again",
        Duration::from_secs(15),
        async || list_requests(&app) > listed,
    )
    .await;
    wait_for("/readyz says ready", Duration::from_secs(5), async || {
        readyz(addr).await.0 == 200
    })
    .await;
    service.stop().await;
}

#[tokio::test]
async fn a_quo_auth_failure_past_auth_grace_stops_the_service_with_auth_failed() {
    let addr = free_addr();
    let app = scanning_service(addr).await;
    let text = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(
        &app.config_path,
        text.replace("[quo]\n", "[quo]\nauth_grace = \"1s\"\n"),
    )
    .unwrap();
    let config =
        quo_sync::config::Config::load_with_env(&app.config_path, std::iter::empty()).unwrap();
    let mut ctx = app.ctx.clone();
    ctx.cancel = CancellationToken::new();
    let service =
        tokio::spawn(async move { quo_sync::app::run_service(&ctx, &config, None).await });
    wait_for("the initial load", Duration::from_secs(20), async || {
        app.sandbox.contacts().len() == 60 && cycles(&app).await == 1
    })
    .await;
    app.sandbox.inject(quo_sync::sandbox::Fault::Status {
        status: 401,
        count: 100_000,
        retry_after: None,
    });
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), service)
        .await
        .expect("the service stops by itself")
        .unwrap();
    let error = result.expect_err("an auth failure");
    assert!(error.is_auth_failure(), "{error}");
    // The key worked (the initial load): an incident, exit 1, not configuration (exit 2).
    assert!(!error.is_config(), "{error}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before quo.auth_grace ran out: {:?}",
        started.elapsed()
    );
}
