//! Source adapters: where CRM records come from and where reverse-path changes go back to.
//!
//! One enum per side keeps dispatch simple (async trait methods are not object safe); each
//! adapter lives in its own file. Every adapter streams records through a bounded channel so
//! memory does not grow with the size of the CRM, and reports rows it cannot read as
//! `SourceItem::Bad` instead of dropping them or stopping.

pub mod csv;
pub mod rest;
pub mod watch;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::config::{SourceConfig, SourceKind};
use crate::domain::ExternalId;

/// One CRM record, as raw text per source field (CSV column, or REST field name).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    /// The CRM id.
    pub external_id: ExternalId,
    /// Raw values by source field name; absent and empty are the same to the mapping.
    pub fields: BTreeMap<String, String>,
    /// The CRM's last-modified time, when it has one.
    pub updated_at: Option<DateTime<Utc>>,
    /// Where the record was read, for error messages (`contacts.csv line 12`).
    pub location: String,
}

/// A row the adapter could not turn into a record; it is quarantined, never dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRecord {
    /// Where it was read (`contacts.csv line 12`).
    pub location: String,
    /// Its id, when one could be read.
    pub external_id: Option<String>,
    /// Why it could not be read.
    pub reason: String,
    /// The raw row (lossy text), for the operator.
    pub raw: String,
    /// The field to blame (the id column for a missing or repeated id) and its value as read,
    /// when one is to blame.
    pub blame: Option<Box<Blame>>,
}

/// The field of an unreadable row to blame, with its value as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blame {
    /// The field (a CSV column, a JSON pointer).
    pub field: String,
    /// Its value.
    pub value: String,
}

/// What an adapter yields while reading.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceItem {
    /// A readable record.
    Record(SourceRecord),
    /// An unreadable row.
    Bad(BadRecord),
}

/// An item of a fingerprinting read (`Source::read_digested`).
#[derive(Debug)]
pub enum DigestedItem {
    /// A usable row with the digest of its fingerprinted cells.
    Row(DigestedRow),
    /// Anything else, as a plain read yields it.
    Item(SourceItem),
}

/// A usable row, compared by digest first and built into a record only when it is needed.
#[derive(Debug)]
pub struct DigestedRow {
    /// The CRM id.
    pub external_id: ExternalId,
    /// `RawFingerprint::digest` of the row's cells (equals the digest of `Mapper::fingerprint`).
    pub digest: u64,
    /// The CRM's last-modified time, when it has one.
    pub updated_at: Option<DateTime<Utc>>,
    raw: csv::RawRow,
}

impl DigestedRow {
    /// The record, exactly as a plain read would have yielded it.
    pub fn into_record(self) -> SourceRecord {
        self.raw.into_record(self.external_id, self.updated_at)
    }
}

/// How much of the CRM a read covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadRequest {
    /// Only records modified since then (adapters without incremental reads ignore it).
    pub since: Option<DateTime<Utc>>,
}

/// What a finished read tells the planner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadSummary {
    /// Every record was listed, so a ledger row not seen means the record is gone.
    pub complete: bool,
    /// Records and bad rows yielded.
    pub items: u64,
}

/// A change for the CRM from the reverse path: new raw values for some source fields.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmChange {
    /// The record to change.
    pub external_id: ExternalId,
    /// New raw values by source field name (empty string clears).
    pub fields: BTreeMap<String, String>,
    /// The change time, written to the record's last-modified field where it has one.
    pub updated_at: DateTime<Utc>,
}

/// Outcome of applying changes back to the CRM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteReport {
    /// Records written.
    pub written: Vec<ExternalId>,
    /// Records the CRM refused as conflicting (changed since read, 409/412): retried later.
    pub conflicted: Vec<ExternalId>,
    /// Records that failed, with the reason.
    pub failed: Vec<(ExternalId, String)>,
    /// Values the CRM cannot hold (a character the CSV file's encoding lacks): the rest of the
    /// record was written (it is in `written`), this field was left as it was.
    pub unwritable: Vec<Unwritable>,
}

/// One value write-back left out of an otherwise written record.
#[derive(Debug, Clone, PartialEq)]
pub struct Unwritable {
    /// The record.
    pub external_id: ExternalId,
    /// The source field (CSV column).
    pub field: String,
    /// Why (`😀 (U+1F600) cannot be written in windows-1252`).
    pub reason: String,
}

