//! Reading: each row becomes a record, a digested row (a no-change cycle compares digests and
//! builds only the records that changed), or a quarantined row that names its line and why.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::{Arc, OnceLock};

use ::csv::ByteRecord;
use chrono::{DateTime, Utc};

use super::*;
use crate::domain::ExternalIdError;

/// A line holding nothing but spaces: not a row.
pub(super) fn is_blank(record: &ByteRecord) -> bool {
    record.len() == 1 && record[0].iter().all(u8::is_ascii_whitespace)
}

/// The readable id of a row, or why it has none.
pub(super) enum RowId {
    Valid(ExternalId),
    Invalid {
        shown: Option<String>,
        reason: String,
    },
}

pub(super) fn row_id(layout: &Layout, header: &Header, record: &ByteRecord) -> RowId {
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
pub(super) fn row_text(record: &ByteRecord) -> Option<&str> {
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
pub(super) fn shape_problems(
    header: &Header,
    record: &ByteRecord,
    text: Option<&str>,
) -> Vec<String> {
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
pub(super) fn read_file(
    layout: &Layout,
    sink: Sink<'_>,
) -> Result<(ReadSummary, Fingerprint), SourceError> {
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
    // The id column is to blame when the id is missing, unusable or repeated.
    let mut id_to_blame = true;
    let (id, shown, mut problems) = match row_id(layout, header, record) {
        RowId::Valid(id) => {
            let mut problems = Vec::new();
            if let Some(first) = seen.first_use(id.as_str(), line) {
                problems.push(format!(
                    "duplicate id {:?}: already used by line {first}",
                    id.as_str()
                ));
            } else {
                id_to_blame = false;
            }
            (Some(id), None, problems)
        }
        RowId::Invalid { shown, reason } => (None, shown, vec![reason]),
    };
    problems.extend(shape_problems(header, record, text));
    match id {
        Some(id) if problems.is_empty() => Ok(id),
        id => {
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
                reason: problems.join("; "),
                raw: raw_text(record),
            })
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
