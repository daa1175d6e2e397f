//! Phase 5, execute: the worker pool and what each unit of work sends. Every write is followed
//! by a commit of what Quo confirmed, before the worker takes the next record; a record that
//! fails is quarantined on its own (stage `quo`) and the rest of the cycle goes on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use super::matching::Matched;
use super::{Action, Cycle, HeldBack, Mode, PlannedOp, SyncError, Update, Work, WriteKind};
use crate::config::OnQuoDelete;
use crate::domain::{ExternalId, QuoContactId, Snapshot};
use crate::ledger::Ledger;
use crate::ledger::{LedgerError, NewQuarantine, QuarantineStage, RecordState, SyncedRecord};
use crate::quo::client::{CreateError, PostJournal, QuoError};
use crate::quo::types::Contact;
use crate::source::SourceRecord;

/// Contacts read per freshen request (Quo's largest page).
const FRESHEN_BATCH: usize = crate::quo::client::MAX_PAGE as usize;

/// The bounded worker pool of one cycle, with the updates waiting to be freshened in a batch.
pub(super) struct Pool {
    workers: JoinSet<Result<(), SyncError>>,
    permits: Arc<Semaphore>,
    updates: Vec<Update>,
}

impl Pool {
    /// A pool running at most `concurrency` requests' work at once.
    pub fn new(concurrency: usize) -> Self {
        Self {
            workers: JoinSet::new(),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            updates: Vec::new(),
        }
    }

    /// Starts `work` (updates wait for a full freshen batch) and reaps finished workers so
    /// errors surface early and memory stays flat.
    pub async fn dispatch(&mut self, cycle: &Arc<Cycle>, work: Work) -> Result<(), SyncError> {
        let Some(work) = cycle.mode_gate(work).await? else {
            return Ok(());
        };
        let Some(work) = cycle.workspace_gate(work).await? else {
            return Ok(());
        };
        let kind = match &work {
            Work::Create { .. } | Work::ResolvePending { .. } => Some(WriteKind::Create),
            Work::Update(_) => Some(WriteKind::Update),
            Work::Delete { .. } => Some(WriteKind::Delete),
            // A contact gone from Quo is written again only under `recreate`.
            Work::Missing(_) => (cycle.ctx.settings.on_quo_delete == OnQuoDelete::Recreate)
                .then_some(WriteKind::Create),
        };
        if let Some(kind) = kind {
            cycle.ctx.progress.planned(kind);
        }
        match work {
            Work::Update(update) if cycle.mode == Mode::Apply => {
                self.updates.push(*update);
                if self.updates.len() >= FRESHEN_BATCH {
                    self.flush_updates(cycle);
                }
            }
            work => {
                let permit = self
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore open");
                let cycle = cycle.clone();
                self.workers.spawn(
                    async move {
                        let _permit = permit;
                        cycle.execute(work).await
                    }
                    .in_current_span(),
                );
            }
        }
        while let Some(done) = self.workers.try_join_next() {
            done.expect("worker panicked")?;
        }
        Ok(())
    }

    /// Sends the waiting updates to be freshened (one read for the batch) and patched.
    pub fn flush_updates(&mut self, cycle: &Arc<Cycle>) {
        if self.updates.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.updates);
        let cycle = cycle.clone();
        let permits = self.permits.clone();
        self.workers
            .spawn(cycle.freshen_and_patch(batch, permits).in_current_span());
    }

    /// Flushes what waits and joins every worker.
    pub async fn finish(&mut self, cycle: &Arc<Cycle>) -> Result<(), SyncError> {
        self.flush_updates(cycle);
        while let Some(done) = self.workers.join_next().await {
            done.expect("worker panicked")?;
        }
        Ok(())
    }
}

/// A worker's failure: Quo's (per record), the contact being gone, or the ledger's (stops the
/// cycle).
pub(super) enum Failure {
    Quo(QuoError),
    Missing,
    Ledger(LedgerError),
}

