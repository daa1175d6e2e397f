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
//!   then the twin is deleted. A field that also changed on the linked contact since that POST
//!   keeps the later contact's value and is recorded as a conflict (policy `twin_later_edit`), so
//!   an old edit on the twin never reverts a newer one. Nothing typed goes unrecorded, and the
//!   workspace holds one contact per record again.
//! - **a contact of a record gone from the CRM** (a complete read did not return it, neither as
//!   a record nor as a quarantined row): `sync.on_source_delete` decides, as it would for a linked
//!   one (`delete` deletes it, `ignore` leaves it). Without a complete read it waits.
//! - **a record whose create is still pending**: left alone; that create's lookup adopts it,
//!   with what the lost POST sent as the merge base.
//! - **a copy made after every entry of its record was written**: not made by those POSTs (a
//!   second deployment sharing our `source`, say): left alone (`copy_not_ours`).
//!
//! Every Quo failure leaves the copy for the next scan to find again: each step is computed from
//! fresh reads, so repeating it after an ambiguous write sends nothing twice.
//!
//! This file tells which copy is which and settles it; what is typed on a twin and how it
//! reaches the linked contact before the twin goes is `twin`.

use tracing::{info, warn};

use super::{Cycle, Mode, SyncError};
use crate::config::OnSourceDelete;
use crate::domain::Snapshot;
use crate::ledger::{
    ATTEMPTS_TO_GIVE_UP, LedgerError, LedgerIndex, RecordState, UnconfirmedCreate, made_in_time,
};
use crate::quo::client::QuoError;
use crate::quo::types::Contact;
use crate::reverse::intake::UnlinkedCopy;

mod twin;

/// Why a copy could not be resolved this cycle.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error(transparent)]
    Quo(#[from] QuoError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The contact the ledger links does not carry our `source` and the record's externalId:
    /// which of the two is the twin cannot be told, so neither is deleted.
    #[error(
        "the linked contact {quo_id} does not carry this deployment's quo.source and the record's externalId; the copy was not deleted"
    )]
    NotOurs {
        /// The linked contact.
        quo_id: String,
    },
}

/// How far one copy got.
enum Resolution {
    /// Resolved, or left for a later cycle.
    Done,
    /// A contact of a record gone from the CRM, with that record's entries: deleted or kept by
    /// `sync.on_source_delete`, together with the cycle's other strays.
    Stray(Vec<UnconfirmedCreate>),
}

/// The entry whose POST made `have` most likely: the one whose values differ from it in the
/// fewest fields (a person's edits aside, a contact keeps what its POST sent); the oldest on a
/// tie.
pub(super) fn entry_that_made<'a>(
    have: &Snapshot,
    entries: &'a [UnconfirmedCreate],
) -> &'a UnconfirmedCreate {
    entries
        .iter()
        .min_by_key(|e| have.changed_fields(&e.sent).len())
        .expect("a copy is resolved only against at least one entry")
}

