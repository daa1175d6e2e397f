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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use ::csv::{ByteRecord, ReaderBuilder};
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

use super::*;
use crate::domain::ExternalIdError;
use crate::mapping::RawFingerprint;

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
        let layout = self.layout();
        let (summary, fingerprint) =
            tokio::task::spawn_blocking(move || read_file(&layout, Sink::Plain(&tx)))
                .await
                .map_err(|e| self.io_error(format!("reader thread failed: {e}")))??;
        *self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(fingerprint);
        Ok(summary)
    }

    /// Like `read`, but each usable row arrives with the digest of its fingerprinted cells and
    /// is built into a record only on demand; rows come in batches.
    pub async fn read_digested(
        &self,
        fingerprint: RawFingerprint,
        tx: mpsc::Sender<Vec<DigestedItem>>,
    ) -> Result<ReadSummary, SourceError> {
        let layout = self.layout();
        let (summary, file) = tokio::task::spawn_blocking(move || {
            read_file(
                &layout,
                Sink::Digested {
                    tx: &tx,
                    fingerprint: &fingerprint,
                },
            )
        })
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
        let layout = self.layout();
        let last_read = Arc::clone(&self.last_read);
        let changes = changes.to_vec();
        tokio::task::spawn_blocking(move || write_file(&layout, &last_read, &changes, &[]))
            .await
            .map_err(|e| self.io_error(format!("writer thread failed: {e}")))?
    }

    /// Removes the rows of these records, atomically, under the same rules as `write_back`.
    pub async fn delete_records(&self, ids: &[ExternalId]) -> Result<WriteReport, SourceError> {
        let layout = self.layout();
        let last_read = Arc::clone(&self.last_read);
        let ids = ids.to_vec();
        tokio::task::spawn_blocking(move || write_file(&layout, &last_read, &[], &ids))
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

/// A line holding nothing but spaces: not a row.
fn is_blank(record: &ByteRecord) -> bool {
    record.len() == 1 && record[0].iter().all(u8::is_ascii_whitespace)
}

/// The readable id of a row, or why it has none.
enum RowId {
    Valid(ExternalId),
    Invalid {
        shown: Option<String>,
        reason: String,
    },
}

fn row_id(layout: &Layout, header: &Header, record: &ByteRecord) -> RowId {
    let column = &layout.id_field;
    let Some(raw) = record.get(header.id) else {
        return RowId::Invalid {
            shown: None,
            reason: format!("the row ends before the id column {column:?}"),
        };
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        return RowId::Invalid {
            shown: Some(String::from_utf8_lossy(raw).trim().to_string()),
            reason: format!("the id column {column:?} is not valid UTF-8"),
        };
    };
    match ExternalId::parse(text) {
        Ok(id) => RowId::Valid(id),
        Err(ExternalIdError::Empty) => RowId::Invalid {
            shown: None,
            reason: format!("the id column {column:?} is empty"),
        },
        Err(ExternalIdError::TooLong(id)) => RowId::Invalid {
            shown: Some(id),
            reason: format!(
                "the id in column {column:?} is longer than 75 characters (Quo's externalId limit)"
            ),
        },
        Err(e @ ExternalIdError::ControlCharacter(_)) => RowId::Invalid {
            shown: None,
            reason: format!("column {column:?}: {e}"),
        },
    }
}

/// The row's cells as one validated text, when every cell is valid UTF-8: one validation per
/// row, after which a cell is `text.get(record.range(i))` (a boundary check, not a rescan).
fn row_text(record: &ByteRecord) -> Option<&str> {
    let text = std::str::from_utf8(record.as_slice()).ok()?;
    // Valid as a whole is not valid cell by cell: a cell may end inside a character.
    (0..record.len())
        .all(|i| {
            record
                .range(i)
                .is_some_and(|r| text.is_char_boundary(r.end))
        })
        .then_some(text)
}

/// Why a row's shape (not its id) makes it unusable: bad UTF-8 or a wrong field count.
fn shape_problems(header: &Header, record: &ByteRecord, text: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    // Cell by cell only when the row as a whole failed, to name the bad column.
    let cells = if text.is_some() { 0 } else { record.len() };
    for (i, raw) in record.iter().enumerate().take(cells) {
        if let Err(e) = std::str::from_utf8(raw) {
            let column = header
                .names
                .get(i)
                .map(|n| format!("column {n:?}"))
                .unwrap_or_else(|| format!("extra field {}", i + 1));
            problems.push(format!(
                "{column} is not valid UTF-8 (bad byte at offset {} of the value)",
                e.valid_up_to()
            ));
        }
    }
    if record.len() != header.names.len() {
        problems.push(format!(
            "the row has {} fields but the header has {} columns",
            record.len(),
            header.names.len()
        ));
    }
    problems
}

/// The row as text for the operator (lossy UTF-8, fields joined with commas).
fn raw_text(record: &ByteRecord) -> String {
    record
        .iter()
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(",")
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

/// Passes writes through while hashing and counting every byte.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn csv_reader<R: Read>(inner: R) -> ::csv::Reader<R> {
    ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(inner)
}

/// Where the blocking reader sends rows: plain items, or digested items in batches.
enum Sink<'a> {
    Plain(&'a mpsc::Sender<SourceItem>),
    Digested {
        tx: &'a mpsc::Sender<Vec<DigestedItem>>,
        fingerprint: &'a RawFingerprint,
    },
}

/// Rows per batch of a digested read: one channel hand-off per batch, not per row.
const BATCH: usize = 512;

/// The blocking half of `read`.
fn read_file(layout: &Layout, sink: Sink<'_>) -> Result<(ReadSummary, Fingerprint), SourceError> {
    let file = File::open(&layout.path).map_err(|e| layout.io(e))?;
    let modified = file.metadata().and_then(|m| m.modified()).ok();
    let mut reader = csv_reader(HashingReader::new(file));
    let mut record = ByteRecord::new();
    let mut header: Option<Header> = None;
    // A 64-bit digest of every id seen so far and the line it was first seen on: the only
    // per-row memory (16 bytes a row, not the id itself). Two different ids sharing a digest
    // (odds about 1 in 10^7 for a million rows) would quarantine the second as a duplicate,
    // visibly, never silently.
    let mut seen = SeenIds::default();
    let mut items = 0u64;
    let mut plan: Option<DigestPlan<'_>> = None;
    let mut batch: Vec<DigestedItem> = Vec::new();
    loop {
        if !reader
            .read_byte_record(&mut record)
            .map_err(|e| layout.io(e))?
        {
            break;
        }
        let line = reader.get_mut().start_line(record.position());
        let Some(header) = header.as_ref() else {
            header = Some(parse_header(layout, Some(&record))?);
            continue;
        };
        if is_blank(&record) {
            continue;
        }
        items += 1;
        match sink {
            Sink::Plain(tx) => {
                let item = classify(layout, header, &record, line, &mut seen);
                tx.blocking_send(item).map_err(|_| SourceError::Cancelled)?;
            }
            Sink::Digested { tx, fingerprint } => {
                let plan = plan.get_or_insert_with(|| DigestPlan::new(layout, header, fingerprint));
                batch.push(plan.item(layout, header, &record, line, &mut seen));
                if batch.len() == BATCH {
                    plan.seal();
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    tx.blocking_send(full).map_err(|_| SourceError::Cancelled)?;
                }
            }
        }
    }
    if let Sink::Digested { tx, .. } = sink
        && !batch.is_empty()
    {
        if let Some(plan) = plan.as_mut() {
            plan.seal();
        }
        tx.blocking_send(batch)
            .map_err(|_| SourceError::Cancelled)?;
    }
    if header.is_none() {
        parse_header(layout, None)?;
    }
    let (len, sha256) = reader.into_inner().finish().map_err(|e| layout.io(e))?;
    Ok((
        ReadSummary {
            complete: true,
            items,
        },
        Fingerprint {
            len,
            modified,
            sha256,
        },
    ))
}

/// The ids a read has seen, as 64-bit digests (keyed per process, so a crafted pair of ids
/// cannot be made to collide on purpose) with the line each was first seen on.
#[derive(Default)]
struct SeenIds {
    keys: foldhash::quality::RandomState,
    first_line: HashMap<u64, u64, foldhash::fast::RandomState>,
}

impl SeenIds {
    /// Records `id` at `line`; the line it was first seen on when it is a repeat.
    fn first_use(&mut self, id: &str, line: u64) -> Option<u64> {
        use std::hash::BuildHasher;
        match self.first_line.entry(self.keys.hash_one(id)) {
            std::collections::hash_map::Entry::Occupied(first) => Some(*first.get()),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(line);
                None
            }
        }
    }
}

