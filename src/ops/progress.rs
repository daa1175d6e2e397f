//! Progress on long work that tells the truth. On the human view's terminal a cycle shows a line
//! when its read is done and, for writes that last more than a second, a bar that counts the
//! writes Quo confirmed (never records read) with their rate against Quo's limit and an ETA
//! from that rate; a scan shows the pages listed. Elsewhere (JSON logs, services) a plain
//! `progress` log line every 10 s.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::quo::client::ClientStats;
use crate::sync::{CyclePhase, CycleProgress, ProgressSnapshot, SyncContext};
use crate::telemetry::Terminal;

/// Work shorter than this gets no bar.
const BAR_AFTER: Duration = Duration::from_secs(1);
/// How often the view looks at the counters.
pub const TICK: Duration = Duration::from_millis(100);
/// The window the rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// A spinner on the human view's terminal; nothing otherwise.
pub fn progress_bar(message: &'static str) -> Option<indicatif::ProgressBar> {
    let terminal = crate::telemetry::terminal()?;
    let bar = terminal.add(indicatif::ProgressBar::new_spinner());
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}

/// A rate measured over the last few seconds of samples.
#[derive(Debug, Default)]
pub struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    /// Adds a sample of a growing count; returns the rate per second over the window, once the
    /// window holds at least half a second.
    pub fn sample(&mut self, at: Instant, count: u64) -> Option<f64> {
        self.samples.push_back((at, count));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, c0) = *self.samples.front()?;
        let span = at.duration_since(t0).as_secs_f64();
        (span >= 0.5).then(|| count.saturating_sub(c0) as f64 / span)
    }
}

/// The bar's words after `pos/len`: `9.8/s of Quo's 10/s  eta 2s`. Before a rate is known the
/// ETA comes from Quo's limit, which no cycle can beat.
pub fn rate_and_eta(rate: Option<f64>, remaining: u64, limit_per_s: u32) -> String {
    let limit = f64::from(limit_per_s.max(1));
    let basis = rate.filter(|r| *r > 0.05).unwrap_or(limit).min(limit);
    let eta = Duration::from_secs_f64((remaining as f64 / basis).ceil());
    let shown = match rate {
        Some(r) => format!("{r:.1}/s"),
        None => "…/s".to_string(),
    };
    format!(
        "{shown} of Quo's {limit_per_s}/s  eta {}",
        humantime::format_duration(eta)
    )
}

/// What a cycle's writes took, for the result line.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteTiming {
    /// From the first write dispatched to the last one confirmed.
    pub elapsed: Duration,
    /// Confirmed writes per second, when more than one was seen confirmed.
    pub per_second: Option<f64>,
}

/// The human view of one running cycle: the read line and the bars.
pub struct CycleView {
    terminal: Arc<Terminal>,
    progress: Arc<CycleProgress>,
    stats: Arc<ClientStats>,
    limit_per_s: u32,
    started: Instant,
    read_started: Option<Instant>,
    read_reported: bool,
    /// Print the read line as soon as the read is done (`once`), or leave it to the caller.
    eager: bool,
    read_line: Option<String>,
    scan_started: Option<Instant>,
    writes_started: Option<Instant>,
    last_confirmed: (u64, Instant),
    first_confirmed: Option<Instant>,
    confirm_rate: Rate,
    request_rate: Rate,
    write_bar: Option<indicatif::ProgressBar>,
    scan_bar: Option<indicatif::ProgressBar>,
}

impl CycleView {
    /// A view of the cycle about to run on `ctx`, drawing on `terminal`.
    pub fn new(terminal: Arc<Terminal>, ctx: &SyncContext, limit_per_s: u32) -> Self {
        Self::on(
            terminal,
            ctx.progress.clone(),
            ctx.client.stats().clone(),
            limit_per_s,
        )
    }

