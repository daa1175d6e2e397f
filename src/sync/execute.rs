//! Phase 5, execute: the worker pool and what each unit of work sends. Every write is followed
//! by a commit of what Quo confirmed, before the worker takes the next record; a record that
//! fails is quarantined on its own (stage `quo`) and the rest of the cycle goes on.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use super::matching::Matched;
use super::{Action, Cycle, HeldBack, Mode, PlannedOp, SyncError, Update, Work, WriteKind};
use crate::config::OnQuoDelete;
use crate::domain::{ExternalId, QuoContactId, Snapshot};
use crate::ledger::{LedgerError, NewQuarantine, QuarantineStage, RecordState, SyncedRecord};
use crate::quo::client::QuoError;
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
        if let Work::Create {
            matched: Some(super::matching::Matched::Adopt(_)),
            ..
        } = &work
        {
            cycle.ctx.progress.adopting();
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
            self.held_by_doubt(|h| h.deletions_held += 1);
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
