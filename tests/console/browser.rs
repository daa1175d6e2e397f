//! A headless Chromium driven over WebDriver (its own chromedriver on a free port), as the
//! console tests use it: start, open a page, find, click, type, read, run a script, take a
//! screenshot.

use std::time::Duration;

use super::common;

/// An HTTP client that shows redirects instead of following them.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
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
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<driver>/session/<id>`.
    session: String,
    _profile: tempfile::TempDir,
    driver: Driver,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium `width` px wide; `None` (after a visible
    /// skip, a failure under CI) when either is not installed.
    pub async fn start(width: u32, height: u32) -> Option<Browser> {
        let Some((chromium, chromedriver)) = browser() else {
            common::skip(
                "chromium or chromedriver is not installed (apt-get install -y chromium chromium-driver)",
            );
            return None;
        };
        let http = client();
        let driver_port = common::free_port();
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

    pub async fn goto(&self, url: &str) {
        self.call(
            reqwest::Method::POST,
            "/url",
            Some(serde_json::json!({ "url": url })),
        )
        .await;
    }

    /// The ids of the elements `css` matches.
    pub async fn find(&self, css: &str) -> Vec<String> {
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
    pub async fn one(&self, css: &str) -> String {
        let found = self.find(css).await;
        assert_eq!(found.len(), 1, "{css} on the page: {}", self.source().await);
        found[0].clone()
    }

    /// Clicks what `css` matches, as a person does.
    pub async fn click(&self, css: &str) {
        let id = self.one(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(serde_json::json!({})),
        )
        .await;
    }

    /// Types `text` into the field `css` matches.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.one(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(serde_json::json!({ "text": text })),
        )
        .await;
    }

    /// The text of the first element `css` matches, if any.
    pub async fn text(&self, css: &str) -> Option<String> {
        let id = self.find(css).await.into_iter().next()?;
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .map(String::from)
    }

    /// The page's HTML.
    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` in the page; what it returns.
    pub async fn execute(&self, script: &str) -> serde_json::Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(serde_json::json!({"script": script, "args": []})),
        )
        .await
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(serde_json::json!({"width": width, "height": height})),
        )
        .await;
    }

    /// The page as a PNG.
    pub async fn screenshot(&self) -> Vec<u8> {
        let shot = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64_decode(shot.as_str().expect("screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        png
    }

    /// Ends the session, then chromedriver.
    pub async fn close(self) {
        let _ = self.http.delete(&self.session).send().await;
        drop(self.driver);
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}
