//! Write-back: changes only the affected cells of the affected rows, copies every other byte as
//! it was, and replaces the file atomically, refusing when it is not the file the last read saw.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ::csv::ByteRecord;
use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use tempfile::TempPath;

use super::read::{RowId, is_blank, row_id, row_text, shape_problems};
use super::*;

/// Passes writes through while hashing and counting every byte, and remembers the file's first
/// line ending and last byte (an appended row follows the file's own style).
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
    /// `\r\n` or `\n`, once a line has ended.
    eol: Option<&'static [u8]>,
    last: Option<u8>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let written = &buf[..n];
        self.hasher.update(written);
        if self.eol.is_none()
            && let Some(at) = memchr::memchr(b'\n', written)
        {
            let before = if at > 0 {
                Some(written[at - 1])
            } else {
                self.last
            };
            self.eol = Some(if before == Some(b'\r') {
                b"\r\n"
            } else {
                b"\n"
            });
        }
        if let Some(&byte) = written.last() {
            self.last = Some(byte);
        }
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
    last_read: &Mutex<Option<Fingerprint>>,
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
    if meta.len() != expected.len || meta.modified().ok() != expected.modified {
        return Err(changed_since_read(layout));
    }
    let (pending, order) = pending_changes(changes, deletes, appends);
    let Rewritten {
        temp,
        mut out,
        handled,
        mut applied,
        failed,
        header,
    } = rewrite(layout, &expected, &pending)?;
    report.failed = failed;
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
        append_rows(&mut out, &header, &pending, &order, &handled).map_err(|e| layout.io(e))?,
    );
    if applied.is_empty() {
        return Ok(report); // the temp file is removed on drop
    }
    *stored = Some(replace_file(layout, temp, out, meta.permissions())?);
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
    /// The header row, resolved.
    header: Header,
}

/// Copies the file into a temp file beside it with the pending rows rewritten or left out;
/// refuses when the bytes are not the ones the last read saw.
fn rewrite(
    layout: &Layout,
    expected: &Fingerprint,
    pending: &HashMap<String, PendingChange>,
) -> Result<Rewritten, SourceError> {
    let source = File::open(&layout.path).map_err(|e| layout.io(e))?;
    // Every byte of the file passes through the copier exactly once (copied as is, or read as
    // the span of a changed row), so its hash proves the output was built from the read bytes.
    let mut copier = HashingReader::plain(BufReader::new(
        File::open(&layout.path).map_err(|e| layout.io(e))?,
    ));
    let (temp, temp_file) = create_temp(&layout.path).map_err(|e| layout.io(e))?;
    let mut done = Rewritten {
        temp,
        out: HashingWriter {
            inner: BufWriter::new(temp_file),
            hasher: Sha256::new(),
            count: 0,
            eol: None,
            last: None,
        },
        handled: HashSet::new(),
        applied: Vec::new(),
        failed: Vec::new(),
        header: Header {
            names: Vec::new(),
            index: HashMap::new(),
            id: 0,
            updated_at: None,
        },
    };
    let mut reader = csv_reader(HashingReader::new(source));
    let mut record = ByteRecord::new();
    let mut header: Option<Header> = None;
    let mut copied = 0u64;
    let mut edit: Option<RowEdit> = None;
    while reader
        .read_byte_record(&mut record)
        .map_err(|e| layout.io(e))?
    {
        let line = reader.get_mut().start_line(record.position());
        let start = record.position().map_or(0, |p| p.byte());
        if let Some(row) = edit.take() {
            apply_edit(&mut copier, &mut done.out, &mut copied, row, start)
                .map_err(|e| layout.io(e))?;
        }
        let Some(header) = header.as_ref() else {
            header = Some(parse_header(layout, Some(&record))?);
            continue;
        };
        edit = done.plan_row(layout, header, &record, pending, (line, start));
    }
    let header = match header {
        Some(header) => header,
        None => parse_header(layout, None)?,
    };
    let (len, sha256) = reader.into_inner().finish().map_err(|e| layout.io(e))?;
    if len != expected.len || sha256 != expected.sha256 {
        return Err(changed_since_read(layout));
    }
    if let Some(row) = edit.take() {
        apply_edit(&mut copier, &mut done.out, &mut copied, row, len).map_err(|e| layout.io(e))?;
    }
    copy_exact(&mut copier, &mut done.out, len - copied).map_err(|e| layout.io(e))?;
    let (copied_len, copied_sha256) = copier.finish().map_err(|e| layout.io(e))?;
    if copied_len != expected.len || copied_sha256 != expected.sha256 {
        return Err(changed_since_read(layout));
    }
    done.header = header;
    Ok(done)
}

impl Rewritten {
    /// The edit a data row needs when a pending change names it (`at`: its line and first
    /// byte); a change that cannot be applied to it is noted as failed.
    fn plan_row(
        &mut self,
        layout: &Layout,
        header: &Header,
        record: &ByteRecord,
        pending: &HashMap<String, PendingChange>,
        (line, start): (u64, u64),
    ) -> Option<RowEdit> {
        if is_blank(record) {
            return None;
        }
        let RowId::Valid(id) = row_id(layout, header, record) else {
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
            plan_edit(layout, header, record, change)
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
    file.sync_all().map_err(|e| layout.io(e))?;
    drop(file);
    fs::set_permissions(&temp, permissions).map_err(|e| layout.io(e))?;
    temp.persist(&layout.path).map_err(|e| layout.io(e.error))?;
    sync_dir(&parent_dir(&layout.path));
    let modified = fs::metadata(&layout.path).and_then(|m| m.modified()).ok();
    Ok(Fingerprint {
        len: count,
        modified,
        sha256: hasher.finalize().to_vec(),
    })
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

/// The append step: the new records the file does not hold yet, one row each after the last
/// row, in the file's line ending (a missing final line ending is added first), with the
/// header's columns in order (the id, the record's fields, the last-modified time, empty
/// elsewhere). Returns the records appended.
fn append_rows<W: Write>(
    out: &mut HashingWriter<W>,
    header: &Header,
    pending: &HashMap<String, PendingChange>,
    order: &[String],
    handled: &HashSet<String>,
) -> io::Result<Vec<ExternalId>> {
    let new: Vec<&PendingChange> = order
        .iter()
        .filter(|key| !handled.contains(*key))
        .filter_map(|key| pending.get(key))
        .filter(|change| change.append)
        .collect();
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let eol = out.eol.unwrap_or(b"\n");
    if out.last.is_some_and(|b| b != b'\n') {
        out.write_all(eol)?;
    }
    let mut appended = Vec::with_capacity(new.len());
    for change in new {
        out.write_all(&encode_row(header, change))?;
        out.write_all(eol)?;
        appended.push(change.id.clone());
    }
    Ok(appended)
}

/// A new row's bytes: every header column in order.
fn encode_row(header: &Header, change: &PendingChange) -> Vec<u8> {
    let mut row = Vec::new();
    for (i, name) in header.names.iter().enumerate() {
        if i > 0 {
            row.push(b',');
        }
        let value = if i == header.id {
            change.id.as_str().to_string()
        } else if Some(i) == header.updated_at {
            change.updated_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        } else {
            change.fields.get(name).cloned().unwrap_or_default()
        };
        row.extend(encode(&value, false));
    }
    row
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
