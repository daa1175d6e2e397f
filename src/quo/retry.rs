//! Retry policy: exponential backoff with full jitter and a cap, overridden by `Retry-After`.
//!
//! Shared by the Quo client and the REST CRM adapter. The caller owns the loop (it must take a
//! limiter permit before every attempt and decide whether a failure is safe to retry); this module
//! only answers "how long to wait before attempt n".

use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How many times and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first backoff ceiling; doubled per retry.
    pub base: Duration,
    /// The largest backoff (and the largest `Retry-After` honoured).
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 8,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based): `Retry-After` when the server sent one,
    /// otherwise a uniformly random duration in `[0, min(cap, base * 2^(retry-1))]` (full jitter).
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.cap);
        }
        let exp = self
            .base
            .saturating_mul(1u32 << (retry.saturating_sub(1)).min(20));
        let ceiling = exp.min(self.cap);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis.max(1)))
    }

    /// Whether another attempt is allowed after `retries_done` retries.
    pub fn may_retry(&self, retries_done: u32) -> bool {
        retries_done < self.max_retries
    }
}

/// The policy as a `backon` backoff: `max_retries` full-jitter delays, then none. Loops that
/// have nothing to decide between attempts (the REST source, OAuth token requests) let `backon`
/// run them; `.adjust` puts a server's `Retry-After` in place of a delay.
impl backon::BackoffBuilder for RetryPolicy {
    type Backoff = FullJitter;

    fn build(self) -> FullJitter {
        FullJitter {
            policy: self,
            retries: 0,
        }
    }
}

/// The delays of one retried exchange (see [`RetryPolicy::backoff`]).
#[derive(Debug)]
pub struct FullJitter {
    policy: RetryPolicy,
    retries: u32,
}

impl Iterator for FullJitter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if !self.policy.may_retry(self.retries) {
            return None;
        }
        self.retries += 1;
        Some(self.policy.backoff(self.retries, None))
    }
}

/// Whether an HTTP status is worth retrying (429 and 5xx).
pub fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Longest `Retry-After` taken at face value before the policy's own cap applies: anything a
/// server says beyond a day is treated as a day (and then capped), never trusted to build a
/// `Duration` that could overflow.
const RETRY_AFTER_CEILING: Duration = Duration::from_secs(86_400);

/// `Retry-After` as a wait: delay-seconds (integer or decimal) or an HTTP-date, clamped to
/// `[0, 1 day]`. Garbage, negative and non-finite values count as absent; a date in the past
/// means "now". Callers cap it further with `RetryPolicy::backoff`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(value, chrono::Utc::now())
}

/// The parser behind [`retry_after`], with the clock given (tests).
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    if let Ok(seconds) = value.parse::<f64>() {
        if !seconds.is_finite() || seconds < 0.0 {
            return None;
        }
        let clamped = seconds.min(RETRY_AFTER_CEILING.as_secs_f64());
        return Some(Duration::from_secs_f64(clamped));
    }
    // All three HTTP-date forms (IMF-fixdate, RFC 850, asctime), as RFC 9110 asks.
    let date = chrono::DateTime::<chrono::Utc>::from(httpdate::parse_http_date(value).ok()?);
    let wait = date.signed_duration_since(now).to_std().unwrap_or_default();
    Some(wait.min(RETRY_AFTER_CEILING))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let policy = RetryPolicy {
            max_retries: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        for retry in 1..=30 {
            assert!(policy.backoff(retry, None) <= Duration::from_secs(1));
        }
        assert!(policy.backoff(1, None) <= Duration::from_millis(100));
    }

    /// Full jitter: waits spread over the whole `[0, ceiling]` (200 draws for retry 3, ceiling
    /// 400 ms), so concurrent workers that failed together do not retry together. A constant or
    /// half-jittered wait fails; a spread this wide by chance has odds below 1e-20.
    #[test]
    fn backoff_is_spread_over_the_whole_ceiling() {
        let policy = RetryPolicy {
            max_retries: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let draws: Vec<Duration> = (0..200).map(|_| policy.backoff(3, None)).collect();
        let ceiling = Duration::from_millis(400);
        assert!(draws.iter().all(|d| *d <= ceiling), "{draws:?}");
        let (low, high) = (
            draws
                .iter()
                .filter(|d| **d < Duration::from_millis(100))
                .count(),
            draws
                .iter()
                .filter(|d| **d > Duration::from_millis(300))
                .count(),
        );
        assert!(low > 0 && high > 0, "low {low}, high {high}: {draws:?}");
        let mut distinct = draws.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 50, "{} distinct waits", distinct.len());
    }

    #[test]
    fn backon_backoff_gives_max_retries_capped_delays() {
        let policy = RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(250),
        };
        let delays: Vec<Duration> = backon::BackoffBuilder::build(policy).collect();
        assert_eq!(delays.len(), 3);
        assert!(delays.iter().all(|d| *d <= policy.cap), "{delays:?}");
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.backoff(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            policy.backoff(1, Some(Duration::from_secs(600))),
            policy.cap
        );
    }

    #[test]
    fn parses_retry_after_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:27:50Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        // The obsolete forms a server may still send (RFC 9110 §5.6.7): RFC 850 and asctime.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:00 2015", now),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn hostile_retry_after_never_panics_and_is_clamped() {
        let policy = RetryPolicy::default();
        let now = chrono::Utc::now();
        for hostile in [
            "1e20",
            "1e308",
            "-5",
            "NaN",
            "inf",
            "-inf",
            "99999999999999999999999",
            "",
            "soon",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "0x10",
            "3; drop",
        ] {
            let parsed = parse_retry_after(hostile, now);
            assert!(
                parsed.is_none_or(|d| d <= RETRY_AFTER_CEILING),
                "{hostile}: {parsed:?}"
            );
            assert!(policy.backoff(1, parsed) <= policy.cap, "{hostile}");
        }
        assert_eq!(parse_retry_after("1e20", now), Some(RETRY_AFTER_CEILING));
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
