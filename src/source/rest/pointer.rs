//! Editing JSON records in place: values typed like the CRM's, nested writes by JSON pointer,
//! and labelled array items replaced without touching their neighbours.

use serde_json::{Map, Value};

use super::config::ArrayFieldConfig;
use super::records::{json_type, scalar_text};

/// The new value typed like the current one: numbers and booleans stay numbers and booleans,
/// `;`-joined lists become arrays again; everything else (and PATCH without a fetched record)
/// is a string. An empty string stays an empty string (it clears the field).
pub(super) fn typed_like(current: Option<&Value>, text: &str) -> Value {
    match current {
        Some(Value::Number(_)) if !text.is_empty() => text
            .parse::<i64>()
            .map(Value::from)
            .ok()
            .or_else(|| {
                text.parse::<f64>()
                    .ok()
                    .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
            })
            .unwrap_or_else(|| Value::String(text.to_string())),
        Some(Value::Bool(_)) if text == "true" || text == "false" => Value::Bool(text == "true"),
        Some(Value::Array(_)) => Value::Array(
            text.split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        _ => Value::String(text.to_string()),
    }
}

pub(super) fn pointer_tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("{pointer:?} is not a JSON pointer"));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// Writes `value` at `pointer`, creating objects on the way (`null` or missing parents).
pub fn set_pointer(root: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    let tokens = pointer_tokens(pointer)?;
    let Some((last, parents)) = tokens.split_last() else {
        *root = value;
        return Ok(());
    };
    let mut current = root;
    for token in parents {
        current = child_mut(current, token, pointer)?;
    }
    if current.is_null() {
        *current = Value::Object(Map::new());
    }
    match current {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items[i] = value;
                Ok(())
            }
            _ if last == "-" => {
                items.push(value);
                Ok(())
            }
            _ => Err(format!(
                "cannot write {pointer:?}: {last:?} is not an index of the array"
            )),
        },
        other => Err(format!(
            "cannot write {pointer:?}: the parent is {}",
            json_type(other)
        )),
    }
}

pub(super) fn child_mut<'a>(
    current: &'a mut Value,
    token: &str,
    pointer: &str,
) -> Result<&'a mut Value, String> {
    if current.is_null() {
        *current = Value::Object(Map::new());
    }
    match current {
        Value::Object(map) => Ok(map
            .entry(token.to_string())
            .or_insert_with(|| Value::Object(Map::new()))),
        Value::Array(items) => {
            let len = items.len();
            token
                .parse::<usize>()
                .ok()
                .and_then(move |i| items.get_mut(i))
                .ok_or_else(|| {
                    format!(
                        "cannot write {pointer:?}: {token:?} is not an index of an array of {len}"
                    )
                })
        }
        other => Err(format!(
            "cannot write {pointer:?}: {token:?} is inside {}",
            json_type(other)
        )),
    }
}

/// Sets the value of the item labelled `label` in the array (adding it if missing, removing it
/// when `value` is empty), keeping every other item as it was.
pub(super) fn set_array_item(
    record: &mut Value,
    array: &ArrayFieldConfig,
    label: &str,
    value: &str,
) -> Result<(), String> {
    if record.pointer(&array.pointer).is_none_or(Value::is_null) {
        set_pointer(record, &array.pointer, Value::Array(Vec::new()))?;
    }
    let Some(Value::Array(items)) = record.pointer_mut(&array.pointer) else {
        return Err(format!(
            "{:?} is not an array in the CRM record",
            array.pointer
        ));
    };
    let matches = |item: &Value| {
        let item_label = item
            .get(&array.label_key)
            .and_then(scalar_text)
            .filter(|l| !l.trim().is_empty())
            .unwrap_or_else(|| array.default_label.clone());
        item_label.trim() == label
    };
    let position = items.iter().position(matches);
    match (position, value.is_empty()) {
        (Some(i), true) => {
            items.remove(i);
        }
        (Some(i), false) => match &mut items[i] {
            Value::Object(map) => {
                map.insert(array.value_key.clone(), Value::String(value.to_string()));
            }
            other => {
                return Err(format!(
                    "{}/{i} is {}, expected an object",
                    array.pointer,
                    json_type(other)
                ));
            }
        },
        (None, true) => {}
        (None, false) => {
            let mut item = Map::new();
            item.insert(array.label_key.clone(), Value::String(label.to_string()));
            item.insert(array.value_key.clone(), Value::String(value.to_string()));
            items.push(Value::Object(item));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    #[test]
    fn array_items_are_replaced_by_label() {
        let array = ArrayFieldConfig {
            pointer: "/emails".into(),
            label_key: "label".into(),
            value_key: "value".into(),
            prefix: "email".into(),
            default_label: "other".into(),
        };
        let mut v = json!({"emails": [{"label": "work", "value": "a@x", "primary": true}, {"label": "home", "value": "b@x"}]});
        set_array_item(&mut v, &array, "work", "new@x").unwrap();
        set_array_item(&mut v, &array, "other", "c@x").unwrap();
        set_array_item(&mut v, &array, "home", "").unwrap();
        assert_eq!(
            v,
            json!({"emails": [{"label": "work", "value": "new@x", "primary": true}, {"label": "other", "value": "c@x"}]})
        );
        let mut v = json!({});
        set_array_item(&mut v, &array, "work", "a@x").unwrap();
        assert_eq!(v, json!({"emails": [{"label": "work", "value": "a@x"}]}));
    }

    #[test]
    fn set_pointer_creates_nested_objects() {
        let mut v = json!({"keep": 1});
        set_pointer(&mut v, "/properties/firstname", json!("Ada")).unwrap();
        set_pointer(&mut v, "/a~1b/c~0d", json!(2)).unwrap();
        assert_eq!(
            v,
            json!({"keep": 1, "properties": {"firstname": "Ada"}, "a/b": {"c~d": 2}})
        );
        let mut v = json!({"x": "text"});
        assert!(set_pointer(&mut v, "/x/y", json!(1)).is_err());
    }

    #[test]
    fn typed_like_keeps_json_types() {
        assert_eq!(typed_like(Some(&json!(3)), "42"), json!(42));
        assert_eq!(typed_like(Some(&json!(3)), "4.5"), json!(4.5));
        assert_eq!(typed_like(Some(&json!(false)), "true"), json!(true));
        assert_eq!(typed_like(Some(&json!(["a"])), "x; y"), json!(["x", "y"]));
        assert_eq!(typed_like(None, "42"), json!("42"));
        assert_eq!(typed_like(Some(&json!(3)), ""), json!(""));
    }
}
