//! Gathers what changed on the Quo side since the last cycle: pending webhook events from the
//! inbox and, when due, a scan of every contact with our `source`. Both are notices only; the
//! contact fetched from Quo is the truth.
//!
//! Echoes of our own writes are recognised without a request when the event carries the
//! `updatedAt` the ledger already stored from our write's response.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use sqlx::Row;
use tracing::{debug, info};

use crate::domain::{ExternalId, QuoContactId};
use crate::ledger::{Ledger, LedgerError};
use crate::quo::client::{QuoClient, QuoError};
use crate::quo::types::Contact;

/// Why intake failed.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Quo.
    #[error(transparent)]
    Quo(#[from] QuoError),
}

impl From<sqlx::Error> for IntakeError {
    fn from(e: sqlx::Error) -> Self {
        IntakeError::Ledger(LedgerError::Query(e))
    }
}

/// Quo-side changes for one cycle.
#[derive(Debug, Default)]
pub struct QuoChanges {
    /// Managed contacts whose Quo copy changed, by external id, as fetched now.
    pub changed: HashMap<String, Contact>,
    /// Managed contacts deleted in Quo.
    pub deleted: Vec<(ExternalId, QuoContactId)>,
    /// Inbox events consumed, by external id ("" for events that need nothing).
    pub events: HashMap<String, Vec<String>>,
    /// Whether a scan ran.
    pub scanned: bool,
    /// Our contacts in Quo that the ledger does not know (see `reconcile`).
    pub orphans: u64,
}

impl QuoChanges {
    fn note_event(&mut self, external_id: &str, event_id: &str) {
        self.events
            .entry(external_id.to_string())
            .or_default()
            .push(event_id.to_string());
    }
}

/// Reads pending inbox events (and scans when `scan` is set) into `QuoChanges`.
pub async fn gather(
    ledger: &Ledger,
    client: &QuoClient,
    scan: bool,
) -> Result<QuoChanges, IntakeError> {
    let mut changes = QuoChanges::default();
    let mut fetched: HashSet<String> = HashSet::new();
    for event in ledger.inbox_pending(10_000).await? {
        let Some(quo_id) = event.quo_id.clone() else {
            changes.note_event("", &event.event_id);
            continue;
        };
        let Some(row) = ledger.record_by_quo_id(&quo_id).await? else {
            debug!(event = "webhook_not_ours", event_id = %event.event_id, quo_id, "event for a contact quo-sync does not manage");
            changes.note_event("", &event.event_id);
            continue;
        };
        let external_id = row.external_id.to_string();
        changes.note_event(&external_id, &event.event_id);
        if fetched.contains(&quo_id) {
            continue;
        }
        if event.event_type == "contact.updated" {
            let payload: serde_json::Value =
                serde_json::from_str(&event.payload).unwrap_or_default();
            let object = payload["data"]
                .get("object")
                .or_else(|| payload["data"].get("resource"));
            let stamped = object.and_then(|o| o["updatedAt"].as_str());
            if stamped.is_some() && stamped == row.quo_updated_at.as_deref() {
                debug!(event = "webhook_echo", event_id = %event.event_id, external_id, quo_id, "our own write coming back; nothing to do");
                continue;
            }
        }
        fetched.insert(quo_id.clone());
        match client.get_contact(&quo_id).await? {
            None => changes
                .deleted
                .push((row.external_id.clone(), QuoContactId(quo_id))),
            Some(contact)
                if contact.updated_at.is_some() && contact.updated_at == row.quo_updated_at => {}
            Some(contact) => {
                changes.changed.insert(external_id, contact);
            }
        }
    }
    if scan {
        scan_all(ledger, client, &mut changes, &fetched).await?;
    }
    Ok(changes)
}

/// Lists every contact with our source and compares `updatedAt` with the ledger.
async fn scan_all(
    ledger: &Ledger,
    client: &QuoClient,
    changes: &mut QuoChanges,
    already: &HashSet<String>,
) -> Result<(), IntakeError> {
    // quo id → (external id, stored updatedAt) for every linked record.
    let mut known: HashMap<String, (String, Option<String>)> = HashMap::new();
    let mut rows = sqlx::query("SELECT quo_id, external_id, quo_updated_at FROM records WHERE quo_id IS NOT NULL AND state = 'synced'")
        .fetch(ledger.pool());
    while let Some(row) = rows.try_next().await? {
        known.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
    }
    drop(rows);
    let mut seen: HashSet<String> = HashSet::new();
    let mut token: Option<String> = None;
    let mut pages = 0u32;
    loop {
        let page = client.list_page(token.as_deref()).await?;
        pages += 1;
        for contact in page.data {
            seen.insert(contact.id.clone());
            match known.get(&contact.id) {
                None => changes.orphans += 1,
                Some((external_id, stored)) => {
                    if already.contains(&contact.id) || changes.changed.contains_key(external_id) {
                        continue;
                    }
                    if contact.updated_at.is_none() || contact.updated_at != *stored {
                        changes.changed.insert(external_id.clone(), contact);
                    }
                }
            }
        }
        match page.next_page_token.filter(|t| !t.is_empty()) {
            Some(next) if Some(&next) != token.as_ref() => token = Some(next),
            _ => break,
        }
    }
    for (quo_id, (external_id, _)) in &known {
        if !seen.contains(quo_id)
            && !already.contains(quo_id)
            && let Ok(id) = ExternalId::parse(external_id)
        {
            changes.deleted.push((id, QuoContactId(quo_id.clone())));
        }
    }
    changes.scanned = true;
    info!(
        event = "quo_scanned",
        pages,
        contacts = seen.len(),
        changed = changes.changed.len(),
        deleted = changes.deleted.len(),
        orphans = changes.orphans,
        "scanned Quo for changes"
    );
    Ok(())
}
