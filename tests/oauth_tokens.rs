//! OAuth2 refresh tokens shared by several processes on one ledger (a leader, a standby, a
//! `plan` run), against a fake Salesforce org whose token endpoint rotates the refresh token on
//! every grant and, like vendors that detect reuse, revokes the whole family when a rotated-away
//! token comes back:
//! - a token rotated by another process is read from the ledger at the next refresh;
//! - two processes refreshing at once are serialised, so neither presents a stale token;
//! - a token request that timed out is not retried after another process rotated the token;
//! - a ledger that cannot be read is an error, never a fall-back to the configured token;
//! - `invalid_grant` re-reads the ledger and retries once; a failed store is retried;
//! - `temporarily_unavailable` and vendor rate limits at the token endpoint are retried, not
//!   refusals (exit 2);
//! - secrets in the token URL's query never reach logs or errors, and credentials are never
//!   sent over `http://` to a host beyond loopback unless `allow_insecure_http = true`.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use quo_sync::config::{Config, LogFormat};
use quo_sync::ledger::LedgerTarget;
use quo_sync::source::{ReadRequest, SourceError};
use quo_sync::telemetry::{CaptureWriter, init_with_writer};
use serde_json::{Value, json};
use support::salesforce::FakeSalesforce;
use support::token_desk::TokenDesk;
use support::vendor_run::{Credentials, SourceProcess, salesforce_config};

const CLIENT_ID: &str = "3MVG9-rotation-consumer-key";
const SECRET: &str = "sf-rotation-secret-DO-NOT-LEAK-31b7";
const REFRESH: &str = "sf-rotation-refresh-DO-NOT-LEAK-8c21";
/// How long the fake org's access tokens live (it sends no `expires_in`: a 401 triggers the
/// refresh). Tests end them with `TokenDesk::expire_all` rather than waiting out a short
/// lifetime, which a slow read under load outlived (an extra refresh broke the counts).
const LIFETIME: Duration = Duration::from_secs(60);

/// The log capture for this test binary (one global subscriber, shared by every test).
fn logs() -> CaptureWriter {
    static LOGS: OnceLock<CaptureWriter> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CaptureWriter::default();
        init_with_writer(LogFormat::Json, "debug", logs.clone());
        logs
    })
    .clone()
}

fn contacts() -> Vec<Value> {
    (1..=3)
        .map(|i| {
            json!({
                "Id": format!("0035g00000RT{i:04}AAA"),
                "FirstName": format!("Rot{i}"),
                "LastName": "Ation",
                "Email": format!("rot{i}@example.com"),
                "Phone": format!("+1415555{:04}", 7000 + i),
                "MobilePhone": null,
                "Title": "Engineer",
                "Account": { "attributes": { "type": "Account" }, "Name": "Acme" },
            })
        })
        .collect()
}

/// A fake org that rotates refresh tokens, detecting their reuse when `reuse_detection`, and
/// whose access tokens live `lifetime`.
async fn rotating_org(reuse_detection: bool, lifetime: Duration) -> FakeSalesforce {
    let mut desk = TokenDesk::new(CLIENT_ID, SECRET, REFRESH, lifetime);
    desk.rotate = true;
    desk.reuse_detection = reuse_detection;
    FakeSalesforce::start(contacts(), desk, 50).await
}

/// The Salesforce example config pointed at `crm`, with `edits` applied to its text.
fn write_config(dir: &Path, crm: &str, edits: &[(&str, &str)]) -> PathBuf {
    let credentials = Credentials {
        client_id: CLIENT_ID,
        secret: SECRET,
        refresh: REFRESH,
    };
    salesforce_config(dir, crm, &credentials, edits)
}

/// One quo-sync process's view: its own REST source and its own connection to the ledger.
type Process = SourceProcess;

/// A rotating org, a ledger in a temp dir and the config for both.
struct Rig {
    crm: FakeSalesforce,
    _dir: tempfile::TempDir,
    config: PathBuf,
    ledger: LedgerTarget,
}

impl Rig {
    /// With reuse detection and `LIFETIME`.
    async fn new(edits: &[(&str, &str)]) -> Rig {
        Self::with_org(rotating_org(true, LIFETIME).await, edits)
    }

