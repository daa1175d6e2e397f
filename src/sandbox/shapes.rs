//! Tolerant-reader shapes: response bodies that are legal (or plausible) but unusual, on demand.
//!
//! Quo's spec requires only `name` on custom-field items in responses (`key` and `id` are
//! optional), and its examples show number and boolean values as strings (`"424242"`,
//! `"false"`). The spec's schemas do not allow `null` entries in `emails`, `phoneNumbers` or
//! `customFields`, nor `null` item names, nor types outside its enum; `quo-api.md` (design
//! decision 8) still asks clients to accept them, because a public API grows. This module
//! rewrites rendered contacts into those shapes when switched on through the
//! `response_shapes` setting; the stored contact never changes, and the admin routes always
//! show the plain shape. The unknown type is real workspace data instead (a `rating` field),
//! see `SandboxHandle::set_response_shapes`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which unusual response shapes the `/v1` routes (and webhook payloads) use. All off by default.
///
/// JSON (`POST /_sandbox/settings`):
/// `{"response_shapes":{"string_values":true,"keyless_custom_fields":true,"null_entries":true,"unknown_field_type":true,"whole_seconds":true}}`
/// (missing keys are off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseShapes {
    /// `number` and `boolean` custom-field values as JSON strings: `42` → `"42"`, `false` → `"false"`.
    pub string_values: bool,
    /// Custom-field items without `key` (only `name`, `id`, `type`, `value`).
    pub keyless_custom_fields: bool,
    /// A `null` entry first in `emails`, `phoneNumbers` and `customFields`, and email/phone
    /// items whose stored name is empty rendered with `"name": null`.
    pub null_entries: bool,
    /// The workspace has a custom field of a type outside the spec's enum: `Rating`
    /// (`key` `rating`, `type` `rating`); switching on defines it and gives every existing
    /// contact the value `4`. It stays defined when switched off (it is workspace data).
    pub unknown_field_type: bool,
    /// `createdAt` and `updatedAt` in whole seconds, as the spec's examples show them
    /// (`"2022-01-01T00:00:00Z"`), instead of milliseconds.
    pub whole_seconds: bool,
}

impl ResponseShapes {
    /// Every shape on.
    pub fn all() -> ResponseShapes {
        ResponseShapes {
            string_values: true,
            keyless_custom_fields: true,
            null_entries: true,
            unknown_field_type: true,
            whole_seconds: true,
        }
    }

    /// Whether a rendered contact needs rewriting.
    fn rewrites(&self) -> bool {
        self.string_values || self.keyless_custom_fields || self.null_entries || self.whole_seconds
    }

    /// Rewrites one rendered v1 contact in place.
    pub(crate) fn apply(&self, contact: &mut Value) {
        if !self.rewrites() {
            return;
        }
        if self.whole_seconds {
            for stamp in ["createdAt", "updatedAt"] {
                let whole = contact
                    .get(stamp)
                    .and_then(Value::as_str)
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.to_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string());
                if let Some(whole) = whole {
                    contact[stamp] = Value::String(whole);
                }
            }
        }
        if let Some(items) = contact
            .get_mut("customFields")
            .and_then(Value::as_array_mut)
        {
            for item in items.iter_mut() {
                self.custom_item(item);
            }
            if self.null_entries {
                items.insert(0, Value::Null);
            }
        }
        if self.null_entries
            && let Some(df) = contact.get_mut("defaultFields")
        {
            for list in ["emails", "phoneNumbers"] {
                if let Some(items) = df.get_mut(list).and_then(Value::as_array_mut) {
                    for item in items.iter_mut() {
                        if item.get("name").and_then(Value::as_str) == Some("") {
                            item["name"] = Value::Null;
                        }
                    }
                    items.insert(0, Value::Null);
                }
            }
        }
    }

    fn custom_item(&self, item: &mut Value) {
        let Some(obj) = item.as_object_mut() else {
            return;
        };
        if self.keyless_custom_fields {
            obj.remove("key");
        }
        if self.string_values {
            let text = match obj.get("value") {
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::Bool(b)) => Some(b.to_string()),
                _ => None,
            };
            let typed = matches!(
                obj.get("type").and_then(Value::as_str),
                Some("number" | "boolean")
            );
            if let (Some(text), true) = (text, typed) {
                obj.insert("value".into(), Value::String(text));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rewrites_only_what_is_switched_on() {
        let plain = json!({
            "defaultFields": {"emails": [{"id": "e1", "name": "", "value": "a@example.com"}], "phoneNumbers": []},
            "customFields": [
                {"name": "Lead Score", "key": "lead-score", "id": "c1", "type": "number", "value": 424242},
                {"name": "VIP", "key": "vip", "id": "c2", "type": "boolean", "value": false},
                {"name": "Notes", "key": "notes", "id": "c3", "type": "string", "value": "7"},
            ],
        });
        let mut v = plain.clone();
        ResponseShapes::default().apply(&mut v);
        assert_eq!(v, plain);
        ResponseShapes::all().apply(&mut v);
        assert_eq!(v["customFields"][0], Value::Null);
        assert_eq!(v["customFields"][1]["value"], "424242");
        assert_eq!(v["customFields"][2]["value"], "false");
        assert_eq!(v["customFields"][3]["value"], "7");
        assert!(v["customFields"][1].get("key").is_none());
        assert_eq!(v["defaultFields"]["emails"][0], Value::Null);
        assert_eq!(v["defaultFields"]["emails"][1]["name"], Value::Null);
        assert_eq!(v["defaultFields"]["phoneNumbers"], json!([null]));
    }

    #[test]
    fn whole_seconds_drops_the_milliseconds_of_both_stamps() {
        let mut v = json!({"createdAt": "2026-12-06T12:00:00.999Z", "updatedAt": "2026-12-06T12:00:01.001Z"});
        ResponseShapes {
            whole_seconds: true,
            ..Default::default()
        }
        .apply(&mut v);
        assert_eq!(
            v,
            json!({"createdAt": "2026-12-06T12:00:00Z", "updatedAt": "2026-12-06T12:00:01Z"})
        );
    }
}