impl From<LedgerError> for Failure {
    fn from(e: LedgerError) -> Self {
        Failure::Ledger(e)
    }
}

impl Cycle {
    /// Carries out one unit of work; record-level failures are quarantined, not returned.
    pub(super) async fn execute(&self, work: Work) -> Result<(), SyncError> {
        if self.mode == Mode::DryRun {
            self.plan_only(work).await;
            return Ok(());
        }
        let (external_id, location, updated_at) = match &work {
            Work::Create { record, .. } => (
                record.external_id.clone(),
                record.location.clone(),
                record.updated_at,
            ),
            Work::Update(u) | Work::Missing(u) => (
                u.record.external_id.clone(),
                u.record.location.clone(),
                u.record.updated_at,
            ),
            Work::Delete { external_id, .. } | Work::ResolvePending { external_id } => {
                (external_id.clone(), String::from("ledger"), None)
            }
        };
        let span = info_span!("record", external_id = %external_id);
        let outcome = async {
            match work {
                Work::Create {
                    record,
                    snapshot,
                    fingerprint,
                    pending,
                    matched,
                } => {
                    self.create(
                        &record.external_id,
                        Some(&record),
                        &snapshot,
                        Some(&fingerprint),
                        pending,
                        matched,
                    )
                    .await
                }
                Work::Update(update) => self.update(*update, None).await,
                Work::Delete {
                    external_id,
                    quo_id,
                    left_scope,
                } => self.delete(external_id, quo_id, left_scope).await,
                Work::ResolvePending { external_id } => self.resolve_pending(external_id).await,
                Work::Missing(update) => self.apply_contact_missing(*update).await,
            }
        }
        .instrument(span)
        .await;
        self.settle_failure(outcome, &external_id, &location, updated_at)
            .await
    }

    /// Turns a worker's failure into a quarantine entry, a stopped cycle (bad key, shutdown) or
    /// a ledger error.
    pub(super) async fn settle_failure(
        &self,
        outcome: Result<(), Failure>,
        external_id: &ExternalId,
        location: &str,
        updated_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), SyncError> {
        let error = match outcome {
            Ok(()) => return Ok(()),
            Err(Failure::Ledger(e)) => return Err(e.into()),
            Err(Failure::Missing) => return Ok(()),
            Err(Failure::Quo(error)) if error.is_fatal() => {
                self.stop.cancel();
                *self.fatal.lock().await = Some(error);
                return Ok(());
            }
            Err(Failure::Quo(error)) => error,
        };
        let message = error.to_string();
        warn!(event = "record_quarantined", external_id = %external_id, reason = %message, "Quo did not accept the record");
        if let Some(at) = updated_at {
            let mut oldest = self.failed_since.lock().await;
            *oldest = Some(oldest.map_or(at, |o| o.min(at)));
        }
        self.ctx
            .ledger
            .record_failure(external_id, &message)
            .await?;
        let (field, value) = match &error {
            QuoError::Rejected { body, .. } => body
                .errors
                .first()
                .map(|d| {
                    (
                        Some(d.path.clone()),
                        d.value.as_ref().map(|v| v.to_string()),
                    )
                })
                .unwrap_or((None, None)),
            _ => (None, None),
        };
        self.quarantine(
            NewQuarantine {
                external_id: Some(external_id.as_str()),
                location,
                stage: QuarantineStage::Quo,
                field: field.as_deref(),
                value: value.as_deref(),
                reason: &message,
                raw: None,
            },
            PlannedOp::new(external_id.as_str(), Action::Quarantine).with_reason(&message),
        )
        .await
    }

