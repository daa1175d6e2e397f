//! Write-back: changes only the affected cells of the affected rows, copies every other byte as
//! it was, and replaces the file atomically, refusing when it is not the file the last read saw.
//!
//! A changed cell is written in the file's dialect (`Dialect::field`: its encoding, separator,
//! quoting; the row keeps its line ending). A value the encoding cannot hold is left out of the
//! row, which is written with the rest, and reported in `WriteReport::unwritable`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ::csv::ByteRecord;
use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use tempfile::TempPath;

use super::cells::{RowText, TextRule};
use super::dialect::{split_fields, unquote};
use super::read::{RowId, is_blank, problems, row_id};
use super::stream::HashingReader;
use super::*;

/// Passes writes through while hashing and counting every byte, and remembers the last two
/// bytes (whether the file ends with a line ending, in any encoding, before a row is appended).
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
    /// The last two bytes written, the last one last.
    tail: Vec<u8>,
}

impl<W> HashingWriter<W> {
    /// Whether what was written so far ends with a line end in the file's encoding.
    fn ends_with_line_end(&self, dialect: &Dialect) -> bool {
        let tail = match self.tail.as_slice() {
            [a, b] => [*a, *b],
            [b] => [0, *b],
            _ => [0, 0],
        };
        super::stream::ends_with_line_end(tail, dialect.encoding)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let written = &buf[..n];
        self.hasher.update(written);
        self.tail.extend_from_slice(&written[n.saturating_sub(2)..]);
        let extra = self.tail.len().saturating_sub(2);
        self.tail.drain(..extra);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The changes for one id, merged in order.
struct PendingChange {
    id: ExternalId,
    fields: BTreeMap<String, String>,
    updated_at: DateTime<Utc>,
    /// Remove the row instead of editing it.
    delete: bool,
    /// A new row to add after the last one, unless the file has a row with this id already.
    append: bool,
}

/// A row being rewritten: where it starts and its new cells.
struct RowEdit {
    start: u64,
    record: ByteRecord,
    cells: BTreeMap<usize, String>,
    delete: bool,
}

/// A temp file next to the target (`tempfile`: created exclusively, owner-only until the old
/// file's permissions are copied onto it), removed on drop unless it was renamed into place.
fn create_temp(target: &Path) -> io::Result<(TempPath, File)> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "source.csv".into());
    let (file, path) = tempfile::Builder::new()
        .prefix(&format!(".{name}.quo-sync-"))
        .suffix(".tmp")
        .tempfile_in(parent_dir(target))?
        .into_parts();
    Ok((path, file))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The blocking half of `write_back`, `delete_records` and `append_records`: one new file with
/// the changed cells, without the deleted rows, and with the new rows after the last one.
pub(super) fn write_file(
    layout: &Layout,
    last_read: &Mutex<Option<Seen>>,
    changes: &[CrmChange],
    deletes: &[ExternalId],
    appends: &[CrmChange],
) -> Result<WriteReport, SourceError> {
    let mut report = WriteReport::default();
    if changes.is_empty() && deletes.is_empty() && appends.is_empty() {
        return Ok(report);
    }
    // Held for the whole write so two write-backs cannot interleave.
    let mut stored = last_read.lock().unwrap_or_else(PoisonError::into_inner);
    let expected = stored.clone().ok_or_else(|| changed_since_read(layout))?;
    let meta = fs::metadata(&layout.path).map_err(|e| layout.io(e))?;
    if meta.len() != expected.file.len || meta.modified().ok() != expected.file.modified {
        return Err(changed_since_read(layout));
    }
    let (pending, order) = pending_changes(changes, deletes, appends);
    let Rewritten {
        temp,
        mut out,
        handled,
        mut applied,
        failed,
        unwritable,
        header,
    } = rewrite(layout, &expected, &pending)?;
    report.failed = failed;
    report.unwritable = unwritable;
    for key in order.iter().filter(|key| !handled.contains(*key)) {
        if pending[key].append {
            continue;
        }
        report.failed.push((
            pending[key].id.clone(),
            format!("{} has no record with id {key:?}", layout.name()),
        ));
    }
    applied.extend(
        append_rows(
            &mut out,
            &expected.dialect,
            &header,
            &pending,
            (&order, &handled),
            &mut report.failed,
        )
        .map_err(|e| layout.io(e))?,
    );
    if applied.is_empty() {
        return Ok(report); // the temp file is removed on drop
    }
    let ended = out.ends_with_line_end(&expected.dialect);
    let file = replace_file(layout, temp, out, meta.permissions())?;
    *stored = Some(Seen {
        file,
        dialect: expected.dialect,
        ended,
    });
    report.written = applied;
    Ok(report)
}

fn changed_since_read(layout: &Layout) -> SourceError {
    SourceError::ChangedSinceRead {
        path: layout.name(),
    }
}

/// The changes, deletions and new rows by id (several changes to one id merged in order), and
/// the ids in the order they were first named.
fn pending_changes(
    changes: &[CrmChange],
    deletes: &[ExternalId],
    appends: &[CrmChange],
) -> (HashMap<String, PendingChange>, Vec<String>) {
    let mut pending: HashMap<String, PendingChange> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for change in appends {
        let key = change.external_id.as_str().to_string();
        if pending.contains_key(&key) {
            continue;
        }
        order.push(key.clone());
        pending.insert(
            key,
            PendingChange {
                id: change.external_id.clone(),
                fields: change.fields.clone(),
                updated_at: change.updated_at,
                delete: false,
                append: true,
            },
        );
    }
    for change in changes {
        let key = change.external_id.as_str().to_string();
        let entry = pending.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            PendingChange {
                id: change.external_id.clone(),
                fields: BTreeMap::new(),
                updated_at: change.updated_at,
                delete: false,
                append: false,
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
                append: false,
            },
        );
    }
    (pending, order)
}

