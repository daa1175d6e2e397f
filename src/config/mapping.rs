//! `[mapping]`: which CRM field becomes which Quo field (the entries' computed form lives in
//! `scope.rs`).

use serde::{Deserialize, Serialize};

use super::FieldSource;

/// One email or phone column and the label it gets in Quo.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LabeledFieldMapping {
    /// Source field (CSV column), or `{ expr = "..." }`.
    pub field: FieldSource,
    /// Quo label (`name`), e.g. `work`.
    pub label: String,
}

/// One custom field, named as in Quo.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomFieldMapping {
    /// The custom field's name in Quo (resolved to its key each cycle).
    pub name: String,
    /// Source field (CSV column), or `{ expr = "..." }`.
    pub field: FieldSource,
    /// Separator for multi-select values, default `;`.
    #[serde(default)]
    pub delimiter: Option<String>,
}

/// `[mapping]`: source fields → Quo fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingConfig {
    /// Region for national-format phone numbers (ISO 3166 code), default `US`.
    pub default_region: String,
    /// Source field for `firstName` (or `{ expr = "..." }`, as every entry may).
    pub first_name: Option<FieldSource>,
    /// Source field for `lastName`.
    pub last_name: Option<FieldSource>,
    /// Source field for `company`.
    pub company: Option<FieldSource>,
    /// Source field for `role`.
    pub role: Option<FieldSource>,
    /// Email fields with their labels.
    pub emails: Vec<LabeledFieldMapping>,
    /// Phone fields with their labels.
    pub phones: Vec<LabeledFieldMapping>,
    /// Custom fields by Quo name.
    pub custom_fields: Vec<CustomFieldMapping>,
    /// IANA time zone in which a date-only value is a day (quo-api.md decision 9), default `UTC`.
    pub timezone: String,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            default_region: "US".into(),
            first_name: None,
            last_name: None,
            company: None,
            role: None,
            emails: Vec::new(),
            phones: Vec::new(),
            custom_fields: Vec::new(),
            timezone: "UTC".into(),
        }
    }
}