    /// A dry run's record of what would happen.
    async fn plan_only(&self, work: Work) {
        let op = match &work {
            Work::Create {
                record,
                snapshot,
                matched,
                ..
            } => {
                let id = record.external_id.as_str();
                match matched {
                    Some(Matched::Adopt(target)) => PlannedOp::new(id, Action::Adopt)
                        .with_quo_id(&target.contact.quo_id)
                        .with_fields(self.adoption_plan(snapshot, target)),
                    Some(Matched::Own(contact)) => {
                        PlannedOp::new(id, Action::Resolve).with_quo_id(&contact.quo_id)
                    }
                    Some(Matched::Hold(held)) => {
                        // A plan cannot run the pending create's lookup; it shows the hold.
                        let _ = self.hold(record, held).await;
                        return;
                    }
                    None => PlannedOp::new(id, Action::Create),
                }
            }
            Work::Update(u) => PlannedOp::new(u.record.external_id.as_str(), Action::Update)
                .with_fields(u.changed.clone())
                .with_quo_id(u.quo_id.as_str()),
            Work::Missing(u) => PlannedOp::new(u.record.external_id.as_str(), Action::Unlink)
                .with_quo_id(u.quo_id.as_str()),
            Work::Delete {
                external_id,
                quo_id,
                left_scope,
            } => {
                let op = PlannedOp::new(external_id.as_str(), Action::Delete)
                    .with_quo_id(quo_id.as_str());
                match left_scope {
                    Some(_) => op.with_reason("left scope (sync.on_leave_scope = delete)"),
                    None => op,
                }
            }
            Work::ResolvePending { external_id } => {
                PlannedOp::new(external_id.as_str(), Action::Resolve)
            }
        };
        let mut counts = self.counts.lock().await;
        match op.action {
            Action::Create => counts.created += 1,
            Action::Update => counts.updated += 1,
            Action::Delete => counts.deleted += 1,
            Action::Adopt => counts.adopted += 1,
            _ => {}
        }
        drop(counts);
        self.operations.lock().await.push(op);
    }

    /// Sends `desired` onto `fresh` (Quo's copy just read) until Quo confirms it. An unknown
    /// outcome is never resent blindly: the contact is read again, and if the change is there
    /// it is done; otherwise the body is rebuilt on what is there (so items a lost PATCH
    /// appended are matched by their new ids, not appended twice).
    pub(super) async fn patch_confirmed(
        &self,
        quo_id: &QuoContactId,
        desired: &Snapshot,
        fresh: Contact,
    ) -> Result<Contact, Failure> {
        self.patch_confirmed_claiming(quo_id, desired, fresh, None)
            .await
    }

    /// [`Cycle::patch_confirmed`], also giving the contact `claim`'s identity (an adoption):
    /// a read after a lost answer confirms the identity too.
    pub(super) async fn patch_confirmed_claiming(
        &self,
        quo_id: &QuoContactId,
        desired: &Snapshot,
        fresh: Contact,
        claim: Option<&super::adopt::Claim>,
    ) -> Result<Contact, Failure> {
        let client = &self.ctx.client;
        let mut base = fresh;
        let mut retries = 0u32;
        loop {
            let mut body = super::payload::patch_body(desired, Some(&base), &self.managed);
            if let Some(claim) = claim {
                body.source = Some(Some(claim.source.clone()));
                body.external_id = Some(Some(claim.external_id.clone()));
                body.source_url = claim.source_url.clone().map(Some);
            }
            match client.update_contact(quo_id.as_str(), &body).await {
                Ok(contact) => return Ok(self.normalized(contact)),
                Err(QuoError::Ambiguous { route, reason }) => {
                    retries = client
                        .backoff_before_retry(route, retries, reason)
                        .await
                        .map_err(Failure::Quo)?;
                    let now = client
                        .get_contact(quo_id.as_str())
                        .await
                        .map_err(Failure::Quo)?
                        .map(|c| self.normalized(c))
                        .ok_or(Failure::Missing)?;
                    if self
                        .mapper
                        .from_contact(&now)
                        .changed_fields(desired)
                        .is_empty()
                        && claim.is_none_or(|c| c.holds(&now))
                    {
                        info!(event = "patch_confirmed_by_read", quo_id = %quo_id, "a PATCH whose answer was lost had landed");
                        return Ok(now);
                    }
                    base = now;
                }
                Err(QuoError::Rejected { status: 404, .. }) => return Err(Failure::Missing),
                Err(e) => return Err(Failure::Quo(e)),
            }
        }
    }

