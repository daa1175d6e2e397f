//! Value rules: emails, and custom values coerced to the type Quo declares for the field (from CRM
//! text) or canonicalised (from Quo JSON), and rendered back to CRM text.

use std::collections::HashSet;

use serde_json::Value;

use super::dates::{DateRules, format_quo_date, parse_instant};
use super::mapper::ResolvedCustom;
use crate::quo::types::CustomFieldType;

/// `local@domain` with the domain lower-cased.
pub(super) fn normalize_email(raw: &str) -> Result<String, String> {
    let text = raw.trim();
    let Some((local, domain)) = text.rsplit_once('@') else {
        return Err("not an email address (no @)".into());
    };
    if local.is_empty() || domain.is_empty() || local.contains('@') {
        return Err("not an email address (expected local@domain)".into());
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("not an email address (contains spaces)".into());
    }
    if domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
        return Err("not an email address (malformed domain)".into());
    }
    Ok(format!("{local}@{}", domain.to_lowercase()))
}

pub(super) fn coerce(
    custom: &ResolvedCustom,
    dates: &DateRules,
    raw: &str,
) -> Result<Value, String> {
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    match &custom.field_type {
        CustomFieldType::Number => parse_number(raw).map(canonical_number),
        CustomFieldType::Boolean => parse_bool(raw).map(Value::Bool),
        CustomFieldType::Date => dates.parse(raw).map(|d| Value::String(format_quo_date(d))),
        CustomFieldType::MultiSelect => {
            let items = split_multi(raw, &custom.delimiter);
            if items.is_empty() {
                Ok(Value::Null)
            } else {
                Ok(Value::Array(items.into_iter().map(Value::String).collect()))
            }
        }
        CustomFieldType::Url => parse_url(raw).map(Value::String),
        CustomFieldType::Address | CustomFieldType::String => Ok(Value::String(raw.to_string())),
        // `Mapper::new` refuses to map such a field; kept as a reason, never a panic.
        CustomFieldType::Unknown(name) => Err(format!(
            "the Quo field has type {name:?}, which quo-sync cannot write"
        )),
    }
}

pub(super) fn parse_number(raw: &str) -> Result<f64, String> {
    let reason = || "expected a number such as 42, -3.5 or 1,234.5".to_string();
    let text = strip_thousands(raw).ok_or_else(reason)?;
    if text.is_empty()
        || !text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E'))
        || !text.chars().any(|c| c.is_ascii_digit())
    {
        return Err(reason());
    }
    let value: f64 = text.parse().map_err(|_| reason())?;
    if !value.is_finite() {
        return Err("the number is too large".into());
    }
    Ok(value)
}

/// Removes thousands separators when they are well placed (`1,234,567.5`); `None` when a comma
/// is anywhere else.
pub(super) fn strip_thousands(raw: &str) -> Option<String> {
    if !raw.contains(',') {
        return Some(raw.to_string());
    }
    let unsigned = raw.trim_start_matches(['+', '-']);
    if raw.len() - unsigned.len() > 1 {
        return None;
    }
    let int_part = unsigned.split('.').next().unwrap_or_default();
    let groups: Vec<&str> = int_part.split(',').collect();
    let first_ok =
        matches!(groups[0].len(), 1..=3) && groups[0].bytes().all(|b| b.is_ascii_digit());
    let rest_ok = groups[1..]
        .iter()
        .all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()));
    let fraction = &unsigned[int_part.len()..];
    if first_ok && rest_ok && !fraction.contains(',') {
        Some(raw.replace(',', ""))
    } else {
        None
    }
}

/// The JSON number for a value: an integer when it is integral and fits, else a float.
pub(super) fn canonical_number(value: f64) -> Value {
    const LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53: beyond it floats skip integers
    if value.fract() == 0.0 && value.abs() <= LIMIT {
        Value::from(value as i64)
    } else {
        serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

pub(super) fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "1" | "on" | "t" => Ok(true),
        "false" | "no" | "n" | "0" | "off" | "f" => Ok(false),
        _ => Err("expected a yes/no value: true/false, yes/no, y/n, 1/0 or on/off".into()),
    }
}

pub(super) fn split_multi(raw: &str, delimiter: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    raw.split(delimiter)
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .filter(|item| seen.insert(item.to_string()))
        .map(str::to_string)
        .collect()
}

