//! CSV source adapter: streams a CRM export file as records and writes reverse-path edits back
//! into the same file without disturbing anything else in it.
//!
//! Why it looks like this:
//!
//! * **Files as they are exported.** Semicolons or tabs, Windows-1252, Latin-1 or UTF-16: the
//!   dialect is configured or found in the file (`dialect.rs`), and a write goes back in the
//!   file's own encoding, separator, quoting and line endings. A value the encoding cannot hold
//!   (an emoji in Windows-1252) is never mangled into `?`: it is left out and reported.
//! * **Streaming read.** The file is parsed with the `csv` crate on a blocking thread and each
//!   row goes through the bounded channel as soon as it is read, so memory holds one row plus
//!   the set of ids seen (needed to refuse duplicate ids), whatever the size of the file.
//! * **Nothing is dropped.** A row that cannot be a record (bytes that are not text in the
//!   file's encoding, wrong column count, empty or over-long id, an id already used by an
//!   earlier row) is yielded as [`SourceItem::Bad`] with its line number and reason; the rest of
//!   the file is still read. Every row whose id can be read claims that id, so when a row repeats
//!   an id both the first and the later rows are reported (the first as whatever is wrong with
//!   it, or as a record).
//! * **Half-written files.** A file rewritten in place (`cat > file`, `scp`, a streaming export)
//!   can be read while it is being written. The service waits until the file's size and
//!   modification time have been still for `source.quiet_period` before reading it; a read
//!   during which the file changed is reported incomplete (so no record counts as gone) and its
//!   last row, which may be cut, is not used. Writers should still replace the file by rename.
//! * **Lenient timestamps.** `updated_at` may be RFC 3339, `YYYY-MM-DD HH:MM:SS` or a plain
//!   date (both read as UTC). An unparseable value is not fatal: the record gets no
//!   last-modified time (conflicts then fall back to the CRM side) and a warning is logged.
//! * **Surgical, atomic write-back.** A CSV file is often also edited by people and other tools,
//!   so write-back changes only the affected cells of the affected rows and copies every other
//!   byte as it was (quoting, CRLF/LF, BOM, final newline). The new file is written next to the
//!   old one, synced and renamed over it. It refuses to write when the file is not byte-for-byte
//!   the one the last read saw (size, mtime and SHA-256 of its bytes), so an edit made in the
//!   meantime is never overwritten; the change is retried next cycle.
//! * `ReadRequest::since` is ignored: a file has no incremental read, every read is complete.
//!
//! The adapter is in parts: this file holds the adapter and what both directions share (the
//! layout, the parser over the file in its dialect, the header); `dialect.rs` the dialect and
//! the one place text becomes the file's bytes; `stream.rs` the bytes between the file and the
//! parser (hash, byte order mark, UTF-16, line positions); `read.rs` turns rows into records or
//! quarantined rows; `write.rs` rewrites changed cells in place.

mod cells;
mod dialect;
mod digest;
mod read;
mod stream;
mod write;

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};

use super::*;
use crate::config::{CsvDelimiter, CsvEncoding, MappingConfig};
use crate::mapping::RawFingerprint;
use cells::{Cells, RowText};
pub use dialect::{DelimiterBy, Dialect, EncodingBy, FileEncoding, LineEnding, Unrepresentable};
use dialect::{choose_delimiter, judge, quotes_every_name};
pub use digest::RawRow;
use read::{Sink, read_file};
use stream::{Head, Tracked};
pub(crate) use write::replace_with;
use write::write_file;

/// The longest header line the separator is chosen from.
const HEADER_PEEK: usize = 64 * 1024;

/// Reads and writes a CSV file of CRM records.
#[derive(Debug)]
pub struct CsvSource {
    path: PathBuf,
    id_field: String,
    updated_at_field: Option<String>,
    settings: DialectSettings,
    /// The mapping's source fields: what `auto` expects the header to split into.
    expected: Arc<[String]>,
    /// How long the file must be still before a guarded read (`source.quiet_period`).
    quiet: Duration,
    /// Set by the service (`quo-sync run`): reads wait for the file to be quiet.
    guarded: AtomicBool,
    /// What the last complete read saw; write-back only proceeds against the same bytes.
    last_read: Arc<Mutex<Option<Seen>>>,
}

