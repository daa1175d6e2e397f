//! What syncs, decided in two places only:
//! * the **in-scope predicate** ([`Cycle::judge_scope`]): `sync.filter` evaluated on a record
//!   whose fingerprint changed (an unchanged row keeps last cycle's judgement: the filter's
//!   fields are part of the fingerprint), and what a record that leaves scope does
//!   (`sync.on_leave_scope`) or one that comes back (relinked to its contact, never a new one);
//! * the **mode gate** ([`Cycle::mode_gate`]): every unit of work passes it before a worker
//!   takes it; `update_only` lets no new contact be POSTed (a match adopted from the workspace
//!   passes: it is one PATCH), `create_only` lets no PATCH of managed fields through.
//!
//! Judgements are stored in `records` (`ledger/scope.rs`), batched, so a million out-of-scope
//! rows cost one hash lookup each on the next no-change cycle.

use tracing::{info, warn};

use super::{Action, Cycle, Mode, PlannedOp, SyncError, Work};
use crate::config::{OnLeaveScope, SyncConfig, SyncMode};
use crate::domain::{ExternalId, QuoContactId};
use crate::expr::{EvalError, Expression, Yields};
use crate::ledger::{
    LedgerError, NewQuarantine, QuarantineStage, RecordState, ScopeLink, ScopeMark,
};
use crate::source::SourceRecord;

/// Judgements stored per transaction.
const MARK_BATCH: usize = 512;

/// The scope rules of a cycle: `sync.filter`, `sync.on_leave_scope`, `sync.mode`.
#[derive(Debug, Clone, Default)]
pub struct ScopeRules {
    /// The filter (none: every record is in scope).
    pub filter: Option<Expression>,
    /// What a synced record that leaves scope does.
    pub on_leave: OnLeaveScope,
    /// Which writes are allowed.
    pub mode: SyncMode,
}

impl ScopeRules {
    /// The rules of `[sync]`; an expression there was checked when the config was loaded, and
    /// is refused here too (exit 2) for configurations built another way.
    pub fn from_config(sync: &SyncConfig) -> Result<Self, crate::expr::CompileError> {
        Ok(Self {
            filter: sync
                .filter
                .as_deref()
                .map(|f| Expression::compile(f, Yields::Bool))
                .transpose()?,
            on_leave: sync.on_leave_scope,
            mode: sync.mode,
        })
    }

    /// What the fingerprint must also cover so that an unchanged row needs no new judgement:
    /// the filter and the mode as rules, the filter's fields as inputs. With no filter in
    /// upsert mode there is nothing to add, so a ledger written before `sync.filter` existed
    /// keeps recognising its unchanged rows.
    pub fn fingerprint_inputs(&self) -> (String, Vec<String>) {
        if self.filter.is_none() && self.mode == SyncMode::Upsert {
            return (String::new(), Vec::new());
        }
        let rules = format!(
            "filter={:?};mode={}",
            self.filter.as_ref().map(Expression::source),
            self.mode.as_str()
        );
        let fields = self
            .filter
            .as_ref()
            .map(|f| f.inputs().to_vec())
            .unwrap_or_default();
        (rules, fields)
    }

    /// The in-scope predicate.
    pub fn admits(&self, record: &SourceRecord) -> Result<bool, EvalError> {
        match &self.filter {
            None => Ok(true),
            Some(filter) => filter.eval_bool(|name| {
                record
                    .fields
                    .get(name)
                    .map(String::as_str)
                    .unwrap_or_default()
            }),
        }
    }
}

/// What the predicate left for the rest of classification (short-lived and moved once, like
/// [`Work`], so the size gap between variants costs nothing worth a box).
#[allow(clippy::large_enum_variant)]
pub(super) enum Scoped {
    /// In scope: classify on, with the ledger state it has now (a relinked record is `Synced`).
    In(Option<RecordState>),
    /// Out of scope, or not judgeable (quarantined): nothing more this cycle, unless work.
    Done(Option<Work>),
}

impl Cycle {
    /// The in-scope predicate for a record read this cycle whose fingerprint changed.
    pub(super) async fn judge_scope(
        &self,
        record: &SourceRecord,
        state: Option<RecordState>,
        fingerprint: &str,
    ) -> Result<Scoped, SyncError> {
        let admitted = match self.scope.admits(record) {
            Ok(admitted) => admitted,
            Err(error) => {
                self.unjudgeable(record, &error).await?;
                return Ok(Scoped::Done(None));
            }
        };
        if admitted {
            self.counts.lock().await.in_scope += 1;
            return match state {
                Some(RecordState::LeftScope) => self.come_back(&record.external_id).await,
                other => Ok(Scoped::In(other)),
            };
        }
        self.counts.lock().await.out_of_scope += 1;
        self.stay_out(&record.external_id, state, fingerprint)
            .await
            .map(Scoped::Done)
    }