/// A record to make in the CRM from a contact made in the Quo app (`reverse.create_in_crm`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    /// The Quo contact it is made from.
    pub quo_id: String,
    /// Its id when the adapter takes one (CSV: `reverse.new_record_id`); a REST CRM assigns its
    /// own.
    pub external_id: Option<ExternalId>,
    /// Raw values by source field name.
    pub fields: BTreeMap<String, String>,
    /// Its last-modified time.
    pub updated_at: DateTime<Utc>,
}

/// How one create ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// The CRM has the record, with this id (made now, or found made by an earlier attempt).
    Made(ExternalId),
    /// The CRM refused it: nothing was made (a later cycle may try again).
    Refused(String),
    /// The outcome is not known (a lost answer, a 5xx): the record may exist, so it is not sent
    /// again; a later read finds it by the Quo id it carries.
    Unknown(String),
}

/// Failures that stop a read or a write as a whole (per-row problems are `BadRecord`s).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The CSV file could not be opened or read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The OS or parser message.
        reason: String,
    },
    /// The file's header lacks a configured column.
    #[error("{path}: the header has no column {column:?} (configured as {key})")]
    MissingColumn {
        /// The file.
        path: String,
        /// The missing column.
        column: String,
        /// The config key that names it.
        key: String,
    },
    /// The file changed on disk since this cycle read it; the write is retried next cycle.
    #[error("{path} changed on disk since it was read; write-back postponed to the next cycle")]
    ChangedSinceRead {
        /// The file.
        path: String,
    },
    /// The CRM refused our credentials (401/403): the cycle stops, the ledger is untouched.
    #[error("the CRM refused the credentials ({status}) at {url}")]
    Unauthorized {
        /// HTTP status.
        status: u16,
        /// The URL, without query secrets.
        url: String,
    },
    /// The CRM's OAuth2 token endpoint refused the client or refresh token
    /// (`invalid_client`, `invalid_grant`, …): an operator must fix them; maps to exit code 2.
    #[error(
        "the CRM's token endpoint {url} refused the credentials ({error}); check source.rest.auth"
    )]
    CredentialsRefused {
        /// The token endpoint.
        url: String,
        /// The status and OAuth2 error code, never a secret.
        error: String,
    },
    /// Any other failure talking to the CRM.
    #[error("CRM request failed: {0}")]
    Crm(String),
    /// The adapter's own configuration (e.g. `[source.rest]`) is unusable; maps to exit code 2.
    #[error("invalid source configuration: {0}")]
    Config(String),
    /// The reader stopped because the receiver went away (shutdown).
    #[error("read cancelled")]
    Cancelled,
    /// A write was not sent: shutdown was requested, or this process no longer holds the
    /// ledger's writer lease (its time ran out, or another process took it).
    #[error("CRM write not sent: {0}")]
    NotSent(&'static str),
}

/// What every CRM write asks just before it is sent: the cycle's cancel token (shutdown, a
/// failure no record can get past) and the leader's write fence (`quo::fence`), which also caps
/// the write's timeout. A batch of writes stops at the first one it refuses.
#[derive(Debug, Clone, Default)]
pub struct WriteGuard {
    /// The leader's fence; `None` on an unfenced ledger.
    pub fence: Option<crate::quo::fence::WriteFence>,
    /// Cancelled on shutdown.
    pub cancel: tokio_util::sync::CancellationToken,
}

impl WriteGuard {
    /// Admits one write configured with `timeout`: the timeout to send it with, or why it must
    /// not be sent.
    pub async fn admit(
        &self,
        timeout: std::time::Duration,
    ) -> Result<std::time::Duration, SourceError> {
        if self.cancel.is_cancelled() {
            return Err(SourceError::NotSent("shutdown requested"));
        }
        match &self.fence {
            None => Ok(timeout),
            Some(fence) => fence.admit(timeout).await.ok_or(SourceError::NotSent(
                "this process no longer holds the writer lease",
            )),
        }
    }
}

/// What a CSV rewrite (a local file, written and renamed at once) asks of the write fence.
const CSV_WRITE: std::time::Duration = std::time::Duration::from_secs(1);

/// A configured source adapter.
#[derive(Debug)]
pub enum Source {
    /// A CSV file.
    Csv(csv::CsvSource),
    /// A REST CRM (boxed: it is much larger than the other variants).
    Rest(Box<rest::RestSource>),
}

