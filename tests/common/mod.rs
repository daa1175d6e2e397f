//! Test helpers: spawn the sandbox on port 0, write a config and a CSV into a temp dir, and run
//! cycles against them, so each test reads like its scenario.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use quo_sync::config::Config;
use quo_sync::ledger::Ledger;
use quo_sync::sandbox::{SandboxConfig, SandboxHandle};
use quo_sync::sync::{CycleReport, Mode, SyncContext, run_cycle};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub mod pg;

/// Which ledger backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file.
    Sqlite,
    /// A fresh database on the throwaway PostgreSQL cluster.
    Postgres,
}

/// Skips the running test because a real component it needs (PostgreSQL, Chromium) is missing.
/// Under `CI` that is a failure: CI must run everything. Elsewhere it writes
/// `SKIPPED <test>: <reason>` to the process's own stderr, which libtest does not capture, so
/// the line shows in `cargo test` output next to the test's `ok`; the caller then returns.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI is set, so nothing may be skipped, yet {reason}"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {reason}");
}

/// The sample header operators copy.
pub const HEADER: &str = "crm_id,first_name,last_name,company,role,email,work_email,phone,mobile,lead_score,vip,renewal_date,tags,website,updated_at";

/// A valid CSV row for record `id`, with a distinct phone number.
pub fn row(id: &str, n: u32) -> String {
    format!(
        "{id},First{n},Last{n},Acme {n},Buyer,first{n}@example.com,,(415) 555-{:04},,{n},yes,2026-03-01,vip;enterprise,https://acme{n}.example.com,2026-01-01T00:00:00Z",
        1000 + n
    )
}

/// A CSV file with the header and `rows`.
pub fn csv(rows: &[String]) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for r in rows {
        out.push_str(r);
        out.push('\n');
    }
    out
}

/// The `[mapping]` of the shipped example config.
pub const MAPPING: &str = include_str!("../fixtures/mapping.toml");

/// A sandbox, a temp dir with config, CSV and ledger, and a cycle context.
pub struct TestApp {
    pub sandbox: SandboxHandle,
    pub dir: TempDir,
    pub csv_path: PathBuf,
    pub config_path: PathBuf,
    pub ctx: SyncContext,
}

/// The service started by [`TestApp::start_service`].
pub struct RunningService {
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), quo_sync::app::AppError>>,
}

impl RunningService {
    /// Stops the service the way SIGTERM does and checks it ended without error.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

impl TestApp {
    /// Runs the service (`quo-sync run`) in-process on this app's config and context until
    /// [`RunningService::stop`].
    pub fn start_service(&self) -> RunningService {
        let config = Config::load_with_env(&self.config_path, std::iter::empty()).unwrap();
        let cancel = CancellationToken::new();
        let mut ctx = self.ctx.clone();
        ctx.cancel = cancel.clone();
        let handle =
            tokio::spawn(async move { quo_sync::app::run_service(&ctx, &config, None).await });
        RunningService { cancel, handle }
    }

    /// Spawns with the default sandbox and `extra` TOML appended to the config.
    pub async fn spawn(csv_text: &str) -> TestApp {
        Self::spawn_with(csv_text, SandboxConfig::default(), "").await
    }

    /// Spawns with a custom sandbox and extra config sections.
    pub async fn spawn_with(csv_text: &str, sandbox: SandboxConfig, extra: &str) -> TestApp {
        Self::spawn_at(csv_text, sandbox, extra, None).await
    }

    /// Spawns on `backend`; `None` (a visible skip, see [`skip`]) when PostgreSQL is wanted but
    /// not installed outside CI.
    pub async fn spawn_on(
        backend: Backend,
        csv_text: &str,
        sandbox: SandboxConfig,
        extra: &str,
    ) -> Option<TestApp> {
        let url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(pg::database().await?),
        };
        Some(Self::spawn_at(csv_text, sandbox, extra, url).await)
    }

