//! Domain vocabulary shared by every layer: who a record is (`ExternalId`), which Quo contact it
//! became (`QuoContactId`), and what both sides agreed it looks like (`Snapshot`).
//!
//! The snapshot is deliberately Quo-shaped but free of Quo's item ids, so it can be computed from
//! either side (a CRM row through the mapping, a Quo contact through `Snapshot::from_contact`)
//! and compared field by field for the planner and the three-way merge.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The CRM's id for a record; sent to Quo as `externalId` (1–75 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExternalId(String);

/// Why a string is not a usable external id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExternalIdError {
    /// Blank after trimming.
    #[error("the id is empty")]
    Empty,
    /// Quo caps `externalId` at 75 characters.
    #[error("the id {0:?} is longer than 75 characters")]
    TooLong(String),
    /// Control characters (tabs, line breaks, NUL, …) break the ledger index and logs; the
    /// payload is the id with them escaped (`c\u{1}2`), safe to show and store.
    #[error("the id \"{0}\" contains a control character")]
    ControlCharacter(String),
}

impl ExternalId {
    /// Parses a CRM id: trimmed, non-empty, at most 75 characters, no control characters.
    pub fn parse(raw: &str) -> Result<Self, ExternalIdError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ExternalIdError::Empty);
        }
        if trimmed.chars().count() > 75 {
            return Err(ExternalIdError::TooLong(trimmed.to_string()));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(ExternalIdError::ControlCharacter(
                trimmed.escape_debug().to_string(),
            ));
        }
        Ok(Self(trimmed.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExternalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Quo's id for a contact, as returned by `POST /v1/contacts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QuoContactId(pub String);

impl QuoContactId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QuoContactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One labelled email address or phone number (`{name, value}` in Quo's terms).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Labeled {
    /// The label, e.g. `work` or `mobile`.
    pub name: String,
    /// The address or E.164 number.
    pub value: String,
}

/// The canonical form of the fields quo-sync manages for one contact.
///
/// Empty strings are normalised to `None` and arrays keep the mapping's order, so two snapshots
/// are equal exactly when a sync would send nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// `defaultFields.firstName`.
    pub first_name: Option<String>,
    /// `defaultFields.lastName`.
    pub last_name: Option<String>,
    /// `defaultFields.company`.
    pub company: Option<String>,
    /// `defaultFields.role`.
    pub role: Option<String>,
    /// `defaultFields.emails`, without Quo item ids.
    pub emails: Vec<Labeled>,
    /// `defaultFields.phoneNumbers` in E.164, without Quo item ids.
    pub phone_numbers: Vec<Labeled>,
    /// Managed custom fields by Quo key, values already in Quo's JSON type (`null` = empty).
    pub custom_fields: BTreeMap<String, serde_json::Value>,
}

/// Names of the snapshot's fields as they appear in plans, conflicts and logs.
pub mod field {
    /// `defaultFields.firstName`
    pub const FIRST_NAME: &str = "firstName";
    /// `defaultFields.lastName`
    pub const LAST_NAME: &str = "lastName";
    /// `defaultFields.company`
    pub const COMPANY: &str = "company";
    /// `defaultFields.role`
    pub const ROLE: &str = "role";
    /// `defaultFields.emails`
    pub const EMAILS: &str = "emails";
    /// `defaultFields.phoneNumbers`
    pub const PHONE_NUMBERS: &str = "phoneNumbers";
    /// Prefix of a custom field's name in diffs: `custom:<key>`.
    pub const CUSTOM_PREFIX: &str = "custom:";
}

impl Snapshot {
    /// A stable content hash (hex SHA-256 of the canonical JSON).
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("snapshot serialises");
        hex(&Sha256::digest(&json))
    }

    /// Every field as `(name, JSON value)`, the unit of diffs and merges.
    ///
    /// Multi-select values come sorted and deduplicated: Quo does not promise their order, so
    /// two snapshots differing only in order are the same (quo-api.md, decision 8).
    pub fn fields(&self) -> BTreeMap<String, serde_json::Value> {
        use serde_json::json;
        let mut out = BTreeMap::new();
        out.insert(field::FIRST_NAME.to_string(), json!(self.first_name));
        out.insert(field::LAST_NAME.to_string(), json!(self.last_name));
        out.insert(field::COMPANY.to_string(), json!(self.company));
        out.insert(field::ROLE.to_string(), json!(self.role));
        out.insert(field::EMAILS.to_string(), json!(self.emails));
        out.insert(field::PHONE_NUMBERS.to_string(), json!(self.phone_numbers));
        for (key, value) in &self.custom_fields {
            out.insert(format!("{}{key}", field::CUSTOM_PREFIX), set_form(value));
        }
        out
    }

    /// Names of the fields whose values differ between `self` and `other`.
    pub fn changed_fields(&self, other: &Snapshot) -> Vec<String> {
        let mine = self.fields();
        let theirs = other.fields();
        let mut names: Vec<String> = mine
            .keys()
            .chain(theirs.keys())
            .filter(|name| {
                mine.get(*name).unwrap_or(&serde_json::Value::Null)
                    != theirs.get(*name).unwrap_or(&serde_json::Value::Null)
            })
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Sets one field by its diff name; unknown names are ignored and reported as `false`.
    pub fn set_field(&mut self, name: &str, value: serde_json::Value) -> bool {
        fn text(value: serde_json::Value) -> Option<String> {
            value.as_str().map(str::to_string).filter(|s| !s.is_empty())
        }
        match name {
            field::FIRST_NAME => self.first_name = text(value),
            field::LAST_NAME => self.last_name = text(value),
            field::COMPANY => self.company = text(value),
            field::ROLE => self.role = text(value),
            field::EMAILS => self.emails = serde_json::from_value(value).unwrap_or_default(),
            field::PHONE_NUMBERS => {
                self.phone_numbers = serde_json::from_value(value).unwrap_or_default()
            }
            other => match other.strip_prefix(field::CUSTOM_PREFIX) {
                Some(key) => {
                    self.custom_fields.insert(key.to_string(), value);
                }
                None => return false,
            },
        }
        true
    }
}

/// A custom value in comparison form: a list of strings (a multi-select, the only list-valued
/// custom type) is a set, so it is sorted and deduplicated; anything else is as is.
fn set_form(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Array(items) if items.iter().all(serde_json::Value::is_string) => {
            let mut texts: Vec<&str> = items.iter().filter_map(serde_json::Value::as_str).collect();
            texts.sort_unstable();
            texts.dedup();
            serde_json::json!(texts)
        }
        other => other.clone(),
    }
}

