//! Reading: each row becomes a record, a digested row (a no-change cycle compares digests and
//! builds only the records that changed), or a quarantined row that names its line and why.
//!
//! Cells become text here, in the file's encoding: a UTF-8 row is validated in place; a
//! Windows-1252 or Latin-1 row that is all ASCII is used as it is, and only a row with a byte
//! above 127 is decoded (into a scratch buffer), so the fingerprint of an ASCII cell is taken on
//! its raw bytes whatever the encoding.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::{Arc, OnceLock};

use ::csv::ByteRecord;
use chrono::{DateTime, Utc};

use super::dialect::{CellCodec, FileEncoding, judge};
use super::*;
use crate::domain::ExternalIdError;

/// A line holding nothing but spaces: not a row.
pub(super) fn is_blank(record: &ByteRecord) -> bool {
    record.len() == 1 && record[0].iter().all(u8::is_ascii_whitespace)
}

/// A row's cells as text: one string holding every cell end to end, and where each ends.
#[derive(Clone, Copy)]
pub(super) struct RowText<'a> {
    text: &'a str,
    ends: Ends<'a>,
}

#[derive(Clone, Copy)]
enum Ends<'a> {
    /// The record's own cells (the text is its bytes).
    Record(&'a ByteRecord),
    /// Decoded cells.
    Decoded(&'a [usize]),
}

impl<'a> RowText<'a> {
    fn of_record(text: &'a str, record: &'a ByteRecord) -> Self {
        RowText {
            text,
            ends: Ends::Record(record),
        }
    }

    /// How many cells.
    pub(super) fn len(&self) -> usize {
        match self.ends {
            Ends::Record(record) => record.len(),
            Ends::Decoded(ends) => ends.len(),
        }
    }

    /// Where cell `i` ends in [`as_str`](Self::as_str).
    fn end(&self, i: usize) -> usize {
        match self.ends {
            Ends::Record(record) => record.range(i).map_or(0, |r| r.end),
            Ends::Decoded(ends) => ends[i],
        }
    }

    /// Cell `i`.
    pub(super) fn cell(&self, i: usize) -> Option<&'a str> {
        if i >= self.len() {
            return None;
        }
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        self.text.get(start..self.end(i))
    }

    /// Every cell, in order.
    pub(super) fn cells(self) -> impl Iterator<Item = &'a str> {
        (0..self.len()).map(move |i| self.cell(i).unwrap_or_default())
    }

    /// Every cell end to end.
    fn as_str(&self) -> &'a str {
        self.text
    }
}

