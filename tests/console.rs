//! The operator console: its JSON is the CLI's `--json`, it refuses strangers (token, CSRF),
//! escapes every CRM value, and a real headless Chromium can retry a fixed row from the page.

#[path = "console/browser.rs"]
mod browser;
mod common;
#[path = "console/control.rs"]
mod control;

use std::sync::Arc;
use std::time::Duration;

use browser::{Browser, client};
use common::{TestApp, csv, free_port, row};
use quo_sync::config::Config;
use quo_sync::ops::console::{CONTENT_SECURITY_POLICY, Console, ServiceInfo};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "console-token-0123456789abcdef";
const SCRIPT_NAME: &str = "<script>alert(1)</script>";

/// A row whose lead score cannot be mapped to a number: quarantined at the mapping stage.
fn bad_row(id: &str, n: u32) -> String {
    row(id, n).replace(&format!(",{n},yes,"), ",high,yes,")
}

/// A quarantined row whose offending value (shown on the page) is a script tag.
fn script_row(id: &str, n: u32) -> String {
    row(id, n).replace(&format!(",{n},yes,"), &format!(",{SCRIPT_NAME},yes,"))
}

/// An app with two good rows and two quarantined ones (one named `<script>`), after a cycle.
async fn app_with_quarantine() -> TestApp {
    let rows = vec![
        row("r-1", 1),
        row("r-2", 2),
        bad_row("q-1", 3),
        script_row("q-2", 4),
    ];
    let app = TestApp::spawn(&csv(&rows)).await;
    let report = app.cycle().await;
    assert_eq!(report.counts.quarantined, 2, "{report:?}");
    app
}

/// Serves the console alone on a loopback port; returns its base URL.
async fn serve_console(
    app: &TestApp,
    token: Option<&str>,
    wake: Arc<Notify>,
) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let console = Console::new(
        app.ledger().clone(),
        token.map(|t| t.to_string().into()),
        wake,
        ServiceInfo::always_leader(Duration::from_secs(300), 10),
    );
    let cancel = CancellationToken::new();
    tokio::spawn(quo_sync::app::serve(
        listener,
        quo_sync::ops::console::routes(console),
        cancel.clone(),
    ));
    (base, cancel)
}

async fn json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let response = client.get(url).send().await.expect("request");
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.expect("json")
}

async fn csrf(client: &reqwest::Client, base: &str) -> String {
    json(client, &format!("{base}/api/csrf")).await["csrf"]
        .as_str()
        .expect("csrf")
        .to_string()
}

#[tokio::test]
async fn api_serves_the_cli_documents() {
    let app = app_with_quarantine().await;
    let (base, cancel) = serve_console(&app, None, Arc::default()).await;
    let client = client();

    let status = json(&client, &format!("{base}/api/status")).await;
    let mut cli = serde_json::to_value(quo_sync::ops::status(app.ledger()).await.unwrap()).unwrap();
    cli["service"] = status["service"].clone();
    assert_eq!(status, cli);
    assert_eq!(status["quarantined"], 2);
    assert_eq!(status["service"]["role"], "leader");
    assert_eq!(status["service"]["rate_limit"], 10);
    assert!(status["service"]["next_cycle_at"].is_string(), "{status}");

    let runs = json(&client, &format!("{base}/api/runs?limit=5")).await;
    let ledger_runs = app.ledger().recent_runs(5).await.unwrap();
    assert_eq!(runs, serde_json::to_value(&ledger_runs).unwrap());
    assert_eq!(runs[0]["status"], "quarantined");
    // A hostile limit is clamped, not passed to SQL as is.
    let clamped = json(&client, &format!("{base}/api/runs?limit=-5")).await;
    assert_eq!(clamped.as_array().unwrap().len(), 1);

    let quarantine = json(&client, &format!("{base}/api/quarantine")).await;
    let ledger_q = app.ledger().quarantined().await.unwrap();
    assert_eq!(quarantine, serde_json::to_value(&ledger_q).unwrap());
    let keys: Vec<&str> = quarantine
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["q-1", "q-2"]);
    assert_eq!(quarantine[0]["field"], "lead_score");
    assert_eq!(quarantine[0]["value"], "high");

    let conflicts = json(&client, &format!("{base}/api/conflicts")).await;
    assert_eq!(conflicts, serde_json::json!([]));
    cancel.cancel();
}

