//! Phases 2 and 3, read → plan: stream the source, and decide for each record what it needs by
//! comparing it with the ledger. Unchanged records are recognised by their source fingerprint
//! without a mapping pass, so a million-row no-change cycle costs one pass over the file and one
//! over the ledger index.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::execute::Pool;
use super::scope::Scoped;
use super::{Action, Cycle, HIGH_WATER, LAST_FULL_READ, Mode, PlannedOp, SyncError, Update, Work};
use crate::config::OnQuoDelete;
use crate::domain::Snapshot;
use crate::ledger::{
    IndexEntry, LedgerIndex, NewQuarantine, QuarantineStage, RecordState, RunCounts,
};
use crate::source::{
    BadRecord, DigestedItem, DigestedRow, ReadRequest, ReadSummary, SourceError, SourceItem,
    SourceRecord,
};

/// Batches (of up to 512 rows) the source may read ahead of the planner: deep enough that the
/// file is parsed and fingerprinted while the ledger index loads.
const READ_AHEAD_BATCHES: usize = 256;

/// The source's read, running on its own task.
struct Reader {
    /// The records, digested, in batches.
    batches: mpsc::Receiver<Vec<DigestedItem>>,
    /// The read: its summary and how long it took.
    task: tokio::task::JoinHandle<(Result<ReadSummary, SourceError>, std::time::Duration)>,
}

/// What the read left for the settle phase.
pub(super) struct ReadOutcome {
    /// The ledger index, with `seen` set for every record the read returned.
    pub index: LedgerIndex,
    /// The source's summary; `None` when shutdown cut the read short.
    pub summary: Option<ReadSummary>,
    /// The newest CRM last-modified time read.
    pub high_water: Option<DateTime<Utc>>,
    /// When this read started (the next full-read clock).
    pub started: DateTime<Utc>,
    /// Records whose id came a second time in this read while the first was still in flight:
    /// planned again once it is committed, so one new id never becomes two POSTs.
    pub repeats: Vec<SourceRecord>,
    /// The worker pool, still running.
    pub pool: Pool,
}