/// The merge base for adopting `have`: the intent's snapshot or the entry whose POST most likely
/// made it, whichever differs from it in fewer fields, with that entry. On a tie the entry, the
/// earlier POST: the intent may be a POST refused with 409 carrying the CRM's later values, and
/// as the base it would make those look unchanged in the CRM, so a Quo edit to the same field
/// would overwrite them with no conflict recorded; the earlier base at worst shows both sides
/// changed, and the conflict is decided by the policy and recorded.
pub(super) fn base_of<'a>(
    have: &Snapshot,
    intent: Option<Snapshot>,
    entries: &'a [UnconfirmedCreate],
) -> (Option<Snapshot>, Option<&'a UnconfirmedCreate>) {
    let entry = (!entries.is_empty()).then(|| entry_that_made(have, entries));
    match (intent, entry) {
        (Some(intent), Some(entry))
            if have.changed_fields(&entry.sent).len() <= have.changed_fields(&intent).len() =>
        {
            (Some(entry.sent.clone()), Some(entry))
        }
        (Some(intent), _) => (Some(intent), None),
        (None, Some(entry)) => (Some(entry.sent.clone()), Some(entry)),
        (None, None) => (None, None),
    }
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
                Err(CopyError::Quo(_) | CopyError::NotOurs { .. }) => {}
            }
        }
        *copies = rest;
        Ok(())
    }

    /// Resolves the unlinked copies intake found. `read`: the index of a complete read of the
    /// CRM, which tells a record that left it from one that is still there. Strays to delete are
    /// deleted together, behind the deletion guard.
    pub(super) async fn resolve_copies(
        &self,
        copies: &[UnlinkedCopy],
        read: Option<&LedgerIndex>,
    ) -> Result<(), SyncError> {
        if self.mode != Mode::Apply {
            return Ok(());
        }
        let mut strays = Vec::new();
        // The same copy noticed by several passes (its notices wait while unresolved) is
        // resolved once a cycle.
        let mut seen = std::collections::HashSet::new();
        for copy in copies.iter().filter(|c| seen.insert(c.quo_id.clone())) {
            if self.stop.is_cancelled() {
                break;
            }
            match self.resolve_copy(copy, read).await {
                Ok(Resolution::Done) => {}
                Ok(Resolution::Stray(entries)) => strays.push((copy, entries)),
                Err(e) => self.copy_failed(copy, e).await?,
            }
        }
        if strays.is_empty() {
            return Ok(());
        }
        let deleting = self.ctx.settings.on_source_delete == OnSourceDelete::Delete;
        if deleting && !self.guard_deletions("stray_contacts", strays.len()).await? {
            let mut unsettled = self.unsettled.lock().await;
            unsettled.extend(strays.iter().map(|(c, _)| c.external_id.to_string()));
            return Ok(());
        }
        for (copy, entries) in strays {
            if let Err(e) = self.remove_stray(copy, &entries).await {
                self.copy_failed(copy, e).await?;
            }
        }
        Ok(())
    }

    /// A copy whose resolution failed: the cycle stops on a ledger error, a refused key or
    /// shutdown. Otherwise the next scan finds it again, up to [`ATTEMPTS_TO_GIVE_UP`] times in a
    /// row; then (and at once when the linked contact is not ours) one of the record's entries
    /// ends as abandoned, with the reason, so nothing lingers unrecorded.
    async fn copy_failed(&self, copy: &UnlinkedCopy, error: CopyError) -> Result<(), SyncError> {
        let give_up = match &error {
            CopyError::Ledger(_) => false,
            CopyError::Quo(e) if e.is_fatal() => false,
            CopyError::Quo(_) => {
                self.ctx
                    .ledger
                    .unconfirmed_failed(copy.external_id.as_str())
                    .await?
                    >= ATTEMPTS_TO_GIVE_UP
            }
            CopyError::NotOurs { .. } => true,
        };
        match error {
            CopyError::Ledger(e) => Err(e.into()),
            CopyError::Quo(e) if e.is_fatal() => Err(e.into()),
            error if give_up => self.abandon_copy(copy, &error).await,
            error => {
                warn!(event = "duplicate_unresolved", external_id = %copy.external_id, quo_id = %copy.quo_id, error = %error, "could not resolve a contact an unconfirmed create made; the next scan finds it again");
                self.unsettled
                    .lock()
                    .await
                    .insert(copy.external_id.to_string());
                Ok(())
            }
        }
    }

    /// Ends one of the record's entries as abandoned, naming the copy and why it could not be
    /// resolved (`status` and the log show it): the contact stays in Quo for an operator.
    async fn abandon_copy(&self, copy: &UnlinkedCopy, error: &CopyError) -> Result<(), SyncError> {
        let reason = format!(
            "contact {} (our source, this externalId) was made by a create whose answer was lost and could not be resolved: {error}",
            copy.quo_id
        );
        let entries = self
            .ctx
            .ledger
            .unconfirmed_for(copy.external_id.as_str())
            .await?;
        if let Some(entry) = entries.first() {
            self.ctx
                .ledger
                .unconfirmed_abandon(entry.id, &reason)
                .await?;
        }
        warn!(event = "duplicate_abandoned", external_id = %copy.external_id, quo_id = %copy.quo_id, reason = %reason, "left in Quo for an operator; the unconfirmed create ends as abandoned");
        metrics::counter!("quo_sync_duplicates_abandoned_total").increment(1);
        Ok(())
    }

    async fn resolve_copy(
        &self,
        copy: &UnlinkedCopy,
        read: Option<&LedgerIndex>,
    ) -> Result<Resolution, CopyError> {
        let ledger = &self.ctx.ledger;
        let entries = ledger.unconfirmed_for(copy.external_id.as_str()).await?;
        if entries.is_empty() {
            // Resolved already (a scan notice and a webhook for the same copy), or ruled out.
            return Ok(Resolution::Done);
        }
        let row = ledger.record(&copy.external_id).await?;
        let linked = row.as_ref().and_then(|r| r.quo_id.clone());
        let state = row.as_ref().map(|r| r.state);
        match (linked, state) {
            // Our create was confirmed after all: this is the linked contact.
            (Some(linked), _) if linked == copy.quo_id => Ok(Resolution::Done),
            (Some(linked), _) => {
                self.remove_twin(copy, &linked, &entries).await?;
                Ok(Resolution::Done)
            }
            // A create still pending: its lookup adopts the copy.
            (None, Some(RecordState::PendingCreate)) => Ok(Resolution::Done),
            (None, Some(RecordState::Unlinked)) => {
                // Its contact was deleted in Quo and the record unlinked: nothing is synced for
                // it any more, so the copy is left as it is and the entry is settled.
                info!(event = "stray_contact_kept", external_id = %copy.external_id, quo_id = %copy.quo_id, "a contact made by a create whose answer was lost belongs to an unlinked record; left in Quo");
                ledger.unconfirmed_remove(entries[0].id).await?;
                Ok(Resolution::Done)
            }
            (None, _) => match read {
                Some(index) if !self.in_crm(copy, index).await? => Ok(Resolution::Stray(entries)),
                Some(_) => Ok(Resolution::Done),
                None => {
                    // Only a complete read can tell whether the record left the CRM: the
                    // notice stays pending until one has.
                    self.unsettled
                        .lock()
                        .await
                        .insert(copy.external_id.to_string());
                    Ok(Resolution::Done)
                }
            },
        }
    }

    /// Whether this cycle's complete read returned the record, as a record or a quarantined row.
    async fn in_crm(&self, copy: &UnlinkedCopy, index: &LedgerIndex) -> Result<bool, CopyError> {
        if index.get(copy.external_id.as_str()).is_some_and(|e| e.seen) {
            return Ok(true);
        }
        Ok(self
            .ctx
            .ledger
            .quarantined_in_run(copy.external_id.as_str(), &self.run_id)
            .await?)
    }

    /// Reads the copy; `None` when it is gone or not ours after all (another source or id).
    async fn read_copy(&self, copy: &UnlinkedCopy) -> Result<Option<Contact>, CopyError> {
        let Some(contact) = self.ctx.client.get_contact(copy.quo_id.as_str()).await? else {
            return Ok(None);
        };
        Ok(self
            .is_ours(&contact, copy)
            .then(|| self.normalized(contact)))
    }

    /// Reads a copy to resolve against `entries`: one made after every entry was written (a
    /// second deployment sharing our `source`, say) was not made by their POSTs, and is left
    /// alone.
    async fn read_copy_of(
        &self,
        copy: &UnlinkedCopy,
        entries: &[UnconfirmedCreate],
    ) -> Result<Option<Contact>, CopyError> {
        let Some(contact) = self.read_copy(copy).await? else {
            return Ok(None);
        };
        let made_in_time = made_in_time(entries, contact.created_at.as_deref());
        if !made_in_time {
            warn!(event = "copy_not_ours", external_id = %copy.external_id, quo_id = %copy.quo_id, created_at = ?contact.created_at, "an unlinked contact with our source and this externalId was made after every unconfirmed create of the record; left alone");
            return Ok(None);
        }
        Ok(Some(contact))
    }

    /// Whether `contact` carries our `source` and the copy's externalId.
    fn is_ours(&self, contact: &Contact, copy: &UnlinkedCopy) -> bool {
        contact.source.as_deref() == Some(self.ctx.client.source())
            && contact.external_id.as_deref() == Some(copy.external_id.as_str())
    }

    /// A contact of a record gone from the CRM: `sync.on_source_delete` decides.
    async fn remove_stray(
        &self,
        copy: &UnlinkedCopy,
        entries: &[UnconfirmedCreate],
    ) -> Result<(), CopyError> {
        let entry = &entries[0];
        match self.ctx.settings.on_source_delete {
            OnSourceDelete::Delete => {
                if self.read_copy_of(copy, entries).await?.is_none() {
                    // Gone already, or not made by our POST: the entry waits for the next pass.
                    return Ok(());
                }
                self.ctx.client.delete_contact(copy.quo_id.as_str()).await?;
                metrics::counter!("quo_sync_duplicates_removed_total").increment(1);
                info!(event = "stray_contact_deleted", external_id = %copy.external_id, quo_id = %copy.quo_id, "a contact made by a create whose answer was lost belongs to a record gone from the CRM; deleted (sync.on_source_delete = \"delete\")");
            }
            OnSourceDelete::Ignore => {
                info!(event = "stray_contact_kept", external_id = %copy.external_id, quo_id = %copy.quo_id, "a contact made by a create whose answer was lost belongs to a record gone from the CRM; left in Quo (sync.on_source_delete = \"ignore\")");
            }
        }
        self.ctx.ledger.unconfirmed_remove(entry.id).await?;
        Ok(())
    }
}
