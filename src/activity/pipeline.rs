//! The path of an activity from the inbox to the CRM, exactly once.
//!
//! One pass: (1) **absorb**: pending deliveries and poll views are merged into each activity's
//! facts, linked to a record (or held/skipped), and committed together with the inbox rows they
//! came from, in one transaction; (2) **write**: what is due goes to the sink.
//!
//! Exactly once rests on three rules:
//! - the intent (`writing`) is committed before a create is sent;
//! - an activity found `writing` (a crash, a lost answer, a 5xx) is looked up in the CRM before
//!   any second create: found, it is adopted; not found, it is created again. A CRM without a
//!   lookup cannot tell, so the create is sent again and `possible_duplicates` counts it: at
//!   most one duplicate per interruption;
//! - later views (a summary, a transcript, a delivery receipt) change the facts, hence the
//!   document's digest, and an activity whose CRM copy has another digest is *updated* under its
//!   CRM id, never created again.
//!
//! Only the leader runs passes, on its fenced ledger; one task does every pass, so no two
//! passes race on an activity. Every CRM write is admitted by the leader's write fence, and
//! while syncing is paused (`quo-sync pause`) nothing is written: deliveries are still stored
//! and absorbed, and written after `quo-sync resume`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::{ActivityConfig, KindName, Unmatched};
use super::linking::{Link, PhoneIndex};
use super::model::{Activity, ActivityDocument, Family};
use super::owners::People;
use super::sinks::{Found, Outcome, Outgoing, Sink};
use crate::ledger::{ActivityRow, ActivityState, Ledger, LedgerError};
use crate::source::WriteGuard;

/// Deliveries and activities handled per step.
const BATCH: i64 = 500;
/// Wait between an ambiguous create and the lookup that settles it (lists and search indexes
/// may lag the write).
const LOOKUP_LAG: Duration = Duration::from_millis(500);
/// How often a pass runs without a wake-up (deliveries stored by a standby, retries due).
const TICK: Duration = Duration::from_millis(250);

/// What activity logging decides with, from `[activity]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Log calls.
    pub calls: bool,
    /// Log texts.
    pub messages: bool,
    /// Log voicemails.
    pub voicemails: bool,
    /// Keep content.
    pub full: bool,
    /// `activity.unmatched`.
    pub unmatched: Unmatched,
    /// How long applied deliveries are kept (`reverse.inbox_retention`).
    pub retention: Duration,
    /// How long the phone history keeps an ended holding (`linking::history_horizon`).
    pub history: Duration,
}

impl Settings {
    /// From `[activity]`.
    pub fn from_config(config: &ActivityConfig, retention: Duration) -> Self {
        Self {
            retention,
            history: super::linking::history_horizon(config.enrichment_window.0, config.backfill.0),
            calls: config.logs(KindName::Calls),
            messages: config.logs(KindName::Messages),
            voicemails: config.logs(KindName::Voicemails),
            full: config.full_content(),
            unmatched: config.unmatched,
        }
    }

