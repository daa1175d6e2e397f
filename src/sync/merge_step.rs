//! Phase 1, intake, and the reverse half of the cycle: Quo-side changes merged three-way with
//! the CRM record, CRM write-back in one batch after the read, and Quo-side deletions applied by
//! policy. Only what a side confirmed is committed: after a CRM write the ledger holds what Quo
//! has, so a follow-up PATCH that fails is retried from the CRM's record next cycle.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::{Action, Cycle, Mode, PlannedOp, SyncError, Update, Work, WriteBack};
use crate::config::OnQuoDelete;
use crate::domain::{ExternalId, QuoContactId, Snapshot};
use crate::ledger::{LedgerError, NewQuarantine, QuarantineStage, RecordState, SyncedRecord};
use crate::quo::types::Contact;
use crate::reverse::intake::{self, QuoChanges};
use crate::reverse::merge::{MergeOutcome, merge};
use crate::source::{CrmChange, SourceError, SourceRecord};

/// An RFC 3339 stamp from Quo or the ledger, in UTC; `None` when absent or unreadable.
pub(super) fn parse_time(text: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    text.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The record a Quo-side change is merged into: the one just read, or the contact's
/// `externalId` (an incremental read did not return it).
fn merged_external_id(
    record: Option<&SourceRecord>,
    contact: &Contact,
) -> Result<ExternalId, SyncError> {
    match record {
        Some(r) => Ok(r.external_id.clone()),
        None => {
            ExternalId::parse(contact.external_id.as_deref().unwrap_or_default()).map_err(|_| {
                SyncError::Ledger(crate::ledger::LedgerError::Corrupt {
                    external_id: contact.id.clone(),
                    column: "external_id",
                    reason: "contact without externalId".into(),
                })
            })
        }
    }
}

impl Cycle {
    /// Phase 1: Quo-side changes and deletions, before the source is read (deletions change
    /// what the forward pass must do; edits are merged when their record is read).
    pub(super) async fn intake(&self) -> Result<QuoChanges, SyncError> {
        if !self.ctx.settings.reverse_enabled {
            return Ok(QuoChanges::default());
        }
        let mut changes = self.gather_quo_changes().await?;
        if changes.mass_delete_refused {
            self.mass_delete_refused
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.claim_found_creates(&mut changes.copies).await?;
        self.guard_quo_deletions(&mut changes).await?;
        for (external_id, quo_id) in &changes.deleted {
            self.apply_quo_delete(external_id, quo_id).await?;
        }
        for odd in std::mem::take(&mut changes.unreadable) {
            warn!(event = "record_quarantined", external_id = %odd.external_id, quo_id = %odd.quo_id, reason = %odd.reason, "Quo's copy of the contact could not be read");
            self.unsettled
                .lock()
                .await
                .insert(odd.external_id.to_string());
            let reason = format!("contact {}: {}", odd.quo_id, odd.reason);
            self.quarantine(
                NewQuarantine {
                    external_id: Some(odd.external_id.as_str()),
                    location: "quo",
                    stage: QuarantineStage::Quo,
                    field: None,
                    value: None,
                    reason: &reason,
                    raw: None,
                },
                PlannedOp::new(odd.external_id.as_str(), Action::Quarantine).with_reason(&reason),
            )
            .await?;
        }
        *self.quo_changed.lock().await = std::mem::take(&mut changes.changed)
            .into_iter()
            .map(|(id, contact)| (id, self.normalized(contact)))
            .collect();
        let news =
            !self.quo_changed.lock().await.is_empty() || !self.quo_deleted.lock().await.is_empty();
        self.quo_side
            .store(news, std::sync::atomic::Ordering::Relaxed);
        Ok(changes)
    }

    /// Contacts Quo answered 404 for: all of them are acted on, or (the key not shown to answer
    /// for our workspace, or more than the deletion guard allows) none, and their notices stay
    /// pending for the next cycle.
    async fn guard_quo_deletions(&self, changes: &mut QuoChanges) -> Result<(), SyncError> {
        if changes.deleted.is_empty() {
            return Ok(());
        }
        let absent: std::collections::HashSet<String> = changes
            .deleted
            .iter()
            .map(|(_, quo_id)| quo_id.to_string())
            .collect();
        if self.absences_may_act("quo_deleted", &absent).await? {
            return Ok(());
        }
        let mut unsettled = self.unsettled.lock().await;
        for (external_id, _) in std::mem::take(&mut changes.deleted) {
            unsettled.insert(external_id.to_string());
        }
        Ok(())
    }

    /// Inbox events, plus a scan when `reverse.poll_interval` says one is due.
    async fn gather_quo_changes(&self) -> Result<QuoChanges, SyncError> {
        let ledger = &self.ctx.ledger;
        // A dry run writes nothing, and a scan's findings are notices written to the inbox: a
        // plan shows what the notices already there would do.
        let day_one = &self.ctx.settings.day_one;
        let scan = match self.ctx.settings.poll_interval {
            Some(interval) if self.mode == Mode::Apply => {
                crate::reverse::scan::due(ledger, interval).await?
            }
            _ => false,
        };
        let scope = scan.then(|| day_one.scan_scope());
        // A dry run writes nothing, the workspace index included.
        let index = day_one.wants_workspace() && self.mode == Mode::Apply;
        let _pass = match scope {
            Some(_) => Some(self.ctx.scan_gate.lock().await),
            None => None,
        };
        let progress = &self.ctx.progress;
        let pages = std::sync::atomic::AtomicU64::new(0);
        let on_page = |_: &crate::reverse::scan::ScanProgress| {
            pages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            progress.page_scanned();
        };
        let changes = intake::gather(
            ledger,
            &self.ctx.client,
            scope,
            index,
            self.ctx.settings.delete_guard(),
            on_page,
        )
        .await?;
        if scope == Some(crate::reverse::scan::Scope::Workspace) {
            // Day one's listing of the workspace, when this pass is what fills the index.
            self.counts.lock().await.listing_pages += pages.into_inner();
        }
        Ok(changes)
    }

    /// A managed contact is gone from Quo: apply `reverse.on_quo_delete`, never silently.
    async fn apply_quo_delete(
        &self,
        external_id: &ExternalId,
        quo_id: &QuoContactId,
    ) -> Result<(), SyncError> {
        let mut policy = self.ctx.settings.on_quo_delete;
        // A record out of scope is not written to the CRM: its contact is only forgotten.
        if policy == OnQuoDelete::DeleteInCrm
            && self
                .ctx
                .ledger
                .record(external_id)
                .await?
                .is_some_and(|row| row.state.is_judged())
        {
            policy = OnQuoDelete::Unlink;
        }
        let op = PlannedOp::new(external_id.as_str(), Action::Unlink).with_quo_id(quo_id.as_str());
        if self.mode == Mode::DryRun {
            self.operations
                .lock()
                .await
                .push(op.with_reason(&format!("deleted in Quo; policy {policy:?}")));
            return Ok(());
        }
        match policy {
            OnQuoDelete::Unlink | OnQuoDelete::Recreate => {
                self.ctx
                    .ledger
                    .unlink(external_id, RecordState::Unlinked)
                    .await?;
                warn!(event = "quo_contact_deleted", external_id = %external_id, quo_id = %quo_id, policy = ?policy,
                      "contact deleted in Quo; the CRM record is kept{}",
                      if policy == OnQuoDelete::Recreate { " and the contact will be recreated" } else { " and unlinked" });
            }
            OnQuoDelete::DeleteInCrm => {
                // After the read: the CRM adapter rewrites only what it has just read.
                self.quo_deleted
                    .lock()
                    .await
                    .insert(external_id.to_string());
                self.crm_deletes
                    .lock()
                    .await
                    .push((external_id.clone(), quo_id.clone()));
                return Ok(());
            }
        }
        self.operations.lock().await.push(op);
        Ok(())
    }

    /// Merges a Quo-side change with the CRM record just read.
    pub(super) async fn classify_merge(
        &self,
        record: Option<SourceRecord>,
        contact: Contact,
    ) -> Result<Option<Work>, SyncError> {
        let external_id = merged_external_id(record.as_ref(), &contact)?;
        let Some(row) = self.ctx.ledger.record(&external_id).await? else {
            return Ok(None);
        };
        // Out of scope (left it, kept): Quo's edits are not written to the CRM.
        if row.state.is_judged() {
            return Ok(None);
        }
        let Some(quo_id) = row.quo_id.clone() else {
            return Ok(None);
        };
        let base = row.snapshot.clone().unwrap_or_default();
        let crm = match &record {
            Some(record) => match self.crm_side(&external_id, record).await? {
                Some(crm) => crm,
                None => return Ok(None),
            },
            None => base.clone(),
        };
        let quo = self.mapper.from_contact(&contact);
        let crm_modified = record
            .as_ref()
            .and_then(|r| r.updated_at)
            .or_else(|| parse_time(row.crm_updated_at.as_deref()));
        let outcome = self
            .merge_recorded(
                &external_id,
                &quo_id,
                &base,
                &crm,
                &quo,
                crm_modified,
                contact.updated_at.as_deref(),
            )
            .await?;
        let fingerprint = record.as_ref().map(|r| self.mapper.fingerprint(r));
        if !outcome.to_crm.is_empty() {
            self.queue_write_back(WriteBack {
                external_id,
                record,
                quo_id,
                contact,
                outcome,
            })
            .await;
            return Ok(None);
        }
        if !outcome.to_quo.is_empty() {
            let read = record.is_some();
            let record = record.unwrap_or_else(|| unread_record(&external_id));
            return Ok(Some(Work::Update(Box::new(Update {
                record,
                read,
                base,
                crm,
                desired: outcome.merged,
                fingerprint,
                quo_id,
                seen: Some(contact),
                changed: outcome.to_quo,
                crm_modified,
            }))));
        }
        let agreed = SyncedRecord {
            external_id: &external_id,
            quo_id: &quo_id,
            source_fingerprint: fingerprint.as_deref(),
            snapshot: &outcome.merged,
            contact: &contact,
            crm_updated_at: None,
        };
        self.keep_agreement(agreed).await?;
        Ok(None)
    }

    /// Both sides already agree (an echo, or the same edit on both): Quo's copy is remembered
    /// as the agreed one, and the record counts as unchanged.
    async fn keep_agreement(&self, agreed: SyncedRecord<'_>) -> Result<(), SyncError> {
        if self.mode == Mode::Apply {
            self.ctx.ledger.commit_synced(agreed).await?;
        }
        self.counts.lock().await.unchanged += 1;
        Ok(())
    }

    /// The CRM side of a merge: the record just read, mapped (as the CRM view shows it); or
    /// `None` when it does not map, quarantined (its Quo change stays unsettled).
    async fn crm_side(
        &self,
        external_id: &ExternalId,
        record: &SourceRecord,
    ) -> Result<Option<Snapshot>, SyncError> {
        match self.mapper.map(record) {
            Ok(snapshot) => Ok(Some(self.crm_view(external_id, snapshot).await?)),
            Err(error) => {
                self.unsettled.lock().await.insert(external_id.to_string());
                self.quarantine(
                    NewQuarantine {
                        external_id: Some(external_id.as_str()),
                        location: &record.location,
                        stage: QuarantineStage::Mapping,
                        field: Some(&error.field),
                        value: Some(&error.value),
                        reason: &error.reason,
                        raw: None,
                    },
                    PlannedOp::new(external_id.as_str(), Action::Quarantine)
                        .with_reason(&error.to_string()),
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// A merge with changes for the CRM waits for the write-back batch after the read (a dry
    /// run plans the CRM write, and the Quo update that would follow it).
    async fn queue_write_back(&self, pending: WriteBack) {
        if self.mode == Mode::DryRun {
            let external_id = pending.external_id.as_str();
            let mut operations = self.operations.lock().await;
            operations.push(
                PlannedOp::new(external_id, Action::WriteCrm)
                    .with_fields(pending.outcome.to_crm.clone()),
            );
            if !pending.outcome.to_quo.is_empty() {
                operations.push(
                    PlannedOp::new(external_id, Action::Update)
                        .with_fields(pending.outcome.to_quo.clone()),
                );
            }
            return;
        }
        self.writebacks.lock().await.push(pending);
    }

    /// Merges three-way and records every conflict (log, metric, `conflicts` table).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn merge_recorded(
        &self,
        external_id: &ExternalId,
        quo_id: &QuoContactId,
        base: &Snapshot,
        crm: &Snapshot,
        quo: &Snapshot,
        crm_modified: Option<chrono::DateTime<chrono::Utc>>,
        quo_updated_at: Option<&str>,
    ) -> Result<MergeOutcome, LedgerError> {
        let outcome = merge(
            base,
            crm,
            quo,
            crm_modified,
            parse_time(quo_updated_at),
            &self.merge_policy,
        );
        for conflict in &outcome.conflicts {
            warn!(event = "conflict", external_id = %external_id, quo_id = %quo_id, field = %conflict.field,
                  crm_value = %conflict.crm, quo_value = %conflict.quo, winner = conflict.winner.as_str(), policy = conflict.policy,
                  "field changed on both sides");
            metrics::counter!("quo_sync_conflicts_total").increment(1);
            if self.mode == Mode::Apply {
                self.ctx
                    .ledger
                    .record_conflict(
                        external_id.as_str(),
                        &conflict.field,
                        &conflict.base,
                        &conflict.crm,
                        &conflict.quo,
                        conflict.winner.as_str(),
                        conflict.policy,
                        Some(&self.run_id),
                    )
                    .await?;
            }
        }
        Ok(outcome)
    }

    /// A Quo-side change whose record an incremental read did not return (so it is unchanged).
    pub(super) async fn classify_merge_unread(
        &self,
        external_id: &str,
        contact: Contact,
    ) -> Result<Option<Work>, SyncError> {
        let mut contact = contact;
        if contact.external_id.is_none() {
            contact.external_id = Some(external_id.to_string());
        }
        self.classify_merge(None, contact).await
    }

    /// Writes every pending merge to the CRM in one batch, commits what was written, and returns
    /// the Quo updates that must follow (only once the CRM has the merged values).
    pub(super) async fn write_back(&self) -> Result<Vec<Work>, SyncError> {
        let pending: Vec<WriteBack> = std::mem::take(&mut *self.writebacks.lock().await);
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let now = chrono::Utc::now();
        let (changes, ready) = self.crm_changes(pending, now).await;
        self.ctx.ledger.ensure_leader()?;
        let report = match self
            .ctx
            .source
            .write_back(&changes, &self.crm_guard())
            .await
        {
            Ok(report) => report,
            Err(error) => {
                let postponed = matches!(error, SourceError::ChangedSinceRead { .. });
                warn!(event = "write_back_postponed", records = ready.len(), error = %error, postponed, "CRM write-back did not happen; retrying next cycle");
                let mut unsettled = self.unsettled.lock().await;
                for wb in &ready {
                    unsettled.insert(wb.external_id.to_string());
                }
                return Ok(Vec::new());
            }
        };
        let mut follow_up = Vec::new();
        for (mut wb, change) in ready.into_iter().zip(changes) {
            if report.written.contains(&wb.external_id) {
                let left_out: Vec<_> = report
                    .unwritable
                    .iter()
                    .filter(|v| v.external_id == wb.external_id)
                    .collect();
                let fields = if left_out.is_empty() {
                    change.fields
                } else {
                    self.hold_unwritable(&mut wb, change.fields, &left_out)
                        .await?
                };
                if let Some(work) = self.commit_written(wb, &fields, now).await? {
                    follow_up.push(work);
                }
            } else {
                let reason = report
                    .failed
                    .iter()
                    .find(|(id, _)| *id == wb.external_id)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| "the CRM reported a conflict; retrying next cycle".into());
                warn!(event = "write_back_failed", external_id = %wb.external_id, reason = %reason, "CRM did not take the change");
                self.unsettled
                    .lock()
                    .await
                    .insert(wb.external_id.to_string());
            }
        }
        Ok(follow_up)
    }

    /// Each pending merge's CRM change (the merged values in the CRM's fields, stamped `now`),
    /// with the merges it was made for; a merge the CRM cannot express stays unsettled.
    async fn crm_changes(
        &self,
        pending: Vec<WriteBack>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> (Vec<CrmChange>, Vec<WriteBack>) {
        let mut changes = Vec::new();
        let mut ready = Vec::new();
        for wb in pending {
            match self
                .mapper
                .to_crm_fields(&wb.outcome.merged, &wb.outcome.to_crm)
            {
                Ok(fields) => {
                    changes.push(CrmChange {
                        external_id: wb.external_id.clone(),
                        fields,
                        updated_at: now,
                    });
                    ready.push(wb);
                }
                Err(error) => {
                    self.unsettled
                        .lock()
                        .await
                        .insert(wb.external_id.to_string());
                    warn!(event = "write_back_failed", external_id = %wb.external_id, error = %error, "cannot express the Quo value in the CRM");
                }
            }
        }
        (changes, ready)
    }

    /// Commits a CRM write the CRM confirmed, and returns the Quo update that must follow it.
    async fn commit_written(
        &self,
        wb: WriteBack,
        fields: &BTreeMap<String, String>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Work>, SyncError> {
        let written = wb.record.as_ref().map(|r| apply_change(r, fields));
        let fingerprint = written.as_ref().map(|r| self.mapper.fingerprint(r));
        // A Quo edit of a field `sync.filter` reads can take the record out of scope: its new
        // fingerprint is not committed, so the next cycle judges the row it wrote (and the
        // record leaves by `sync.on_leave_scope`) instead of taking it for unchanged.
        let stays_in_scope = written
            .as_ref()
            .is_none_or(|r| matches!(self.scope.admits(r), Ok(true)));
        // Commit only what both sides confirmed. With nothing left for Quo, that is the
        // merge. Otherwise it is Quo's copy, and the CRM's new fingerprint is held back
        // until Quo confirms too: if the follow-up PATCH fails, the next cycle finds the
        // CRM record changed against that snapshot and patches it then.
        let quo_has = self.mapper.from_contact(&wb.contact);
        let (agreed, committed_fingerprint) = match (wb.outcome.to_quo.is_empty(), stays_in_scope) {
            (true, true) => (&wb.outcome.merged, fingerprint.as_deref()),
            (true, false) => (&wb.outcome.merged, None),
            (false, _) => (&quo_has, None),
        };
        if committed_fingerprint.is_none() && (!wb.outcome.to_quo.is_empty() || !stays_in_scope) {
            self.ctx.ledger.clear_fingerprint(&wb.external_id).await?;
        }
        self.ctx
            .ledger
            .commit_synced(SyncedRecord {
                external_id: &wb.external_id,
                quo_id: &wb.quo_id,
                source_fingerprint: committed_fingerprint,
                snapshot: agreed,
                contact: &wb.contact,
                crm_updated_at: Some(now.to_rfc3339()),
            })
            .await?;
        info!(event = "crm_written", external_id = %wb.external_id, quo_id = %wb.quo_id, fields = ?wb.outcome.to_crm, "Quo edit written to the CRM");
        metrics::counter!("quo_sync_records_total", "outcome" => "written_to_crm").increment(1);
        self.counts.lock().await.written_to_crm += 1;
        self.operations.lock().await.push(
            PlannedOp::new(wb.external_id.as_str(), Action::WriteCrm)
                .with_quo_id(wb.quo_id.as_str())
                .with_fields(wb.outcome.to_crm.clone()),
        );
        if !wb.outcome.to_quo.is_empty() {
            let MergeOutcome { merged, to_quo, .. } = wb.outcome;
            let read = wb.record.is_some();
            let record = match &wb.record {
                Some(r) => apply_change(r, fields),
                None => unread_record(&wb.external_id),
            };
            return Ok(Some(Work::Update(Box::new(Update {
                record,
                read,
                base: quo_has,
                crm: merged.clone(),
                desired: merged,
                // Out of scope now: judged by the next cycle, as above.
                fingerprint: fingerprint.filter(|_| stays_in_scope),
                quo_id: wb.quo_id,
                seen: Some(wb.contact),
                changed: to_quo,
                crm_modified: Some(now),
            }))));
        }
        Ok(None)
    }
}

/// The record as it will read after `fields` are written.
pub(super) fn apply_change(
    record: &SourceRecord,
    fields: &BTreeMap<String, String>,
) -> SourceRecord {
    let mut updated = record.clone();
    for (name, value) in fields {
        updated.fields.insert(name.clone(), value.clone());
    }
    updated
}

/// Stand-in for a record an incremental read did not return.
fn unread_record(external_id: &ExternalId) -> SourceRecord {
    SourceRecord {
        external_id: external_id.clone(),
        fields: BTreeMap::new(),
        updated_at: None,
        location: "not read this cycle".into(),
    }
}
