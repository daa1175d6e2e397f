//! The shipped Grafana dashboard and Prometheus alert rules name only metrics that a running
//! service exposes on `/metrics`. Own test binary: the metrics recorder is global.

mod common;

use std::collections::BTreeSet;

use common::{TestApp, csv, row};
use tokio_util::sync::CancellationToken;

/// Every `quo_sync_*` name in `text`, without histogram/summary suffixes.
fn named_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("quo_sync_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_sum", "_count", "_bucket"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn dashboard_and_alerts_name_only_metrics_the_service_exposes() {
    let handle = quo_sync::ops::http::install_metrics();
    assert!(handle.is_some(), "first install in this binary");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rows: Vec<String> = (1..=3).map(|i| row(&format!("r-{i}"), i)).collect();
    let app = TestApp::spawn_with(
        &csv(&rows),
        Default::default(),
        &format!("[service]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let config =
        quo_sync::config::Config::load_with_env(&app.config_path, std::iter::empty()).unwrap();
    let cancel = CancellationToken::new();
    let ctx = quo_sync::app::build_context(&config, "run", cancel.clone())
        .await
        .unwrap();
    let service = tokio::spawn(async move {
        quo_sync::app::run_service(&ctx, &config, handle)
            .await
            .expect("service runs")
    });
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let exposed = loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        {
            let text = r.text().await.unwrap();
            if text.contains("quo_sync_last_success_timestamp_seconds") {
                break text;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no cycle finished");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let exposed = named_metrics(&exposed);
    assert!(exposed.contains("quo_sync_leader"), "{exposed:?}");
    for doc in ["grafana-dashboard.json", "prometheus-alerts.yml"] {
        let text =
            std::fs::read_to_string(format!("{}/docs/{doc}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let named = named_metrics(&text);
        assert!(named.len() >= 5, "{doc}: {named:?}");
        let missing: Vec<_> = named.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{doc} names metrics not on /metrics: {missing:?}"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/docs/grafana-dashboard.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().unwrap().len() >= 6);
    cancel.cancel();
    service.await.unwrap();
}
