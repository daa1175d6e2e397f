//! The real binary under `quo-sync run`, with its JSON log lines collected: what the sections
//! that measure a running service (`ha`, `scan`) start and watch.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

/// One `quo-sync run` process and its log so far.
pub struct Service {
    pub child: tokio::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts `run --config config` with JSON logs at info and the extra `env` overrides.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Service {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("QUO_SYNC_CONFIG")
            .env("QUO_SYNC__LOG__FORMAT", "json")
            .env("QUO_SYNC__LOG__LEVEL", "info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Service { child, log }
    }

    /// Whether a log line with `"event": event` has come.
    pub fn has(&self, event: &str) -> bool {
        self.event(event).is_some()
    }

    /// Log lines with `"event": event` that also contain `text`.
    pub fn count(&self, event: &str, text: &str) -> usize {
        let needle = format!("\"event\":\"{event}\"");
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&needle) && l.contains(text))
            .count()
    }

    /// The first log line with `"event": event`, parsed.
    pub fn event(&self, event: &str) -> Option<Value> {
        let needle = format!("\"event\":\"{event}\"");
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(&needle))
            .and_then(|l| serde_json::from_str(l).ok())
    }

    /// The last `n` log lines, oldest first: what a section prints when a wait fails.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(n)..].to_vec()
    }

    /// The first `event` line, waiting up to `within` for it (panics with the log's tail).
    pub async fn wait_for(&self, event: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.event(event) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "bench: no {event} within {within:?}; log tail: {:?}",
                self.log
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
