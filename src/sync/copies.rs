//! Settle step: contacts that a create whose answer we lost made after all.
//!
//! Quo has no idempotency key. An interrupted create is looked up by `externalId` before it is
//! sent again, but lists can lag a write for longer than any wait, so that lookup can miss and
//! the second POST make a twin; and a record that left the CRM while its create was pending is
//! forgotten, though its contact may exist. What such a POST sent is kept in the ledger
//! (`ledger::unconfirmed`). When a scan or a webhook later shows an unlinked contact of ours with
//! that `externalId`, this step resolves it:
//!
//! - **a twin of a linked contact**: what a person typed on the twin since our POST (fields that
//!   differ from what the POST sent, and values of fields we do not manage) is moved to the
//!   linked contact, where the reverse path merges it into the CRM like any edit made in Quo;
//!   then the twin is deleted. Nothing anyone typed is lost, and the workspace holds one contact
//!   per record again.
//! - **a contact of a record gone from the CRM**: `sync.on_source_delete` decides, as it would
//!   for a linked one (`delete` deletes it, `ignore` leaves it).
//! - **a record whose create is still pending**: left alone; that create's lookup adopts it.
//!
//! Every Quo failure leaves the copy for the next scan to find again: each step is computed from
//! fresh reads, so repeating it after an ambiguous write sends nothing twice.

use tracing::{info, warn};

use super::{Cycle, Mode, SyncError};
use crate::config::OnSourceDelete;
use crate::domain::{QuoContactId, Snapshot};
use crate::ledger::{LedgerError, NewInboxEvent, RecordRow, RecordState, UnconfirmedCreate};
use crate::quo::client::QuoError;
use crate::quo::types::{Contact, ContactItem};
use crate::reverse::intake::UnlinkedCopy;