/// Turns one data row into a record or a quarantined row.
fn classify(
    layout: &Layout,
    header: &Header,
    record: &ByteRecord,
    line: u64,
    seen: &mut SeenIds,
) -> SourceItem {
    match check(layout, header, record, row_text(record), line, seen) {
        Ok(id) => SourceItem::Record(SourceRecord {
            external_id: id,
            fields: fields_of(&header.names, record),
            updated_at: row_updated_at(layout, header, record, line),
            location: layout.location(line),
        }),
        Err(bad) => SourceItem::Bad(bad),
    }
}

/// A row's id when the row is usable, or the quarantined row and why.
fn check(
    layout: &Layout,
    header: &Header,
    record: &ByteRecord,
    text: Option<&str>,
    line: u64,
    seen: &mut SeenIds,
) -> Result<ExternalId, BadRecord> {
    let (id, shown, mut problems) = match row_id(layout, header, record) {
        RowId::Valid(id) => {
            let mut problems = Vec::new();
            if let Some(first) = seen.first_use(id.as_str(), line) {
                problems.push(format!(
                    "duplicate id {:?}: already used by line {first}",
                    id.as_str()
                ));
            }
            (Some(id), None, problems)
        }
        RowId::Invalid { shown, reason } => (None, shown, vec![reason]),
    };
    problems.extend(shape_problems(header, record, text));
    match id {
        Some(id) if problems.is_empty() => Ok(id),
        id => Err(BadRecord {
            location: layout.location(line),
            external_id: id.map(|id| id.as_str().to_string()).or(shown),
            reason: problems.join("; "),
            raw: raw_text(record),
        }),
    }
}

