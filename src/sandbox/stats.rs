//! Request accounting and the per-key rate limiter.
//!
//! The limiter and the statistics share one sliding window of accepted requests: Quo counts
//! requests per key in any one-second window, so the sandbox does the same (exactly, not with a
//! token bucket) and reports the busiest second it saw. That peak is what a load test compares
//! with the limit to prove the client's own limiter keeps it under Quo's.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::faults::FaultCounters;

/// Successful API writes by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteStats {
    /// `POST /v1/contacts` 201s.
    pub creates: u64,
    /// `PATCH /v1/contacts/{id}` 200s.
    pub updates: u64,
    /// `DELETE /v1/contacts/{id}` 204s.
    pub deletes: u64,
}

/// What the sandbox has seen on its API routes since start or the last reset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SandboxStats {
    /// Every API request, whatever its answer (401s and 429s included).
    pub requests_total: u64,
    /// Counts keyed `"METHOD /route status"`, e.g. `"POST /v1/contacts 201"`.
    pub by_route_status: BTreeMap<String, u64>,
    /// 429 answers, from the limiter and injected.
    pub rate_limited: u64,
    /// Answers produced by injected status faults.
    pub injected_faults: u64,
    /// Connections dropped after a write (`Fault::DropAfterWrite` and `DropAfterWriteRatio`).
    pub dropped_connections: u64,
    /// Most requests accepted by the limiter within any one-second sliding window.
    pub peak_per_second: u64,
    /// Successful writes.
    pub writes: WriteStats,
    /// Arrival of the first API request.
    pub first_request_at: Option<DateTime<Utc>>,
    /// Arrival of the last API request.
    pub last_request_at: Option<DateTime<Utc>>,
    /// How many times each injected fault fired.
    #[serde(default)]
    pub faults: FaultCounters,
}

impl SandboxStats {
    /// Creates, updates and deletes applied (the writes a sync should minimise).
    pub fn writes_total(&self) -> u64 {
        self.writes.creates + self.writes.updates + self.writes.deletes
    }

    /// Average requests per second between the first and last request (`None` below two
    /// requests or when they arrived in the same millisecond).
    pub fn achieved_rate(&self) -> Option<f64> {
        let (first, last) = (self.first_request_at?, self.last_request_at?);
        let ms = (last - first).num_milliseconds();
        if self.requests_total < 2 || ms <= 0 {
            return None;
        }
        Some((self.requests_total - 1) as f64 * 1000.0 / ms as f64)
    }
}

/// Statistics plus the limiter's sliding window.
#[derive(Debug, Default)]
pub(crate) struct Accounting {
    /// The reported statistics.
    pub stats: SandboxStats,
    window: VecDeque<Instant>,
}

impl Accounting {
    /// Records the arrival of an API request.
    pub(crate) fn arrived(&mut self) {
        let now = Utc::now();
        self.stats.requests_total += 1;
        self.stats.first_request_at.get_or_insert(now);
        self.stats.last_request_at = Some(now);
    }

    /// Admits a request under a limit of `limit` per second (0: unlimited), or returns how long
    /// until a slot frees up. Rejected requests do not enter the window.
    pub(crate) fn admit(&mut self, limit: u32) -> Result<(), Duration> {
        let now = Instant::now();
        let second = Duration::from_secs(1);
        while let Some(front) = self.window.front() {
            if now.duration_since(*front) >= second {
                self.window.pop_front();
            } else {
                break;
            }
        }
        if limit > 0 && self.window.len() >= limit as usize {
            let oldest = self.window.front().copied().unwrap_or(now);
            return Err(second.saturating_sub(now.duration_since(oldest)));
        }
        self.window.push_back(now);
        self.stats.peak_per_second = self.stats.peak_per_second.max(self.window.len() as u64);
        Ok(())
    }

    /// Records the answer given to a request.
    pub(crate) fn answered(&mut self, method: &str, route: &str, status: u16) {
        *self
            .stats
            .by_route_status
            .entry(format!("{method} {route} {status}"))
            .or_insert(0) += 1;
        if status == 429 {
            self.stats.rate_limited += 1;
        }
    }

    /// Clears the statistics (the limiter window is kept: a reset must not open a loophole).
    pub(crate) fn reset(&mut self) {
        self.stats = SandboxStats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_limits_and_tracks_peak() {
        let mut a = Accounting::default();
        for _ in 0..3 {
            assert!(a.admit(3).is_ok());
        }
        let wait = a
            .admit(3)
            .expect_err("fourth in the same second is refused");
        assert!(wait <= Duration::from_secs(1));
        assert_eq!(a.stats.peak_per_second, 3);
    }
}
