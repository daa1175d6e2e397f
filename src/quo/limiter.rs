//! One rate limiter per API key, shared by every request that uses it (pushes, lookups, scans,
//! retries): Quo counts requests per key, not per worker.
//!
//! Quo (and the sandbox) count requests in any one-second window, so a bursty token bucket would
//! overrun the limit at the edge of a window. The limiter therefore spaces requests evenly, one
//! every `1s / rate`, with a small safety margin for network jitter between our clock and Quo's.
//! A 429 pauses the whole limiter (every worker, not only the one that got it) for the server's
//! `Retry-After` or the backoff, so the key recovers instead of drawing more 429s.
//!
//! Background work (the reverse scan) asks through [`RateLimiter::acquire_background`]: while
//! foreground requests (writes, freshen reads, lookups) are waiting it is held to its configured
//! share of the rate, and it takes all of it otherwise, so a long scan never starves writes.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Gcra};
use tokio::time::Instant;

/// Fraction of the nominal limit we aim for; the rest absorbs jitter between send and arrival.
pub const SAFETY_MARGIN: f64 = 0.98;

/// The limiter's time: tokio's clock, read as the time since the limiter was made. It is the
/// monotonic clock in a running service; under a paused test clock (`start_paused`) it moves only
/// as the runtime advances it, so a test of rates counts permits in virtual time instead of in
/// how quickly a loaded machine happens to wake its tasks. Every wait below sleeps on the same
/// clock (tokio's timers, not governor's `until_ready`, whose timer thread runs on the wall clock).
#[derive(Debug, Clone, Copy)]
struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.origin.elapsed())
    }
}

/// A GCRA gate on [`TokioClock`].
type Gate = Gcra<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// A gate that lets one permit through every `period`, with no burst.
fn spaced_gate(period: Duration) -> Gate {
    let quota = Quota::with_period(period)
        .expect("period is non-zero")
        .allow_burst(NonZeroU32::new(1).expect("one"));
    Gcra::direct_with_clock(quota, TokioClock::new())
}

/// Waits until `gate` lets one permit through.
async fn until_ready(gate: &Gate) {
    while let Err(not_until) = gate.check() {
        tokio::time::sleep(not_until.wait_time_from(gate.clock().now())).await;
    }
}

/// An evenly spacing limiter for one API key.
#[derive(Debug)]
pub struct RateLimiter {
    inner: Gate,
    per_second: u32,
    waited_micros: AtomicU64,
    permits: AtomicU64,
    /// No permit is handed out before this instant (set by a 429).
    paused_until: std::sync::Mutex<Option<Instant>>,
    /// Foreground callers waiting for a permit right now.
    foreground_waiting: std::sync::atomic::AtomicUsize,
    /// Spaces background permits to their share of the rate while foreground callers wait.
    background: std::sync::Mutex<Option<Gate>>,
    /// Callers take permits one at a time, in the order they asked (tokio's mutex is fair). The
    /// gate alone hands a free slot to whichever waiter polls first after it opens, so a caller
    /// could lose every race to busier ones: background work that had passed its share still
    /// starved behind two foreground loops.
    turn: tokio::sync::Mutex<()>,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests per second (spaced evenly, with the margin).
    pub fn per_second(per_second: u32) -> Arc<Self> {
        let per_second = per_second.max(1);
        let period = Duration::from_secs_f64(1.0 / (f64::from(per_second) * SAFETY_MARGIN));
        Arc::new(Self {
            inner: spaced_gate(period),
            per_second,
            waited_micros: AtomicU64::new(0),
            permits: AtomicU64::new(0),
            paused_until: std::sync::Mutex::new(None),
            foreground_waiting: std::sync::atomic::AtomicUsize::new(0),
            background: std::sync::Mutex::new(None),
            turn: tokio::sync::Mutex::new(()),
        })
    }

    /// Sets the share of the rate background work may use while foreground work waits
    /// (`reverse.scan_share`, 0 < share ≤ 1).
    pub fn set_background_share(&self, share: f64) {
        let share = share.clamp(0.01, 1.0);
        let per_second = f64::from(self.per_second) * SAFETY_MARGIN * share;
        let gate = spaced_gate(Duration::from_secs_f64(1.0 / per_second));
        *self.background.lock().unwrap_or_else(|e| e.into_inner()) = Some(gate);
    }

