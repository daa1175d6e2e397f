//! CRM changes reach Quo without waiting for `schedule.interval` (an hour here): a CSV edit is
//! picked up by the file watcher, quo-sync's own write-back starts no extra cycle, and a signed
//! `POST /webhooks/crm` starts a read of the REST CRM (bad signature → 401, oversized → 413,
//! and neither reads anything).
//!
//! With `source.rest.webhook.ids_pointer`, a webhook naming record ids makes the next cycle
//! fetch just those records with the record GET — no list call — and that partial read neither
//! deletes the records it did not fetch nor moves the incremental high-water mark. A notice
//! without ids, or with more than `MAX_NAMED_IDS`, still starts an incremental list read.
//!
//! No client can hold a listener: headers and bodies must arrive within their timeouts, an
//! unsigned notice is refused before its body is read, and with `webhook.timestamp_header` a
//! notice is signed with its time, refused outside five minutes and recognised when replayed.

mod common;
mod support;

use std::time::{Duration, Instant};

use common::{TestApp, csv, row};
use hmac::{Hmac, KeyInit, Mac};
use quo_sync::config::Config;
use quo_sync::domain::ExternalId;
use quo_sync::ledger::{Ledger, RecordState};
use quo_sync::sandbox::{SandboxConfig, SandboxHandle};
use serde_json::{Value, json};
use sha2::Sha256;
use support::fake_crm::{Auth, FakeCrm};
use tokio_util::sync::CancellationToken;

/// Polls `check` every 20 ms until it holds or `deadline` passes.
async fn wait_for(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {deadline:?}");
}

fn first_name(sandbox: &SandboxHandle, external_id: &str) -> Option<String> {
    sandbox
        .contacts()
        .into_iter()
        .find(|c| c["externalId"] == external_id)
        .and_then(|c| c["defaultFields"]["firstName"].as_str().map(str::to_string))
}