impl Source {
    /// Builds the adapter the configuration names, knowing which source fields the mapping
    /// reads (a CSV header's separator is chosen by them).
    pub fn from_config_mapped(
        config: &SourceConfig,
        mapping: &crate::config::MappingConfig,
    ) -> Result<Self, SourceError> {
        Ok(match Self::from_config(config)? {
            Source::Csv(csv) => Source::Csv(csv.expect_columns(mapping)),
            other => other,
        })
    }

    /// Builds the adapter the configuration names.
    pub fn from_config(config: &SourceConfig) -> Result<Self, SourceError> {
        match config.kind {
            SourceKind::Csv => Ok(Source::Csv(csv::CsvSource::new(config))),
            SourceKind::Rest => {
                let table = config.rest.as_ref().ok_or_else(|| {
                    SourceError::Config("source.rest: required when source.kind = \"rest\"".into())
                })?;
                Ok(Source::Rest(Box::new(rest::RestSource::from_table(table)?)))
            }
        }
    }

    /// Streams the records into `tx`; per-row problems arrive as `SourceItem::Bad`.
    pub async fn read(
        &self,
        request: ReadRequest,
        tx: mpsc::Sender<SourceItem>,
    ) -> Result<ReadSummary, SourceError> {
        match self {
            Source::Csv(csv) => csv.read(request, tx).await,
            Source::Rest(rest) => rest.read(request, tx).await,
        }
    }

    /// A read in batches where the adapter can fingerprint raw rows itself (CSV), so unchanged
    /// rows are never built into records; other adapters yield plain items.
    pub async fn read_digested(
        &self,
        request: ReadRequest,
        fingerprint: crate::mapping::RawFingerprint,
        tx: mpsc::Sender<Vec<DigestedItem>>,
    ) -> Result<ReadSummary, SourceError> {
        match self {
            Source::Csv(csv) => csv.read_digested(fingerprint, tx).await,
            Source::Rest(rest) => {
                let (inner, mut rx) = mpsc::channel(4096);
                let forward = async move {
                    let mut batch = Vec::with_capacity(512);
                    while rx.recv_many(&mut batch, 512).await > 0 {
                        let items = batch.drain(..).map(DigestedItem::Item).collect();
                        if tx.send(items).await.is_err() {
                            break;
                        }
                    }
                };
                let (summary, ()) = tokio::join!(rest.read(request, inner), forward);
                summary
            }
        }
    }

    /// Applies reverse-path changes to the CRM, each write admitted by `guard` first (the CSV
    /// file is one write).
    pub async fn write_back(
        &self,
        changes: &[CrmChange],
        guard: &WriteGuard,
    ) -> Result<WriteReport, SourceError> {
        match self {
            Source::Csv(csv) => {
                guard.admit(CSV_WRITE).await?;
                csv.write_back(changes).await
            }
            Source::Rest(rest) => rest.write_back_guarded(changes, guard).await,
        }
    }

    /// Makes records from contacts made in Quo, at most once each (see [`Created`]), by Quo id,
    /// each create admitted by `guard` first (the CSV file is one write): a refused guard sends
    /// nothing (`SourceError::NotSent`).
    pub async fn create_records(
        &self,
        records: &[NewRecord],
        guard: &WriteGuard,
    ) -> Result<Vec<(String, Created)>, SourceError> {
        match self {
            Source::Csv(csv) => {
                guard.admit(CSV_WRITE).await?;
                let rows: Vec<(String, CrmChange)> = records
                    .iter()
                    .filter_map(|r| {
                        let id = r.external_id.clone()?;
                        Some((
                            r.quo_id.clone(),
                            CrmChange {
                                external_id: id,
                                fields: r.fields.clone(),
                                updated_at: r.updated_at,
                            },
                        ))
                    })
                    .collect();
                let changes: Vec<CrmChange> = rows.iter().map(|(_, c)| c.clone()).collect();
                let report = csv.append_records(&changes).await?;
                Ok(rows
                    .into_iter()
                    .map(|(quo_id, change)| {
                        let id = change.external_id;
                        let outcome = if report.written.contains(&id) {
                            Created::Made(id)
                        } else {
                            let reason = report
                                .failed
                                .iter()
                                .find(|(f, _)| *f == id)
                                .map_or_else(|| "not written".to_string(), |(_, r)| r.clone());
                            Created::Refused(reason)
                        };
                        (quo_id, outcome)
                    })
                    .collect())
            }
            Source::Rest(rest) => rest.create_records(records, guard).await,
        }
    }