/// The row's cells by column name (the first column of a repeated name wins), trimmed.
fn fields_of(names: &[String], record: &ByteRecord) -> BTreeMap<String, String> {
    fields_from(
        names,
        record
            .iter()
            .map(|raw| std::str::from_utf8(raw).unwrap_or_default()),
    )
}

/// `fields_of` over cells already read as text.
fn fields_from<'a>(
    names: &[String],
    cells: impl Iterator<Item = &'a str>,
) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for (name, value) in names.iter().zip(cells) {
        fields
            .entry(name.clone())
            .or_insert_with(|| value.trim().to_string());
    }
    fields
}

/// The row's last-modified time; an unparseable one is logged and ignored.
fn row_updated_at(
    layout: &Layout,
    header: &Header,
    record: &ByteRecord,
    line: u64,
) -> Option<DateTime<Utc>> {
    header.updated_at.and_then(|i| {
        let raw = std::str::from_utf8(record.get(i)?)
            .unwrap_or_default()
            .trim();
        if raw.is_empty() {
            return None;
        }
        let parsed = parse_timestamp(raw);
        if parsed.is_none() {
            tracing::warn!(
                location = %layout.location(line),
                field = %header.names[i],
                value = raw,
                "unparseable last-modified time ignored; expected RFC 3339 or YYYY-MM-DD HH:MM:SS"
            );
        }
        parsed
    })
}

/// A usable row kept as parsed, with what it takes to build its record later: most rows of a
/// no-change read are only compared by digest and never built.
#[derive(Debug)]
pub struct RawRow {
    /// The batch's cells, filled in before the batch leaves the reader.
    store: Arc<OnceLock<RowStore>>,
    /// This row's cells: `ends[cells]` in the store.
    cells: std::ops::Range<u32>,
    /// Where the row's first cell starts in the store's text.
    start: u32,
    line: u64,
}

impl RawRow {
    /// The record, exactly as a plain read would have yielded it.
    pub(super) fn into_record(
        self,
        external_id: ExternalId,
        updated_at: Option<DateTime<Utc>>,
    ) -> SourceRecord {
        let store = self
            .store
            .get()
            .expect("a batch's store is sealed before it is sent");
        let ends = &store.ends[self.cells.start as usize..self.cells.end as usize];
        let starts = std::iter::once(self.start).chain(ends.iter().copied());
        let cells = starts
            .zip(ends)
            .map(|(from, &to)| &store.text[from as usize..to as usize]);
        SourceRecord {
            external_id,
            fields: fields_from(&store.names, cells),
            updated_at,
            location: format!("{} line {}", store.file, self.line),
        }
    }
}

/// The cells of one batch of rows, end to end in one string (every kept row is valid UTF-8):
/// one allocation per batch where a copy of each row cost three.
#[derive(Debug)]
struct RowStore {
    text: String,
    /// Each cell's end offset in `text`.
    ends: Vec<u32>,
    names: Arc<[String]>,
    file: Arc<str>,
}

