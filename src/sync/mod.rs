//! The CRM → Quo cycle: read the source, compare each record with the ledger, and send the
//! smallest set of requests that brings Quo into agreement.
//!
//! Unchanged records cost zero requests (and, through the source fingerprint, not even a mapping
//! pass); new records one POST; changed records one PATCH. Requests run concurrently up to
//! `quo.concurrency`, all behind the client's shared rate limiter, and every confirmed outcome is
//! committed to the ledger before the worker takes the next record.

mod merge_step;
pub mod payload;
pub mod plan;

pub use plan::{Action, PlannedOp};

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{OnQuoDelete, OnSourceDelete};
use crate::domain::{ExternalId, QuoContactId, Snapshot};
use crate::ledger::LedgerIndex;
use crate::ledger::{
    Ledger, LedgerError, NewQuarantine, QuarantineStage, RecordState, RunCounts, SyncedRecord,
};
use crate::mapping::{Mapper, MappingConfigError};
use crate::quo::client::{QuoClient, QuoError};
use crate::quo::types::Contact;
use crate::reverse::intake::{IntakeError, QuoChanges};
use crate::reverse::merge::{MergeOutcome, MergePolicy};
use crate::source::{ReadRequest, Source, SourceError, SourceItem, SourceRecord};
use payload::Managed;
use std::collections::{HashMap, HashSet};

/// Meta key: when the source was last read in full.
const LAST_FULL_READ: &str = "source.last_full_read_at";
/// Meta key: the newest CRM last-modified time seen (the `updated_since` value).
const HIGH_WATER: &str = "source.high_water_mark";

/// Why a cycle could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The mapping names something the workspace lacks (exit 2).
    #[error("mapping: {0}")]
    Mapping(#[from] MappingConfigError),
    /// The source could not be read as a whole.
    #[error("source: {0}")]
    Source(#[from] SourceError),
    /// The ledger failed.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// Quo failed in a way that stops the cycle (bad key, custom fields unreadable).
    #[error("quo: {0}")]
    Quo(#[from] QuoError),
    /// Gathering Quo-side changes failed.
    #[error("reverse intake: {0}")]
    Intake(#[from] IntakeError),
}

/// Whether a cycle writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Send requests and commit outcomes.
    Apply,
    /// Only plan: no Quo writes, no ledger writes.
    DryRun,
}

/// Settings a cycle needs beyond its collaborators.
#[derive(Debug, Clone)]
pub struct CycleSettings {
    /// `sync.on_source_delete`.
    pub on_source_delete: OnSourceDelete,
    /// `reverse.on_quo_delete` (a PATCH that finds the contact gone).
    pub on_quo_delete: OnQuoDelete,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// `quo.source_url_template`.
    pub source_url_template: Option<String>,
    /// Run kind recorded in `runs` (`once`, `run`).
    pub kind: &'static str,
    /// Whether Quo-side changes are brought back (`reverse.enabled`).
    pub reverse_enabled: bool,
    /// How often to scan Quo for changes (`reverse.poll_interval`); `None` = webhooks only.
    pub poll_interval: Option<Duration>,
    /// Conflict policy and per-field settings.
    pub merge_policy: MergePolicy,
}

/// Everything a cycle works with.
#[derive(Debug, Clone)]
pub struct SyncContext {
    /// The ledger.
    pub ledger: Ledger,
    /// The Quo client.
    pub client: QuoClient,
    /// The CRM.
    pub source: Arc<Source>,
    /// The mapping configuration.
    pub mapping: crate::config::MappingConfig,
    /// Cycle settings.
    pub settings: CycleSettings,
    /// Cancelled on SIGINT/SIGTERM: no new records are started.
    pub cancel: CancellationToken,
    /// Records read so far by the running cycle (progress displays poll it).
    pub progress: Arc<std::sync::atomic::AtomicU64>,
}

/// What a cycle did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CycleReport {
    /// Run id (also on every log line of the cycle).
    pub run_id: String,
    /// Counts.
    pub counts: RunCounts,
    /// Wall time.
    pub duration_ms: u64,
    /// The operations (all of them in a dry run; the non-trivial ones otherwise).
    pub operations: Vec<PlannedOp>,
    /// Whether shutdown cut the cycle short.
    pub interrupted: bool,
}

impl CycleReport {
    /// Exit status word recorded in `runs`.
    pub fn status(&self) -> &'static str {
        if self.interrupted {
            "interrupted"
        } else if self.counts.quarantined > 0 {
            "quarantined"
        } else {
            "ok"
        }
    }
}

