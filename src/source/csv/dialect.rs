//! The file's dialect: its encoding, field separator, quote and escape characters and line
//! endings, either configured or found in the file, and the one place that turns text into
//! bytes of that dialect (a changed cell, or a whole new row).
//!
//! Files come as spreadsheets and CRMs export them: Excel in most of Europe saves semicolons in
//! Windows-1252, its "Unicode text" is tab-separated UTF-16 with a byte order mark, older CRMs
//! write Latin-1. Decoding uses `encoding_rs` (Windows-1252 as the WHATWG standard defines it,
//! every byte mapped; Latin-1 byte for code point through `encoding_rs::mem`).
//!
//! Detection, when a key is `auto`:
//! * **Encoding**: a byte order mark decides (UTF-8, UTF-16LE, UTF-16BE). Otherwise the first
//!   row holding a byte above 127 decides: valid UTF-8 → UTF-8, else Windows-1252. A file of
//!   nothing but ASCII reads the same either way and is written back as UTF-8. A later row that
//!   does not fit the decision (bytes that are not UTF-8 in a UTF-8 file; a row that is UTF-8 in
//!   a file taken for Windows-1252) is quarantined, never decoded into the wrong characters.
//! * **Separator**: of `,` `;` tab `|`, the one that splits the header line into names that
//!   include the id column wins; then the one that finds the most configured columns, then the
//!   one that gives the most names.
//!
//! UTF-16 files are transcoded to UTF-8 before the CSV parser sees them (`stream.rs`); the
//! parser's byte stream is therefore UTF-8 for UTF-8 and UTF-16 files, and the file's own bytes
//! for Windows-1252 and Latin-1, whose separators and quotes are the same ASCII bytes.

use std::borrow::Cow;
use std::io::Read;

use ::csv::{ByteRecord, ReaderBuilder};
use encoding_rs::WINDOWS_1252;

use crate::config::{CsvEncoding, DELIMITER_CANDIDATES, show_byte};

/// A text encoding quo-sync reads and writes CSV files in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileEncoding {
    /// UTF-8.
    Utf8,
    /// Windows-1252 (WHATWG).
    Windows1252,
    /// ISO-8859-1.
    Latin1,
    /// UTF-16, little-endian.
    Utf16Le,
    /// UTF-16, big-endian.
    Utf16Be,
}

impl FileEncoding {
    /// The name used in configuration, logs and messages.
    pub fn label(self) -> &'static str {
        match self {
            FileEncoding::Utf8 => "utf-8",
            FileEncoding::Windows1252 => "windows-1252",
            FileEncoding::Latin1 => "latin1",
            FileEncoding::Utf16Le => "utf-16le",
            FileEncoding::Utf16Be => "utf-16be",
        }
    }

    /// The encoding a configured value names; `None` for `auto`.
    pub(super) fn configured(value: CsvEncoding) -> Option<FileEncoding> {
        match value {
            CsvEncoding::Auto => None,
            CsvEncoding::Utf8 => Some(FileEncoding::Utf8),
            CsvEncoding::Windows1252 => Some(FileEncoding::Windows1252),
            CsvEncoding::Latin1 => Some(FileEncoding::Latin1),
            CsvEncoding::Utf16Le => Some(FileEncoding::Utf16Le),
            CsvEncoding::Utf16Be => Some(FileEncoding::Utf16Be),
        }
    }

    /// The byte order mark at the start of `head`, and its length.
    pub(super) fn from_bom(head: &[u8]) -> Option<(FileEncoding, usize)> {
        match head {
            [0xEF, 0xBB, 0xBF, ..] => Some((FileEncoding::Utf8, 3)),
            [0xFF, 0xFE, ..] => Some((FileEncoding::Utf16Le, 2)),
            [0xFE, 0xFF, ..] => Some((FileEncoding::Utf16Be, 2)),
            _ => None,
        }
    }

    /// Whether the parser sees this file through a UTF-16 → UTF-8 transcoder.
    pub(super) fn is_utf16(self) -> bool {
        matches!(self, FileEncoding::Utf16Le | FileEncoding::Utf16Be)
    }

    /// How a cell's bytes in the parser's stream become text.
    pub(super) fn cells(self) -> CellCodec {
        match self {
            FileEncoding::Utf8 | FileEncoding::Utf16Le | FileEncoding::Utf16Be => CellCodec::Utf8,
            FileEncoding::Windows1252 => CellCodec::Windows1252,
            FileEncoding::Latin1 => CellCodec::Latin1,
        }
    }
}