/// The row's cells as one validated UTF-8 text, when every cell is valid UTF-8: one validation
/// per row, after which a cell is a boundary check, not a rescan.
fn utf8_text(record: &ByteRecord) -> Option<&str> {
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

/// How cells are text at a given row: the encoding, and under `auto` what decided it.
#[derive(Debug, Clone, Copy)]
pub(super) struct TextRule {
    codec: CellCodec,
    encoding: FileEncoding,
    /// Under `auto` without a byte order mark: the encoding the rows decided, and the line.
    decided: Option<(FileEncoding, u64)>,
}

/// Turns rows' cells into text in the file's encoding; under `auto` without a byte order mark,
/// the first row with a byte above 127 decides the encoding for the rest of the file.
pub(super) struct Cells {
    rule: TextRule,
    undecided: bool,
    scratch: String,
    ends: Vec<usize>,
}

impl Cells {
    /// Cells of a file in `encoding`; `undecided` while `auto` waits for a non-ASCII row.
    #[cfg(test)]
    pub(super) fn new(encoding: FileEncoding, undecided: bool) -> Self {
        Self::decided(encoding, undecided, None)
    }

    /// Cells of a file whose encoding `auto` decided at `line` in an earlier read of the same
    /// bytes (write-back), so rows that do not fit are refused as the read refused them.
    pub(super) fn decided(encoding: FileEncoding, undecided: bool, line: Option<u64>) -> Self {
        Cells {
            rule: TextRule {
                codec: encoding.cells(),
                encoding,
                decided: line.map(|line| (encoding, line)),
            },
            undecided,
            scratch: String::new(),
            ends: Vec::new(),
        }
    }

    /// Whether `auto` is still waiting for a row with a byte above 127.
    pub(super) fn undecided(&self) -> bool {
        self.undecided
    }

    /// What the rows decided under `auto`, and on which line.
    pub(super) fn decided_at(&self) -> Option<(FileEncoding, u64)> {
        self.rule.decided
    }

    /// The row's cells as text (`None` when they are not text in the file's encoding: see
    /// [`problems`]), and the rule they were read by.
    pub(super) fn text<'a>(
        &'a mut self,
        record: &'a ByteRecord,
        line: u64,
    ) -> (Option<RowText<'a>>, TextRule) {
        if self.undecided {
            match judge(record.as_slice()) {
                None => {
                    let text = std::str::from_utf8(record.as_slice()).ok();
                    return (text.map(|t| RowText::of_record(t, record)), self.rule);
                }
                Some(encoding) => {
                    self.undecided = false;
                    self.rule = TextRule {
                        codec: encoding.cells(),
                        encoding,
                        decided: Some((encoding, line)),
                    };
                    tracing::debug!(
                        event = "csv_encoding_detected",
                        encoding = encoding.label(),
                        line,
                        "the first row with a byte above 127 decides the CSV file's encoding"
                    );
                }
            }
        }
        let rule = self.rule;
        let text = match rule.codec {
            CellCodec::Utf8 => utf8_text(record).map(|t| RowText::of_record(t, record)),
            CellCodec::Windows1252 | CellCodec::Latin1 => {
                let bytes = record.as_slice();
                if bytes.is_ascii() {
                    std::str::from_utf8(bytes)
                        .ok()
                        .map(|t| RowText::of_record(t, record))
                } else if rule.decided.is_some() && std::str::from_utf8(bytes).is_ok() {
                    None // UTF-8 in a file `auto` took for Windows-1252: not guessed at
                } else {
                    Some(self.decode(record))
                }
            }
        };
        (text, rule)
    }

    /// Decodes a single-byte-encoded row into the scratch buffer: an ASCII cell is copied as
    /// it is, only a cell with a byte above 127 goes through the decoder.
    fn decode<'a>(&'a mut self, record: &ByteRecord) -> RowText<'a> {
        self.scratch.clear();
        self.ends.clear();
        for raw in record.iter() {
            match std::str::from_utf8(raw) {
                Ok(ascii) if ascii.is_ascii() => self.scratch.push_str(ascii),
                _ => self.rule.codec.decode_into(raw, &mut self.scratch),
            }
            self.ends.push(self.scratch.len());
        }
        RowText {
            text: &self.scratch,
            ends: Ends::Decoded(&self.ends),
        }
    }
}

/// The readable id of a row, or why it has none.
pub(super) enum RowId {
    Valid(ExternalId),
    Invalid {
        shown: Option<String>,
        reason: String,
    },
}

