//! The cycle: read the CRM, decide per record what Quo needs, and send the smallest set of
//! requests that brings both sides into agreement, committing only what each side confirmed.
//!
//! A cycle runs in named phases (each in its own file):
//! 1. **intake** (`merge_step.rs`): Quo-side changes, from the webhook inbox and, when due, a scan.
//! 2. **read → plan** (`read.rs`): the source is streamed; each record is compared with the ledger
//!    (unchanged records cost nothing, not even a mapping pass) and becomes a unit of [`Work`].
//! 3. **freshen** (`freshen.rs`): before any PATCH, Quo's current copy of the contacts about to be
//!    patched is read, 50 per request, and merged three-way where Quo changed since our copy.
//! 4. **execute** (`execute.rs`): POST / PATCH / DELETE on a bounded worker pool behind the shared
//!    rate limiter; every confirmed outcome is committed before the worker takes the next record.
//! 5. **settle** (`settle.rs`): CRM write-back, deletions (behind the mass-deletion guard),
//!    interrupted creates, contacts an unconfirmed create made (`copies/`), the incremental
//!    high-water mark and the webhook inbox.

mod absences;
mod adopt;
mod confirm;
mod copies;
mod create;
mod doubt;
mod execute;
mod export;
mod freshen;
mod holds;
mod matching;
mod merge_step;
pub mod payload;
pub mod plan;
pub mod progress;
mod read;
mod scope;
mod settle;

pub use plan::{Action, PlannedOp};
pub use progress::{CyclePhase, CycleProgress, HeldBack, ProgressSnapshot, ReadTally, WriteKind};
pub use scope::ScopeRules;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};

use crate::config::{OnQuoDelete, OnSourceDelete};
use crate::domain::{ExternalId, QuoContactId, Snapshot};
use crate::ledger::{Ledger, LedgerError, RunCounts};
use crate::mapping::{Mapper, MappingConfigError};
use crate::quo::client::{QuoClient, QuoError};
use crate::quo::types::Contact;
use crate::reverse::intake::IntakeError;
use crate::reverse::merge::{MergeOutcome, MergePolicy};
use crate::source::{Source, SourceError, SourceRecord};
use payload::Managed;

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

impl SyncError {
    /// Whether Quo refused the API key or the CRM refused its credentials. A one-shot command
    /// stops (exit 2); a service stops at once when the credential never worked in this process
    /// (exit 2), else backs off for its grace before it stops (`auth_failed`, exit 1), the same
    /// rule for both sides (see `crate::quo::grace`).
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            SyncError::Quo(QuoError::Unauthorized { .. })
                | SyncError::Intake(IntakeError::Quo(QuoError::Unauthorized { .. }))
                | SyncError::Source(
                    SourceError::Unauthorized { .. } | SourceError::CredentialsRefused { .. }
                )
        )
    }
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
    /// `sync.max_delete_fraction`: a cycle that would delete more than this share of the
    /// managed contacts (or CRM rows) deletes nothing.
    pub max_delete_fraction: f64,
    /// `--allow-mass-delete`: lift the guard for this process.
    pub allow_mass_delete: bool,
    /// `reverse.inbox_retention`: applied webhook events older than this are pruned.
    pub inbox_retention: Duration,
    /// `quo.list_lag`: the wait between the two lookups of an interrupted create.
    pub list_lag: Duration,
    /// What syncs: `sync.filter`, `sync.on_leave_scope`, `sync.mode`.
    pub scope: ScopeRules,
    /// Day one: matching new records against the workspace, and contacts made in Quo.
    pub day_one: DayOneSettings,
}

/// How a cycle meets the contacts already in the workspace (`sync.match_existing`,
/// `sync.adopt_sources`) and the contacts made in the Quo app (`reverse.create_in_crm`).
#[derive(Debug, Clone, Default)]
pub struct DayOneSettings {
    /// `sync.match_existing`.
    pub match_existing: crate::config::MatchExisting,
    /// `sync.adopt_sources`.
    pub adopt_sources: Vec<String>,
    /// `reverse.create_in_crm`.
    pub create_in_crm: bool,
    /// `reverse.new_record_id`.
    pub new_record_id: String,
    /// `reverse.quo_id_field`.
    pub quo_id_field: Option<String>,
    /// `once --export-existing`: contacts made in the app before the first cycle go too.
    pub export_existing: bool,
}