#[tokio::test]
async fn page_escapes_crm_values_and_sends_a_strict_policy() {
    let app = app_with_quarantine().await;
    let (base, cancel) = serve_console(&app, None, Arc::default()).await;
    let response = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-security-policy"],
        CONTENT_SECURITY_POLICY
    );
    assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self'"));
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    let page = response.text().await.unwrap();
    // The raw row (stored with the quarantine entry) must not reach the page unescaped.
    assert!(!page.contains(SCRIPT_NAME), "{page}");
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("data-key=\"q-2\""), "{page}");
    assert!(
        page.contains("<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>"),
        "the value shows as text: {page}"
    );
    assert!(page.contains("lead_score"), "{page}");
    assert!(page.contains("<code>high</code>"), "{page}");
    assert!(page.contains("class=\"retry\""), "{page}");
    assert!(page.contains("<script src=\"/console.js\" defer></script>"));
    // Every script and style is a same-origin asset served from the binary.
    for asset in ["/console.js", "/console.css"] {
        let r = client().get(format!("{base}{asset}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(!r.text().await.unwrap().is_empty());
    }
    let runs = page.matches("<td data-label=\"Started\">").count();
    assert_eq!(runs, 1, "one run so far");
    cancel.cancel();
}

#[tokio::test]
async fn escaping_covers_markup_quotes_and_ampersands() {
    use quo_sync::ops::console::esc;
    assert_eq!(
        esc(r#"<img src=x onerror="a('b')">&amp;"#),
        "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;amp;"
    );
}

#[tokio::test]
async fn actions_refuse_a_missing_or_wrong_csrf_token() {
    let app = app_with_quarantine().await;
    let wake = Arc::new(Notify::new());
    let (base, cancel) = serve_console(&app, None, wake.clone()).await;
    let client = client();
    let url = format!("{base}/api/quarantine/q-1/retry");

    let none = client.post(&url).send().await.unwrap();
    assert_eq!(none.status(), 403);
    let wrong = client
        .post(&url)
        .header("x-csrf-token", "not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let form_wrong = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={}", "nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(form_wrong.status(), 403);
    let discard = client
        .post(format!("{base}/api/quarantine/q-1/discard"))
        .send()
        .await
        .unwrap();
    assert_eq!(discard.status(), 403);
    // GET is not an action.
    let get = client.get(&url).send().await.unwrap();
    assert_eq!(get.status(), 405);
    assert!(
        app.ledger()
            .quarantined_one("q-1")
            .await
            .unwrap()
            .unwrap()
            .discarded_at
            .is_none()
    );

    // With the token: the retry is scheduled and wakes the service loop.
    let token = csrf(&client, &base).await;
    let woken = wake.notified();
    let ok = client
        .post(&url)
        .header("x-csrf-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    tokio::time::timeout(Duration::from_secs(5), woken)
        .await
        .expect("retry wakes the service");
    let missing = client
        .post(format!("{base}/api/quarantine/nope/retry"))
        .header("x-csrf-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // A form post (the page's button) discards and redirects back to the page.
    let discarded = client
        .post(format!("{base}/api/quarantine/q-1/discard"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(discarded.status(), 303);
    assert_eq!(discarded.headers()["location"], "/");
    let left = json(&client, &format!("{base}/api/quarantine")).await;
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left[0]["key"], "q-2");
    let all = json(&client, &format!("{base}/api/quarantine?all=true")).await;
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    cancel.cancel();
}

#[tokio::test]
async fn a_token_guards_page_and_api_by_bearer_or_login_cookie() {
    let app = app_with_quarantine().await;
    let (base, cancel) = serve_console(&app, Some(TOKEN), Arc::default()).await;
    let client = client();

    let anonymous = client
        .get(format!("{base}/api/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = client
        .get(format!("{base}/api/quarantine"))
        .bearer_auth("console-token-wrong-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let page = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login");
    let retry = client
        .post(format!("{base}/api/quarantine/q-1/retry"))
        .header("x-csrf-token", "anything")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 401);

    let bearer = client
        .get(format!("{base}/api/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let body = bearer.text().await.unwrap();
    assert!(!body.contains(TOKEN), "{body}");
    assert!(!body.contains(app.sandbox.api_key()), "{body}");

    let refused = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", "wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("set-cookie").is_none());

    let login = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is derived, not the token"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let page = client
        .get(format!("{base}/"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Quarantine (2)"), "{html}");
    assert!(!html.contains(TOKEN));
    assert!(!html.contains(app.sandbox.api_key()));
    cancel.cancel();
}

fn write_config(dir: &std::path::Path, service: &str) -> std::path::PathBuf {
    let path = dir.join("quo-sync.toml");
    std::fs::write(
        &path,
        format!(
            "[quo]\napi_key = \"k\"\n[source]\nkind = \"csv\"\npath = \"x.csv\"\n{}\n[service]\n{service}\n",
            common::MAPPING
        ),
    )
    .unwrap();
    path
}

fn load(dir: &std::path::Path, service: &str) -> Result<Config, String> {
    Config::load_with_env(&write_config(dir, service), std::iter::empty())
        .map_err(|e| e.to_string())
}

#[test]
fn console_config_is_safe_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let off = load(dir.path(), "listen = \"0.0.0.0:9464\"").expect("no console, no token needed");
    assert!(!off.service.console);

    let open = load(dir.path(), "listen = \"0.0.0.0:9464\"\nconsole = true").unwrap_err();
    assert!(open.contains("service.console_token"), "{open}");
    assert!(open.contains("0.0.0.0:9464"), "{open}");

    load(dir.path(), "listen = \"127.0.0.1:9464\"\nconsole = true")
        .expect("loopback needs no token");
    load(dir.path(), "listen = \"[::1]:9464\"\nconsole = true").expect("IPv6 loopback too");
    let no_listen = load(dir.path(), "console = true").unwrap_err();
    assert!(no_listen.contains("service.listen"), "{no_listen}");

    let short = load(
        dir.path(),
        "listen = \"0.0.0.0:9464\"\nconsole = true\nconsole_token = \"short\"",
    )
    .unwrap_err();
    assert!(short.contains("at least 16"), "{short}");
    assert!(!short.contains("\"short\""), "{short}");

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config = load(
        dir.path(),
        &format!(
            "listen = \"0.0.0.0:9464\"\nconsole = true\nconsole_token_file = \"{}\"",
            token_file.display()
        ),
    )
    .expect("token from a file");
    let debug = format!("{config:?}");
    assert!(!debug.contains(TOKEN), "the token never shows in Debug");
}

#[tokio::test]
async fn a_real_browser_retries_a_fixed_row_and_sees_it_leave_the_quarantine() {
    let port = free_port();
    let rows = vec![row("r-1", 1), bad_row("q-1", 3), script_row("q-2", 4)];
    let app = TestApp::spawn_with(
        &csv(&rows),
        Default::default(),
        &format!("[service]\nlisten = \"127.0.0.1:{port}\"\nconsole = true\n"),
    )
    .await;
    // The fix must wait for the operator's Retry, not start a cycle by itself.
    let mut config = Config::load_with_env(&app.config_path, std::iter::empty()).unwrap();
    config.source.watch = false;
    let cancel = CancellationToken::new();
    let ctx = quo_sync::app::build_context(&config, "run", cancel.clone())
        .await
        .unwrap();
    let service = tokio::spawn(async move {
        quo_sync::app::run_service(&ctx, &config, None)
            .await
            .expect("service runs")
    });
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let q = http.get(format!("{base}/api/quarantine")).send().await;
        if let Ok(r) = q
            && r.status() == 200
            && r.json::<serde_json::Value>()
                .await
                .unwrap()
                .as_array()
                .map(Vec::len)
                == Some(2)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service never quarantined 2 rows"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The operator fixes q-1's lead score in the CSV.
    app.write_csv(&csv(&[row("r-1", 1), row("q-1", 3), script_row("q-2", 4)]));

    let Some(browser) = Browser::start(1100, 1000).await else {
        return;
    };
    browser.goto(&format!("{base}/")).await;
    let source = browser.source().await;
    assert!(source.contains("Quarantine (2)"), "{source}");
    assert!(
        source.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "escaped in the DOM: {source}"
    );
    browser.click("tr[data-key=\"q-1\"] button.retry").await;

    // The form posts, the service runs a cycle, the page refreshes itself: q-1 leaves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = browser.find("tr[data-key=\"q-1\"]").await;
        let still_q2 = browser.find("tr[data-key=\"q-2\"]").await;
        if left.is_empty() && still_q2.len() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "q-1 never left the page's quarantine"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(app.ledger().quarantined_one("q-1").await.unwrap().is_none());
    let contact = app.contact_for("q-1");
    assert!(contact["id"].is_string(), "q-1 synced to Quo: {contact}");

    // Headers never break inside a word, on a desktop or a phone; the phone never scrolls
    // sideways; a cut value carries the whole value on hover.
    for (width, height) in [(390, 844), (1100, 1000)] {
        browser.resize(width, height).await;
        let layout = browser.execute(LAYOUT_CHECK).await;
        let inner = layout["width"].as_f64().unwrap_or_default();
        assert!(
            (inner - f64::from(width)).abs() <= 20.0,
            "viewport {inner}px, asked for {width}px: {layout}"
        );
        assert!(
            layout["checked"].as_u64().unwrap_or_default() >= 5,
            "headers were found at {width}px: {layout}"
        );
        assert_eq!(
            layout["split"],
            serde_json::json!([]),
            "headers broken inside a word at {width}px: {layout}"
        );
        assert!(
            layout["sideways"].as_f64().unwrap_or(1.0) <= 0.0,
            "the page scrolls sideways at {width}px: {layout}"
        );
        assert_eq!(
            layout["untitled"], 0,
            "a cut value without its title: {layout}"
        );
        assert_eq!(
            layout["cut"],
            serde_json::json!([]),
            "a button cut off at {width}px: {layout}"
        );
        if width < 700 {
            assert_eq!(
                layout["small"],
                serde_json::json!([]),
                "buttons too small for a finger at {width}px: {layout}"
            );
            assert_eq!(
                layout["blank"],
                serde_json::json!([]),
                "a card shows a label with nothing after it at {width}px: {layout}"
            );
        }
        let path = format!("{}/console-{width}.png", env!("CARGO_TARGET_TMPDIR"));
        std::fs::write(path, browser.screenshot().await).unwrap();
    }

    let png = browser.screenshot().await;
    // Refreshing the committed screenshot is opt-in, so a test run leaves the tree clean.
    let shot_path = if std::env::var_os("QUO_SYNC_UPDATE_SCREENSHOT").is_some() {
        concat!(env!("CARGO_MANIFEST_DIR"), "/docs/console.png")
    } else {
        concat!(env!("CARGO_TARGET_TMPDIR"), "/console.png")
    };
    std::fs::write(shot_path, png).unwrap();
    browser.close().await;
    cancel.cancel();
    service.await.unwrap();
}

/// Runs in the page: every visible header word (`th`, `dt`, headings, buttons) that the layout
/// split over two lines, how far the page scrolls sideways, cut cells whose title does not
/// hold what they show (a location shows its file name and line, its title the whole path),
/// buttons smaller than a finger or cut off by the screen's edge, and labelled cells with
/// nothing in them.
const LAYOUT_CHECK: &str = r#"
const split = [];
let checked = 0;
for (const el of document.querySelectorAll('th, dt, h1, h2, h3, button')) {
  if (!el.getClientRects().length) continue;
  checked++;
  const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walk.nextNode())) {
    const words = /\S+/g;
    let m;
    while ((m = words.exec(node.data))) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
      if (lines.size > 1) split.push(el.tagName + ' ' + m[0]);
    }
  }
}
const untitled = [...document.querySelectorAll('td.clip')]
  .filter(td => td.textContent && !td.title.includes(td.textContent)).length;
const shown = el => el.getClientRects().length > 0;
const buttons = [...document.querySelectorAll('button')].filter(shown);
// A finger needs about 44 px (WCAG 2.5.5); a button must be wholly on screen.
const small = buttons
  .filter(b => b.getBoundingClientRect().height < 43.5)
  .map(b => b.textContent + ' ' + Math.round(b.getBoundingClientRect().height) + 'px');
const cut = buttons
  .filter(b => { const r = b.getBoundingClientRect(); return r.left < 0 || r.right > window.innerWidth; })
  .map(b => b.textContent);
// A labelled cell with nothing in it (a card reading "Error:" and nothing else).
const blank = [...document.querySelectorAll('td[data-label]')]
  .filter(td => shown(td) && !td.textContent.trim())
  .map(td => td.dataset.label);
return {
  width: window.innerWidth,
  checked,
  split,
  sideways: document.documentElement.scrollWidth - window.innerWidth,
  untitled,
  small,
  cut,
  blank,
};
"#;

/// DNS rebinding: a page on another site whose name now resolves to 127.0.0.1 reaches a
/// console without a token with its own name in `Host`, and can read the CSRF token from the
/// page like any same-origin script. Without a token, only loopback names (or the configured
/// listen address) are served, and a POST's `Origin` must be one of them.
#[tokio::test]
async fn without_a_token_only_loopback_hosts_are_served_and_posts_need_a_loopback_origin() {
    let app = app_with_quarantine().await;
    let (base, cancel) = serve_console(&app, None, Arc::default()).await;
    let port = base.rsplit(':').next().unwrap().to_string();
    let client = client();
    let get = async |host: &str, path: &str| {
        let response = client
            .get(format!("{base}{path}"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    for path in ["/api/quarantine", "/", "/api/csrf"] {
        let (status, body) = get(&format!("rebound.attacker.example:{port}"), path).await;
        assert_eq!(status, 421, "{path}: {body}");
        assert!(!body.contains("q-1") && !body.contains("csrf\""), "{body}");
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".to_string(),
    ] {
        assert_eq!(get(&host, "/api/quarantine").await.0, 200, "{host}");
    }

    let token = csrf(&client, &base).await;
    let post = async |origin: Option<&str>| {
        let mut request = client
            .post(format!("{base}/api/quarantine/q-1/retry"))
            .header("x-csrf-token", &token);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send().await.unwrap().status().as_u16()
    };
    assert_eq!(post(Some("http://rebound.attacker.example")).await, 403);
    assert_eq!(post(Some("null")).await, 403);
    assert_eq!(post(Some(&format!("http://localhost:{port}"))).await, 202);
    assert_eq!(
        post(None).await,
        202,
        "a client without Origin is no browser"
    );
    cancel.cancel();
}

/// `/readyz` needs no login: it names the failure, never its text (which can carry CRM data).
#[tokio::test]
async fn readyz_shows_no_error_text() {
    let app = TestApp::spawn(&csv(&[row("r-1", 1)])).await;
    app.ledger().start_run("failing-run", "run").await.unwrap();
    app.ledger()
        .finish_run(
            "failing-run",
            "failed",
            &quo_sync::ledger::RunCounts::default(),
            5,
            Some("CRM request failed: GET https://crm.example/contacts?email=ada@lovelace.example: HTTP 500: {\"name\":\"Ada Lovelace\"}"),
        )
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    tokio::spawn(quo_sync::app::serve(
        listener,
        // `cycles`: a failed run makes it unready (the default, `ledger`, looks at the ledger only).
        quo_sync::ops::http::router_with(
            app.ledger().clone(),
            None,
            quo_sync::ops::http::ReadinessRule {
                readiness: quo_sync::config::Readiness::Cycles,
                failed_cycles: 1,
            },
        ),
        cancel.clone(),
    ));
    let response = client().get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    assert!(body.contains("failing-run"), "{body}");
    for data in ["ada@lovelace.example", "Ada Lovelace", "crm.example"] {
        assert!(!body.contains(data), "{data} in /readyz: {body}");
    }
    cancel.cancel();
}