impl RowStore {
    /// An empty store sized like `like` (the previous batch's), so it rarely regrows.
    fn new(names: &Arc<[String]>, file: &Arc<str>, like: Option<&RowStore>) -> Self {
        Self {
            text: String::with_capacity(like.map_or(0, |s| s.text.len())),
            ends: Vec::with_capacity(like.map_or(0, |s| s.ends.len())),
            names: Arc::clone(names),
            file: Arc::clone(file),
        }
    }
}

/// What a fingerprinting read needs beside the header: the fingerprint, the column of each
/// fingerprinted field (the first of its name), and the store the current batch's rows go to.
struct DigestPlan<'a> {
    fingerprint: &'a RawFingerprint,
    columns: Vec<Option<usize>>,
    /// The current batch's cells, being filled.
    store: RowStore,
    /// Where the current batch's rows will find `store` once it is sealed.
    sealed: Arc<OnceLock<RowStore>>,
}

impl<'a> DigestPlan<'a> {
    fn new(layout: &Layout, header: &Header, fingerprint: &'a RawFingerprint) -> Self {
        let names: Arc<[String]> = header.names.clone().into();
        let file: Arc<str> = layout.name().into();
        Self {
            fingerprint,
            columns: fingerprint
                .fields()
                .iter()
                .map(|name| header.index.get(name).copied())
                .collect(),
            store: RowStore::new(&names, &file, None),
            sealed: Arc::new(OnceLock::new()),
        }
    }

    /// Hands the current batch's cells to its rows; the next rows go to a fresh store.
    fn seal(&mut self) {
        let next = RowStore::new(&self.store.names, &self.store.file, Some(&self.store));
        let full = std::mem::replace(&mut self.store, next);
        let sealed = std::mem::replace(&mut self.sealed, Arc::new(OnceLock::new()));
        sealed
            .set(full)
            .expect("a store is sealed once, with its batch");
    }

    /// A row as a digested item (or a quarantined one).
    fn item(
        &mut self,
        layout: &Layout,
        header: &Header,
        record: &ByteRecord,
        line: u64,
        seen: &mut SeenIds,
    ) -> DigestedItem {
        let text = row_text(record);
        let (id, text) = match check(layout, header, record, text, line, seen) {
            Ok(id) => (id, text.expect("a usable row is valid UTF-8")),
            Err(bad) => return DigestedItem::Item(SourceItem::Bad(bad)),
        };
        // Trimmed as `fields_from` trims.
        let digest = self.fingerprint.digest(|i| {
            self.columns[i]
                .and_then(|c| text.get(record.range(c)?))
                .map(str::trim)
                .unwrap_or_default()
        });
        DigestedItem::Row(DigestedRow {
            external_id: id,
            digest,
            updated_at: row_updated_at(layout, header, record, line),
            raw: self.keep(record, text, line),
        })
    }

    /// Copies a usable row's cells into the batch's store.
    fn keep(&mut self, record: &ByteRecord, text: &str, line: u64) -> RawRow {
        let store = &mut self.store;
        let offset = |n: usize| u32::try_from(n).expect("a batch's text stays under 4 GiB");
        let start = offset(store.text.len());
        let first = offset(store.ends.len());
        store.text.push_str(text);
        for i in 0..record.len() {
            let end = record.range(i).map_or(0, |r| r.end);
            store.ends.push(start + offset(end));
        }
        RawRow {
            store: Arc::clone(&self.sealed),
            cells: first..offset(store.ends.len()),
            start,
            line,
        }
    }
}

/// The changes for one id, merged in order.
struct PendingChange {
    id: ExternalId,
    fields: BTreeMap<String, String>,
    updated_at: DateTime<Utc>,
    /// Remove the row instead of editing it.
    delete: bool,
}

/// A row being rewritten: where it starts and its new cells.
struct RowEdit {
    start: u64,
    record: ByteRecord,
    cells: BTreeMap<usize, String>,
    delete: bool,
}

