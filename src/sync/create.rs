//! Phase 5, execute: creating a contact, never twice. The intent (with the body it sends) is
//! committed before the POST, a create left pending by a crash or a lost answer is looked up
//! before it is sent again, and a contact found instead (our earlier POST landed, or a 409) is
//! adopted and merged three-way. Apart from `execute.rs` (the pool and the other writes)
//! because this is where every no-duplicate promise of a create lives.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::info;

use super::execute::Failure;
use super::matching::Matched;
use super::{Action, Cycle};
use crate::domain::{ExternalId, QuoContactId, Snapshot};
use crate::ledger::{Ledger, LedgerError, RecordState, SyncedRecord};
use crate::quo::client::{CreateError, PostJournal, QuoError};
use crate::quo::types::Contact;
use crate::source::SourceRecord;

/// The log target these lines had before this file was split off (operators filter on it).
const LOG_TARGET: &str = "quo_sync::sync::execute";

impl Cycle {
    /// Looks up the contact an interrupted create may have made. Lists can lag a create, and
    /// a miss here leads to a second POST (or forgetting the intent), so a miss is only
    /// believed when a second lookup, `quo.list_lag` later, misses too.
    async fn lookup_interrupted(
        &self,
        external_id: &ExternalId,
    ) -> Result<Option<Contact>, Failure> {
        // A webhook named the contact it made, read by id: no list to lag.
        if let Some(found) = self.found_creates.lock().await.remove(external_id.as_str()) {
            return Ok(Some(found));
        }
        let client = &self.ctx.client;
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(self.ctx.settings.list_lag).await;
            }
            let found = client
                .find_by_external_id(external_id.as_str())
                .await
                .map_err(Failure::Quo)?;
            if let Some(contact) = found.into_iter().next() {
                return Ok(Some(self.normalized(contact)));
            }
        }
        Ok(None)
    }

    /// Resolves a create left pending: adopts the contact it made, or leaves the intent for
    /// the settle phase to forget.
    pub(super) async fn resolve_pending(&self, external_id: ExternalId) -> Result<(), Failure> {
        let intent = self.ctx.ledger.record(&external_id).await?;
        let found = self.lookup_interrupted(&external_id).await?;
        match found {
            Some(contact) => {
                let snapshot = self.mapper.from_contact(&contact);
                self.ctx
                    .ledger
                    .commit_synced(SyncedRecord {
                        external_id: &external_id,
                        quo_id: &QuoContactId(contact.id.clone()),
                        source_fingerprint: None,
                        snapshot: &snapshot,
                        contact: &contact,
                        crm_updated_at: None,
                    })
                    .await?;
                info!(target: LOG_TARGET, event = "create_resolved", external_id = %external_id, quo_id = %contact.id, "adopted the contact an interrupted create had made");
            }
            // Forgotten in the settle phase, behind the workspace check and the deletion guard:
            // a miss is an absence, and a key for another workspace finds nothing.
            None => self
                .unfound_creates
                .lock()
                .await
                .push((external_id, intent.as_ref().and_then(sent_by_intent))),
        }
        Ok(())
    }

    /// A contact that is the record's already: what its pending create made (looked up by
    /// `externalId`), the contact its pending adoption claimed (read by id: the PATCH landed),
    /// or its own contact the index found. `None` when there is none to link.
    async fn find_existing(
        &self,
        external_id: &ExternalId,
        pending: bool,
        intent: Option<&crate::ledger::RecordRow>,
        matched: Option<&Matched>,
    ) -> Result<Option<Contact>, Failure> {
        if pending && let Some(found) = self.lookup_interrupted(external_id).await? {
            return Ok(Some(found));
        }
        let by_id = intent
            .and_then(|row| row.adopt_quo_id.clone())
            .or_else(|| match matched {
                Some(Matched::Own(contact)) => Some(contact.quo_id.clone()),
                _ => None,
            });
        let Some(quo_id) = by_id else {
            return Ok(None);
        };
        let claim = self.claim_for(external_id);
        let found = self
            .ctx
            .client
            .get_contact(&quo_id)
            .await
            .map_err(Failure::Quo)?
            .map(|c| self.normalized(c))
            .filter(|c| claim.holds(c));
        if found.is_some() {
            info!(target: LOG_TARGET, event = "create_resolved", external_id = %external_id, quo_id = %quo_id, "the contact is already this record's (an adoption that landed, or a contact the ledger lost)");
        }
        Ok(found)
    }

    /// One POST, never a duplicate: the intent (with what it sends) is committed first, a
    /// pending create is looked up before it is sent, and a contact found instead is adopted.
    pub(super) async fn create(
        &self,
        external_id: &ExternalId,
        record: Option<&SourceRecord>,
        snapshot: &Snapshot,
        fingerprint: Option<&str>,
        pending: bool,
        matched: Option<Matched>,
    ) -> Result<(), Failure> {
        let intent = if pending {
            self.ctx
                .ledger
                .record(external_id)
                .await?
                .filter(|row| row.quo_id.is_none())
        } else {
            None
        };
        // What an earlier, interrupted attempt sent: the base if its contact is adopted now.
        let sent_before = intent.as_ref().and_then(|row| row.snapshot.clone());
        // A record whose earlier POST was never confirmed (its row since forgotten) is looked up
        // like a pending one.
        let unconfirmed = self
            .ctx
            .ledger
            .unconfirmed_for(external_id.as_str())
            .await?;
        let pending = pending || !unconfirmed.is_empty();
        // A previous run may have created it and died before committing: look first (its row
        // is already a pending intent).
        let existing = self
            .find_existing(external_id, pending, intent.as_ref(), matched.as_ref())
            .await?;
        let (contact, adopted, sent_before, unconfirmed) = match existing {
            Some(contact) => (contact, true, sent_before, unconfirmed),
            None => {
                // Two lookups missed, but a list can lag longer than any wait: what the earlier
                // POST sent is kept, so the contact it may have made is recognised when a scan
                // lists it (`copies/`) instead of staying a duplicate (of a contact adopted
                // below, too).
                if let Some(sent) = intent.as_ref().and_then(sent_by_intent) {
                    self.ctx
                        .ledger
                        .unconfirmed_from_intent(external_id, &sent)
                        .await?;
                }
                let record_or_stand_in =
                    || record.cloned().unwrap_or_else(|| stand_in(external_id));
                match matched {
                    Some(Matched::Adopt(target)) => {
                        return self
                            .adopt_existing(&record_or_stand_in(), snapshot, fingerprint, &target)
                            .await;
                    }
                    Some(Matched::Hold(held)) => {
                        // The pending create made nothing that can be found: the record is
                        // held, and its POST lives on as the entry just kept.
                        if intent.is_some() {
                            self.ctx.ledger.forget(external_id).await?;
                        }
                        return Ok(self.hold(&record_or_stand_in(), &held).await?);
                    }
                    Some(Matched::Own(_)) | None => {}
                }
                let outcome = self.post(external_id, snapshot).await?;
                let contact = self.normalized(outcome.contact);
                if outcome.adopted {
                    let (intent_now, entries) = self.posts_on_record(external_id).await?;
                    (contact, true, intent_now, entries)
                } else {
                    (contact, false, sent_before, unconfirmed)
                }
            }
        };
        self.settle_create(
            external_id,
            record,
            snapshot,
            fingerprint,
            contact,
            (adopted, sent_before, unconfirmed),
        )
        .await
    }

    /// After a POST answered by a 409: what its POSTs sent, on record now (the intent holds the
    /// last one unless its outcome became unknown, the entries hold the others).
    async fn posts_on_record(
        &self,
        external_id: &ExternalId,
    ) -> Result<(Option<Snapshot>, Vec<crate::ledger::UnconfirmedCreate>), Failure> {
        let intent_now = self
            .ctx
            .ledger
            .record(external_id)
            .await?
            .as_ref()
            .and_then(sent_by_intent);
        let entries = self
            .ctx
            .ledger
            .unconfirmed_for(external_id.as_str())
            .await?;
        Ok((intent_now, entries))
    }

    /// Sends the record's POST, its intent journalled ([`IntentJournal`]): the contact Quo made,
    /// or the one a 409 named (`adopted`).
    async fn post(
        &self,
        external_id: &ExternalId,
        snapshot: &Snapshot,
    ) -> Result<crate::quo::client::CreateOutcome, Failure> {
        let source_url = self
            .ctx
            .settings
            .source_url_template
            .as_ref()
            .map(|t| t.replace("{id}", external_id.as_str()));
        let body = super::payload::create_body(
            snapshot,
            external_id.as_str(),
            self.ctx.client.source(),
            source_url,
        );
        let journal = IntentJournal {
            ledger: &self.ctx.ledger,
            external_id,
            snapshot,
            held: AtomicBool::new(false),
        };
        match self.ctx.client.create_contact(&body, &journal).await {
            Ok(outcome) => Ok(outcome),
            Err(CreateError::Quo(e @ QuoError::Rejected { .. })) => {
                // Quo refused the POST itself, so it made nothing: the intent no longer
                // stands for a POST that may have landed (no entry for it next time).
                self.ctx
                    .ledger
                    .record_intent_with(external_id, None)
                    .await?;
                Err(Failure::Quo(e))
            }
            Err(CreateError::Quo(e)) => Err(Failure::Quo(e)),
            Err(CreateError::Journal(e)) => Err(Failure::Ledger(e)),
        }
    }

    /// After the create's lookup or POST: a contact found (or named by a 409) is adopted on
    /// the base of the POST that made it; a contact made is committed.
    async fn settle_create(
        &self,
        external_id: &ExternalId,
        record: Option<&SourceRecord>,
        snapshot: &Snapshot,
        fingerprint: Option<&str>,
        contact: Contact,
        (adopted, sent_before, unconfirmed): (
            bool,
            Option<Snapshot>,
            Vec<crate::ledger::UnconfirmedCreate>,
        ),
    ) -> Result<(), Failure> {
        if adopted {
            // The merge base is what the POST that made the contact sent. The intent keeps the
            // last POST's body, which may have made nothing (a 409 while a list lagged); the
            // entries keep earlier ones'; the closest to the contact made it (the earlier on a
            // tie, see `base_of`), and its entry is settled once adopted. Without either (a 409 for a contact made elsewhere) nothing
            // is known to be a Quo-side edit, and the CRM's values are brought over.
            let have = self.mapper.from_contact(&contact);
            let (sent_before, made_by) = super::copies::base_of(&have, sent_before, &unconfirmed);
            self.adopt(
                external_id,
                record,
                snapshot,
                sent_before,
                fingerprint,
                contact,
            )
            .await?;
            if let Some(entry) = made_by {
                self.ctx.ledger.unconfirmed_remove(entry.id).await?;
            }
            return Ok(());
        }
        let quo_id = QuoContactId(contact.id.clone());
        self.commit(
            external_id,
            &quo_id,
            fingerprint,
            snapshot,
            &contact,
            record,
        )
        .await?;
        info!(target: LOG_TARGET, event = "contact_created", external_id = %external_id, quo_id = %quo_id, "contact created");
        self.counted(
            Action::Create,
            external_id,
            Some(quo_id.as_str()),
            Vec::new(),
        )
        .await;
        Ok(())
    }

    /// A contact found in Quo instead of created (our earlier POST landed, or Quo answered 409):
    /// its id is committed at once, then it is merged three-way against what we sent, so an
    /// edit made in Quo since then is kept (and written to the CRM) rather than overwritten.
    pub(super) async fn adopt(
        &self,
        external_id: &ExternalId,
        record: Option<&SourceRecord>,
        crm: &Snapshot,
        sent: Option<Snapshot>,
        fingerprint: Option<&str>,
        contact: Contact,
    ) -> Result<(), Failure> {
        let quo_id = QuoContactId(contact.id.clone());
        let have = self.mapper.from_contact(&contact);
        let sent = sent.unwrap_or_else(|| have.clone());
        self.ctx
            .ledger
            .commit_synced(SyncedRecord {
                external_id,
                quo_id: &quo_id,
                source_fingerprint: None,
                snapshot: &have,
                contact: &contact,
                crm_updated_at: None,
            })
            .await?;
        // Until the merge below is confirmed, the next cycle must map the record again.
        self.ctx.ledger.clear_fingerprint(external_id).await?;
        info!(target: LOG_TARGET, event = "contact_adopted", external_id = %external_id, quo_id = %quo_id, "found the contact in Quo and adopted it instead of creating a duplicate");
        let outcome = self
            .merge_recorded(
                external_id,
                &quo_id,
                &sent,
                crm,
                &have,
                record.and_then(|r| r.updated_at),
                contact.updated_at.as_deref(),
            )
            .await?;
        self.counted(
            Action::Create,
            external_id,
            Some(quo_id.as_str()),
            Vec::new(),
        )
        .await;
        if !outcome.to_crm.is_empty() {
            self.writebacks.lock().await.push(super::WriteBack {
                external_id: external_id.clone(),
                record: record.cloned(),
                quo_id,
                contact,
                outcome,
            });
            return Ok(());
        }
        let contact = if outcome.to_quo.is_empty() {
            contact
        } else {
            self.patch_confirmed(&quo_id, &outcome.merged, contact)
                .await?
        };
        self.commit(
            external_id,
            &quo_id,
            fingerprint,
            &outcome.merged,
            &contact,
            record,
        )
        .await?;
        Ok(())
    }
}