    fn with_org(crm: FakeSalesforce, edits: &[(&str, &str)]) -> Rig {
        logs(); // installed before anything logs
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &crm.base_url, edits);
        Rig {
            crm,
            ledger: LedgerTarget::Sqlite(dir.path().join("ledger.db")),
            _dir: dir,
            config,
        }
    }

    async fn process(&self) -> Process {
        Process::start(&self.config, &self.ledger).await
    }

    fn desk(&self) -> &TokenDesk {
        self.crm.desk()
    }
}

#[tokio::test]
async fn a_token_rotated_by_another_process_is_read_from_the_ledger_at_the_next_refresh() {
    let rig = Rig::new(&[]).await;
    let leader = rig.process().await;
    assert_eq!(leader.read().await.expect("the leader's first read"), 3);
    // A `plan` (or another replica) starts, refreshes with the token the leader stored, and so
    // rotates it once more.
    let plan = rig.process().await;
    assert_eq!(plan.read().await.expect("plan reads"), 3);
    assert_eq!(rig.desk().issued(), 2);

    // The leader's access token runs out: its refresh must use the token `plan` stored.
    rig.desk().expire_all();
    let read = leader.read().await;
    assert_eq!(
        rig.desk().stale_presented(),
        0,
        "a rotated-away token was sent"
    );
    assert_eq!(read.expect("the leader refreshes with the stored token"), 3);
    // The refresh this test is about happened: the leader's expired token was refused once and
    // one token was granted for the refresh token `plan` stored.
    assert_eq!(
        rig.desk().expired_uses(),
        1,
        "the leader's expired access token was presented"
    );
    assert_eq!(rig.desk().issued(), 3, "the leader refreshed once");
    assert!(!rig.desk().revoked());
    assert_eq!(plan.read().await.expect("plan still works"), 3);
}

#[tokio::test]
async fn two_processes_refreshing_at_once_are_serialised() {
    concurrent_refreshes(Rig::new(&[]).await).await;
}

#[tokio::test]
async fn on_postgres_two_processes_refreshing_at_once_are_serialised() {
    let Some(url) = common::pg::database().await else {
        return;
    };
    let mut rig = Rig::new(&[]).await;
    rig.ledger = LedgerTarget::parse(&url).unwrap();
    concurrent_refreshes(rig).await;
}

async fn concurrent_refreshes(rig: Rig) {
    let a = rig.process().await;
    let b = rig.process().await;
    a.read().await.expect("a reads");
    b.read().await.expect("b reads");
    // Both access tokens run out, and each grant takes a while: both refresh at once.
    rig.desk().expire_all();
    rig.desk().set_delay(Duration::from_millis(300));
    let (ra, rb) = tokio::join!(a.read(), b.read());
    // The refreshes this test is about happened: both expired access tokens were refused, and
    // each process was granted a new one.
    assert_eq!(
        rig.desk().expired_uses(),
        2,
        "both processes presented their expired access token"
    );
    assert_eq!(
        rig.desk().issued(),
        4,
        "each process refreshed once (access tokens are its own; the refresh token is shared)"
    );
    assert_eq!(
        rig.desk().stale_presented(),
        0,
        "both refreshed with one token"
    );
    assert!(!rig.desk().revoked(), "the token family was revoked");
    assert_eq!(ra.expect("a's refresh"), 3);
    assert_eq!(rb.expect("b's refresh"), 3);
}