/// A temp file next to the target, removed unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn create(target: &Path) -> io::Result<(TempFile, File)> {
        let dir = parent_dir(target);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "source.csv".into());
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        for attempt in 0..100u32 {
            let path = dir.join(format!(
                ".{name}.quo-sync-{}-{nanos}-{attempt}.tmp",
                std::process::id()
            ));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((TempFile { path, armed: true }, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "could not create a unique temporary file",
        ))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The blocking half of `write_back`.
fn write_file(
    layout: &Layout,
    last_read: &Mutex<Option<Fingerprint>>,
    changes: &[CrmChange],
    deletes: &[ExternalId],
) -> Result<WriteReport, SourceError> {
    let mut report = WriteReport::default();
    if changes.is_empty() && deletes.is_empty() {
        return Ok(report);
    }
    let changed_since_read = || SourceError::ChangedSinceRead {
        path: layout.name(),
    };
    // Held for the whole write so two write-backs cannot interleave.
    let mut stored = last_read.lock().unwrap_or_else(PoisonError::into_inner);
    let expected = stored.clone().ok_or_else(changed_since_read)?;
    let meta = fs::metadata(&layout.path).map_err(|e| layout.io(e))?;
    if meta.len() != expected.len || meta.modified().ok() != expected.modified {
        return Err(changed_since_read());
    }

    let mut pending: HashMap<String, PendingChange> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for change in changes {
        let key = change.external_id.as_str().to_string();
        let entry = pending.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            PendingChange {
                id: change.external_id.clone(),
                fields: BTreeMap::new(),
                updated_at: change.updated_at,
                delete: false,
            }
        });
        entry.fields.extend(change.fields.clone());
        entry.updated_at = entry.updated_at.max(change.updated_at);
    }
    for id in deletes {
        let key = id.as_str().to_string();
        if !pending.contains_key(&key) {
            order.push(key.clone());
        }
        pending.insert(
            key,
            PendingChange {
                id: id.clone(),
                fields: BTreeMap::new(),
                updated_at: Utc::now(),
                delete: true,
            },
        );
    }

    let source = File::open(&layout.path).map_err(|e| layout.io(e))?;
    // Every byte of the file passes through the copier exactly once (copied as is, or read as
    // the span of a changed row), so its hash proves the output was built from the read bytes.
    let mut copier = HashingReader::plain(BufReader::new(
        File::open(&layout.path).map_err(|e| layout.io(e))?,
    ));
    let (temp, temp_file) = TempFile::create(&layout.path).map_err(|e| layout.io(e))?;
    let mut out = HashingWriter {
        inner: BufWriter::new(temp_file),
        hasher: Sha256::new(),
        count: 0,
    };
    let mut reader = csv_reader(HashingReader::new(source));
    let mut record = ByteRecord::new();
    let mut header: Option<Header> = None;
    let mut handled: HashSet<String> = HashSet::new();
    let mut applied: Vec<ExternalId> = Vec::new();
    let mut copied = 0u64;
    let mut edit: Option<RowEdit> = None;

    loop {
        if !reader
            .read_byte_record(&mut record)
            .map_err(|e| layout.io(e))?
        {
            break;
        }
        let line = reader.get_mut().start_line(record.position());
        let start = record.position().map_or(0, |p| p.byte());
        if let Some(row) = edit.take() {
            apply_edit(&mut copier, &mut out, &mut copied, row, start).map_err(|e| layout.io(e))?;
        }
        let Some(header) = header.as_ref() else {
            header = Some(parse_header(layout, Some(&record))?);
            continue;
        };
        if is_blank(&record) {
            continue;
        }
        let RowId::Valid(id) = row_id(layout, header, &record) else {
            continue;
        };
        let Some(change) = pending.get(id.as_str()) else {
            continue;
        };
        if !handled.insert(id.as_str().to_string()) {
            continue; // a later duplicate: never a record, never written
        }
        let planned = if change.delete {
            Ok(BTreeMap::new())
        } else {
            plan_edit(layout, header, &record, change)
        };
        match planned {
            Ok(cells) => {
                edit = Some(RowEdit {
                    start,
                    record: record.clone(),
                    cells,
                    delete: change.delete,
                });
                applied.push(change.id.clone());
            }
            Err(reason) => report.failed.push((
                change.id.clone(),
                format!("{}: {reason}", layout.location(line)),
            )),
        }
    }
    if header.is_none() {
        parse_header(layout, None)?;
    }
    let (len, sha256) = reader.into_inner().finish().map_err(|e| layout.io(e))?;
    if len != expected.len || sha256 != expected.sha256 {
        return Err(changed_since_read());
    }
    if let Some(row) = edit.take() {
        apply_edit(&mut copier, &mut out, &mut copied, row, len).map_err(|e| layout.io(e))?;
    }
    copy_exact(&mut copier, &mut out, len - copied).map_err(|e| layout.io(e))?;
    let (copied_len, copied_sha256) = copier.finish().map_err(|e| layout.io(e))?;
    if copied_len != expected.len || copied_sha256 != expected.sha256 {
        return Err(changed_since_read());
    }

    for key in &order {
        if !handled.contains(key) {
            let change = &pending[key];
            report.failed.push((
                change.id.clone(),
                format!("{} has no record with id {key:?}", layout.name()),
            ));
        }
    }
    if applied.is_empty() {
        return Ok(report); // the temp file is removed on drop
    }

    out.flush().map_err(|e| layout.io(e))?;
    let HashingWriter {
        inner,
        hasher,
        count,
    } = out;
    let file = inner.into_inner().map_err(|e| layout.io(e.error()))?;
    file.sync_all().map_err(|e| layout.io(e))?;
    drop(file);
    fs::set_permissions(&temp.path, meta.permissions()).map_err(|e| layout.io(e))?;
    fs::rename(&temp.path, &layout.path).map_err(|e| layout.io(e))?;
    let mut temp = temp;
    temp.armed = false;
    sync_dir(&parent_dir(&layout.path));

    let modified = fs::metadata(&layout.path).and_then(|m| m.modified()).ok();
    *stored = Some(Fingerprint {
        len: count,
        modified,
        sha256: hasher.finalize().to_vec(),
    });
    report.written = applied;
    Ok(report)
}

