//! How long the service keeps going while Quo refuses its API key (`quo.auth_grace`).
//!
//! A 401 may be the operator's mistake (a revoked key) or a short incident at Quo. Stopping at
//! the first one turns an incident into a crash loop across the fleet (each standby takes over,
//! meets the same 401 and exits); ignoring it leaves a service that looks ready and does
//! nothing. So the first refusal starts a clock: the cycles and the scanner back off and try
//! again, `/readyz` says not ready, and any accepted request stops the clock. Only when the
//! refusals outlast the grace does the service stop (`auth_failed`, exit 1).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Longest pause between two tries while refused.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// What to do after a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Try again after this pause (within the grace).
    RetryIn(Duration),
    /// The grace ran out: stop.
    GiveUp,
}

#[derive(Debug, Clone, Copy)]
struct Refusals {
    since: Instant,
    count: u32,
}

/// The refusal clock shared by the cycles, the scanner and `/readyz`.
#[derive(Debug)]
pub struct AuthGrace {
    grace: Duration,
    refusals: Mutex<Option<Refusals>>,
    exhausted: CancellationToken,
}

impl AuthGrace {
    /// A clock allowing `grace` of refusals.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            refusals: Mutex::new(None),
            exhausted: CancellationToken::new(),
        }
    }

    /// The configured grace.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    fn refusals(&self) -> std::sync::MutexGuard<'_, Option<Refusals>> {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Quo refused the key: when to try again, or to give up (which also fires
    /// [`AuthGrace::exhausted`]). Pauses double from one second, never past the grace's end, so
    /// the last try falls when it runs out.
    pub fn refused(&self) -> AfterRefusal {
        let mut refusals = self.refusals();
        let now = Instant::now();
        let state = refusals.get_or_insert(Refusals {
            since: now,
            count: 0,
        });
        state.count += 1;
        let elapsed = now.duration_since(state.since);
        if elapsed >= self.grace {
            self.exhausted.cancel();
            return AfterRefusal::GiveUp;
        }
        let pause = Duration::from_secs(1 << (state.count - 1).min(5)).min(MAX_PAUSE);
        AfterRefusal::RetryIn(pause.min(self.grace - elapsed))
    }

    /// Quo accepted a request: the clock stops.
    pub fn accepted(&self) {
        *self.refusals() = None;
    }

    /// How long Quo has been refusing the key, while it does.
    pub fn refused_for(&self) -> Option<Duration> {
        self.refusals().map(|r| r.since.elapsed())
    }

    /// Cancelled once the grace has run out.
    pub fn exhausted(&self) -> CancellationToken {
        self.exhausted.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_back_off_within_the_grace_and_give_up_after_it() {
        let grace = AuthGrace::new(Duration::from_millis(1500));
        assert_eq!(grace.refused_for(), None);
        assert_eq!(
            grace.refused(),
            AfterRefusal::RetryIn(Duration::from_secs(1))
        );
        assert!(grace.refused_for().is_some());
        // The second pause (2 s) is cut to what is left of the grace.
        match grace.refused() {
            AfterRefusal::RetryIn(pause) => assert!(pause <= Duration::from_millis(1500)),
            other => panic!("{other:?}"),
        }
        grace.accepted();
        assert_eq!(grace.refused_for(), None);
        assert!(!grace.exhausted().is_cancelled());
        let none = AuthGrace::new(Duration::ZERO);
        assert_eq!(none.refused(), AfterRefusal::GiveUp);
        assert!(none.exhausted().is_cancelled());
    }
}