    /// One planned PATCH: freshened (unless `fresh` is given), merged if Quo moved, sent, and
    /// committed.
    pub(super) async fn update(
        &self,
        update: Update,
        fresh: Option<Contact>,
    ) -> Result<(), Failure> {
        let fresh = match fresh {
            Some(contact) => self.normalized(contact),
            None => match self
                .ctx
                .client
                .get_contact(update.quo_id.as_str())
                .await
                .map_err(Failure::Quo)?
            {
                Some(contact) => self.normalized(contact),
                None => return self.contact_missing(update).await,
            },
        };
        let Some((desired, changed, fresh)) = self.reconcile_fresh(&update, fresh).await? else {
            return Ok(());
        };
        let confirmed = match self.patch_confirmed(&update.quo_id, &desired, fresh).await {
            Err(Failure::Missing) => return self.contact_missing(update).await,
            other => other?,
        };
        let external_id = &update.record.external_id;
        self.commit(
            external_id,
            &update.quo_id,
            update.fingerprint.as_deref(),
            &desired,
            &confirmed,
            update.read.then_some(&update.record),
        )
        .await?;
        info!(event = "contact_updated", external_id = %external_id, quo_id = %confirmed.id, fields = ?changed, "contact updated");
        self.counted(Action::Update, external_id, Some(&confirmed.id), changed)
            .await;
        Ok(())
    }

    /// Quo answered 404 for the contact: `reverse.on_quo_delete` is applied in the settle phase,
    /// together with every other such answer of the cycle, once the workspace check and the
    /// deletion guard let them through (`settle_missing`).
    async fn contact_missing(&self, update: Update) -> Result<(), Failure> {
        self.missing.lock().await.push(update);
        Ok(())
    }

    /// The contact is gone from Quo (a 404 confirmed it, and the settle phase let that absence
    /// be acted on): apply `reverse.on_quo_delete`.
    async fn apply_contact_missing(&self, update: Update) -> Result<(), Failure> {
        let external_id = &update.record.external_id;
        let policy = self.ctx.settings.on_quo_delete;
        warn!(event = "contact_missing", external_id = %external_id, quo_id = %update.quo_id, policy = ?policy, "the Quo contact is gone");
        match policy {
            // `sync.mode = "update_only"` creates nothing, a contact deleted in Quo included.
            OnQuoDelete::Recreate if !self.may_create() => {
                self.ctx
                    .ledger
                    .unlink(external_id, RecordState::Unlinked)
                    .await?;
                Ok(())
            }
            OnQuoDelete::Recreate => {
                // Forget the dead id first so the intent row is a real pending create: a crash
                // or an ambiguous POST from here is resolved by lookup, never duplicated.
                self.ctx
                    .ledger
                    .unlink(external_id, RecordState::Unlinked)
                    .await?;
                self.create(
                    external_id,
                    update.read.then_some(&update.record),
                    &update.crm,
                    update.fingerprint.as_deref(),
                    true,
                    None,
                )
                .await
            }
            OnQuoDelete::Unlink => {
                self.ctx
                    .ledger
                    .unlink(external_id, RecordState::Unlinked)
                    .await?;
                Ok(())
            }
            OnQuoDelete::DeleteInCrm => {
                self.crm_deletes
                    .lock()
                    .await
                    .push((external_id.clone(), update.quo_id.clone()));
                Ok(())
            }
        }
    }

