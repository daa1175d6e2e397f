//! The bytes between the file and the CSV parser.
//!
//! Every byte of the file is read once, in order, through [`HashingReader`] (so a read knows the
//! SHA-256 of exactly what it parsed). The byte order mark is taken off; a UTF-16 file is
//! transcoded to UTF-8 by [`Utf16Reader`] (with `encoding_rs`); what the parser then reads is
//! the *stream*. [`Tracked`] sits on top: it remembers where recent line endings are, so a
//! record's true first line can be named and, for write-back, where its row starts in the
//! file's own bytes (for UTF-16 that is not the stream offset).
//!
//! `encoding_rs_io` would transcode too, but it replaces a malformed UTF-16 unit with U+FFFD,
//! indistinguishable from a real U+FFFD: the row would reach Quo with a mangled value. Here a
//! malformed unit becomes the byte 0xFF, which is never UTF-8, so its row is quarantined exactly
//! like a bad row in a UTF-8 file, and every output unit still stands for one UTF-16 unit, which
//! is what maps stream offsets back to file offsets.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Chain, Cursor, Read};

use encoding_rs::{Decoder, DecoderResult, UTF_16BE, UTF_16LE};
use sha2::{Digest, Sha256};

use super::dialect::FileEncoding;

/// What a malformed UTF-16 unit becomes in the stream: never valid UTF-8.
pub(super) const MALFORMED: u8 = 0xFF;

/// Passes reads through while hashing and counting every byte.
pub(super) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    /// The last two bytes read (the file's last two once finished).
    tail: [u8; 2],
}

impl<R: Read> HashingReader<R> {
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            tail: [0; 2],
        }
    }

    /// Reads what is left (so the hash covers the whole file) and returns (len, hash, inner).
    pub(super) fn finish(self) -> io::Result<(u64, Vec<u8>, R)> {
        let (len, hash, inner, _) = self.finish_with_tail()?;
        Ok((len, hash, inner))
    }

    /// [`Self::finish`], with the file's last two bytes (zeros before them in a shorter file).
    pub(super) fn finish_with_tail(mut self) -> io::Result<(u64, Vec<u8>, R, [u8; 2])> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            self.count,
            self.hasher.finalize().to_vec(),
            self.inner,
            self.tail,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        self.tail = match &buf[..n] {
            [] => self.tail,
            [only] => [self.tail[1], *only],
            [.., a, b] => [*a, *b],
        };
        Ok(n)
    }
}

/// Whether a file whose last two bytes are `tail` ends with a line end in `encoding`: a row
/// without one may be cut by a writer still at work.
pub(super) fn ends_with_line_end(tail: [u8; 2], encoding: FileEncoding) -> bool {
    let eol = |b: u8| b == b'\n' || b == b'\r';
    match encoding {
        FileEncoding::Utf16Le => tail[1] == 0 && eol(tail[0]),
        FileEncoding::Utf16Be => tail[0] == 0 && eol(tail[1]),
        _ => eol(tail[1]),
    }
}

/// Transcodes UTF-16 to UTF-8, one output unit per input unit (malformed → [`MALFORMED`]).
pub(super) struct Utf16Reader<R> {
    inner: R,
    decoder: Decoder,
    out: Vec<u8>,
    at: usize,
    done: bool,
}

fn utf16_decoder(encoding: FileEncoding) -> Decoder {
    let encoding = if encoding == FileEncoding::Utf16Be {
        UTF_16BE
    } else {
        UTF_16LE
    };
    encoding.new_decoder_without_bom_handling()
}

/// Decodes `src` into `out`, marking each malformed sequence with one [`MALFORMED`] byte.
fn decode_utf16(decoder: &mut Decoder, mut src: &[u8], last: bool, out: &mut Vec<u8>) {
    loop {
        let room = decoder
            .max_utf8_buffer_length_without_replacement(src.len())
            .unwrap_or(src.len() * 3 + 16);
        let start = out.len();
        out.resize(start + room, 0);
        let (result, read, written) =
            decoder.decode_to_utf8_without_replacement(src, &mut out[start..], last);
        out.truncate(start + written);
        src = &src[read..];
        match result {
            DecoderResult::InputEmpty => return,
            DecoderResult::OutputFull => {}
            DecoderResult::Malformed(_, _) => out.push(MALFORMED),
        }
    }
}

/// The stream for a span of a UTF-16 file that starts at a line (write-back's changed rows).
pub(super) fn utf16_span(encoding: FileEncoding, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    decode_utf16(&mut utf16_decoder(encoding), bytes, true, &mut out);
    out
}

impl<R: Read> Utf16Reader<R> {
    fn new(inner: R, encoding: FileEncoding) -> Self {
        Self {
            inner,
            decoder: utf16_decoder(encoding),
            out: Vec::new(),
            at: 0,
            done: false,
        }
    }
}

