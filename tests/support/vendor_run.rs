//! Running a vendor's example config against the sandbox: the context both the Salesforce and
//! the Zoho tests build, and the one contact a record must have in Quo; the Salesforce config
//! with a rotating refresh token, and a process that only reads the CRM with it (the OAuth
//! tests' second process).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use quo_sync::config::Config;
use quo_sync::ledger::{Ledger, LedgerTarget};
use quo_sync::sandbox::SandboxHandle;
use quo_sync::source::{ReadRequest, Source, SourceError};
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

/// An OAuth2 client's credentials as a vendor's example config takes them.
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub secret: &'a str,
    pub refresh: &'a str,
}

/// The Salesforce example config pointed at `crm`: `credentials` (the secrets in files under
/// `dir`), token requests retried after 20 ms, and `edits` applied to its text.
pub fn salesforce_config(
    dir: &Path,
    crm: &str,
    credentials: &Credentials<'_>,
    edits: &[(&str, &str)],
) -> PathBuf {
    let mut text = std::fs::read_to_string("config/rest-salesforce.example.toml").unwrap();
    let secret_file = dir.join("client_secret");
    let refresh_file = dir.join("refresh_token");
    std::fs::write(&secret_file, credentials.secret).unwrap();
    std::fs::write(&refresh_file, credentials.refresh).unwrap();
    for (from, to) in [
        ("https://login.salesforce.com", crm),
        (
            "3MVG9-your-connected-app-consumer-key",
            credentials.client_id,
        ),
        (
            "client_secret_env = \"SALESFORCE_CLIENT_SECRET\"",
            &format!(
                "client_secret_file = {:?}",
                secret_file.display().to_string()
            ),
        ),
        (
            "refresh_token_env = \"SALESFORCE_REFRESH_TOKEN\"",
            &format!(
                "refresh_token_file = {:?}",
                refresh_file.display().to_string()
            ),
        ),
        ("max_retries = 5", "max_retries = 5\nretry_base = \"20ms\""),
    ]
    .iter()
    .chain(edits)
    {
        assert!(text.contains(from), "the example config has {from:?}");
        text = text.replace(from, to);
    }
    let path = dir.join("quo-sync.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One quo-sync process's view of the CRM: its own REST source and its own connection to the
/// ledger (a leader, a standby, a `plan` run).
pub struct SourceProcess {
    pub source: Source,
    pub ledger: Ledger,
}

impl SourceProcess {
    pub async fn start(config: &Path, ledger: &LedgerTarget) -> SourceProcess {
        let config = Config::load_with_env(config, std::iter::empty()).expect("config loads");
        let source = Source::from_config(&config.source).expect("source builds");
        let ledger = Ledger::open_target(ledger).await.expect("ledger opens");
        source.attach_ledger(&ledger);
        SourceProcess { source, ledger }
    }

    /// One read of every contact; the number of items read.
    pub async fn read(&self) -> Result<u64, SourceError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let drain = tokio::spawn(async move {
            let mut n = 0u64;
            while rx.recv().await.is_some() {
                n += 1;
            }
            n
        });
        let summary = self.source.read(ReadRequest::default(), tx).await;
        let items = drain.await.unwrap();
        summary.map(|_| items)
    }
}