    async fn delete(
        &self,
        external_id: ExternalId,
        quo_id: QuoContactId,
        left_scope: Option<String>,
    ) -> Result<(), Failure> {
        let existed = self
            .ctx
            .client
            .delete_contact(quo_id.as_str())
            .await
            .map_err(Failure::Quo)?;
        // A 404 is an absence: not "already gone" while a read-back of linked contacts has
        // failed (the key may point elsewhere); the record stays linked, and a later cycle
        // deletes it again. (Not a read-back of its own: the one contact linked may be this.)
        if !existed && self.ctx.client.workspace_doubted() {
            warn!(event = "delete_unconfirmed", external_id = %external_id, quo_id = %quo_id, reason = "workspace_unconfirmed", "Quo answered 404 to a DELETE while the key is not shown to answer for the synced workspace; the record stays linked");
            return Ok(());
        }
        match left_scope {
            Some(fingerprint) => {
                self.ctx
                    .ledger
                    .mark_scope(&[crate::ledger::ScopeMark {
                        external_id: external_id.clone(),
                        state: RecordState::LeftScope,
                        fingerprint,
                        link: crate::ledger::ScopeLink::Forget,
                    }])
                    .await?;
                info!(event = "contact_deleted", external_id = %external_id, quo_id = %quo_id, existed, "record left scope; Quo contact deleted (sync.on_leave_scope = \"delete\")");
            }
            None => {
                self.ctx
                    .ledger
                    .unlink(&external_id, RecordState::Deleted)
                    .await?;
                info!(event = "contact_deleted", external_id = %external_id, quo_id = %quo_id, existed, "record left the source; Quo contact deleted (sync.on_source_delete = \"delete\")");
            }
        }
        self.counted(
            Action::Delete,
            &external_id,
            Some(quo_id.as_str()),
            Vec::new(),
        )
        .await;
        Ok(())
    }

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

