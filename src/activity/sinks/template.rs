//! Body and path templates of `[activity.rest]`: JSON written as TOML whose strings point into
//! the activity document.
//!
//! A string that is exactly `"{/pointer}"` becomes the value there, with its JSON type (a number
//! stays a number, an absent value is `null`, and with `omit_nulls` its key is left out); inside
//! longer text, `{/pointer}` is replaced by the value's text (`"Call {/direction}"`). Paths take
//! `{activity_id}`, `{record_id}` and `{crm_id}`, percent-encoded.

use serde_json::{Map, Value};

use crate::quo::encode_path_segment as encode;

/// The value's text: strings as they are, `null` as nothing, anything else as JSON.
fn as_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The pointer of a string that is one placeholder and nothing else.
fn whole_placeholder(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    (inner.starts_with('/') && !inner.contains(['{', '}'])).then_some(inner)
}

/// Replaces every `{/pointer}` inside `s` by its text.
fn interpolate(s: &str, doc: &Value) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find("{/") {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        let pointer = &rest[open + 1..open + close];
        out.push_str(&as_text(doc.pointer(pointer)));
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Fills `template` from `doc`.
pub fn render(template: &Value, doc: &Value, omit_nulls: bool) -> Value {
    match template {
        Value::String(s) => match whole_placeholder(s) {
            Some(pointer) => doc.pointer(pointer).cloned().unwrap_or(Value::Null),
            None => Value::String(interpolate(s, doc)),
        },
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, value) in map {
                let filled = render(value, doc, omit_nulls);
                if omit_nulls && filled.is_null() {
                    continue;
                }
                out.insert(key.clone(), filled);
            }
            // `Owner = { id = "{/owner_id}" }` without an owner is left out, not sent as `{}`.
            if omit_nulls && out.is_empty() && !map.is_empty() {
                return Value::Null;
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| render(i, doc, omit_nulls)).collect())
        }
        other => other.clone(),
    }
}

/// Fills `{activity_id}`, `{record_id}` and `{crm_id}` in a path.
pub fn path(template: &str, activity_id: &str, record_id: &str, crm_id: Option<&str>) -> String {
    template
        .replace("{activity_id}", &encode(activity_id))
        .replace("{record_id}", &encode(record_id))
        .replace("{crm_id}", &encode(crm_id.unwrap_or_default()))
}

/// Fills `{activity_id}` (and `{email}`) inside a JSON body's strings.
pub fn fill_strings(template: &Value, key: &str, value: &str) -> Value {
    match template {
        Value::String(s) => Value::String(s.replace(key, value)),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_strings(v, key, value)))
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| fill_strings(i, key, value)).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_keep_their_type_or_become_text() {
        let doc = json!({"duration_s": 61, "record_id": "003X", "summary": null, "direction": "incoming"});
        let template = json!({
            "WhoId": "{/record_id}",
            "CallDurationInSeconds": "{/duration_s}",
            "Subject": "Call ({/direction}, {/duration_s}s)",
            "Description": "{/summary}",
            "Fixed": true,
            "Owner": {"id": "{/summary}"},
            "data": [{"nested": "{/record_id}"}],
        });
        let out = render(&template, &doc, true);
        assert_eq!(out["CallDurationInSeconds"], 61);
        assert_eq!(out["Subject"], "Call (incoming, 61s)");
        assert!(out.get("Description").is_none(), "omitted null");
        assert!(
            out.get("Owner").is_none(),
            "an object left empty is omitted too"
        );
        assert_eq!(out["data"][0]["nested"], "003X");
        assert_eq!(render(&template, &doc, false)["Description"], Value::Null);
        assert_eq!(
            path("/x/{crm_id}?q=({activity_id})", "AC 1", "r", Some("00T/1")),
            "/x/00T%2F1?q=(AC%201)"
        );
    }
}