/// The new file, written beside the old one but not yet in its place, and what went into it.
struct Rewritten {
    temp: TempPath,
    out: HashingWriter<BufWriter<File>>,
    /// Ids whose row was found (the first row with that id).
    handled: HashSet<String>,
    /// Records whose row was rewritten or removed.
    applied: Vec<ExternalId>,
    /// Changes that could not be applied to their row, and why.
    failed: Vec<(ExternalId, String)>,
    /// Values left out of their (otherwise written) row: the file's encoding cannot hold them.
    unwritable: Vec<Unwritable>,
    /// The header row, resolved.
    header: Header,
}

/// Copies the file into a temp file beside it with the pending rows rewritten or left out;
/// refuses when the bytes are not the ones the last read saw.
fn rewrite(
    layout: &Layout,
    expected: &Seen,
    pending: &HashMap<String, PendingChange>,
) -> Result<Rewritten, SourceError> {
    let source = File::open(&layout.path).map_err(|e| layout.io(e))?;
    // Every byte of the file passes through the copier exactly once (copied as is, or read as
    // the span of a changed row), so its hash proves the output was built from the read bytes.
    let mut copier = HashingReader::new(BufReader::new(
        File::open(&layout.path).map_err(|e| layout.io(e))?,
    ));
    let (temp, temp_file) = create_temp(&layout.path).map_err(|e| layout.io(e))?;
    let mut done = Rewritten {
        temp,
        out: HashingWriter {
            inner: BufWriter::new(temp_file),
            hasher: Sha256::new(),
            count: 0,
            tail: Vec::with_capacity(4),
        },
        handled: HashSet::new(),
        applied: Vec::new(),
        failed: Vec::new(),
        unwritable: Vec::new(),
        header: Header {
            names: Vec::new(),
            index: HashMap::new(),
            id: 0,
            updated_at: None,
        },
    };
    let mut parser = Parser::open(layout, source, Some(&expected.dialect))?;
    let dialect = parser.dialect.clone();
    let mut record = ByteRecord::new();
    let mut header: Option<Header> = None;
    let mut copied = 0u64;
    let mut edit: Option<RowEdit> = None;
    while parser
        .reader
        .read_byte_record(&mut record)
        .map_err(|e| layout.io(e))?
    {
        let (line, start) = parser.reader.get_mut().locate(record.position());
        let start = start.ok_or_else(|| {
            layout.io(format!("cannot tell where line {line} starts in the file"))
        })?;
        if let Some(row) = edit.take() {
            apply_edit(
                &mut copier,
                &mut done.out,
                &mut copied,
                row,
                start,
                &dialect,
            )
            .map_err(|e| layout.io(e))?;
        }
        let (text, rule) = parser.cells.text(&record, line);
        let Some(header) = header.as_ref() else {
            header = Some(parse_header(layout, Some((&record, text)))?);
            continue;
        };
        let row = Row {
            record: &record,
            text,
            rule,
            at: (line, start),
        };
        edit = done.plan_row(layout, &dialect, header, row, pending);
    }
    let header = match header {
        Some(header) => header,
        None => parse_header(layout, None)?,
    };
    let (len, sha256, _) = parser
        .reader
        .into_inner()
        .finish()
        .map_err(|e| layout.io(e))?;
    if len != expected.file.len || sha256 != expected.file.sha256 {
        return Err(changed_since_read(layout));
    }
    if let Some(row) = edit.take() {
        apply_edit(&mut copier, &mut done.out, &mut copied, row, len, &dialect)
            .map_err(|e| layout.io(e))?;
    }
    copy_exact(&mut copier, &mut done.out, len - copied).map_err(|e| layout.io(e))?;
    let (copied_len, copied_sha256, _) = copier.finish().map_err(|e| layout.io(e))?;
    if copied_len != expected.file.len || copied_sha256 != expected.file.sha256 {
        return Err(changed_since_read(layout));
    }
    done.header = header;
    Ok(done)
}

