//! What a running service is doing, for the terminal of `quo-sync run`: the service publishes
//! its role, its cycles and the webhooks it received into a [`ServiceStatus`]; [`show`] draws
//! one live status line from it (leader or standby, the last cycle's result, the time to the
//! next one, webhooks received) and, for a cycle that changed something, the same lines as
//! `once`. Nothing scrolls while the service is idle: only the status line redraws in place.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::ops::http::ReplicaRole;
use crate::ops::progress::{CycleView, TICK};
use crate::ops::summary::{self, Setting};
use crate::quo::client::ClientStats;
use crate::sync::{CycleProgress, CycleReport};
use crate::telemetry::Terminal;

/// The live state of one `run` process (cheap to clone; all clones share it).
#[derive(Debug, Clone, Default)]
pub struct ServiceStatus(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    role: ReplicaRole,
    progress: Arc<CycleProgress>,
    stats: Mutex<Option<Arc<ClientStats>>>,
    running: AtomicBool,
    started: Mutex<Option<Instant>>,
    cycles: AtomicU64,
    finished: Mutex<Option<Finished>>,
    next_cycle: Mutex<Option<Instant>>,
    holder: Mutex<Option<String>>,
    webhooks: Arc<AtomicU64>,
}

/// How the last cycle ended, with the rows it held back and warned about (taken the moment it
/// ended: the next cycle starts counting at once).
#[derive(Debug, Clone)]
enum Finished {
    Report(Box<CycleReport>, Box<summary::Rows>),
    Failed(String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ServiceStatus {
    /// The replica's role (the service sets it; the status line reads it).
    pub fn role(&self) -> &ReplicaRole {
        &self.0.role
    }

    /// The counters every cycle of this service reports into.
    pub fn progress(&self) -> Arc<CycleProgress> {
        self.0.progress.clone()
    }

    /// Counted by the webhook receiver for each event it stores.
    pub fn webhooks(&self) -> Arc<AtomicU64> {
        self.0.webhooks.clone()
    }

    /// The leader's Quo client counters (for request rates).
    pub fn set_stats(&self, stats: Arc<ClientStats>) {
        *lock(&self.0.stats) = Some(stats);
    }

    /// Standing by behind `holder` (`host pid N`).
    pub fn standing_by(&self, holder: String) {
        *lock(&self.0.holder) = Some(holder);
    }

    /// A cycle starts.
    pub fn cycle_started(&self) {
        *lock(&self.0.started) = Some(Instant::now());
        *lock(&self.0.next_cycle) = None;
        self.0.running.store(true, Ordering::Release);
    }

    /// A cycle ended with `result`.
    pub fn cycle_finished<E: std::fmt::Display>(&self, result: &Result<CycleReport, E>) {
        let notices = crate::telemetry::terminal()
            .map(|t| t.take_notices())
            .unwrap_or_default();
        *lock(&self.0.finished) = Some(match result {
            Ok(report) => Finished::Report(
                Box::new(report.clone()),
                Box::new(summary::Rows {
                    held_back: self.0.progress.held_back(),
                    held_matches: self.0.progress.held_matches(),
                    notices,
                }),
            ),
            Err(e) => Finished::Failed(e.to_string()),
        });
        self.0.running.store(false, Ordering::Release);
        self.0.cycles.fetch_add(1, Ordering::AcqRel);
    }

    /// The next cycle starts in `wait` (unless a webhook or a change wakes it sooner).
    pub fn next_cycle_in(&self, wait: Duration) {
        *lock(&self.0.next_cycle) = Some(Instant::now() + wait);
    }
}

/// The words of the status line at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusWords {
    /// Leading (holding the writer lease).
    pub leader: bool,
    /// Who leads while this one stands by.
    pub holder: Option<String>,
    /// How long the running cycle has run.
    pub running_for: Option<Duration>,
    /// The last cycle: when (`12:04:05`) and how it ended.
    pub last: Option<(String, String)>,
    /// Time to the next cycle.
    pub next_in: Option<Duration>,
    /// Webhook events received since start.
    pub webhooks: u64,
}

/// `leader · last cycle 12:04:05: 23 created · next in 4m 55s · 2 webhooks received`.
pub fn status_text(words: &StatusWords) -> String {
    let mut parts = Vec::new();
    parts.push(match (&words.leader, &words.holder) {
        (true, _) => "leader".to_string(),
        (false, Some(holder)) => format!("standby (leader: {holder})"),
        (false, None) => "standby".to_string(),
    });
    if let Some(running) = words.running_for {
        parts.push(format!("cycle running {}", summary::took(running)));
    } else if let Some((at, outcome)) = &words.last {
        parts.push(format!("last cycle {at}: {outcome}"));
    }
    if let (None, Some(next)) = (words.running_for, words.next_in) {
        let secs = Duration::from_secs(next.as_secs());
        parts.push(format!("next in {}", humantime::format_duration(secs)));
    }
    parts.push(match words.webhooks {
        1 => "1 webhook received".to_string(),
        n => format!("{n} webhooks received"),
    });
    parts.join(" · ")
}

/// How a cycle ended, in a few words (`23 created, 4 held back`, `no changes`).
fn outcome_words(finished: &Finished) -> String {
    match finished {
        Finished::Failed(e) => format!("failed ({})", crate::telemetry::shorten(e)),
        Finished::Report(report, ..) => {
            if let Some(pause) = &report.paused {
                return format!(
                    "paused by {} {}",
                    pause.by,
                    pause
                        .until
                        .as_ref()
                        .map_or("until resumed".to_string(), |u| format!("until {u}"))
                );
            }
            let c = &report.counts;
            let mut parts: Vec<String> = [
                (c.created, "created"),
                (c.adopted, "adopted"),
                (c.updated, "updated"),
                (c.deleted, "deleted"),
                (c.written_to_crm, "to the CRM"),
            ]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
            if parts.is_empty() {
                parts.push("no changes".to_string());
            }
            if c.held > 0 {
                parts.push(format!("{} held", c.held));
            }
            if c.quarantined > 0 {
                parts.push(format!("{} held back", c.quarantined));
            }
            parts.join(", ")
        }
    }
}

/// Draws `status` on `terminal` until `stop` fires.
pub fn show(
    terminal: Arc<Terminal>,
    status: ServiceStatus,
    setting: Setting,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let line = terminal.add(
            indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            ),
        );
        let mut seen_cycles = 0u64;
        let mut view: Option<CycleView> = None;
        // Rows already reported held back or warned about: the same again is no news (a row's
        // warning may come in one cycle and not the next, as the read takes a faster path).
        let mut reported: std::collections::HashSet<String> = Default::default();
        let mut last: Option<(String, String)> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.cancelled() => break,
            }
            let inner = &status.0;
            if inner.running.load(Ordering::Acquire) && view.is_none() {
                let stats = lock(&inner.stats).clone().unwrap_or_default();
                view = Some(
                    CycleView::on(
                        terminal.clone(),
                        inner.progress.clone(),
                        stats,
                        setting.limit_per_s,
                    )
                    .deferred(),
                );
            }
            if let Some(v) = view.as_mut() {
                v.tick();
            }
            let cycles = inner.cycles.load(Ordering::Acquire);
            if cycles != seen_cycles {
                seen_cycles = cycles;
                let (writes, read_line) = view.take().map(CycleView::finish).unwrap_or_default();
                let finished = lock(&inner.finished).clone();
                if let Some(finished) = finished {
                    last = Some((
                        chrono::Local::now().format("%H:%M:%S").to_string(),
                        outcome_words(&finished),
                    ));
                    if let Finished::Report(report, rows_of) = finished {
                        let rows: Vec<String> = rows_of
                            .held_back
                            .iter()
                            .chain(rows_of.held_matches.iter())
                            .map(|h| format!("{h:?}"))
                            .chain(rows_of.notices.iter().map(|n| format!("{n:?}")))
                            .collect();
                        let c = &report.counts;
                        let news = c.created + c.adopted + c.updated + c.deleted + c.written_to_crm
                            > 0
                            || rows.iter().any(|r| !reported.contains(r))
                            || report.interrupted
                            || report.mass_delete_refused;
                        if news {
                            for text in read_line.into_iter().chain(summary::outcome_lines(
                                &terminal, &report, &rows_of, writes, setting,
                            )) {
                                terminal.line(&text);
                            }
                        }
                        reported.extend(rows);
                    }
                }
            }
            let words = StatusWords {
                leader: inner.role.leader_epoch().is_some(),
                holder: lock(&inner.holder).clone(),
                running_for: inner
                    .running
                    .load(Ordering::Acquire)
                    .then(|| lock(&inner.started).map(|t| t.elapsed()))
                    .flatten(),
                last: last.clone(),
                next_in: lock(&inner.next_cycle)
                    .map(|t| t.saturating_duration_since(Instant::now())),
                webhooks: inner.webhooks.load(Ordering::Relaxed),
            };
            line.set_message(status_text(&words));
            line.tick();
        }
        if let Some(v) = view.take() {
            v.finish();
        }
        line.finish_and_clear();
        terminal.remove(&line);
        terminal.clear();
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_says_role_last_result_next_cycle_and_webhooks() {
        let words = StatusWords {
            leader: true,
            holder: None,
            running_for: None,
            last: Some(("12:04:05".into(), "23 created, 4 held back".into())),
            next_in: Some(Duration::from_millis(295_400)),
            webhooks: 2,
        };
        assert_eq!(
            status_text(&words),
            "leader · last cycle 12:04:05: 23 created, 4 held back · next in 4m 55s · 2 webhooks received"
        );
        let standby = StatusWords {
            holder: Some("vm pid 42".into()),
            webhooks: 1,
            ..StatusWords::default()
        };
        assert_eq!(
            status_text(&standby),
            "standby (leader: vm pid 42) · 1 webhook received"
        );
        let running = StatusWords {
            leader: true,
            running_for: Some(Duration::from_millis(2500)),
            next_in: Some(Duration::from_secs(3)),
            ..StatusWords::default()
        };
        assert_eq!(
            status_text(&running),
            "leader · cycle running 2.5s · 0 webhooks received"
        );
    }
}
