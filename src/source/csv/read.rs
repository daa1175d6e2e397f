//! Reading: each row becomes a record, a digested row (a no-change cycle compares digests and
//! builds only the records that changed), or a quarantined row that names its line and why.
//!
//! Cells become text in the file's encoding in `cells.rs`; the rows of a no-change read are
//! kept as parsed, with their digests, in `digest.rs`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;

use ::csv::ByteRecord;
use chrono::{DateTime, Utc};

use super::cells::{RowText, TextRule};
use super::dialect::CellCodec;
use super::digest::DigestPlan;
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
    let (seen_file, mut torn) = close_file(layout, parser, opened)?;
    if !torn && items > 0 && layout.last_ended && !seen_file.ended {
        tracing::warn!(
            event = "csv_last_row_unended",
            path = %layout.name(),
            "the CSV file's last row has no line end, unlike the file's last read: a writer may still be at work; this read counts no record as gone and does not use that row (writers should replace the file by rename)"
        );
        torn = true;
    }
    if torn && out.held.take().is_some() {
        items -= 1;
    }
    out.finish(plan.as_mut())?;
    Ok((
        ReadSummary {
            complete: !torn,
            items,
        },
        seen_file,
    ))
}

/// Ends a read of the file opened as `opened`: its fingerprint and dialect, and whether it
/// changed under the read (torn: logged, and the caller drops the last row, which may be cut).
fn close_file(
    layout: &Layout,
    parser: Parser,
    opened: FileState,
) -> Result<(Seen, bool), SourceError> {
    let dialect = parser.finish_dialect();
    let (len, sha256, file, tail) = parser
        .reader
        .into_inner()
        .finish_with_tail()
        .map_err(|e| layout.io(e))?;
    let ended = super::stream::ends_with_line_end(tail, dialect.encoding);
    let now = file.metadata().ok().map(|m| FileState::of(&m));
    let torn = now != Some(opened) || len != opened.len;
    if torn {
        tracing::warn!(
            event = "csv_changed_during_read",
            path = %layout.name(),
            "the CSV file changed while it was read: this read counts no record as gone and does not use its last row (writers should replace the file by rename)"
        );
    }
    let seen = Seen {
        file: Fingerprint {
            len,
            modified: opened.modified,
            sha256,
        },
        dialect,
        ended,
    };
    Ok((seen, torn))
}

/// One data row and how its cells read.
#[derive(Clone, Copy)]
pub(super) struct Row<'r> {
    pub(super) record: &'r ByteRecord,
    pub(super) text: Option<RowText<'r>>,
    pub(super) rule: TextRule,
    pub(super) line: u64,
    pub(super) delimiter: u8,
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
pub(super) struct SeenIds {
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
pub(super) fn check<'r>(
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
pub(super) fn fields_from<'a>(
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
pub(super) fn row_updated_at(
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