impl<R: Read> Read for Utf16Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.out.len() {
            if self.done {
                return Ok(0);
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.inner.read(&mut chunk)?;
            self.out.clear();
            self.at = 0;
            self.done = n == 0;
            decode_utf16(&mut self.decoder, &chunk[..n], self.done, &mut self.out);
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The file after its byte order mark: as is, or transcoded from UTF-16.
pub(super) enum Decoded {
    Raw(Chain<Cursor<Vec<u8>>, HashingReader<File>>),
    Utf16(Utf16Reader<Chain<Cursor<Vec<u8>>, HashingReader<File>>>),
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoded::Raw(r) => r.read(buf),
            Decoded::Utf16(r) => r.read(buf),
        }
    }
}

/// A line-ending byte of the stream and the file offset just after it.
#[derive(Debug, Clone, Copy)]
struct Eol {
    at: u64,
    byte: u8,
    file_after: u64,
}

/// The stream the parser reads, remembering where recent line endings are.
///
/// The csv parser reports a record's position as where the previous record stopped, which can
/// be before the `\n` of a CRLF or before blank lines; the bytes in between are all `\r`/`\n`.
/// Only line endings not yet behind the current record are kept (read-ahead plus one record).
pub(super) struct Tracked {
    inner: Decoded,
    /// Stream bytes taken from `inner` so far.
    count: u64,
    eols: VecDeque<Eol>,
    /// The last line ending dropped from `eols`.
    behind: Option<Eol>,
    /// The byte order mark's length: where the stream starts in the file.
    base: u64,
    /// UTF-16 units the stream stands for so far (UTF-16 files only).
    units: Option<u64>,
    /// Stream bytes taken by `peek_line` and not handed out yet.
    peeked: Vec<u8>,
    peek_at: usize,
}

/// UTF-16 units a piece of the stream stands for: one per character, two for one outside the
/// BMP (a 4-byte UTF-8 sequence), one per [`MALFORMED`] byte.
fn utf16_units(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .map(|&b| u64::from(!(0x80..0xC0).contains(&b)) + u64::from((0xF0..0xF8).contains(&b)))
        .sum()
}

/// The first bytes of a file, read to find a byte order mark.
pub(super) struct Head {
    hashing: HashingReader<File>,
    head: Vec<u8>,
    bom: Option<(FileEncoding, usize)>,
}

impl Head {
    /// Reads the first bytes of `file` (through the hash).
    pub(super) fn read(file: File) -> io::Result<Head> {
        let mut hashing = HashingReader::new(file);
        let mut head = Vec::with_capacity(3);
        (&mut hashing).take(3).read_to_end(&mut head)?;
        let bom = FileEncoding::from_bom(&head);
        Ok(Head { hashing, head, bom })
    }

    /// The encoding the file's byte order mark names.
    pub(super) fn bom(&self) -> Option<FileEncoding> {
        self.bom.map(|(encoding, _)| encoding)
    }

    /// The stream after the byte order mark, transcoded when `encoding` is UTF-16.
    pub(super) fn stream(self, encoding: FileEncoding) -> Tracked {
        let skip = self.bom.map_or(0, |(_, len)| len);
        let rest = Cursor::new(self.head[skip..].to_vec()).chain(self.hashing);
        let (inner, units) = if encoding.is_utf16() {
            (Decoded::Utf16(Utf16Reader::new(rest, encoding)), Some(0))
        } else {
            (Decoded::Raw(rest), None)
        };
        Tracked {
            inner,
            count: 0,
            eols: VecDeque::new(),
            behind: None,
            base: skip as u64,
            units,
            peeked: Vec::new(),
            peek_at: 0,
        }
    }
}

impl Tracked {
    /// Takes bytes from `inner` into `buf`, noting line endings.
    fn pull(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let chunk = &buf[..n];
        let mut from = 0;
        for i in memchr::memchr2_iter(b'\n', b'\r', chunk) {
            let at = self.count + i as u64;
            let file_after = match self.units.as_mut() {
                Some(units) => {
                    *units += utf16_units(&chunk[from..=i]);
                    from = i + 1;
                    self.base + 2 * *units
                }
                None => self.base + at + 1,
            };
            self.eols.push_back(Eol {
                at,
                byte: chunk[i],
                file_after,
            });
        }
        if let Some(units) = self.units.as_mut() {
            *units += utf16_units(&chunk[from..]);
        }
        self.count += n as u64;
        Ok(n)
    }

    /// The stream's first line (up to its first `\n`, at most `limit` bytes), without
    /// consuming it.
    pub(super) fn peek_line(&mut self, limit: usize) -> io::Result<&[u8]> {
        let mut chunk = vec![0u8; 8 * 1024];
        while !self.peeked.contains(&b'\n') && self.peeked.len() < limit {
            let n = self.pull(&mut chunk)?;
            if n == 0 {
                break;
            }
            self.peeked.extend_from_slice(&chunk[..n]);
        }
        Ok(&self.peeked)
    }

