//! The poller: reads `GET /calls` and `GET /messages` (2026-03-30) every
//! `activity.poll_interval` from a durable high-water mark, so every activity a lost delivery
//! left out still lands, and re-reads the calls of the last `activity.enrichment_window` with
//! `include=summary,voicemail` until they are final, so a lost `call.summary.completed` still
//! lands too. On first start it reads `activity.backfill` back.
//!
//! It reads behind the contact writes: its requests take the key's background share while
//! others wait. What it reads goes into the activity inbox as views (`poll.*`), under ids that
//! repeat when nothing changed, so re-reading an unchanged call stores nothing and costs the
//! pipeline nothing.
//!
//! Each list starts ten minutes before the previous complete listing began (lists may lag
//! writes); the mark only moves once a listing completed. The re-reads choose the cheaper way: one
//! `GET /calls/{id}` per unfinished call, or listing the window from the oldest one when that
//! takes fewer requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::model::Activity;
use super::observe::{rest_call, rest_message, rest_transcript};
use crate::ledger::{Ledger, LedgerError, NewActivityEvent};
use crate::quo::client::QuoError;
use crate::quo::dated::{CreatedRange, DatedClient, Include, MAX_LIMIT};
use crate::quo::listing::PageTokens;

/// Meta key: when the last complete listing of calls began.
pub const CALLS_MARK: &str = "activity.poll.calls_since";
/// Meta key: when the last complete listing of messages began.
pub const MESSAGES_MARK: &str = "activity.poll.messages_since";
/// How far before its mark each listing starts.
const OVERLAP: chrono::Duration = chrono::Duration::minutes(10);
/// How long the workspace's numbers are trusted.
const NUMBERS_TTL: Duration = Duration::from_secs(3600);

/// Why a poll stopped.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Quo failed.
    #[error(transparent)]
    Quo(#[from] QuoError),
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    /// List pages read.
    pub pages: u64,
    /// Single reads (`GET /calls/{id}`, `/messages/{id}`, transcripts).
    pub reads: u64,
    /// Views stored that were new or changed.
    pub stored: u64,
}

/// Poller settings, from `[activity]`.
#[derive(Debug, Clone)]
pub struct PollSettings {
    /// Log calls (or voicemails).
    pub calls: bool,
    /// Log texts.
    pub messages: bool,
    /// Keep content (transcripts are read too).
    pub full: bool,
    /// `activity.enrichment_window`.
    pub window: Duration,
    /// `activity.backfill`.
    pub backfill: Duration,
}

/// Where a listing stands.
#[derive(Default)]
struct Cursor {
    tokens: PageTokens,
    after: Option<String>,
    done: bool,
}

/// The poller.
pub struct Poller {
    ledger: Ledger,
    dated: DatedClient,
    settings: PollSettings,
    wake: Arc<Notify>,
    numbers: tokio::sync::Mutex<(Vec<String>, Option<Instant>)>,
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Poller {
    /// A poller reading with `dated` (pass its background clone) and waking `wake`.
    pub fn new(
        ledger: Ledger,
        dated: DatedClient,
        settings: PollSettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            ledger,
            dated,
            settings,
            wake,
            numbers: tokio::sync::Mutex::new((Vec::new(), None)),
        }
    }