/// Shared state of one running cycle.
struct Cycle {
    ctx: SyncContext,
    mode: Mode,
    run_id: String,
    mapper: Mapper,
    managed: Managed,
    counts: Mutex<RunCounts>,
    operations: Mutex<Vec<PlannedOp>>,
    fatal: Mutex<Option<QuoError>>,
    /// Quo-side changes not yet matched with their CRM record.
    quo_changed: Mutex<HashMap<String, Contact>>,
    /// Merges that must write to the CRM (after the read, in one batch).
    writebacks: Mutex<Vec<WriteBack>>,
    /// Records whose Quo-side events must stay pending (their change is not applied yet).
    unsettled: Mutex<HashSet<String>>,
}

/// A merge waiting for its CRM write.
struct WriteBack {
    external_id: ExternalId,
    record: Option<SourceRecord>,
    quo_id: QuoContactId,
    contact: Contact,
    outcome: MergeOutcome,
}

/// One unit of work for a worker. Short-lived and moved once, so the size gap between
/// variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Work {
    Create {
        record: SourceRecord,
        snapshot: Snapshot,
        fingerprint: String,
        pending: bool,
    },
    Update {
        record: SourceRecord,
        snapshot: Snapshot,
        fingerprint: Option<String>,
        quo_id: QuoContactId,
        contact: Option<Contact>,
        changed: Vec<String>,
    },
    Delete {
        external_id: ExternalId,
        quo_id: QuoContactId,
    },
    ResolvePending {
        external_id: ExternalId,
    },
}

/// Runs one cycle.
pub async fn run_cycle(ctx: &SyncContext, mode: Mode) -> Result<CycleReport, SyncError> {
    let run_id = uuid::Uuid::new_v4().to_string();
    let span = info_span!("cycle", run_id = %run_id, mode = ?mode);
    let started = Instant::now();
    let (requests_before, limited_before) = ctx.client.stats().snapshot();
    if mode == Mode::Apply {
        ctx.ledger.start_run(&run_id, ctx.settings.kind).await?;
    }
    let result = run_cycle_inner(ctx, mode, run_id.clone())
        .instrument(span.clone())
        .await;
    let duration_ms = started.elapsed().as_millis() as u64;
    let (requests_after, limited_after) = ctx.client.stats().snapshot();
    match result {
        Ok(mut report) => {
            report.counts.requests = requests_after - requests_before;
            report.counts.rate_limited = limited_after - limited_before;
            report.duration_ms = duration_ms;
            if mode == Mode::Apply {
                ctx.ledger
                    .finish_run(&run_id, report.status(), &report.counts, duration_ms, None)
                    .await?;
            }
            let c = &report.counts;
            span.in_scope(|| {
                info!(
                    event = "cycle_finished",
                    created = c.created,
                    updated = c.updated,
                    unchanged = c.unchanged,
                    deleted = c.deleted,
                    quarantined = c.quarantined,
                    requests = c.requests,
                    rate_limited = c.rate_limited,
                    duration_ms,
                    "cycle finished"
                )
            });
            metrics::histogram!("quo_sync_cycle_duration_seconds")
                .record(duration_ms as f64 / 1000.0);
            if !report.interrupted {
                metrics::gauge!("quo_sync_last_success_timestamp_seconds")
                    .set(chrono::Utc::now().timestamp() as f64);
            }
            Ok(report)
        }
        Err(error) => {
            if mode == Mode::Apply {
                let counts = RunCounts {
                    requests: requests_after - requests_before,
                    rate_limited: limited_after - limited_before,
                    ..RunCounts::default()
                };
                let message = error.to_string();
                let _ = ctx
                    .ledger
                    .finish_run(&run_id, "failed", &counts, duration_ms, Some(&message))
                    .await;
            }
            span.in_scope(
                || tracing::error!(event = "cycle_failed", error = %error, "cycle failed"),
            );
            metrics::counter!("quo_sync_cycles_failed_total").increment(1);
            Err(error)
        }
    }
}