    async fn spawn_at(
        csv_text: &str,
        sandbox: SandboxConfig,
        extra: &str,
        ledger_url: Option<String>,
    ) -> TestApp {
        let sandbox = SandboxHandle::start(SandboxConfig {
            requests_per_second: 0,
            ..sandbox
        })
        .await
        .expect("sandbox starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let csv_path = dir.path().join("contacts.csv");
        std::fs::write(&csv_path, csv_text).expect("write csv");
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
list_lag = "20ms"

[ledger]
path = "{ledger}"
{ledger_url}

[source]
kind = "csv"
path = "{csv}"
{MAPPING}
{extra}
"#,
            base = sandbox.base_url(),
            key = sandbox.api_key(),
            ledger = dir.path().join("ledger.db").display(),
            ledger_url = ledger_url
                .map(|u| format!("url = \"{u}\""))
                .unwrap_or_default(),
            csv = csv_path.display(),
        );
        std::fs::write(&config_path, toml).expect("write config");
        let config = Config::load_with_env(&config_path, std::iter::empty()).expect("config loads");
        let ctx = quo_sync::app::build_context(&config, "once", CancellationToken::new())
            .await
            .expect("context builds");
        TestApp {
            sandbox,
            dir,
            csv_path,
            config_path,
            ctx,
        }
    }

    /// Runs one applying cycle.
    pub async fn cycle(&self) -> CycleReport {
        run_cycle(&self.ctx, Mode::Apply).await.expect("cycle runs")
    }

    /// Runs one dry-run cycle.
    pub async fn plan(&self) -> CycleReport {
        run_cycle(&self.ctx, Mode::DryRun).await.expect("plan runs")
    }

    /// Replaces the CSV file.
    pub fn write_csv(&self, text: &str) {
        std::fs::write(&self.csv_path, text).expect("write csv");
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ctx.ledger
    }

    /// Reopens the context (as a restarted process would).
    pub async fn restart(&mut self) {
        self.ctx.ledger.close().await;
        let config =
            Config::load_with_env(&self.config_path, std::iter::empty()).expect("config loads");
        self.ctx = quo_sync::app::build_context(&config, "once", CancellationToken::new())
            .await
            .expect("context builds");
    }

    /// Restarts with `quo.max_retries = 0`, so an unknown outcome stays unresolved in this
    /// process (what a crash right after the request leaves behind).
    pub async fn restart_without_retries(&mut self) {
        let config = std::fs::read_to_string(&self.config_path).expect("read config");
        std::fs::write(
            &self.config_path,
            config.replace("max_retries = 10", "max_retries = 0"),
        )
        .expect("write config");
        self.restart().await;
    }

    /// The ledger row of a record (which must exist).
    pub async fn row(&self, external_id: &str) -> quo_sync::ledger::RecordRow {
        self.ledger()
            .record(&quo_sync::domain::ExternalId::parse(external_id).unwrap())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("ledger row for {external_id}"))
    }

    /// The sandbox contact for an external id (exactly one expected).
    pub fn contact_for(&self, external_id: &str) -> serde_json::Value {
        let matches: Vec<_> = self
            .sandbox
            .contacts()
            .into_iter()
            .filter(|c| c["externalId"] == external_id)
            .collect();
        assert_eq!(
            matches.len(),
            1,
            "exactly one contact for {external_id}: {matches:#?}"
        );
        matches.into_iter().next().unwrap()
    }

    /// [`TestApp::assert_one_contact_per_record`], and no record was sent a second create since
    /// the last stats reset: with 409 on, a second POST for a record Quo already has still ends
    /// with one contact, so the count alone cannot fail; the 409 that POST draws can.
    pub async fn assert_created_once(&self, external_ids: &[String]) {
        let stats = self.sandbox.stats();
        assert_eq!(
            stats.by_route_status.get("POST /v1/contacts 409"),
            None,
            "a create was sent again for a contact Quo already had: {stats:?}"
        );
        self.assert_one_contact_per_record(external_ids).await;
    }

    /// POSTs to `/v1/contacts` the sandbox answered 201 since the last stats reset.
    pub fn creates_answered(&self) -> u64 {
        self.sandbox
            .stats()
            .by_route_status
            .get("POST /v1/contacts 201")
            .copied()
            .unwrap_or(0)
    }

    /// Every external id must map to exactly one sandbox contact and one ledger Quo id.
    pub async fn assert_one_contact_per_record(&self, external_ids: &[String]) {
        assert_one_contact_per_record(&self.sandbox, self.ledger(), external_ids).await;
    }
}

