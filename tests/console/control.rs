//! The console's Pause, Resume and Run now buttons in a real browser (#27 item 5), against
//! `quo-sync run` as a child process.

use std::sync::Arc;
use std::time::Duration;

use super::browser::{Browser, client};
use super::common::{self, TestApp, csv, row};

/// `quo-sync run` as a child process with the console on `addr`, its JSON log kept.
struct RunningBinary {
    child: tokio::process::Child,
    log: Arc<std::sync::Mutex<String>>,
}

impl RunningBinary {
    fn start(config: &std::path::Path, addr: std::net::SocketAddr) -> RunningBinary {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("QUO_SYNC_CONFIG")
            .env("QUO_SYNC__SCHEDULE__INTERVAL", "1h")
            .env("QUO_SYNC__SERVICE__LISTEN", addr.to_string())
            .env("QUO_SYNC__SERVICE__CONSOLE", "true")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("quo-sync run starts");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = kept.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        RunningBinary { child, log }
    }

    /// Log lines with `"event":"<event>"` so far.
    fn events(&self, event: &str) -> usize {
        let needle = format!("\"event\":\"{event}\"");
        self.log.lock().unwrap().matches(&needle).count()
    }
}

/// `status --json` from the binary.
async fn status_json(config: &std::path::Path) -> serde_json::Value {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["status", "--json", "--config"])
        .arg(config)
        .env_remove("QUO_SYNC_CONFIG")
        .output()
        .await
        .expect("status runs");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status --json")
}

/// The `quo_sync_paused` line of `/metrics` (the gauge is cached for a few seconds).
async fn paused_gauge(http: &reqwest::Client, base: &str) -> String {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("quo_sync_paused "))
        .unwrap_or_default()
        .to_string()
}

/// #27 item 5 in a real browser: the console's Pause (for 1h) pauses every writer, as the page,
/// `status --json` and `/metrics` agree; a CSV edit made meanwhile sends nothing, even when Run
/// now starts a cycle; Resume lands it, once. Run now starts a cycle within a second. A POST
/// from another site, or without the page's CSRF token, changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_pauses_and_resumes_syncing_and_runs_a_cycle_now() {
    let rows: Vec<String> = (1..=3).map(|n| row(&format!("r-{n}"), n)).collect();
    let app = TestApp::spawn(&csv(&rows)).await;
    let addr = common::free_addr();
    let base = format!("http://{addr}");
    let http = client();
    let mut run = RunningBinary::start(&app.config_path, addr);
    common::poll("the first cycle synced 3 contacts", async || {
        app.sandbox.contacts().len() == 3
            && app
                .ledger()
                .recent_runs(1)
                .await
                .unwrap()
                .first()
                .is_some_and(|r| r.finished_at.is_some())
    })
    .await;
    let runs = async || app.ledger().recent_runs(100).await.unwrap().len();

    // Refused without the page's token, or from another site: nothing pauses.
    for action in ["pause", "resume", "run-now"] {
        let url = format!("{base}/api/{action}");
        let cross_site = http
            .post(&url)
            .header("origin", "https://attacker.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("for=1h")
            .send()
            .await
            .unwrap();
        assert_eq!(cross_site.status(), 403, "{action} from another site");
        let no_token = http
            .post(&url)
            .header("origin", &base)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("for=1h")
            .send()
            .await
            .unwrap();
        assert_eq!(no_token.status(), 403, "{action} without the CSRF token");
    }
    assert!(status_json(&app.config_path).await["paused"].is_null());

    let Some(browser) = Browser::start(1100, 1000).await else {
        return;
    };
    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.text("#syncing").await.as_deref(), Some("Syncing."));

    // Run now: a cycle starts on the leader within a second.
    let before = runs().await;
    browser.click("button.run-now").await;
    let clicked = std::time::Instant::now();
    while runs().await == before {
        assert!(
            clicked.elapsed() < Duration::from_secs(1),
            "Run now started no cycle within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Pause for an hour.
    let asked = chrono::Utc::now();
    browser.type_into("input[name=\"for\"]", "1h").await;
    browser.click("button.pause").await;
    let mut shown = None;
    common::poll("the page shows the pause", async || {
        shown = browser.text("#paused").await;
        shown.is_some()
    })
    .await;
    let shown = shown.unwrap();
    assert!(
        shown.starts_with("Paused by console since ") && shown.contains(", until "),
        "who and until when: {shown}"
    );
    assert!(browser.find("button.pause").await.is_empty(), "{shown}");
    let status = status_json(&app.config_path).await;
    let paused = &status["paused"];
    assert_eq!(paused["by"], "console", "{status}");
    let until = chrono::DateTime::parse_from_rfc3339(paused["until"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {paused}"))
        .with_timezone(&chrono::Utc);
    assert!(
        (chrono::Duration::minutes(59)..=chrono::Duration::minutes(61)).contains(&(until - asked)),
        "until an hour on: {paused}"
    );
    assert!(
        shown.contains(&until.format("%Y-%m-%dT%H:%M").to_string())
            || shown.contains(paused["until"].as_str().unwrap()),
        "the page and status agree on the end: {shown} / {paused}"
    );
    common::poll("/metrics shows quo_sync_paused 1", async || {
        paused_gauge(&http, &base).await == "quo_sync_paused 1"
    })
    .await;

    // An edit made during the pause: the watcher and Run now start cycles; they send nothing.
    app.sandbox.reset_stats();
    let mut edited = rows.clone();
    edited[0] = edited[0].replace("Acme 1", "Paused Co");
    app.write_csv(&csv(&edited));
    let paused_cycles = run.events("cycle_paused");
    browser.click("button.run-now").await;
    common::poll("a cycle ran into the pause", async || {
        run.events("cycle_paused") > paused_cycles
    })
    .await;
    assert_eq!(app.sandbox.stats().writes_total(), 0, "nothing sent to Quo");
    assert_eq!(app.contact_for("r-1")["defaultFields"]["company"], "Acme 1");

    // Resume: the page says so, status and /metrics agree, the edit lands once.
    browser.click("button.resume").await;
    common::poll("the page shows syncing again", async || {
        browser.text("#syncing").await.is_some()
    })
    .await;
    assert!(status_json(&app.config_path).await["paused"].is_null());
    common::poll("the edit lands after the resume", async || {
        app.contact_for("r-1")["defaultFields"]["company"] == "Paused Co"
    })
    .await;
    common::poll("/metrics shows quo_sync_paused 0", async || {
        paused_gauge(&http, &base).await == "quo_sync_paused 0"
    })
    .await;
    let before = runs().await;
    browser.click("button.run-now").await;
    common::poll("one more cycle finished", async || {
        let now = app.ledger().recent_runs(100).await.unwrap();
        now.len() > before && now[0].finished_at.is_some()
    })
    .await;
    let stats = app.sandbox.stats();
    assert_eq!(
        (stats.writes.updates, stats.writes_total()),
        (1, 1),
        "the pending edit landed once"
    );
    assert!(run.child.try_wait().unwrap().is_none(), "run still serves");
    browser.close().await;
    run.child.kill().await.unwrap();
}