impl DayOneSettings {
    /// Whether the cycle needs the workspace index (every contact, not only ours).
    pub fn wants_workspace(&self) -> bool {
        self.match_existing.is_on() || self.create_in_crm
    }

    /// What a scan pass lists.
    pub fn scan_scope(&self) -> crate::reverse::scan::Scope {
        if self.wants_workspace() {
            crate::reverse::scan::Scope::Workspace
        } else {
            crate::reverse::scan::Scope::Ours
        }
    }
}

impl CycleSettings {
    /// The mass-deletion guard these settings describe.
    pub fn delete_guard(&self) -> crate::reverse::absence::DeleteGuard {
        crate::reverse::absence::DeleteGuard {
            max_fraction: self.max_delete_fraction,
            allow: self.allow_mass_delete,
        }
    }
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
    /// What the running cycle has done so far (progress displays poll it).
    pub progress: Arc<CycleProgress>,
    /// Held by a scan pass: the service's scanner and a cycle that must list the workspace
    /// before its first creates never list at once.
    pub scan_gate: Arc<Mutex<()>>,
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
    /// Deletions the mass-deletion guard refused (nothing was deleted).
    pub mass_delete_refused: bool,
    /// What the guard refused, when this cycle's settle phase refused it (a scan's refusal
    /// sets only `mass_delete_refused`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mass_delete_refusal: Option<MassDeleteRefusal>,
    /// Where the time went, by phase.
    pub phases_ms: PhaseTimes,
    /// The pause that kept this cycle from writing (at its start: nothing was done; during it:
    /// it stopped taking records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<crate::ledger::Pause>,
}

/// Deletions the guard refused, in numbers an operator can weigh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MassDeleteRefusal {
    /// Deletions (or unlinks) the cycle would have made.
    pub would_delete: usize,
    /// Records linked to a contact when the cycle began.
    pub linked: usize,
    /// The most one cycle may delete (`sync.max_delete_fraction` of `linked`, at least one).
    pub allowed: usize,
    /// Refused because the API key was not shown to answer for the synced workspace (a key
    /// for another workspace sees none of our contacts), not for their number.
    pub workspace_unconfirmed: bool,
}

/// Milliseconds per phase of a cycle. `read` (the source's own reading thread) and `index` (the
/// ledger index load) run side by side; `compare` is the planner's busy time over the rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PhaseTimes {
    /// Reading (and, for CSV, parsing and fingerprinting) the source, start to end.
    pub read: u64,
    /// Loading the ledger index.
    pub index: u64,
    /// Comparing rows with the index and planning their work.
    pub compare: u64,
    /// The settle phase.
    pub settle: u64,
}

