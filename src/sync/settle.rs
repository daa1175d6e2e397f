//! Phase 6, settle: everything that can only be decided once the whole source was read.
//! Quo-side edits to records the read did not return, CRM write-back (in one batch, with the
//! Quo updates that must follow it), ids that came twice in one read, interrupted creates,
//! deletions behind the mass-deletion guard, the incremental high-water mark, and the webhook
//! inbox (events stay pending for every record whose change is not applied yet).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::read::ReadOutcome;
use super::{Action, Cycle, HIGH_WATER, LAST_FULL_READ, Mode, PlannedOp, SyncError, Update, Work};
use crate::config::OnSourceDelete;
use crate::domain::{ExternalId, QuoContactId};
use crate::ledger::{IndexEntry, LedgerIndex, RecordState, fingerprint_digest};
use crate::reverse::absence::CheckError;
use crate::reverse::intake::QuoChanges;
use crate::source::SourceRecord;

impl From<CheckError> for SyncError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Ledger(e) => SyncError::Ledger(e),
            CheckError::Quo(e) => SyncError::Quo(e),
        }
    }
}

/// Rounds of CRM write-back per cycle: a follow-up PATCH can meet a newer Quo edit that must go
/// to the CRM again; past this the next cycle carries on.
const WRITE_BACK_ROUNDS: usize = 3;

impl Cycle {
    /// Runs the settle phase over what the read left.
    pub(super) async fn settle(
        self: &Arc<Self>,
        read: ReadOutcome,
        intake: QuoChanges,
    ) -> Result<(), SyncError> {
        let ReadOutcome {
            mut index,
            summary,
            high_water,
            started,
            repeats,
            mut pool,
        } = read;
        let complete = summary.as_ref().is_some_and(|s| s.complete);
        let read_whole = summary.is_some() && !self.stop.is_cancelled();
        if read_whole {
            // Matches need the whole read: a contact two records match is known only now.
            self.decide_matches(&mut pool, complete).await?;
        }
        self.report_decided().await;
        // Records changed in Quo that a complete read did not return.
        let absent = match read_whole {
            true => self.unread_quo_changes(&mut pool, complete).await?,
            false => Vec::new(),
        };
        pool.finish(self).await?;
        self.replan_repeats(repeats, &mut index, &mut pool).await?;
        self.write_back_rounds(&mut pool).await?;
        self.settle_missing(&mut pool).await?;
        pool.finish(self).await?;
        if read_whole {
            self.settle_whole_read(&index, &mut pool, complete, started, &absent)
                .await?;
        }
        // After the read and its creates: a record still in the CRM has a linked or pending
        // row by now, or the read saw it, so a copy without either belongs to one that left it.
        let whole_crm = (read_whole && complete).then_some(&index);
        self.resolve_copies(&intake.copies, whole_crm).await?;
        self.flush_judged().await?;
        if self.mode == Mode::Apply && read_whole {
            self.commit_read_marks(complete, started, high_water, &intake)
                .await?;
        }
        Ok(())
    }

    /// Tells the progress view how the read's records were decided.
    async fn report_decided(&self) {
        let counts = self.counts.lock().await;
        self.ctx.progress.decided(super::ReadTally {
            unchanged: counts.unchanged,
            out_of_scope: counts.out_of_scope,
            skipped_by_mode: counts.skipped_by_mode,
            held: counts.held,
        });
    }

    /// Quo-side changes whose record the whole read did not return: after a complete read the
    /// record left the CRM (returned: `on_source_delete` decides, not the reverse path); after
    /// an incremental one the CRM record did not change since the last agreement, so the
    /// change is merged now.
    async fn unread_quo_changes(
        self: &Arc<Self>,
        pool: &mut super::execute::Pool,
        complete: bool,
    ) -> Result<Vec<String>, SyncError> {
        let mut absent = Vec::new();
        let leftovers: Vec<_> = self.quo_changed.lock().await.drain().collect();
        for (external_id, contact) in leftovers {
            if complete {
                absent.push(external_id);
                continue;
            }
            if let Some(work) = self.classify_merge_unread(&external_id, contact).await? {
                pool.dispatch(self, work).await?;
            }
        }
        Ok(absent)
    }

