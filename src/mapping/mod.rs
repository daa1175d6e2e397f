//! The mapping layer: turns a CRM record (raw text per source field) into the canonical
//! [`Snapshot`] quo-sync compares and sends, and turns Quo-side values back into CRM text.
//!
//! Why one place: the forward path (`map`), the Quo side (`from_contact`) and the reverse path
//! (`to_crm_fields`) must agree on every canonical rule, or the planner would see differences
//! that are only formatting and ping-pong edits between the two systems. The rules:
//!
//! * Every value is trimmed; an empty value is absent (`None`, no list item, JSON `null`).
//! * Emails must look like `local@domain` (one `@`, no spaces); the domain part is lower-cased,
//!   the local part is kept as written (it is case-sensitive by RFC 5321).
//! * Phones become E.164 with the `phonenumber` crate, national numbers read in
//!   `mapping.default_region`; a number must parse **and** be valid for its region
//!   (`is_valid`), and must not carry an extension (E.164 cannot hold one).
//! * Custom values are coerced to the type Quo declares for the field: number (plain decimal,
//!   optional `1,234.5` thousands separators, no NaN/inf), boolean (`true/false/yes/no/y/n/1/0/
//!   on/off`, any case), date (RFC 3339, `YYYY-MM-DD`, `YYYY/MM/DD`, or a slashed date in
//!   `mapping.default_region`'s order; a date-only value is the start of that day in
//!   `mapping.timezone`, sent as `YYYY-MM-DDTHH:MM:SS.mmmZ`; see [`dates`]), multi-select (split on
//!   the delimiter, trimmed, empties and duplicates dropped; compared as a set), url
//!   (`http`/`https` only; a bare `example.com` is
//!   accepted as `https://example.com`), address and string as written.
//! * Integral numbers are JSON integers (`85`, not `85.0`) on both sides, so equal values compare
//!   equal whichever system produced them.
//!
//! A [`Mapper`] is built once per cycle from the configuration and the workspace's custom field
//! definitions; building it resolves custom field names to keys and refuses unknown names.
//!
//! Layout: [`mapper`] holds the [`Mapper`] (record → snapshot, contact → snapshot, snapshot →
//! CRM text); [`phones`] the E.164 rules; [`values`] the custom-value coercions; [`dates`] the
//! date rules; [`fingerprint`] the change detector that lets unchanged rows skip mapping.

mod dates;
mod fingerprint;
mod input;
mod lenient;
mod mapper;
mod phones;
mod values;

#[cfg(test)]
mod tests;

use crate::quo::types::{CustomFieldDef, CustomFieldType};

pub use fingerprint::RawFingerprint;
pub use lenient::normalize_contact;
pub use mapper::{Mapper, source_fields};
pub use phones::normalize_phone;

/// The configured mapping cannot work against this workspace; the cycle does not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingConfigError {
    /// A configured custom field name matches no definition in the workspace.
    #[error(
        "mapping.custom_fields[{index}].name: the Quo workspace has no custom field named {name:?}; available: {}",
        if .available.is_empty() { "(none)".to_string() } else { .available.join(", ") }
    )]
    UnknownCustomField {
        /// Position in `mapping.custom_fields`.
        index: usize,
        /// The configured name.
        name: String,
        /// Names the workspace defines.
        available: Vec<String>,
    },
    /// Two entries of `mapping.custom_fields` resolve to the same Quo field.
    #[error(
        "mapping.custom_fields[{index}].name: {name:?} is the same Quo field (key {key:?}) as mapping.custom_fields[{first}]"
    )]
    DuplicateCustomField {
        /// Position of the second entry.
        index: usize,
        /// Its configured name.
        name: String,
        /// The Quo key both resolve to.
        key: String,
        /// Position of the first entry.
        first: usize,
    },
    /// `mapping.default_region` is not a region the phone library knows.
    #[error(
        "mapping.default_region: {region:?} is not a known ISO 3166 region code (expected e.g. \"US\" or \"GB\")"
    )]
    BadRegion {
        /// The configured region.
        region: String,
    },
    /// `mapping.timezone` is not an IANA time zone name.
    #[error(
        "mapping.timezone: {timezone:?} is not an IANA time zone name (expected e.g. \"UTC\", \"America/New_York\" or \"Europe/London\")"
    )]
    BadTimezone {
        /// The configured zone.
        timezone: String,
    },
    /// Two email (or two phone) mappings use the same label, so Quo items could not be told apart.
    #[error("{key}: label {label:?} is used twice; each mapped column needs its own label")]
    DuplicateLabel {
        /// `mapping.emails[i].label` or `mapping.phones[i].label`.
        key: String,
        /// The repeated label.
        label: String,
    },
    /// The Quo field's type is one this version cannot write (decision 8: kept, never written).
    #[error(
        "mapping.custom_fields[{index}].name: the Quo field {name:?} has type {field_type:?}, which quo-sync cannot write; remove it from the mapping"
    )]
    UnwritableCustomField {
        /// Position in `mapping.custom_fields`.
        index: usize,
        /// The configured name.
        name: String,
        /// The type's wire name.
        field_type: String,
    },
    /// A computed entry's expression cannot be used (the configuration check refuses it too).
    #[error("{key}: {message}")]
    BadExpression {
        /// The entry's key (`mapping.company`).
        key: String,
        /// What is wrong, with the position.
        message: String,
    },
    /// A multi-select delimiter is empty.
    #[error("mapping.custom_fields[{index}].delimiter: must not be empty (default is \";\")")]
    EmptyDelimiter {
        /// Position in `mapping.custom_fields`.
        index: usize,
    },
}

/// A value that cannot be mapped; the record is quarantined with this message and its location.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field {field:?}: value {value:?}: {reason}")]
pub struct MappingError {
    /// The source field (CSV column, REST field).
    pub field: String,
    /// The offending value as written.
    pub value: String,
    /// What was expected.
    pub reason: String,
}

/// The custom fields of the example workspace that `config/quo-sync.toml` maps (and tests use).
pub fn example_workspace_defs() -> Vec<CustomFieldDef> {
    let def = |name: &str, key: &str, field_type| CustomFieldDef {
        name: name.into(),
        key: key.into(),
        field_type,
    };
    vec![
        def("Lead Score", "lead-score", CustomFieldType::Number),
        def("VIP", "vip", CustomFieldType::Boolean),
        def("Renewal Date", "renewal-date", CustomFieldType::Date),
        def("Tags", "tags", CustomFieldType::MultiSelect),
        def("Website", "website", CustomFieldType::Url),
        def(
            "Mailing Address",
            "mailing-address",
            CustomFieldType::Address,
        ),
        def("Notes", "notes", CustomFieldType::String),
    ]
}