impl CycleReport {
    /// Exit status word recorded in `runs`.
    pub fn status(&self) -> &'static str {
        if self.paused.is_some() {
            "paused"
        } else if self.interrupted {
            "interrupted"
        } else if self.mass_delete_refused {
            "mass_delete_refused"
        } else if self.counts.quarantined > 0 || self.counts.held > 0 {
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
    /// The workspace's custom field definitions, read at the start of the cycle.
    defs: Vec<crate::quo::types::CustomFieldDef>,
    /// Stops this cycle (shutdown, or a failure no record can get past); never the service.
    stop: CancellationToken,
    counts: Mutex<RunCounts>,
    operations: Mutex<Vec<PlannedOp>>,
    fatal: Mutex<Option<QuoError>>,
    /// Quo-side changes not yet matched with their CRM record.
    quo_changed: Mutex<HashMap<String, Contact>>,
    /// Records whose contact is confirmed deleted in Quo; the forward pass leaves them alone.
    quo_deleted: Mutex<HashSet<String>>,
    /// Contacts that creates whose answer was lost made, announced by a webhook and read by id
    /// (no list lag), by external id: the pending create adopts one instead of looking it up.
    found_creates: Mutex<HashMap<String, Contact>>,
    /// Whether intake left anything in `quo_changed` or `quo_deleted` (the read's fast path).
    quo_side: AtomicBool,
    /// Merges that must write to the CRM (after the read, in one batch).
    writebacks: Mutex<Vec<WriteBack>>,
    /// Records whose Quo-side events must stay pending (their change is not applied yet).
    unsettled: Mutex<HashSet<String>>,
    /// CRM rows to delete because their contact was deleted in Quo (`delete_in_crm`), after the
    /// source has been read (the CSV adapter refuses to rewrite a file it has not read).
    crm_deletes: Mutex<Vec<(ExternalId, QuoContactId)>>,
    /// The oldest CRM last-modified time among records whose work failed this cycle: the
    /// incremental high-water mark must not pass it, or they would wait for the next full read.
    failed_since: Mutex<Option<DateTime<Utc>>>,
    /// Whether the mass-deletion guard refused this cycle's deletions.
    mass_delete_refused: AtomicBool,
    /// The first refusal of this cycle's settle phase, in numbers.
    refusal: std::sync::Mutex<Option<MassDeleteRefusal>>,
    /// The linked records when the cycle first guarded a deletion: what the guard measures.
    linked_at_start: tokio::sync::OnceCell<usize>,
    /// Deletions of every kind this cycle let through so far.
    deletions_spent: std::sync::atomic::AtomicUsize,
    /// PATCHes Quo answered 404 for: acted on (`reverse.on_quo_delete`) only in the settle
    /// phase, all together, behind the workspace check and the deletion guard.
    missing: Mutex<Vec<Update>>,
    /// Pending creates of records gone from the CRM whose contact no lookup found (with what
    /// their POST sent): forgotten in the settle phase, behind the same checks.
    unfound_creates: Mutex<Vec<(ExternalId, Option<Snapshot>)>>,
    /// Records (or unreadable rows) quarantined this cycle: one bad record counts once, however
    /// many of its steps failed (an unreadable contact fails at intake and again at its PATCH).
    quarantined: Mutex<HashSet<String>>,
    /// Phase timings for the report.
    phases: std::sync::Mutex<PhaseTimes>,
    /// `ctx.settings.merge_policy` with the computed fields one-way (to Quo): a Quo-side edit
    /// of one is set back to the computed value, never written to the CRM.
    merge_policy: MergePolicy,
    /// The scope rules (a copy of `ctx.settings.scope`).
    scope: ScopeRules,
    /// Scope judgements waiting to be written (in batches).
    scope_marks: Mutex<Vec<crate::ledger::ScopeMark>>,
    /// The pause that stopped this cycle midway, if one did.
    paused: std::sync::Mutex<Option<crate::ledger::Pause>>,
    /// Contacts of records that left scope under `on_leave_scope = "delete"`: deleted in the
    /// settle phase behind the mass-deletion guard (with the fingerprint to commit).
    scope_deletes: Mutex<Vec<(ExternalId, QuoContactId, String)>>,
    /// Records with CRM holds (`sync::holds`), read once per cycle when first needed.
    held: tokio::sync::OnceCell<HashSet<String>>,
    /// When the cycle started: a copy read since is fresh.
    started: DateTime<Utc>,
    /// The workspace index, once a record needs it (listed first if it never was).
    workspace: tokio::sync::OnceCell<matching::WorkspaceIndex>,
    /// Whether the key was shown to answer for our workspace again this cycle, after a
    /// read-back that did not find most linked contacts (checked once per cycle, for creates).
    workspace_rechecked: tokio::sync::OnceCell<bool>,
    /// What this cycle held back while the workspace was in doubt (recorded with the doubt).
    held_by_doubt: std::sync::Mutex<crate::reverse::doubt::HeldWork>,
    /// Records with matches, waiting for the whole read.
    deferred: Mutex<Vec<matching::Deferred>>,
    /// Whether two listings agree, once this cycle asked (`confirm.rs`).
    confirmation: tokio::sync::OnceCell<bool>,
    /// Operators' answers to held records, by external id.
    decisions: HashMap<String, crate::ledger::MatchDecision>,
    /// Contacts made in Quo on their way to the CRM (not done), by Quo id.
    exports: HashMap<String, crate::ledger::Export>,
    /// The same by the CRM id their record has or will have: external id → Quo id.
    exports_by_record: HashMap<String, String>,
    /// Exports whose record this read returned (its adoption is under way).
    exports_found: Mutex<HashSet<String>>,
    /// Contacts some record matched this cycle (no export for them).
    matched_contacts: Mutex<HashSet<String>>,
    /// Contacts decided for a record (an operator's link, an export): Quo id → external id.
    claimed: HashMap<String, String>,
}

/// A merge waiting for its CRM write.
struct WriteBack {
    external_id: ExternalId,
    record: Option<SourceRecord>,
    quo_id: QuoContactId,
    contact: Contact,
    outcome: MergeOutcome,
}

/// A PATCH to make, with what the planner knew when it decided it.
struct Update {
    /// The CRM record (a stand-in when an incremental read did not return it).
    record: SourceRecord,
    /// Whether `record` came from this cycle's read.
    read: bool,
    /// The last snapshot both sides agreed on.
    base: Snapshot,
    /// What the CRM holds, mapped.
    crm: Snapshot,
    /// What Quo should hold.
    desired: Snapshot,
    /// The source fingerprint to commit once Quo confirms.
    fingerprint: Option<String>,
    /// The contact.
    quo_id: QuoContactId,
    /// The Quo copy `desired` already accounts for (the ledger's, or one read this cycle).
    seen: Option<Contact>,
    /// Fields that change.
    changed: Vec<String>,
    /// The CRM's last-modified time (for the `newest` conflict policy).
    crm_modified: Option<DateTime<Utc>>,
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
        /// What matching against the workspace decided (`None`: nothing matched, POST).
        matched: Option<matching::Matched>,
    },
    Update(Box<Update>),
    Delete {
        external_id: ExternalId,
        quo_id: QuoContactId,
        /// Set when the record left scope (`on_leave_scope = "delete"`): the fingerprint the
        /// judgement is committed with once the contact is gone.
        left_scope: Option<String>,
    },
    ResolvePending {
        external_id: ExternalId,
    },
    /// A contact Quo answered 404 for, once the settle phase let its absence be acted on.
    Missing(Box<Update>),
}