async fn run_cycle_inner(
    ctx: &SyncContext,
    mode: Mode,
    run_id: String,
) -> Result<CycleReport, SyncError> {
    let defs = ctx.client.custom_fields().await?;
    let mapper = Mapper::new(&ctx.mapping, &defs)?;
    let (email_labels, phone_labels) = mapper.managed_labels();
    let managed = Managed {
        email_labels,
        phone_labels,
        custom_keys: mapper.custom_field_keys(),
    };
    let cycle = Arc::new(Cycle {
        ctx: ctx.clone(),
        mode,
        run_id: run_id.clone(),
        mapper,
        managed,
        counts: Mutex::new(RunCounts::default()),
        operations: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        quo_changed: Mutex::new(HashMap::new()),
        writebacks: Mutex::new(Vec::new()),
        unsettled: Mutex::new(HashSet::new()),
    });

    // Quo side first: deletions change what the forward pass must do, and edits must be merged
    // with the CRM record when it is read.
    let mut quo_changes = if ctx.settings.reverse_enabled {
        cycle.gather_quo_changes().await?
    } else {
        QuoChanges::default()
    };
    for (external_id, quo_id) in &quo_changes.deleted {
        cycle.apply_quo_delete(external_id, quo_id).await?;
    }
    *cycle.quo_changed.lock().await = std::mem::take(&mut quo_changes.changed);

    let index_started = Instant::now();
    let mut index = ctx.ledger.load_index().await?;
    info!(
        event = "index_loaded",
        records = index.len(),
        ms = index_started.elapsed().as_millis() as u64,
        "ledger index loaded"
    );
    let (tx, mut rx) = mpsc::channel::<SourceItem>(4096);
    // Incremental reads (REST with updated_since) between periodic full reads.
    let now = chrono::Utc::now();
    let last_full = ctx.ledger.meta_time(LAST_FULL_READ).await?;
    let since = if ctx.source.wants_full_read(last_full, now) {
        None
    } else {
        ctx.ledger.meta_time(HIGH_WATER).await?
    };
    let source = ctx.source.clone();
    let reader = tokio::spawn(async move { source.read(ReadRequest { since }, tx).await });
    let mut high_water: Option<chrono::DateTime<chrono::Utc>> = None;

    let permits = Arc::new(Semaphore::new(ctx.settings.concurrency.max(1)));
    let mut workers = JoinSet::new();
    let mut interrupted = false;
    ctx.progress.store(0, std::sync::atomic::Ordering::Relaxed);
    // Items arrive in batches: one wake-up per batch, not per row, on million-row files.
    let mut batch = Vec::with_capacity(512);
    'read: while rx.recv_many(&mut batch, 512).await > 0 {
        for item in batch.drain(..) {
            ctx.progress
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if ctx.cancel.is_cancelled() || cycle.fatal.lock().await.is_some() {
                interrupted = true;
                break 'read;
            }
            let work = match item {
                SourceItem::Bad(bad) => {
                    warn!(event = "record_unreadable", location = %bad.location, external_id = bad.external_id.as_deref(), reason = %bad.reason, "source row quarantined");
                    cycle
                        .quarantine(
                            NewQuarantine {
                                external_id: bad.external_id.as_deref(),
                                location: &bad.location,
                                stage: QuarantineStage::Read,
                                field: None,
                                value: None,
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
                    if let Some(entry) = bad.external_id.as_deref().and_then(|id| index.get_mut(id))
                    {
                        // The record exists but this read could not parse it: not a deletion.
                        entry.seen = true;
                    }
                    continue;
                }
                SourceItem::Record(record) => {
                    high_water = high_water.max(record.updated_at);
                    match cycle.classify(record, &mut index).await? {
                        Some(work) => work,
                        None => continue,
                    }
                }
            };
            spawn_work(&mut workers, &permits, &cycle, work).await;
            // Reap finished workers as we go so errors surface early and memory stays flat.
            while let Some(done) = workers.try_join_next() {
                done.expect("worker panicked")?;
            }
        }
    }
    drop(rx);
    info!(
        event = "source_read",
        ms = index_started.elapsed().as_millis() as u64,
        "source read and classified"
    );
    let summary = match reader.await.expect("reader panicked") {
        Ok(summary) => Some(summary),
        Err(SourceError::Cancelled) if interrupted => None,
        Err(e) => {
            // Let in-flight work finish and commit before reporting the failure.
            while let Some(done) = workers.join_next().await {
                done.expect("worker panicked")?;
            }
            return Err(e.into());
        }
    };

    if !interrupted {
        // Quo-side changes whose record this read did not return.
        let leftovers: Vec<(String, Contact)> = cycle.quo_changed.lock().await.drain().collect();
        let complete = summary.as_ref().is_some_and(|s| s.complete);
        for (external_id, contact) in leftovers {
            if complete {
                // The record left the CRM; on_source_delete decides, not the reverse path.
                continue;
            }
            // Incremental read: the CRM record did not change since the last agreement.
            if let Some(work) = cycle.classify_merge_unread(&external_id, contact).await? {
                workers.spawn(cycle.clone().execute_owned(work).in_current_span());
            }
        }
        for work in cycle.write_back().await? {
            spawn_work(&mut workers, &permits, &cycle, work).await;
        }
        // Intents left by a crashed run whose record is no longer in the source.
        for external_id in index
            .iter()
            .filter(|(_, e)| !e.seen && e.state == RecordState::PendingCreate)
            .map(|(id, _)| id)
        {
            if let Ok(external_id) = ExternalId::parse(external_id) {
                workers.spawn(
                    cycle
                        .clone()
                        .execute_owned(Work::ResolvePending { external_id })
                        .in_current_span(),
                );
            }
        }
        if summary.as_ref().is_some_and(|s| s.complete) {
            let gone = index
                .iter()
                .filter(|(_, e)| !e.seen && e.state == RecordState::Synced && e.has_quo_id);
            for external_id in gone.map(|(id, _)| id) {
                let Ok(external_id) = ExternalId::parse(external_id) else {
                    continue;
                };
                match ctx.settings.on_source_delete {
                    OnSourceDelete::Ignore => {}
                    OnSourceDelete::Delete => {
                        let Some(row) = ctx.ledger.record(&external_id).await? else {
                            continue;
                        };
                        let Some(quo_id) = row.quo_id else { continue };
                        spawn_work(
                            &mut workers,
                            &permits,
                            &cycle,
                            Work::Delete {
                                external_id,
                                quo_id,
                            },
                        )
                        .await;
                    }
                }
            }
        }
    }
    while let Some(done) = workers.join_next().await {
        done.expect("worker panicked")?;
    }
    if let Some(fatal) = cycle.fatal.lock().await.take() {
        return Err(fatal.into());
    }
    if mode == Mode::Apply && !interrupted && summary.as_ref().is_some_and(|s| s.complete) {
        ctx.ledger.release_unseen(&run_id).await?;
        ctx.ledger
            .set_meta(LAST_FULL_READ, &now.to_rfc3339())
            .await?;
    }
    if mode == Mode::Apply && !interrupted {
        let stored = ctx.ledger.meta_time(HIGH_WATER).await?;
        if let Some(mark) = high_water.filter(|h| Some(*h) > stored) {
            ctx.ledger.set_meta(HIGH_WATER, &mark.to_rfc3339()).await?;
        }
    }
    if mode == Mode::Apply && !interrupted {
        let unsettled = cycle.unsettled.lock().await.clone();
        for (external_id, events) in &quo_changes.events {
            if unsettled.contains(external_id) {
                continue;
            }
            for event_id in events {
                ctx.ledger
                    .inbox_done(
                        event_id,
                        if external_id.is_empty() {
                            "ignored"
                        } else {
                            "applied"
                        },
                    )
                    .await?;
            }
        }
    }
    let counts = cycle.counts.lock().await.clone();
    let operations = std::mem::take(&mut *cycle.operations.lock().await);
    Ok(CycleReport {
        run_id,
        counts,
        duration_ms: 0,
        operations,
        interrupted: interrupted || ctx.cancel.is_cancelled(),
    })
}

impl Cycle {
    /// Decides what a record needs; `None` when it needs nothing.
    async fn classify(
        &self,
        record: SourceRecord,
        index: &mut LedgerIndex,
    ) -> Result<Option<Work>, SyncError> {
        let quo_side = self
            .quo_changed
            .lock()
            .await
            .remove(record.external_id.as_str());
        if let Some(contact) = quo_side {
            if let Some(entry) = index.get_mut(record.external_id.as_str()) {
                entry.seen = true;
            }
            return self.classify_merge(Some(record), contact).await;
        }
        let fingerprint = self.mapper.fingerprint(&record);
        let digest = crate::ledger::fingerprint_digest(&fingerprint);
        let entry = index.get_mut(record.external_id.as_str());
        if let Some(entry) = &entry
            && entry.state == RecordState::Synced
            && entry.has_quo_id
            && entry.fingerprint == digest
        {
            index
                .get_mut(record.external_id.as_str())
                .expect("present")
                .seen = true;
            self.counts.lock().await.unchanged += 1;
            return Ok(None);
        }
        let state = entry.as_ref().map(|e| e.state);
        if let Some(entry) = entry {
            entry.seen = true;
        }
        let snapshot = match self.mapper.map(&record) {
            Ok(snapshot) => snapshot,
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
                return Ok(None);
            }
        };
        match state {
            None => Ok(Some(Work::Create {
                record,
                snapshot,
                fingerprint,
                pending: false,
            })),
            Some(RecordState::PendingCreate) => Ok(Some(Work::Create {
                record,
                snapshot,
                fingerprint,
                pending: true,
            })),
            Some(RecordState::Unlinked) | Some(RecordState::Deleted) => {
                if self.ctx.settings.on_quo_delete == OnQuoDelete::Recreate
                    || state == Some(RecordState::Deleted)
                {
                    Ok(Some(Work::Create {
                        record,
                        snapshot,
                        fingerprint,
                        pending: false,
                    }))
                } else {
                    self.counts.lock().await.unchanged += 1;
                    Ok(None)
                }
            }
            Some(RecordState::Synced) => {
                // The row may have gone since the index was loaded (an operator's repair, another
                // process): then it is a create, resolved by lookup first, never a panic.
                let row = self.ctx.ledger.record(&record.external_id).await?;
                let Some(row) = row else {
                    return Ok(Some(Work::Create {
                        record,
                        snapshot,
                        fingerprint,
                        pending: true,
                    }));
                };
                let Some(quo_id) = row.quo_id else {
                    return Ok(Some(Work::Create {
                        record,
                        snapshot,
                        fingerprint,
                        pending: true,
                    }));
                };
                let base = row.snapshot.unwrap_or_default();
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
                Ok(Some(Work::Update {
                    record,
                    snapshot,
                    fingerprint: Some(fingerprint),
                    quo_id,
                    contact: row.quo_contact,
                    changed,
                }))
            }
        }
    }

    async fn quarantine(&self, entry: NewQuarantine<'_>, op: PlannedOp) -> Result<(), SyncError> {
        if self.mode == Mode::Apply {
            self.ctx.ledger.quarantine(entry, &self.run_id).await?;
        }
        self.counts.lock().await.quarantined += 1;
        metrics::counter!("quo_sync_records_total", "outcome" => "quarantined").increment(1);
        self.operations.lock().await.push(op);
        Ok(())
    }

    async fn execute_owned(self: Arc<Self>, work: Work) -> Result<(), SyncError> {
        self.execute(work).await
    }

    /// Carries out one unit of work; record-level failures are quarantined, not returned.
    async fn execute(&self, work: Work) -> Result<(), SyncError> {
        let external_id = match &work {
            Work::Create { record, .. } | Work::Update { record, .. } => record.external_id.clone(),
            Work::Delete { external_id, .. } | Work::ResolvePending { external_id } => {
                external_id.clone()
            }
        };
        let location = match &work {
            Work::Create { record, .. } | Work::Update { record, .. } => record.location.clone(),
            _ => String::from("ledger"),
        };
        if self.mode == Mode::DryRun {
            let op = match &work {
                Work::Create { .. } => PlannedOp::new(external_id.as_str(), Action::Create),
                Work::Update {
                    changed, quo_id, ..
                } => PlannedOp::new(external_id.as_str(), Action::Update)
                    .with_fields(changed.clone())
                    .with_quo_id(quo_id.as_str()),
                Work::Delete { quo_id, .. } => PlannedOp::new(external_id.as_str(), Action::Delete)
                    .with_quo_id(quo_id.as_str()),
                Work::ResolvePending { .. } => {
                    PlannedOp::new(external_id.as_str(), Action::Resolve)
                }
            };
            let mut counts = self.counts.lock().await;
            match op.action {
                Action::Create => counts.created += 1,
                Action::Update => counts.updated += 1,
                Action::Delete => counts.deleted += 1,
                _ => {}
            }
            drop(counts);
            self.operations.lock().await.push(op);
            return Ok(());
        }
        let span = info_span!("record", external_id = %external_id);
        let outcome = self.execute_apply(work).instrument(span).await;
        match outcome {
            Ok(()) => Ok(()),
            Err(Failure::Ledger(e)) => Err(e.into()),
            Err(Failure::Quo(error)) if error.is_fatal() => {
                self.ctx.cancel.cancel();
                *self.fatal.lock().await = Some(error);
                Ok(())
            }
            Err(Failure::Quo(error)) => {
                let message = error.to_string();
                warn!(event = "record_quarantined", external_id = %external_id, reason = %message, "Quo did not accept the record");
                self.ctx
                    .ledger
                    .record_failure(&external_id, &message)
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
                        location: &location,
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
        }
    }

    async fn execute_apply(&self, work: Work) -> Result<(), Failure> {
        match work {
            Work::Create {
                record,
                snapshot,
                fingerprint,
                pending,
            } => {
                self.create(
                    &record.external_id,
                    Some(&record),
                    &snapshot,
                    Some(&fingerprint),
                    pending,
                )
                .await
            }
            Work::Update {
                record,
                snapshot,
                fingerprint,
                quo_id,
                contact,
                changed,
            } => {
                let body = payload::patch_body(&snapshot, contact.as_ref(), &self.managed);
                match self.ctx.client.update_contact(quo_id.as_str(), &body).await {
                    Ok(contact) => {
                        self.commit(
                            &record.external_id,
                            &QuoContactId(contact.id.clone()),
                            fingerprint.as_deref(),
                            &snapshot,
                            &contact,
                            &record,
                        )
                        .await?;
                        info!(event = "contact_updated", external_id = %record.external_id, quo_id = %contact.id, fields = ?changed, "contact updated");
                        self.counted(
                            Action::Update,
                            &record.external_id,
                            Some(&contact.id),
                            changed,
                        )
                        .await;
                        Ok(())
                    }
                    Err(QuoError::Rejected { status: 404, .. }) => {
                        warn!(event = "contact_missing", external_id = %record.external_id, quo_id = %quo_id, policy = ?self.ctx.settings.on_quo_delete, "the Quo contact is gone");
                        match self.ctx.settings.on_quo_delete {
                            OnQuoDelete::Recreate => {
                                self.create(
                                    &record.external_id,
                                    Some(&record),
                                    &snapshot,
                                    fingerprint.as_deref(),
                                    false,
                                )
                                .await
                            }
                            _ => {
                                self.ctx
                                    .ledger
                                    .unlink(&record.external_id, RecordState::Unlinked)
                                    .await?;
                                Ok(())
                            }
                        }
                    }
                    Err(e) => Err(Failure::Quo(e)),
                }
            }
            Work::Delete {
                external_id,
                quo_id,
            } => {
                let existed = self
                    .ctx
                    .client
                    .delete_contact(quo_id.as_str())
                    .await
                    .map_err(Failure::Quo)?;
                self.ctx
                    .ledger
                    .unlink(&external_id, RecordState::Deleted)
                    .await?;
                info!(event = "contact_deleted", external_id = %external_id, quo_id = %quo_id, existed, "record left the source; Quo contact deleted (sync.on_source_delete = \"delete\")");
                self.counted(
                    Action::Delete,
                    &external_id,
                    Some(quo_id.as_str()),
                    Vec::new(),
                )
                .await;
                Ok(())
            }
            Work::ResolvePending { external_id } => {
                let found = self
                    .ctx
                    .client
                    .find_by_external_id(external_id.as_str())
                    .await
                    .map_err(Failure::Quo)?;
                match found.into_iter().next() {
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
                    None => {
                        self.ctx.ledger.forget(&external_id).await?;
                    }
                }
                Ok(())
            }
        }
    }

    async fn create(
        &self,
        external_id: &ExternalId,
        record: Option<&SourceRecord>,
        snapshot: &Snapshot,
        fingerprint: Option<&str>,
        pending: bool,
    ) -> Result<(), Failure> {
        self.ctx.ledger.record_intent(external_id).await?;
        // A previous run may have created it and died before committing: look first.
        let existing = if pending {
            self.ctx
                .client
                .find_by_external_id(external_id.as_str())
                .await
                .map_err(Failure::Quo)?
                .into_iter()
                .next()
        } else {
            None
        };
        let (contact, adopted) = match existing {
            Some(contact) => (contact, true),
            None => {
                let source_url = self
                    .ctx
                    .settings
                    .source_url_template
                    .as_ref()
                    .map(|t| t.replace("{id}", external_id.as_str()));
                let body = payload::create_body(
                    snapshot,
                    external_id.as_str(),
                    self.ctx.client.source(),
                    source_url,
                );
                let outcome = self
                    .ctx
                    .client
                    .create_contact(&body)
                    .await
                    .map_err(Failure::Quo)?;
                (outcome.contact, outcome.adopted)
            }
        };
        let quo_id = QuoContactId(contact.id.clone());
        // Commit the id before anything else can fail.
        let mut contact = contact;
        let mut agreed = snapshot.clone();
        if adopted {
            let have = self.mapper.from_contact(&contact);
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
            if have.changed_fields(snapshot).is_empty() {
                agreed = have;
            } else {
                let body = payload::patch_body(snapshot, Some(&contact), &self.managed);
                contact = self
                    .ctx
                    .client
                    .update_contact(quo_id.as_str(), &body)
                    .await
                    .map_err(Failure::Quo)?;
            }
            info!(event = "contact_adopted", external_id = %external_id, quo_id = %quo_id, "found the contact in Quo and adopted it instead of creating a duplicate");
        }
        let crm_updated_at = record.and_then(|r| r.updated_at).map(|t| t.to_rfc3339());
        self.ctx
            .ledger
            .commit_synced(SyncedRecord {
                external_id,
                quo_id: &quo_id,
                source_fingerprint: fingerprint,
                snapshot: &agreed,
                contact: &contact,
                crm_updated_at,
            })
            .await?;
        info!(event = "contact_created", external_id = %external_id, quo_id = %quo_id, adopted, "contact created");
        self.counted(
            Action::Create,
            external_id,
            Some(quo_id.as_str()),
            Vec::new(),
        )
        .await;
        Ok(())
    }

    async fn commit(
        &self,
        external_id: &ExternalId,
        quo_id: &QuoContactId,
        fingerprint: Option<&str>,
        snapshot: &Snapshot,
        contact: &Contact,
        record: &SourceRecord,
    ) -> Result<(), LedgerError> {
        self.ctx
            .ledger
            .commit_synced(SyncedRecord {
                external_id,
                quo_id,
                source_fingerprint: fingerprint,
                snapshot,
                contact,
                crm_updated_at: record.updated_at.map(|t| t.to_rfc3339()),
            })
            .await
    }

    async fn counted(
        &self,
        action: Action,
        external_id: &ExternalId,
        quo_id: Option<&str>,
        fields: Vec<String>,
    ) {
        {
            let mut counts = self.counts.lock().await;
            match action {
                Action::Create => counts.created += 1,
                Action::Update => counts.updated += 1,
                Action::Delete => counts.deleted += 1,
                _ => {}
            }
        }
        metrics::counter!("quo_sync_records_total", "outcome" => action.as_str()).increment(1);
        let mut op = PlannedOp::new(external_id.as_str(), action).with_fields(fields);
        if let Some(id) = quo_id {
            op = op.with_quo_id(id);
        }
        self.operations.lock().await.push(op);
    }
}

/// A worker's failure: Quo's (per record) or the ledger's (stops the cycle).
enum Failure {
    Quo(QuoError),
    Ledger(LedgerError),
}

impl From<LedgerError> for Failure {
    fn from(e: LedgerError) -> Self {
        Failure::Ledger(e)
    }
}

/// Runs `work` on the pool once a concurrency permit is free.
async fn spawn_work(
    workers: &mut JoinSet<Result<(), SyncError>>,
    permits: &Arc<Semaphore>,
    cycle: &Arc<Cycle>,
    work: Work,
) {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .expect("semaphore open");
    let cycle = cycle.clone();
    workers.spawn(
        async move {
            let _permit = permit;
            cycle.execute(work).await
        }
        .in_current_span(),
    );
}