    async fn resolve_pending(&self, external_id: ExternalId) -> Result<(), Failure> {
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
                info!(event = "create_resolved", external_id = %external_id, quo_id = %contact.id, "adopted the contact an interrupted create had made");
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
            info!(event = "create_resolved", external_id = %external_id, quo_id = %quo_id, "the contact is already this record's (an adoption that landed, or a contact the ledger lost)");
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
                // lists it (`copies.rs`) instead of staying a duplicate (of a contact adopted
                // below, too).
                if let Some(sent) = intent.as_ref().and_then(sent_by_intent) {
                    self.ctx
                        .ledger
                        .unconfirmed_from_intent(external_id, &sent)
                        .await?;
                }
                match matched {
                    Some(Matched::Adopt(target)) => {
                        let record = record.cloned().unwrap_or_else(|| stand_in(external_id));
                        return self
                            .adopt_existing(&record, snapshot, fingerprint, &target)
                            .await;
                    }
                    Some(Matched::Hold(held)) => {
                        // The pending create made nothing that can be found: the record is
                        // held, and its POST lives on as the entry just kept.
                        if intent.is_some() {
                            self.ctx.ledger.forget(external_id).await?;
                        }
                        let record = record.cloned().unwrap_or_else(|| stand_in(external_id));
                        self.hold(&record, &held).await?;
                        return Ok(());
                    }
                    Some(Matched::Own(_)) | None => {}
                }
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
                let outcome = match self.ctx.client.create_contact(&body, &journal).await {
                    Ok(outcome) => outcome,
                    Err(CreateError::Quo(e @ QuoError::Rejected { .. })) => {
                        // Quo refused the POST itself, so it made nothing: the intent no longer
                        // stands for a POST that may have landed (no entry for it next time).
                        self.ctx
                            .ledger
                            .record_intent_with(external_id, None)
                            .await?;
                        return Err(Failure::Quo(e));
                    }
                    Err(CreateError::Quo(e)) => return Err(Failure::Quo(e)),
                    Err(CreateError::Journal(e)) => return Err(Failure::Ledger(e)),
                };
                let contact = self.normalized(outcome.contact);
                if !outcome.adopted {
                    (contact, false, sent_before, unconfirmed)
                } else {
                    // The POSTs of this call are on record now: the intent holds the last one
                    // unless its outcome became unknown, the entries hold the others.
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
                    (contact, true, intent_now, entries)
                }
            }
        };
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
        info!(event = "contact_created", external_id = %external_id, quo_id = %quo_id, "contact created");
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
        info!(event = "contact_adopted", external_id = %external_id, quo_id = %quo_id, "found the contact in Quo and adopted it instead of creating a duplicate");
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

    /// A contact as Quo answered it, read leniently: keys of key-less custom-field items found
    /// by name, numbers and booleans sent as strings typed, `null`s dropped (quo-api.md
    /// decision 8). Every contact the cycle reads goes through here before it is compared,
    /// stored or patched.
    pub(super) fn normalized(&self, mut contact: Contact) -> Contact {
        crate::mapping::normalize_contact(&mut contact, &self.defs);
        contact
    }

    /// Commits an agreement both sides confirmed.
    pub(super) async fn commit(
        &self,
        external_id: &ExternalId,
        quo_id: &QuoContactId,
        fingerprint: Option<&str>,
        snapshot: &Snapshot,
        contact: &Contact,
        record: Option<&SourceRecord>,
    ) -> Result<(), LedgerError> {
        self.ctx
            .ledger
            .commit_synced(SyncedRecord {
                external_id,
                quo_id,
                source_fingerprint: fingerprint,
                snapshot,
                contact,
                crm_updated_at: record.and_then(|r| r.updated_at).map(|t| t.to_rfc3339()),
            })
            .await
    }

    /// Counts a confirmed operation and lists it in the report.
    pub(super) async fn counted(
        &self,
        action: Action,
        external_id: &ExternalId,
        quo_id: Option<&str>,
        fields: Vec<String>,
    ) {
        {
            let mut counts = self.counts.lock().await;
            let kind = match action {
                Action::Create => {
                    counts.created += 1;
                    Some(WriteKind::Create)
                }
                Action::Adopt => {
                    counts.adopted += 1;
                    Some(WriteKind::Create)
                }
                Action::Update => {
                    counts.updated += 1;
                    Some(WriteKind::Update)
                }
                Action::Delete => {
                    counts.deleted += 1;
                    Some(WriteKind::Delete)
                }
                _ => None,
            };
            if let Some(kind) = kind {
                self.ctx.progress.confirmed(kind);
            }
        }
        metrics::counter!("quo_sync_records_total", "outcome" => action.as_str()).increment(1);
        let mut op = PlannedOp::new(external_id.as_str(), action).with_fields(fields);
        if let Some(id) = quo_id {
            op = op.with_quo_id(id);
        }
        self.operations.lock().await.push(op);
    }

    /// Quarantines a record (or an unreadable row) and lists it in the report, once per cycle:
    /// a later failure of the same record in this cycle adds nothing.
    pub(super) async fn quarantine(
        &self,
        entry: NewQuarantine<'_>,
        op: PlannedOp,
    ) -> Result<(), SyncError> {
        if !self.quarantined.lock().await.insert(op.external_id.clone()) {
            return Ok(());
        }
        self.ctx.progress.held(HeldBack {
            location: entry.location.to_string(),
            external_id: entry.external_id.map(str::to_string),
            field: entry.field.map(str::to_string),
            value: entry.value.map(str::to_string),
            reason: entry.reason.to_string(),
        });
        if self.mode == Mode::Apply {
            self.ctx.ledger.quarantine(entry, &self.run_id).await?;
        }
        self.counts.lock().await.quarantined += 1;
        metrics::counter!("quo_sync_records_total", "outcome" => "quarantined").increment(1);
        self.operations.lock().await.push(op);
        Ok(())
    }
}

/// What an interrupted POST sent, when `row` is its intent (a `pending_create` row keeps the
/// body's snapshot; an unlinked row's snapshot is an old agreement, not a POST).
fn sent_by_intent(row: &crate::ledger::RecordRow) -> Option<Snapshot> {
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
fn stand_in(external_id: &ExternalId) -> SourceRecord {
    SourceRecord {
        external_id: external_id.clone(),
        fields: Default::default(),
        updated_at: None,
        location: "not read this cycle".into(),
    }
}