/// The dialect keys as configured (`auto` where the file decides).
#[derive(Debug, Clone, Copy)]
struct DialectSettings {
    delimiter: CsvDelimiter,
    encoding: CsvEncoding,
    quote: u8,
    escape: Option<u8>,
}

/// Identity of the file's content: size, mtime and a hash of every byte.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    sha256: Vec<u8>,
}

/// What a read saw: the bytes, and the dialect they were read in (write-back writes in it).
#[derive(Debug, Clone)]
struct Seen {
    file: Fingerprint,
    dialect: Dialect,
    /// Whether the file ended with a line end.
    ended: bool,
}

/// The size and modification time of an open file or a path, to tell whether it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileState {
    len: u64,
    modified: Option<SystemTime>,
}

impl FileState {
    fn of(meta: &fs::Metadata) -> FileState {
        FileState {
            len: meta.len(),
            modified: meta.modified().ok(),
        }
    }
}

impl CsvSource {
    /// Builds the adapter from `[source]` (`path`, `id_field`, `updated_at_field`, the dialect
    /// keys, `quiet_period`).
    pub fn new(config: &SourceConfig) -> Self {
        let updated_at = config.updated_at_field.trim();
        Self {
            path: config.path.clone().unwrap_or_default(),
            id_field: config.id_field.trim().to_string(),
            updated_at_field: (!updated_at.is_empty()).then(|| updated_at.to_string()),
            settings: DialectSettings {
                delimiter: config.delimiter,
                encoding: config.encoding,
                quote: config.quote.0,
                escape: config.escape.0,
            },
            expected: Arc::from(Vec::new()),
            quiet: config.quiet_period.0,
            guarded: AtomicBool::new(false),
            last_read: Arc::new(Mutex::new(None)),
        }
    }

    /// Tells `auto` which columns the mapping reads, so the separator that splits the header
    /// into the most of them wins.
    pub fn expect_columns(mut self, mapping: &MappingConfig) -> Self {
        self.expected = crate::mapping::source_fields(mapping).into();
        self
    }

    /// From now on every read first waits until the file's size and modification time have
    /// been still for `source.quiet_period` (the service does this; one-shot commands read at
    /// once).
    pub fn guard_reads(&self) {
        self.guarded.store(true, Ordering::Relaxed);
    }

    /// Streams every row into `tx` (records and quarantined rows); always a complete read,
    /// unless the file changed while it was read.
    pub async fn read(
        &self,
        _request: ReadRequest,
        tx: mpsc::Sender<SourceItem>,
    ) -> Result<ReadSummary, SourceError> {
        self.read_blocking(move |layout| read_file(layout, Sink::Plain(&tx)))
            .await
    }

    /// Like `read`, but each usable row arrives with the digest of its fingerprinted cells and
    /// is built into a record only on demand; rows come in batches.
    pub async fn read_digested(
        &self,
        fingerprint: RawFingerprint,
        tx: mpsc::Sender<Vec<DigestedItem>>,
    ) -> Result<ReadSummary, SourceError> {
        self.read_blocking(move |layout| {
            let sink = Sink::Digested {
                tx: &tx,
                fingerprint: &fingerprint,
            };
            read_file(layout, sink)
        })
        .await
    }

