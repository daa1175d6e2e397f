//! Structured logs through `tracing`, in one of three shapes:
//!
//! - **JSON lines** (`json`, and `auto` when stderr is not a terminal): one object per event,
//!   with the current spans, so every record-level line carries `run_id` and `external_id`.
//!   Operators parse these; their event names and fields are a promise.
//! - **The human view** (`auto` or `pretty` when stderr is a terminal): one short line per
//!   notable event (`compact.rs`), per-record lines only when verbose, row-level warnings kept
//!   for the cycle's summary instead of scrolling past (`human.rs`), all written through the
//!   [`Terminal`] so that log lines and progress bars never tear each other (`terminal.rs`).
//! - **Compact text lines** (`pretty` when stderr is not a terminal): the same short lines for
//!   every event, uncoloured, for a person reading a file.
//!
//! Secrets never reach a log line: they are `SecretString`s whose `Debug` is redacted, and the
//! client never formats its headers.

mod compact;
mod human;
mod terminal;

pub use compact::shorten;
pub use human::Notice;
pub use terminal::{Terminal, terminal};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

/// Installs the global subscriber writing to stderr. Safe to call once per process.
pub fn init(format: LogFormat, level: &str) {
    init_verbose(format, level, 0);
}

/// [`init`] with the command line's `-v` count: on a terminal, 1 shows every record's line and
/// the span ids, 2 also lowers the level to `debug`, 3 to `trace`.
pub fn init_verbose(format: LogFormat, level: &str, verbose: u8) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let level = match verbose {
        0 | 1 => level,
        2 => "debug",
        _ => "trace",
    };
    match resolve(format, terminal) {
        LogFormat::Pretty if terminal => {
            let filter = env_filter(level);
            let verbose = verbose > 0
                || filter
                    .max_level_hint()
                    .is_some_and(|max| max >= tracing::level_filters::LevelFilter::DEBUG);
            let terminal = Terminal::install(verbose);
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(human::HumanLayer::view(terminal))
                .try_init();
        }
        format => {
            init_with_writer(format, level, std::io::stderr);
        }
    }
}

/// Installs the global subscriber writing to `writer` (tests capture logs this way).
/// Returns false when a subscriber was already installed. `auto` means JSON here: a writer
/// other than stderr is a file or a buffer, never a terminal.
pub fn init_with_writer<W>(format: LogFormat, level: &str, writer: W) -> bool
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = env_filter(level);
    match resolve(format, false) {
        LogFormat::Json | LogFormat::Auto => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init()
            .is_ok(),
        LogFormat::Pretty => tracing_subscriber::registry()
            .with(filter)
            .with(human::HumanLayer::lines(writer))
            .try_init()
            .is_ok(),
    }
}

/// The level filter: `RUST_LOG` when it is set and reads as a filter (#22), else `level`
/// (`log.level`, a directive such as `info` or `quo_sync=debug`), else `info`.
fn env_filter(level: &str) -> EnvFilter {
    filter(std::env::var("RUST_LOG").ok().as_deref(), level)
}

/// [`env_filter`] with the environment given (tests).
fn filter(rust_log: Option<&str>, level: &str) -> EnvFilter {
    rust_log
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// `auto` becomes `pretty` on a terminal and `json` everywhere else (services, pipes, files).
pub fn resolve(format: LogFormat, terminal: bool) -> LogFormat {
    match format {
        LogFormat::Auto if terminal => LogFormat::Pretty,
        LogFormat::Auto => LogFormat::Json,
        other => other,
    }
}

/// A writer that appends to a shared buffer, for capturing logs in tests.
#[derive(Clone, Default)]
pub struct CaptureWriter(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CaptureWriter {
    /// Everything written so far, as text.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CaptureWriter {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// This process's peak resident set size in MiB (Linux `VmHWM`), for summaries and benchmarks.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_over_log_level() {
        assert_eq!(filter(Some("debug"), "warn").to_string(), "debug");
        assert_eq!(filter(None, "warn").to_string(), "warn");
        assert_eq!(filter(Some(""), "warn").to_string(), "warn");
        assert_eq!(filter(Some("[[bad"), "warn").to_string(), "warn");
    }

    #[test]
    fn auto_is_pretty_on_a_terminal_and_json_elsewhere() {
        assert_eq!(resolve(LogFormat::Auto, true), LogFormat::Pretty);
        assert_eq!(resolve(LogFormat::Auto, false), LogFormat::Json);
        assert_eq!(resolve(LogFormat::Json, true), LogFormat::Json);
        assert_eq!(resolve(LogFormat::Pretty, false), LogFormat::Pretty);
        assert_eq!(
            crate::config::LogConfig::default().format,
            LogFormat::Auto,
            "auto is the default"
        );
    }
}
