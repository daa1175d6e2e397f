//! The activity CSV file (`activity.csv.path`): one row per activity under the stable columns
//! ([`COLUMNS`], plus `text` with full content), new activities appended, an enrichment written
//! into its own row by the contacts write-back's crash-safe replace
//! (`source::csv::replace_with`), so the file never holds two rows for one activity.
//!
//! Appends are one write and one `fsync` per batch. A crash in the middle of one leaves a torn
//! last row: before every append and lookup the tail is checked (the file ends with a newline,
//! the last row has the header's width and its quotes balance) and a torn row is cut off; the
//! ledger still says `writing` for those activities, and their lookup finds them missing, so
//! they are appended again, once. Columns the file has beyond ours are kept (empty in new rows,
//! untouched in rewritten ones), so people can add their own.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ::csv::{ByteRecord, ReaderBuilder, Terminator, WriterBuilder};

use super::{Found, Outcome, Outgoing, SinkError};
use crate::source::csv::replace_with;

/// The stable columns, in this order (an interface: added to, never renamed).
pub const COLUMNS: [&str; 12] = [
    "activity_id",
    "record_id",
    "kind",
    "direction",
    "status",
    "from",
    "to",
    "started_at",
    "duration_s",
    "user_email",
    "summary",
    "quo_url",
];

/// The column added with `activity.content = "full"`: the message text, else the call's
/// transcript, else the voicemail's.
pub const TEXT_COLUMN: &str = "text";

#[derive(Debug)]
struct FileState {
    header: Vec<String>,
    crlf: bool,
    /// Activity ids with a row in the file.
    known: HashSet<String>,
}

/// The activity file.
#[derive(Debug, Clone)]
pub struct CsvSink {
    path: PathBuf,
    full: bool,
    state: Arc<Mutex<FileState>>,
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> SinkError {
    SinkError::Io(format!("{}: {e}", path.display()))
}

fn reader(bytes: &[u8]) -> ::csv::Reader<&[u8]> {
    ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes)
}

/// A row's cells in the file's column order.
fn cells(
    header: &[String],
    doc: &crate::activity::model::ActivityDocument,
    full: bool,
) -> Vec<String> {
    header
        .iter()
        .map(|column| {
            if COLUMNS.contains(&column.as_str()) {
                doc.text(column)
            } else if column == TEXT_COLUMN && full {
                ["text", "transcript", "voicemail_transcript"]
                    .iter()
                    .map(|key| doc.text(key))
                    .find(|t| !t.is_empty())
                    .unwrap_or_default()
            } else {
                String::new()
            }
        })
        .collect()
}

