//! What the activity tests share: a subscription on the sandbox pointed at a receiver, the
//! activity CSV read back as rows, a free port, and polls with deadlines.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use quo_sync::quo::client::{ClientSettings, QuoClient};
use quo_sync::quo::dated::{DatedClient, NewWebhook};
use quo_sync::quo::limiter::RateLimiter;
use quo_sync::quo::retry::RetryPolicy;
use quo_sync::sandbox::SandboxHandle;
use secrecy::{ExposeSecret, SecretString};

/// The eight event types activity logging consumes.
pub const EVENTS: [&str; 8] = quo_sync::activity::observe::EVENT_TYPES;

/// A dated client on the sandbox's key.
pub fn dated(sandbox: &SandboxHandle) -> DatedClient {
    let client = QuoClient::new(
        ClientSettings {
            base_url: sandbox.base_url(),
            api_key: SecretString::from(sandbox.api_key().to_string()),
            source: "quo-sync".into(),
            timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        },
        RateLimiter::per_second(1000),
    );
    DatedClient::new(&client)
}

/// Subscribes `url` to the activity events (as a person would in the Quo app); returns the
/// `whsec_` key to configure as `activity.webhook_secrets`.
pub async fn subscribe(sandbox: &SandboxHandle, url: &str) -> String {
    let created = dated(sandbox)
        .create_webhook(&NewWebhook {
            url: url.to_string(),
            events: EVENTS.iter().map(|e| e.to_string()).collect(),
            resource_ids: Some(vec!["*".into()]),
            label: "test".into(),
        })
        .await
        .expect("subscription");
    created.key.expose_secret().to_string()
}

/// A free port for quo-sync's receiver and the `whsec_` key of an activity subscription that
/// delivers there.
pub async fn receiver(sandbox: &SandboxHandle) -> (u16, String) {
    let port = free_port();
    let key = subscribe(
        sandbox,
        &format!("http://127.0.0.1:{port}/webhooks/quo/activity"),
    )
    .await;
    (port, key)
}

/// A port nothing listens on now. `common::free_port` for the tests that use `support` alone:
/// this file is also compiled on its own into the convergence test and the bench, so it keeps
/// its own copy.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The activity CSV as rows (column → value), in file order.
pub fn csv_rows(path: &Path) -> Vec<HashMap<String, String>> {
    let Ok(mut reader) = csv::Reader::from_path(path) else {
        return Vec::new();
    };
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    reader
        .records()
        .map(|r| {
            let r = r.expect("a well-formed row");
            header
                .iter()
                .cloned()
                .zip(r.iter().map(str::to_string))
                .collect()
        })
        .collect()
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `within`.
pub async fn until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The E.164 number `common::row(id, n)` gives record `n`.
pub fn number_of(n: u32) -> String {
    format!("+1415555{:04}", 1000 + n)
}

/// `config/<example>` followed by `config/<activity>`, with `replace` applied, as one table.
pub fn vendor_config(example: &str, activity: &str, replace: &[(&str, String)]) -> toml::Table {
    let mut text = std::fs::read_to_string(format!("config/{example}")).unwrap();
    text.push('\n');
    text.push_str(&std::fs::read_to_string(format!("config/{activity}")).unwrap());
    for (from, to) in replace {
        text = text.replace(from, to);
    }
    text.parse().expect("the examples are valid TOML together")
}

/// `vendor`'s two examples (`config/rest-<vendor>.example.toml` and
/// `config/activity-<vendor>.example.toml`) as one table, adapted as an operator would: the
/// `replace` pairs applied (the fake CRM's URLs, a client id), and each secret the examples read
/// from the environment (`<name>_env = "…"`) read from a file under `dir` holding `value`.
pub fn vendor_example(
    dir: &Path,
    vendor: &str,
    replace: &[(&str, String)],
    secrets: &[(&str, &str)],
) -> toml::Table {
    let example = format!("rest-{vendor}.example.toml");
    let activity = format!("activity-{vendor}.example.toml");
    let text = std::fs::read_to_string(format!("config/{example}")).unwrap();
    let mut from_files: Vec<(String, String)> = Vec::new();
    for (name, value) in secrets {
        let file = dir.join(name);
        std::fs::write(&file, value).unwrap();
        let key = format!("\n{name}_env = \"");
        let start = text
            .find(&key)
            .unwrap_or_else(|| panic!("config/{example} reads {name} from the environment"))
            + 1;
        let end = start + key.len() - 1 + text[start + key.len() - 1..].find('"').unwrap() + 1;
        from_files.push((
            text[start..end].to_string(),
            format!("{name}_file = {file:?}"),
        ));
    }
    let replace: Vec<(&str, String)> = replace
        .iter()
        .cloned()
        .chain(
            from_files
                .iter()
                .map(|(from, to)| (from.as_str(), to.clone())),
        )
        .collect();
    vendor_config(&example, &activity, &replace)
}

/// Sets the key at `path` (tables made as needed).
pub fn set(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let mut at = table;
    for key in &path[..path.len() - 1] {
        at = at
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap();
    }
    at.insert(path[path.len() - 1].to_string(), value);
}

/// A TOML string.
pub fn text(v: &str) -> toml::Value {
    toml::Value::String(v.to_string())
}

/// Points `table` at `sandbox` (Quo), `ledger`, a receiver on `port` with the subscription
/// `key`, and turns the contact scan off.
pub fn point_at(
    table: &mut toml::Table,
    sandbox: &SandboxHandle,
    ledger: &Path,
    port: u16,
    key: &str,
) {
    set(table, &["quo", "base_url"], text(&sandbox.base_url()));
    set(table, &["quo", "api_key"], text(sandbox.api_key()));
    set(
        table,
        &["quo", "requests_per_second"],
        toml::Value::Integer(1000),
    );
    set(
        table,
        &["ledger", "path"],
        text(&ledger.display().to_string()),
    );
    set(
        table,
        &["reverse", "listen"],
        text(&format!("127.0.0.1:{port}")),
    );
    set(table, &["reverse", "poll_interval"], text("0s"));
    set(
        table,
        &["activity", "webhook_secrets"],
        toml::Value::Array(vec![text(key)]),
    );
}
