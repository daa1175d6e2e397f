//! The [`Mapper`]: built once per cycle from the configuration and the workspace's custom field
//! definitions, it maps CRM records to snapshots, Quo contacts to snapshots, and snapshots back
//! to CRM text, applying the same canonical rules in every direction.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::dates::{DateOrder, DateRules};
use super::fingerprint::{RawFingerprint, config_digest, raw_fingerprint};
use super::input::Input;
use super::phones::{normalize_phone_in, parse_region};
use super::values::{canonical_quo_value, coerce, normalize_email, render};
use super::{MappingConfigError, MappingError};
use crate::config::{FieldSource, LabeledFieldMapping, MappingConfig};
use crate::domain::{Labeled, Snapshot, field};
use crate::expr::{Expression, Yields};
use crate::quo::types::{Contact, ContactItem, CustomFieldDef, CustomFieldType};
use crate::source::SourceRecord;

#[derive(Debug, Clone)]
pub(super) struct ResolvedCustom {
    pub(super) key: String,
    pub(super) field: Input,
    pub(super) field_type: CustomFieldType,
    pub(super) delimiter: String,
}

/// An email or phone entry: its Quo label (`name`) and where its value is read (`value`).
#[derive(Debug, Clone)]
pub(super) struct LabeledInput {
    name: String,
    value: Input,
}

#[derive(Debug, Clone)]
pub struct Mapper {
    region: phonenumber::country::Id,
    region_code: String,
    first_name: Option<Input>,
    last_name: Option<Input>,
    company: Option<Input>,
    role: Option<Input>,
    emails: Vec<LabeledInput>,
    phones: Vec<LabeledInput>,
    pub(super) custom: Vec<ResolvedCustom>,
    /// Time zone and slashed-date order for date fields.
    dates: DateRules,
    /// Quo's display name per managed key, to place key-less custom items (decision 8).
    def_names: BTreeMap<String, String>,
    /// The fingerprint: digest of the rules, the configuration and the resolved definitions,
    /// and every mapped source field in a fixed order.
    pub(super) raw: RawFingerprint,
    /// The digest of the rules behind `raw` (with what `fingerprint_also` added).
    digest: String,
    /// The fields behind `raw`.
    mapped_fields: Vec<String>,
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
        let zone: chrono_tz::Tz =
            config
                .timezone
                .trim()
                .parse()
                .map_err(|_| MappingConfigError::BadTimezone {
                    timezone: config.timezone.clone(),
                })?;
        let dates = DateRules {
            zone,
            order: DateOrder::for_region(&region_code),
        };
        check_labels("mapping.emails", &config.emails)?;
        check_labels("mapping.phones", &config.phones)?;

