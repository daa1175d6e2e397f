//! Message text and transcripts never reach a log line, at any level: with `activity.content =
//! "full"` and every log at `trace`, a text, a call transcript and a voicemail transcript land in
//! the activity file through both webhook schemes and the poller, and the captured logs hold
//! none of them. One test per binary: the log capture installs the global subscriber.

mod common;
mod support;

use std::time::Duration;

use common::{TestApp, csv, row};
use quo_sync::config::LogFormat;
use quo_sync::sandbox::activity::{CallOutcome, CallSpec, Direction, MessageSpec};
use quo_sync::sandbox::{SandboxConfig, WebhookScheme, WebhookTarget};
use quo_sync::telemetry::{CaptureWriter, init_with_writer};
use support::activity::{csv_rows, free_port, number_of, subscribe, until};

const SECRET_TEXT: &str = "TOPSECRET-TEXT-77 my card ends 4242";
const LEGACY_KEY: &[u8] = b"legacy activity key for the logs test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_and_transcripts_reach_the_crm_but_never_the_logs() {
    let logs = CaptureWriter::default();
    assert!(init_with_writer(LogFormat::Json, "trace", logs.clone()));
    let port = free_port();
    let mut app = TestApp::spawn_with(
        &csv(&[row("r-1", 1), row("r-2", 2)]),
        SandboxConfig::default(),
        &format!("[reverse]\nlisten = \"127.0.0.1:{port}\"\npoll_interval = \"0s\"\n"),
    )
    .await;
    app.cycle().await;
    let url = format!("http://127.0.0.1:{port}/webhooks/quo/activity");
    let key = subscribe(&app.sandbox, &url).await;
    let legacy_secret = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(LEGACY_KEY)
    };
    app.sandbox.set_legacy_activity_webhook(Some(WebhookTarget {
        url: url.clone(),
        secret_key: LEGACY_KEY.to_vec(),
        scheme: WebhookScheme::Legacy,
    }));
    let activity_csv = app.dir.path().join("activity.csv");
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(
        &app.config_path,
        format!(
            "{config}\n[activity]\ncontent = \"full\"\npoll_interval = \"300ms\"\nwebhook_secrets = [\"{key}\", \"{legacy_secret}\"]\n[activity.csv]\npath = \"{}\"\n",
            activity_csv.display()
        ),
    )
    .unwrap();
    app.restart().await;
    let service = app.start_service();
    until("the service listening", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    app.sandbox
        .set_activity_enrichment_delay(Duration::from_millis(50), Duration::from_millis(200));
    let text = app.sandbox.activity_message(MessageSpec {
        number: number_of(1),
        direction: Direction::Incoming,
        text: SECRET_TEXT.into(),
        ..MessageSpec::default()
    });
    let call = app.sandbox.activity_call(CallSpec {
        number: number_of(2),
        direction: Direction::Incoming,
        outcome: CallOutcome::Answered,
        duration: 75,
        recorded: true,
        ..CallSpec::default()
    });
    let voicemail = app.sandbox.activity_call(CallSpec {
        number: number_of(1),
        direction: Direction::Incoming,
        outcome: CallOutcome::Voicemail,
        duration: 12,
        ..CallSpec::default()
    });
    until(
        "the content in the activity file",
        Duration::from_secs(20),
        || async {
            let rows = csv_rows(&activity_csv);
            let has = |id: &str, what: &str| {
                rows.iter()
                    .any(|r| r["activity_id"] == id && r["text"].contains(what))
            };
            has(&text, SECRET_TEXT)
                && has(&call, "thanks for calling")
                && rows
                    .iter()
                    .any(|r| r["activity_id"] == voicemail && r["kind"] == "voicemail")
        },
    )
    .await;
    service.stop().await;
    let captured = logs.contents();
    assert!(
        captured.contains("activity_webhook_received"),
        "the run was logged at all"
    );
    assert!(
        captured.contains("legacy\":true"),
        "legacy deliveries were received too"
    );
    for content in [
        SECRET_TEXT,
        "TOPSECRET",
        "thanks for calling",
        "Please call me back",
        "my renewal",
    ] {
        assert!(!captured.contains(content), "{content:?} reached the logs");
    }
}
