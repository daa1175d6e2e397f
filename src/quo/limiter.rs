//! One rate limiter per API key, shared by every request that uses it (pushes, lookups, scans,
//! retries): Quo counts requests per key, not per worker.
//!
//! Quo (and the sandbox) count requests in any one-second window, so a bursty token bucket would
//! overrun the limit at the edge of a window. The limiter therefore spaces requests evenly, one
//! every `1s / rate`, with a small safety margin for network jitter between our clock and Quo's.
//! A 429 pauses the whole limiter (every worker, not only the one that got it) for the server's
//! `Retry-After` or the backoff, so the key recovers instead of drawing more 429s.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter as Gcra};

/// Fraction of the nominal limit we aim for; the rest absorbs jitter between send and arrival.
pub const SAFETY_MARGIN: f64 = 0.98;

/// An evenly spacing limiter for one API key.
#[derive(Debug)]
pub struct RateLimiter {
    inner: DefaultDirectRateLimiter,
    per_second: u32,
    waited_micros: AtomicU64,
    permits: AtomicU64,
    /// No permit is handed out before this instant (set by a 429).
    paused_until: std::sync::Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests per second (spaced evenly, with the margin).
    pub fn per_second(per_second: u32) -> Arc<Self> {
        let per_second = per_second.max(1);
        let period = Duration::from_secs_f64(1.0 / (f64::from(per_second) * SAFETY_MARGIN));
        let quota = Quota::with_period(period)
            .expect("period is non-zero")
            .allow_burst(NonZeroU32::new(1).expect("one"));
        Arc::new(Self {
            inner: Gcra::direct(quota),
            per_second,
            waited_micros: AtomicU64::new(0),
            permits: AtomicU64::new(0),
            paused_until: std::sync::Mutex::new(None),
        })
    }

    /// Waits for the next permit; call before every attempt, retries included.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        while let Some(until) = self.pause_deadline() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        }
        self.inner.until_ready().await;
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

    #[tokio::test]
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

    #[tokio::test]
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
}
