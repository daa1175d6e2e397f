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
//!   on/off`, any case), date (RFC 3339, `YYYY-MM-DD`, `MM/DD/YYYY`, to
//!   `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC), multi-select (split on the delimiter, trimmed, empties
//!   dropped, order kept, duplicates dropped), url (`http`/`https` only; a bare `example.com` is
//!   accepted as `https://example.com`), address and string as written.
//! * Integral numbers are JSON integers (`85`, not `85.0`) on both sides, so equal values compare
//!   equal whichever system produced them.
//!
//! A [`Mapper`] is built once per cycle from the configuration and the workspace's custom field
//! definitions; building it resolves custom field names to keys and refuses unknown names.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Timelike, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{LabeledFieldMapping, MappingConfig};
use crate::domain::{Labeled, Snapshot, field, hex};
use crate::quo::types::{Contact, ContactItem, CustomFieldDef, CustomFieldType};
use crate::source::SourceRecord;

/// Bumped whenever a canonical rule changes, so stored fingerprints stop matching.
const MAPPING_RULES_VERSION: &str = "mapping-rules-v1";

/// Longest phone input handed to the parser; longer text is refused before parsing.
const MAX_PHONE_INPUT: usize = 64;

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
    /// Two email (or two phone) mappings use the same label, so Quo items could not be told apart.
    #[error("{key}: label {label:?} is used twice; each mapped column needs its own label")]
    DuplicateLabel {
        /// `mapping.emails[i].label` or `mapping.phones[i].label`.
        key: String,
        /// The repeated label.
        label: String,
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

/// One configured custom field, resolved to its Quo key and type.
#[derive(Debug, Clone)]
struct ResolvedCustom {
    key: String,
    field: String,
    field_type: CustomFieldType,
    delimiter: String,
}

/// Maps CRM records to snapshots and back; built once per cycle.
#[derive(Debug, Clone)]
pub struct Mapper {
    region: phonenumber::country::Id,
    region_code: String,
    first_name: Option<String>,
    last_name: Option<String>,
    company: Option<String>,
    role: Option<String>,
    emails: Vec<LabeledFieldMapping>,
    phones: Vec<LabeledFieldMapping>,
    custom: Vec<ResolvedCustom>,
    /// Every mapped source field, in a fixed order, for `fingerprint`.
    mapped_fields: Vec<String>,
    /// Digest of the rules, the configuration and the resolved definitions.
    config_digest: String,
}

impl Mapper {
    /// Builds the mapper, resolving custom field names (exact, then case-insensitive) to keys.
    pub fn new(
        config: &MappingConfig,
        defs: &[CustomFieldDef],
    ) -> Result<Mapper, MappingConfigError> {
        let region_code = config.default_region.trim().to_ascii_uppercase();
        let region = parse_region(&region_code).ok_or_else(|| MappingConfigError::BadRegion {
            region: config.default_region.clone(),
        })?;
        check_labels("mapping.emails", &config.emails)?;
        check_labels("mapping.phones", &config.phones)?;

        let mut custom: Vec<ResolvedCustom> = Vec::new();
        let mut seen_keys: BTreeMap<String, usize> = BTreeMap::new();
        for (index, mapping) in config.custom_fields.iter().enumerate() {
            let wanted = mapping.name.trim();
            let def = defs
                .iter()
                .find(|d| d.name == wanted)
                .or_else(|| defs.iter().find(|d| d.name.eq_ignore_ascii_case(wanted)))
                .or_else(|| {
                    defs.iter()
                        .find(|d| d.name.to_lowercase() == wanted.to_lowercase())
                })
                .ok_or_else(|| MappingConfigError::UnknownCustomField {
                    index,
                    name: mapping.name.clone(),
                    available: defs.iter().map(|d| d.name.clone()).collect(),
                })?;
            if let Some(first) = seen_keys.get(&def.key) {
                return Err(MappingConfigError::DuplicateCustomField {
                    index,
                    name: mapping.name.clone(),
                    key: def.key.clone(),
                    first: *first,
                });
            }
            seen_keys.insert(def.key.clone(), index);
            let delimiter = mapping.delimiter.clone().unwrap_or_else(|| ";".into());
            if delimiter.is_empty() {
                return Err(MappingConfigError::EmptyDelimiter { index });
            }
            custom.push(ResolvedCustom {
                key: def.key.clone(),
                field: mapping.field.clone(),
                field_type: def.field_type,
                delimiter,
            });
        }

        let mut mapped_fields: Vec<String> = [
            &config.first_name,
            &config.last_name,
            &config.company,
            &config.role,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        mapped_fields.extend(config.emails.iter().map(|m| m.field.clone()));
        mapped_fields.extend(config.phones.iter().map(|m| m.field.clone()));
        mapped_fields.extend(custom.iter().map(|c| c.field.clone()));
        mapped_fields.sort();
        mapped_fields.dedup();

        let mut digest = Sha256::new();
        digest.update(MAPPING_RULES_VERSION.as_bytes());
        digest.update(format!("{config:?}").as_bytes());
        for c in &custom {
            digest.update(format!("{c:?}").as_bytes());
        }
        let config_digest = hex(&digest.finalize());

        Ok(Mapper {
            region,
            region_code,
            first_name: config.first_name.clone(),
            last_name: config.last_name.clone(),
            company: config.company.clone(),
            role: config.role.clone(),
            emails: config.emails.clone(),
            phones: config.phones.clone(),
            custom,
            mapped_fields,
            config_digest,
        })
    }

    /// Maps one CRM record to its canonical snapshot, or names the first field that cannot be.
    pub fn map(&self, record: &SourceRecord) -> Result<Snapshot, MappingError> {
        let get = |name: &str| -> &str {
            record
                .fields
                .get(name)
                .map(|v| v.trim())
                .unwrap_or_default()
        };
        let text = |name: &Option<String>| -> Option<String> {
            name.as_deref()
                .map(get)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let mut snapshot = Snapshot {
            first_name: text(&self.first_name),
            last_name: text(&self.last_name),
            company: text(&self.company),
            role: text(&self.role),
            ..Snapshot::default()
        };
        for mapping in &self.emails {
            let raw = get(&mapping.field);
            if raw.is_empty() {
                continue;
            }
            let value = normalize_email(raw).map_err(|reason| MappingError {
                field: mapping.field.clone(),
                value: raw.to_string(),
                reason,
            })?;
            snapshot.emails.push(Labeled {
                name: mapping.label.clone(),
                value,
            });
        }
        for mapping in &self.phones {
            let raw = get(&mapping.field);
            if raw.is_empty() {
                continue;
            }
            let value =
                normalize_phone_in(raw, self.region, &self.region_code).map_err(|reason| {
                    MappingError {
                        field: mapping.field.clone(),
                        value: raw.to_string(),
                        reason,
                    }
                })?;
            snapshot.phone_numbers.push(Labeled {
                name: mapping.label.clone(),
                value,
            });
        }
        for custom in &self.custom {
            let raw = get(&custom.field);
            let value = coerce(custom, raw).map_err(|reason| MappingError {
                field: custom.field.clone(),
                value: raw.to_string(),
                reason,
            })?;
            snapshot.custom_fields.insert(custom.key.clone(), value);
        }
        Ok(snapshot)
    }

    /// A hash of the mapped fields' raw values (absent = empty) and of the mapping itself.
    ///
    /// Equal fingerprints mean `map` would return the same snapshot, so unchanged rows can skip
    /// mapping. Any change to a mapped value (even whitespace) changes it; unmapped columns and
    /// the last-modified time do not take part.
    pub fn fingerprint(&self, record: &SourceRecord) -> String {
        let mut digest = Sha256::new();
        digest.update(self.config_digest.as_bytes());
        for name in &self.mapped_fields {
            let value = record
                .fields
                .get(name)
                .map(String::as_str)
                .unwrap_or_default();
            // Length-prefixed so that ("ab","c") and ("a","bc") differ.
            digest.update((name.len() as u64).to_le_bytes());
            digest.update(name.as_bytes());
            digest.update((value.len() as u64).to_le_bytes());
            digest.update(value.as_bytes());
        }
        hex(&digest.finalize())
    }

    /// The snapshot of a Quo contact, restricted to the managed fields.
    ///
    /// Emails and phones are kept only for mapped labels (in mapping order, then Quo's order);
    /// they get the same canonical form as `map` gives (email domain lower-cased, phones in
    /// E.164 when they parse). Custom values are Quo's, lightly canonicalised (`""`/`[]` → null,
    /// integral numbers as integers, dates as `…T…000Z`); a managed key Quo lacks is null.
    pub fn from_contact(&self, contact: &Contact) -> Snapshot {
        let defaults = &contact.default_fields;
        let text = |mapped: &Option<String>, value: &Option<String>| -> Option<String> {
            mapped.as_ref()?;
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let items = |mappings: &[LabeledFieldMapping],
                     items: &[ContactItem],
                     canon: &dyn Fn(&str) -> String|
         -> Vec<Labeled> {
            let mut out = Vec::new();
            for mapping in mappings {
                for item in items.iter().filter(|i| i.name == mapping.label) {
                    let Some(value) = item.value.as_deref().map(str::trim) else {
                        continue;
                    };
                    if value.is_empty() {
                        continue;
                    }
                    out.push(Labeled {
                        name: mapping.label.clone(),
                        value: canon(value),
                    });
                }
            }
            out
        };
        let mut snapshot = Snapshot {
            first_name: text(&self.first_name, &defaults.first_name),
            last_name: text(&self.last_name, &defaults.last_name),
            company: text(&self.company, &defaults.company),
            role: text(&self.role, &defaults.role),
            emails: items(&self.emails, &defaults.emails, &|v| {
                normalize_email(v).unwrap_or_else(|_| v.to_string())
            }),
            phone_numbers: items(&self.phones, &defaults.phone_numbers, &|v| {
                normalize_phone_in(v, self.region, &self.region_code)
                    .unwrap_or_else(|_| v.to_string())
            }),
            custom_fields: BTreeMap::new(),
        };
        for custom in &self.custom {
            let value = contact
                .custom_fields
                .iter()
                .find(|c| c.key.as_deref() == Some(custom.key.as_str()))
                .map(|c| canonical_quo_value(custom.field_type, &c.value))
                .unwrap_or(Value::Null);
            snapshot.custom_fields.insert(custom.key.clone(), value);
        }
        snapshot
    }

    /// The raw CRM text per source field for the `changed` diff fields of `snapshot`.
    ///
    /// Emails and phones go back by label to their columns (a label the snapshot lacks gives
    /// `""`); custom values are rendered as CRM text (number → shortest decimal, boolean →
    /// `true`/`false`, date → `YYYY-MM-DD` at midnight UTC else RFC 3339, multi-select joined with
    /// the delimiter, text as is). Diff names the mapping does not manage are skipped.
    pub fn to_crm_fields(
        &self,
        snapshot: &Snapshot,
        changed: &[String],
    ) -> Result<BTreeMap<String, String>, MappingError> {
        let mut out = BTreeMap::new();
        for name in changed {
            match name.as_str() {
                field::FIRST_NAME => put_text(&mut out, &self.first_name, &snapshot.first_name),
                field::LAST_NAME => put_text(&mut out, &self.last_name, &snapshot.last_name),
                field::COMPANY => put_text(&mut out, &self.company, &snapshot.company),
                field::ROLE => put_text(&mut out, &self.role, &snapshot.role),
                field::EMAILS => put_labeled(&mut out, &self.emails, &snapshot.emails),
                field::PHONE_NUMBERS => {
                    put_labeled(&mut out, &self.phones, &snapshot.phone_numbers)
                }
                other => {
                    let Some(key) = other.strip_prefix(field::CUSTOM_PREFIX) else {
                        continue;
                    };
                    let Some(custom) = self.custom.iter().find(|c| c.key == key) else {
                        continue;
                    };
                    let value = snapshot
                        .custom_fields
                        .get(key)
                        .cloned()
                        .unwrap_or(Value::Null);
                    let text = render(custom, &value).map_err(|reason| MappingError {
                        field: custom.field.clone(),
                        value: value.to_string(),
                        reason,
                    })?;
                    out.insert(custom.field.clone(), text);
                }
            }
        }
        Ok(out)
    }

    /// The Quo keys of the managed custom fields, in mapping order.
    pub fn custom_field_keys(&self) -> Vec<String> {
        self.custom.iter().map(|c| c.key.clone()).collect()
    }

    /// The managed email labels and phone labels, in mapping order.
    pub fn managed_labels(&self) -> (Vec<String>, Vec<String>) {
        (
            self.emails.iter().map(|m| m.label.clone()).collect(),
            self.phones.iter().map(|m| m.label.clone()).collect(),
        )
    }
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

/// Normalises a phone number to E.164, reading national numbers in `default_region`.
///
/// Refuses empty or over-long input, text the parser cannot read, numbers that are not valid
/// for their region, and numbers with an extension. Never panics.
pub fn normalize_phone(raw: &str, default_region: &str) -> Result<String, String> {
    let code = default_region.trim().to_ascii_uppercase();
    let region =
        parse_region(&code).ok_or_else(|| format!("unknown default region {default_region:?}"))?;
    normalize_phone_in(raw, region, &code)
}

fn parse_region(code: &str) -> Option<phonenumber::country::Id> {
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    code.parse().ok()
}

fn normalize_phone_in(
    raw: &str,
    region: phonenumber::country::Id,
    region_code: &str,
) -> Result<String, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err("empty phone number".into());
    }
    if text.len() > MAX_PHONE_INPUT {
        return Err(format!(
            "longer than {MAX_PHONE_INPUT} characters, not a phone number"
        ));
    }
    // phonenumber ≥ 0.3.6 does not panic on crafted input (RUSTSEC-2024-0369); catching an
    // unwind anyway keeps one odd cell from taking the whole cycle down.
    let parsed = std::panic::catch_unwind(|| phonenumber::parse(Some(region), text))
        .map_err(|_| "the phone parser failed on this value".to_string())?
        .map_err(|e| format!("not a phone number ({e})"))?;
    if parsed.extension().is_some() {
        return Err("has an extension, which E.164 cannot hold".into());
    }
    if !parsed.is_valid() {
        return Err(format!(
            "not a valid phone number (national numbers are read as {region_code}; write others with +country code)"
        ));
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

fn check_labels(key: &str, mappings: &[LabeledFieldMapping]) -> Result<(), MappingConfigError> {
    let mut seen = HashSet::new();
    for (i, m) in mappings.iter().enumerate() {
        if !seen.insert(m.label.as_str()) {
            return Err(MappingConfigError::DuplicateLabel {
                key: format!("{key}[{i}].label"),
                label: m.label.clone(),
            });
        }
    }
    Ok(())
}

/// `local@domain` with the domain lower-cased.
fn normalize_email(raw: &str) -> Result<String, String> {
    let text = raw.trim();
    let Some((local, domain)) = text.rsplit_once('@') else {
        return Err("not an email address (no @)".into());
    };
    if local.is_empty() || domain.is_empty() || local.contains('@') {
        return Err("not an email address (expected local@domain)".into());
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("not an email address (contains spaces)".into());
    }
    if domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
        return Err("not an email address (malformed domain)".into());
    }
    Ok(format!("{local}@{}", domain.to_lowercase()))
}

fn coerce(custom: &ResolvedCustom, raw: &str) -> Result<Value, String> {
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    match custom.field_type {
        CustomFieldType::Number => parse_number(raw).map(canonical_number),
        CustomFieldType::Boolean => parse_bool(raw).map(Value::Bool),
        CustomFieldType::Date => parse_date(raw).map(|d| Value::String(format_quo_date(d))),
        CustomFieldType::MultiSelect => {
            let items = split_multi(raw, &custom.delimiter);
            if items.is_empty() {
                Ok(Value::Null)
            } else {
                Ok(Value::Array(items.into_iter().map(Value::String).collect()))
            }
        }
        CustomFieldType::Url => parse_url(raw).map(Value::String),
        CustomFieldType::Address | CustomFieldType::String => Ok(Value::String(raw.to_string())),
    }
}

fn parse_number(raw: &str) -> Result<f64, String> {
    let reason = || "expected a number such as 42, -3.5 or 1,234.5".to_string();
    let text = strip_thousands(raw).ok_or_else(reason)?;
    if text.is_empty()
        || !text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E'))
        || !text.chars().any(|c| c.is_ascii_digit())
    {
        return Err(reason());
    }
    let value: f64 = text.parse().map_err(|_| reason())?;
    if !value.is_finite() {
        return Err("the number is too large".into());
    }
    Ok(value)
}

/// Removes thousands separators when they are well placed (`1,234,567.5`); `None` when a comma
/// is anywhere else.
fn strip_thousands(raw: &str) -> Option<String> {
    if !raw.contains(',') {
        return Some(raw.to_string());
    }
    let unsigned = raw.trim_start_matches(['+', '-']);
    if raw.len() - unsigned.len() > 1 {
        return None;
    }
    let int_part = unsigned.split('.').next().unwrap_or_default();
    let groups: Vec<&str> = int_part.split(',').collect();
    let first_ok =
        matches!(groups[0].len(), 1..=3) && groups[0].bytes().all(|b| b.is_ascii_digit());
    let rest_ok = groups[1..]
        .iter()
        .all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()));
    let fraction = &unsigned[int_part.len()..];
    if first_ok && rest_ok && !fraction.contains(',') {
        Some(raw.replace(',', ""))
    } else {
        None
    }
}

/// The JSON number for a value: an integer when it is integral and fits, else a float.
fn canonical_number(value: f64) -> Value {
    const LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53: beyond it floats skip integers
    if value.fract() == 0.0 && value.abs() <= LIMIT {
        Value::from(value as i64)
    } else {
        serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "1" | "on" | "t" => Ok(true),
        "false" | "no" | "n" | "0" | "off" | "f" => Ok(false),
        _ => Err("expected a yes/no value: true/false, yes/no, y/n, 1/0 or on/off".into()),
    }
}

fn parse_date(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(raw) {
        return Ok(dt.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(raw, format) {
            return Ok(naive.and_utc());
        }
    }
    for format in ["%Y-%m-%d", "%m/%d/%Y"] {
        if let Ok(date) = NaiveDate::parse_from_str(raw, format) {
            return Ok(date
                .and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc());
        }
    }
    Err("expected a date: YYYY-MM-DD, MM/DD/YYYY or RFC 3339".into())
}

/// Quo's date form: `2024-09-11T04:00:00.000Z`.
fn format_quo_date(date: DateTime<Utc>) -> String {
    date.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn split_multi(raw: &str, delimiter: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    raw.split(delimiter)
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .filter(|item| seen.insert(item.to_string()))
        .map(str::to_string)
        .collect()
}

fn parse_url(raw: &str) -> Result<String, String> {
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("expected a web address without spaces".into());
    }
    let candidate = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let url = reqwest::Url::parse(&candidate)
        .map_err(|e| format!("expected a web address such as https://example.com ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "expected an http or https address, got scheme {:?}",
            url.scheme()
        ));
    }
    match url.host_str() {
        Some(host) if host.contains('.') || host == "localhost" => Ok(candidate),
        _ => Err("expected a web address with a domain, such as example.com".into()),
    }
}

/// Canonicalises a value Quo returned, so it compares equal to what `map` produces.
fn canonical_quo_value(field_type: CustomFieldType, value: &Value) -> Value {
    match value {
        Value::String(s) if s.trim().is_empty() => Value::Null,
        Value::Array(a) if a.is_empty() => Value::Null,
        Value::Number(n) if field_type == CustomFieldType::Number => n
            .as_f64()
            .map(canonical_number)
            .unwrap_or_else(|| value.clone()),
        Value::String(s) if field_type == CustomFieldType::Date => parse_date(s.trim())
            .map(|d| Value::String(format_quo_date(d)))
            .unwrap_or_else(|_| value.clone()),
        Value::String(s) => Value::String(s.trim().to_string()),
        other => other.clone(),
    }
}

fn put_text(out: &mut BTreeMap<String, String>, mapped: &Option<String>, value: &Option<String>) {
    if let Some(field) = mapped {
        out.insert(field.clone(), value.clone().unwrap_or_default());
    }
}

fn put_labeled(
    out: &mut BTreeMap<String, String>,
    mappings: &[LabeledFieldMapping],
    items: &[Labeled],
) {
    for mapping in mappings {
        let value = items
            .iter()
            .find(|i| i.name == mapping.label)
            .map(|i| i.value.clone())
            .unwrap_or_default();
        out.insert(mapping.field.clone(), value);
    }
}

/// CRM text for a snapshot value of a custom field.
fn render(custom: &ResolvedCustom, value: &Value) -> Result<String, String> {
    let wrong = |expected: &str| format!("expected {expected} for a {:?} field", custom.field_type);
    match (custom.field_type, value) {
        (_, Value::Null) => Ok(String::new()),
        (CustomFieldType::Number, Value::Number(n)) => Ok(match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (_, Some(u)) => u.to_string(),
            _ => {
                let f = n.as_f64().ok_or_else(|| wrong("a number"))?;
                match canonical_number(f) {
                    Value::Number(c) if c.is_i64() => c.to_string(),
                    _ => format!("{f}"),
                }
            }
        }),
        (CustomFieldType::Number, _) => Err(wrong("a JSON number")),
        (CustomFieldType::Boolean, Value::Bool(b)) => Ok(b.to_string()),
        (CustomFieldType::Boolean, _) => Err(wrong("a JSON boolean")),
        (CustomFieldType::Date, Value::String(s)) => {
            let date = parse_date(s.trim())?;
            let midnight = date.hour() == 0
                && date.minute() == 0
                && date.second() == 0
                && date.nanosecond() == 0;
            Ok(if midnight {
                date.format("%Y-%m-%d").to_string()
            } else {
                date.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            })
        }
        (CustomFieldType::Date, _) => Err(wrong("a date string")),
        (CustomFieldType::MultiSelect, Value::Array(items)) => {
            let texts: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let texts = texts.ok_or_else(|| wrong("an array of strings"))?;
            Ok(texts.join(&custom.delimiter))
        }
        (CustomFieldType::MultiSelect, Value::String(s)) => Ok(s.clone()),
        (CustomFieldType::MultiSelect, _) => Err(wrong("an array of strings")),
        (_, Value::String(s)) => Ok(s.clone()),
        (_, _) => Err(wrong("a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CustomFieldMapping;
    use crate::domain::ExternalId;
    use crate::quo::types::{ContactCustomField, DefaultFields};
    use serde_json::json;

    fn example_config() -> MappingConfig {
        let labeled = |field: &str, label: &str| LabeledFieldMapping {
            field: field.into(),
            label: label.into(),
        };
        let custom = |name: &str, field: &str| CustomFieldMapping {
            name: name.into(),
            field: field.into(),
            delimiter: None,
        };
        MappingConfig {
            default_region: "US".into(),
            first_name: Some("first_name".into()),
            last_name: Some("last_name".into()),
            company: Some("company".into()),
            role: Some("role".into()),
            emails: vec![labeled("email", "email"), labeled("work_email", "work")],
            phones: vec![labeled("phone", "phone"), labeled("mobile", "mobile")],
            custom_fields: vec![
                custom("Lead Score", "lead_score"),
                custom("VIP", "vip"),
                custom("Renewal Date", "renewal_date"),
                custom("Tags", "tags"),
                custom("Website", "website"),
            ],
        }
    }

    fn mapper() -> Mapper {
        Mapper::new(&example_config(), &example_workspace_defs()).unwrap()
    }

    fn record(pairs: &[(&str, &str)]) -> SourceRecord {
        SourceRecord {
            external_id: ExternalId::parse("c-1").unwrap(),
            fields: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            updated_at: None,
            location: "test line 2".into(),
        }
    }

    fn custom_value(field: &str, raw: &str) -> Result<Value, MappingError> {
        let m = mapper();
        let key = m
            .custom
            .iter()
            .find(|c| c.field == field)
            .unwrap()
            .key
            .clone();
        m.map(&record(&[(field, raw)]))
            .map(|s| s.custom_fields[&key].clone())
    }

    #[test]
    fn maps_a_full_row() {
        let snapshot = mapper()
            .map(&record(&[
                ("first_name", "  Ada "),
                ("last_name", "Lovelace"),
                ("company", ""),
                ("email", "Ada@Example.COM"),
                ("phone", "(415) 555-0132"),
                ("mobile", "+44 20 7946 0958"),
                ("lead_score", "1,234.5"),
                ("vip", "Y"),
                ("renewal_date", "2026-03-01"),
                ("tags", "vip; enterprise;;vip"),
                ("website", "example.com"),
                ("ignored", "whatever"),
            ]))
            .unwrap();
        assert_eq!(snapshot.first_name.as_deref(), Some("Ada"));
        assert_eq!(snapshot.company, None);
        assert_eq!(snapshot.role, None);
        assert_eq!(
            snapshot.emails,
            vec![Labeled {
                name: "email".into(),
                value: "Ada@example.com".into()
            }]
        );
        assert_eq!(
            snapshot.phone_numbers,
            vec![
                Labeled {
                    name: "phone".into(),
                    value: "+14155550132".into()
                },
                Labeled {
                    name: "mobile".into(),
                    value: "+442079460958".into()
                },
            ]
        );
        let c = &snapshot.custom_fields;
        assert_eq!(c["lead-score"], json!(1234.5));
        assert_eq!(c["vip"], json!(true));
        assert_eq!(c["renewal-date"], json!("2026-03-01T00:00:00.000Z"));
        assert_eq!(c["tags"], json!(["vip", "enterprise"]));
        assert_eq!(c["website"], json!("https://example.com"));
        assert_eq!(c.len(), 5);
    }

    #[test]
    fn empty_values_are_absent_and_custom_keys_null() {
        let snapshot = mapper().map(&record(&[])).unwrap();
        assert_eq!(snapshot.first_name, None);
        assert!(snapshot.emails.is_empty() && snapshot.phone_numbers.is_empty());
        assert_eq!(snapshot.custom_fields.len(), 5);
        assert!(snapshot.custom_fields.values().all(Value::is_null));
    }

    #[test]
    fn number_coercions() {
        for (raw, expected) in [
            ("42", json!(42)),
            ("42.0", json!(42)),
            ("-3.5", json!(-3.5)),
            ("+7", json!(7)),
            ("1,234.5", json!(1234.5)),
            ("1,234,567", json!(1234567)),
            ("0.1", json!(0.1)),
            ("  85 ", json!(85)),
            ("", Value::Null),
        ] {
            assert_eq!(
                custom_value("lead_score", raw).unwrap(),
                expected,
                "{raw:?}"
            );
        }
        for raw in [
            "abc",
            "NaN",
            "inf",
            "-infinity",
            "1e999",
            "12,34",
            "1,2345",
            "--1",
            "1.2.3",
            ".",
        ] {
            let err = custom_value("lead_score", raw).unwrap_err();
            assert_eq!(err.field, "lead_score");
            assert_eq!(err.value, raw.trim());
        }
    }

    #[test]
    fn boolean_coercions() {
        for raw in ["true", "TRUE", "yes", "Y", "1", "on", "On"] {
            assert_eq!(custom_value("vip", raw).unwrap(), json!(true), "{raw:?}");
        }
        for raw in ["false", "No", "n", "0", "off"] {
            assert_eq!(custom_value("vip", raw).unwrap(), json!(false), "{raw:?}");
        }
        assert_eq!(custom_value("vip", "").unwrap(), Value::Null);
        let err = custom_value("vip", "maybe").unwrap_err();
        assert!(err.to_string().contains("\"vip\"") && err.to_string().contains("maybe"));
    }

    #[test]
    fn date_coercions() {
        for (raw, expected) in [
            ("2026-03-01", "2026-03-01T00:00:00.000Z"),
            ("03/01/2026", "2026-03-01T00:00:00.000Z"),
            ("2026-03-01T10:30:00Z", "2026-03-01T10:30:00.000Z"),
            ("2026-03-01T10:30:00+02:00", "2026-03-01T08:30:00.000Z"),
            ("2024-09-11T04:00:00.000Z", "2024-09-11T04:00:00.000Z"),
        ] {
            assert_eq!(
                custom_value("renewal_date", raw).unwrap(),
                json!(expected),
                "{raw:?}"
            );
        }
        for raw in ["tomorrow", "2026-13-01", "31/12/2026", "2026-02-30"] {
            assert!(custom_value("renewal_date", raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn multi_select_and_url_coercions() {
        assert_eq!(
            custom_value("tags", " b ;a;b; ;c ").unwrap(),
            json!(["b", "a", "c"])
        );
        assert_eq!(custom_value("tags", " ; ;").unwrap(), Value::Null);
        for (raw, expected) in [
            ("https://acme.example/x?y=1", "https://acme.example/x?y=1"),
            ("http://acme.example", "http://acme.example"),
            ("acme.example", "https://acme.example"),
            ("www.acme.example/path", "https://www.acme.example/path"),
        ] {
            assert_eq!(
                custom_value("website", raw).unwrap(),
                json!(expected),
                "{raw:?}"
            );
        }
        for raw in ["ftp://acme.example", "not a url", "acme", "https://"] {
            assert!(custom_value("website", raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn multi_select_uses_configured_delimiter() {
        let mut config = example_config();
        config.custom_fields[3].delimiter = Some("|".into());
        let m = Mapper::new(&config, &example_workspace_defs()).unwrap();
        let s = m.map(&record(&[("tags", "a|b;c")])).unwrap();
        assert_eq!(s.custom_fields["tags"], json!(["a", "b;c"]));
        let back = m.to_crm_fields(&s, &["custom:tags".into()]).unwrap();
        assert_eq!(back["tags"], "a|b;c");
    }

    #[test]
    fn bad_email_and_phone_name_field_and_value() {
        let err = mapper()
            .map(&record(&[("phone", "555-CALL-NOW")]))
            .unwrap_err();
        assert_eq!(err.field, "phone");
        assert_eq!(err.value, "555-CALL-NOW");
        let err = mapper()
            .map(&record(&[("work_email", "not-an-address")]))
            .unwrap_err();
        assert_eq!(err.field, "work_email");
        assert!(
            err.to_string()
                .starts_with("field \"work_email\": value \"not-an-address\"")
        );
    }

    #[test]
    fn phone_normalization_of_sample_numbers() {
        for (raw, expected) in [
            ("(415) 555-0132", "+14155550132"),
            ("415.555.0199", "+14155550199"),
            ("415 555 0143", "+14155550143"),
            ("  212-555-0175 ", "+12125550175"),
            ("+1 (312) 555-0188", "+13125550188"),
            ("+44 20 7946 0958", "+442079460958"),
            ("6175550111", "+16175550111"),
        ] {
            assert_eq!(normalize_phone(raw, "US").unwrap(), expected, "{raw:?}");
        }
        assert_eq!(
            normalize_phone("020 7946 0958", "gb").unwrap(),
            "+442079460958"
        );
        for raw in [
            "555-CALL-NOW",
            "",
            "12",
            "+15555550100",
            "hello",
            "415-555-0132 ext. 12",
        ] {
            assert!(normalize_phone(raw, "US").is_err(), "{raw:?}");
        }
        assert!(normalize_phone("415 555 0132", "XX").is_err());
    }

    #[test]
    fn unknown_custom_field_names_key_and_lists_available() {
        let mut config = example_config();
        config.custom_fields[1].name = "V.I.P.".into();
        let err = Mapper::new(&config, &example_workspace_defs()).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("mapping.custom_fields[1].name"), "{text}");
        assert!(text.contains("\"V.I.P.\""), "{text}");
        assert!(
            text.contains("Lead Score, VIP, Renewal Date, Tags, Website, Mailing Address, Notes"),
            "{text}"
        );
    }

    #[test]
    fn custom_field_names_resolve_exact_then_case_insensitive() {
        let mut config = example_config();
        config.custom_fields[0].name = "lead score".into();
        let m = Mapper::new(&config, &example_workspace_defs()).unwrap();
        assert_eq!(m.custom_field_keys()[0], "lead-score");

        let defs = vec![
            CustomFieldDef {
                name: "score".into(),
                key: "k1".into(),
                field_type: CustomFieldType::Number,
            },
            CustomFieldDef {
                name: "Score".into(),
                key: "k2".into(),
                field_type: CustomFieldType::Number,
            },
        ];
        let config = MappingConfig {
            custom_fields: vec![CustomFieldMapping {
                name: "Score".into(),
                field: "s".into(),
                delimiter: None,
            }],
            ..MappingConfig::default()
        };
        assert_eq!(
            Mapper::new(&config, &defs).unwrap().custom_field_keys(),
            ["k2"]
        );
    }

    #[test]
    fn config_errors() {
        let mut config = example_config();
        config.default_region = "ZZ".into();
        assert!(matches!(
            Mapper::new(&config, &example_workspace_defs()),
            Err(MappingConfigError::BadRegion { .. })
        ));
        let mut config = example_config();
        config.phones[1].label = "phone".into();
        let err = Mapper::new(&config, &example_workspace_defs()).unwrap_err();
        assert!(err.to_string().contains("mapping.phones[1].label"), "{err}");
        let mut config = example_config();
        config.custom_fields[1].name = "lead score".into();
        let err = Mapper::new(&config, &example_workspace_defs()).unwrap_err();
        assert!(matches!(
            err,
            MappingConfigError::DuplicateCustomField { index: 1, .. }
        ));
    }

    #[test]
    fn fingerprint_tracks_mapped_values_only() {
        let m = mapper();
        let base = record(&[("first_name", "Ada"), ("notes_col", "x"), ("vip", "yes")]);
        let fp = m.fingerprint(&base);
        let mut other = base.clone();
        other.fields.insert("notes_col".into(), "changed".into());
        other.updated_at = Some(Utc::now());
        other.location = "elsewhere".into();
        assert_eq!(m.fingerprint(&other), fp);
        other.fields.insert("vip".into(), "no".into());
        assert_ne!(m.fingerprint(&other), fp);
        let mut blank = base.clone();
        blank.fields.insert("company".into(), String::new());
        assert_eq!(m.fingerprint(&blank), fp, "absent and empty are the same");
        let mut spaced = base.clone();
        spaced.fields.insert("first_name".into(), "Ada ".into());
        assert_ne!(m.fingerprint(&spaced), fp, "raw values take part");

        let mut config = example_config();
        config.role = None;
        let m2 = Mapper::new(&config, &example_workspace_defs()).unwrap();
        assert_ne!(m2.fingerprint(&base), fp, "the mapping takes part");
    }

    #[test]
    fn round_trip_through_crm_fields() {
        let m = mapper();
        let original = record(&[
            ("first_name", "Grace"),
            ("last_name", "Hopper"),
            ("company", "Navy"),
            ("role", "Rear Admiral"),
            ("email", "grace@NAVY.example"),
            ("mobile", "415.555.0199"),
            ("lead_score", "0.25"),
            ("vip", "no"),
            ("renewal_date", "2026-03-01T10:30:00Z"),
            ("tags", "a;b"),
            ("website", "navy.example"),
        ]);
        let snapshot = m.map(&original).unwrap();
        let all: Vec<String> = snapshot.fields().keys().cloned().collect();
        let crm = m.to_crm_fields(&snapshot, &all).unwrap();
        assert_eq!(crm["work_email"], "");
        assert_eq!(crm["phone"], "");
        assert_eq!(crm["mobile"], "+14155550199");
        assert_eq!(crm["lead_score"], "0.25");
        assert_eq!(crm["vip"], "false");
        assert_eq!(crm["renewal_date"], "2026-03-01T10:30:00Z");
        let mut again = original.clone();
        again.fields.extend(crm);
        assert_eq!(m.map(&again).unwrap(), snapshot);

        let mut midnight = snapshot.clone();
        midnight.set_field("custom:renewal-date", json!("2026-04-01T00:00:00.000Z"));
        midnight.set_field("custom:lead-score", json!(1e21));
        let crm = m
            .to_crm_fields(
                &midnight,
                &[
                    "custom:renewal-date".into(),
                    "custom:lead-score".into(),
                    "custom:unknown".into(),
                    "sourceUrl".into(),
                ],
            )
            .unwrap();
        assert_eq!(crm.len(), 2);
        assert_eq!(crm["renewal_date"], "2026-04-01");
        assert_eq!(
            m.map(&record(&[("lead_score", &crm["lead_score"])]))
                .unwrap()
                .custom_fields["lead-score"],
            json!(1e21)
        );
    }

    #[test]
    fn to_crm_fields_rejects_wrong_json_types() {
        let m = mapper();
        let mut s = Snapshot::default();
        s.custom_fields.insert("vip".into(), json!("sure"));
        let err = m.to_crm_fields(&s, &["custom:vip".into()]).unwrap_err();
        assert_eq!(err.field, "vip");
        assert_eq!(err.value, "\"sure\"");
    }

    #[test]
    fn from_contact_keeps_managed_fields_only() {
        let m = mapper();
        let item = |name: &str, value: &str| ContactItem {
            id: Some(format!("id-{name}")),
            name: name.into(),
            value: Some(value.into()),
        };
        let custom = |key: &str, value: Value| ContactCustomField {
            name: None,
            key: Some(key.into()),
            id: None,
            field_type: None,
            value,
        };
        let contact = Contact {
            id: "q1".into(),
            external_id: Some("c-1".into()),
            source: Some("quo-sync".into()),
            source_url: None,
            default_fields: DefaultFields {
                first_name: Some("Ada".into()),
                last_name: Some(" ".into()),
                company: None,
                role: None,
                emails: vec![
                    item("home", "h@x.example"),
                    item("work", "A@X.EXAMPLE"),
                    item("email", "a@x.example"),
                ],
                phone_numbers: vec![item("mobile", "+14155550199"), item("fax", "+14155550100")],
            },
            custom_fields: vec![
                custom("vip", json!(true)),
                custom("lead-score", json!(85.0)),
                custom("tags", json!([])),
                custom("renewal-date", json!("2026-03-01T00:00:00Z")),
                custom("notes", json!("unmanaged")),
            ],
            created_at: None,
            updated_at: None,
            created_by_user_id: None,
        };
        let s = m.from_contact(&contact);
        assert_eq!(s.first_name.as_deref(), Some("Ada"));
        assert_eq!(s.last_name, None);
        assert_eq!(
            s.emails
                .iter()
                .map(|e| (e.name.as_str(), e.value.as_str()))
                .collect::<Vec<_>>(),
            [("email", "a@x.example"), ("work", "A@x.example")]
        );
        assert_eq!(s.phone_numbers.len(), 1);
        assert_eq!(s.custom_fields.len(), 5);
        assert_eq!(s.custom_fields["vip"], json!(true));
        assert_eq!(s.custom_fields["lead-score"], json!(85));
        assert_eq!(s.custom_fields["tags"], Value::Null);
        assert_eq!(s.custom_fields["website"], Value::Null);
        assert_eq!(
            s.custom_fields["renewal-date"],
            json!("2026-03-01T00:00:00.000Z")
        );
        assert!(!s.custom_fields.contains_key("notes"));
        assert_eq!(
            m.managed_labels(),
            (
                vec!["email".to_string(), "work".to_string()],
                vec!["phone".to_string(), "mobile".to_string()]
            )
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn normalize_phone_never_panics(raw in any::<String>(), region in "[A-Z]{2}") {
                let _ = normalize_phone(&raw, &region);
            }

            #[test]
            fn normalize_phone_never_panics_on_phoneish_text(raw in "[-+0-9 ().xX#*;=a-z]{0,40}") {
                if let Ok(e164) = normalize_phone(&raw, "US") {
                    prop_assert!(e164.starts_with('+'));
                    prop_assert_eq!(normalize_phone(&e164, "US"), Ok(e164.clone()));
                }
            }
        }
    }
}
