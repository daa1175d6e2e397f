//! The day-one keys: how new records meet the contacts already in the workspace
//! (`sync.match_existing`, `sync.adopt_sources`) and how contacts made in Quo become CRM records
//! (`reverse.create_in_crm`, `reverse.new_record_id`, `reverse.quo_id_field`), and their checks.

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError};

/// What makes a contact already in Quo a record's, before the record is created
/// (`sync.match_existing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchExisting {
    /// Any phone equal in E.164, or any email equal after trimming and lower-casing (default).
    #[default]
    PhoneOrEmail,
    /// Phones only.
    Phone,
    /// Emails only.
    Email,
    /// No matching: every new record is created (the workspace is not listed for it).
    Off,
}

impl MatchExisting {
    /// Whether phones match.
    pub fn phones(self) -> bool {
        matches!(self, MatchExisting::PhoneOrEmail | MatchExisting::Phone)
    }

    /// Whether emails match.
    pub fn emails(self) -> bool {
        matches!(self, MatchExisting::PhoneOrEmail | MatchExisting::Email)
    }

    /// Whether records are matched at all.
    pub fn is_on(self) -> bool {
        self != MatchExisting::Off
    }
}

/// Sources of Quo's native integrations: their contacts are read-only in Quo, so they are never
/// adopted or written (`sync.adopt_sources` may not name them).
pub const NATIVE_SOURCES: &[&str] = &["hubspot", "salesforce", "google-people", "outlook"];

impl Config {
    /// `sync.adopt_sources` and the `reverse.create_in_crm` keys: nothing quo-sync may not write
    /// is named adoptable, and a new record's id can carry the contact it came from.
    pub(super) fn validate_day_one(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::BadValue {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        for (i, source) in self.sync.adopt_sources.iter().enumerate() {
            let key = format!("sync.adopt_sources[{i}]");
            let trimmed = source.trim();
            if trimmed.is_empty() {
                return Err(bad(
                    &key,
                    "expected a source label such as \"zapier\"".into(),
                ));
            }
            if NATIVE_SOURCES.contains(&trimmed.to_ascii_lowercase().as_str()) {
                return Err(bad(
                    &key,
                    format!(
                        "{trimmed:?} is a Quo native integration: its contacts are read-only in Quo and are never adopted"
                    ),
                ));
            }
            if trimmed == self.quo.source {
                return Err(bad(
                    &key,
                    format!(
                        "{trimmed:?} is quo.source itself: those contacts are already quo-sync's"
                    ),
                ));
            }
        }
        let template = &self.reverse.new_record_id;
        if !template.contains("{quo_id}") || template.chars().any(char::is_control) {
            return Err(bad(
                "reverse.new_record_id",
                format!(
                    "expected a pattern holding {{quo_id}}, such as \"quo-{{quo_id}}\", got {template:?}"
                ),
            ));
        }
        if self.reverse.create_in_crm
            && self.source.kind == super::SourceKind::Rest
            && self
                .source
                .rest
                .as_ref()
                .is_none_or(|rest| !rest.contains_key("create"))
        {
            return Err(bad(
                "source.rest.create",
                "required with reverse.create_in_crm = true: how the CRM creates a record (method, path, id_pointer)".into(),
            ));
        }
        if let Some(field) = &self.reverse.quo_id_field
            && field.trim().is_empty()
        {
            return Err(bad(
                "reverse.quo_id_field",
                "expected the name of a CRM field (CSV column) to hold the Quo contact id".into(),
            ));
        }
        Ok(())
    }
}
