//! `[source]` keys that describe a CSV file's dialect — its field separator, text encoding,
//! quote and escape characters — and how long the file must be quiet before a watched read.
//!
//! They live apart from the rest of the configuration because they are plain values with their
//! own parsing rules (a delimiter is written as `";"` or `"\t"`, an encoding by its usual labels);
//! what `auto` finds in a file is the CSV adapter's business (`source::csv::dialect`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, SourceConfig};

/// `source.delimiter`: the field separator, or `auto` (chosen from the header line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CsvDelimiter {
    /// The candidate (`,` `;` tab `|`) that splits the header into the configured columns.
    #[default]
    Auto,
    /// This byte.
    Byte(u8),
}

/// The separators `auto` tries, in order of preference when two fit equally.
pub const DELIMITER_CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];

impl<'de> Deserialize<'de> for CsvDelimiter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "auto" => Ok(CsvDelimiter::Auto),
            "," | "comma" => Ok(CsvDelimiter::Byte(b',')),
            ";" | "semicolon" => Ok(CsvDelimiter::Byte(b';')),
            "\t" | "\\t" | "tab" => Ok(CsvDelimiter::Byte(b'\t')),
            "|" | "pipe" => Ok(CsvDelimiter::Byte(b'|')),
            other => Err(serde::de::Error::custom(format!(
                "expected \",\", \";\", \"\\t\", \"|\" or \"auto\", got {other:?}"
            ))),
        }
    }
}

impl fmt::Display for CsvDelimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsvDelimiter::Auto => f.write_str("auto"),
            CsvDelimiter::Byte(b) => f.write_str(&show_byte(*b)),
        }
    }
}

impl Serialize for CsvDelimiter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            CsvDelimiter::Auto => serializer.serialize_str("auto"),
            CsvDelimiter::Byte(b) => serializer.serialize_str(&char::from(*b).to_string()),
        }
    }
}

/// A separator or quote as an operator writes it (`";"`, `"\t"`).
pub fn show_byte(byte: u8) -> String {
    match byte {
        b'\t' => "\"\\t\"".to_string(),
        b => format!("{:?}", char::from(b).to_string()),
    }
}

/// `source.encoding`: how the file's bytes are text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CsvEncoding {
    /// A byte order mark when there is one; else the first line holding a non-ASCII byte
    /// decides: valid UTF-8 → UTF-8, otherwise Windows-1252.
    #[default]
    Auto,
    /// UTF-8 (a BOM is allowed and kept).
    Utf8,
    /// Windows-1252, what Excel on Windows saves in western Europe and the Americas.
    Windows1252,
    /// ISO-8859-1 (Latin-1), byte for code point.
    Latin1,
    /// UTF-16, little-endian (Excel's "Unicode text").
    Utf16Le,
    /// UTF-16, big-endian.
    Utf16Be,
}

impl<'de> Deserialize<'de> for CsvEncoding {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(CsvEncoding::Auto),
            "utf-8" | "utf8" => Ok(CsvEncoding::Utf8),
            "windows-1252" | "cp1252" => Ok(CsvEncoding::Windows1252),
            "latin1" | "latin-1" | "iso-8859-1" => Ok(CsvEncoding::Latin1),
            "utf-16le" | "utf16le" => Ok(CsvEncoding::Utf16Le),
            "utf-16be" | "utf16be" => Ok(CsvEncoding::Utf16Be),
            _ => Err(serde::de::Error::custom(format!(
                "expected \"auto\", \"utf-8\", \"windows-1252\", \"latin1\", \"utf-16le\" or \"utf-16be\", got {text:?}"
            ))),
        }
    }
}

impl fmt::Display for CsvEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CsvEncoding::Auto => "auto",
            CsvEncoding::Utf8 => "utf-8",
            CsvEncoding::Windows1252 => "windows-1252",
            CsvEncoding::Latin1 => "latin1",
            CsvEncoding::Utf16Le => "utf-16le",
            CsvEncoding::Utf16Be => "utf-16be",
        })
    }
}

impl Serialize for CsvEncoding {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

/// `source.quote`: the character that quotes a field, default `"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvQuote(pub u8);

impl Default for CsvQuote {
    fn default() -> Self {
        CsvQuote(b'"')
    }
}

impl<'de> Deserialize<'de> for CsvQuote {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        one_ascii(&text).map(CsvQuote).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected one ASCII character such as \"\\\"\" or \"'\", got {text:?}"
            ))
        })
    }
}