    /// Out of scope: a synced record leaves by `sync.on_leave_scope`; anything else is
    /// remembered as out of scope, so it is never created.
    async fn stay_out(
        &self,
        external_id: &ExternalId,
        state: Option<RecordState>,
        fingerprint: &str,
    ) -> Result<Option<Work>, SyncError> {
        let mark = |state, link| ScopeMark {
            external_id: external_id.clone(),
            state,
            fingerprint: fingerprint.to_string(),
            link,
        };
        match state {
            // Its create's outcome is unknown: resolve it (a contact found is linked, and the
            // next cycle sees a synced record leaving scope), never POST it.
            Some(RecordState::PendingCreate) => Ok(Some(Work::ResolvePending {
                external_id: external_id.clone(),
            })),
            Some(RecordState::Synced) => {
                let Some(quo_id) = self
                    .ctx
                    .ledger
                    .record(external_id)
                    .await?
                    .and_then(|row| row.quo_id)
                else {
                    self.judged(mark(RecordState::OutOfScope, ScopeLink::Keep))
                        .await?;
                    return Ok(None);
                };
                self.leave_scope(external_id, quo_id, fingerprint).await?;
                Ok(None)
            }
            // Left before and still out: it keeps its contact (or its memory of one).
            Some(RecordState::LeftScope) => {
                self.judged(mark(RecordState::LeftScope, ScopeLink::Keep))
                    .await?;
                Ok(None)
            }
            _ => {
                self.judged(mark(RecordState::OutOfScope, ScopeLink::Keep))
                    .await?;
                Ok(None)
            }
        }
    }

    /// A synced record the filter no longer admits.
    async fn leave_scope(
        &self,
        external_id: &ExternalId,
        quo_id: QuoContactId,
        fingerprint: &str,
    ) -> Result<(), SyncError> {
        let policy = self.scope.on_leave;
        let op = PlannedOp::new(external_id.as_str(), Action::LeaveScope)
            .with_quo_id(quo_id.as_str())
            .with_reason(&format!("sync.on_leave_scope = {}", policy.as_str()));
        self.counts.lock().await.left_scope += 1;
        if policy == OnLeaveScope::Delete {
            // After the read, with the source's deletions, behind the mass-deletion guard.
            self.scope_deletes.lock().await.push((
                external_id.clone(),
                quo_id,
                fingerprint.to_string(),
            ));
            return Ok(());
        }
        let link = match policy {
            OnLeaveScope::Unlink => ScopeLink::Unlink,
            _ => ScopeLink::Keep,
        };
        if self.mode == Mode::Apply {
            info!(event = "record_left_scope", external_id = %external_id, quo_id = %quo_id, policy = policy.as_str(), "record left scope (sync.filter); its contact is no longer updated");
        }
        self.operations.lock().await.push(op);
        self.judged(ScopeMark {
            external_id: external_id.clone(),
            state: RecordState::LeftScope,
            fingerprint: fingerprint.to_string(),
            link,
        })
        .await
    }

    /// A record back in scope: linked again to the contact it had (kept, or remembered when it
    /// was unlinked), never given a new one; without one it is created like a new record.
    async fn come_back(&self, external_id: &ExternalId) -> Result<Scoped, SyncError> {
        let row = self.ctx.ledger.record(external_id).await?;
        let contact = row.and_then(|row| {
            row.quo_id
                .or_else(|| row.quo_contact.map(|c| QuoContactId(c.id)))
        });
        let Some(quo_id) = contact else {
            return Ok(Scoped::In(None));
        };
        if self.mode == Mode::DryRun {
            self.operations.lock().await.push(
                PlannedOp::new(external_id.as_str(), Action::Relink)
                    .with_quo_id(quo_id.as_str())
                    .with_reason("back in scope (sync.filter)"),
            );
            return Ok(Scoped::Done(None));
        }
        // What the contact holds now becomes the agreed base, in the same write as the link:
        // the CRM's values then go to Quo wherever it differs. An edit made in Quo while the
        // record was out of scope is not merged into the CRM on its return either (it was
        // dropped when made); it is overwritten, as the docs say. A contact gone meanwhile is
        // linked as it was and found missing by its update.
        match self.ctx.client.get_contact(quo_id.as_str()).await? {
            Some(contact) => {
                let contact = self.normalized(contact);
                let now = self.mapper.from_contact(&contact);
                self.ctx
                    .ledger
                    .commit_synced(crate::ledger::SyncedRecord {
                        external_id,
                        quo_id: &quo_id,
                        source_fingerprint: None,
                        snapshot: &now,
                        contact: &contact,
                        crm_updated_at: None,
                    })
                    .await?;
            }
            None => {
                // A 404 is an absence: while a read-back of linked contacts has failed (the key
                // may point elsewhere), the contact cannot be read to be the base, so the record
                // stays out until it can. Otherwise it is linked and found missing as usual.
                if self.ctx.client.workspace_doubted() {
                    warn!(event = "relink_deferred", external_id = %external_id, quo_id = %quo_id, reason = "workspace_unconfirmed", "record back in scope, but its contact cannot be read while the key is not shown to answer for the synced workspace; relinked by a later cycle");
                    return Ok(Scoped::Done(None));
                }
                self.ctx.ledger.relink(external_id, &quo_id).await?
            }
        }
        info!(event = "record_relinked", external_id = %external_id, quo_id = %quo_id, "record back in scope; linked to its contact again");
        self.operations.lock().await.push(
            PlannedOp::new(external_id.as_str(), Action::Relink).with_quo_id(quo_id.as_str()),
        );
        Ok(Scoped::In(Some(RecordState::Synced)))
    }