    /// Runs a read on a blocking thread and remembers the bytes it saw for write-back.
    async fn read_blocking(
        &self,
        read: impl FnOnce(&Layout) -> Result<(ReadSummary, Seen), SourceError> + Send + 'static,
    ) -> Result<ReadSummary, SourceError> {
        if self.guarded.load(Ordering::Relaxed) {
            self.wait_until_quiet().await;
        }
        let layout = self.layout();
        let (summary, seen) = tokio::task::spawn_blocking(move || read(&layout))
            .await
            .map_err(|e| self.io_error(format!("reader thread failed: {e}")))??;
        let mut last = self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.as_ref().map(|s| &s.dialect) != Some(&seen.dialect) {
            let dialect = &seen.dialect;
            macro_rules! log_dialect {
                ($level:expr) => {
                    tracing::event!(
                        $level,
                        event = "csv_dialect",
                        path = %self.path.display(),
                        encoding = dialect.encoding.label(),
                        delimiter = %char::from(dialect.delimiter).escape_default(),
                        "CSV file read as {}",
                        dialect.describe()
                    )
                };
            }
            if dialect.is_plain() {
                log_dialect!(tracing::Level::DEBUG);
            } else {
                log_dialect!(tracing::Level::INFO);
            }
        }
        *last = Some(seen);
        Ok(summary)
    }

    /// Waits until the file's size and modification time have not changed for the quiet
    /// period (at most 30 quiet periods, then reads anyway and says so). A file whose
    /// modification time is already that old is read at once.
    async fn wait_until_quiet(&self) {
        if self.quiet.is_zero() {
            return;
        }
        let state = || fs::metadata(&self.path).ok().map(|m| FileState::of(&m));
        let mut last = state();
        let old_enough = last
            .and_then(|s| s.modified)
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= self.quiet);
        if old_enough {
            return;
        }
        let started = Instant::now();
        let mut still_since = Instant::now();
        let step = (self.quiet / 5).clamp(Duration::from_millis(10), Duration::from_millis(200));
        loop {
            tokio::time::sleep(step).await;
            let now = state();
            if now != last {
                last = now;
                still_since = Instant::now();
            } else if still_since.elapsed() >= self.quiet {
                return;
            }
            if started.elapsed() >= self.quiet * 30 {
                tracing::warn!(
                    event = "csv_still_changing",
                    path = %self.path.display(),
                    waited_ms = started.elapsed().as_millis() as u64,
                    "the CSV file keeps changing; reading it anyway (writers should replace the file by rename)"
                );
                return;
            }
        }
    }

    /// The dialect the last read found, as one line (`plan` and `status` show it).
    pub fn describe_dialect(&self) -> Option<String> {
        self.last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|seen| seen.dialect.describe())
    }

    /// The dialect the file has now: its header and, under `auto`, the first non-ASCII row
    /// (for `check-config`; reads no further than it must).
    pub fn sniff_dialect(&self) -> Result<Dialect, SourceError> {
        let layout = self.layout();
        let file = File::open(&layout.path).map_err(|e| layout.io(e))?;
        let mut parser = Parser::open(&layout, file, None)?;
        let mut record = ::csv::ByteRecord::new();
        while parser.cells.undecided()
            && parser
                .reader
                .read_byte_record(&mut record)
                .map_err(|e| layout.io(e))?
        {
            let (line, _) = parser.reader.get_mut().locate(record.position());
            parser.cells.text(&record, line);
        }
        Ok(parser.finish_dialect())
    }

    /// Whether the file holds exactly the bytes quo-sync last read or wrote (SHA-256), so a
    /// change notice for it (our own write-back, a touch) needs no cycle.
    pub async fn matches_last_seen(&self) -> bool {
        let Some(seen) = self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| s.file.sha256.clone())
        else {
            return false;
        };
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            fs::read(path).map(|bytes| Sha256::digest(&bytes).to_vec())
        })
        .await
        .ok()
        .and_then(Result::ok)
        .is_some_and(|now| now == seen)
    }

    /// The file this adapter reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites only the changed cells of the changed rows, atomically, in the file's dialect;
    /// refuses if the file changed since the last read. A value the file's encoding cannot hold
    /// is left out of its row and reported in `unwritable`.
    pub async fn write_back(&self, changes: &[CrmChange]) -> Result<WriteReport, SourceError> {
        self.write_blocking(changes.to_vec(), Vec::new(), Vec::new())
            .await
    }

    /// Removes the rows of these records, atomically, under the same rules as `write_back`.
    pub async fn delete_records(&self, ids: &[ExternalId]) -> Result<WriteReport, SourceError> {
        self.write_blocking(Vec::new(), ids.to_vec(), Vec::new())
            .await
    }

    /// Adds rows for new records after the last row, atomically, under the same rules as
    /// `write_back`; a record whose id the file holds already is reported written, not added
    /// twice.
    pub async fn append_records(&self, records: &[CrmChange]) -> Result<WriteReport, SourceError> {
        self.write_blocking(Vec::new(), Vec::new(), records.to_vec())
            .await
    }

    /// Runs one write (changed cells, removed rows, new rows) on a blocking thread.
    async fn write_blocking(
        &self,
        changes: Vec<CrmChange>,
        deletes: Vec<ExternalId>,
        appends: Vec<CrmChange>,
    ) -> Result<WriteReport, SourceError> {
        let layout = self.layout();
        let last_read = Arc::clone(&self.last_read);
        tokio::task::spawn_blocking(move || {
            write_file(&layout, &last_read, &changes, &deletes, &appends)
        })
        .await
        .map_err(|e| self.io_error(format!("writer thread failed: {e}")))?
    }

    /// A short human description (`csv config/contacts.csv`).
    pub fn describe(&self) -> String {
        format!("csv {}", self.path.display())
    }

    fn layout(&self) -> Layout {
        Layout {
            path: self.path.clone(),
            id_field: self.id_field.clone(),
            updated_at_field: self.updated_at_field.clone(),
            settings: self.settings,
            expected: Arc::clone(&self.expected),
            last_ended: self
                .last_read
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|seen| seen.ended),
        }
    }

    fn io_error(&self, reason: String) -> SourceError {
        SourceError::Io {
            path: self.path.display().to_string(),
            reason,
        }
    }
}

