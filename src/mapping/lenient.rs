//! Reading Quo leniently (quo-api.md, decision 8): the spec lets a response leave out a custom
//! item's `key`, send numbers and booleans as strings (`"424242"`, `"false"`), and carry types
//! this version does not know. [`normalize_contact`] turns such a contact into the strict shape
//! the rest of quo-sync works with, so what is sent back is what the request schema allows.
//!
//! `null` entries in `emails`, `phoneNumbers` and `customFields` and `null` item names are
//! already absorbed by deserialisation (`quo::types`).

use super::values::wire_value;
use crate::quo::types::{Contact, CustomFieldDef};

/// Fills each custom item's missing `key` and `type` from the workspace definitions (matched by
/// name: exact, then case-insensitive, only when unambiguous) and converts string-typed numbers
/// and booleans, and `null`s inside multi-select arrays, to the definition's JSON type.
///
/// Items of unknown type keep their value as read. An item whose key cannot be found keeps
/// `key: None`: it cannot be addressed in a write, so writers must leave it alone.
pub fn normalize_contact(contact: &mut Contact, defs: &[CustomFieldDef]) {
    for item in &mut contact.custom_fields {
        let def = match item.key.as_deref() {
            Some(key) => defs.iter().find(|d| d.key == key),
            None => item
                .name
                .as_deref()
                .and_then(|name| def_by_name(defs, name)),
        };
        if let Some(def) = def {
            if item.key.is_none() {
                item.key = Some(def.key.clone());
            }
            if item.field_type.is_none() {
                item.field_type = Some(def.field_type.clone());
            }
        }
        if let Some(field_type) = item.field_type.as_ref().filter(|t| t.is_writable()) {
            item.value = wire_value(field_type, &item.value);
        }
    }
}

/// The definition named `name`: the one exact match, else the one case-insensitive match.
fn def_by_name<'a>(defs: &'a [CustomFieldDef], name: &str) -> Option<&'a CustomFieldDef> {
    let name = name.trim();
    let unique = |matches: Vec<&'a CustomFieldDef>| (matches.len() == 1).then(|| matches[0]);
    unique(defs.iter().filter(|d| d.name.trim() == name).collect()).or_else(|| {
        unique(
            defs.iter()
                .filter(|d| d.name.trim().to_lowercase() == name.to_lowercase())
                .collect(),
        )
    })
}