/// The mapper and what it manages, built on the workspace's custom fields as a cycle builds
/// them (for operator commands that write to Quo outside a cycle).
pub async fn mapper_for(ctx: &SyncContext) -> Result<(Mapper, Managed), SyncError> {
    let defs = ctx.client.custom_fields().await?;
    let mapper = Mapper::new(&ctx.mapping, &defs)?;
    let managed = managed_of(&mapper);
    Ok((mapper, managed))
}

/// The labels and keys `mapper` writes.
fn managed_of(mapper: &Mapper) -> Managed {
    let (email_labels, phone_labels) = mapper.managed_labels();
    Managed {
        email_labels,
        phone_labels,
        custom_keys: mapper.custom_field_keys(),
        default_fields: mapper.managed_default_fields(),
    }
}

/// Runs one cycle.
pub async fn run_cycle(ctx: &SyncContext, mode: Mode) -> Result<CycleReport, SyncError> {
    let run_id = uuid::Uuid::new_v4().to_string();
    if mode == Mode::Apply
        && let Some(pause) = ctx.ledger.pause_state().await?
    {
        info!(event = "cycle_paused", run_id = %run_id, paused_by = %pause.by, until = pause.until.as_deref(), "syncing is paused: nothing is sent to Quo or the CRM (webhooks are kept for after `quo-sync resume`)");
        metrics::gauge!("quo_sync_paused").set(1.0);
        return Ok(CycleReport {
            run_id,
            counts: RunCounts::default(),
            duration_ms: 0,
            operations: Vec::new(),
            interrupted: false,
            mass_delete_refused: false,
            mass_delete_refusal: None,
            phases_ms: PhaseTimes::default(),
            paused: Some(pause),
        });
    }
    let span = info_span!("cycle", run_id = %run_id, mode = ?mode);
    let started = Instant::now();
    let (requests_before, limited_before) = ctx.client.stats().snapshot();
    ctx.progress.reset();
    if mode == Mode::Apply {
        ctx.ledger.start_run(&run_id, ctx.settings.kind).await?;
    }
    let result = run_phases(ctx, mode, run_id.clone())
        .instrument(span.clone())
        .await;
    ctx.progress.enter(CyclePhase::Idle);
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
                    written_to_crm = c.written_to_crm,
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

/// The phases, in order; each reads like the step it is.
async fn run_phases(
    ctx: &SyncContext,
    mode: Mode,
    run_id: String,
) -> Result<CycleReport, SyncError> {
    let cycle = Cycle::prepare(ctx, mode, run_id).await?;
    // A pause during the cycle stops it taking records within a poll.
    let watch = (mode == Mode::Apply).then(|| tokio::spawn(watch_pause(cycle.clone())));
    let result = phases(ctx, &cycle).await;
    if let Some(watch) = watch {
        watch.abort();
    }
    result
}

/// `policy` with every computed mapping entry's field flowing to Quo only.
fn one_way_computed(policy: &MergePolicy, mapper: &Mapper) -> MergePolicy {
    let mut policy = policy.clone();
    for name in mapper.computed_fields() {
        policy.fields.insert(
            name,
            crate::config::FieldPolicy {
                conflict: None,
                direction: Some(crate::config::FieldDirection::ToQuo),
            },
        );
    }
    policy
}

/// How often a running cycle looks for a pause.
const PAUSE_POLL: Duration = Duration::from_millis(250);

/// Until the cycle stops: stops it when syncing is paused, keeping who paused it.
async fn watch_pause(cycle: Arc<Cycle>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PAUSE_POLL) => {}
            _ = cycle.stop.cancelled() => return,
        }
        if let Ok(Some(pause)) = cycle.ctx.ledger.pause_state().await {
            tracing::warn!(event = "cycle_paused_midway", paused_by = %pause.by, "syncing was paused during the cycle; it takes no more records (what is in flight finishes and is committed)");
            *cycle
                .paused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pause);
            cycle.stop.cancel();
            return;
        }
    }
}

