//! Cells as text, in the file's encoding: a UTF-8 row is validated in place; a Windows-1252 or
//! Latin-1 row that is all ASCII is used as it is, and only a row with a byte above 127 is
//! decoded (into a scratch buffer), so the fingerprint of an ASCII cell is taken on its raw
//! bytes whatever the encoding. Apart from the reading of rows (`read.rs`) because the encoding
//! is decided here, once per file, and the writer asks the same questions of a row.

use ::csv::ByteRecord;

use super::dialect::{CellCodec, FileEncoding, judge};

/// A row's cells as text: one string holding every cell end to end, and where each ends.
#[derive(Clone, Copy)]
pub(super) struct RowText<'a> {
    text: &'a str,
    ends: Ends<'a>,
}

#[derive(Clone, Copy)]
pub(super) enum Ends<'a> {
    /// The record's own cells (the text is its bytes).
    Record(&'a ByteRecord),
    /// Decoded cells.
    Decoded(&'a [usize]),
}

impl<'a> RowText<'a> {
    pub(super) fn of_record(text: &'a str, record: &'a ByteRecord) -> Self {
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
    pub(super) fn end(&self, i: usize) -> usize {
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
    pub(super) fn as_str(&self) -> &'a str {
        self.text
    }
}

/// The row's cells as one validated UTF-8 text, when every cell is valid UTF-8: one validation
/// per row, after which a cell is a boundary check, not a rescan.
pub(super) fn utf8_text(record: &ByteRecord) -> Option<&str> {
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
    pub(super) codec: CellCodec,
    pub(super) encoding: FileEncoding,
    /// Under `auto` without a byte order mark: the encoding the rows decided, and the line.
    pub(super) decided: Option<(FileEncoding, u64)>,
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
                        target: "quo_sync::source::csv::read",
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::Header;
    use super::super::read::problems;
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
