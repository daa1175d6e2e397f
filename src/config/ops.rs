//! `[log]` and `[service]`: operating the daemon: log lines, the health/metrics listener, the
//! console and how long shutdown may take.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{HumanDuration, print};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (default).
    Json,
    /// Human-readable.
    Pretty,
    /// Pretty when stderr is a terminal, JSON otherwise (default).
    Auto,
}

/// `[log]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto` (default), `json` or `pretty`.
    pub format: LogFormat,
    /// An `EnvFilter` directive, default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

/// `[service]`: health and metrics.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Address for `/healthz`, `/readyz`, `/metrics`; none to disable.
    pub listen: Option<SocketAddr>,
    /// Serve the operator console (`/`, `/api/...`) on `listen`; off by default.
    pub console: bool,
    /// The console's access token; required when `listen` is not a loopback address.
    #[serde(serialize_with = "print::secret")]
    pub console_token: Option<SecretString>,
    /// A file holding the console token.
    pub console_token_file: Option<PathBuf>,
    /// What `/readyz` means: `ledger` (default: the ledger answers) or `cycles` (and the last
    /// `readiness_failed_cycles` cycles did not all fail).
    pub readiness: Readiness,
    /// With `readiness = "cycles"`: how many failed cycles in a row make the replica unready,
    /// default 3.
    pub readiness_failed_cycles: u32,
    /// How long `run` lets in-flight work finish after SIGTERM/SIGINT/SIGHUP before it exits
    /// anyway, default `8s` (a second Ctrl-C exits at once).
    pub shutdown_grace: HumanDuration,
    /// On every listener (`service.listen`, `reverse.listen`): the longest a client may take to
    /// send a request's headers before the connection is closed, default `10s`.
    pub header_timeout: HumanDuration,
    /// On every listener: the longest a request may take, body included, before it is answered
    /// 408, default `30s`.
    pub request_timeout: HumanDuration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: None,
            console: false,
            console_token: None,
            console_token_file: None,
            readiness: Readiness::Ledger,
            readiness_failed_cycles: 3,
            shutdown_grace: HumanDuration(Duration::from_secs(8)),
            header_timeout: HumanDuration(Duration::from_secs(10)),
            request_timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// What `/readyz` answers 503 for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// Only an unreachable ledger: a failing cycle is for metrics and alerts
    /// (`quo_sync_cycles_failed_total`), so the only replica stays in its Service.
    Ledger,
    /// Also `readiness_failed_cycles` failed cycles in a row.
    Cycles,
}
