//! `[source]`: which adapter reads the CRM and, for a CSV file, where and in which dialect
//! (`[source.rest]` is read and checked by its owner, `src/source/rest/config/`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    ConfigError, CsvDelimiter, CsvEncoding, CsvEscape, CsvQuote, HumanDuration, KeyRefusal,
    RestTableFacts, print,
};

/// Which adapter reads the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A CSV file.
    Csv,
    /// A REST CRM.
    Rest,
}

/// `[source]`. Its Debug shows `[source.rest]` as `check-config --print` does, secrets redacted.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `csv` or `rest`.
    pub kind: SourceKind,
    /// The CSV file (csv).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The column holding the CRM id (csv), default `crm_id`.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// The column holding the last-modified time (csv), default `updated_at`; empty for none.
    #[serde(default = "default_updated_at_field")]
    pub updated_at_field: String,
    /// `[source.rest]`: the REST CRM (rest).
    #[serde(default, serialize_with = "print::rest_table")]
    pub rest: Option<toml::Table>,
    /// Watch the CSV file and start a cycle when it changes (csv), default true; turn off where
    /// file events are unreliable (some network filesystems) and rely on `schedule.interval`.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// The CSV file's field separator (csv): `","`, `";"`, `"\t"`, `"|"` or `"auto"` (default:
    /// chosen from the header line).
    #[serde(default)]
    pub delimiter: CsvDelimiter,
    /// The CSV file's encoding (csv), default `auto`.
    #[serde(default)]
    pub encoding: CsvEncoding,
    /// The CSV quote character (csv), default `"`.
    #[serde(default)]
    pub quote: CsvQuote,
    /// The CSV escape character inside quotes (csv), default none (doubled quotes).
    #[serde(default)]
    pub escape: CsvEscape,
    /// How long the CSV file's size and modification time must stay unchanged before
    /// `quo-sync run` reads it (csv), default `1s`; `0s` reads at once.
    #[serde(default = "default_quiet_period")]
    pub quiet_period: HumanDuration,
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rest = self.rest.as_ref().map(|table| {
            let mut shown = table.clone();
            super::print::redact_table(&mut shown);
            shown
        });
        f.debug_struct("SourceConfig")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("id_field", &self.id_field)
            .field("updated_at_field", &self.updated_at_field)
            .field("rest", &rest)
            .field("watch", &self.watch)
            .field("delimiter", &self.delimiter)
            .field("encoding", &self.encoding)
            .field("quote", &self.quote)
            .field("escape", &self.escape)
            .field("quiet_period", &self.quiet_period)
            .finish()
    }
}

fn default_quiet_period() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn default_true() -> bool {
    true
}

fn default_id_field() -> String {
    "crm_id".into()
}

fn default_updated_at_field() -> String {
    "updated_at".into()
}

impl SourceConfig {
    /// `[source]`: what its kind needs, a `[source.rest]` table without an unknown or bad key, and an id column.
    /// The `[source.rest]` table is checked by its owner, the REST adapter (`check_rest`).
    pub(super) fn validate(
        &self,
        bad: &dyn Fn(&str, String) -> ConfigError,
        check_rest: fn(&toml::Table) -> Result<RestTableFacts, KeyRefusal>,
    ) -> Result<(), ConfigError> {
        match self.kind {
            SourceKind::Csv if self.path.is_none() => {
                return Err(bad(
                    "source.path",
                    "required when source.kind = \"csv\": the CSV file to read".into(),
                ));
            }
            SourceKind::Rest if self.rest.is_none() => {
                return Err(bad(
                    "source.rest",
                    "required when source.kind = \"rest\": the [source.rest] table".into(),
                ));
            }
            _ => {}
        }
        if let Some(table) = &self.rest {
            // The whole REST table is checked here, so check-config and start-up catch an
            // unknown or bad key (secrets from env/files are resolved when the source is built).
            check_rest(table).map_err(|e| {
                let key = if e.key.is_empty() {
                    "source.rest".to_string()
                } else {
                    format!("source.rest.{}", e.key)
                };
                bad(&key, e.reason)
            })?;
        }
        if self.id_field.trim().is_empty() {
            return Err(bad(
                "source.id_field",
                "expected the name of the id column".into(),
            ));
        }
        Ok(())
    }
}