fn encode(rows: &[Vec<String>], crlf: bool) -> io::Result<Vec<u8>> {
    let mut out = WriterBuilder::new()
        .terminator(if crlf {
            Terminator::CRLF
        } else {
            Terminator::Any(b'\n')
        })
        .from_writer(Vec::new());
    for row in rows {
        out.write_record(row)?;
    }
    out.into_inner()
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Where the file's last complete row ends: the whole length, or the start of a torn last row.
fn sound_length(bytes: &[u8], width: usize) -> u64 {
    let mut last_start = 0u64;
    let mut last_width = width;
    let mut rows = 0usize;
    let mut record = ByteRecord::new();
    let mut r = reader(bytes);
    while r.read_byte_record(&mut record).unwrap_or(false) {
        last_start = record.position().map_or(0, |p| p.byte());
        last_width = record.len();
        rows += 1;
    }
    if rows <= 1 {
        return bytes.len() as u64;
    }
    let tail = &bytes[last_start as usize..];
    let quotes = tail.iter().filter(|b| **b == b'"').count();
    let whole = bytes.ends_with(b"\n") && last_width == width && quotes % 2 == 0;
    if whole {
        bytes.len() as u64
    } else {
        last_start
    }
}

impl CsvSink {
    /// Opens (or creates, with its header) the activity file; checks it has our columns.
    pub fn open(path: &Path, full: bool) -> Result<Self, SinkError> {
        let mut wanted: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
        if full {
            wanted.push(TEXT_COLUMN.to_string());
        }
        if !path.exists() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(|e| io_error(path, e))?;
            }
            let header =
                encode(std::slice::from_ref(&wanted), false).map_err(|e| io_error(path, e))?;
            replace_with(path, |out| out.write_all(&header)).map_err(|e| io_error(path, e))?;
        }
        let bytes = fs::read(path).map_err(|e| io_error(path, e))?;
        let mut first = ByteRecord::new();
        if !reader(&bytes)
            .read_byte_record(&mut first)
            .map_err(|e| io_error(path, e))?
        {
            return Err(SinkError::Config(format!(
                "{}: the file is empty; delete it or give it a header",
                path.display()
            )));
        }
        let header: Vec<String> = first
            .iter()
            .map(|c| {
                String::from_utf8_lossy(c)
                    .trim_start_matches('\u{feff}')
                    .trim()
                    .to_string()
            })
            .collect();
        let missing: Vec<&String> = wanted.iter().filter(|w| !header.contains(w)).collect();
        if !missing.is_empty() {
            return Err(SinkError::Config(format!(
                "{}: the header has no column {} (activity files need {})",
                path.display(),
                missing
                    .iter()
                    .map(|m| format!("{m:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                wanted.join(", ")
            )));
        }
        let crlf = bytes
            .iter()
            .position(|b| *b == b'\n')
            .is_some_and(|at| at > 0 && bytes[at - 1] == b'\r');
        let sink = Self {
            path: path.to_path_buf(),
            full,
            state: Arc::new(Mutex::new(FileState {
                header,
                crlf,
                known: HashSet::new(),
            })),
        };
        let known = sink.ids_in_file().map_err(|e| io_error(path, e))?;
        sink.lock().known = known;
        Ok(sink)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Cuts a torn last row off (left by a crash in the middle of an append).
    fn repair_tail(&self, width: usize) -> io::Result<()> {
        let bytes = fs::read(&self.path)?;
        let sound = sound_length(&bytes, width);
        if sound < bytes.len() as u64 {
            tracing::warn!(event = "activity_csv_torn_row", file = %self.path.display(), cut_bytes = bytes.len() as u64 - sound, "a torn last row (an interrupted append) was cut off; its activity is written again");
            let file = OpenOptions::new().write(true).open(&self.path)?;
            file.set_len(sound)?;
            file.sync_all()?;
        }
        Ok(())
    }

    /// Activity ids with a row, read from the file (after cutting a torn tail).
    fn ids_in_file(&self) -> io::Result<HashSet<String>> {
        let (width, id_at) = {
            let state = self.lock();
            (
                state.header.len(),
                state
                    .header
                    .iter()
                    .position(|h| h == "activity_id")
                    .unwrap_or(0),
            )
        };
        self.repair_tail(width)?;
        let bytes = fs::read(&self.path)?;
        let mut ids = HashSet::new();
        let mut r = reader(&bytes);
        let mut record = ByteRecord::new();
        let mut first = true;
        while r.read_byte_record(&mut record).map_err(io::Error::other)? {
            if std::mem::take(&mut first) {
                continue;
            }
            if let Some(id) = record.get(id_at).filter(|id| !id.is_empty()) {
                ids.insert(String::from_utf8_lossy(id).into_owned());
            }
        }
        Ok(ids)
    }

    /// Appends new rows. An activity the file already holds (a create sent again after an
    /// interruption) is never appended twice: its row is rewritten with what the create carries.
    pub fn create(&self, items: &[Outgoing]) -> Vec<Outcome> {
        let held: Vec<Outgoing> = {
            let state = self.lock();
            items
                .iter()
                .filter(|i| state.known.contains(&i.activity_id))
                .cloned()
                .collect()
        };
        if held.is_empty() {
            return self.append(items);
        }
        let mut rewritten: HashMap<String, Outcome> = held
            .iter()
            .map(|i| i.activity_id.clone())
            .zip(self.update(&held))
            .collect();
        let fresh: Vec<Outgoing> = items
            .iter()
            .filter(|i| !rewritten.contains_key(&i.activity_id))
            .cloned()
            .collect();
        let mut appended = self.append(&fresh).into_iter();
        items
            .iter()
            .map(|i| match rewritten.remove(&i.activity_id) {
                Some(outcome) => outcome,
                None => appended
                    .next()
                    .unwrap_or_else(|| Outcome::Refused("not appended".into())),
            })
            .collect()
    }

    /// Appends rows for `items` (those already known are skipped, and reported written).
    fn append(&self, items: &[Outgoing]) -> Vec<Outcome> {
        let mut state = self.lock();
        let width = state.header.len();
        let fresh: Vec<&Outgoing> = items
            .iter()
            .filter(|i| !state.known.contains(&i.activity_id))
            .collect();
        let rows: Vec<Vec<String>> = fresh
            .iter()
            .map(|i| cells(&state.header, &i.doc, self.full))
            .collect();
        let appended = (|| -> io::Result<()> {
            if rows.is_empty() {
                return Ok(());
            }
            self.repair_tail(width)?;
            let bytes = encode(&rows, state.crlf)?;
            let mut file = OpenOptions::new().read(true).write(true).open(&self.path)?;
            let end = file.seek(SeekFrom::End(0))?;
            if end > 0 {
                let mut last = [0u8; 1];
                file.seek(SeekFrom::End(-1))?;
                file.read_exact(&mut last)?;
                if last[0] != b'\n' {
                    file.write_all(if state.crlf { b"\r\n" } else { b"\n" })?;
                }
            }
            file.write_all(&bytes)?;
            file.sync_data()
        })();
        match appended {
            Ok(()) => {
                for item in &fresh {
                    state.known.insert(item.activity_id.clone());
                }
                items
                    .iter()
                    .map(|i| Outcome::Written {
                        crm_id: i.activity_id.clone(),
                    })
                    .collect()
            }
            Err(e) => items
                .iter()
                .map(|i| {
                    if state.known.contains(&i.activity_id) {
                        Outcome::Written {
                            crm_id: i.activity_id.clone(),
                        }
                    } else {
                        Outcome::Ambiguous(format!("appending to {}: {e}", self.path.display()))
                    }
                })
                .collect(),
        }
    }

    /// Rewrites the rows of `items` in place, all in one crash-safe replace.
    pub fn update(&self, items: &[Outgoing]) -> Vec<Outcome> {
        let mut state = self.lock();
        let id_at = state
            .header
            .iter()
            .position(|h| h == "activity_id")
            .unwrap_or(0);
        let wanted: HashMap<&str, &Outgoing> =
            items.iter().map(|i| (i.activity_id.as_str(), i)).collect();
        let mut found: HashSet<String> = HashSet::new();
        let result = (|| -> io::Result<()> {
            let bytes = fs::read(&self.path)?;
            let mut spans: Vec<(u64, Option<Vec<String>>)> = Vec::new();
            let mut r = reader(&bytes);
            let mut record = ByteRecord::new();
            let mut first = true;
            while r.read_byte_record(&mut record).map_err(io::Error::other)? {
                let start = record.position().map_or(0, |p| p.byte());
                if std::mem::take(&mut first) {
                    spans.push((start, None));
                    continue;
                }
                let id = record
                    .get(id_at)
                    .map(|id| String::from_utf8_lossy(id).into_owned())
                    .unwrap_or_default();
                let new = match wanted.get(id.as_str()) {
                    Some(item) if found.insert(id.clone()) => {
                        let mut row = cells(&state.header, &item.doc, self.full);
                        // Columns that are not ours keep what people put there.
                        for (i, column) in state.header.iter().enumerate() {
                            let ours = COLUMNS.contains(&column.as_str())
                                || (column == TEXT_COLUMN && self.full);
                            if !ours {
                                row[i] = record
                                    .get(i)
                                    .map(|c| String::from_utf8_lossy(c).into_owned())
                                    .unwrap_or_default();
                            }
                        }
                        Some(row)
                    }
                    _ => None,
                };
                spans.push((start, new));
            }
            if found.is_empty() {
                return Ok(());
            }
            replace_with(&self.path, |out| {
                for (n, (start, new)) in spans.iter().enumerate() {
                    let end = spans.get(n + 1).map_or(bytes.len() as u64, |(s, _)| *s);
                    match new {
                        None => out.write_all(&bytes[*start as usize..end as usize])?,
                        Some(row) => {
                            out.write_all(&encode(std::slice::from_ref(row), state.crlf)?)?
                        }
                    }
                }
                Ok(())
            })
        })();
        if result.is_ok() {
            // A row gone from the file (a person deleted it) is made again by a create.
            state
                .known
                .retain(|id| !wanted.contains_key(id.as_str()) || found.contains(id));
        }
        items
            .iter()
            .map(|i| match &result {
                Err(e) => Outcome::Refused(format!("rewriting {}: {e}", self.path.display())),
                Ok(()) if found.contains(&i.activity_id) => Outcome::Written {
                    crm_id: i.activity_id.clone(),
                },
                Ok(()) => Outcome::Missing,
            })
            .collect()
    }

    /// Whether the file has a row for `activity_id` (read from the file, not remembered).
    pub fn lookup(&self, activity_id: &str) -> Found {
        match self.ids_in_file() {
            Ok(ids) => {
                let present = ids.contains(activity_id);
                let mut state = self.lock();
                if present {
                    state.known.insert(activity_id.to_string());
                    Found::Yes(activity_id.to_string())
                } else {
                    state.known.remove(activity_id);
                    Found::No
                }
            }
            Err(e) => Found::Unknown(format!("reading {}: {e}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(summary: &str) -> Outgoing {
        Outgoing {
            activity_id: "AC1".into(),
            crm_id: None,
            doc: crate::activity::model::ActivityDocument(serde_json::json!({
                "activity_id": "AC1", "record_id": "r-1", "kind": "call", "summary": summary,
            })),
        }
    }

    #[test]
    fn a_create_sent_again_rewrites_the_row_it_made_instead_of_adding_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("activity.csv");
        let sink = CsvSink::open(&path, false).unwrap();
        let written = |outcomes: Vec<Outcome>| {
            outcomes
                == vec![Outcome::Written {
                    crm_id: "AC1".into(),
                }]
        };
        assert!(written(sink.create(&[outgoing("")])));
        assert!(written(sink.create(&[outgoing("Renewal agreed")])));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("AC1").count(), 1, "one row: {text}");
        assert!(
            text.contains("Renewal agreed"),
            "the later create's content: {text}"
        );
    }

    #[test]
    fn torn_rows_are_found_by_newline_width_and_quotes() {
        let header = "a,b,c\n";
        let whole = format!("{header}1,2,3\n4,\"x\ny\",6\n");
        assert_eq!(sound_length(whole.as_bytes(), 3), whole.len() as u64);
        let no_newline = format!("{header}1,2,3\n4,5,6");
        assert_eq!(
            sound_length(no_newline.as_bytes(), 3),
            (header.len() + 6) as u64
        );
        let short = format!("{header}1,2,3\n4,5\n");
        assert_eq!(sound_length(short.as_bytes(), 3), (header.len() + 6) as u64);
        let open_quote = format!("{header}1,2,3\n4,5,\"partial\n");
        assert_eq!(
            sound_length(open_quote.as_bytes(), 3),
            (header.len() + 6) as u64
        );
        assert_eq!(sound_length(header.as_bytes(), 3), header.len() as u64);
    }
}