/// What the first row holding a byte above 127 says about a file without a byte order mark:
/// `None` while rows are ASCII.
pub(super) fn judge(row: &[u8]) -> Option<FileEncoding> {
    if row.is_ascii() {
        return None;
    }
    Some(if std::str::from_utf8(row).is_ok() {
        FileEncoding::Utf8
    } else {
        FileEncoding::Windows1252
    })
}

/// How a cell's bytes in the parser's stream are text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CellCodec {
    /// UTF-8 (also UTF-16 files, transcoded before parsing).
    Utf8,
    /// Windows-1252: every byte is a character.
    Windows1252,
    /// ISO-8859-1: every byte is the code point of that number.
    Latin1,
}

impl CellCodec {
    /// A cell's text; for UTF-8, `Err` is the offset of the first byte that is not.
    pub(super) fn decode(self, raw: &[u8]) -> Result<Cow<'_, str>, usize> {
        match self {
            CellCodec::Utf8 => std::str::from_utf8(raw)
                .map(Cow::Borrowed)
                .map_err(|e| e.valid_up_to()),
            CellCodec::Windows1252 => Ok(WINDOWS_1252.decode_without_bom_handling(raw).0),
            CellCodec::Latin1 => Ok(encoding_rs::mem::decode_latin1(raw)),
        }
    }

    /// Appends a cell's text to `out` (bytes that are not UTF-8 in a UTF-8 cell become
    /// U+FFFD; callers decode UTF-8 cells with [`decode`](Self::decode) first).
    pub(super) fn decode_into(self, raw: &[u8], out: &mut String) {
        match self {
            CellCodec::Utf8 => out.push_str(&String::from_utf8_lossy(raw)),
            CellCodec::Windows1252 => {
                let mut decoder = WINDOWS_1252.new_decoder_without_bom_handling();
                let room = decoder
                    .max_utf8_buffer_length_without_replacement(raw.len())
                    .unwrap_or(raw.len() * 3);
                out.reserve(room);
                // Every byte is a character in Windows-1252, and `out` has room for all.
                let _ = decoder.decode_to_string_without_replacement(raw, out, true);
            }
            CellCodec::Latin1 => out.push_str(&encoding_rs::mem::decode_latin1(raw)),
        }
    }

    /// The bytes of `text` in this encoding; `Err` is the first character it cannot hold.
    pub(super) fn encode(self, text: &str) -> Result<Cow<'_, [u8]>, char> {
        match self {
            CellCodec::Utf8 => Ok(Cow::Borrowed(text.as_bytes())),
            CellCodec::Windows1252 => {
                let (bytes, _, unmappable) = WINDOWS_1252.encode(text);
                if !unmappable {
                    return Ok(bytes);
                }
                let lacks = |c: &char| WINDOWS_1252.encode(c.encode_utf8(&mut [0; 4])).2;
                Err(text
                    .chars()
                    .find(lacks)
                    .unwrap_or(char::REPLACEMENT_CHARACTER))
            }
            CellCodec::Latin1 => {
                if encoding_rs::mem::is_str_latin1(text) {
                    Ok(encoding_rs::mem::encode_latin1_lossy(text))
                } else {
                    Err(text
                        .chars()
                        .find(|c| u32::from(*c) > 0xFF)
                        .unwrap_or(char::REPLACEMENT_CHARACTER))
                }
            }
        }
    }
}

/// How the encoding was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingBy {
    /// `source.encoding` names it.
    Configured,
    /// The file starts with its byte order mark.
    ByteOrderMark,
    /// `auto`: this line was the first with a byte above 127.
    Line(u64),
    /// `auto`: every line read is ASCII (read, and written back, as UTF-8).
    AllAscii,
}