impl Serialize for CsvQuote {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&char::from(self.0).to_string())
    }
}

/// `source.escape`: the character that escapes a quote inside a quoted field (`\"`), or none
/// (the default: a quote is escaped by doubling it, `""`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CsvEscape(pub Option<u8>);

impl<'de> Deserialize<'de> for CsvEscape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() || text == "none" {
            return Ok(CsvEscape(None));
        }
        one_ascii(&text)
            .map(|b| CsvEscape(Some(b)))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "expected one ASCII character such as \"\\\\\", or \"\" for doubled quotes, got {text:?}"
                ))
            })
    }
}

impl Serialize for CsvEscape {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(
            &self
                .0
                .map(|b| char::from(b).to_string())
                .unwrap_or_default(),
        )
    }
}

/// The byte of a one-character ASCII text that is not a line break.
fn one_ascii(text: &str) -> Option<u8> {
    match text.as_bytes() {
        [b] if b.is_ascii() && *b != b'\r' && *b != b'\n' => Some(*b),
        _ => None,
    }
}

impl SourceConfig {
    /// The dialect keys must not contradict each other (a quote that is also the separator).
    pub(super) fn validate_dialect(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::BadValue {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        let quote = self.quote.0;
        if let CsvDelimiter::Byte(d) = self.delimiter
            && d == quote
        {
            return Err(bad(
                "source.quote",
                format!("the quote {} is also source.delimiter", show_byte(quote)),
            ));
        }
        if let Some(e) = self.escape.0 {
            if matches!(self.delimiter, CsvDelimiter::Byte(d) if d == e) {
                return Err(bad(
                    "source.escape",
                    format!("the escape {} is also source.delimiter", show_byte(e)),
                ));
            }
            if e == quote {
                return Err(bad(
                    "source.escape",
                    "leave it unset for doubled quotes (\"\"), which is what an escape equal to the quote means".into(),
                ));
            }
        }
        if self.delimiter == CsvDelimiter::Auto && DELIMITER_CANDIDATES.contains(&quote) {
            return Err(bad(
                "source.quote",
                format!(
                    "the quote {} is one of the separators source.delimiter = \"auto\" tries; set source.delimiter",
                    show_byte(quote)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Keys {
        delimiter: CsvDelimiter,
        encoding: CsvEncoding,
        quote: CsvQuote,
        escape: CsvEscape,
    }

    fn parse(text: &str) -> Result<Keys, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn dialect_keys_parse_as_written() {
        let keys = parse(
            "delimiter = \"\\t\"\nencoding = \"Windows-1252\"\nquote = \"'\"\nescape = \"\\\\\"\n",
        )
        .unwrap();
        assert_eq!(keys.delimiter, CsvDelimiter::Byte(b'\t'));
        assert_eq!(keys.encoding, CsvEncoding::Windows1252);
        assert_eq!(keys.quote, CsvQuote(b'\''));
        assert_eq!(keys.escape, CsvEscape(Some(b'\\')));
        let keys =
            parse("delimiter = \"auto\"\nencoding = \"utf-16le\"\nquote = '\"'\nescape = \"\"\n")
                .unwrap();
        assert_eq!(keys.delimiter, CsvDelimiter::Auto);
        assert_eq!(keys.encoding, CsvEncoding::Utf16Le);
        assert_eq!(keys.escape, CsvEscape(None));
    }

    #[test]
    fn dialect_keys_refuse_what_cannot_work() {
        let err = parse("delimiter = \"::\"\nencoding = \"auto\"\nquote = '\"'\nescape = \"\"\n")
            .unwrap_err();
        assert!(err.contains("expected \",\", \";\""), "{err}");
        let err = parse("delimiter = \";\"\nencoding = \"ebcdic\"\nquote = '\"'\nescape = \"\"\n")
            .unwrap_err();
        assert!(err.contains("\"ebcdic\""), "{err}");
        let err = parse("delimiter = \";\"\nencoding = \"auto\"\nquote = \"''\"\nescape = \"\"\n")
            .unwrap_err();
        assert!(err.contains("one ASCII character"), "{err}");
        assert_eq!(show_byte(b'\t'), "\"\\t\"");
        assert_eq!(show_byte(b';'), "\";\"");
    }
}
