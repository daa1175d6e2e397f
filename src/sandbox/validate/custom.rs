//! Custom field items of a contact body, against the workspace's definitions: each item names
//! a defined field (by `key` or item `id`), its value fits the field's type (dates normalised
//! to UTC milliseconds) and, for a multi-select, its options. Apart from the default fields'
//! walk because it is the one part of a body that depends on the workspace, not on the spec.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::super::error::{FieldError, Refusal};
use super::super::state::{FieldDef, FieldType, StoredContact, iso_ms};
use super::formats::looks_like_url;
use super::{CustomInput, Problems, unknown_keys};

pub(super) fn custom_fields(
    p: &mut Problems,
    v: &Value,
    defs: &[FieldDef],
    existing: Option<&StoredContact>,
    app: bool,
) -> Vec<CustomInput> {
    let Some(arr) = v.as_array() else {
        p.bad(
            "/customFields",
            "customFields must be an array",
            Some(v),
            "array",
        );
        return Vec::new();
    };
    arr.iter()
        .enumerate()
        .filter_map(|(i, item)| custom_item(p, i, item, defs, existing, app))
        .collect()
}

/// Item `i` of `customFields`: a defined field and a value of its type, or `None` with the
/// problem recorded.
fn custom_item(
    p: &mut Problems,
    i: usize,
    item: &Value,
    defs: &[FieldDef],
    existing: Option<&StoredContact>,
    app: bool,
) -> Option<CustomInput> {
    let ipath = format!("/customFields/{i}");
    let Some(obj) = item.as_object() else {
        p.bad(
            &ipath,
            "item must be an object with key and value",
            Some(item),
            "object",
        );
        return None;
    };
    // `name` and `type` are accepted (a client may echo a response item) and ignored.
    unknown_keys(p, obj, &ipath, &["key", "id", "value", "name", "type"]);
    let key = item_key(p, &ipath, obj, existing)?;
    let Some(def) = defs.iter().find(|d| d.key == key) else {
        p.invalid(
            &format!("{ipath}/key"),
            format!("unknown custom field key '{key}'"),
            obj.get("key"),
            "string",
        );
        return None;
    };
    let vpath = format!("{ipath}/value");
    let Some(raw) = obj.get("value") else {
        p.bad(&vpath, "value is required", None, &def.type_name);
        return None;
    };
    if def.ftype == FieldType::Other {
        if app {
            let value = (!raw.is_null()).then(|| raw.clone());
            return Some(CustomInput { key, value });
        }
        p.invalid(
            &format!("{ipath}/key"),
            format!(
                "custom field '{key}' has type '{}', which cannot be written through the API",
                def.type_name
            ),
            obj.get("key"),
            &def.type_name,
        );
        return None;
    }
    match custom_value(def.ftype, raw) {
        Ok(value) => {
            if outside_options(p, def, &vpath, value.as_ref()) {
                return None;
            }
            Some(CustomInput { key, value })
        }
        Err(msg) => {
            p.invalid(&vpath, msg, Some(raw), &def.type_name);
            None
        }
    }
}

/// The field an item names: its `key`, or (a PATCH) the key of the contact's item with its
/// `id`; `None` with the problem recorded.
fn item_key(
    p: &mut Problems,
    ipath: &str,
    obj: &serde_json::Map<String, Value>,
    existing: Option<&StoredContact>,
) -> Option<String> {
    match (obj.get("key"), obj.get("id")) {
        (Some(Value::String(k)), _) => Some(k.clone()),
        (Some(other), _) => {
            p.invalid(
                &format!("{ipath}/key"),
                "key must be a string",
                Some(other),
                "string",
            );
            None
        }
        (None, Some(Value::String(id))) => {
            let found = existing.and_then(|c| c.custom.iter().find(|cv| &cv.id == id));
            match found {
                Some(cv) => Some(cv.key.clone()),
                None => {
                    p.invalid(
                        &format!("{ipath}/id"),
                        "no custom field item with this id on the contact",
                        obj.get("id"),
                        "string",
                    );
                    None
                }
            }
        }
        (None, _) => {
            p.bad(&format!("{ipath}/key"), "key is required", None, "string");
            None
        }
    }
}

/// Records (`0801400`, path `…/value/{j}`) every multi-select value outside the field's
/// options; `true` if there was one.
fn outside_options(p: &mut Problems, def: &FieldDef, vpath: &str, value: Option<&Value>) -> bool {
    let (Some(options), Some(Value::Array(values))) = (&def.options, value) else {
        return false;
    };
    let mut refused = false;
    for (j, v) in values.iter().enumerate() {
        let s = v.as_str().unwrap_or_default();
        if !options.iter().any(|o| o == s) {
            refused = true;
            let e = FieldError::new(
                &format!("{vpath}/{j}"),
                format!(
                    "'{s}' is not an option of custom field '{}' (options: {})",
                    def.key,
                    options.join(", ")
                ),
                Some(v),
                "multi-select",
            )
            .tagged(Refusal::OutsideOptions);
            p.push(false, e);
        }
    }
    refused
}

/// Checks and normalises one custom field value for its type (dates become UTC, ms precision).
fn custom_value(ftype: FieldType, v: &Value) -> Result<Option<Value>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let ok = match ftype {
        FieldType::Number => v.is_number(),
        FieldType::Boolean => v.is_boolean(),
        FieldType::String | FieldType::Address => v.is_string(),
        FieldType::Url => v.as_str().is_some_and(looks_like_url),
        FieldType::MultiSelect => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        FieldType::Other => true,
        FieldType::Date => {
            let parsed = v
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok());
            return match parsed {
                Some(d) => Ok(Some(Value::String(iso_ms(&d.with_timezone(&Utc))))),
                None => Err(
                    "value must be an ISO-8601 date-time string, e.g. 2024-09-11T04:00:00.000Z"
                        .into(),
                ),
            };
        }
    };
    if ok {
        Ok(Some(v.clone()))
    } else {
        let expected = match ftype {
            FieldType::Number => "a number",
            FieldType::Boolean => "a boolean",
            FieldType::Url => "a URL string",
            FieldType::MultiSelect => "an array of strings",
            _ => "a string",
        };
        Err(format!(
            "value of a {} custom field must be {expected} or null",
            ftype.as_str()
        ))
    }
}