/// Persists the rename; best effort where directories cannot be opened (Windows).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Which cells of `record` change, or why the change cannot be applied to it.
fn plan_edit(
    layout: &Layout,
    header: &Header,
    record: &ByteRecord,
    change: &PendingChange,
) -> Result<BTreeMap<usize, String>, String> {
    let problems = shape_problems(header, record, row_text(record));
    if !problems.is_empty() {
        return Err(format!(
            "the row is quarantined ({}); fix it before changes can be written",
            problems.join("; ")
        ));
    }
    let mut cells = BTreeMap::new();
    let mut missing = Vec::new();
    for (name, value) in &change.fields {
        match header.index.get(name) {
            Some(&i) if i == header.id => {
                return Err(format!(
                    "the id column {:?} cannot be changed by write-back",
                    layout.id_field
                ));
            }
            Some(&i) => {
                cells.insert(i, value.clone());
            }
            None => missing.push(format!("{name:?}")),
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "the header has no column {} (columns: {})",
            missing.join(", "),
            header.names.join(", ")
        ));
    }
    if let Some(i) = header.updated_at {
        cells.insert(
            i,
            change.updated_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
    }
    Ok(cells)
}

fn copy_exact(from: &mut impl Read, to: &mut impl Write, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut from.take(len), to)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the file shrank while it was rewritten",
        ));
    }
    Ok(())
}

/// Copies everything before the row, then writes the row with its new cells.
fn apply_edit(
    copier: &mut impl Read,
    out: &mut impl Write,
    copied: &mut u64,
    row: RowEdit,
    end: u64,
) -> io::Result<()> {
    copy_exact(copier, out, row.start - *copied)?;
    let mut span = vec![0u8; (end - row.start) as usize];
    copier.read_exact(&mut span)?;
    *copied = end;
    if row.delete {
        return Ok(());
    }
    out.write_all(&rewrite_row(&span, &row.record, &row.cells))
}

/// Rewrites one row's bytes (`span`: the row, its line ending and any blank lines after it),
/// keeping every untouched cell's bytes and the line ending as they were.
fn rewrite_row(span: &[u8], record: &ByteRecord, cells: &BTreeMap<usize, String>) -> Vec<u8> {
    let is_eol = |b: &u8| *b == b'\r' || *b == b'\n';
    let lead = span.iter().take_while(|b| is_eol(b)).count();
    let trail = span[lead..].iter().rev().take_while(|b| is_eol(b)).count();
    let content = &span[lead..span.len() - trail];

    let raw_fields = split_raw(content);
    let faithful = raw_fields.len() == record.len()
        && raw_fields
            .iter()
            .zip(record.iter())
            .all(|(raw, parsed)| unquote(raw) == parsed);

    let mut out = Vec::with_capacity(span.len() + 16);
    out.extend_from_slice(&span[..lead]);
    for i in 0..record.len() {
        if i > 0 {
            out.push(b',');
        }
        match (cells.get(&i), faithful) {
            (Some(value), true) => out.extend(encode(value, raw_fields[i].first() == Some(&b'"'))),
            (Some(value), false) => out.extend(encode(value, false)),
            (None, true) => out.extend_from_slice(raw_fields[i]),
            (None, false) => out.extend(encode(&String::from_utf8_lossy(&record[i]), false)),
        }
    }
    out.extend_from_slice(&span[span.len() - trail..]);
    out
}

