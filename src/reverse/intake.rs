//! Gathers what changed on the Quo side since the last cycle: pending webhook events from the
//! inbox and, when due, a scan of every contact with our `source`. Both are notices only; the
//! contact fetched from Quo is the truth.
//!
//! Echoes of our own writes are recognised without a request when the event carries the
//! `updatedAt` the ledger already stored from our write's response.
//!
//! Absence is not deletion: a linked contact missing from a scan is fetched by id, and only a
//! 404 counts as deleted. A scan whose paging goes wrong (a repeated page token, retries run out)
//! is abandoned without concluding anything, and tried again next cycle. One contact that cannot
//! be read (an undecodable body, a persistent 5xx) is set apart for that record alone.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use sqlx::Row;
use tracing::{debug, info, warn};

use crate::domain::{ExternalId, QuoContactId};
use crate::ledger::{Ledger, LedgerError};
use crate::quo::client::{PageTokens, QuoClient, QuoError};
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
    /// Linked contacts that could not be read this cycle; their records are quarantined (stage
    /// `quo`) and their events stay pending.
    pub unreadable: Vec<UnreadableContact>,
}

/// A linked contact Quo would not give us in readable form this cycle.
#[derive(Debug, Clone)]
pub struct UnreadableContact {
    /// The record it belongs to.
    pub external_id: ExternalId,
    /// Its Quo id.
    pub quo_id: String,
    /// Why.
    pub reason: String,
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
        confirm(
            client,
            &row.external_id,
            &quo_id,
            row.quo_updated_at.as_deref(),
            &mut changes,
        )
        .await?;
    }
    if scan {
        match scan_all(ledger, client, &mut changes, &fetched).await {
            Ok(()) => {}
            Err(IntakeError::Quo(e)) if !e.is_fatal() => {
                // Nothing is concluded from a partial listing; the next cycle scans again.
                warn!(event = "scan_failed", error = %e, "Quo scan abandoned; no deletion concluded, retrying next cycle");
                metrics::counter!("quo_sync_scans_failed_total").increment(1);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(changes)
}

/// Reads one linked contact by id: deleted only on a 404; changed when its `updatedAt` moved;
/// unreadable (set apart, not fatal) on anything else but a bad key or shutdown.
async fn confirm(
    client: &QuoClient,
    external_id: &ExternalId,
    quo_id: &str,
    stored_updated_at: Option<&str>,
    changes: &mut QuoChanges,
) -> Result<(), IntakeError> {
    match client.get_contact(quo_id).await {
        Ok(None) => changes
            .deleted
            .push((external_id.clone(), QuoContactId(quo_id.to_string()))),
        Ok(Some(contact))
            if contact.updated_at.is_some()
                && contact.updated_at.as_deref() == stored_updated_at => {}
        Ok(Some(contact)) => {
            changes.changed.insert(external_id.to_string(), contact);
        }
        Err(e) if e.is_fatal() => return Err(e.into()),
        Err(e) => changes.unreadable.push(UnreadableContact {
            external_id: external_id.clone(),
            quo_id: quo_id.to_string(),
            reason: e.to_string(),
        }),
    }
    Ok(())
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
    let mut tokens = PageTokens::default();
    let mut token: Option<String> = None;
    let mut pages = 0u32;
    let mut changed = HashMap::new();
    let mut unreadable = Vec::new();
    loop {
        let page = client.list_page(token.as_deref()).await?;
        pages += 1;
        for odd in page.undecodable {
            let Some(quo_id) = odd.quo_id else { continue };
            seen.insert(quo_id.clone());
            if let Some((external_id, _)) = known.get(&quo_id)
                && let Ok(external_id) = ExternalId::parse(external_id)
            {
                unreadable.push(UnreadableContact {
                    external_id,
                    quo_id,
                    reason: format!("Quo's copy does not decode: {}", odd.reason),
                });
            }
        }
        for contact in page.contacts {
            seen.insert(contact.id.clone());
            match known.get(&contact.id) {
                None => changes.orphans += 1,
                Some((external_id, stored)) => {
                    if already.contains(&contact.id) || changes.changed.contains_key(external_id) {
                        continue;
                    }
                    if contact.updated_at.is_none() || contact.updated_at != *stored {
                        changed.insert(external_id.clone(), contact);
                    }
                }
            }
        }
        match page.next_page_token {
            Some(next) => {
                tokens.next("GET /v1/contacts", &next)?;
                token = Some(next);
            }
            None => break,
        }
    }
    // The listing is complete: only now does it say anything. Missing contacts are confirmed one
    // by one (a lagging list must not unlink, recreate or delete anything).
    changes.changed.extend(changed);
    changes.unreadable.extend(unreadable);
    let mut missing = 0u64;
    for (quo_id, (external_id, stored)) in &known {
        if seen.contains(quo_id) || already.contains(quo_id) {
            continue;
        }
        let Ok(id) = ExternalId::parse(external_id) else {
            continue;
        };
        missing += 1;
        confirm(client, &id, quo_id, stored.as_deref(), changes).await?;
    }
    changes.scanned = true;
    info!(
        event = "quo_scanned",
        pages,
        contacts = seen.len(),
        changed = changes.changed.len(),
        missing_from_list = missing,
        deleted = changes.deleted.len(),
        orphans = changes.orphans,
        "scanned Quo for changes"
    );
    Ok(())
}