/// How the separator was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelimiterBy {
    /// `source.delimiter` names it.
    Configured,
    /// `auto`: it splits the header into the configured columns.
    Header,
    /// `auto`, and no candidate finds the id column in the header: the default, `,`.
    Fallback,
}

/// The line ending the header line uses (new rows get it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    /// `\n`
    Lf,
    /// `\r\n`
    CrLf,
    /// `\r`
    Cr,
}

impl LineEnding {
    /// Its bytes, as the parser's stream holds them.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            LineEnding::Lf => b"\n",
            LineEnding::CrLf => b"\r\n",
            LineEnding::Cr => b"\r",
        }
    }

    /// The first line ending in `head`, LF when there is none.
    pub(super) fn of(head: &[u8]) -> LineEnding {
        match memchr::memchr2(b'\r', b'\n', head) {
            Some(i) if head[i] == b'\r' && head.get(i + 1) == Some(&b'\n') => LineEnding::CrLf,
            Some(i) if head[i] == b'\r' => LineEnding::Cr,
            _ => LineEnding::Lf,
        }
    }
}

/// A CSV file's dialect as the last read found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialect {
    /// The text encoding.
    pub encoding: FileEncoding,
    /// How it was decided.
    pub encoding_by: EncodingBy,
    /// Whether the file starts with a byte order mark (kept by write-back).
    pub bom: bool,
    /// The field separator.
    pub delimiter: u8,
    /// How it was decided.
    pub delimiter_by: DelimiterBy,
    /// The quote character.
    pub quote: u8,
    /// The escape character inside quotes, when quotes are not escaped by doubling.
    pub escape: Option<u8>,
    /// The header line's line ending.
    pub line_ending: LineEnding,
    /// Whether the header quotes every name (new rows then quote every value).
    pub quote_all: bool,
}

/// A value the file's encoding has no bytes for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} (U+{:04X}) cannot be written in {}", .character, u32::from(*.character), .encoding.label())]
pub struct Unrepresentable {
    /// Which value (column position) it is in.
    pub index: usize,
    /// The first character the encoding lacks.
    pub character: char,
    /// The encoding.
    pub encoding: FileEncoding,
}

impl Dialect {
    /// Plain CSV as the sample file is: UTF-8 with no byte order mark, commas, double quotes
    /// escaped by doubling. Its detection is logged at debug level only (the quick start's
    /// screen and logs stay as they were); any other dialect is logged at info.
    pub fn is_plain(&self) -> bool {
        self.encoding == FileEncoding::Utf8
            && !self.bom
            && self.delimiter == b','
            && self.quote == b'"'
            && self.escape.is_none()
    }

    /// One line for logs, `check-config` and `plan`:
    /// `windows-1252 (line 2 is not UTF-8), separator ";" (from the header), CRLF`.
    pub fn describe(&self) -> String {
        let encoding = match self.encoding_by {
            EncodingBy::Configured => "source.encoding".to_string(),
            EncodingBy::ByteOrderMark => "byte order mark".to_string(),
            EncodingBy::Line(line) if self.encoding == FileEncoding::Utf8 => {
                format!("detected: line {line} is the first non-ASCII line, and it is UTF-8")
            }
            EncodingBy::Line(line) => {
                format!("detected: line {line} is the first non-ASCII line, and it is not UTF-8")
            }
            EncodingBy::AllAscii => "detected: every line is ASCII".to_string(),
        };
        let delimiter = match self.delimiter_by {
            DelimiterBy::Configured => "source.delimiter",
            DelimiterBy::Header => "detected from the header",
            DelimiterBy::Fallback => "no separator found the id column in the header",
        };
        let bom = if self.bom && self.encoding_by != EncodingBy::ByteOrderMark {
            ", with a byte order mark"
        } else {
            ""
        };
        let mut text = format!(
            "{} ({encoding}{bom}), separator {} ({delimiter}), quote {}",
            self.encoding.label(),
            show_byte(self.delimiter),
            show_byte(self.quote),
        );
        if let Some(escape) = self.escape {
            text.push_str(&format!(", escape {}", show_byte(escape)));
        }
        text.push_str(match self.line_ending {
            LineEnding::Lf => ", LF line endings",
            LineEnding::CrLf => ", CRLF line endings",
            LineEnding::Cr => ", CR line endings",
        });
        text
    }