/// Splits a row's bytes on commas outside quotes, keeping each field's raw bytes.
fn split_raw(content: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, b) in content.iter().enumerate() {
        match b {
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => {
                fields.push(&content[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(&content[start..]);
    fields
}

/// A raw field's value: quotes removed and `""` unescaped when it is quoted.
fn unquote(raw: &[u8]) -> Vec<u8> {
    match raw {
        [b'"', inner @ .., b'"'] if raw.len() >= 2 => {
            let mut out = Vec::with_capacity(inner.len());
            let mut i = 0;
            while i < inner.len() {
                out.push(inner[i]);
                i += if inner[i] == b'"' && inner.get(i + 1) == Some(&b'"') {
                    2
                } else {
                    1
                };
            }
            out
        }
        _ => raw.to_vec(),
    }
}

/// A value as a CSV field: quoted when it must be, or when the old value was.
fn encode(value: &str, quote: bool) -> Vec<u8> {
    let needs =
        value.contains([',', '"', '\r', '\n']) || value.starts_with(' ') || value.ends_with(' ');
    if quote || needs {
        format!("\"{}\"", value.replace('"', "\"\"")).into_bytes()
    } else {
        value.as_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[&str]) -> ByteRecord {
        ByteRecord::from(fields.to_vec())
    }

    #[test]
    fn a_character_split_across_two_cells_is_bad_utf8_in_both() {
        // "é" is C3 A9: the row's bytes are valid UTF-8 as a whole, each cell is not.
        let split = ByteRecord::from(vec![&b"id1"[..], &b"Ad\xc3"[..], &b"\xa9"[..]]);
        assert_eq!(row_text(&split), None);
        let header = Header {
            names: vec!["id".into(), "first".into(), "last".into()],
            index: HashMap::new(),
            id: 0,
            updated_at: None,
        };
        let problems = shape_problems(&header, &split, row_text(&split));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("column \"first\""), "{problems:?}");
        let fine = ByteRecord::from(vec!["id1", "Adé", "Lovelace"]);
        assert_eq!(row_text(&fine), Some("id1AdéLovelace"));
        assert!(shape_problems(&header, &fine, row_text(&fine)).is_empty());
    }

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

    #[test]
    fn rewrite_keeps_untouched_cells_and_line_ending() {
        let span = b"c1,\"Ada, Countess\",ada@x.example,\"\"\"q\"\"\"\r\n\r\n";
        let rec = record(&["c1", "Ada, Countess", "ada@x.example", "\"q\""]);
        let cells = BTreeMap::from([(2, "new@x.example".to_string())]);
        assert_eq!(
            rewrite_row(span, &rec, &cells),
            b"c1,\"Ada, Countess\",new@x.example,\"\"\"q\"\"\"\r\n\r\n".to_vec()
        );
        let cells = BTreeMap::from([(1, "Ada".to_string()), (3, "a,b".to_string())]);
        assert_eq!(
            rewrite_row(span, &rec, &cells),
            b"c1,\"Ada\",ada@x.example,\"a,b\"\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn rewrite_falls_back_when_quoting_is_unusual() {
        // csv reads `"ab"c` as `abc`; the raw split cannot reproduce it, so the row is re-encoded.
        let span = b"c1,\"ab\"c,x\n";
        let rec = record(&["c1", "abc", "x"]);
        let cells = BTreeMap::from([(2, "y".to_string())]);
        assert_eq!(rewrite_row(span, &rec, &cells), b"c1,abc,y\n".to_vec());
    }

    #[test]
    fn encode_quotes_only_when_needed() {
        assert_eq!(encode("plain", false), b"plain");
        assert_eq!(encode("plain", true), b"\"plain\"");
        assert_eq!(encode("a\"b", false), b"\"a\"\"b\"");
        assert_eq!(encode("line\nbreak", false), b"\"line\nbreak\"");
        assert_eq!(encode("", false), b"");
    }
}
