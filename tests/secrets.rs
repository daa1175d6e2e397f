//! Secrets never reach logs, errors or Debug output. One test per binary, because the log
//! capture installs the global subscriber.

mod common;

use common::{TestApp, csv, row};
use quo_sync::config::LogFormat;
use quo_sync::sandbox::SandboxConfig;
use quo_sync::telemetry::{CaptureWriter, init_with_writer};

const KEY: &str = "sk-live-DO-NOT-LEAK-7f3a9c";

#[tokio::test]
async fn the_api_key_appears_in_no_log_line_error_or_debug_output() {
    let logs = CaptureWriter::default();
    assert!(init_with_writer(LogFormat::Json, "trace", logs.clone()));

    let rows: Vec<String> = (1..=3).map(|i| row(&format!("s-{i}"), i)).collect();
    let app = TestApp::spawn_with(
        &csv(&rows),
        SandboxConfig {
            api_key: KEY.into(),
            ..SandboxConfig::default()
        },
        "",
    )
    .await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 3);

    // A wrong key: the error must say so without echoing either key.
    let mut config =
        quo_sync::config::Config::load_with_env(&app.config_path, std::iter::empty()).unwrap();
    config.quo.api_key = Some(secrecy::SecretString::from(format!("{KEY}-wrong")));
    let ctx =
        quo_sync::app::build_context(&config, "once", tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
    let error = quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply)
        .await
        .unwrap_err();
    let shown = format!("{error} {error:?} {:?} {:?}", ctx.client, config);
    assert!(shown.contains("401"), "{shown}");

    let captured = logs.contents();
    assert!(
        captured.contains("\"run_id\""),
        "JSON logs carry run_id: {captured}"
    );
    assert!(
        captured.contains("\"external_id\""),
        "record events carry external_id"
    );
    for text in [&captured, &shown] {
        assert!(!text.contains(KEY), "the API key leaked: {text}");
    }
}