/// What an interrupted POST sent, when `row` is its intent (a `pending_create` row keeps the
/// body's snapshot; an unlinked row's snapshot is an old agreement, not a POST).
pub(super) fn sent_by_intent(row: &crate::ledger::RecordRow) -> Option<Snapshot> {
    // An adoption's intent sent a PATCH, which can make no twin.
    (row.state == RecordState::PendingCreate && row.quo_id.is_none() && row.adopt_quo_id.is_none())
        .then(|| row.snapshot.clone())
        .flatten()
}

/// The ledger's record of one create's POSTs ([`PostJournal`]): the pending create's row holds
/// the body of the POST in flight (a crash leaves it there, and the next cycle looks it up); a
/// POST whose outcome becomes unknown moves, at that moment, to `unconfirmed_creates`, one entry
/// per POST, so every contact such POSTs made is recognised as ours when a scan lists it.
struct IntentJournal<'a> {
    ledger: &'a Ledger,
    external_id: &'a ExternalId,
    snapshot: &'a Snapshot,
    /// Whether the row holds the body now (a retry of a POST that never left writes nothing).
    held: AtomicBool,
}

impl PostJournal for IntentJournal<'_> {
    type Error = LedgerError;

    async fn sending(&self) -> Result<(), LedgerError> {
        if !self.held.swap(true, Ordering::AcqRel) {
            self.ledger
                .record_intent_with(self.external_id, Some(self.snapshot))
                .await?;
        }
        Ok(())
    }

    async fn may_have_landed(&self) -> Result<(), LedgerError> {
        self.ledger
            .unconfirmed_from_intent(self.external_id, self.snapshot)
            .await?;
        self.held.store(false, Ordering::Release);
        Ok(())
    }
}

/// Stand-in for a record a create was asked for without its CRM row (a recreate of a record an
/// incremental read did not return).
pub(super) fn stand_in(external_id: &ExternalId) -> SourceRecord {
    SourceRecord {
        external_id: external_id.clone(),
        fields: Default::default(),
        updated_at: None,
        location: "not read this cycle".into(),
    }
}