    /// Whether this activity is one the configuration logs.
    fn wants(&self, a: &Activity) -> bool {
        match a.family {
            Family::Message => self.messages,
            Family::Call => {
                self.calls || (self.voicemails && (a.has_voicemail || a.voicemail.is_some()))
            }
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Deliveries and poll views applied.
    pub absorbed: usize,
    /// Activities created in the CRM.
    pub created: usize,
    /// CRM copies brought up to date.
    pub updated: usize,
    /// Interrupted creates settled by a lookup (found and adopted).
    pub adopted: usize,
    /// Creates sent again after an interruption a lookup could not settle.
    pub resent_blind: usize,
    /// Writes the CRM refused (retried later).
    pub refused: usize,
    /// Writes whose outcome is unknown (settled next pass).
    pub ambiguous: usize,
    /// Held activities linked after the ledger learned their record.
    pub relinked: usize,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The ledger failed (or this process lost the writer lease).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn backoff(attempts: i64) -> Duration {
    let exp = 2u64.saturating_pow(attempts.clamp(0, 10) as u32);
    Duration::from_secs(5)
        .saturating_mul(exp as u32)
        .min(Duration::from_secs(600))
}

fn facts_of(row: &ActivityRow) -> Option<Activity> {
    serde_json::from_str(&row.facts).ok()
}

/// The activity pipeline of one leader term.
pub struct Pipeline {
    ledger: Ledger,
    sink: Sink,
    people: People,
    index: tokio::sync::Mutex<PhoneIndex>,
    settings: Settings,
    /// What every CRM write asks first: the leader's fence and the shutdown token.
    guard: WriteGuard,
    pruned_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Whether the last pass found syncing paused (logged once per pause).
    paused: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("sink", &self.sink.describe())
            .finish()
    }
}

impl Pipeline {
    /// A pipeline writing to `sink`, each write admitted by `guard`.
    pub fn new(
        ledger: Ledger,
        (sink, guard): (Sink, WriteGuard),
        people: People,
        settings: Settings,
    ) -> Self {
        Self {
            ledger,
            sink,
            people,
            index: tokio::sync::Mutex::new(PhoneIndex::keeping(settings.history)),
            settings,
            guard,
            pruned_at: std::sync::Mutex::new(None),
            paused: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether syncing is paused now (logged when that changes): then nothing is written.
    async fn paused(&self) -> Result<bool, PipelineError> {
        use std::sync::atomic::Ordering;
        let pause = self.ledger.pause_state().await?;
        let now = pause.is_some();
        if self.paused.swap(now, Ordering::Relaxed) != now {
            match pause {
                Some(pause) => {
                    info!(event = "activity_paused", paused_by = %pause.by, "syncing is paused: calls and texts are stored and written to the CRM after `quo-sync resume`")
                }
                None => info!(
                    event = "activity_resumed",
                    "syncing resumed: stored calls and texts are written"
                ),
            }
        }
        Ok(now)
    }

    /// The sink.
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Runs passes until `cancel`: at once when woken, else every quarter second.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, cancel: CancellationToken) {
        info!(event = "activity_started", sink = %self.sink.describe(), "activity logging started");
        self.people.warm().await;
        loop {
            match self.pass().await {
                Ok(report) if report != PassReport::default() => {
                    debug!(event = "activity_pass", ?report, "activity pass");
                }
                Ok(_) => {}
                Err(PipelineError::Ledger(e)) if e.is_fenced() => {
                    warn!(
                        event = "activity_fenced",
                        "the writer lease was lost; activity logging stops until this replica leads again"
                    );
                    return;
                }
                Err(e) => {
                    warn!(event = "activity_pass_failed", error = %e, "activity pass failed; retrying")
                }
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// One pass: absorb everything pending, then write everything due.
    pub async fn pass(&self) -> Result<PassReport, PipelineError> {
        let mut report = PassReport::default();
        let changed = self.index.lock().await.refresh(&self.ledger).await?;
        if changed {
            self.relink_held(&mut report).await?;
        }
        while self.absorb(&mut report).await? == BATCH as usize {}
        for _ in 0..20 {
            if self.paused().await? {
                break;
            }
            if self.write_due(&mut report).await? < BATCH as usize {
                break;
            }
        }
        super::status::record_pass(&report);
        self.prune().await?;
        Ok(report)
    }

    /// Drops applied deliveries older than the retention, at most once an hour.
    async fn prune(&self) -> Result<(), PipelineError> {
        let due = {
            let mut at = self.pruned_at.lock().unwrap_or_else(|e| e.into_inner());
            let due = at.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
            if due {
                *at = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            let keep = chrono::Duration::from_std(self.settings.retention).unwrap_or_default();
            let pruned = self
                .ledger
                .activity_inbox_prune(&stamp(now() - keep))
                .await?;
            if pruned > 0 {
                debug!(
                    event = "activity_inbox_pruned",
                    pruned, "applied activity deliveries pruned"
                );
            }
        }
        Ok(())
    }

    /// The document the CRM should hold for `facts`, linked to `record_id`.
    async fn document(&self, facts: &Activity, record_id: &str) -> ActivityDocument {
        let people = self.people.attribution(facts.user_id.as_deref()).await;
        ActivityDocument::build(
            facts,
            record_id,
            &people,
            self.settings.voicemails,
            self.settings.full,
        )
    }

    /// Links, classifies and digests one activity after its facts changed.
    async fn settle(&self, row: &mut ActivityRow, facts: &Activity, index: &PhoneIndex) {
        row.family = facts.family.as_str().to_string();
        if let Some(at) = facts.started_at {
            row.occurred_at = stamp(at);
        }
        row.facts = serde_json::to_string(facts).unwrap_or_default();
        row.is_final = facts.is_final();
        let state = row.state();
        let placed = matches!(
            state,
            ActivityState::Writing | ActivityState::Written | ActivityState::Pending
        ) && row.record_id.is_some();
        if !placed && state != ActivityState::Skipped {
            if !self.settings.wants(facts) {
                row.state = Some(ActivityState::Filtered);
                row.reason = Some(format!(
                    "activity.kinds does not log {}s",
                    facts.kind(self.settings.voicemails).as_str()
                ));
                return;
            }
            let link = index.link(facts);
            row.link = Some(link.label().to_string());
            row.reason = link.reason(facts);
            match link {
                Link::Record { external_id, .. } => {
                    row.record_id = Some(external_id);
                    row.state = Some(ActivityState::Pending);
                }
                _ => {
                    row.state = Some(match self.settings.unmatched {
                        Unmatched::Hold => ActivityState::Held,
                        Unmatched::Skip => ActivityState::Skipped,
                    });
                    return;
                }
            }
        }
        let Some(record_id) = row.record_id.clone() else {
            return;
        };
        let digest = self.document(facts, &record_id).await.digest();
        if row.state() == ActivityState::Written
            && row.written_digest.as_deref() != Some(digest.as_str())
        {
            row.state = Some(ActivityState::Pending);
            row.next_attempt_at = None;
        }
        row.wanted_digest = Some(digest);
    }

    /// Merges pending deliveries and poll views into their activities; returns how many.
    async fn absorb(&self, report: &mut PassReport) -> Result<usize, PipelineError> {
        let events = self.ledger.activity_inbox_pending(BATCH).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let mut order: Vec<String> = Vec::new();
        let mut views: HashMap<String, Vec<(Activity, Option<String>)>> = HashMap::new();
        for event in &events {
            let Ok(view) = serde_json::from_str::<Activity>(&event.observation) else {
                warn!(event = "activity_event_unreadable", event_id = %event.event_id, "a stored activity event could not be read; skipped");
                continue;
            };
            let delivered =
                (!event.event_type.starts_with("poll.")).then(|| event.received_at.clone());
            if !views.contains_key(&event.activity_id) {
                order.push(event.activity_id.clone());
            }
            views
                .entry(event.activity_id.clone())
                .or_default()
                .push((view, delivered));
        }
        let mut existing: HashMap<String, ActivityRow> = self
            .ledger
            .activity_rows(&order)
            .await?
            .into_iter()
            .map(|r| (r.activity_id.clone(), r))
            .collect();
        let index = self.index.lock().await;
        let mut rows = Vec::with_capacity(order.len());
        for id in &order {
            let list = &views[id];
            let mut row = existing.remove(id).unwrap_or_else(|| ActivityRow {
                activity_id: id.clone(),
                occurred_at: stamp(now()),
                first_seen_at: stamp(now()),
                state: Some(ActivityState::Pending),
                ..ActivityRow::default()
            });
            let mut facts = facts_of(&row).unwrap_or_else(|| Activity::new(id, list[0].0.family));
            let mut changed = row.facts.is_empty();
            for (view, delivered) in list {
                changed |= facts.absorb(view);
                if let Some(at) = delivered
                    && row.delivered_at.as_deref().is_none_or(|d| at.as_str() < d)
                {
                    row.delivered_at = Some(at.clone());
                }
            }
            facts.keep_content(self.settings.full);
            if changed || row.state() != ActivityState::Written {
                self.settle(&mut row, &facts, &index).await;
            }
            rows.push(row);
        }
        drop(index);
        let applied: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
        self.ledger.activity_commit(&rows, &applied).await?;
        report.absorbed += events.len();
        Ok(events.len())
    }

    /// Links held activities the ledger now has a record for.
    async fn relink_held(&self, report: &mut PassReport) -> Result<(), PipelineError> {
        let held = self
            .ledger
            .activities_in_state(ActivityState::Held, BATCH * 4)
            .await?;
        if held.is_empty() {
            return Ok(());
        }
        let index = self.index.lock().await;
        let mut rows = Vec::new();
        for mut row in held {
            let Some(facts) = facts_of(&row) else {
                continue;
            };
            if let Link::Record { .. } = index.link(&facts) {
                self.settle(&mut row, &facts, &index).await;
                report.relinked += 1;
                rows.push(row);
            }
        }
        drop(index);
        self.ledger.activity_commit(&rows, &[]).await?;
        Ok(())
    }

    /// Writes what is due; returns how many rows it looked at.
    async fn write_due(&self, report: &mut PassReport) -> Result<usize, PipelineError> {
        let due = self.ledger.activities_due(&stamp(now()), BATCH).await?;
        let seen = due.len();
        if due.is_empty() {
            return Ok(0);
        }
        let mut creates: Vec<ActivityRow> = Vec::new();
        let mut updates: Vec<ActivityRow> = Vec::new();
        let mut done: Vec<ActivityRow> = Vec::new();
        for mut row in due {
            if row.record_id.is_none() {
                continue;
            }
            match (row.state(), &row.crm_id) {
                (ActivityState::Writing, _) => {
                    if self.recover(&mut row, report).await {
                        creates.push(row);
                    } else {
                        done.push(row);
                    }
                }
                (_, None) => creates.push(row),
                (_, Some(_)) => updates.push(row),
            }
        }
        // The intent, committed before any create is sent.
        for row in &mut creates {
            row.state = Some(ActivityState::Writing);
            row.next_attempt_at = None;
        }
        self.ledger.activity_commit(&creates, &[]).await?;
        self.ledger.activity_commit(&done, &[]).await?;
        let mut settled = self.send(creates, true, report).await;
        settled.extend(self.send(updates, false, report).await);
        self.ledger.activity_commit(&settled, &[]).await?;
        Ok(seen)
    }

    /// Settles an activity left `writing`; returns whether it must be created (again).
    async fn recover(&self, row: &mut ActivityRow, report: &mut PassReport) -> bool {
        if !self.sink.has_lookup() {
            row.possible_duplicates += 1;
            report.resent_blind += 1;
            metrics::counter!("quo_sync_activity_possible_duplicates_total").increment(1);
            warn!(event = "activity_resent_without_lookup", activity_id = %row.activity_id, "an interrupted create is sent again; the CRM has no lookup, so it may now hold one duplicate");
            return true;
        }
        match self.sink.lookup(&row.activity_id).await {
            Found::Yes(crm_id) => {
                info!(event = "activity_adopted", activity_id = %row.activity_id, crm_id = %crm_id, "an interrupted create had landed; adopted, not sent again");
                report.adopted += 1;
                metrics::counter!("quo_sync_activity_adopted_total").increment(1);
                row.crm_link = self.sink.link(&crm_id);
                row.crm_id = Some(crm_id);
                row.written_at.get_or_insert_with(|| stamp(now()));
                row.last_error = None;
                if self.sink.can_update() {
                    // What landed may be older than the facts: bring it up to date.
                    row.written_digest = None;
                    row.state = Some(ActivityState::Pending);
                } else {
                    row.written_digest = row.wanted_digest.clone();
                    row.state = Some(ActivityState::Written);
                }
                row.next_attempt_at = None;
                false
            }
            Found::No => true,
            Found::Unknown(reason) => {
                row.attempts += 1;
                row.last_error = Some(format!("lookup: {reason}"));
                row.next_attempt_at = Some(stamp(now() + backoff(row.attempts)));
                warn!(event = "activity_lookup_failed", activity_id = %row.activity_id, reason = %reason, "could not tell whether an interrupted create landed; asking again later");
                false
            }
        }
    }

    /// Sends creates (`create`) or updates and records each outcome on its row.
    async fn send(
        &self,
        mut rows: Vec<ActivityRow>,
        create: bool,
        report: &mut PassReport,
    ) -> Vec<ActivityRow> {
        if rows.is_empty() {
            return rows;
        }
        let mut items = Vec::with_capacity(rows.len());
        let mut digests = Vec::with_capacity(rows.len());
        for row in &rows {
            let facts =
                facts_of(row).unwrap_or_else(|| Activity::new(&row.activity_id, Family::Call));
            let doc = self
                .document(&facts, row.record_id.as_deref().unwrap_or_default())
                .await;
            digests.push(doc.digest());
            items.push(Outgoing {
                activity_id: row.activity_id.clone(),
                crm_id: row.crm_id.clone(),
                doc,
            });
        }
        let outcomes = if create {
            self.sink.create(&items, &self.guard).await
        } else {
            self.sink.update(&items, &self.guard).await
        };
        let at = now();
        for ((row, outcome), digest) in rows.iter_mut().zip(outcomes).zip(digests) {
            match outcome {
                Outcome::Written { crm_id } => {
                    if create {
                        report.created += 1;
                        super::status::record_delay(row.delivered_at.as_deref(), at);
                    } else {
                        report.updated += 1;
                    }
                    metrics::counter!("quo_sync_activity_writes_total", "op" => if create { "create" } else { "update" }).increment(1);
                    row.crm_link = self.sink.link(&crm_id);
                    row.crm_id = Some(crm_id);
                    row.state = Some(if row.wanted_digest.as_deref() == Some(digest.as_str()) {
                        ActivityState::Written
                    } else {
                        ActivityState::Pending
                    });
                    row.written_digest = Some(digest);
                    row.written_at.get_or_insert_with(|| stamp(at));
                    row.attempts = 0;
                    row.last_error = None;
                    row.next_attempt_at = None;
                }
                Outcome::Refused(reason) => {
                    report.refused += 1;
                    row.state = Some(ActivityState::Pending);
                    row.attempts += 1;
                    row.next_attempt_at = Some(stamp(at + backoff(row.attempts)));
                    warn!(event = "activity_write_refused", activity_id = %row.activity_id, record_id = ?row.record_id, reason = %reason, "the CRM refused an activity; retried later");
                    row.last_error = Some(reason);
                }
                Outcome::Ambiguous(reason) => {
                    report.ambiguous += 1;
                    row.state = Some(ActivityState::Writing);
                    row.attempts += 1;
                    row.next_attempt_at = Some(stamp(at + LOOKUP_LAG));
                    warn!(event = "activity_write_unknown", activity_id = %row.activity_id, reason = %reason, "an activity create's outcome is unknown; settled by lookup before any second create");
                    row.last_error = Some(reason);
                }
                Outcome::NotSent(reason) => {
                    // Nothing left this process: no lookup needed, no backoff.
                    row.state = Some(ActivityState::Pending);
                    row.next_attempt_at = None;
                    debug!(event = "activity_write_not_sent", activity_id = %row.activity_id, reason = %reason, "an activity write was not sent");
                }
                Outcome::Missing => {
                    row.crm_id = None;
                    row.written_digest = None;
                    row.state = Some(ActivityState::Pending);
                    warn!(event = "activity_copy_missing", activity_id = %row.activity_id, "the CRM copy of an activity is gone; it is made again");
                }
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(30), Duration::from_secs(600));
    }
}