    /// Whether records can be made in this CRM (CSV always; REST with `[source.rest.create]`).
    pub fn can_create(&self) -> bool {
        match self {
            Source::Csv(_) => true,
            Source::Rest(rest) => rest.can_create(),
        }
    }

    /// Whether a record made from a Quo contact gets an id known in advance
    /// (`reverse.new_record_id`), so a read can tell whether an interrupted create landed.
    pub fn assigns_ids(&self) -> bool {
        matches!(self, Source::Csv(_))
    }

    /// How long after a create whose answer was lost a complete read may still not show the
    /// record it made: zero for a CSV file (read whole, it cannot lag), `create.lookup_window`
    /// for a REST CRM.
    pub fn create_lookup_window(&self) -> std::time::Duration {
        match self {
            Source::Csv(_) => std::time::Duration::ZERO,
            Source::Rest(rest) => rest.create_lookup_window(),
        }
    }

    /// Deletes records in the CRM (`reverse.on_quo_delete = "delete_in_crm"`), admitted by
    /// `guard` first.
    pub async fn delete_records(
        &self,
        ids: &[ExternalId],
        guard: &WriteGuard,
    ) -> Result<WriteReport, SourceError> {
        match self {
            Source::Csv(csv) => {
                guard.admit(CSV_WRITE).await?;
                csv.delete_records(ids).await
            }
            Source::Rest(_) => Err(SourceError::Crm(
                "deleting records is not supported by the REST adapter; use reverse.on_quo_delete = \"unlink\"".into(),
            )),
        }
    }

    /// Whether this cycle should read everything (`true`) or only changes since the last
    /// high-water mark; adapters without incremental reads always read everything.
    pub fn wants_full_read(&self, last_full: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        match self {
            Source::Csv(_) => true,
            Source::Rest(rest) => {
                !rest.supports_incremental() || rest.wants_full_read(last_full, now)
            }
        }
    }

    /// Whether the last read fetched only the records a CRM webhook named: not complete, and
    /// no evidence of what else changed, so the incremental high-water mark must stay.
    pub fn last_read_was_named(&self) -> bool {
        match self {
            Source::Csv(_) => false,
            Source::Rest(rest) => rest.last_read_was_named(),
        }
    }

    /// The service's `schedule.interval`: a read of webhook-named records replaces the list
    /// read only while the last list read is younger than this.
    pub fn set_list_read_every(&self, every: std::time::Duration) {
        if let Source::Rest(rest) = self {
            rest.set_list_read_every(every);
        }
    }

    /// Lets the leader's reads take the CRM change notices stored in `ledger` by any replica
    /// (`None` stops it: a standby or a `plan` takes none).
    pub fn take_notices_from(&self, ledger: Option<crate::ledger::Ledger>) {
        if let Source::Rest(rest) = self {
            rest.take_notices_from(ledger);
        }
    }

    /// The refusal clock of the adapter's credential (the REST source's; a CSV file has none).
    pub fn auth_grace(&self) -> Option<&std::sync::Arc<crate::quo::grace::AuthGrace>> {
        match self {
            Source::Csv(_) => None,
            Source::Rest(rest) => Some(rest.auth_grace()),
        }
    }

    /// Lets the adapter keep state in the ledger (the REST source's rotated OAuth2 refresh token).
    pub fn attach_ledger(&self, ledger: &crate::ledger::Ledger) {
        if let Source::Rest(rest) = self {
            rest.attach_ledger(ledger.clone());
        }
    }

    /// A short human description (`csv config/contacts.csv`).
    pub fn describe(&self) -> String {
        match self {
            Source::Csv(csv) => csv.describe(),
            Source::Rest(rest) => rest.describe(),
        }
    }

    /// The CSV dialect the last read found (`plan` shows it); `None` for other sources or
    /// before a read.
    pub fn describe_dialect(&self) -> Option<String> {
        match self {
            Source::Csv(csv) => csv.describe_dialect(),
            Source::Rest(_) => None,
        }
    }
}