    /// A record the filter cannot be evaluated on: quarantined with the field and value.
    async fn unjudgeable(&self, record: &SourceRecord, error: &EvalError) -> Result<(), SyncError> {
        let (field, value) = error.field.clone().unzip();
        let reason = format!("sync.filter: {error}");
        warn!(event = "record_quarantined", external_id = %record.external_id, location = %record.location, field = field.as_deref(), value = value.as_deref(), reason = %reason, "record quarantined: the filter cannot be evaluated");
        self.quarantine(
            NewQuarantine {
                external_id: Some(record.external_id.as_str()),
                location: &record.location,
                stage: QuarantineStage::Filter,
                field: field.as_deref(),
                value: value.as_deref(),
                reason: &reason,
                raw: Some(&serde_json::to_string(&record.fields).unwrap_or_default()),
            },
            PlannedOp::new(record.external_id.as_str(), Action::Quarantine).with_reason(&reason),
        )
        .await
    }

    /// Queues a judgement for the ledger (written in batches; nothing in a dry run).
    pub(super) async fn judged(&self, mark: ScopeMark) -> Result<(), SyncError> {
        if self.mode == Mode::DryRun {
            return Ok(());
        }
        let full = {
            let mut marks = self.scope_marks.lock().await;
            marks.push(mark);
            marks.len() >= MARK_BATCH
        };
        if full {
            self.flush_judged().await?;
        }
        Ok(())
    }

    /// Writes the queued judgements.
    pub(super) async fn flush_judged(&self) -> Result<(), LedgerError> {
        let marks = std::mem::take(&mut *self.scope_marks.lock().await);
        self.ctx.ledger.mark_scope(&marks).await
    }

    /// The mode gate: every unit of work passes here before a worker takes it.
    pub(super) async fn mode_gate(&self, work: Work) -> Result<Option<Work>, SyncError> {
        match (self.scope.mode, work) {
            // A create whose POST may have landed is resolved by lookup, never sent again.
            (
                SyncMode::UpdateOnly,
                Work::Create {
                    record,
                    pending: true,
                    matched: None,
                    ..
                },
            ) => Ok(Some(Work::ResolvePending {
                external_id: record.external_id,
            })),
            // A contact already in the workspace (day-one matching) is adopted by one PATCH:
            // "enrich the contacts we already have". Only a POST of a new contact is held.
            (
                SyncMode::UpdateOnly,
                Work::Create {
                    record,
                    fingerprint,
                    matched: None,
                    ..
                },
            ) => {
                self.skipped_by_mode(
                    PlannedOp::new(record.external_id.as_str(), Action::Skip)
                        .with_reason("sync.mode = update_only: no contact to update"),
                )
                .await;
                self.judged(ScopeMark {
                    external_id: record.external_id,
                    state: RecordState::Skipped,
                    fingerprint,
                    link: ScopeLink::Keep,
                })
                .await?;
                Ok(None)
            }
            (SyncMode::CreateOnly, Work::Update(update)) => {
                self.skipped_by_mode(
                    PlannedOp::new(update.record.external_id.as_str(), Action::Skip)
                        .with_quo_id(update.quo_id.as_str())
                        .with_fields(update.changed.clone())
                        .with_reason("sync.mode = create_only: managed fields are not updated"),
                )
                .await;
                // The CRM's row is seen as it is: skipped again only when it changes again.
                if self.mode == Mode::Apply
                    && update.read
                    && let Some(fingerprint) = &update.fingerprint
                {
                    self.ctx
                        .ledger
                        .update_fingerprint(&update.record.external_id, fingerprint)
                        .await?;
                }
                Ok(None)
            }
            (_, work) => Ok(Some(work)),
        }
    }

    /// Whether this cycle may POST a contact for a record that has none (`contact_missing`'s
    /// recreate asks outside the gate).
    pub(super) fn may_create(&self) -> bool {
        self.scope.mode != SyncMode::UpdateOnly
    }

    async fn skipped_by_mode(&self, op: PlannedOp) {
        self.counts.lock().await.skipped_by_mode += 1;
        self.operations.lock().await.push(op);
    }
}