impl Cycle {
    /// Streams the source and dispatches each record's work as soon as it is planned.
    ///
    /// The ledger index loads on the runtime while the source's thread parses and fingerprints
    /// ahead into a deep channel of batches; an unchanged row then costs one hash lookup here.
    pub(super) async fn read_and_plan(self: &Arc<Self>) -> Result<ReadOutcome, SyncError> {
        let ctx = &self.ctx;
        let started = Utc::now();
        let reader = self.spawn_reader(started).await?;
        let index_started = Instant::now();
        let (mut index, index_ms) = self.load_index_timed().await?;
        let mut high_water: Option<DateTime<Utc>> = None;
        let mut pool = Pool::new(ctx.settings.concurrency);
        let mut dispatched: HashSet<String> = HashSet::new();
        let mut repeats = Vec::new();
        let mut tally = Tally::default();
        let mut compare = std::time::Duration::ZERO;
        let mut rx = reader.batches;
        'read: while let Some(batch) = rx.recv().await {
            let batch_started = Instant::now();
            ctx.progress.read(batch.len() as u64);
            for item in batch {
                if self.stop.is_cancelled() {
                    break 'read;
                }
                let record = match item {
                    DigestedItem::Item(SourceItem::Bad(bad)) => {
                        self.unreadable(bad, &mut index).await?;
                        continue;
                    }
                    DigestedItem::Item(SourceItem::Record(record)) => record,
                    DigestedItem::Row(row) => {
                        high_water = high_water.max(row.updated_at);
                        if let Some(state) = self.unchanged_row(&row, &dispatched, &mut index) {
                            tally.add(state);
                            continue;
                        }
                        row.into_record()
                    }
                };
                high_water = high_water.max(record.updated_at);
                if dispatched.contains(record.external_id.as_str()) {
                    repeats.push(record);
                    continue;
                }
                let id = record.external_id.to_string();
                let Some(work) = self.classify(record, &mut index).await? else {
                    continue;
                };
                dispatched.insert(id);
                pool.dispatch(self, work).await?;
            }
            compare += batch_started.elapsed();
        }
        drop(rx);
        tally.into_counts(&mut *self.counts.lock().await);
        self.flush_judged().await?;
        info!(
            event = "source_read",
            ms = index_started.elapsed().as_millis() as u64,
            "source read and classified"
        );
        let (summary, read_time) = reader.task.await.expect("reader panicked");
        self.record_read_phases(read_time, index_ms, compare);
        let summary = self.read_summary(summary, &mut pool).await?;
        Ok(ReadOutcome {
            index,
            summary: summary.filter(|_| !self.stop.is_cancelled()),
            high_water,
            started,
            repeats,
            pool,
        })
    }

    /// Starts the source's read on its own task, parsing and fingerprinting ahead into a deep
    /// channel of batches: incremental (changed since the high-water mark) between the
    /// periodic full reads the source asks for (`started`: this read's clock).
    async fn spawn_reader(&self, started: DateTime<Utc>) -> Result<Reader, SyncError> {
        let ctx = &self.ctx;
        let last_full = ctx.ledger.meta_time(LAST_FULL_READ).await?;
        let since = if ctx.source.wants_full_read(last_full, started) {
            None
        } else {
            ctx.ledger.meta_time(HIGH_WATER).await?
        };
        let (tx, batches) = mpsc::channel::<Vec<DigestedItem>>(READ_AHEAD_BATCHES);
        let source = ctx.source.clone();
        let fingerprint = self.mapper.raw_fingerprint().clone();
        let read_started = Instant::now();
        let task = tokio::spawn(async move {
            let summary = source
                .read_digested(ReadRequest { since }, fingerprint, tx)
                .await;
            (summary, read_started.elapsed())
        });
        Ok(Reader { batches, task })
    }

    /// The ledger index, loaded while the source reads ahead, and the milliseconds it took.
    async fn load_index_timed(&self) -> Result<(LedgerIndex, u64), SyncError> {
        let index_started = Instant::now();
        let index = self.ctx.ledger.load_index().await?;
        let index_ms = index_started.elapsed().as_millis() as u64;
        info!(
            event = "index_loaded",
            records = index.len(),
            ms = index_ms,
            "ledger index loaded"
        );
        Ok((index, index_ms))
    }

    /// The read phase's times, for the cycle's report.
    fn record_read_phases(
        &self,
        read: std::time::Duration,
        index_ms: u64,
        compare: std::time::Duration,
    ) {
        let mut phases = self.phases.lock().unwrap_or_else(PoisonError::into_inner);
        phases.read = read.as_millis() as u64;
        phases.index = index_ms;
        phases.compare = compare.as_millis() as u64;
    }

    /// The source's summary, `None` when shutdown cut the read short. A read that failed lets
    /// the work in flight finish and commit before the failure is reported.
    async fn read_summary(
        self: &Arc<Self>,
        summary: Result<ReadSummary, SourceError>,
        pool: &mut Pool,
    ) -> Result<Option<ReadSummary>, SyncError> {
        match summary {
            Ok(summary) => Ok(Some(summary)),
            Err(SourceError::Cancelled) if self.stop.is_cancelled() => Ok(None),
            Err(e) => {
                pool.finish(self).await?;
                Err(e.into())
            }
        }
    }

    /// The fast path: a row whose digest matches its ledger entry (synced and linked, or a
    /// scope or mode judgement: the digest covers the filter's fields, so the judgement stands),
    /// with no Quo-side news and not already dispatched this read, is marked seen and needs
    /// nothing. Returns the entry's state.
    fn unchanged_row(
        &self,
        row: &DigestedRow,
        dispatched: &HashSet<String>,
        index: &mut LedgerIndex,
    ) -> Option<RecordState> {
        if self.quo_side.load(Ordering::Relaxed) || dispatched.contains(row.external_id.as_str()) {
            return None;
        }
        match index.get_mut(row.external_id.as_str()) {
            Some(entry) if unchanged(entry, row.digest) => {
                entry.seen = true;
                Some(entry.state)
            }
            _ => None,
        }
    }

    /// A row the source could not read: quarantined; its record is not deleted, and any Quo-side
    /// change to it stays pending until the row reads again.
    async fn unreadable(&self, bad: BadRecord, index: &mut LedgerIndex) -> Result<(), SyncError> {
        warn!(event = "record_unreadable", location = %bad.location, external_id = bad.external_id.as_deref(), reason = %bad.reason, "source row quarantined");
        self.quarantine(
            NewQuarantine {
                external_id: bad.external_id.as_deref(),
                location: &bad.location,
                stage: QuarantineStage::Read,
                field: bad.blame.as_ref().map(|b| b.field.as_str()),
                value: bad.blame.as_ref().map(|b| b.value.as_str()),
                reason: &bad.reason,
                raw: Some(&bad.raw),
            },
            PlannedOp::new(
                bad.external_id.as_deref().unwrap_or(&bad.location),
                Action::Quarantine,
            )
            .with_reason(&bad.reason),
        )
        .await?;
        if let Some(id) = bad.external_id.as_deref() {
            if let Some(entry) = index.get_mut(id) {
                entry.seen = true;
            }
            self.unsettled.lock().await.insert(id.to_string());
            self.quo_changed.lock().await.remove(id);
        }
        Ok(())
    }

    /// Decides what a record needs; `None` when it needs nothing.
    pub(super) async fn classify(
        &self,
        record: SourceRecord,
        index: &mut LedgerIndex,
    ) -> Result<Option<Work>, SyncError> {
        // Most cycles have no Quo-side news: skip both locks on the per-row hot path then.
        let record = if self.quo_side.load(Ordering::Relaxed) {
            match self.quo_side_first(record, index).await? {
                ControlFlow::Break(work) => return Ok(work),
                ControlFlow::Continue(record) => record,
            }
        } else {
            record
        };
        let fingerprint = self.mapper.fingerprint(&record);
        let digest = crate::ledger::fingerprint_digest(&fingerprint);
        let entry = index.get_mut(record.external_id.as_str());
        if let Some(entry) = entry.as_ref()
            && unchanged(entry, digest)
        {
            let state = entry.state;
            index
                .get_mut(record.external_id.as_str())
                .expect("present")
                .seen = true;
            let mut tally = Tally::default();
            tally.add(state);
            tally.into_counts(&mut *self.counts.lock().await);
            return Ok(None);
        }
        let state = entry.as_ref().map(|e| e.state);
        if let Some(entry) = entry {
            entry.seen = true;
        }
        // The in-scope predicate: a record out of scope goes no further.
        let state = match self.judge_scope(&record, state, &fingerprint).await? {
            Scoped::In(state) => state,
            Scoped::Done(work) => return Ok(work),
        };
        let Some(snapshot) = self.map_or_quarantine(&record).await? else {
            return Ok(None);
        };
        self.plan_by_state(record, snapshot, fingerprint, state)
            .await
    }

    /// A Quo-side change or deletion of the record, when it is in scope: breaks with the
    /// record's work (the merge of the change; nothing for a deletion, which
    /// `reverse.on_quo_delete` already decided). Otherwise continues with the record, classified
    /// as any other.
    async fn quo_side_first(
        &self,
        record: SourceRecord,
        index: &mut LedgerIndex,
    ) -> Result<ControlFlow<Option<Work>, SourceRecord>, SyncError> {
        let id = record.external_id.as_str();
        let deleted = self.quo_deleted.lock().await.contains(id);
        let changed = if deleted {
            None
        } else {
            self.quo_changed.lock().await.remove(id)
        };
        // A Quo-side change to a record out of scope is not merged (nothing is written to
        // the CRM for it): the record is classified as any other.
        // Nor is one to a record coming back into scope: it returns through the judgement,
        // with what Quo holds now as its base (`Cycle::come_back`).
        let returning = index
            .get(id)
            .is_some_and(|e| e.state == RecordState::LeftScope);
        let admitted = (deleted || changed.is_some())
            && !returning
            && matches!(self.scope.admits(&record), Ok(true));
        if !admitted && changed.is_some() {
            info!(event = "quo_change_out_of_scope", external_id = %id, "a change made in Quo to a contact whose record is out of scope is not written to the CRM");
        }
        if !admitted && deleted {
            // `delete_in_crm` deletes no CRM record out of scope either.
            self.crm_deletes
                .lock()
                .await
                .retain(|(external_id, _)| external_id.as_str() != id);
        }
        if !admitted {
            return Ok(ControlFlow::Continue(record));
        }
        if let Some(entry) = index.get_mut(id) {
            entry.seen = true;
        }
        self.counts.lock().await.in_scope += 1;
        // Deleted in Quo: `reverse.on_quo_delete` already decided. Changed: merge.
        Ok(ControlFlow::Break(match changed {
            Some(contact) => self.classify_merge(Some(record), contact).await?,
            None => None,
        }))
    }

    /// What an in-scope, mapped record needs by its ledger state: matched against the
    /// workspace or created (new, back in scope, or deleted in Quo), its pending create
    /// resolved, or its update planned.
    async fn plan_by_state(
        &self,
        record: SourceRecord,
        snapshot: Snapshot,
        fingerprint: String,
        state: Option<RecordState>,
    ) -> Result<Option<Work>, SyncError> {
        match state {
            // New, or out of scope or skipped until now: matched against the workspace, or a
            // create (the mode gate may hold it).
            None
            | Some(RecordState::OutOfScope)
            | Some(RecordState::Skipped)
            | Some(RecordState::LeftScope) => {
                self.match_or_create(record, snapshot, fingerprint, false)
                    .await
            }
            Some(RecordState::PendingCreate) => {
                self.match_or_create(record, snapshot, fingerprint, true)
                    .await
            }
            Some(RecordState::Unlinked) | Some(RecordState::Deleted) => {
                if self.ctx.settings.on_quo_delete == OnQuoDelete::Recreate
                    || state == Some(RecordState::Deleted)
                {
                    self.match_or_create(record, snapshot, fingerprint, false)
                        .await
                } else {
                    self.counts.lock().await.unchanged += 1;
                    Ok(None)
                }
            }
            Some(RecordState::Synced) => self.plan_update(record, snapshot, fingerprint).await,
        }
    }

    /// Maps a record; a record that cannot be mapped is quarantined with its field and value.
    async fn map_or_quarantine(
        &self,
        record: &SourceRecord,
    ) -> Result<Option<Snapshot>, SyncError> {
        match self.mapper.map(record) {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(error) => {
                warn!(event = "record_quarantined", external_id = %record.external_id, location = %record.location, field = %error.field, value = %error.value, reason = %error.reason, "record quarantined: {error}");
                self.quarantine(
                    NewQuarantine {
                        external_id: Some(record.external_id.as_str()),
                        location: &record.location,
                        stage: QuarantineStage::Mapping,
                        field: Some(&error.field),
                        value: Some(&error.value),
                        reason: &error.reason,
                        raw: Some(&serde_json::to_string(&record.fields).unwrap_or_default()),
                    },
                    PlannedOp::new(record.external_id.as_str(), Action::Quarantine)
                        .with_reason(&error.to_string()),
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// A linked record whose source changed: an update of the fields that differ from the
    /// agreed snapshot, or nothing when only unmapped columns or formatting changed.
    async fn plan_update(
        &self,
        record: SourceRecord,
        snapshot: Snapshot,
        fingerprint: String,
    ) -> Result<Option<Work>, SyncError> {
        let create = |record, snapshot, fingerprint| {
            Ok(Some(Work::Create {
                record,
                snapshot,
                fingerprint,
                pending: true,
                matched: None,
            }))
        };

        // The row may have gone since the index was loaded (an operator's repair, another
        // process): then it is a create, resolved by lookup first, never a panic.
        let row = self.ctx.ledger.record(&record.external_id).await?;
        let Some(row) = row else {
            return create(record, snapshot, fingerprint);
        };
        let Some(quo_id) = row.quo_id else {
            return create(record, snapshot, fingerprint);
        };
        let base = row.snapshot.unwrap_or_default();
        let snapshot = self.crm_view(&record.external_id, snapshot).await?;
        let changed = base.changed_fields(&snapshot);
        if changed.is_empty() {
            // Only unmapped columns or formatting changed: remember the new fingerprint.
            if self.mode == Mode::Apply {
                self.ctx
                    .ledger
                    .update_fingerprint(&record.external_id, &fingerprint)
                    .await?;
            }
            self.counts.lock().await.unchanged += 1;
            return Ok(None);
        }
        let crm_modified = record.updated_at;
        Ok(Some(Work::Update(Box::new(Update {
            record,
            read: true,
            base,
            crm: snapshot.clone(),
            desired: snapshot,
            fingerprint: Some(fingerprint),
            quo_id,
            seen: row.quo_contact,
            changed,
            crm_modified,
        }))))
    }
}

/// Whether an index entry needs nothing for a row with `digest`: synced and linked, or judged
/// (out of scope, left scope, skipped by mode) on the same fingerprint.
fn unchanged(entry: &IndexEntry, digest: u64) -> bool {
    entry.fingerprint == digest
        && ((entry.state == RecordState::Synced && entry.has_quo_id) || entry.state.is_judged())
}

/// Counts of the rows that needed nothing, by what they are.
#[derive(Default)]
struct Tally {
    unchanged: u64,
    out_of_scope: u64,
    skipped: u64,
}

impl Tally {
    fn add(&mut self, state: RecordState) {
        match state {
            RecordState::OutOfScope | RecordState::LeftScope => self.out_of_scope += 1,
            RecordState::Skipped => self.skipped += 1,
            _ => self.unchanged += 1,
        }
    }

    fn into_counts(self, counts: &mut RunCounts) {
        counts.unchanged += self.unchanged;
        counts.out_of_scope += self.out_of_scope;
        counts.skipped_by_mode += self.skipped;
        counts.in_scope += self.unchanged + self.skipped;
    }
}
