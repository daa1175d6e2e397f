//! The list call's query: fixed parameters (`query`) and the incremental-read time
//! (`updated_since_param`, `updated_since_header`, `{updated_since}` in a `query` value, and how
//! that time is written).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::RestSourceConfig;

/// A fixed query parameter value (`query = { archived = false, limit = 100 }`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// Text.
    Text(String),
    /// Whole number.
    Integer(i64),
    /// Number with a fraction.
    Float(f64),
    /// true/false.
    Bool(bool),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Text(s) => f.write_str(s),
            ParamValue::Integer(n) => write!(f, "{n}"),
            ParamValue::Float(n) => write!(f, "{n}"),
            ParamValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// How the incremental-read time is written (`updated_since_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinceFormat {
    /// `2026-01-01T00:00:00Z` (also a Salesforce SOQL datetime literal).
    #[default]
    Rfc3339,
    /// `2026-01-01T00:00:00+00:00` (Zoho's `If-Modified-Since`).
    Rfc3339Offset,
    /// `Thu, 01 Jan 2026 00:00:00 GMT` (RFC 9110 HTTP-date).
    HttpDate,
    /// Seconds since 1970.
    Unix,
    /// Milliseconds since 1970.
    UnixMs,
}

/// Replaced inside `query` values by the incremental-read time (the Unix epoch on full reads).
pub const UPDATED_SINCE_PLACEHOLDER: &str = "{updated_since}";

/// Full reads happen at least this often when incremental reads are configured.
pub const DEFAULT_FULL_READ_EVERY: Duration = Duration::from_secs(24 * 3600);

impl RestSourceConfig {
    /// Whether reads can be incremental: a since parameter, header or `{updated_since}` in a
    /// `query` value.
    pub fn incremental(&self) -> bool {
        self.updated_since_param.is_some()
            || self.updated_since_header.is_some()
            || self
                .query
                .values()
                .any(|v| matches!(v, ParamValue::Text(t) if t.contains(UPDATED_SINCE_PLACEHOLDER)))
    }
}
