//! Where a record sits in a list answer: the records array, the id, the last-modified time,
//! named fields (`fields`) and labelled arrays flattened into `<prefix>.<label>` fields
//! (`arrays`), all JSON pointers checked at load.

use serde::Deserialize;

use super::{RestConfigError, RestSourceConfig};

/// One array of labelled values flattened into `<prefix>.<label>` fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrayFieldConfig {
    /// JSON pointer to the array within a record (`/emails`).
    pub pointer: String,
    /// Key of the label in each item (`label`).
    pub label_key: String,
    /// Key of the value in each item (`value`).
    pub value_key: String,
    /// Field name prefix (`email` → `email.work`).
    pub prefix: String,
    /// Label for items without one, default `other`.
    #[serde(default = "default_label")]
    pub default_label: String,
}

fn default_label() -> String {
    "other".into()
}

impl RestSourceConfig {
    /// Where records, their ids, fields and arrays sit in a list answer: JSON pointers, and
    /// no empty name.
    pub(super) fn validate_records(
        &self,
        pointer: &dyn Fn(&str, &str, bool) -> Result<(), RestConfigError>,
    ) -> Result<(), RestConfigError> {
        pointer("records_pointer", &self.records_pointer, true)?;
        pointer("id_pointer", &self.id_pointer, false)?;
        if let Some(p) = &self.updated_at_pointer {
            pointer("updated_at_pointer", p, false)?;
        }
        for (name, p) in &self.fields {
            if name.trim().is_empty() {
                return Err(RestConfigError::new("fields", "a field name is empty"));
            }
            pointer(&format!("fields.{name}"), p, false)?;
        }
        for (i, array) in self.arrays.iter().enumerate() {
            pointer(&format!("arrays[{i}].pointer"), &array.pointer, false)?;
            for (key, value) in [
                ("prefix", &array.prefix),
                ("label_key", &array.label_key),
                ("value_key", &array.value_key),
            ] {
                if value.trim().is_empty() {
                    return Err(RestConfigError::new(
                        format!("arrays[{i}].{key}"),
                        "must not be empty",
                    ));
                }
            }
        }
        Ok(())
    }
}