/// What the blocking reader and writer need to know about the file.
#[derive(Debug, Clone)]
struct Layout {
    path: PathBuf,
    id_field: String,
    updated_at_field: Option<String>,
    settings: DialectSettings,
    expected: Arc<[String]>,
    /// Whether the last read's file ended with a line end: a file that now does not may have
    /// its last row cut by a writer still at work.
    last_ended: bool,
}

impl Layout {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn io(&self, e: impl std::fmt::Display) -> SourceError {
        SourceError::Io {
            path: self.name(),
            reason: e.to_string(),
        }
    }

    fn location(&self, line: u64) -> String {
        format!("{} line {line}", self.name())
    }
}

/// An open file ready to parse in its dialect (under `auto`, the encoding may still be open
/// until a row with a byte above 127 decides it).
struct Parser {
    reader: ::csv::Reader<Tracked>,
    dialect: Dialect,
    cells: Cells,
}

impl Parser {
    /// Opens the stream of `file`: the byte order mark and `source.encoding` decide how it is
    /// read; the header line decides an `auto` separator. `known` is the dialect of an earlier
    /// read of the same bytes (write-back), used as it is.
    fn open(layout: &Layout, file: File, known: Option<&Dialect>) -> Result<Parser, SourceError> {
        let head = Head::read(file).map_err(|e| layout.io(e))?;
        let bom = head.bom();
        let settings = layout.settings;
        let (encoding, encoding_by) = match (known, FileEncoding::configured(settings.encoding)) {
            (Some(known), _) => (Some(known.encoding), known.encoding_by),
            (None, Some(configured)) => {
                if let Some(mark) = bom.filter(|mark| *mark != configured) {
                    return Err(layout.io(format!(
                        "the file starts with a {} byte order mark, but source.encoding = \"{}\"",
                        mark.label(),
                        configured.label()
                    )));
                }
                (Some(configured), EncodingBy::Configured)
            }
            (None, None) => match bom {
                Some(mark) => (Some(mark), EncodingBy::ByteOrderMark),
                None => (None, EncodingBy::AllAscii),
            },
        };
        let mut stream = head.stream(encoding.unwrap_or(FileEncoding::Utf8));
        let line = stream.peek_line(HEADER_PEEK).map_err(|e| layout.io(e))?;
        let cells_guess = encoding
            .or_else(|| judge(line))
            .unwrap_or(FileEncoding::Utf8)
            .cells();
        let (delimiter, delimiter_by) = match (known, settings.delimiter) {
            (Some(known), _) => (known.delimiter, known.delimiter_by),
            (None, CsvDelimiter::Byte(b)) => (b, DelimiterBy::Configured),
            (None, CsvDelimiter::Auto) => match choose_delimiter(
                line,
                settings.quote,
                settings.escape,
                cells_guess,
                &layout.id_field,
                &layout.expected,
            ) {
                Some(b) => (b, DelimiterBy::Header),
                None => (b',', DelimiterBy::Fallback),
            },
        };
        let dialect = Dialect {
            encoding: encoding.unwrap_or(FileEncoding::Utf8),
            encoding_by,
            bom: bom.is_some(),
            delimiter,
            delimiter_by,
            quote: settings.quote,
            escape: settings.escape,
            line_ending: LineEnding::of(line),
            quote_all: quotes_every_name(line, delimiter, settings.quote, settings.escape),
        };
        let undecided = encoding.is_none() && known.is_none();
        let decided_at = match dialect.encoding_by {
            EncodingBy::Line(line) => Some(line),
            _ => None,
        };
        Ok(Parser {
            reader: dialect.reader(stream),
            cells: Cells::decided(dialect.encoding, undecided, decided_at),
            dialect,
        })
    }