    /// A CSV parser for this dialect over the parser's stream.
    pub(super) fn reader<R: Read>(&self, inner: R) -> ::csv::Reader<R> {
        ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.delimiter)
            .quote(self.quote)
            .escape(self.escape)
            .from_reader(inner)
    }

    /// How cells are text in the parser's stream.
    pub(super) fn cells(&self) -> CellCodec {
        self.encoding.cells()
    }

    /// A value's bytes as a field in the parser's stream: encoded, and quoted when it must be or
    /// when `quoted` (the cell it replaces was). `Err` is the first character the encoding lacks.
    pub(super) fn field(&self, value: &str, quoted: bool) -> Result<Vec<u8>, char> {
        Ok(self.quote_field(&self.cells().encode(value)?, quoted))
    }

    /// Bytes already in the stream's encoding as a field: quoted when they hold the separator,
    /// the quote, a line break or an outer space, or when `quoted`.
    pub(super) fn quote_field(&self, bytes: &[u8], quoted: bool) -> Vec<u8> {
        let needs = bytes
            .iter()
            .any(|&b| b == self.delimiter || b == self.quote || b == b'\r' || b == b'\n')
            || bytes.first() == Some(&b' ')
            || bytes.last() == Some(&b' ');
        if !(quoted || needs) {
            return bytes.to_vec();
        }
        let mut out = Vec::with_capacity(bytes.len() + 2);
        out.push(self.quote);
        for &b in bytes {
            if b == self.quote || Some(b) == self.escape {
                out.push(self.escape.unwrap_or(self.quote));
            }
            out.push(b);
        }
        out.push(self.quote);
        out
    }

    /// A whole new row in the file's bytes (encoding, separator, quoting, the header's line
    /// ending after it), for a record added to the file. `Err` names the first value the
    /// encoding cannot hold; nothing is written for the row then.
    pub fn render_row(&self, values: &[&str]) -> Result<Vec<u8>, Unrepresentable> {
        let mut stream = Vec::new();
        for (index, value) in values.iter().enumerate() {
            if index > 0 {
                stream.push(self.delimiter);
            }
            let field = self
                .field(value, self.quote_all)
                .map_err(|character| Unrepresentable {
                    index,
                    character,
                    encoding: self.encoding,
                })?;
            stream.extend_from_slice(&field);
        }
        stream.extend_from_slice(self.line_ending.bytes());
        Ok(self.to_file(stream))
    }

    /// The file's bytes for bytes of the parser's stream (UTF-16 files: encoded back).
    pub(super) fn to_file(&self, stream: Vec<u8>) -> Vec<u8> {
        let big_endian = match self.encoding {
            FileEncoding::Utf16Le => false,
            FileEncoding::Utf16Be => true,
            _ => return stream,
        };
        let text = String::from_utf8_lossy(&stream);
        let mut out = Vec::with_capacity(stream.len() * 2);
        for unit in text.encode_utf16() {
            out.extend_from_slice(&if big_endian {
                unit.to_be_bytes()
            } else {
                unit.to_le_bytes()
            });
        }
        out
    }

    /// The parser's stream for a span of the file's bytes that starts at a line (UTF-16 files:
    /// transcoded as the reader does, malformed units marked).
    pub(super) fn to_stream<'a>(&self, file_bytes: &'a [u8]) -> Cow<'a, [u8]> {
        if self.encoding.is_utf16() {
            Cow::Owned(super::stream::utf16_span(self.encoding, file_bytes))
        } else {
            Cow::Borrowed(file_bytes)
        }
    }
}