        let (custom, def_names) = resolve_custom(config, defs)?;
        let scalar = |key: &str, source: &Option<FieldSource>| {
            source
                .as_ref()
                .map(|s| Input::new(&format!("mapping.{key}"), s))
                .transpose()
        };
        let labeled = |key: &str, mappings: &[LabeledFieldMapping]| {
            mappings
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    Ok(LabeledInput {
                        name: m.label.clone(),
                        value: Input::new(&format!("{key}[{i}].field"), &m.field)?,
                    })
                })
                .collect::<Result<Vec<_>, MappingConfigError>>()
        };
        let first_name = scalar("first_name", &config.first_name)?;
        let last_name = scalar("last_name", &config.last_name)?;
        let company = scalar("company", &config.company)?;
        let role = scalar("role", &config.role)?;
        let emails = labeled("mapping.emails", &config.emails)?;
        let phones = labeled("mapping.phones", &config.phones)?;

        let mut mapped_fields: Vec<String> = [&first_name, &last_name, &company, &role]
            .into_iter()
            .flatten()
            .chain(emails.iter().chain(&phones).map(|m| &m.value))
            .chain(custom.iter().map(|c| &c.field))
            .flat_map(Input::reads)
            .collect();
        mapped_fields.sort();
        mapped_fields.dedup();

        let digest = config_digest(config, &custom);
        let raw = raw_fingerprint(&digest, &mapped_fields);

        Ok(Mapper {
            region,
            region_code,
            first_name,
            last_name,
            company,
            role,
            emails,
            phones,
            custom,
            dates,
            def_names,
            raw,
            digest,
            mapped_fields,
        })
    }

    /// Adds inputs of other decisions to the fingerprint (the scope filter's fields and rules):
    /// an unchanged fingerprint then means those decisions would come out as last time too.
    /// Nothing to add (no rules, no fields) leaves the fingerprint as it is.
    pub fn fingerprint_also(mut self, rules: &str, fields: &[String]) -> Self {
        if rules.is_empty() && fields.is_empty() {
            return self;
        }
        self.mapped_fields.extend(fields.iter().cloned());
        self.mapped_fields.sort();
        self.mapped_fields.dedup();
        self.digest = format!("{}+{rules}", self.digest);
        self.raw = raw_fingerprint(&self.digest, &self.mapped_fields);
        self
    }

    /// Maps one CRM record to its canonical snapshot, or names the first field that cannot be.
    pub fn map(&self, record: &SourceRecord) -> Result<Snapshot, MappingError> {
        let text = |input: &Option<Input>| -> Result<Option<String>, MappingError> {
            let Some(input) = input else { return Ok(None) };
            let value = input.read(record, "")?;
            Ok((!value.is_empty()).then(|| value.into_owned()))
        };
        let mut snapshot = Snapshot {
            first_name: text(&self.first_name)?,
            last_name: text(&self.last_name)?,
            company: text(&self.company)?,
            role: text(&self.role)?,
            ..Snapshot::default()
        };
        for mapping in &self.emails {
            let raw = mapping.value.read(record, "")?;
            if raw.is_empty() {
                continue;
            }
            let value = normalize_email(&raw).map_err(|reason| MappingError {
                field: mapping.value.label().to_string(),
                value: raw.to_string(),
                reason,
            })?;
            snapshot.emails.push(Labeled {
                name: mapping.name.clone(),
                value,
            });
        }
        for mapping in &self.phones {
            let raw = mapping.value.read(record, "")?;
            if raw.is_empty() {
                continue;
            }
            let value =
                normalize_phone_in(&raw, self.region, &self.region_code).map_err(|reason| {
                    MappingError {
                        field: mapping.value.label().to_string(),
                        value: raw.to_string(),
                        reason,
                    }
                })?;
            snapshot.phone_numbers.push(Labeled {
                name: mapping.name.clone(),
                value,
            });
        }
        for custom in &self.custom {
            let raw = custom.field.read(record, &custom.delimiter)?;
            let value = coerce(custom, &self.dates, &raw).map_err(|reason| MappingError {
                field: custom.field.label().to_string(),
                value: raw.to_string(),
                reason,
            })?;
            snapshot.custom_fields.insert(custom.key.clone(), value);
        }
        Ok(snapshot)
    }

    /// The snapshot of a Quo contact, restricted to the managed fields.
    ///
    /// Emails and phones are kept only for mapped labels (in mapping order, then Quo's order);
    /// they get the same canonical form as `map` gives (email domain lower-cased, phones in
    /// E.164 when they parse). Custom values are Quo's, lightly canonicalised (`""`/`[]` → null,
    /// integral numbers as integers, dates as `…T…000Z`); a managed key Quo lacks is null.
    pub fn from_contact(&self, contact: &Contact) -> Snapshot {
        let defaults = &contact.default_fields;
        let text = |mapped: &Option<Input>, value: &Option<String>| -> Option<String> {
            mapped.as_ref()?;
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let items = |mappings: &[LabeledInput],
                     items: &[ContactItem],
                     canon: &dyn Fn(&str) -> String|
         -> Vec<Labeled> {
            let mut out = Vec::new();
            for mapping in mappings {
                for item in items.iter().filter(|i| i.name == mapping.name) {
                    let Some(value) = item.value.as_deref().map(str::trim) else {
                        continue;
                    };
                    if value.is_empty() {
                        continue;
                    }
                    out.push(Labeled {
                        name: mapping.name.clone(),
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
            let name = self.def_names.get(&custom.key);
            let value = contact
                .custom_fields
                .iter()
                .find(|c| c.key.as_deref() == Some(custom.key.as_str()))
                .or_else(|| {
                    // A key-less item (the spec allows it) is this field when its name is.
                    contact.custom_fields.iter().find(|c| {
                        c.key.is_none()
                            && c.name.as_deref().map(str::trim).is_some_and(|n| {
                                name.is_some_and(|want| n.eq_ignore_ascii_case(want.trim()))
                            })
                    })
                })
                .map(|c| canonical_quo_value(&custom.field_type, &c.value))
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
                    // A computed value has no column: it is one-way, to Quo.
                    let Some(column) = custom.field.column() else {
                        continue;
                    };
                    let value = snapshot
                        .custom_fields
                        .get(key)
                        .cloned()
                        .unwrap_or(Value::Null);
                    let text =
                        render(custom, &self.dates, &value).map_err(|reason| MappingError {
                            field: column.to_string(),
                            value: value.to_string(),
                            reason,
                        })?;
                    out.insert(column.to_string(), text);
                }
            }
        }
        Ok(out)
    }

    /// The Quo keys of the managed custom fields, in mapping order.
    pub fn custom_field_keys(&self) -> Vec<String> {
        self.custom.iter().map(|c| c.key.clone()).collect()
    }

    /// The default scalar fields the mapping writes (`firstName`, `lastName`, `company`,
    /// `role`, by their diff names); the others are Quo's alone.
    pub fn managed_default_fields(&self) -> Vec<&'static str> {
        use crate::domain::field;
        [
            (&self.first_name, field::FIRST_NAME),
            (&self.last_name, field::LAST_NAME),
            (&self.company, field::COMPANY),
            (&self.role, field::ROLE),
        ]
        .into_iter()
        .filter(|(mapped, _)| mapped.is_some())
        .map(|(_, name)| name)
        .collect()
    }

    /// The managed email labels and phone labels, in mapping order.
    pub fn managed_labels(&self) -> (Vec<String>, Vec<String>) {
        (
            self.emails.iter().map(|m| m.name.clone()).collect(),
            self.phones.iter().map(|m| m.name.clone()).collect(),
        )
    }

    /// The diff names of the computed entries (`company`, `emails`, `custom:<key>`): one-way
    /// fields, which a Quo-side edit never reaches the CRM through.
    pub fn computed_fields(&self) -> Vec<String> {
        let computed = |input: &Option<Input>| input.as_ref().is_some_and(|i| i.column().is_none());
        let mut out = Vec::new();
        for (name, input) in [
            (field::FIRST_NAME, &self.first_name),
            (field::LAST_NAME, &self.last_name),
            (field::COMPANY, &self.company),
            (field::ROLE, &self.role),
        ] {
            if computed(input) {
                out.push(name.to_string());
            }
        }
        if self.emails.iter().any(|m| m.value.column().is_none()) {
            out.push(field::EMAILS.to_string());
        }
        if self.phones.iter().any(|m| m.value.column().is_none()) {
            out.push(field::PHONE_NUMBERS.to_string());
        }
        for custom in self.custom.iter().filter(|c| c.field.column().is_none()) {
            out.push(format!("{}{}", field::CUSTOM_PREFIX, custom.key));
        }
        out
    }
}

/// Every source field the mapping reads (sorted, once each): the fingerprint's fields, and the
/// columns a CSV header is expected to have.
pub fn source_fields(config: &MappingConfig) -> Vec<String> {
    let mut fields: Vec<String> = config
        .sources()
        .into_iter()
        .flat_map(|(_, source)| match source {
            FieldSource::Column(column) => vec![column.clone()],
            // The fields a computed entry reads (a bad expression was refused at load).
            FieldSource::Computed { expr } => Expression::compile(expr, Yields::Value)
                .map(|e| e.inputs().to_vec())
                .unwrap_or_default(),
        })
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

/// Resolves `mapping.custom_fields` to Quo keys and types (exact name, then case-insensitive),
/// refusing unknown names, repeated fields, unwritable types and empty delimiters. Also returns
/// each key's display name.
fn resolve_custom(
    config: &MappingConfig,
    defs: &[CustomFieldDef],
) -> Result<(Vec<ResolvedCustom>, BTreeMap<String, String>), MappingConfigError> {
    let mut custom: Vec<ResolvedCustom> = Vec::new();
    let mut seen_keys: BTreeMap<String, usize> = BTreeMap::new();
    let mut def_names: BTreeMap<String, String> = BTreeMap::new();
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
        if !def.field_type.is_writable() {
            return Err(MappingConfigError::UnwritableCustomField {
                index,
                name: mapping.name.clone(),
                field_type: def.field_type.wire_name().to_string(),
            });
        }
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
            field: Input::new(
                &format!("mapping.custom_fields[{index}].field"),
                &mapping.field,
            )?,
            field_type: def.field_type.clone(),
            delimiter,
        });
        def_names.insert(def.key.clone(), def.name.clone());
    }
    Ok((custom, def_names))
}

pub(super) fn check_labels(
    key: &str,
    mappings: &[LabeledFieldMapping],
) -> Result<(), MappingConfigError> {
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

/// A text field back to its column; a computed one has none and is skipped (one-way).
pub(super) fn put_text(
    out: &mut BTreeMap<String, String>,
    mapped: &Option<Input>,
    value: &Option<String>,
) {
    if let Some(column) = mapped.as_ref().and_then(Input::column) {
        out.insert(column.to_string(), value.clone().unwrap_or_default());
    }
}

/// Emails or phones back to their columns by label; computed entries are skipped (one-way).
pub(super) fn put_labeled(
    out: &mut BTreeMap<String, String>,
    mappings: &[LabeledInput],
    items: &[Labeled],
) {
    for mapping in mappings {
        let Some(column) = mapping.value.column() else {
            continue;
        };
        let value = items
            .iter()
            .find(|i| i.name == mapping.name)
            .map(|i| i.value.clone())
            .unwrap_or_default();
        out.insert(column.to_string(), value);
    }
}