    /// The dialect with what the rows decided about an `auto` encoding.
    fn finish_dialect(&self) -> Dialect {
        let mut dialect = self.dialect.clone();
        if let Some((encoding, line)) = self.cells.decided_at() {
            dialect.encoding = encoding;
            dialect.encoding_by = EncodingBy::Line(line);
        }
        dialect
    }
}

/// The header row, resolved against the configuration.
struct Header {
    names: Vec<String>,
    /// Column name → first column with that name.
    index: HashMap<String, usize>,
    id: usize,
    updated_at: Option<usize>,
}

fn parse_header(
    layout: &Layout,
    record: Option<(&::csv::ByteRecord, Option<RowText<'_>>)>,
) -> Result<Header, SourceError> {
    let names: Vec<String> = match record {
        Some((_, Some(text))) => text.cells().map(|n| n.trim().to_string()).collect(),
        Some((record, None)) => record
            .iter()
            .map(|raw| String::from_utf8_lossy(raw).trim().to_string())
            .collect(),
        None => Vec::new(),
    };
    let mut index = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        index.entry(name.clone()).or_insert(i);
    }
    let id = *index
        .get(&layout.id_field)
        .ok_or_else(|| SourceError::MissingColumn {
            path: layout.name(),
            column: layout.id_field.clone(),
            key: "source.id_field".into(),
        })?;
    let updated_at = layout
        .updated_at_field
        .as_ref()
        .and_then(|name| index.get(name).copied());
    Ok(Header {
        names,
        index,
        id,
        updated_at,
    })
}

/// Parses a last-modified value: RFC 3339, `YYYY-MM-DD[ T]HH:MM:SS[.f]` or `YYYY-MM-DD` (UTC).
pub(crate) fn parse_timestamp(raw: &str) -> Option<DateTime<Utc>> {
    let text = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use chrono::SecondsFormat;

    use super::*;

    #[test]
    fn timestamps() {
        let t = |s| parse_timestamp(s).map(|d| d.to_rfc3339_opts(SecondsFormat::Secs, true));
        assert_eq!(
            t("2026-03-01T10:00:00Z").as_deref(),
            Some("2026-03-01T10:00:00Z")
        );
        assert_eq!(
            t("2026-03-01T12:00:00+02:00").as_deref(),
            Some("2026-03-01T10:00:00Z")
        );
        assert_eq!(
            t("2026-03-01 10:00:00").as_deref(),
            Some("2026-03-01T10:00:00Z")
        );
        assert_eq!(t("2026-03-01").as_deref(), Some("2026-03-01T00:00:00Z"));
        assert_eq!(t("yesterday"), None);
    }
}