/// A data row as write-back sees it: its cells, how they read, and (line, first byte in the
/// file).
struct Row<'r> {
    record: &'r ByteRecord,
    text: Option<RowText<'r>>,
    rule: TextRule,
    at: (u64, u64),
}

impl Rewritten {
    /// The edit a data row needs when a pending change names it; a change that cannot be
    /// applied to it is noted as failed, a value the encoding cannot hold as unwritable.
    fn plan_row(
        &mut self,
        layout: &Layout,
        dialect: &Dialect,
        header: &Header,
        row: Row<'_>,
        pending: &HashMap<String, PendingChange>,
    ) -> Option<RowEdit> {
        let Row {
            record,
            text,
            rule,
            at: (line, start),
        } = row;
        if is_blank(record) {
            return None;
        }
        let RowId::Valid(id) = row_id(layout, header, record, text, rule) else {
            return None;
        };
        let change = pending.get(id.as_str())?;
        if !self.handled.insert(id.as_str().to_string()) {
            return None; // a later duplicate: never a record, never written
        }
        if change.append {
            // The file has this record already (an earlier create of it): not made twice.
            self.applied.push(change.id.clone());
            return None;
        }
        let planned = if change.delete {
            Ok(BTreeMap::new())
        } else {
            plan_edit(
                layout,
                dialect,
                header,
                &row_shape(rule, header, record, text),
                change,
            )
            .map(|(cells, unwritable)| {
                self.unwritable.extend(unwritable);
                cells
            })
        };
        match planned {
            Ok(cells) => {
                self.applied.push(change.id.clone());
                Some(RowEdit {
                    start,
                    record: record.clone(),
                    cells,
                    delete: change.delete,
                })
            }
            Err(reason) => {
                self.failed.push((
                    change.id.clone(),
                    format!("{}: {reason}", layout.location(line)),
                ));
                None
            }
        }
    }
}

/// What is wrong with a row's shape (empty when it can take changes).
fn row_shape(
    rule: TextRule,
    header: &Header,
    record: &ByteRecord,
    text: Option<RowText<'_>>,
) -> Vec<String> {
    problems(rule, header, record, text.is_some())
}

/// Puts the rewritten file in the old one's place (synced, with its permissions) and returns
/// what the file now holds.
fn replace_file(
    layout: &Layout,
    temp: TempPath,
    mut out: HashingWriter<BufWriter<File>>,
    permissions: fs::Permissions,
) -> Result<Fingerprint, SourceError> {
    out.flush().map_err(|e| layout.io(e))?;
    let HashingWriter {
        inner,
        hasher,
        count,
        ..
    } = out;
    let file = inner.into_inner().map_err(|e| layout.io(e.error()))?;
    commit(temp, file, Some(permissions), &layout.path).map_err(|e| layout.io(e))?;
    let modified = fs::metadata(&layout.path).and_then(|m| m.modified()).ok();
    Ok(Fingerprint {
        len: count,
        modified,
        sha256: hasher.finalize().to_vec(),
    })
}

/// Syncs the new file, gives it the old one's permissions, renames it over `target` and syncs
/// the directory: from here on a crash finds the new file whole.
fn commit(
    temp: TempPath,
    file: File,
    permissions: Option<fs::Permissions>,
    target: &Path,
) -> io::Result<()> {
    file.sync_all()?;
    drop(file);
    if let Some(permissions) = permissions {
        fs::set_permissions(&temp, permissions)?;
    }
    temp.persist(target).map_err(|e| e.error)?;
    sync_dir(&parent_dir(target));
    Ok(())
}