#[tokio::test]
async fn a_csv_edit_starts_a_cycle_and_our_own_write_back_does_not() {
    let rows: Vec<String> = (1..=3).map(|i| row(&format!("w-{i}"), i)).collect();
    let app = TestApp::spawn_with(
        &csv(&rows),
        SandboxConfig::default(),
        "[schedule]\ninterval = \"1h\"\n[reverse]\npoll_interval = \"250ms\"\n",
    )
    .await;
    let service = app.start_service();
    wait_for("first cycle", Duration::from_secs(10), async || {
        app.sandbox.contacts().len() == 3
    })
    .await;

    // An edit to the file: the contact changes long before the hourly interval.
    let edited: Vec<String> = rows
        .iter()
        .map(|r| r.replacen("w-1,First1,", "w-1,Edited1,", 1))
        .collect();
    app.write_csv(&csv(&edited));
    wait_for(
        "the CSV edit reaches Quo",
        Duration::from_secs(3),
        async || first_name(&app.sandbox, "w-1").as_deref() == Some("Edited1"),
    )
    .await;

    // An edit in the Quo app is written back to the file by quo-sync itself …
    let quo_id = app.quo_id("w-2");
    app.sandbox
        .app_edit(&quo_id, json!({"defaultFields": {"lastName": "FromQuo"}}))
        .unwrap();
    wait_for(
        "the app edit is written to the CSV",
        Duration::from_secs(5),
        async || app.csv_text().contains("FromQuo"),
    )
    .await;
    let finished = async || {
        let runs = app.ctx.ledger.recent_runs(1000).await.unwrap();
        (runs.iter().all(|r| r.finished_at.is_some()), runs.len())
    };
    wait_for(
        "the write-back cycle finishes",
        Duration::from_secs(5),
        async || finished().await.0,
    )
    .await;
    let (_, runs_after_write) = finished().await;
    // … and that write starts no further cycle (the watcher sees the bytes it wrote).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, runs_later) = finished().await;
    assert_eq!(
        runs_later, runs_after_write,
        "our own write-back started a cycle"
    );

    service.stop().await;
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

const SECRET: &str = "crm-webhook-secret";

/// A running service over a fake CRM with three contacts, `sync.on_source_delete = "delete"`
/// (so a partial read mistaken for a complete one would delete), an hourly interval and
/// `[source.rest.webhook]` with `SECRET` plus the `webhook` lines.
struct Rig {
    sandbox: SandboxHandle,
    crm: FakeCrm,
    ledger: Ledger,
    url: String,
    http: reqwest::Client,
    cancel: CancellationToken,
    service: tokio::task::JoinHandle<Result<(), quo_sync::app::AppError>>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(webhook: &str) -> Rig {
        Self::start_with(webhook, "").await
    }

    /// With `service` lines added to `[service]`.
    async fn start_with(webhook: &str, service: &str) -> Rig {
        let sandbox = SandboxHandle::start(SandboxConfig {
            requests_per_second: 0,
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let contacts = (1..=3)
            .map(|i| {
                json!({
                    "id": format!("h{i}"),
                    "firstName": format!("Hook{i}"),
                    "lastName": "Crm",
                    "phone": format!("+1415555{:04}", 4100 + i),
                    "updated_at": "2026-01-01T00:00:00Z",
                })
            })
            .collect();
        let crm = FakeCrm::start(Auth::None, contacts).await;
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let text = format!(
            r#"
[quo]
base_url = "{quo}"
api_key = "{key}"
requests_per_second = 1000

[ledger]
path = "{ledger}"

[source]
kind = "rest"

[source.rest]
base_url = "{crm}"
list_path = "/offset/contacts"
records_pointer = "/results"
id_pointer = "/id"
updated_at_pointer = "/updated_at"
updated_since_param = "updated_since"
fields = {{ first_name = "/firstName", last_name = "/lastName", phone = "/phone" }}

[source.rest.webhook]
secret = "{SECRET}"
{webhook}

[mapping]
default_region = "US"
first_name = "first_name"
last_name = "last_name"
phones = [{{ field = "phone", label = "mobile" }}]

[sync]
on_source_delete = "delete"

[schedule]
interval = "1h"

[service]
listen = "{addr}"
{service}
"#,
            quo = sandbox.base_url(),
            key = sandbox.api_key(),
            ledger = dir.path().join("l.db").display(),
            crm = crm.base_url,
        );
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load_with_env(&path, std::iter::empty()).unwrap();
        let cancel = CancellationToken::new();
        let ctx = quo_sync::app::build_context(&config, "run", cancel.clone())
            .await
            .unwrap();
        let ledger = ctx.ledger.clone();
        let service =
            tokio::spawn(async move { quo_sync::app::run_service(&ctx, &config, None).await });
        let rig = Rig {
            sandbox,
            crm,
            ledger,
            url: format!("http://{addr}/webhooks/crm"),
            http: reqwest::Client::new(),
            cancel,
            service,
            _dir: dir,
        };
        wait_for("first cycle", Duration::from_secs(10), async || {
            rig.sandbox.contacts().len() == 3 && rig.runs_finished().await == 1
        })
        .await;
        assert_eq!(rig.list_reads(), 1);
        rig
    }

    fn list_reads(&self) -> usize {
        self.crm.count("GET", "/offset/")
    }

    /// GETs of single records, by path.
    fn record_gets(&self) -> Vec<String> {
        self.crm
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.starts_with("/contacts/"))
            .map(|r| r.path)
            .collect()
    }

    async fn runs_finished(&self) -> usize {
        let runs = self.ledger.recent_runs(1000).await.unwrap();
        runs.iter().filter(|r| r.finished_at.is_some()).count()
    }

    /// Edits a CRM record's first name, stamped `at`.
    fn edit(&self, id: &str, name: &str, at: chrono::DateTime<chrono::Utc>) {
        let mut record = self.crm.contact(id).unwrap();
        record["firstName"] = json!(name);
        record["updated_at"] = json!(at.to_rfc3339());
        self.crm.replace(id, record);
    }

    async fn notify(&self, body: Value) {
        let body = serde_json::to_vec(&body).unwrap();
        let status = self
            .http
            .post(&self.url)
            .header("X-Signature", sign(SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 202);
    }

    /// `count` list reads so far, the last one incremental.
    fn assert_last_read_incremental(&self, count: usize) {
        assert_eq!(self.list_reads(), count);
        let last = self
            .crm
            .requests()
            .into_iter()
            .rfind(|r| r.path.starts_with("/offset/"))
            .unwrap();
        assert!(
            last.query.contains_key("updated_since"),
            "an incremental read: {:?}",
            last.query
        );
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.service.await.unwrap().unwrap();
    }
}

/// Named ids: `{"events": [{"id": …}, …]}`, each fetched with `GET /contacts/{id}`.
const NAMED: &str = "ids_pointer = \"/events/*/id\"\nget_path = \"/contacts/{id}\"";

#[tokio::test]
async fn a_signed_crm_webhook_starts_a_read_and_bad_ones_read_nothing() {
    let rig = Rig::start("max_body_bytes = 1024").await;
    let body = br#"{"event":"contact.updated","ids":["h1"]}"#.to_vec();
    let post = async |signature: Option<String>, body: Vec<u8>| {
        let mut request = rig.http.post(&rig.url).body(body);
        if let Some(signature) = signature {
            request = request.header("X-Signature", signature);
        }
        request.send().await.unwrap().status().as_u16()
    };
    // Wrong signature: 401; unsigned: 401; oversized (even if signed): 413. Nothing read.
    assert_eq!(
        post(Some(sign("another-secret", &body)), body.clone()).await,
        401
    );
    assert_eq!(post(None, body.clone()).await, 401, "unsigned");
    let big = vec![b'x'; 4096];
    assert_eq!(post(Some(sign(SECRET, &big)), big).await, 413);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rig.list_reads(), 1, "refused webhooks read nothing");

    // A CRM edit plus a signed notice: read incrementally (no ids_pointer, so the ids in the
    // body are not used) and in Quo well before the interval.
    rig.edit("h1", "Hooked", chrono::Utc::now());
    assert_eq!(post(Some(sign(SECRET, &body)), body.clone()).await, 202);
    wait_for(
        "the webhook's record reaches Quo",
        Duration::from_secs(3),
        async || first_name(&rig.sandbox, "h1").as_deref() == Some("Hooked"),
    )
    .await;
    rig.assert_last_read_incremental(2);
    assert!(rig.record_gets().is_empty());
    rig.stop().await;
}

fn events(ids: &[&str]) -> Value {
    json!({ "events": ids.iter().map(|id| json!({"type": "contact.updated", "id": id})).collect::<Vec<_>>() })
}

#[tokio::test]
async fn named_ids_are_fetched_alone_and_the_rest_is_left_as_it_was() {
    let rig = Rig::start(NAMED).await;
    let t0 = chrono::Utc::now();
    // h3 changes without a notice (a lost delivery), before the named edits.
    rig.edit("h3", "Unnoticed3", t0);
    rig.edit("h1", "Named1", t0 + chrono::Duration::seconds(1));
    rig.edit("h2", "Named2", t0 + chrono::Duration::seconds(2));

    rig.notify(events(&["h1", "h2"])).await;
    wait_for(
        "the named records reach Quo",
        Duration::from_secs(3),
        async || {
            first_name(&rig.sandbox, "h1").as_deref() == Some("Named1")
                && first_name(&rig.sandbox, "h2").as_deref() == Some("Named2")
                && rig.runs_finished().await == 2
        },
    )
    .await;
    assert_eq!(rig.list_reads(), 1, "a named read lists nothing");
    let mut gets = rig.record_gets();
    gets.sort();
    assert_eq!(
        gets,
        ["/contacts/h1", "/contacts/h2"],
        "exactly the named GETs"
    );

    // The record the partial read did not fetch is neither deleted nor marked missing.
    assert_eq!(rig.sandbox.contacts().len(), 3);
    assert_eq!(first_name(&rig.sandbox, "h3").as_deref(), Some("Hook3"));
    let row = rig
        .ledger
        .record(&ExternalId::parse("h3").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, RecordState::Synced);
    assert!(row.quo_id.is_some());

    // A notice without ids reads incrementally; the named read left the high-water mark where
    // it was, so h3's unnoticed change (older than the named ones) is still found.
    rig.notify(json!({"event": "contact.updated"})).await;
    wait_for(
        "the unnoticed change reaches Quo",
        Duration::from_secs(3),
        async || first_name(&rig.sandbox, "h3").as_deref() == Some("Unnoticed3"),
    )
    .await;
    rig.assert_last_read_incremental(2);
    assert_eq!(rig.record_gets().len(), 2, "no record GETs for a list read");
    rig.stop().await;
}

#[tokio::test]
async fn too_many_ids_fall_back_to_a_list_read_and_a_missing_one_is_skipped() {
    let rig = Rig::start(NAMED).await;
    rig.edit("h1", "Listed1", chrono::Utc::now());
    let many: Vec<String> = (0..=quo_sync::source::rest::MAX_NAMED_IDS)
        .map(|i| format!("x{i}"))
        .collect();
    let mut ids: Vec<&str> = many.iter().map(String::as_str).collect();
    ids.push("h1");
    rig.notify(events(&ids)).await;
    wait_for(
        "the edit reaches Quo through a list read",
        Duration::from_secs(3),
        async || first_name(&rig.sandbox, "h1").as_deref() == Some("Listed1"),
    )
    .await;
    assert_eq!(rig.list_reads(), 2);
    assert!(rig.record_gets().is_empty(), "{:?}", rig.record_gets());

    // A named id the CRM does not know (404): skipped, the named one next to it still syncs.
    wait_for("the list cycle ends", Duration::from_secs(3), async || {
        rig.runs_finished().await == 2
    })
    .await;
    rig.edit("h2", "Named2", chrono::Utc::now());
    rig.notify(events(&["gone", "h2"])).await;
    wait_for(
        "the named record reaches Quo",
        Duration::from_secs(3),
        async || {
            first_name(&rig.sandbox, "h2").as_deref() == Some("Named2")
                && rig.runs_finished().await == 3
        },
    )
    .await;
    assert_eq!(rig.list_reads(), 2);
    let mut gets = rig.record_gets();
    gets.sort();
    assert_eq!(gets, ["/contacts/gone", "/contacts/h2"]);
    assert_eq!(rig.sandbox.contacts().len(), 3);
    let runs = rig.ledger.recent_runs(10).await.unwrap();
    assert!(
        runs.iter().all(|r| r.error.is_none()),
        "a 404 for a named id fails no cycle: {runs:?}"
    );
    rig.stop().await;
}

/// A raw HTTP/1.1 connection to `addr`.
async fn connect(url: &str) -> tokio::net::TcpStream {
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

/// Reads until the server answers or closes: the answer's first line ("" when closed
/// without one), and how long it took.
async fn answer_of(stream: &mut tokio::net::TcpStream, within: Duration) -> (String, Duration) {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
            Err(_) => {
                panic!("the server held the connection for {within:?} without answering or closing")
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    (
        text.lines().next().unwrap_or_default().to_string(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn slow_headers_and_slow_bodies_cannot_hold_a_listener() {
    use tokio::io::AsyncWriteExt;
    let rig = Rig::start_with("", "header_timeout = \"1s\"\nrequest_timeout = \"1s\"").await;
    // Headers trickled one byte every 200 ms: the connection is closed.
    let mut slow = connect(&rig.url).await;
    let trickle = tokio::spawn(async move {
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        for byte in b"X-Slow: 0123456789abcdefghijklmnopqrstuvwxyz"
            .iter()
            .cycle()
        {
            if slow.write_all(&[*byte]).await.is_err() {
                return slow;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        unreachable!()
    });
    let mut slow = tokio::time::timeout(Duration::from_secs(5), trickle)
        .await
        .expect("slow headers were cut off")
        .unwrap();
    let (line, _) = answer_of(&mut slow, Duration::from_secs(2)).await;
    assert!(!line.contains("200"), "{line}");
    // A connection that sends nothing at all is closed too.
    let mut silent = connect(&rig.url).await;
    let (line, took) = answer_of(&mut silent, Duration::from_secs(3)).await;
    assert!(!line.contains("200"), "{line}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // A signed notice whose body never comes: 408, not a held connection.
    let body = br#"{"event":"contact.updated"}"#;
    let mut stalled = connect(&rig.url).await;
    stalled
        .write_all(
            format!(
                "POST /webhooks/crm HTTP/1.1\r\nHost: localhost\r\nX-Signature: {}\r\nContent-Length: {}\r\n\r\n{{",
                sign(SECRET, body),
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let (line, took) = answer_of(&mut stalled, Duration::from_secs(5)).await;
    assert!(line.contains("408"), "{line}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(rig.list_reads(), 1, "nothing read for them");
    rig.stop().await;
}

#[tokio::test]
async fn an_unsigned_notice_is_refused_before_its_body_is_read() {
    use tokio::io::AsyncWriteExt;
    let rig = Rig::start("").await;
    let mut stream = connect(&rig.url).await;
    // Headers only: a promised megabyte that never comes.
    stream
        .write_all(
            b"POST /webhooks/crm HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n",
        )
        .await
        .unwrap();
    let (line, took) = answer_of(&mut stream, Duration::from_secs(3)).await;
    assert!(line.contains("401"), "{line}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    rig.stop().await;
}

/// `X-Timestamp: <unix seconds>` and `X-Signature: sha256=hex(HMAC(secret, "<ts>.<body>"))`.
fn sign_at(ts: i64, body: &[u8]) -> String {
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(body);
    sign(SECRET, &signed)
}

#[tokio::test]
async fn a_timestamped_notice_is_refused_when_stale_and_ignored_when_replayed() {
    let rig = Rig::start("timestamp_header = \"X-Timestamp\"").await;
    let post = async |ts: Option<i64>, signature: String, body: &[u8]| {
        let mut request = rig
            .http
            .post(&rig.url)
            .header("X-Signature", signature)
            .body(body.to_vec());
        if let Some(ts) = ts {
            request = request.header("X-Timestamp", ts.to_string());
        }
        request.send().await.unwrap().status().as_u16()
    };
    let body = br#"{"event":"contact.updated"}"#;
    let now = chrono::Utc::now().timestamp();
    // Without the timestamp, with the body alone signed, stale, or from the future: 401.
    assert_eq!(post(None, sign(SECRET, body), body).await, 401);
    assert_eq!(post(Some(now), sign(SECRET, body), body).await, 401);
    assert_eq!(
        post(Some(now - 600), sign_at(now - 600, body), body).await,
        401
    );
    assert_eq!(
        post(Some(now + 600), sign_at(now + 600, body), body).await,
        401
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rig.list_reads(), 1, "refused notices read nothing");

    rig.edit("h1", "Timely", chrono::Utc::now());
    assert_eq!(post(Some(now), sign_at(now, body), body).await, 202);
    wait_for("the notice's read", Duration::from_secs(3), async || {
        first_name(&rig.sandbox, "h1").as_deref() == Some("Timely")
            && rig.runs_finished().await == 2
    })
    .await;
    // The same delivery again, within the window: acknowledged, nothing read.
    for _ in 0..3 {
        assert_eq!(post(Some(now), sign_at(now, body), body).await, 200);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rig.list_reads(), 2, "a replay reads nothing");
    assert_eq!(rig.runs_finished().await, 2, "a replay starts no cycle");
    rig.stop().await;
}

/// The dialects the half-written-file guard is exercised in: each encodes the file's text, with
/// its separator, and the `[source]` keys it needs. The guard looks at the file's size and
/// modification time, and the cut falls inside a multi-byte name, so it works the same way in
/// every one of them.
#[derive(Clone, Copy)]
enum Dialect {
    Utf8Comma,
    Windows1252Semicolon,
    Utf16LeTab,
}

impl Dialect {
    fn separator(self) -> &'static str {
        match self {
            Dialect::Utf8Comma => ",",
            Dialect::Windows1252Semicolon => ";",
            Dialect::Utf16LeTab => "\t",
        }
    }

    fn encode(self, text: &str) -> Vec<u8> {
        match self {
            Dialect::Utf8Comma => text.as_bytes().to_vec(),
            Dialect::Windows1252Semicolon => {
                let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(text);
                assert!(!unmappable);
                bytes.into_owned()
            }
            Dialect::Utf16LeTab => [0xFF, 0xFE]
                .into_iter()
                .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
                .collect(),
        }
    }
}

/// A file rewritten in place (`cat > file`, `scp`, a streaming export) with a pause in the
/// middle is read only once it is whole: the watcher's cycle waits until its size and
/// modification time have been still for `source.quiet_period`. No record past the cut is
/// deleted, and the row cut in half never sends its truncated name.
async fn a_file_rewritten_in_place_with_a_pause_is_read_only_once_it_is_whole(dialect: Dialect) {
    use std::collections::HashSet;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    // first_name is the last column, so a cut inside it still leaves a row of the right width.
    let header = "crm_id,last_name,company,role,email,work_email,phone,mobile,lead_score,vip,renewal_date,tags,website,updated_at,first_name"
        .replace(',', dialect.separator());
    let file = |company_of_3: &str| {
        let mut text = format!("{header}\n");
        for i in 1..=20u32 {
            let company = if i == 3 {
                company_of_3.to_string()
            } else {
                format!("Acme {i}")
            };
            let row = format!(
                "p-{i},Last{i},{company},Buyer,p{i}@example.com,,(415) 555-{:04},,{i},yes,2026-03-01,vip,https://p{i}.example.com,2026-01-01T00:00:00Z,Fírstname{i}\n",
                1000 + i
            );
            text.push_str(&row.replace(',', dialect.separator()));
        }
        text
    };
    let mut app = TestApp::spawn_with(
        "crm_id,first_name\n",
        SandboxConfig::default(),
        "[schedule]\ninterval = \"1h\"\n[sync]\non_source_delete = \"delete\"\nmax_delete_fraction = 1.0\n[reverse]\nenabled = false\n",
    )
    .await;
    std::fs::write(&app.csv_path, dialect.encode(&file("Acme 3"))).unwrap();
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(
        &app.config_path,
        config.replacen(
            "[source]\nkind = \"csv\"\n",
            "[source]\nkind = \"csv\"\nquiet_period = \"2s\"\n",
            1,
        ),
    )
    .unwrap();
    app.restart().await;
    let service = app.start_service();
    wait_for("first cycle", Duration::from_secs(15), async || {
        app.sandbox.contacts().len() == 20
    })
    .await;
    assert_eq!(
        app.contact_for("p-7")["defaultFields"]["firstName"],
        "Fírstname7"
    );

    // Everything Quo shows from now on: every first name, and the fewest contacts at once.
    let names = Arc::new(Mutex::new(HashSet::new()));
    let fewest = Arc::new(AtomicUsize::new(20));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (base, names, fewest, done) = (
            app.sandbox.base_url(),
            names.clone(),
            fewest.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let contacts = common::sandbox_truth(&base).await;
                fewest.fetch_min(contacts.len(), Ordering::Relaxed);
                names.lock().unwrap().extend(
                    contacts
                        .iter()
                        .filter_map(|c| c["defaultFields"]["firstName"].as_str())
                        .map(str::to_string),
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Rewritten in place: up to the middle of p-12's first name (past its accent), a pause,
    // then the rest.
    let new = file("Moved");
    let cut = dialect
        .encode(&new[..new.find("Fírstname12").unwrap() + "Fírstn".len()])
        .len();
    let new = dialect.encode(&new);
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&app.csv_path)
        .unwrap();
    writer.write_all(&new[..cut]).unwrap();
    writer.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    writer.write_all(&new[cut..]).unwrap();
    writer.flush().unwrap();
    drop(writer);

    wait_for(
        "the rewrite reaches Quo",
        Duration::from_secs(15),
        async || app.contact_for("p-3")["defaultFields"]["company"] == "Moved",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    watcher.await.unwrap();

    assert_eq!(fewest.load(Ordering::Relaxed), 20, "a contact was deleted");
    let expected: HashSet<String> = (1..=20).map(|i| format!("Fírstname{i}")).collect();
    let names = names.lock().unwrap().clone();
    assert!(
        names.is_subset(&expected),
        "a truncated name reached Quo: {:?}",
        names.difference(&expected).collect::<Vec<_>>()
    );
    let ids: Vec<String> = (1..=20).map(|i| format!("p-{i}")).collect();
    app.assert_one_contact_per_record(&ids).await;
    service.stop().await;
}

#[tokio::test]
async fn a_utf8_file_rewritten_in_place_with_a_pause_is_read_only_once_it_is_whole() {
    a_file_rewritten_in_place_with_a_pause_is_read_only_once_it_is_whole(Dialect::Utf8Comma).await;
}

#[tokio::test]
async fn a_windows_1252_file_rewritten_in_place_with_a_pause_is_read_only_once_it_is_whole() {
    a_file_rewritten_in_place_with_a_pause_is_read_only_once_it_is_whole(
        Dialect::Windows1252Semicolon,
    )
    .await;
}

#[tokio::test]
async fn a_utf16le_file_rewritten_in_place_with_a_pause_is_read_only_once_it_is_whole() {
    a_file_rewritten_in_place_with_a_pause_is_read_only_once_it_is_whole(Dialect::Utf16LeTab).await;
}
