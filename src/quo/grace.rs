//! How long the service keeps going while a credential it holds is refused: Quo's API key
//! (`quo.auth_grace`) or the CRM's credential (`source.rest.auth_grace`).
//!
//! A refusal may be the operator's mistake (a wrong or revoked key) or a short incident at the
//! vendor. The two are told apart by what this process has seen:
//!
//! - A credential refused **before this process ever saw it accepted** is configuration: the
//!   service stops at once, exit 2 (`auth_failed`), which a supervisor does not restart into
//!   (systemd's `RestartPreventExitStatus=2`).
//! - A credential that **worked and is then refused** is an incident until proven otherwise.
//!   Stopping at the first refusal turns it into a crash loop across the fleet (each standby
//!   takes over, meets the same 401 and exits); ignoring it leaves a service that looks ready
//!   and does nothing. So the first refusal starts a clock: cycles and the scanner back off and
//!   try again, `/readyz` says not ready, and any accepted request stops the clock. Only when
//!   the refusals outlast the grace does the service stop (`auth_failed`, exit 1: a supervisor
//!   restarts it, and the new process, never accepted, stops with exit 2 if it is still refused).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Longest pause between two tries while refused.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// What to do after a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Try again after this pause (within the grace).
    RetryIn(Duration),
    /// The grace ran out: stop (exit 1).
    GiveUp,
    /// Refused before this process ever saw the credential accepted: stop at once (exit 2).
    NeverAccepted,
}

#[derive(Debug, Clone, Copy)]
struct Refusals {
    since: Instant,
    count: u32,
}

/// The refusal clock of one credential, shared by the cycles, the scanner, the client that
/// sends it (which reports each accepted request) and `/readyz`.
#[derive(Debug)]
pub struct AuthGrace {
    grace: Duration,
    refusals: Mutex<Option<Refusals>>,
    /// Set once a request with this credential was accepted, for the life of the process.
    ever_accepted: AtomicBool,
    exhausted: CancellationToken,
}

impl AuthGrace {
    /// A clock allowing `grace` of refusals.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            refusals: Mutex::new(None),
            ever_accepted: AtomicBool::new(false),
            exhausted: CancellationToken::new(),
        }
    }

    /// Whether this process has seen the credential accepted at least once.
    pub fn ever_accepted(&self) -> bool {
        self.ever_accepted.load(Ordering::Acquire)
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

    /// The credential was refused: when to try again, or to stop (which also fires
    /// [`AuthGrace::exhausted`]): at once when it was never accepted, else once the grace has
    /// run out. Pauses double from one second, never past the grace's end, so the last try
    /// falls when it runs out.
    pub fn refused(&self) -> AfterRefusal {
        if !self.ever_accepted() {
            self.exhausted.cancel();
            return AfterRefusal::NeverAccepted;
        }
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

    /// A request with the credential was accepted: the clock stops.
    pub fn accepted(&self) {
        self.ever_accepted.store(true, Ordering::Release);
        *self.refusals() = None;
    }

    /// How long the credential has been refused, while it is.
    pub fn refused_for(&self) -> Option<Duration> {
        self.refusals().map(|r| r.since.elapsed())
    }

    /// Cancelled once the grace has run out.
    pub fn exhausted(&self) -> CancellationToken {
        self.exhausted.clone()
    }
}

/// Which credential a refusal clock is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Quo's API key (`quo.api_key`).
    QuoKey,
    /// The CRM's credential (`source.rest.auth`: a token, a password, OAuth2).
    Crm,
}

impl Credential {
    /// What refused, in words (`Quo refused the API key`).
    pub fn refused(self) -> &'static str {
        match self {
            Credential::QuoKey => "Quo refused the API key",
            Credential::Crm => "the CRM refused its credential",
        }
    }

    /// The key configuring its grace.
    pub fn grace_key(self) -> &'static str {
        match self {
            Credential::QuoKey => "quo.auth_grace",
            Credential::Crm => "source.rest.auth_grace",
        }
    }
}

/// The refusal clocks of the credentials a service holds: Quo's key always, the CRM's when the
/// source has one.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Quo's API key.
    pub quo: Arc<AuthGrace>,
    /// The CRM's credential (`None`: a CSV file).
    pub crm: Option<Arc<AuthGrace>>,
}

impl Credentials {
    /// The clock of `credential` (`None`: the source has no credential).
    pub fn clock(&self, credential: Credential) -> Option<&Arc<AuthGrace>> {
        match credential {
            Credential::QuoKey => Some(&self.quo),
            Credential::Crm => self.crm.as_ref(),
        }
    }

    /// A credential being refused now, and for how long (Quo's first).
    pub fn refused(&self) -> Option<(Credential, Duration)> {
        [Credential::QuoKey, Credential::Crm]
            .into_iter()
            .find_map(|c| Some((c, self.clock(c)?.refused_for()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_back_off_within_the_grace_and_give_up_after_it() {
        let grace = AuthGrace::new(Duration::from_millis(1500));
        grace.accepted();
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
        none.accepted();
        assert_eq!(none.refused(), AfterRefusal::GiveUp);
        assert!(none.exhausted().is_cancelled());
    }

    #[test]
    fn a_credential_never_accepted_is_given_up_at_the_first_refusal() {
        let grace = AuthGrace::new(Duration::from_secs(300));
        assert!(!grace.ever_accepted());
        assert_eq!(grace.refused(), AfterRefusal::NeverAccepted);
        assert!(grace.exhausted().is_cancelled());
        let worked = AuthGrace::new(Duration::from_secs(300));
        worked.accepted();
        assert!(matches!(worked.refused(), AfterRefusal::RetryIn(_)));
        assert!(!worked.exhausted().is_cancelled());
    }
}