/// Why a copy could not be resolved this cycle.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error(transparent)]
    Quo(#[from] QuoError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What a person typed on a twin that the linked contact lacks.
#[derive(Debug, Default)]
struct Carried {
    /// The linked contact's managed snapshot with the twin's edits applied.
    desired: Snapshot,
    /// Managed fields taken from the twin.
    fields: Vec<String>,
    /// Unmanaged emails, phones and custom values taken from the twin.
    unmanaged: Vec<String>,
}

impl Cycle {
    /// Intake: takes from `copies` those whose record's create is still pending and reads each
    /// by id. One that is ours is adopted by that create this cycle (`found_creates`) instead
    /// of being looked up in a list that may not show it yet.
    pub(super) async fn claim_found_creates(
        &self,
        copies: &mut Vec<UnlinkedCopy>,
    ) -> Result<(), SyncError> {
        if self.mode != Mode::Apply || copies.is_empty() {
            return Ok(());
        }
        let mut rest = Vec::with_capacity(copies.len());
        for copy in std::mem::take(copies) {
            let pending = self
                .ctx
                .ledger
                .record(&copy.external_id)
                .await?
                .is_some_and(|row| row.quo_id.is_none() && row.state == RecordState::PendingCreate);
            if !pending {
                rest.push(copy);
                continue;
            }
            match self.read_copy(&copy).await {
                Ok(Some(contact)) => {
                    info!(event = "lost_create_found", external_id = %copy.external_id, quo_id = %copy.quo_id, "Quo announced the contact a create whose answer was lost made; the pending create adopts it");
                    self.found_creates
                        .lock()
                        .await
                        .insert(copy.external_id.to_string(), contact);
                }
                Ok(None) => {}
                Err(CopyError::Quo(e)) if e.is_fatal() => return Err(e.into()),
                Err(CopyError::Ledger(e)) => return Err(e.into()),
                // Not fatal: the pending create looks it up as before.
                Err(CopyError::Quo(_)) => {}
            }
        }
        *copies = rest;
        Ok(())
    }

    /// Resolves the unlinked copies intake found. `complete`: this cycle read the whole CRM, so
    /// a record without a ledger row (or a deleted one) is known to have left it.
    pub(super) async fn resolve_copies(
        &self,
        copies: &[UnlinkedCopy],
        complete: bool,
    ) -> Result<(), SyncError> {
        if self.mode != Mode::Apply {
            return Ok(());
        }
        for copy in copies {
            if self.stop.is_cancelled() {
                break;
            }
            match self.resolve_copy(copy, complete).await {
                Ok(()) => {}
                Err(CopyError::Ledger(e)) => return Err(e.into()),
                Err(CopyError::Quo(e)) if e.is_fatal() => return Err(e.into()),
                Err(CopyError::Quo(e)) => {
                    warn!(event = "duplicate_unresolved", external_id = %copy.external_id, quo_id = %copy.quo_id, error = %e, "could not resolve a contact an unconfirmed create made; the next scan finds it again");
                    self.unsettled
                        .lock()
                        .await
                        .insert(copy.external_id.to_string());
                }
            }
        }
        Ok(())
    }

    async fn resolve_copy(&self, copy: &UnlinkedCopy, complete: bool) -> Result<(), CopyError> {
        let ledger = &self.ctx.ledger;
        let entries = ledger.unconfirmed_for(copy.external_id.as_str()).await?;
        if entries.is_empty() {
            // Resolved already (a scan notice and a webhook for the same copy), or ruled out.
            return Ok(());
        }
        let row = ledger.record(&copy.external_id).await?;
        let linked = row.as_ref().and_then(|r| r.quo_id.clone());
        match (&row, linked) {
            // Our create was confirmed after all: this is the linked contact.
            (_, Some(linked)) if linked == copy.quo_id => Ok(()),
            (Some(row), Some(linked)) => self.remove_twin(copy, row, &linked, &entries).await,
            (None, None) if complete => self.remove_stray(copy, &entries).await,
            (Some(row), None) if complete && row.state == RecordState::Deleted => {
                self.remove_stray(copy, &entries).await
            }
            // A create still pending (its lookup adopts the copy), or an unlinked record.
            _ => Ok(()),
        }
    }

    /// Reads the copy; `None` when it is gone or not ours after all (another source or id).
    async fn read_copy(&self, copy: &UnlinkedCopy) -> Result<Option<Contact>, CopyError> {
        let Some(contact) = self.ctx.client.get_contact(copy.quo_id.as_str()).await? else {
            return Ok(None);
        };
        let ours = contact.source.as_deref() == Some(self.ctx.client.source())
            && contact.external_id.as_deref() == Some(copy.external_id.as_str());
        Ok(ours.then(|| self.normalized(contact)))
    }

    /// A twin of the linked contact `linked`: moves what a person typed on it, then deletes it.
    async fn remove_twin(
        &self,
        copy: &UnlinkedCopy,
        row: &RecordRow,
        linked: &QuoContactId,
        entries: &[UnconfirmedCreate],
    ) -> Result<(), CopyError> {
        let Some(twin) = self.read_copy(copy).await? else {
            return Ok(());
        };
        let have = self.mapper.from_contact(&twin);
        // The POST that made it: the one whose values it still has, else the oldest.
        let entry = entries
            .iter()
            .find(|e| have.changed_fields(&e.sent).is_empty())
            .unwrap_or(&entries[0]);
        let Some(kept) = self.ctx.client.get_contact(linked.as_str()).await? else {
            // The linked contact is gone: `reverse.on_quo_delete` decides first.
            return Ok(());
        };
        let kept = self.normalized(kept);
        // Quo stamps a contact's creation as its last change too: equal stamps mean nobody has
        // touched it, whatever a comparison with what we sent would say.
        let touched = twin.updated_at.is_none() || twin.updated_at != twin.created_at;
        let carried = if touched {
            self.carried(&twin, &entry.sent, &kept, row.snapshot.as_ref())
        } else {
            Carried::default()
        };
        if !carried.fields.is_empty() || !carried.unmanaged.is_empty() {
            let mut current = kept.clone();
            add_unmanaged(&mut current, &twin, &self.managed);
            let body = super::payload::patch_body(&carried.desired, Some(&current), &self.managed);
            let updated = self
                .ctx
                .client
                .update_contact(linked.as_str(), &body)
                .await?;
            // The ledger keeps its agreed snapshot: the next cycle reads the linked contact,
            // sees a change made in Quo and merges it into the CRM three-way, as for any edit.
            let stamp = updated.updated_at.as_deref().unwrap_or("unknown");
            let event_id = format!("copy:{}:{stamp}", copy.quo_id);
            self.ctx
                .ledger
                .inbox_put(NewInboxEvent {
                    event_id: &event_id,
                    event_type: "contact.updated",
                    quo_id: Some(linked.as_str()),
                    payload: "{\"source\":\"copy\"}",
                })
                .await?;
        }
        self.ctx.client.delete_contact(copy.quo_id.as_str()).await?;
        self.ctx.ledger.unconfirmed_remove(entry.id).await?;
        metrics::counter!("quo_sync_duplicates_removed_total").increment(1);
        info!(
            event = "duplicate_removed",
            external_id = %copy.external_id,
            quo_id = %linked,
            removed_quo_id = %copy.quo_id,
            carried_fields = ?carried.fields,
            carried_unmanaged = ?carried.unmanaged,
            "a contact made by a create whose answer was lost was found beside the linked one; what was typed on it was moved to the linked contact and it was deleted"
        );
        Ok(())
    }

    /// What a person typed on `twin` since our POST sent `sent`, applied to the linked contact
    /// `kept`. A field edited on both since the last agreement (`agreed`) keeps the later edit.
    fn carried(
        &self,
        twin: &Contact,
        sent: &Snapshot,
        kept: &Contact,
        agreed: Option<&Snapshot>,
    ) -> Carried {
        let theirs = self.mapper.from_contact(twin).fields();
        let kept_snapshot = self.mapper.from_contact(kept);
        let kept_fields = kept_snapshot.fields();
        let kept_later = kept.updated_at.as_deref() > twin.updated_at.as_deref();
        let mut carried = Carried {
            desired: kept_snapshot.clone(),
            ..Carried::default()
        };
        for field in self.mapper.from_contact(twin).changed_fields(sent) {
            let edited_on_kept =
                agreed.is_some_and(|agreed| agreed.fields().get(&field) != kept_fields.get(&field));
            if edited_on_kept && kept_later {
                continue;
            }
            let value = theirs.get(&field).cloned().unwrap_or_default();
            if kept_fields.get(&field) != Some(&value) && carried.desired.set_field(&field, value) {
                carried.fields.push(field);
            }
        }
        let mut with_unmanaged = kept.clone();
        carried.unmanaged = add_unmanaged(&mut with_unmanaged, twin, &self.managed);
        carried
    }

    /// A contact of a record gone from the CRM: `sync.on_source_delete` decides.
    async fn remove_stray(
        &self,
        copy: &UnlinkedCopy,
        entries: &[UnconfirmedCreate],
    ) -> Result<(), CopyError> {
        if self
            .ctx
            .ledger
            .is_quarantined(copy.external_id.as_str())
            .await?
        {
            // The CRM still has the record; it just could not be synced this cycle.
            return Ok(());
        }
        let entry = &entries[0];
        match self.ctx.settings.on_source_delete {
            OnSourceDelete::Delete => {
                if self.read_copy(copy).await?.is_some() {
                    self.ctx.client.delete_contact(copy.quo_id.as_str()).await?;
                    metrics::counter!("quo_sync_duplicates_removed_total").increment(1);
                    info!(event = "stray_contact_deleted", external_id = %copy.external_id, quo_id = %copy.quo_id, "a contact made by a create whose answer was lost belongs to a record gone from the CRM; deleted (sync.on_source_delete = \"delete\")");
                }
            }
            OnSourceDelete::Ignore => {
                info!(event = "stray_contact_kept", external_id = %copy.external_id, quo_id = %copy.quo_id, "a contact made by a create whose answer was lost belongs to a record gone from the CRM; left in Quo (sync.on_source_delete = \"ignore\")");
            }
        }
        self.ctx.ledger.unconfirmed_remove(entry.id).await?;
        Ok(())
    }
}

/// Adds to `kept` the emails, phones (labels the mapping does not write) and custom values
/// (keys it does not write) that `twin` has and `kept` lacks; returns their names. Item ids are
/// the twin's, so they are dropped: Quo appends the items as new.
fn add_unmanaged(
    kept: &mut Contact,
    twin: &Contact,
    managed: &super::payload::Managed,
) -> Vec<String> {
    let mut added = Vec::new();
    let mut items = |kept: &mut Vec<ContactItem>, twin: &[ContactItem], labels: &[String]| {
        for item in twin {
            let unmanaged = !labels.contains(&item.name);
            let missing = !kept.iter().any(|k| k.value == item.value);
            if unmanaged && missing && item.value.is_some() {
                added.push(item.name.clone());
                kept.push(ContactItem {
                    id: None,
                    ..item.clone()
                });
            }
        }
    };
    items(
        &mut kept.default_fields.emails,
        &twin.default_fields.emails,
        &managed.email_labels,
    );
    items(
        &mut kept.default_fields.phone_numbers,
        &twin.default_fields.phone_numbers,
        &managed.phone_labels,
    );
    for field in &twin.custom_fields {
        let Some(key) = &field.key else { continue };
        let writable = field.field_type.as_ref().is_none_or(|t| t.is_writable());
        let unmanaged = !managed.custom_keys.contains(key);
        let missing = !kept
            .custom_fields
            .iter()
            .any(|k| k.key.as_ref() == Some(key) && !k.value.is_null());
        if writable && unmanaged && missing && !field.value.is_null() {
            added.push(key.clone());
            kept.custom_fields.retain(|k| k.key.as_ref() != Some(key));
            kept.custom_fields.push(field.clone());
        }
    }
    added
}