    /// A view of the counters in `progress`.
    pub fn on(
        terminal: Arc<Terminal>,
        progress: Arc<CycleProgress>,
        stats: Arc<ClientStats>,
        limit_per_s: u32,
    ) -> Self {
        let now = Instant::now();
        Self {
            terminal,
            progress,
            stats,
            limit_per_s,
            started: now,
            read_started: None,
            read_reported: false,
            eager: true,
            read_line: None,
            scan_started: None,
            writes_started: None,
            last_confirmed: (0, now),
            first_confirmed: None,
            confirm_rate: Rate::default(),
            request_rate: Rate::default(),
            write_bar: None,
            scan_bar: None,
        }
    }

    /// Keeps the read line for [`CycleView::finish`] instead of printing it (a service prints
    /// a cycle's lines only when the cycle changed something).
    pub fn deferred(mut self) -> Self {
        self.eager = false;
        self
    }

    /// Looks at the counters and redraws.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let snap = self.progress.snapshot();
        self.scan(now, &snap);
        if snap.phase == Some(CyclePhase::Reading) && self.read_started.is_none() {
            self.read_started = Some(now);
        }
        // The read line waits for the read's decisions (day one's matches are decided after
        // the whole read), so its counts are what the cycle will do.
        if snap.decided.is_some() && !self.read_reported {
            self.report_read(now, &snap);
        }
        self.writes(now, &snap);
    }

    /// The cycle ended: the last frame of the bars, then their place goes to the lines. Returns
    /// what the writes took and, when deferred, the read line.
    pub fn finish(mut self) -> (WriteTiming, Option<String>) {
        let now = Instant::now();
        let snap = self.progress.snapshot();
        if let Some(bar) = self.scan_bar.take() {
            bar.finish_and_clear();
            self.terminal.remove(&bar);
        }
        self.writes(now, &snap);
        if let Some(bar) = self.write_bar.take() {
            bar.set_position(snap.confirmed_writes());
            bar.finish();
            bar.finish_and_clear();
            self.terminal.remove(&bar);
        }
        // A cycle that read nothing and decided nothing (paused, or failed before its read)
        // has no read to tell of.
        if !self.read_reported && (snap.records_read > 0 || snap.decided.is_some()) {
            self.report_read(now, &snap);
        }
        let (count, last) = self.last_confirmed;
        let timing = WriteTiming {
            elapsed: self
                .writes_started
                .map(|t| last.saturating_duration_since(t))
                .unwrap_or_default(),
            // Between the first and the last confirmation: n - 1 intervals.
            per_second: self.first_confirmed.and_then(|first| {
                let span = last.saturating_duration_since(first).as_secs_f64();
                (count > 1 && span > 0.0).then(|| (count - 1) as f64 / span)
            }),
        };
        (timing, self.read_line.take())
    }

    fn report_read(&mut self, now: Instant, snap: &ProgressSnapshot) {
        self.read_reported = true;
        let took = now.duration_since(self.read_started.unwrap_or(self.started));
        let line = crate::ops::summary::read_line(&self.terminal, snap, took);
        if self.eager {
            self.terminal.line(&line);
        } else {
            self.read_line = Some(line);
        }
    }

    fn scan(&mut self, now: Instant, snap: &ProgressSnapshot) {
        if snap.phase != Some(CyclePhase::Intake) || snap.pages_scanned == 0 {
            if let Some(bar) = self.scan_bar.take() {
                bar.finish_and_clear();
                self.terminal.remove(&bar);
            }
            return;
        }
        let started = *self.scan_started.get_or_insert(now);
        let rate = self.request_rate.sample(
            now,
            self.stats
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        if now.duration_since(started) < BAR_AFTER {
            return;
        }
        let bar = self.scan_bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template("{spinner} scanning Quo  {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            self.terminal.add(bar)
        });
        let rate = match rate {
            Some(r) => format!("{r:.1} requests/s of Quo's {}/s", self.limit_per_s),
            None => String::new(),
        };
        bar.set_message(format!("{} pages  {rate}", snap.pages_scanned));
        bar.tick();
    }

    fn writes(&mut self, now: Instant, snap: &ProgressSnapshot) {
        let planned = snap.planned_writes();
        let confirmed = snap.confirmed_writes();
        if planned == 0 {
            return;
        }
        let started = *self.writes_started.get_or_insert(now);
        if confirmed != self.last_confirmed.0 {
            self.first_confirmed.get_or_insert(now);
            self.last_confirmed = (confirmed, now);
        }
        let rate = self.confirm_rate.sample(now, confirmed);
        if self.write_bar.is_none()
            && (confirmed >= planned || now.duration_since(started) < BAR_AFTER)
        {
            return;
        }
        let verb = match (
            snap.planned[0] > 0,
            snap.planned[1] > 0,
            snap.planned[2] > 0,
        ) {
            // Adoptions are PATCHes counted with the creates.
            (true, false, false) if snap.adopting == 0 => "creating",
            (false, true, false) => "updating",
            (false, false, true) => "deleting",
            _ => "writing",
        };
        let message = rate_and_eta(rate, planned.saturating_sub(confirmed), self.limit_per_s);
        match &self.write_bar {
            Some(bar) => {
                bar.set_prefix(verb);
                bar.set_length(planned);
                bar.set_position(confirmed);
                bar.set_message(message);
            }
            None => {
                // Filled in before it is added, so its first frame is already true.
                let bar = indicatif::ProgressBar::with_draw_target(
                    Some(planned),
                    indicatif::ProgressDrawTarget::hidden(),
                )
                .with_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix:>9} [{bar:30}] {pos}/{len} contacts  {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                )
                .with_prefix(verb)
                .with_position(confirmed)
                .with_message(message);
                self.write_bar = Some(self.terminal.add(bar));
            }
        }
    }
}

