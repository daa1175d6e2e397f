//! The operator console: its JSON is the CLI's `--json`, it refuses strangers (token, CSRF),
//! escapes every CRM value, and a real headless Chromium can retry a fixed row from the page.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestApp, csv, row};
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

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
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

/// A free loopback port (bound, read, released) for a service that binds its own listener.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Chromium and chromedriver, or why the browser test cannot run.
fn browser() -> Option<(String, String)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            std::process::Command::new("which")
                .arg(n)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
    };
    Some((
        find(&["chromium", "chromium-browser"])?,
        find(&["chromedriver"])?,
    ))
}

/// One WebDriver call; panics with the driver's answer on an error status.
async fn wd(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("webdriver request");
    let status = response.status();
    let value: serde_json::Value = response.json().await.expect("webdriver json");
    assert!(status.is_success(), "{url}: {status} {value}");
    value["value"].clone()
}

/// Kills chromedriver (and its Chromium) however the test ends.
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium driven over WebDriver by its own chromedriver.
struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<driver>/session/<id>`.
    session: String,
    _profile: tempfile::TempDir,
    driver: Driver,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium `width` px wide; `None` (after a visible
    /// skip, a failure under CI) when either is not installed.
    async fn start(width: u32, height: u32) -> Option<Browser> {
        let Some((chromium, chromedriver)) = browser() else {
            common::skip(
                "chromium or chromedriver is not installed (apt-get install -y chromium chromium-driver)",
            );
            return None;
        };
        let http = client();
        let driver_port = free_port();
        let driver = Driver(
            std::process::Command::new(&chromedriver)
                .arg(format!("--port={driver_port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let wd_base = format!("http://127.0.0.1:{driver_port}");
        // Each wait has its own deadline: a slow first wait on a loaded machine must not eat
        // the time of the next.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while http.get(format!("{wd_base}/status")).send().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver never answered"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let session = wd(
            &http,
            reqwest::Method::POST,
            &format!("{wd_base}/session"),
            Some(serde_json::json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args}
            }}})),
        )
        .await;
        let sid = session["sessionId"].as_str().expect("session id");
        Some(Browser {
            session: format!("{wd_base}/session/{sid}"),
            http,
            _profile: profile,
            driver,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        wd(&self.http, method, &format!("{}{path}", self.session), body).await
    }

    async fn goto(&self, url: &str) {
        self.call(
            reqwest::Method::POST,
            "/url",
            Some(serde_json::json!({ "url": url })),
        )
        .await;
    }

    /// The ids of the elements `css` matches.
    async fn find(&self, css: &str) -> Vec<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(serde_json::json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_object()?.values().next()?.as_str().map(String::from))
            .collect()
    }

    /// The one element `css` matches.
    async fn one(&self, css: &str) -> String {
        let found = self.find(css).await;
        assert_eq!(found.len(), 1, "{css} on the page: {}", self.source().await);
        found[0].clone()
    }

    /// Clicks what `css` matches, as a person does.
    async fn click(&self, css: &str) {
        let id = self.one(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(serde_json::json!({})),
        )
        .await;
    }

    /// Types `text` into the field `css` matches.
    async fn type_into(&self, css: &str, text: &str) {
        let id = self.one(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(serde_json::json!({ "text": text })),
        )
        .await;
    }

    /// The text of the first element `css` matches, if any.
    async fn text(&self, css: &str) -> Option<String> {
        let id = self.find(css).await.into_iter().next()?;
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .map(String::from)
    }

    /// The page's HTML.
    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` in the page; what it returns.
    async fn execute(&self, script: &str) -> serde_json::Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(serde_json::json!({"script": script, "args": []})),
        )
        .await
    }

    async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(serde_json::json!({"width": width, "height": height})),
        )
        .await;
    }

    /// The page as a PNG.
    async fn screenshot(&self) -> Vec<u8> {
        let shot = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64_decode(shot.as_str().expect("screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        png
    }

    /// Ends the session, then chromedriver.
    async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
        drop(self.driver);
    }
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
/// split over two lines, how far the page scrolls sideways, and cut cells whose title does not
/// hold what they show (a location shows its file name and line, its title the whole path).
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
return {
  width: window.innerWidth,
  checked,
  split,
  sideways: document.documentElement.scrollWidth - window.innerWidth,
  untitled,
};
"#;

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

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