#[tokio::test]
async fn a_timed_out_token_request_is_not_retried_after_another_process_rotated_the_token() {
    let rig = Rig::new(&[("timeout = \"30s\"", "timeout = \"1s\"")]).await;
    let a = rig.process().await;
    let b = rig.process().await;
    a.read().await.expect("a reads");
    b.read().await.expect("b reads");
    rig.desk().expire_all();
    // A's next token request hangs past its timeout (and is never processed); meanwhile B
    // needs a token too.
    rig.desk().stall_next(1, Duration::from_millis(1500));
    let received = rig.desk().received();
    let a_read = tokio::spawn(async move { (a.read().await, a) });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rig.desk().received() == received {
        assert!(std::time::Instant::now() < deadline, "a never asked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rb = b.read().await;
    let (ra, _a) = a_read.await.unwrap();
    assert_eq!(rig.desk().stale_presented(), 0, "a stale token was retried");
    assert!(!rig.desk().revoked());
    assert_eq!(ra.expect("a's retried refresh"), 3);
    assert_eq!(rb.expect("b's refresh"), 3);
}

#[tokio::test]
async fn a_ledger_that_cannot_be_read_is_an_error_not_the_configured_token() {
    let rig = Rig::new(&[]).await;
    let first = rig.process().await;
    first.read().await.expect("first process reads");
    assert_ne!(rig.desk().current_refresh(), REFRESH, "rotated away");
    let asked = rig.desk().received();

    // Another process whose ledger connection is gone when it first needs a token.
    let other = rig.process().await;
    other.ledger.close().await;
    let error = other.read().await.expect_err("no token without the ledger");
    assert_eq!(
        rig.desk().received(),
        asked,
        "the token endpoint was asked anyway"
    );
    assert_eq!(rig.desk().stale_presented(), 0);
    assert!(
        !matches!(error, SourceError::CredentialsRefused { .. }),
        "not an operator's problem (exit 2): {error}"
    );
    assert!(error.to_string().contains("ledger"), "{error}");
    assert_eq!(first.read().await.expect("the family is intact"), 3);
}

#[tokio::test]
async fn invalid_grant_reads_the_ledger_again_and_retries_once() {
    // Without reuse detection: a client outside the claims makes one stale grant unavoidable.
    let rig = Rig::with_org(rotating_org(false, LIFETIME).await, &[]);
    let a = rig.process().await;
    a.read().await.expect("a reads");
    rig.desk().expire_all();
    // A client that does not take part in the ledger's claims (an older quo-sync, a script)
    // rotates the token while A's request is on its way, and stores what it got.
    rig.desk().set_delay(Duration::from_millis(300));
    let received = rig.desk().received();
    let ledger = a.ledger.clone();
    let a_read = tokio::spawn(async move { (a.read().await, a) });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rig.desk().received() == received {
        assert!(std::time::Instant::now() < deadline, "a never asked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elsewhere = rig.desk().rotate_elsewhere();
    ledger
        .debug_execute(&format!(
            "UPDATE crm_oauth SET refresh_token = '{elsewhere}', generation = generation + 1"
        ))
        .await
        .unwrap();
    rig.desk().set_delay(Duration::ZERO);
    let (read, _a) = a_read.await.unwrap();
    assert_eq!(read.expect("retried with the stored token"), 3);
}

#[tokio::test]
async fn a_rotated_token_whose_store_failed_is_stored_when_the_ledger_is_back() {
    // Access tokens outlive the ledger outage below.
    let rig = Rig::with_org(rotating_org(true, Duration::from_secs(5)).await, &[]);
    rig.process()
        .await
        .read()
        .await
        .expect("a first process reads");
    // A second process's first grant is on its way (held at the desk, unprocessed) when the
    // ledger starts refusing writes to the token's row; it is answered only then, and the
    // refusal is dropped only once b has seen its store fail: the token the grant rotated to
    // must still end up there.
    let not_kept = || {
        let logs = logs().contents();
        logs.lines()
            .filter(|l| l.contains("crm_refresh_token_not_kept") && l.contains("(injected)"))
            .count()
    };
    let not_kept_before = not_kept();
    rig.desk().hold();
    let received = rig.desk().received();
    let b = rig.process().await;
    let ledger = b.ledger.clone();
    let b_read = tokio::spawn(async move { (b.read().await, b) });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rig.desk().received() == received {
        assert!(std::time::Instant::now() < deadline, "b never asked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ledger
        .debug_execute(
            "CREATE TRIGGER refuse_token_store BEFORE UPDATE OF refresh_token ON crm_oauth
             BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END",
        )
        .await
        .unwrap();
    rig.desk().release();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while not_kept() == not_kept_before {
        assert!(
            std::time::Instant::now() < deadline,
            "b's store of the rotated token never failed (the injected refusal did not fire)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ledger
        .debug_execute("DROP TRIGGER refuse_token_store")
        .await
        .unwrap();
    let (read, _b) = b_read.await.unwrap();
    assert_eq!(read.expect("b's read"), 3);
    // A new process starts from what the ledger kept: the latest token.
    let next = rig.process().await;
    assert_eq!(next.read().await.expect("the kept token works"), 3);
    assert_eq!(rig.desk().stale_presented(), 0);
    assert!(!rig.desk().revoked());
}

#[tokio::test]
async fn temporarily_unavailable_and_vendor_rate_limits_are_retried_not_refusals() {
    let rig = Rig::new(&[]).await;
    let a = rig.process().await;
    rig.desk().answer_next(
        400,
        json!({"error": "temporarily_unavailable", "error_description": "maintenance"}),
    );
    // Zoho's answer when tokens are asked for too often.
    rig.desk().answer_next(
        400,
        json!({"error": "Access Denied", "error_description": "You have made too many requests continuously. Please try again after some time.", "status": "failure"}),
    );
    rig.desk()
        .answer_next(429, json!({"error": "rate_limited"}));
    assert_eq!(a.read().await.expect("retried until a token came"), 3);
    assert_eq!(rig.desk().received(), 4);

    // A real refusal still is one (exit 2), and is not retried.
    rig.desk().expire_all();
    rig.desk()
        .answer_next(400, json!({"error": "invalid_client"}));
    let error = a.read().await.expect_err("refused");
    assert!(
        matches!(error, SourceError::CredentialsRefused { .. }),
        "{error}"
    );
    assert_eq!(rig.desk().received(), 5);
}

#[tokio::test]
async fn secrets_in_the_token_url_query_reach_no_log_or_error() {
    let logs = logs();
    let rig = Rig::new(&[(
        "/services/oauth2/token\"",
        "/services/oauth2/token?client_secret=qs-secret-DO-NOT-LEAK-1&refresh_token=qs-refresh-DO-NOT-LEAK-2\"",
    )])
    .await;
    let a = rig.process().await;
    rig.desk().answer_next(503, json!({}));
    rig.desk()
        .answer_next(400, json!({"error": "invalid_client"}));
    let error = a.read().await.expect_err("refused");
    let shown = format!("{error} {error:?} {:?}", a.source);
    assert!(shown.contains("/services/oauth2/token"), "{shown}");
    let captured = logs.contents();
    assert!(captured.contains("crm_auth_failed"), "{captured}");
    for secret in ["qs-secret-DO-NOT-LEAK-1", "qs-refresh-DO-NOT-LEAK-2"] {
        assert!(!shown.contains(secret), "{secret} in the error: {shown}");
        assert!(!captured.contains(secret), "{secret} in the logs");
    }
}

#[test]
fn an_http_token_url_beyond_loopback_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "http://auth.crm.example",
        &[(
            "base_url = \"http://auth.crm.example\"",
            "base_url = \"https://api.crm.example\"",
        )],
    );
    let error = Config::load_with_env(&path, std::iter::empty())
        .expect_err("an http:// token URL beyond loopback is refused")
        .to_string();
    assert!(error.contains("source.rest.auth.token_url"), "{error}");
    assert!(error.contains("allow_insecure_http"), "{error}");

    let path = write_config(
        dir.path(),
        "http://auth.crm.example",
        &[
            (
                "base_url = \"http://auth.crm.example\"",
                "base_url = \"https://api.crm.example\"",
            ),
            ("list_path =", "allow_insecure_http = true\nlist_path ="),
        ],
    );
    Config::load_with_env(&path, std::iter::empty()).expect("allowed when asked for");
}

#[tokio::test]
async fn an_http_api_base_from_the_token_answer_is_refused_unless_allowed() {
    // A token endpoint whose answer names a plain-http API base beyond loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/oauth/token",
        axum::routing::post(|| async {
            axum::Json(json!({
                "access_token": "access-DO-NOT-LEAK-77",
                // TEST-NET-1: beyond loopback, and never answers.
                "instance_url": "http://192.0.2.1",
            }))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let table = |extra: &str| -> toml::Table {
        format!(
            r#"
base_url = "https://placeholder.example"
list_path = "/contacts"
id_pointer = "/id"
timeout = "1s"
max_retries = 0
{extra}
[auth]
kind = "oauth2"
grant = "client_credentials"
token_url = "{token_base}/oauth/token"
client_id = "cid"
client_secret = "cs"
base_url_pointer = "/instance_url"
"#
        )
        .parse()
        .unwrap()
    };
    let source = quo_sync::source::rest::RestSource::from_table(&table("")).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let started = std::time::Instant::now();
    let error = source
        .read(ReadRequest::default(), tx)
        .await
        .expect_err("refused")
        .to_string();
    assert!(error.contains("allow_insecure_http"), "{error}");
    assert!(error.contains("http://192.0.2.1"), "{error}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "nothing was sent there"
    );
}