    /// Polls every `every` until `cancel`.
    pub async fn run(self, every: Duration, cancel: CancellationToken) {
        loop {
            match self.poll().await {
                Ok(report) if report.stored > 0 => {
                    info!(
                        event = "activity_poll",
                        pages = report.pages,
                        reads = report.reads,
                        stored = report.stored,
                        "activity poll found what webhooks had not brought"
                    );
                }
                Ok(_) => {}
                Err(PollError::Quo(e)) if e.is_fatal() => {
                    warn!(event = "activity_poll_stopped", error = %e, "activity poller stopped");
                    return;
                }
                Err(PollError::Ledger(e)) if e.is_fenced() => return,
                Err(e) => {
                    warn!(event = "activity_poll_failed", error = %e, "activity poll failed; the mark did not move, retrying next time")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// The workspace's own numbers (to tell participants apart), cached an hour.
    async fn workspace_numbers(&self) -> Vec<String> {
        let mut cache = self.numbers.lock().await;
        if cache.1.is_none_or(|at| at.elapsed() >= NUMBERS_TTL) {
            match self.dated.phone_numbers().await {
                Ok(numbers) => {
                    cache.0 = numbers.into_iter().filter_map(|n| n.number).collect();
                    cache.1 = Some(Instant::now());
                }
                Err(e) => {
                    warn!(event = "activity_numbers_unreadable", error = %e, "could not read the workspace's numbers; telling participants apart by actor only")
                }
            }
        }
        cache.0.clone()
    }

    /// Stores a view under an id that repeats while the view does not change.
    async fn store(
        &self,
        kind: &str,
        view: &Activity,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        let observation = serde_json::to_string(view).unwrap_or_default();
        let digest: String = Sha256::digest(observation.as_bytes())
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect();
        let event_id = format!("poll:{}:{digest}", view.id);
        let stored = self
            .ledger
            .activity_inbox_put(NewActivityEvent {
                event_id: &event_id,
                delivery_id: None,
                event_type: kind,
                activity_id: &view.id,
                observation: &observation,
            })
            .await?;
        report.stored += u64::from(stored);
        Ok(())
    }

    /// One poll: list new calls and messages, re-read the unfinished ones.
    pub async fn poll(&self) -> Result<PollReport, PollError> {
        let mut report = PollReport::default();
        let workspace = if self.settings.calls {
            self.workspace_numbers().await
        } else {
            Vec::new()
        };
        let mut listed = std::collections::HashSet::new();
        if self.settings.calls {
            self.list(CALLS_MARK, true, &workspace, &mut listed, &mut report)
                .await?;
            self.reread_calls(&workspace, &listed, &mut report).await?;
        }
        if self.settings.messages {
            self.list(MESSAGES_MARK, false, &workspace, &mut listed, &mut report)
                .await?;
            self.reread_messages(&listed, &mut report).await?;
        }
        if report.stored > 0 {
            self.wake.notify_one();
        }
        Ok(report)
    }

    /// Where a listing starts: the mark less the overlap, or, on first start, the backfill.
    async fn start_of(&self, mark: &str) -> Result<(DateTime<Utc>, bool), PollError> {
        Ok(match self.ledger.meta_time(mark).await? {
            Some(seen) => (seen - OVERLAP, false),
            None => {
                let back = chrono::Duration::from_std(self.settings.backfill).unwrap_or_default();
                (Utc::now() - back, true)
            }
        })
    }

    /// Lists every call (or message) created since the mark, page by page.
    async fn list(
        &self,
        mark: &str,
        calls: bool,
        workspace: &[String],
        listed: &mut std::collections::HashSet<String>,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        let (since, first) = self.start_of(mark).await?;
        let started = Utc::now();
        if first {
            info!(event = "activity_backfill", since = %stamp(since), kind = if calls { "calls" } else { "messages" }, "first activity poll: reading back to activity.backfill");
        }
        let range = CreatedRange {
            since: Some(since),
            until: None,
        };
        let mut cursor = Cursor::default();
        while let Some(items) = self.next_page(calls, range, &mut cursor, report).await? {
            for item in &items {
                let view = if calls {
                    rest_call(item, workspace, self.settings.full)
                } else {
                    rest_message(item, self.settings.full)
                };
                let Some(view) = view else {
                    warn!(
                        event = "activity_item_unreadable",
                        "a listed item has no id; skipped"
                    );
                    continue;
                };
                if view.started_at.is_some_and(|t| t < since) {
                    continue;
                }
                listed.insert(view.id.clone());
                self.store(
                    if calls { "poll.call" } else { "poll.message" },
                    &view,
                    report,
                )
                .await?;
            }
        }
        // A complete listing has seen everything created before it began: the mark moves there
        // (the next listing starts the overlap earlier, for items a lagging list left out).
        self.ledger.set_meta(mark, &stamp(started)).await?;
        Ok(())
    }

    /// The next page of calls (`calls`) or messages created within `range`; `None` after the
    /// last. A cursor answered twice is an error: a listing that cannot finish proves nothing.
    async fn next_page(
        &self,
        calls: bool,
        range: CreatedRange,
        cursor: &mut Cursor,
        report: &mut PollReport,
    ) -> Result<Option<Vec<Value>>, PollError> {
        if cursor.done {
            return Ok(None);
        }
        let page = if calls {
            self.dated
                .list_calls(range, Include::ALL, cursor.after.as_deref())
                .await?
        } else {
            self.dated
                .list_messages(range, cursor.after.as_deref())
                .await?
        };
        report.pages += 1;
        match page.next_cursor {
            Some(next) => {
                let route = if calls { "GET /calls" } else { "GET /messages" };
                cursor.tokens.next(route, &next)?;
                cursor.after = Some(next);
            }
            None => cursor.done = true,
        }
        Ok(Some(page.data))
    }

    /// Re-reads unfinished calls of the enrichment window that this poll did not list.
    async fn reread_calls(
        &self,
        workspace: &[String],
        listed: &std::collections::HashSet<String>,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        let window_start =
            Utc::now() - chrono::Duration::from_std(self.settings.window).unwrap_or_default();
        let unfinished = self
            .ledger
            .activities_unfinal("call", &stamp(window_start), 10_000)
            .await?;
        let todo: Vec<_> = unfinished
            .into_iter()
            .filter(|r| !listed.contains(&r.activity_id))
            .collect();
        let Some(oldest) = todo.first().and_then(|r| parse(&r.occurred_at)) else {
            return Ok(());
        };
        let span = self.ledger.activities_since(&stamp(oldest)).await?;
        let pages = (span as u64).div_ceil(u64::from(MAX_LIMIT)).max(1);
        if (todo.len() as u64) > pages {
            // Cheaper to list the window from the oldest unfinished call.
            let range = CreatedRange {
                since: Some(oldest),
                until: None,
            };
            let mut cursor = Cursor::default();
            while let Some(items) = self.next_page(true, range, &mut cursor, report).await? {
                for item in &items {
                    if let Some(view) = rest_call(item, workspace, self.settings.full) {
                        self.enrich(view, report).await?;
                    }
                }
            }
            return Ok(());
        }
        for row in todo {
            report.reads += 1;
            let fresh: Option<Value> = self.dated.get_call(&row.activity_id, Include::ALL).await?;
            if let Some(view) = fresh
                .as_ref()
                .and_then(|c| rest_call(c, workspace, self.settings.full))
            {
                self.enrich(view, report).await?;
            }
        }
        Ok(())
    }

    /// Stores a re-read call, with its transcript once its summary is done (full content).
    async fn enrich(&self, view: Activity, report: &mut PollReport) -> Result<(), PollError> {
        if self.settings.full
            && view.summary.as_ref().is_some_and(|s| s.done)
            && view.status.as_deref() == Some("completed")
        {
            report.reads += 1;
            let items = self.dated.call_transcripts(&view.id).await?;
            if let Some(transcript) = rest_transcript(&view.id, &items) {
                self.store("poll.transcript", &transcript, report).await?;
            }
        }
        self.store("poll.call", &view, report).await
    }

    /// Re-reads messages of the window still waiting for a delivery status.
    async fn reread_messages(
        &self,
        listed: &std::collections::HashSet<String>,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        let window_start =
            Utc::now() - chrono::Duration::from_std(self.settings.window).unwrap_or_default();
        let unfinished = self
            .ledger
            .activities_unfinal("message", &stamp(window_start), 1_000)
            .await?;
        for row in unfinished
            .into_iter()
            .filter(|r| !listed.contains(&r.activity_id))
        {
            report.reads += 1;
            if let Some(view) = self
                .dated
                .get_message(&row.activity_id)
                .await?
                .as_ref()
                .and_then(|m| rest_message(m, self.settings.full))
            {
                self.store("poll.message", &view, report).await?;
            }
        }
        Ok(())
    }
}