    /// Ids that came twice in the read: planned again against the committed first copy.
    async fn replan_repeats(
        self: &Arc<Self>,
        repeats: Vec<SourceRecord>,
        index: &mut LedgerIndex,
        pool: &mut super::execute::Pool,
    ) -> Result<(), SyncError> {
        for record in repeats {
            self.refresh_index_entry(&record.external_id, index).await?;
            if let Some(work) = self.classify(record, index).await? {
                pool.dispatch(self, work).await?;
            }
        }
        pool.finish(self).await
    }

    /// CRM write-back, in rounds: a follow-up PATCH can meet a newer Quo edit that must go to
    /// the CRM again (at most [`WRITE_BACK_ROUNDS`]; the next cycle carries on).
    async fn write_back_rounds(
        self: &Arc<Self>,
        pool: &mut super::execute::Pool,
    ) -> Result<(), SyncError> {
        for _ in 0..WRITE_BACK_ROUNDS {
            // Paused midway: nothing more goes to the CRM (the events stay pending).
            if self.paused_midway() {
                break;
            }
            let follow_up = self.write_back().await?;
            if follow_up.is_empty() {
                break;
            }
            for work in follow_up {
                pool.dispatch(self, work).await?;
            }
            pool.finish(self).await?;
        }
        Ok(())
    }

    /// What only a whole read can decide: intents a crashed run left for records gone from
    /// the source, creates never found, deletions (either way), the Quo changes of records
    /// that left the CRM (`absent`), and the contacts made in the app.
    async fn settle_whole_read(
        self: &Arc<Self>,
        index: &LedgerIndex,
        pool: &mut super::execute::Pool,
        complete: bool,
        started: DateTime<Utc>,
        absent: &[String],
    ) -> Result<(), SyncError> {
        self.resolve_orphan_intents(index, pool).await?;
        pool.finish(self).await?;
        self.forget_unfound_creates().await?;
        self.deletions(index, pool, complete).await?;
        if complete && self.mode == Mode::Apply {
            self.forget_gone_judged(index).await?;
        }
        self.crm_deletions().await?;
        pool.finish(self).await?;
        self.keep_changes_of_absent_records(absent).await?;
        if self.mode == Mode::Apply {
            self.settle_exports().await?;
        }
        // Contacts made in Quo: only a complete read tells that no record matches them.
        self.export_app_contacts(complete, started).await
    }

    /// The marks a whole read earns once applied: after a complete one, unseen rows released,
    /// the full-read clock and the first cycle; the incremental high-water mark; and the
    /// webhook inbox settled.
    async fn commit_read_marks(
        &self,
        complete: bool,
        started: DateTime<Utc>,
        high_water: Option<DateTime<Utc>>,
        intake: &QuoChanges,
    ) -> Result<(), SyncError> {
        if complete {
            self.ctx.ledger.release_unseen(&self.run_id).await?;
            self.ctx
                .ledger
                .set_meta(LAST_FULL_READ, &started.to_rfc3339())
                .await?;
            if self
                .ctx
                .ledger
                .meta(super::export::FIRST_CYCLE)
                .await?
                .is_none()
            {
                self.mark_first_cycle().await?;
            }
        }
        // Records a CRM webhook named say nothing of the others' times: the mark stays.
        if !self.ctx.source.last_read_was_named() {
            self.advance_high_water(high_water).await?;
        }
        self.settle_inbox(intake).await
    }