    /// Waits for a permit for background work: at most its share of the rate while foreground
    /// callers wait, any free permit otherwise.
    pub async fn acquire_background(&self) -> Duration {
        let started = Instant::now();
        loop {
            if self.foreground_waiting.load(Ordering::Relaxed) == 0 {
                break;
            }
            let ready = {
                let gate = self.background.lock().unwrap_or_else(|e| e.into_inner());
                match gate.as_ref() {
                    None => true,
                    Some(gate) => gate.check().is_ok(),
                }
            };
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.take_permit(started).await
    }

    /// Waits for the next permit; call before every attempt, retries included.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        self.foreground_waiting.fetch_add(1, Ordering::Relaxed);
        let waited = self.take_permit(started).await;
        self.foreground_waiting.fetch_sub(1, Ordering::Relaxed);
        waited
    }

    async fn take_permit(&self, started: Instant) -> Duration {
        let turn = self.turn.lock().await;
        while let Some(until) = self.pause_deadline() {
            tokio::time::sleep_until(until).await;
        }
        until_ready(&self.inner).await;
        drop(turn);
        let waited = started.elapsed();
        self.waited_micros
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        self.permits.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("quo_sync_limiter_wait_seconds").record(waited.as_secs_f64());
        waited
    }

    /// Holds every caller back for `wait` (a 429 was answered); a longer pause already in force
    /// is kept.
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
        metrics::counter!("quo_sync_limiter_pauses_total").increment(1);
    }

    /// The pause in force, if it has not ended yet.
    fn pause_deadline(&self) -> Option<Instant> {
        let paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        paused.filter(|until| *until > Instant::now())
    }

    /// The configured nominal rate.
    pub fn nominal_per_second(&self) -> u32 {
        self.per_second
    }

    /// Permits handed out so far.
    pub fn permits(&self) -> u64 {
        self.permits.load(Ordering::Relaxed)
    }

    /// Total time callers spent waiting for permits.
    pub fn total_wait(&self) -> Duration {
        Duration::from_micros(self.waited_micros.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test runs on tokio's paused clock: time moves only when every task waits, straight to
    // the next timer, so what they assert (how many permits, how far apart) is the same on a
    // loaded 2-core machine as on an idle one.

    #[tokio::test(start_paused = true)]
    async fn spaces_permits_evenly() {
        // 100/s keeps the test short; 11 permits need at least 10 periods of ~10.2 ms.
        let limiter = RateLimiter::per_second(100);
        let started = Instant::now();
        for _ in 0..11 {
            limiter.acquire().await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(limiter.permits(), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_back_every_caller() {
        let limiter = RateLimiter::per_second(1000);
        limiter.acquire().await;
        limiter.pause_for(Duration::from_millis(150));
        let started = Instant::now();
        let (a, b) = tokio::join!(limiter.acquire(), limiter.acquire());
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(a >= Duration::from_millis(140) && b >= Duration::from_millis(140));
        // A shorter pause never shortens a longer one.
        limiter.pause_for(Duration::from_millis(200));
        limiter.pause_for(Duration::from_millis(10));
        let started = Instant::now();
        limiter.acquire().await;
        assert!(started.elapsed() >= Duration::from_millis(190));
    }

    /// Two foreground callers and one background caller compete: the background keeps to its
    /// 10% (without the share it would take a third). Counts in 600 ms of the paused clock
    /// decide, so how a loaded machine schedules the tasks cannot change the shares.
    #[tokio::test(start_paused = true)]
    async fn background_work_keeps_to_its_share_while_foreground_waits() {
        let limiter = RateLimiter::per_second(200);
        limiter.set_background_share(0.1);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let count = |background: bool| {
            let limiter = limiter.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if background {
                        limiter.acquire_background().await;
                    } else {
                        limiter.acquire().await;
                    }
                    n += 1;
                }
                n
            })
        };
        let (fg1, fg2, bg) = (count(false), count(false), count(true));
        tokio::time::sleep(Duration::from_millis(600)).await;
        stop.store(true, Ordering::Relaxed);
        let (fg, bg) = (fg1.await.unwrap() + fg2.await.unwrap(), bg.await.unwrap());
        let share = f64::from(bg) / f64::from(bg + fg);
        assert!(
            share <= 0.2,
            "background took {share:.2} ({bg} of {})",
            bg + fg
        );
        assert!(bg >= 3, "background still progresses: {bg}");
    }

    #[tokio::test(start_paused = true)]
    async fn background_work_takes_the_whole_rate_when_alone() {
        let limiter = RateLimiter::per_second(200);
        limiter.set_background_share(0.01);
        let started = Instant::now();
        for _ in 0..21 {
            limiter.acquire_background().await;
        }
        // 20 periods at ~5.1 ms (about 0.1 s, each wait rounded up to tokio's 1 ms tick): a 1%
        // share would take 10 s, a 10% one 1 s.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
}