/// The phases of [`run_phases`], in order.
async fn phases(ctx: &SyncContext, cycle: &Arc<Cycle>) -> Result<CycleReport, SyncError> {
    cycle.recheck_doubted_workspace().await?;
    ctx.progress.enter(CyclePhase::Intake);
    let intake = cycle.intake().await?;
    ctx.progress.enter(CyclePhase::Reading);
    let read = cycle.read_and_plan().await?;
    ctx.progress.enter(CyclePhase::Settling);
    let settle_started = Instant::now();
    cycle.settle(read, intake).await?;
    cycle
        .phases
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .settle = settle_started.elapsed().as_millis() as u64;
    cycle.record_doubt().await?;
    cycle.report().await
}

impl Cycle {
    /// Reads the custom field definitions and builds the mapper.
    async fn prepare(
        ctx: &SyncContext,
        mode: Mode,
        run_id: String,
    ) -> Result<Arc<Self>, SyncError> {
        let started = Utc::now();
        let defs = ctx.client.custom_fields().await?;
        let (rules, filter_fields) = ctx.settings.scope.fingerprint_inputs();
        let mapper = Mapper::new(&ctx.mapping, &defs)?.fingerprint_also(&rules, &filter_fields);
        let decisions = if ctx.settings.day_one.match_existing.is_on() {
            ctx.ledger.match_decisions().await?
        } else {
            HashMap::new()
        };
        let exports = if ctx.settings.day_one.create_in_crm {
            ctx.ledger.open_exports().await?
        } else {
            HashMap::new()
        };
        let exports_by_record = exports
            .values()
            .filter(|e| e.state != crate::ledger::ExportState::Held)
            .filter_map(|e| Some((e.external_id.clone()?, e.quo_id.clone())))
            .collect();
        let managed = managed_of(&mapper);
        let merge_policy = one_way_computed(&ctx.settings.merge_policy, &mapper);
        Ok(Arc::new(Cycle {
            ctx: ctx.clone(),
            mode,
            run_id,
            mapper,
            managed,
            defs,
            stop: ctx.cancel.child_token(),
            counts: Mutex::new(RunCounts::default()),
            operations: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
            quo_changed: Mutex::new(HashMap::new()),
            quo_deleted: Mutex::new(HashSet::new()),
            found_creates: Mutex::new(HashMap::new()),
            quo_side: AtomicBool::new(false),
            writebacks: Mutex::new(Vec::new()),
            unsettled: Mutex::new(HashSet::new()),
            crm_deletes: Mutex::new(Vec::new()),
            failed_since: Mutex::new(None),
            mass_delete_refused: AtomicBool::new(false),
            refusal: std::sync::Mutex::new(None),
            linked_at_start: tokio::sync::OnceCell::new(),
            deletions_spent: std::sync::atomic::AtomicUsize::new(0),
            missing: Mutex::new(Vec::new()),
            unfound_creates: Mutex::new(Vec::new()),
            quarantined: Mutex::new(HashSet::new()),
            phases: std::sync::Mutex::new(PhaseTimes::default()),
            merge_policy,
            scope: ctx.settings.scope.clone(),
            scope_marks: Mutex::new(Vec::new()),
            scope_deletes: Mutex::new(Vec::new()),
            paused: std::sync::Mutex::new(None),
            held: tokio::sync::OnceCell::new(),
            started,
            workspace: tokio::sync::OnceCell::new(),
            workspace_rechecked: tokio::sync::OnceCell::new(),
            held_by_doubt: std::sync::Mutex::default(),
            deferred: Mutex::new(Vec::new()),
            confirmation: tokio::sync::OnceCell::new(),
            claimed: decisions
                .iter()
                .filter_map(|(id, d)| match d {
                    crate::ledger::MatchDecision::Link(quo_id) => {
                        Some((quo_id.clone(), id.clone()))
                    }
                    _ => None,
                })
                .chain(
                    exports
                        .values()
                        .filter_map(|e| Some((e.quo_id.clone(), e.external_id.clone()?))),
                )
                .collect(),
            decisions,
            exports,
            exports_by_record,
            exports_found: Mutex::new(HashSet::new()),
            matched_contacts: Mutex::new(HashSet::new()),
        }))
    }

    /// What every CRM write of this cycle asks first: this cycle's stop token and the leader's
    /// write fence.
    fn crm_guard(&self) -> crate::source::WriteGuard {
        crate::source::WriteGuard {
            fence: self.ctx.ledger.write_fence(),
            cancel: self.stop.clone(),
        }
    }

    /// The summary, or the failure that stopped every record.
    async fn report(&self) -> Result<CycleReport, SyncError> {
        if let Some(fatal) = self.fatal.lock().await.take() {
            return Err(fatal.into());
        }
        let counts = self.counts.lock().await.clone();
        let operations = std::mem::take(&mut *self.operations.lock().await);
        Ok(CycleReport {
            run_id: self.run_id.clone(),
            counts,
            duration_ms: 0,
            operations,
            interrupted: self.stop.is_cancelled(),
            mass_delete_refused: self
                .mass_delete_refused
                .load(std::sync::atomic::Ordering::Relaxed),
            mass_delete_refusal: *self
                .refusal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            phases_ms: *self
                .phases
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            paused: self
                .paused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        })
    }
}