pub(super) fn row_id(
    layout: &Layout,
    header: &Header,
    record: &ByteRecord,
    text: Option<RowText<'_>>,
    rule: TextRule,
) -> RowId {
    let column = &layout.id_field;
    let Some(raw) = record.get(header.id) else {
        return RowId::Invalid {
            shown: None,
            reason: format!("the row ends before the id column {column:?}"),
        };
    };
    let decoded = match text.and_then(|t| t.cell(header.id)) {
        Some(cell) => Ok(std::borrow::Cow::Borrowed(cell)),
        None => rule.codec.decode(raw),
    };
    let Ok(text) = decoded else {
        return RowId::Invalid {
            shown: Some(String::from_utf8_lossy(raw).trim().to_string()),
            reason: format!(
                "the id column {column:?} is not valid {}",
                encoding_name(rule)
            ),
        };
    };
    match ExternalId::parse(&text) {
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

/// The encoding as messages name it (`UTF-8`, `UTF-16`).
fn encoding_name(rule: TextRule) -> &'static str {
    if rule.encoding.is_utf16() {
        "UTF-16"
    } else {
        "UTF-8"
    }
}

/// Why a row's shape (not its id) makes it unusable: cells that are not text in the file's
/// encoding, or a wrong field count.
pub(super) fn problems(
    rule: TextRule,
    header: &Header,
    record: &ByteRecord,
    text_ok: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !text_ok {
        match (rule.codec, rule.decided) {
            (CellCodec::Utf8, decided) => {
                for (i, raw) in record.iter().enumerate() {
                    let Err(e) = std::str::from_utf8(raw) else {
                        continue;
                    };
                    let column = header
                        .names
                        .get(i)
                        .map(|n| format!("column {n:?}"))
                        .unwrap_or_else(|| format!("extra field {}", i + 1));
                    problems.push(if rule.encoding.is_utf16() {
                        format!("{column} is not valid UTF-16 (an unpaired surrogate or a cut character)")
                    } else {
                        format!(
                            "{column} is not valid UTF-8 (bad byte at offset {} of the value){}",
                            e.valid_up_to(),
                            decided.map_or(String::new(), |(_, line)| format!(
                                "; the file was read as UTF-8 because line {line} is, set source.encoding if it is not"
                            ))
                        )
                    });
                }
            }
            (_, decided) => problems.push(format!(
                "the row is UTF-8, but the file was read as {} (line {}, the first with a byte above 127, is not UTF-8); set source.encoding",
                rule.encoding.label(),
                decided.map_or(0, |(_, line)| line)
            )),
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

/// The row as text for the operator (cells decoded as well as they can be, joined with the
/// file's separator).
fn raw_text(record: &ByteRecord, rule: TextRule, delimiter: u8) -> String {
    record
        .iter()
        .map(|raw| match rule.codec.decode(raw) {
            Ok(text) => text.into_owned(),
            Err(_) => String::from_utf8_lossy(raw).into_owned(),
        })
        .collect::<Vec<_>>()
        .join(&char::from(delimiter).to_string())
}

/// Where the blocking reader sends rows: plain items, or digested items in batches.
pub(super) enum Sink<'a> {
    Plain(&'a mpsc::Sender<SourceItem>),
    Digested {
        tx: &'a mpsc::Sender<Vec<DigestedItem>>,
        fingerprint: &'a RawFingerprint,
    },
}

/// Rows per batch of a digested read: one channel hand-off per batch, not per row.
const BATCH: usize = 512;

/// The blocking half of `read`.
///
/// Each row is handed on only once the next has been read: the last one waits until the read
/// knows the file did not change under it. If it did (a writer was still at work), the read is
/// reported incomplete, so no record counts as gone, and the last row, which may be cut, is not
/// used.
pub(super) fn read_file(
    layout: &Layout,
    sink: Sink<'_>,
) -> Result<(ReadSummary, Seen), SourceError> {
    let file = File::open(&layout.path).map_err(|e| layout.io(e))?;
    let opened = file
        .metadata()
        .map(|m| FileState::of(&m))
        .map_err(|e| layout.io(e))?;
    let mut parser = Parser::open(layout, file, None)?;
    let delimiter = parser.dialect.delimiter;
    let mut record = ByteRecord::new();
    let mut header: Option<Header> = None;
    // A 64-bit digest of every id seen so far and the line it was first seen on: the only
    // per-row memory (16 bytes a row, not the id itself). Two different ids sharing a digest
    // (odds about 1 in 10^7 for a million rows) would quarantine the second as a duplicate,
    // visibly, never silently.
    let mut seen = SeenIds::default();
    let mut items = 0u64;
    let mut plan: Option<DigestPlan<'_>> = None;
    let mut out = Outbox {
        sink,
        held: None,
        batch: Vec::new(),
    };
    loop {
        if !parser
            .reader
            .read_byte_record(&mut record)
            .map_err(|e| layout.io(e))?
        {
            break;
        }
        let (line, _) = parser.reader.get_mut().locate(record.position());
        let (text, rule) = parser.cells.text(&record, line);
        let Some(header) = header.as_ref() else {
            header = Some(parse_header(layout, Some((&record, text)))?);
            continue;
        };
        if is_blank(&record) {
            continue;
        }
        items += 1;
        let row = Row {
            record: &record,
            text,
            rule,
            line,
            delimiter,
        };
        let item = match out.sink {
            Sink::Plain(_) => DigestedItem::Item(classify(layout, header, row, &mut seen)),
            Sink::Digested { fingerprint, .. } => {
                let plan = plan.get_or_insert_with(|| DigestPlan::new(layout, header, fingerprint));
                plan.item(layout, header, row, &mut seen)
            }
        };
        out.hold(item, plan.as_mut())?;
    }
    if header.is_none() {
        parse_header(layout, None)?;
    }
    let dialect = parser.finish_dialect();
    let (len, sha256, file) = parser
        .reader
        .into_inner()
        .finish()
        .map_err(|e| layout.io(e))?;
    let now = file.metadata().ok().map(|m| FileState::of(&m));
    let torn = now != Some(opened) || len != opened.len;
    if torn {
        tracing::warn!(
            event = "csv_changed_during_read",
            path = %layout.name(),
            "the CSV file changed while it was read: this read counts no record as gone and does not use its last row (writers should replace the file by rename)"
        );
        if out.held.take().is_some() {
            items -= 1;
        }
    }
    out.finish(plan.as_mut())?;
    Ok((
        ReadSummary {
            complete: !torn,
            items,
        },
        Seen {
            file: Fingerprint {
                len,
                modified: opened.modified,
                sha256,
            },
            dialect,
        },
    ))
}

/// One data row and how its cells read.
#[derive(Clone, Copy)]
struct Row<'r> {
    record: &'r ByteRecord,
    text: Option<RowText<'r>>,
    rule: TextRule,
    line: u64,
    delimiter: u8,
}

/// Hands items to the sink one row behind the reader (see `read_file`).
struct Outbox<'a> {
    sink: Sink<'a>,
    held: Option<DigestedItem>,
    batch: Vec<DigestedItem>,
}

impl Outbox<'_> {
    /// Holds `item` and hands on the one held before it.
    fn hold(
        &mut self,
        item: DigestedItem,
        plan: Option<&mut DigestPlan<'_>>,
    ) -> Result<(), SourceError> {
        match self.held.replace(item) {
            Some(previous) => self.deliver(previous, plan),
            None => Ok(()),
        }
    }

    fn deliver(
        &mut self,
        item: DigestedItem,
        plan: Option<&mut DigestPlan<'_>>,
    ) -> Result<(), SourceError> {
        match (&self.sink, item) {
            (Sink::Plain(tx), DigestedItem::Item(item)) => {
                tx.blocking_send(item).map_err(|_| SourceError::Cancelled)
            }
            (Sink::Plain(_), DigestedItem::Row(_)) => unreachable!("a plain read builds records"),
            (Sink::Digested { tx, .. }, item) => {
                self.batch.push(item);
                if self.batch.len() < BATCH {
                    return Ok(());
                }
                if let Some(plan) = plan {
                    plan.seal();
                }
                let full = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
                tx.blocking_send(full).map_err(|_| SourceError::Cancelled)
            }
        }
    }

    /// Hands on the held row and the last batch.
    fn finish(mut self, mut plan: Option<&mut DigestPlan<'_>>) -> Result<(), SourceError> {
        if let Some(item) = self.held.take() {
            self.deliver(item, plan.as_deref_mut())?;
        }
        if let Sink::Digested { tx, .. } = self.sink
            && !self.batch.is_empty()
        {
            if let Some(plan) = plan {
                plan.seal();
            }
            tx.blocking_send(self.batch)
                .map_err(|_| SourceError::Cancelled)?;
        }
        Ok(())
    }
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
fn classify(layout: &Layout, header: &Header, row: Row<'_>, seen: &mut SeenIds) -> SourceItem {
    match check(layout, header, row, seen) {
        Ok((id, text)) => SourceItem::Record(SourceRecord {
            external_id: id,
            fields: fields_from(&header.names, text.cells()),
            updated_at: row_updated_at(layout, header, text, row.line),
            location: layout.location(row.line),
        }),
        Err(bad) => SourceItem::Bad(bad),
    }
}

/// A row's id and text when the row is usable, or the quarantined row and why.
fn check<'r>(
    layout: &Layout,
    header: &Header,
    row: Row<'r>,
    seen: &mut SeenIds,
) -> Result<(ExternalId, RowText<'r>), BadRecord> {
    let Row {
        record,
        text,
        rule,
        line,
        delimiter,
    } = row;
    // The id column is to blame when the id is missing, unusable or repeated.
    let mut id_to_blame = true;
    let (id, shown, mut found) = match row_id(layout, header, record, text, rule) {
        RowId::Valid(id) => {
            let mut found = Vec::new();
            if let Some(first) = seen.first_use(id.as_str(), line) {
                found.push(format!(
                    "duplicate id {:?}: already used by line {first}",
                    id.as_str()
                ));
            } else {
                id_to_blame = false;
            }
            (Some(id), None, found)
        }
        RowId::Invalid { shown, reason } => (None, shown, vec![reason]),
    };
    found.extend(problems(rule, header, record, text.is_some()));
    match (id, text) {
        (Some(id), Some(text)) if found.is_empty() => Ok((id, text)),
        (id, _) => {
            let external_id = id.map(|id| id.as_str().to_string()).or(shown);
            Err(BadRecord {
                location: layout.location(line),
                blame: id_to_blame.then(|| {
                    Box::new(Blame {
                        field: layout.id_field.clone(),
                        value: external_id.clone().unwrap_or_default(),
                    })
                }),
                external_id,
                reason: found.join("; "),
                raw: raw_text(record, rule, delimiter),
            })
        }
    }
}

/// The row's cells by column name (the first column of a repeated name wins), trimmed.
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
    text: RowText<'_>,
    line: u64,
) -> Option<DateTime<Utc>> {
    header.updated_at.and_then(|i| {
        let raw = text.cell(i)?.trim();
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
    pub(in crate::source) fn into_record(
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
        row: Row<'_>,
        seen: &mut SeenIds,
    ) -> DigestedItem {
        let (id, text) = match check(layout, header, row, seen) {
            Ok(usable) => usable,
            Err(bad) => return DigestedItem::Item(SourceItem::Bad(bad)),
        };
        // Trimmed as `fields_from` trims.
        let digest = self.fingerprint.digest(|i| {
            self.columns[i]
                .and_then(|c| text.cell(c))
                .map(str::trim)
                .unwrap_or_default()
        });
        DigestedItem::Row(DigestedRow {
            external_id: id,
            digest,
            updated_at: row_updated_at(layout, header, text, row.line),
            raw: self.keep(text, row.line),
        })
    }

    /// Copies a usable row's cells into the batch's store.
    fn keep(&mut self, text: RowText<'_>, line: u64) -> RawRow {
        let store = &mut self.store;
        let offset = |n: usize| u32::try_from(n).expect("a batch's text stays under 4 GiB");
        let start = offset(store.text.len());
        let first = offset(store.ends.len());
        store.text.push_str(text.as_str());
        for i in 0..text.len() {
            store.ends.push(start + offset(text.end(i)));
        }
        RawRow {
            store: Arc::clone(&self.sealed),
            cells: first..offset(store.ends.len()),
            start,
            line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            names: vec!["id".into(), "first".into(), "last".into()],
            index: HashMap::new(),
            id: 0,
            updated_at: None,
        }
    }

    #[test]
    fn a_character_split_across_two_cells_is_bad_utf8_in_both() {
        // "é" is C3 A9: the row's bytes are valid UTF-8 as a whole, each cell is not.
        let split = ByteRecord::from(vec![&b"id1"[..], &b"Ad\xc3"[..], &b"\xa9"[..]]);
        let mut cells = Cells::new(FileEncoding::Utf8, false);
        let (text, rule) = cells.text(&split, 2);
        assert!(text.is_none());
        let found = problems(rule, &header(), &split, false);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("column \"first\""), "{found:?}");
        let fine = ByteRecord::from(vec!["id1", "Adé", "Lovelace"]);
        let (text, rule) = cells.text(&fine, 3);
        assert_eq!(text.map(|t| t.as_str()), Some("id1AdéLovelace"));
        assert!(problems(rule, &header(), &fine, true).is_empty());
    }

    #[test]
    fn windows_1252_rows_decode_only_when_not_ascii() {
        let mut cells = Cells::new(FileEncoding::Windows1252, false);
        let ascii = ByteRecord::from(vec!["c1", "Ada", "Lovelace"]);
        let (text, _) = cells.text(&ascii, 2);
        assert!(matches!(text.unwrap().ends, Ends::Record(_)));
        let accented = ByteRecord::from(vec![&b"c2"[..], &b"Jos\xe9"[..], &b"M\xfcller"[..]]);
        let (text, _) = cells.text(&accented, 3);
        let text = text.unwrap();
        assert_eq!(text.cells().collect::<Vec<_>>(), ["c2", "José", "Müller"]);
    }

    #[test]
    fn auto_decides_at_the_first_non_ascii_row_and_quarantines_what_does_not_fit() {
        let mut cells = Cells::new(FileEncoding::Utf8, true);
        let ascii = ByteRecord::from(vec!["c1", "Ada", "Lovelace"]);
        assert!(cells.text(&ascii, 2).0.is_some());
        assert!(cells.undecided());
        let cp1252 = ByteRecord::from(vec![&b"c2"[..], &b"Jos\xe9"[..], &b"Garc\xeda"[..]]);
        let (text, _) = cells.text(&cp1252, 3);
        assert_eq!(text.unwrap().cell(2), Some("García"));
        assert_eq!(cells.decided_at(), Some((FileEncoding::Windows1252, 3)));
        // A UTF-8 row later in a file taken for Windows-1252 is not read as "JosÃ©".
        let utf8 = ByteRecord::from(vec!["c3", "José", "García"]);
        let (text, rule) = cells.text(&utf8, 4);
        assert!(text.is_none());
        let found = problems(rule, &header(), &utf8, false);
        assert!(
            found[0].contains("read as windows-1252 (line 3"),
            "{found:?}"
        );
    }
}
