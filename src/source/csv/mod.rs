//! CSV source adapter: streams a CRM export file as records and writes reverse-path edits back
//! into the same file without disturbing anything else in it.
//!
//! Why it looks like this:
//!
//! * **Streaming read.** The file is parsed with the `csv` crate on a blocking thread and each
//!   row goes through the bounded channel as soon as it is read, so memory holds one row plus
//!   the set of ids seen (needed to refuse duplicate ids), whatever the size of the file.
//! * **Nothing is dropped.** A row that cannot be a record (invalid UTF-8, wrong column count,
//!   empty or over-long id, an id already used by an earlier row) is yielded as
//!   [`SourceItem::Bad`] with its line number and reason; the rest of the file is still read.
//!   Every row whose id can be read claims that id, so when a row repeats an id both the first
//!   and the later rows are reported (the first as whatever is wrong with it, or as a record).
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
//! The adapter is in three parts: this file holds the adapter and what both directions share
//! (the layout, the header, the hashing reader); `read.rs` turns rows into records or
//! quarantined rows; `write.rs` rewrites changed cells in place.

mod read;
mod write;

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use ::csv::{ByteRecord, ReaderBuilder};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sha2::{Digest, Sha256};

use super::*;
use crate::mapping::RawFingerprint;
pub use read::RawRow;
use read::{Sink, read_file};
use write::write_file;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads and writes a CSV file of CRM records.
#[derive(Debug)]
pub struct CsvSource {
    path: PathBuf,
    id_field: String,
    updated_at_field: Option<String>,
    /// What the last complete read saw; write-back only proceeds against the same bytes.
    last_read: Arc<Mutex<Option<Fingerprint>>>,
}

/// Identity of the file's content: size, mtime and a hash of every byte.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    sha256: Vec<u8>,
}

impl CsvSource {
    /// Builds the adapter from `[source]` (`path`, `id_field`, `updated_at_field`).
    pub fn new(config: &SourceConfig) -> Self {
        let updated_at = config.updated_at_field.trim();
        Self {
            path: config.path.clone().unwrap_or_default(),
            id_field: config.id_field.trim().to_string(),
            updated_at_field: (!updated_at.is_empty()).then(|| updated_at.to_string()),
            last_read: Arc::new(Mutex::new(None)),
        }
    }

    /// Streams every row into `tx` (records and quarantined rows); always a complete read.
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
        read: impl FnOnce(&Layout) -> Result<(ReadSummary, Fingerprint), SourceError> + Send + 'static,
    ) -> Result<ReadSummary, SourceError> {
        let layout = self.layout();
        let (summary, file) = tokio::task::spawn_blocking(move || read(&layout))
            .await
            .map_err(|e| self.io_error(format!("reader thread failed: {e}")))??;
        *self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(file);
        Ok(summary)
    }

    /// Whether the file holds exactly the bytes quo-sync last read or wrote (SHA-256), so a
    /// change notice for it (our own write-back, a touch) needs no cycle.
    pub async fn matches_last_seen(&self) -> bool {
        let Some(seen) = self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|f| f.sha256.clone())
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

    /// Rewrites only the changed cells of the changed rows, atomically; refuses if the file
    /// changed since the last read.
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

/// The header row, resolved against the configuration.
struct Header {
    names: Vec<String>,
    /// Column name → first column with that name.
    index: HashMap<String, usize>,
    id: usize,
    updated_at: Option<usize>,
}

fn parse_header(layout: &Layout, record: Option<&ByteRecord>) -> Result<Header, SourceError> {
    let names: Vec<String> = record
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, raw)| {
                    let raw = if i == 0 {
                        raw.strip_prefix(UTF8_BOM).unwrap_or(raw)
                    } else {
                        raw
                    };
                    let name = String::from_utf8_lossy(raw).trim().to_string();
                    // A quoted first name after a BOM is not unquoted by the parser.
                    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                        Some(inner) if i == 0 => inner.trim().to_string(),
                        _ => name,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
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

/// Passes reads through while hashing and counting every byte, and remembers where the
/// recent line-ending bytes are so a record's true first line can be found.
///
/// The csv parser reports a record's position as where the previous record stopped, which can
/// be before the `\n` of a CRLF or before blank lines; the bytes in between are all `\r`/`\n`.
/// Only line endings not yet behind the current record are kept (read-ahead plus one record).
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    /// Offsets of recent `\r`/`\n` bytes; `None` when lines are not needed.
    eols: Option<VecDeque<(u64, u8)>>,
}

impl<R: Read> HashingReader<R> {
    /// A reader that also tracks line endings for `start_line`.
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            eols: Some(VecDeque::new()),
        }
    }

    /// A reader that only hashes and counts.
    fn plain(inner: R) -> Self {
        Self {
            eols: None,
            ..Self::new(inner)
        }
    }

    /// The 1-based line where the record reported at `position` really starts.
    fn start_line(&mut self, position: Option<&::csv::Position>) -> u64 {
        let (Some(position), Some(eols)) = (position, self.eols.as_mut()) else {
            return 0;
        };
        while eols.front().is_some_and(|(at, _)| *at < position.byte()) {
            eols.pop_front();
        }
        let (mut at, mut line) = (position.byte(), position.line());
        while let Some(&(offset, byte)) = eols.front() {
            if offset != at {
                break;
            }
            line += u64::from(byte == b'\n');
            at += 1;
            eols.pop_front();
        }
        line
    }

    /// Reads what is left (so the hash covers the whole file) and returns (len, hash).
    fn finish(mut self) -> io::Result<(u64, Vec<u8>)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.count, self.hasher.finalize().to_vec()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(eols) = self.eols.as_mut() {
            let read = &buf[..n];
            for i in memchr::memchr2_iter(b'\n', b'\r', read) {
                eols.push_back((self.count + i as u64, read[i]));
            }
        }
        self.count += n as u64;
        Ok(n)
    }
}

fn csv_reader<R: Read>(inner: R) -> ::csv::Reader<R> {
    ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(inner)
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
