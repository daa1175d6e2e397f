//! Running a vendor's example config against the sandbox: the context both the Salesforce and
//! the Zoho tests build, and the one contact a record must have in Quo.
#![allow(dead_code)]

use std::path::Path;

use quo_sync::config::Config;
use quo_sync::sandbox::SandboxHandle;
use quo_sync::sync::SyncContext;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A `once` context for the example config at `path`, pointed at `sandbox` and `ledger`.
pub async fn example_context(path: &Path, sandbox: &SandboxHandle, ledger: &Path) -> SyncContext {
    example_context_on(
        path,
        sandbox,
        ("QUO_SYNC__LEDGER__PATH", ledger.display().to_string()),
    )
    .await
}

/// Like [`example_context`] on the ledger that `ledger` (an env override: `QUO_SYNC__LEDGER__PATH`
/// or `QUO_SYNC__LEDGER__URL` and its value) names.
pub async fn example_context_on(
    path: &Path,
    sandbox: &SandboxHandle,
    ledger: (&str, String),
) -> SyncContext {
    let env = [
        ("QUO_SYNC__QUO__BASE_URL", sandbox.base_url()),
        ("QUO_API_KEY", sandbox.api_key().to_string()),
        ("QUO_SYNC__QUO__REQUESTS_PER_SECOND", "1000".into()),
        (ledger.0, ledger.1),
        ("QUO_SYNC__REVERSE__POLL_INTERVAL", "1ms".into()),
    ]
    .map(|(k, v)| (k.to_string(), v));
    let config = Config::load_with_env(path, env).expect("the example config loads");
    quo_sync::app::build_context(&config, "once", CancellationToken::new())
        .await
        .expect("context builds")
}

/// The one sandbox contact carrying external id `id` (panics on none or several).
pub fn contact_for(sandbox: &SandboxHandle, id: &str) -> Value {
    let found: Vec<Value> = sandbox
        .contacts()
        .into_iter()
        .filter(|c| c["externalId"] == id)
        .collect();
    assert_eq!(found.len(), 1, "one contact for {id}: {found:#?}");
    found.into_iter().next().unwrap()
}
