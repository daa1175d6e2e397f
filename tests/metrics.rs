//! The service listener: `/metrics` is Prometheus text that moves with traffic, `/healthz`
//! answers, `/readyz` follows the last cycle. Own test binary: the metrics recorder is global.

mod common;

use std::collections::BTreeMap;

use common::{TestApp, csv, row};
use tokio_util::sync::CancellationToken;

/// Parses Prometheus text exposition into `name{labels}` → value, failing on any bad line.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            assert!(
                comment.starts_with("TYPE ") || comment.starts_with("HELP "),
                "unexpected comment: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
            let labels = &series[name_end + 1..series.len() - 1];
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label {pair}: {line}"));
                assert!(!k.is_empty(), "bad label {pair}: {line}");
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "bad label value {pair}: {line}"
                );
            }
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad value {v:?} ({e}): {line}")),
        };
        samples.insert(series.to_string(), value);
    }
    samples
}

/// The sum of every series of `name` (all label sets).
fn total(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.as_str() == name || series.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

async fn get(client: &reqwest::Client, base: &str, path: &str) -> (u16, String) {
    let response = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .expect("request");
    (
        response.status().as_u16(),
        response.text().await.expect("body"),
    )
}

#[tokio::test]
async fn metrics_health_and_readiness_follow_the_cycles() {
    let handle = quo_sync::ops::http::install_metrics();
    assert!(handle.is_some(), "first install in this binary");
    let rows: Vec<String> = (1..=4).map(|i| row(&format!("r-{i}"), i)).collect();
    let app = TestApp::spawn(&csv(&rows)).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let server = tokio::spawn(quo_sync::app::serve(
        listener,
        // `readiness = "cycles"` after one failure: the old meaning, still available (#22).
        quo_sync::ops::http::router_with(
            app.ledger().clone(),
            handle,
            quo_sync::ops::http::ReadinessRule {
                readiness: quo_sync::config::Readiness::Cycles,
                failed_cycles: 1,
            },
        ),
        cancel.clone(),
    ));
    let client = reqwest::Client::new();

    let (code, body) = get(&client, &base, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    // No run yet: the ledger answers, nothing failed.
    assert_eq!(get(&client, &base, "/readyz").await.0, 200);

    let (code, before) = get(&client, &base, "/metrics").await;
    assert_eq!(code, 200);
    let before = parse_exposition(&before);
    let requests_before = total(&before, "quo_sync_quo_requests_total");

    app.cycle().await;
    let (code, text) = get(&client, &base, "/metrics").await;
    assert_eq!(code, 200);
    let after = parse_exposition(&text);
    let requests_after = total(&after, "quo_sync_quo_requests_total");
    assert!(
        requests_after >= requests_before + 5.0,
        "requests {requests_before} -> {requests_after}\n{text}"
    );
    assert!(
        text.contains("# TYPE quo_sync_quo_requests_total counter"),
        "{text}"
    );
    assert_eq!(
        after.get("quo_sync_quarantined_records"),
        Some(&0.0),
        "{text}"
    );
    assert_eq!(after.get("quo_sync_inbox_depth"), Some(&0.0), "{text}");
    assert!(
        after
            .get("quo_sync_last_success_timestamp_seconds")
            .copied()
            .unwrap_or(0.0)
            > 0.0,
        "{text}"
    );
    let (code, body) = get(&client, &base, "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    // A wrong API key: the cycle fails, a failed run is recorded, readiness drops.
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    let wrong = config.replace(
        &format!("api_key = \"{}\"", app.sandbox.api_key()),
        "api_key = \"wrong-key\"",
    );
    assert_ne!(config, wrong);
    std::fs::write(&app.config_path, wrong).unwrap();
    // A second process on the same ledger, as `once` would be; the listener keeps its pool.
    let config = quo_sync::config::Config::load_with_env(&app.config_path, std::iter::empty())
        .expect("config loads");
    let broken = quo_sync::app::build_context(&config, "once", CancellationToken::new())
        .await
        .expect("context builds");
    let failed = quo_sync::sync::run_cycle(&broken, quo_sync::sync::Mode::Apply).await;
    assert!(failed.is_err(), "{failed:?}");
    let runs = app.ledger().recent_runs(1).await.unwrap();
    assert_eq!(runs[0].status, "failed", "{runs:?}");
    let (code, body) = get(&client, &base, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("last cycle failed"), "{body}");
    let text = get(&client, &base, "/metrics").await.1;
    let failed_metrics = parse_exposition(&text);
    assert!(
        total(&failed_metrics, "quo_sync_cycles_failed_total") >= 1.0,
        "{text}"
    );
    assert_eq!(get(&client, &base, "/healthz").await.0, 200);

    // A cycle in progress does not hide the failure before it.
    app.ledger().start_run("in-progress", "run").await.unwrap();
    assert_eq!(get(&client, &base, "/readyz").await.0, 503);

    cancel.cancel();
    server.await.unwrap();
}