/// The header's names when split by `delimiter` (trimmed; cells decoded by `cells`).
fn names_split_by(
    line: &[u8],
    delimiter: u8,
    quote: u8,
    escape: Option<u8>,
    cells: CellCodec,
) -> Vec<String> {
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .quote(quote)
        .escape(escape)
        .from_reader(line);
    let mut record = ByteRecord::new();
    if !reader.read_byte_record(&mut record).unwrap_or(false) {
        return Vec::new();
    }
    record
        .iter()
        .map(|raw| match cells.decode(raw) {
            Ok(text) => text.trim().to_string(),
            Err(_) => String::from_utf8_lossy(raw).trim().to_string(),
        })
        .collect()
}

/// The separator `auto` picks for a header line (the parser's stream bytes of the first line):
/// the candidate whose split includes `id` and the most of `expected`, then the most names;
/// `None` when no candidate finds `id`.
pub(super) fn choose_delimiter(
    line: &[u8],
    quote: u8,
    escape: Option<u8>,
    cells: CellCodec,
    id: &str,
    expected: &[String],
) -> Option<u8> {
    let mut best: Option<(u8, (usize, usize))> = None;
    for delimiter in DELIMITER_CANDIDATES {
        let names = names_split_by(line, delimiter, quote, escape, cells);
        if !names.iter().any(|n| n == id) {
            continue;
        }
        let found = names.iter().filter(|n| expected.contains(n)).count();
        let score = (found, names.len());
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((delimiter, score));
        }
    }
    best.map(|(delimiter, _)| delimiter)
}

/// Whether every field of the header line is quoted.
pub(super) fn quotes_every_name(line: &[u8], delimiter: u8, quote: u8, escape: Option<u8>) -> bool {
    let content = line
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map_or(line, |end| &line[..end]);
    !content.is_empty()
        && split_fields(content, delimiter, quote, escape)
            .iter()
            .all(|f| f.len() >= 2 && f[0] == quote && f[f.len() - 1] == quote)
}

