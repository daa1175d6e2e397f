//! Turning one raw JSON record into a `SourceRecord` (id, fields, flattened arrays,
//! last-modified time), or a `BadRecord` that says why not.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

use super::RestSource;
use super::config::ArrayFieldConfig;
use crate::domain::ExternalId;
use crate::source::{BadRecord, SourceItem, SourceRecord};

impl RestSource {
    /// Turns one raw record into a `SourceRecord`, or a `BadRecord` saying why not.
    pub(super) fn parse_record(&self, raw: &Value, location: String) -> SourceItem {
        let bad = |external_id: Option<String>, reason: String| {
            SourceItem::Bad(BadRecord {
                location: location.clone(),
                external_id,
                reason,
                raw: raw.to_string(),
                blame: None,
            })
        };
        let id_text = match self.record_id(raw) {
            Ok(id_text) => id_text,
            Err(reason) => return bad(None, reason),
        };
        let external_id = match ExternalId::parse(&id_text) {
            Ok(id) => id,
            Err(e) => return bad(Some(id_text), e.to_string()),
        };
        let read = self
            .last_modified(raw)
            .and_then(|updated_at| Ok((updated_at, self.record_fields(raw)?)));
        match read {
            Ok((updated_at, fields)) => SourceItem::Record(SourceRecord {
                external_id,
                fields,
                updated_at,
                location,
            }),
            Err(reason) => bad(Some(id_text), reason),
        }
    }

    /// The record's id as text (a string or a number at `id_pointer`), or why there is none.
    fn record_id(&self, raw: &Value) -> Result<String, String> {
        let id_pointer = &self.config.id_pointer;
        match raw.pointer(id_pointer) {
            None | Some(Value::Null) => Err(format!("no id at {id_pointer:?} (id_pointer)")),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(format!(
                "the id at {id_pointer:?} is {}, expected a string or number",
                json_type(other)
            )),
        }
    }

    /// The record's last-modified time at `updated_at_pointer` (none configured or none
    /// there: `None`), or why it is not a time.
    fn last_modified(&self, raw: &Value) -> Result<Option<DateTime<Utc>>, String> {
        let Some(pointer) = &self.config.updated_at_pointer else {
            return Ok(None);
        };
        match raw.pointer(pointer) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => parse_time(value).map(Some).ok_or_else(|| {
                format!("the last-modified time at {pointer:?} is not a time: {value}")
            }),
        }
    }

    /// The record's fields: each configured pointer's value as text, then each labelled array
    /// flattened (`email.work`); or why one cannot be read.
    fn record_fields(&self, raw: &Value) -> Result<BTreeMap<String, String>, String> {
        let mut fields = BTreeMap::new();
        for (name, pointer) in &self.config.fields {
            match raw.pointer(pointer) {
                None | Some(Value::Null) => {}
                Some(value) => match value_text(value) {
                    Some(text) => {
                        fields.insert(name.clone(), text);
                    }
                    None => {
                        return Err(format!(
                            "field {name} at {pointer:?} is {}, expected text, a number, a boolean or a list of them",
                            json_type(value)
                        ));
                    }
                },
            }
        }
        for array in &self.config.arrays {
            add_array_fields(raw, array, &mut fields)?;
        }
        Ok(fields)
    }
}

/// Adds one labelled array's items to `fields` as `prefix.label` (an unlabelled item takes the
/// array's default label; the first item with a label wins: later duplicates would be
/// ambiguous to write back), or says why the array cannot be read.
fn add_array_fields(
    raw: &Value,
    array: &ArrayFieldConfig,
    fields: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    let items = match raw.pointer(&array.pointer) {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(format!(
                "{:?} is {}, expected an array of {{{}, {}}} objects",
                array.pointer,
                json_type(other),
                array.label_key,
                array.value_key
            ));
        }
    };
    for (i, item) in items.iter().enumerate() {
        let Some(object) = item.as_object() else {
            return Err(format!(
                "{}/{i} is {}, expected an object",
                array.pointer,
                json_type(item)
            ));
        };
        let label = object
            .get(&array.label_key)
            .and_then(scalar_text)
            .filter(|l| !l.trim().is_empty())
            .unwrap_or_else(|| array.default_label.clone());
        let Some(value) = object.get(&array.value_key).filter(|v| !v.is_null()) else {
            continue;
        };
        let Some(value) = value_text(value) else {
            return Err(format!(
                "{}/{i}/{} is {}, expected text",
                array.pointer,
                array.value_key,
                json_type(value)
            ));
        };
        fields
            .entry(format!("{}.{}", array.prefix, label.trim()))
            .or_insert(value);
    }
    Ok(())
}

pub(super) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Text of a string, number or boolean.
pub(super) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Text of a field value: scalars as text, arrays of scalars joined with `;`.
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter(|v| !v.is_null())
            .map(scalar_text)
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join(";")),
        other => scalar_text(other),
    }
}

/// A last-modified time: RFC 3339, `YYYY-MM-DD HH:MM:SS` (UTC), or a Unix timestamp in seconds
/// or milliseconds (numbers above 10^11 are milliseconds), as a number or numeric string.
pub fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    let from_number = |n: f64| {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        let millis = if n > 1e11 { n } else { n * 1000.0 };
        DateTime::<Utc>::from_timestamp_millis(millis as i64)
    };
    match value {
        Value::Number(n) => from_number(n.as_f64()?),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.with_timezone(&Utc));
            }
            // Salesforce: `2026-01-01T00:00:00.000+0000` (offset without a colon).
            for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%z"] {
                if let Ok(t) = DateTime::parse_from_str(s, format) {
                    return Some(t.with_timezone(&Utc));
                }
            }
            for format in [
                "%Y-%m-%d %H:%M:%S",
                "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S%.f",
            ] {
                if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
                    return Some(t.and_utc());
                }
            }
            s.parse::<f64>().ok().and_then(from_number)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    #[test]
    fn values_become_text() {
        assert_eq!(value_text(&json!("x")), Some("x".into()));
        assert_eq!(value_text(&json!(42)), Some("42".into()));
        assert_eq!(value_text(&json!(true)), Some("true".into()));
        assert_eq!(
            value_text(&json!(["a", 1, null, false])),
            Some("a;1;false".into())
        );
        assert_eq!(value_text(&json!({"a": 1})), None);
        assert_eq!(value_text(&json!([{"a": 1}])), None);
    }

    #[test]
    fn times_parse_in_common_shapes() {
        let expected = DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_time(&json!("2024-05-01T12:00:00Z")), Some(expected));
        assert_eq!(
            parse_time(&json!("2024-05-01T14:00:00+02:00")),
            Some(expected)
        );
        assert_eq!(parse_time(&json!("2024-05-01 12:00:00")), Some(expected));
        assert_eq!(parse_time(&json!(1714564800)), Some(expected));
        assert_eq!(parse_time(&json!(1714564800000u64)), Some(expected));
        assert_eq!(parse_time(&json!("1714564800000")), Some(expected));
        assert_eq!(parse_time(&json!("yesterday")), None);
    }
}