/// Lower-case hex of a byte slice.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_id_is_trimmed_and_bounded() {
        assert_eq!(ExternalId::parse("  c-1 ").unwrap().as_str(), "c-1");
        assert_eq!(ExternalId::parse("   "), Err(ExternalIdError::Empty));
        assert!(matches!(
            ExternalId::parse(&"x".repeat(76)),
            Err(ExternalIdError::TooLong(_))
        ));
    }

    #[test]
    fn external_id_refuses_control_characters_naming_the_id_escaped() {
        for raw in ["c\u{1}2", "a\tb", "a\nb", "x\u{7f}", "nul\0"] {
            let err = ExternalId::parse(raw).unwrap_err();
            assert!(
                matches!(err, ExternalIdError::ControlCharacter(_)),
                "{raw:?}"
            );
            let text = err.to_string();
            assert!(!text.chars().any(char::is_control), "{text}");
            assert!(text.contains("control character"), "{text}");
        }
        assert_eq!(
            ExternalId::parse("c\u{1}2").unwrap_err().to_string(),
            "the id \"c\\u{1}2\" contains a control character"
        );
        // Trimmed edges are not part of the id; inner spaces and non-ASCII letters are fine.
        assert_eq!(ExternalId::parse("\tc-1\n").unwrap().as_str(), "c-1");
        assert_eq!(ExternalId::parse("Zoë 7").unwrap().as_str(), "Zoë 7");
    }

    #[test]
    fn changed_fields_names_only_what_differs() {
        let mut a = Snapshot {
            first_name: Some("Ada".into()),
            ..Default::default()
        };
        a.custom_fields
            .insert("vip".into(), serde_json::json!(true));
        let mut b = a.clone();
        assert!(a.changed_fields(&b).is_empty());
        assert_eq!(a.hash(), b.hash());
        b.company = Some("Acme".into());
        b.custom_fields
            .insert("vip".into(), serde_json::json!(false));
        assert_eq!(
            a.changed_fields(&b),
            vec!["company".to_string(), "custom:vip".to_string()]
        );
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn multi_select_compares_as_a_set() {
        let mut a = Snapshot::default();
        a.custom_fields
            .insert("tags".into(), serde_json::json!(["vip", "enterprise"]));
        let mut b = Snapshot::default();
        b.custom_fields.insert(
            "tags".into(),
            serde_json::json!(["enterprise", "vip", "vip"]),
        );
        assert!(a.changed_fields(&b).is_empty());
        assert_eq!(a.fields(), b.fields());
        b.custom_fields
            .insert("tags".into(), serde_json::json!(["enterprise"]));
        assert_eq!(a.changed_fields(&b), vec!["custom:tags".to_string()]);
    }
}