    /// The 1-based line where the record reported at `position` really starts, and the offset
    /// of its first byte in the file (`None` if it cannot be told, which cannot happen for a
    /// record the parser reported).
    pub(super) fn locate(&mut self, position: Option<&::csv::Position>) -> (u64, Option<u64>) {
        let Some(position) = position else {
            return (0, None);
        };
        let (mut at, mut line) = (position.byte(), position.line());
        while let Some(&eol) = self.eols.front() {
            if eol.at >= at {
                break;
            }
            self.behind = self.eols.pop_front();
        }
        let file_at = match (self.units, self.behind) {
            _ if at == 0 => Some(self.base),
            (None, _) => Some(self.base + at),
            (Some(_), Some(eol)) if eol.at + 1 == at => Some(eol.file_after),
            (Some(_), _) => None,
        };
        while let Some(&eol) = self.eols.front() {
            if eol.at != at {
                break;
            }
            line += u64::from(eol.byte == b'\n');
            at += 1;
            self.behind = self.eols.pop_front();
        }
        (line, file_at)
    }

    /// Reads what is left of the file and returns its length, the SHA-256 of all its bytes, and
    /// the file.
    pub(super) fn finish(self) -> io::Result<(u64, Vec<u8>, File)> {
        let (len, hash, file, _) = self.finish_with_tail()?;
        Ok((len, hash, file))
    }

    /// [`Self::finish`], with the file's last two bytes.
    pub(super) fn finish_with_tail(self) -> io::Result<(u64, Vec<u8>, File, [u8; 2])> {
        let chain = match self.inner {
            Decoded::Raw(chain) => chain,
            Decoded::Utf16(reader) => reader.inner,
        };
        chain.into_inner().1.finish_with_tail()
    }
}

impl Read for Tracked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.peek_at < self.peeked.len() {
            let n = buf.len().min(self.peeked.len() - self.peek_at);
            buf[..n].copy_from_slice(&self.peeked[self.peek_at..self.peek_at + n]);
            self.peek_at += n;
            return Ok(n);
        }
        self.pull(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(text: &str) -> Vec<u8> {
        text.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn utf16_decodes_with_one_marker_per_malformed_unit() {
        let mut bytes = le("a\n");
        bytes.extend_from_slice(&[0x00, 0xD8]); // a lone high surrogate …
        bytes.extend(le("b\n😀\n"));
        bytes.extend_from_slice(&[0x00, 0xDC]); // … and a lone low one
        bytes.extend(le("c"));
        bytes.push(0x41); // half a unit at the end
        let out = utf16_span(FileEncoding::Utf16Le, &bytes);
        let mut expected = b"a\n".to_vec();
        expected.push(MALFORMED);
        expected.extend_from_slice("b\n😀\n".as_bytes());
        expected.push(MALFORMED);
        expected.push(b'c');
        expected.push(MALFORMED);
        assert_eq!(out, expected);
        // One unit per character, two for 😀, one per marker: file offsets follow.
        assert_eq!(utf16_units(&out[..4]), 4);
        assert_eq!(utf16_units("😀".as_bytes()), 2);
    }

    #[test]
    fn utf16_line_starts_map_to_file_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.csv");
        let mut bytes = vec![0xFF, 0xFE];
        bytes.extend(le("id\tname\r\n1\tZoë 😀\r\n2\tB\r\n"));
        std::fs::write(&path, &bytes).unwrap();
        let head = Head::read(File::open(&path).unwrap()).unwrap();
        assert_eq!(head.bom(), Some(FileEncoding::Utf16Le));
        let tracked = head.stream(FileEncoding::Utf16Le);
        let mut reader = ::csv::ReaderBuilder::new()
            .has_headers(false)
            .delimiter(b'\t')
            .from_reader(tracked);
        let mut record = ::csv::ByteRecord::new();
        let mut starts = Vec::new();
        while reader.read_byte_record(&mut record).unwrap() {
            let (line, at) = reader.get_mut().locate(record.position());
            starts.push((line, at.unwrap()));
        }
        // The parser reports a record where the previous one stopped: after its `\r`.
        let line2 = 2 + 2 * "id\tname\r".encode_utf16().count() as u64;
        let line3 = line2 + 2 * "\n1\tZoë 😀\r".encode_utf16().count() as u64;
        assert_eq!(starts, vec![(1, 2), (2, line2), (3, line3)]);
        let (len, _, _) = reader.into_inner().finish().unwrap();
        assert_eq!(len, bytes.len() as u64);
    }
}