    /// Whether a pause stopped this cycle.
    fn paused_midway(&self) -> bool {
        self.paused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// Reloads one index entry from the ledger (the first copy of a repeated id was committed
    /// after the index was loaded).
    async fn refresh_index_entry(
        &self,
        external_id: &ExternalId,
        index: &mut LedgerIndex,
    ) -> Result<(), SyncError> {
        if let Some(row) = self.ctx.ledger.record(external_id).await? {
            index.insert(
                external_id.as_str(),
                IndexEntry {
                    fingerprint: row
                        .source_fingerprint
                        .as_deref()
                        .map_or(0, fingerprint_digest),
                    state: row.state,
                    has_quo_id: row.quo_id.is_some(),
                    seen: true,
                },
            );
        }
        Ok(())
    }

    /// Intents left by a crashed run whose record is no longer in the source.
    async fn resolve_orphan_intents(
        self: &Arc<Self>,
        index: &LedgerIndex,
        pool: &mut super::execute::Pool,
    ) -> Result<(), SyncError> {
        let orphans: Vec<ExternalId> = index
            .iter()
            .filter(|(_, e)| !e.seen && e.state == RecordState::PendingCreate)
            .filter_map(|(id, _)| ExternalId::parse(id).ok())
            .collect();
        for external_id in orphans {
            pool.dispatch(self, Work::ResolvePending { external_id })
                .await?;
        }
        Ok(())
    }

    /// Whether `count` more deletions of `what` fit this cycle's share of the linked records
    /// (`sync.max_delete_fraction`, every kind of deletion counted together); a refusal is
    /// logged and flagged, and nothing of the batch happens.
    pub(super) async fn guard_deletions(
        &self,
        what: &'static str,
        count: usize,
    ) -> Result<bool, SyncError> {
        let linked = *self
            .linked_at_start
            .get_or_try_init(|| async {
                self.ctx
                    .ledger
                    .linked_count()
                    .await
                    .map(|n| n.max(0) as usize)
            })
            .await?;
        let spent = self.deletions_spent.load(Ordering::Acquire);
        let guard = self.ctx.settings.delete_guard();
        if !guard.permits(what, spent + count, linked) {
            self.refused(super::MassDeleteRefusal {
                would_delete: spent + count,
                linked,
                allowed: guard.allowed(linked),
                workspace_unconfirmed: false,
            });
            return Ok(false);
        }
        self.deletions_spent.fetch_add(count, Ordering::AcqRel);
        Ok(true)
    }

    /// The workspace gate, before a worker takes a create or a delete: while the last read-back of linked
    /// contacts did not find most of them (`reverse::absence`: the key may point at another
    /// workspace), no contact is created, adopted or deleted. A POST would put the CRM's record into
    /// whatever workspace the key answers for, and that contact, linked, would be the one id
    /// the next read-back finds there, vouching for the wrong workspace. The key is checked
    /// again once per cycle; the record waits, unwritten, for the first cycle that finds it
    /// answering for ours.
    pub(super) async fn workspace_gate(&self, work: Work) -> Result<Option<Work>, SyncError> {
        // `--allow-mass-delete`: the operator vouches for the workspace, as for absences.
        if self.mode != Mode::Apply
            || self.ctx.settings.allow_mass_delete
            || !matches!(work, Work::Create { .. } | Work::Delete { .. })
            || !self.ctx.client.workspace_doubted()
        {
            return Ok(Some(work));
        }
        if self.workspace_checked_this_cycle().await? {
            return Ok(Some(work));
        }
        match &work {
            Work::Create { record, .. } => {
                self.held_by_doubt(|h| h.creates_deferred += 1);
                warn!(event = "create_deferred", external_id = %record.external_id, reason = "workspace_unconfirmed", "not creating a contact while the key is not shown to answer for the synced workspace; a later cycle creates it");
            }
            Work::Delete { external_id, .. } => {
                self.held_by_doubt(|h| h.deletions_held += 1);
                warn!(event = "delete_deferred", external_id = %external_id, reason = "workspace_unconfirmed", "not deleting a contact while the key is not shown to answer for the synced workspace; a later cycle deletes it");
            }
            _ => {}
        }
        Ok(None)
    }

    /// Whether deletions concluded from the absence of `absent` (Quo ids, or external ids of
    /// pending creates) may happen: the key must be shown to answer for our workspace
    /// (`reverse::absence`), and the deletion guard must let them through.
    pub(super) async fn absences_may_act(
        &self,
        what: &'static str,
        absent: &HashSet<String>,
    ) -> Result<bool, SyncError> {
        // `--allow-mass-delete`: the operator vouches for the absences too.
        let trusted = self.ctx.settings.allow_mass_delete
            || crate::reverse::absence::absences_trusted(
                &self.ctx.ledger,
                &self.ctx.client,
                absent,
            )
            .await
            .map_err(SyncError::from)?;
        if !trusted {
            self.held_by_doubt(|h| h.absences_held += absent.len());
            warn!(
                event = "mass_delete_refused",
                what,
                would_delete = absent.len(),
                reason = "workspace_unconfirmed",
                "refusing to act on contacts Quo says are gone while the key is not shown to answer for the synced workspace; nothing was deleted or unlinked"
            );
            metrics::counter!("quo_sync_mass_delete_refused_total").increment(1);
            self.refused(super::MassDeleteRefusal {
                would_delete: absent.len(),
                linked: self.linked_at_start.get().copied().unwrap_or_default(),
                allowed: 0,
                workspace_unconfirmed: true,
            });
            return Ok(false);
        }
        self.guard_deletions(what, absent.len()).await
    }

    /// Marks the cycle's deletions refused, keeping the first refusal's numbers for the report.
    fn refused(&self, refusal: super::MassDeleteRefusal) {
        self.mass_delete_refused.store(true, Ordering::Relaxed);
        self.refusal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(refusal);
    }

    /// PATCHes answered 404 this cycle: `reverse.on_quo_delete` applies to all of them, or (the
    /// workspace unconfirmed, or too many) to none, and their records are tried again next cycle.
    async fn settle_missing(
        self: &Arc<Self>,
        pool: &mut super::execute::Pool,
    ) -> Result<(), SyncError> {
        let missing: Vec<Update> = std::mem::take(&mut *self.missing.lock().await);
        if missing.is_empty() {
            return Ok(());
        }
        let absent: HashSet<String> = missing.iter().map(|u| u.quo_id.to_string()).collect();
        if !self.absences_may_act("quo_contacts_gone", &absent).await? {
            let mut unsettled = self.unsettled.lock().await;
            let mut oldest = self.failed_since.lock().await;
            for update in &missing {
                unsettled.insert(update.record.external_id.to_string());
                if let Some(at) = update.record.updated_at {
                    *oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
            }
            return Ok(());
        }
        for update in missing {
            pool.dispatch(self, Work::Missing(Box::new(update))).await?;
        }
        Ok(())
    }

    /// Pending creates of records gone from the CRM that no lookup found: forgotten (what their
    /// POST sent kept as an unconfirmed create), all of them or, when the lookups' misses cannot
    /// be trusted or are too many, none (looked up again next cycle).
    async fn forget_unfound_creates(&self) -> Result<(), SyncError> {
        let unfound = std::mem::take(&mut *self.unfound_creates.lock().await);
        if unfound.is_empty() {
            return Ok(());
        }
        let absent: HashSet<String> = unfound.iter().map(|(id, _)| id.to_string()).collect();
        if !self.absences_may_act("pending_creates", &absent).await? {
            return Ok(());
        }
        for (external_id, sent) in unfound {
            // The record left the CRM, but its POST may still have landed behind a lagging
            // list: a later scan that lists it deletes it by `sync.on_source_delete`.
            if let Some(sent) = sent {
                self.ctx.ledger.unconfirmed_add(&external_id, &sent).await?;
            }
            self.ctx.ledger.forget(&external_id).await?;
            info!(event = "pending_create_forgotten", external_id = %external_id, "a pending create of a record gone from the CRM made no contact any lookup finds; forgotten");
        }
        Ok(())
    }

    /// Contacts to delete, counted together behind the mass-deletion guard: those of records
    /// gone from this complete read and the one before (`sync::absences`,
    /// `sync.on_source_delete`) and of records that left scope (`sync.on_leave_scope =
    /// "delete"`).
    async fn deletions(
        self: &Arc<Self>,
        index: &LedgerIndex,
        pool: &mut super::execute::Pool,
        complete: bool,
    ) -> Result<(), SyncError> {
        let gone: Vec<ExternalId> =
            if complete && self.ctx.settings.on_source_delete != OnSourceDelete::Ignore {
                let gone = index
                    .iter()
                    .filter(|(_, e)| !e.seen && e.state == RecordState::Synced && e.has_quo_id)
                    .filter_map(|(id, _)| ExternalId::parse(id).ok())
                    .collect();
                self.confirmed_absences(gone).await?
            } else {
                Vec::new()
            };
        let leaving = std::mem::take(&mut *self.scope_deletes.lock().await);
        let count = gone.len() + leaving.len();
        if count == 0 || !self.guard_deletions("quo_contacts", count).await? {
            // Records that were to leave stay linked, with their old fingerprint: judged again
            // next cycle, deleted once the guard allows it.
            return Ok(());
        }
        for (external_id, quo_id, fingerprint) in leaving {
            pool.dispatch(
                self,
                Work::Delete {
                    external_id,
                    quo_id,
                    left_scope: Some(fingerprint),
                },
            )
            .await?;
        }
        for external_id in gone {
            let Some(row) = self.ctx.ledger.record(&external_id).await? else {
                continue;
            };
            let Some(quo_id) = row.quo_id else { continue };
            pool.dispatch(
                self,
                Work::Delete {
                    external_id,
                    quo_id,
                    left_scope: None,
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Out-of-scope and skipped records a complete read no longer returned, with no contact:
    /// forgotten, so the ledger does not keep every lead that ever passed through the CRM.
    async fn forget_gone_judged(&self, index: &LedgerIndex) -> Result<(), SyncError> {
        let gone: Vec<ExternalId> = index
            .iter()
            .filter(|(_, e)| !e.seen && e.state.is_judged() && !e.has_quo_id)
            .filter_map(|(id, _)| ExternalId::parse(id).ok())
            .collect();
        self.ctx.ledger.forget_judged(&gone).await?;
        Ok(())
    }

    /// CRM rows whose contact was deleted in Quo (`reverse.on_quo_delete = "delete_in_crm"`),
    /// now that the source has been read.
    async fn crm_deletions(&self) -> Result<(), SyncError> {
        let pending: Vec<(ExternalId, QuoContactId)> =
            std::mem::take(&mut *self.crm_deletes.lock().await);
        if pending.is_empty() {
            return Ok(());
        }
        let ids: Vec<ExternalId> = pending.iter().map(|(id, _)| id.clone()).collect();
        if self.mode == Mode::DryRun {
            let mut ops = self.operations.lock().await;
            for (id, quo_id) in &pending {
                ops.push(
                    PlannedOp::new(id.as_str(), Action::Unlink)
                        .with_quo_id(quo_id.as_str())
                        .with_reason("deleted in Quo; policy DeleteInCrm"),
                );
            }
            return Ok(());
        }
        // Each was let through by the guard where its absence was concluded (intake, or the
        // PATCHes answered 404).
        self.ctx.ledger.ensure_leader()?;
        let report = match self
            .ctx
            .source
            .delete_records(&ids, &self.crm_guard())
            .await
        {
            Ok(report) => report,
            Err(e) => {
                warn!(event = "crm_delete_failed", records = ids.len(), error = %e, "could not delete the CRM records; will retry");
                let mut unsettled = self.unsettled.lock().await;
                unsettled.extend(ids.iter().map(ToString::to_string));
                return Ok(());
            }
        };
        for (external_id, quo_id) in pending {
            if report.written.contains(&external_id) {
                self.ctx
                    .ledger
                    .unlink(&external_id, RecordState::Deleted)
                    .await?;
                warn!(event = "crm_record_deleted", external_id = %external_id, quo_id = %quo_id, "contact deleted in Quo; CRM record deleted (reverse.on_quo_delete = \"delete_in_crm\")");
                self.counts.lock().await.written_to_crm += 1;
                self.operations.lock().await.push(
                    PlannedOp::new(external_id.as_str(), Action::Unlink)
                        .with_quo_id(quo_id.as_str()),
                );
            } else {
                let reason = report
                    .failed
                    .iter()
                    .find(|(id, _)| *id == external_id)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| "conflict".into());
                warn!(event = "crm_delete_failed", external_id = %external_id, reason = %reason, "could not delete the CRM record; will retry");
                self.unsettled.lock().await.insert(external_id.to_string());
            }
        }
        Ok(())
    }

    /// Moves the incremental mark to the newest record read, but never past a record whose work
    /// failed this cycle: it must be read again next cycle, not at the next full read.
    async fn advance_high_water(&self, read: Option<DateTime<Utc>>) -> Result<(), SyncError> {
        let failed = *self.failed_since.lock().await;
        let mark = match (read, failed) {
            (Some(read), Some(failed)) => {
                Some(read.min(failed - chrono::Duration::milliseconds(1)))
            }
            (read, _) => read,
        };
        let stored = self.ctx.ledger.meta_time(HIGH_WATER).await?;
        if let Some(mark) = mark.filter(|m| Some(*m) > stored) {
            self.ctx
                .ledger
                .set_meta(HIGH_WATER, &mark.to_rfc3339())
                .await?;
        }
        Ok(())
    }

    /// A Quo-side change to a record the CRM did not return, whose contact was not deleted
    /// (deletion refused by the guard, `on_source_delete = "ignore"`, or failed): its events
    /// stay pending, so the change is merged when the record is back (an export cut short)
    /// instead of being marked applied and never seen again.
    async fn keep_changes_of_absent_records(&self, absent: &[String]) -> Result<(), SyncError> {
        for external_id in absent {
            let Ok(id) = ExternalId::parse(external_id) else {
                continue;
            };
            let still_linked = self
                .ctx
                .ledger
                .record(&id)
                .await?
                .is_some_and(|row| row.quo_id.is_some() && row.state != RecordState::Deleted);
            if still_linked {
                self.unsettled.lock().await.insert(external_id.clone());
            }
        }
        Ok(())
    }

    /// Marks consumed webhook events applied (all but those of unsettled records), and prunes
    /// applied events older than `reverse.inbox_retention`.
    async fn settle_inbox(&self, intake: &QuoChanges) -> Result<(), SyncError> {
        let unsettled = self.unsettled.lock().await.clone();
        for (external_id, events) in &intake.events {
            if unsettled.contains(external_id) {
                continue;
            }
            let outcome = if external_id.is_empty() {
                "ignored"
            } else {
                "applied"
            };
            for event_id in events {
                self.ctx.ledger.inbox_done(event_id, outcome).await?;
            }
        }
        let retention = chrono::Duration::from_std(self.ctx.settings.inbox_retention)
            .unwrap_or(chrono::Duration::days(7));
        let before = (Utc::now() - retention).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let pruned = self.ctx.ledger.inbox_prune(&before).await?;
        if pruned > 0 {
            info!(
                event = "inbox_pruned",
                events = pruned,
                "applied webhook events past reverse.inbox_retention removed"
            );
        }
        Ok(())
    }
}