pub(super) fn parse_url(raw: &str) -> Result<String, String> {
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("expected a web address without spaces".into());
    }
    let candidate = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let url = reqwest::Url::parse(&candidate)
        .map_err(|e| format!("expected a web address such as https://example.com ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "expected an http or https address, got scheme {:?}",
            url.scheme()
        ));
    }
    match url.host_str() {
        Some(host) if host.contains('.') || host == "localhost" => Ok(candidate),
        _ => Err("expected a web address with a domain, such as example.com".into()),
    }
}

/// The value Quo returned, in the JSON type its field's type declares (decision 8: Quo may
/// send numbers and booleans as strings, and `null`s inside multi-select arrays).
///
/// Text that does not read as the type is kept as sent: it is Quo's data, not ours to drop.
pub(super) fn wire_value(field_type: &CustomFieldType, value: &Value) -> Value {
    match (field_type, value) {
        (CustomFieldType::Number, Value::String(s)) if !s.trim().is_empty() => {
            parse_number(s.trim())
                .map(canonical_number)
                .unwrap_or_else(|_| value.clone())
        }
        (CustomFieldType::Boolean, Value::String(s)) if !s.trim().is_empty() => {
            parse_bool(s.trim())
                .map(Value::Bool)
                .unwrap_or_else(|_| value.clone())
        }
        (CustomFieldType::MultiSelect, Value::Array(items)) => {
            Value::Array(items.iter().filter(|v| !v.is_null()).cloned().collect())
        }
        _ => value.clone(),
    }
}

/// Canonicalises a value Quo returned, so it compares equal to what `map` produces.
pub(super) fn canonical_quo_value(field_type: &CustomFieldType, value: &Value) -> Value {
    let value = wire_value(field_type, value);
    match (field_type, &value) {
        (_, Value::String(s)) if s.trim().is_empty() => Value::Null,
        (_, Value::Array(a)) if a.is_empty() => Value::Null,
        (CustomFieldType::Number, Value::Number(n)) => n
            .as_f64()
            .map(canonical_number)
            .unwrap_or_else(|| value.clone()),
        (CustomFieldType::Date, Value::String(s)) => parse_instant(s.trim())
            .map(|d| Value::String(format_quo_date(d)))
            .unwrap_or_else(|_| value.clone()),
        (CustomFieldType::MultiSelect, Value::Array(items)) => {
            // Same rule as `split_multi`: trimmed, empties and repeats dropped.
            let mut seen = HashSet::new();
            let items: Vec<Value> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Value::String(s.trim().to_string()),
                    other => other.clone(),
                })
                .filter(|v| v.as_str() != Some(""))
                .filter(|v| seen.insert(v.to_string()))
                .collect();
            if items.is_empty() {
                Value::Null
            } else {
                Value::Array(items)
            }
        }
        (_, Value::String(s)) => Value::String(s.trim().to_string()),
        _ => value.clone(),
    }
}

/// CRM text for a snapshot value of a custom field.
pub(super) fn render(
    custom: &ResolvedCustom,
    dates: &DateRules,
    value: &Value,
) -> Result<String, String> {
    let wrong = |expected: &str| format!("expected {expected} for a {:?} field", custom.field_type);
    match (&custom.field_type, value) {
        (_, Value::Null) => Ok(String::new()),
        (CustomFieldType::Number, Value::Number(n)) => Ok(match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (_, Some(u)) => u.to_string(),
            _ => {
                let f = n.as_f64().ok_or_else(|| wrong("a number"))?;
                match canonical_number(f) {
                    Value::Number(c) if c.is_i64() => c.to_string(),
                    _ => format!("{f}"),
                }
            }
        }),
        (CustomFieldType::Number, _) => Err(wrong("a JSON number")),
        (CustomFieldType::Boolean, Value::Bool(b)) => Ok(b.to_string()),
        (CustomFieldType::Boolean, _) => Err(wrong("a JSON boolean")),
        (CustomFieldType::Date, Value::String(s)) => dates.render(s),
        (CustomFieldType::Date, _) => Err(wrong("a date string")),
        (CustomFieldType::MultiSelect, Value::Array(items)) => {
            let texts: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let texts = texts.ok_or_else(|| wrong("an array of strings"))?;
            Ok(texts.join(&custom.delimiter))
        }
        (CustomFieldType::MultiSelect, Value::String(s)) => Ok(s.clone()),
        (CustomFieldType::MultiSelect, _) => Err(wrong("an array of strings")),
        (_, Value::String(s)) => Ok(s.clone()),
        (_, _) => Err(wrong("a string")),
    }
}