/// Each of `external_ids` has exactly one contact in `sandbox`, and `ledger` holds its id.
pub async fn assert_one_contact_per_record(
    sandbox: &SandboxHandle,
    ledger: &Ledger,
    external_ids: &[String],
) {
    for id in external_ids {
        assert_eq!(sandbox.count_by_external_id(id), 1, "contacts for {id}");
        let row = ledger
            .record(&quo_sync::domain::ExternalId::parse(id).unwrap())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("ledger row for {id}"));
        let quo_id = row.quo_id.unwrap_or_else(|| panic!("quo id for {id}"));
        let contact = sandbox
            .contacts()
            .into_iter()
            .find(|c| c["externalId"] == id.as_str())
            .expect("counted above");
        assert_eq!(contact["id"], quo_id.as_str(), "{id}'s contact");
    }
}

/// Shared handle for tests that need it across tasks.
pub type Shared<T> = Arc<T>;

/// A custom field's value on a sandbox contact.
pub fn custom_value(contact: &serde_json::Value, key: &str) -> serde_json::Value {
    contact["customFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["key"] == key)
        .map(|f| f["value"].clone())
        .unwrap_or(serde_json::Value::Null)
}

/// Values of an item list (`emails` / `phoneNumbers`) as (name, value) pairs.
pub fn items(contact: &serde_json::Value, list: &str) -> Vec<(String, String)> {
    contact["defaultFields"][list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["name"].as_str().unwrap_or_default().to_string(),
                i["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The raw signing key the reverse tests share, and its two configured forms.
pub const WEBHOOK_KEY: &[u8] = b"quo-sync test signing key 32byte";

/// `reverse.webhook_secret` in the Standard Webhooks form.
pub fn whsec() -> String {
    use base64::Engine;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(WEBHOOK_KEY)
    )
}

impl TestApp {
    /// Serves the webhook receiver on a random port; returns its `/webhooks/quo` URL.
    pub async fn start_receiver(&self) -> String {
        let receiver = quo_sync::reverse::receiver::Receiver {
            ledger: self.ctx.ledger.clone(),
            secret: Some(secrecy::SecretString::from(whsec())),
            wake: Arc::new(tokio::sync::Notify::new()),
            max_body_bytes: 64 * 1024,
            read_timeout: std::time::Duration::from_millis(500),
            received: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(quo_sync::app::serve(
            listener,
            quo_sync::reverse::receiver::router(receiver),
            CancellationToken::new(),
        ));
        format!("http://{addr}/webhooks/quo")
    }

    /// Waits until the inbox holds `n` events (webhooks are delivered asynchronously).
    pub async fn wait_for_inbox(&self, n: i64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let count = self.inbox_count().await;
            if count >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "inbox reached only {count} of {n} events"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Webhook events stored in the inbox so far.
    /// Waits until a stored webhook event's body contains `text` (an edit's new value), so a
    /// late echo of an earlier write cannot pass for the delivery a test waits for.
    pub async fn wait_for_inbox_containing(&self, text: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let found = self
                .ledger()
                .debug_query_i64(
                    "SELECT COUNT(*) FROM inbox WHERE payload LIKE '%' || $1 || '%'",
                    &[text],
                )
                .await
                .unwrap();
            if found > 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no webhook event carrying {text:?} arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub async fn inbox_count(&self) -> i64 {
        self.ledger()
            .debug_query_i64("SELECT COUNT(*) FROM inbox", &[])
            .await
            .unwrap()
    }

    /// The Quo id of a record.
    pub fn quo_id(&self, external_id: &str) -> String {
        self.contact_for(external_id)["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The CSV text now.
    pub fn csv_text(&self) -> String {
        std::fs::read_to_string(&self.csv_path).unwrap()
    }
}

impl TestApp {
    /// Record `r-1` synced, then its company changed on both sides before the next cycle: to
    /// "Quo Co" in the Quo app now, and to "CRM Co" in the CSV stamped `crm_updated_at`.
    pub async fn spawn_conflict(policy: &str, crm_updated_at: &str) -> TestApp {
        let app = TestApp::spawn_with(
            &csv(&[row("r-1", 1)]),
            SandboxConfig::default(),
            &format!("[reverse]\nconflict = \"{policy}\"\npoll_interval = \"1ms\"\n"),
        )
        .await;
        app.cycle().await;
        app.sandbox
            .app_edit(
                &app.quo_id("r-1"),
                serde_json::json!({"defaultFields": {"company": "Quo Co"}}),
            )
            .unwrap();
        let edited = row("r-1", 1)
            .replace("Acme 1", "CRM Co")
            .replace("2026-01-01T00:00:00Z", crm_updated_at);
        app.write_csv(&csv(&[edited]));
        app
    }
}

/// A client for the sandbox's admin routes (no proxy, short timeout).
fn admin_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("admin client")
}

/// Arms a sandbox fault over the admin API (`POST {base_url}/_sandbox/faults`, JSON forms in
/// `quo_sync::sandbox::faults`); panics unless the sandbox accepts it.
pub async fn sandbox_fault(base_url: &str, spec: serde_json::Value) {
    let resp = admin_client()
        .post(format!("{base_url}/_sandbox/faults"))
        .json(&spec)
        .send()
        .await
        .expect("admin request");
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status.as_u16(), 204, "fault {spec} refused: {body}");
}

/// Clears every sandbox fault (`DELETE {base_url}/_sandbox/faults`); held webhooks are released.
pub async fn sandbox_clear_faults(base_url: &str) {
    let resp = admin_client()
        .delete(format!("{base_url}/_sandbox/faults"))
        .send()
        .await
        .expect("admin request");
    assert_eq!(resp.status().as_u16(), 204);
}

/// The sandbox's internal truth: every contact, whatever faults or response shapes are on
/// (`GET {base_url}/_sandbox/contacts`).
pub async fn sandbox_truth(base_url: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = admin_client()
        .get(format!("{base_url}/_sandbox/contacts"))
        .send()
        .await
        .expect("admin request")
        .json()
        .await
        .expect("json");
    v["data"].as_array().cloned().unwrap_or_default()
}

/// How many times each sandbox fault fired (`GET {base_url}/_sandbox/faults` → `fired`).
pub async fn sandbox_fault_counters(base_url: &str) -> quo_sync::sandbox::FaultCounters {
    let v: serde_json::Value = admin_client()
        .get(format!("{base_url}/_sandbox/faults"))
        .send()
        .await
        .expect("admin request")
        .json()
        .await
        .expect("json");
    serde_json::from_value(v["fired"].clone()).expect("fault counters")
}

/// Changes sandbox settings (`POST {base_url}/_sandbox/settings`, e.g.
/// `{"response_shapes": {"string_values": true}, "refuse_stale_item_ids": false}`); returns the
/// settings now in force.
pub async fn sandbox_settings(base_url: &str, patch: serde_json::Value) -> serde_json::Value {
    let resp = admin_client()
        .post(format!("{base_url}/_sandbox/settings"))
        .json(&patch)
        .send()
        .await
        .expect("admin request");
    assert_eq!(resp.status().as_u16(), 200, "settings {patch} refused");
    resp.json().await.expect("json")
}

/// A sandbox on port 0 without a rate limit, for tests that run the binary against it.
pub async fn unlimited_sandbox() -> SandboxHandle {
    SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox starts")
}

/// A free loopback address for a service listener (bound, read, released).
pub fn free_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The port of [`free_addr`], for a service that binds its own listener.
pub fn free_port() -> u16 {
    free_addr().port()
}

/// `GET /readyz`: status and body (0 when nothing answers yet).
pub async fn readyz(addr: std::net::SocketAddr) -> (u16, String) {
    match reqwest::Client::new()
        .get(format!("http://{addr}/readyz"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
    {
        Ok(response) => (response.status().as_u16(), response.text().await.unwrap()),
        Err(_) => (0, String::new()),
    }
}

/// Polls `check` every 50 ms for up to 20 s.
pub async fn poll(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
