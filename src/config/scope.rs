//! Configuration that decides what syncs: `sync.filter` (which records are in scope),
//! `sync.on_leave_scope`, `sync.mode`, and the computed form of a mapping entry
//! (`company = { expr = '...' }`). Expressions are compiled here, so `check-config` and start-up
//! refuse a bad one (exit 2) naming the key, the expression and the position.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Config, ConfigError};
use crate::expr::{Expression, Yields};

/// `sync.mode`: which writes a cycle may make to Quo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Create contacts for new records and update linked ones (default).
    #[default]
    Upsert,
    /// Never create: records without a contact are skipped (and counted); linked ones update.
    UpdateOnly,
    /// Create and link, never PATCH a managed field afterwards (Quo's edits stand).
    CreateOnly,
}

impl SyncMode {
    /// The configured word.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Upsert => "upsert",
            SyncMode::UpdateOnly => "update_only",
            SyncMode::CreateOnly => "create_only",
        }
    }
}

/// `sync.on_leave_scope`: what happens to the contact of a synced record that the filter no
/// longer admits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLeaveScope {
    /// The contact stays linked and is no longer updated (default).
    #[default]
    Keep,
    /// quo-sync forgets the link; the contact stays in Quo as it is (its `externalId` too), and
    /// the record relinks to it if it comes back into scope.
    Unlink,
    /// The contact is deleted (behind the mass-deletion guard).
    Delete,
}

impl OnLeaveScope {
    /// The configured word.
    pub fn as_str(self) -> &'static str {
        match self {
            OnLeaveScope::Keep => "keep",
            OnLeaveScope::Unlink => "unlink",
            OnLeaveScope::Delete => "delete",
        }
    }
}

/// Where a mapped value comes from: a source column (`company = "org"`), or an expression over
/// the record (`company = { expr = 'record.org + " " + record.dept' }`), which is one-way: the
/// reverse path never writes a computed field back to the CRM.
#[derive(Clone, PartialEq, Eq)]
pub enum FieldSource {
    /// A source field (CSV column, REST field).
    Column(String),
    /// A CEL expression over `record`.
    Computed {
        /// The expression.
        expr: String,
    },
}

impl fmt::Debug for FieldSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldSource::Column(column) => write!(f, "{column:?}"),
            FieldSource::Computed { expr } => write!(f, "{{ expr = {expr:?} }}"),
        }
    }
}

impl FieldSource {
    /// The source column, when this is one (`None` for a computed value).
    pub fn column(&self) -> Option<&str> {
        match self {
            FieldSource::Column(column) => Some(column),
            FieldSource::Computed { .. } => None,
        }
    }

    /// A short name for messages and quarantine entries: the column, or `{expr}`.
    pub fn label(&self) -> String {
        match self {
            FieldSource::Column(column) => column.clone(),
            FieldSource::Computed { expr } => format!("{{{expr}}}"),
        }
    }
}

impl From<&str> for FieldSource {
    fn from(column: &str) -> Self {
        FieldSource::Column(column.to_string())
    }
}

/// Written as it is read: a column as a string, a computed value as `{ expr = "..." }`
/// (`check-config --print`).
impl Serialize for FieldSource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FieldSource::Column(column) => serializer.serialize_str(column),
            FieldSource::Computed { expr } => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("expr", expr)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for FieldSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Source;
        impl<'de> Visitor<'de> for Source {
            type Value = FieldSource;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a column name, or { expr = \"<expression over record>\" }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldSource, E> {
                Ok(FieldSource::Column(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FieldSource, A::Error> {
                let mut expr: Option<String> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "expr" => expr = Some(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, &["expr"])),
                    }
                }
                expr.map(|expr| FieldSource::Computed { expr })
                    .ok_or_else(|| de::Error::missing_field("expr"))
            }
        }
        deserializer.deserialize_any(Source)
    }
}

impl Config {
    /// Compiles `sync.filter` and every computed mapping entry, refusing the first bad one with
    /// its key, the expression and the position.
    pub(super) fn validate_scope(&self, file: &str) -> Result<(), ConfigError> {
        let check = |key: String, source: &str, yields| {
            Expression::compile(source, yields)
                .map(drop)
                .map_err(|e| ConfigError::BadValue {
                    file: file.to_string(),
                    key,
                    reason: e.to_string(),
                })
        };
        if let Some(filter) = &self.sync.filter {
            check("sync.filter".into(), filter, Yields::Bool)?;
        }
        for (key, source) in self.mapping.sources() {
            if let FieldSource::Computed { expr } = source {
                check(key, expr, Yields::Value)?;
            }
        }
        Ok(())
    }
}

impl super::MappingConfig {
    /// Every mapping entry with its dotted key (`mapping.company`,
    /// `mapping.custom_fields[2].field`), in mapping order.
    pub fn sources(&self) -> Vec<(String, &FieldSource)> {
        let mut out: Vec<(String, &FieldSource)> = [
            ("first_name", &self.first_name),
            ("last_name", &self.last_name),
            ("company", &self.company),
            ("role", &self.role),
        ]
        .into_iter()
        .filter_map(|(key, source)| Some((format!("mapping.{key}"), source.as_ref()?)))
        .collect();
        for (i, m) in self.emails.iter().enumerate() {
            out.push((format!("mapping.emails[{i}].field"), &m.field));
        }
        for (i, m) in self.phones.iter().enumerate() {
            out.push((format!("mapping.phones[{i}].field"), &m.field));
        }
        for (i, m) in self.custom_fields.iter().enumerate() {
            out.push((format!("mapping.custom_fields[{i}].field"), &m.field));
        }
        out
    }
}