/// Replaces `target` (made if missing) with what `fill` writes, by the same crash-safe steps as
/// write-back: a temp file beside it, synced, renamed over it, the directory synced. A crash
/// leaves the old file or the new one, never a mix (activity logging rewrites its file so).
pub(crate) fn replace_with(
    target: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let permissions = fs::metadata(target).ok().map(|m| m.permissions());
    let (temp, file) = create_temp(target)?;
    let mut out = BufWriter::new(file);
    fill(&mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    commit(temp, file, permissions, target)
}

/// Persists the rename; best effort where directories cannot be opened (Windows).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Which cells of the row change (column → new text), and the values left out because the
/// file's encoding cannot hold them; or why the change cannot be applied to the row.
fn plan_edit(
    layout: &Layout,
    dialect: &Dialect,
    header: &Header,
    shape: &[String],
    change: &PendingChange,
) -> Result<(BTreeMap<usize, String>, Vec<Unwritable>), String> {
    if !shape.is_empty() {
        return Err(format!(
            "the row is quarantined ({}); fix it before changes can be written",
            shape.join("; ")
        ));
    }
    let mut cells = BTreeMap::new();
    let mut missing = Vec::new();
    let mut unwritable = Vec::new();
    for (name, value) in &change.fields {
        match header.index.get(name) {
            Some(&i) if i == header.id => {
                return Err(format!(
                    "the id column {:?} cannot be changed by write-back",
                    layout.id_field
                ));
            }
            Some(&i) => match dialect.cells().encode(value) {
                Ok(_) => {
                    cells.insert(i, value.clone());
                }
                Err(character) => unwritable.push(Unwritable {
                    external_id: change.id.clone(),
                    field: name.clone(),
                    reason: Unrepresentable {
                        index: i,
                        character,
                        encoding: dialect.encoding,
                    }
                    .to_string(),
                }),
            },
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
    Ok((cells, unwritable))
}

/// The append step: the new records the file does not hold yet, one row each after the last
/// row, in the file's dialect (encoding, separator, quoting, the header's line ending; a missing
/// final line ending is added first), with the header's columns in order (the id, the record's
/// fields, the last-modified time, empty elsewhere). A record with a value the file's encoding
/// cannot hold is not appended: it is reported as failed, naming the column and the character.
/// Returns the records appended.
fn append_rows<W: Write>(
    out: &mut HashingWriter<W>,
    dialect: &Dialect,
    header: &Header,
    pending: &HashMap<String, PendingChange>,
    (order, handled): (&[String], &HashSet<String>),
    failed: &mut Vec<(ExternalId, String)>,
) -> io::Result<Vec<ExternalId>> {
    let new: Vec<&PendingChange> = order
        .iter()
        .filter(|key| !handled.contains(*key))
        .filter_map(|key| pending.get(key))
        .filter(|change| change.append)
        .collect();
    let mut appended = Vec::with_capacity(new.len());
    let mut ended = out.ends_with_line_end(dialect);
    for change in new {
        let values = row_values(header, change);
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        match dialect.render_row(&values) {
            Ok(row) => {
                if !ended {
                    out.write_all(&dialect.to_file(dialect.line_ending.bytes().to_vec()))?;
                    ended = true;
                }
                out.write_all(&row)?;
                appended.push(change.id.clone());
            }
            Err(e) => failed.push((
                change.id.clone(),
                format!(
                    "column {:?}: {e}; the row was not added",
                    header.names.get(e.index).map(String::as_str).unwrap_or("")
                ),
            )),
        }
    }
    Ok(appended)
}

/// A new row's values: every header column in order.
fn row_values(header: &Header, change: &PendingChange) -> Vec<String> {
    header
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            if i == header.id {
                change.id.as_str().to_string()
            } else if Some(i) == header.updated_at {
                change.updated_at.to_rfc3339_opts(SecondsFormat::Secs, true)
            } else {
                change.fields.get(name).cloned().unwrap_or_default()
            }
        })
        .collect()
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
    dialect: &Dialect,
) -> io::Result<()> {
    copy_exact(copier, out, row.start - *copied)?;
    let mut span = vec![0u8; (end - row.start) as usize];
    copier.read_exact(&mut span)?;
    *copied = end;
    if row.delete {
        return Ok(());
    }
    let stream = dialect.to_stream(&span);
    let rewritten = rewrite_row(&stream, &row.record, &row.cells, dialect).map_err(|c| {
        io::Error::other(format!(
            "{c:?} cannot be written in {}",
            dialect.encoding.label()
        ))
    })?;
    out.write_all(&dialect.to_file(rewritten))
}

/// Rewrites one row's bytes in the parser's stream (`span`: the row, its line ending and any
/// blank lines after it), keeping every untouched cell's bytes and the line ending as they
/// were. `Err` is a character the encoding lacks (checked before, so it does not happen).
fn rewrite_row(
    span: &[u8],
    record: &ByteRecord,
    cells: &BTreeMap<usize, String>,
    dialect: &Dialect,
) -> Result<Vec<u8>, char> {
    let is_eol = |b: &u8| *b == b'\r' || *b == b'\n';
    let lead = span.iter().take_while(|b| is_eol(b)).count();
    let trail = span[lead..].iter().rev().take_while(|b| is_eol(b)).count();
    let content = &span[lead..span.len() - trail];

    let (quote, escape) = (dialect.quote, dialect.escape);
    let raw_fields = split_fields(content, dialect.delimiter, quote, escape);
    let faithful = raw_fields.len() == record.len()
        && raw_fields
            .iter()
            .zip(record.iter())
            .all(|(raw, parsed)| unquote(raw, quote, escape) == parsed);

    let mut out = Vec::with_capacity(span.len() + 16);
    out.extend_from_slice(&span[..lead]);
    for i in 0..record.len() {
        if i > 0 {
            out.push(dialect.delimiter);
        }
        match (cells.get(&i), faithful) {
            (Some(value), true) => {
                out.extend(dialect.field(value, raw_fields[i].first() == Some(&quote))?)
            }
            (Some(value), false) => out.extend(dialect.field(value, false)?),
            (None, true) => out.extend_from_slice(raw_fields[i]),
            (None, false) => out.extend(dialect.quote_field(&record[i], false)),
        }
    }
    out.extend_from_slice(&span[span.len() - trail..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::dialect::configured as dialect;
    use super::*;

    fn record(fields: &[&str]) -> ByteRecord {
        ByteRecord::from(fields.to_vec())
    }

    fn comma() -> Dialect {
        dialect(FileEncoding::Utf8, b',')
    }

    #[test]
    fn rewrite_keeps_untouched_cells_and_line_ending() {
        let span = b"c1,\"Ada, Countess\",ada@x.example,\"\"\"q\"\"\"\r\n\r\n";
        let rec = record(&["c1", "Ada, Countess", "ada@x.example", "\"q\""]);
        let cells = BTreeMap::from([(2, "new@x.example".to_string())]);
        assert_eq!(
            rewrite_row(span, &rec, &cells, &comma()).unwrap(),
            b"c1,\"Ada, Countess\",new@x.example,\"\"\"q\"\"\"\r\n\r\n".to_vec()
        );
        let cells = BTreeMap::from([(1, "Ada".to_string()), (3, "a,b".to_string())]);
        assert_eq!(
            rewrite_row(span, &rec, &cells, &comma()).unwrap(),
            b"c1,\"Ada\",ada@x.example,\"a,b\"\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn rewrite_falls_back_when_quoting_is_unusual() {
        // csv reads `"ab"c` as `abc`; the raw split cannot reproduce it, so the row is re-encoded.
        let span = b"c1,\"ab\"c,x\n";
        let rec = record(&["c1", "abc", "x"]);
        let cells = BTreeMap::from([(2, "y".to_string())]);
        assert_eq!(
            rewrite_row(span, &rec, &cells, &comma()).unwrap(),
            b"c1,abc,y\n".to_vec()
        );
    }

    #[test]
    fn rewrite_writes_in_the_rows_dialect() {
        // Semicolons, Windows-1252, CRLF: the untouched cells keep their bytes (é is E9).
        let semi = dialect(FileEncoding::Windows1252, b';');
        let span = b"c1;Jos\xe9;\"a;b\";old\r\n";
        let rec = ByteRecord::from(vec![&b"c1"[..], b"Jos\xe9", b"a;b", b"old"]);
        let cells = BTreeMap::from([(3, "Müller; Sohn".to_string())]);
        assert_eq!(
            rewrite_row(span, &rec, &cells, &semi).unwrap(),
            b"c1;Jos\xe9;\"a;b\";\"M\xfcller; Sohn\"\r\n".to_vec()
        );
        let cells = BTreeMap::from([(3, "😀".to_string())]);
        assert_eq!(rewrite_row(span, &rec, &cells, &semi), Err('😀'));
        // Backslash escapes: the quoted cell is split where the parser splits it.
        let escaped = Dialect {
            escape: Some(b'\\'),
            ..comma()
        };
        let span = b"c1,\"say \\\"hi\\\", ok\",x\n";
        let rec = record(&["c1", "say \"hi\", ok", "x"]);
        let cells = BTreeMap::from([(2, "y".to_string())]);
        assert_eq!(
            rewrite_row(span, &rec, &cells, &escaped).unwrap(),
            b"c1,\"say \\\"hi\\\", ok\",y\n".to_vec()
        );
    }
}