/// Watches a cycle while it runs: the human view on its terminal, or a `progress` log line
/// every 10 s elsewhere. Stop it with [`CycleWatch::finish`].
pub struct CycleWatch {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Option<WriteTiming>>,
}

impl CycleWatch {
    /// Stops watching; on the terminal the bars make way for the lines that follow.
    pub async fn finish(self) -> WriteTiming {
        self.stop.cancel();
        self.task.await.ok().flatten().unwrap_or_default()
    }
}

/// Starts watching the cycle about to run on `ctx` (`limit_per_s`: Quo's requests per second).
pub fn watch_progress(ctx: &SyncContext, limit_per_s: u32) -> CycleWatch {
    let stop = CancellationToken::new();
    let until = stop.clone();
    let task = match crate::telemetry::terminal() {
        Some(terminal) => {
            let mut view = CycleView::new(terminal, ctx, limit_per_s);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(TICK) => view.tick(),
                        _ = until.cancelled() => return Some(view.finish().0),
                    }
                }
            })
        }
        None => {
            let progress = ctx.progress.clone();
            let ledger = ctx.ledger.clone();
            tokio::spawn(async move {
                let expected: i64 = ledger.record_count().await.unwrap_or(0);
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                        _ = until.cancelled() => return None,
                    }
                    tracing::info!(
                        event = "progress",
                        records_read = progress.records_read(),
                        expected,
                        "cycle in progress"
                    );
                }
            })
        }
    };
    CycleWatch { stop, task }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_measured_over_the_window_and_the_eta_never_beats_quos_limit() {
        let mut rate = Rate::default();
        let t0 = Instant::now();
        assert_eq!(rate.sample(t0, 0), None, "no rate from one sample");
        assert_eq!(rate.sample(t0 + Duration::from_millis(200), 2), None);
        let r = rate.sample(t0 + Duration::from_secs(1), 10).unwrap();
        assert!((r - 10.0).abs() < 1e-9, "{r}");
        rate.sample(t0 + Duration::from_secs(3), 11);
        // Old samples leave the window: only the last 3 s count.
        let r = rate.sample(t0 + Duration::from_secs(5), 12).unwrap();
        assert!((r - 0.5).abs() < 1e-9, "{r}");
        assert_eq!(rate_and_eta(None, 23, 10), "…/s of Quo's 10/s  eta 3s");
        assert_eq!(
            rate_and_eta(Some(5.0), 10, 10),
            "5.0/s of Quo's 10/s  eta 2s"
        );
        assert_eq!(
            rate_and_eta(Some(40.0), 20, 10),
            "40.0/s of Quo's 10/s  eta 2s"
        );
    }
}
