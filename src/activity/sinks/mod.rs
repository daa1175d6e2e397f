//! Where activity goes: the activity CSV file ([`csv`]) or one object per activity in a REST
//! CRM ([`rest`]). Both answer the same three questions the pipeline asks: create these, bring
//! these up to date, and "does the CRM already hold this one?" (the lookup that settles an
//! interrupted create before any second one).

pub mod csv;
pub mod rest;
pub mod template;

use std::sync::Arc;

use super::config::ActivityConfig;
use super::model::ActivityDocument;
use crate::source::{Source, WriteGuard};

/// What writing the activity file asks of the write fence (a local file, written and renamed at
/// once), like the contacts write-back.
const CSV_WRITE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a sink cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The activity file cannot be read or written.
    #[error("activity file {0}")]
    Io(String),
    /// The sink's configuration does not fit (a missing column, a CSV source with
    /// `[activity.rest]`).
    #[error("{0}")]
    Config(String),
}

/// One activity to write.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Quo's id.
    pub activity_id: String,
    /// The CRM object's id, for updates.
    pub crm_id: Option<String>,
    /// What the CRM gets.
    pub doc: ActivityDocument,
}

/// How one write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The CRM holds it, under this id.
    Written {
        /// The CRM object's id.
        crm_id: String,
    },
    /// The CRM refused it; nothing was made (retried later with backoff).
    Refused(String),
    /// It may or may not have been made: settled by a lookup before any second create.
    Ambiguous(String),
    /// The object to update is gone from the CRM (it is made again).
    Missing,
    /// Not sent: the write fence refused (shutdown, or the writer lease is no longer ours).
    NotSent(String),
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The CRM holds it, under this id.
    Yes(String),
    /// It does not.
    No,
    /// The lookup could not tell (retried later).
    Unknown(String),
}

/// The configured sink.
#[derive(Debug, Clone)]
pub enum Sink {
    /// `[activity.csv]`.
    Csv(csv::CsvSink),
    /// `[activity.rest]`.
    Rest(rest::RestSink),
}

impl Sink {
    /// Opens the sink `config` names (the CSV file is created with its header when missing).
    pub fn open(config: &ActivityConfig, source: Arc<Source>) -> Result<Self, SinkError> {
        match (&config.csv, &config.rest) {
            (_, Some(rest)) => Ok(Sink::Rest(rest::RestSink::new(rest, source)?)),
            (Some(csv), None) => Ok(Sink::Csv(csv::CsvSink::open(
                &csv.path,
                config.full_content(),
            )?)),
            (None, None) => Err(SinkError::Config(
                "activity: set [activity.csv] path or [activity.rest]".into(),
            )),
        }
    }

    /// Creates these (never twice where a lookup exists: see the pipeline), each write admitted
    /// by `guard` first.
    pub async fn create(&self, items: &[Outgoing], guard: &WriteGuard) -> Vec<Outcome> {
        match self {
            Sink::Csv(csv) => {
                if let Err(e) = guard.admit(CSV_WRITE).await {
                    return not_sent(items, e);
                }
                let (csv, items) = (csv.clone(), items.to_vec());
                tokio::task::spawn_blocking(move || csv.create(&items))
                    .await
                    .unwrap_or_else(|e| vec![Outcome::Ambiguous(e.to_string())])
            }
            Sink::Rest(rest) => rest.create(items, guard).await,
        }
    }

    /// Brings these up to date, each write admitted by `guard` first.
    pub async fn update(&self, items: &[Outgoing], guard: &WriteGuard) -> Vec<Outcome> {
        match self {
            Sink::Csv(csv) => {
                if let Err(e) = guard.admit(CSV_WRITE).await {
                    return not_sent(items, e);
                }
                let (csv, items) = (csv.clone(), items.to_vec());
                tokio::task::spawn_blocking(move || csv.update(&items))
                    .await
                    .unwrap_or_else(|e| vec![Outcome::Refused(e.to_string())])
            }
            Sink::Rest(rest) => rest.update(items, guard).await,
        }
    }

    /// Whether the CRM already holds `activity_id`.
    pub async fn lookup(&self, activity_id: &str) -> Found {
        match self {
            Sink::Csv(csv) => {
                let (csv, id) = (csv.clone(), activity_id.to_string());
                tokio::task::spawn_blocking(move || csv.lookup(&id))
                    .await
                    .unwrap_or_else(|e| Found::Unknown(e.to_string()))
            }
            Sink::Rest(rest) => rest.lookup(activity_id).await,
        }
    }

    /// Whether an interrupted create can be settled by a lookup.
    pub fn has_lookup(&self) -> bool {
        match self {
            Sink::Csv(_) => true,
            Sink::Rest(rest) => rest.has_lookup(),
        }
    }

    /// Whether later enrichment can be written.
    pub fn can_update(&self) -> bool {
        match self {
            Sink::Csv(_) => true,
            Sink::Rest(rest) => rest.can_update(),
        }
    }

    /// A link to the CRM's copy, for the console.
    pub fn link(&self, crm_id: &str) -> Option<String> {
        match self {
            Sink::Csv(_) => None,
            Sink::Rest(rest) => rest.link(crm_id),
        }
    }

    /// A short description for logs and `status`.
    pub fn describe(&self) -> String {
        match self {
            Sink::Csv(csv) => format!("csv {}", csv.path().display()),
            Sink::Rest(rest) => format!("rest {}", rest.describe()),
        }
    }
}

/// Every item not sent, for the reason the fence gave.
fn not_sent(items: &[Outgoing], why: crate::source::SourceError) -> Vec<Outcome> {
    items
        .iter()
        .map(|_| Outcome::NotSent(why.to_string()))
        .collect()
}