/// Splits a row's bytes on the separator outside quotes, keeping each field's bytes as they are.
pub(super) fn split_fields(
    content: &[u8],
    delimiter: u8,
    quote: u8,
    escape: Option<u8>,
) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    let mut i = 0;
    while i < content.len() {
        let b = content[i];
        if in_quotes && Some(b) == escape {
            i += 2;
            continue;
        }
        if b == quote {
            in_quotes = !in_quotes;
        } else if b == delimiter && !in_quotes {
            fields.push(&content[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    fields.push(&content[start..]);
    fields
}

/// A field's value as the parser reads it: quotes removed and escapes (`""`, or the escape
/// character) undone when it is quoted.
pub(super) fn unquote(raw: &[u8], quote: u8, escape: Option<u8>) -> Vec<u8> {
    match raw {
        [first, inner @ .., last] if *first == quote && *last == quote => {
            let mut out = Vec::with_capacity(inner.len());
            let mut i = 0;
            while i < inner.len() {
                let b = inner[i];
                if Some(b) == escape && i + 1 < inner.len() {
                    out.push(inner[i + 1]);
                    i += 2;
                    continue;
                }
                out.push(b);
                i += if b == quote && inner.get(i + 1) == Some(&quote) {
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

/// A configured dialect with `"` quotes and CRLF line endings (unit tests).
#[cfg(test)]
pub(super) fn configured(encoding: FileEncoding, delimiter: u8) -> Dialect {
    Dialect {
        encoding,
        encoding_by: EncodingBy::Configured,
        bom: false,
        delimiter,
        delimiter_by: DelimiterBy::Configured,
        quote: b'"',
        escape: None,
        line_ending: LineEnding::CrLf,
        quote_all: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialect(encoding: FileEncoding, delimiter: u8) -> Dialect {
        configured(encoding, delimiter)
    }

    #[test]
    fn the_first_non_ascii_row_decides() {
        assert_eq!(judge(b"c1,Ada,Lovelace"), None);
        assert_eq!(judge("c1,Jürgen".as_bytes()), Some(FileEncoding::Utf8));
        assert_eq!(judge(b"c1,J\xfcrgen"), Some(FileEncoding::Windows1252));
    }

    #[test]
    fn cells_decode_and_encode_per_encoding() {
        assert_eq!(
            CellCodec::Windows1252.decode(b"Garc\xeda").unwrap(),
            "García"
        );
        assert_eq!(CellCodec::Windows1252.decode(b"\x80").unwrap(), "€");
        let mut out = String::from("a");
        CellCodec::Windows1252.decode_into(b"\x80 Gr\xfc\xdfe", &mut out);
        assert_eq!(out, "a€ Grüße");
        assert_eq!(CellCodec::Latin1.decode(b"\x80").unwrap(), "\u{80}");
        assert_eq!(CellCodec::Latin1.decode(b"Stra\xdfe").unwrap(), "Straße");
        assert_eq!(CellCodec::Utf8.decode(b"ok\xff"), Err(2));
        assert_eq!(
            CellCodec::Windows1252.encode("Müller €").unwrap().as_ref(),
            b"M\xfcller \x80"
        );
        assert_eq!(CellCodec::Windows1252.encode("Ann 😀"), Err('😀'));
        assert_eq!(CellCodec::Latin1.encode("€"), Err('€'));
        assert_eq!(CellCodec::Latin1.encode("é").unwrap().as_ref(), b"\xe9");
    }

    #[test]
    fn fields_are_quoted_for_the_dialect() {
        let semi = dialect(FileEncoding::Windows1252, b';');
        assert_eq!(semi.field("a,b", false).unwrap(), b"a,b");
        assert_eq!(semi.field("a;b", false).unwrap(), b"\"a;b\"");
        assert_eq!(
            semi.field("Zoë \"Z\"", false).unwrap(),
            b"\"Zo\xeb \"\"Z\"\"\""
        );
        let escaped = Dialect {
            escape: Some(b'\\'),
            ..dialect(FileEncoding::Utf8, b',')
        };
        assert_eq!(escaped.field("a\"b\\c", true).unwrap(), b"\"a\\\"b\\\\c\"");
    }

    #[test]
    fn a_new_row_is_rendered_in_the_files_dialect() {
        let tab16 = Dialect {
            quote_all: true,
            ..dialect(FileEncoding::Utf16Le, b'\t')
        };
        let row = tab16.render_row(&["c9", "Zoë"]).unwrap();
        let expected: Vec<u8> = "\"c9\"\t\"Zoë\"\r\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(row, expected);
        let err = dialect(FileEncoding::Windows1252, b';')
            .render_row(&["c9", "Ann 😀"])
            .unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(err.character, '😀');
        assert_eq!(
            err.to_string(),
            "😀 (U+1F600) cannot be written in windows-1252"
        );
    }

    #[test]
    fn the_separator_that_finds_the_configured_columns_wins() {
        let expected = vec!["first_name".to_string(), "email".to_string()];
        let choose =
            |line: &[u8]| choose_delimiter(line, b'"', None, CellCodec::Utf8, "crm_id", &expected);
        assert_eq!(choose(b"crm_id;first_name;email\r\n"), Some(b';'));
        assert_eq!(choose(b"crm_id\tfirst_name\temail\n"), Some(b'\t'));
        assert_eq!(choose(b"crm_id|first_name|email"), Some(b'|'));
        // A comma inside a name does not fool it: only `;` finds the columns.
        assert_eq!(
            choose(b"crm_id;\"first_name, given\";first_name;email\n"),
            Some(b';')
        );
        assert_eq!(choose(b"id;first_name\n"), None);
        assert!(quotes_every_name(
            b"\"crm_id\";\"name\"\r\n",
            b';',
            b'"',
            None
        ));
        assert!(!quotes_every_name(b"crm_id;\"name\"\r\n", b';', b'"', None));
        assert_eq!(LineEnding::of(b"a;b\r\nc"), LineEnding::CrLf);
        assert_eq!(LineEnding::of(b"a;b\nc"), LineEnding::Lf);
        assert_eq!(LineEnding::of(b"a;b"), LineEnding::Lf);
    }
}
