//! The leader's side of the writer lease: the local view of it ([`Fence`]: how long the lease is
//! still ours by this machine's clocks) and the held lease ([`LeaderLease`]), renewed in the
//! background until released or lost. Apart from the lease row (`lease.rs`) because this is
//! about one process's clocks and tasks, not about the shared table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::lease::{Attempt, Candidate, LeaseHolder};
use super::{Ledger, LedgerError};

/// The log target these lines had before this file was split off (operators filter on it).
const LOG_TARGET: &str = "quo_sync::ledger::lease";

/// The local view of a held lease: its epoch and until when it is certainly still ours.
///
/// Time since `origin` is the longer of the monotonic clock's and the wall clock's: Linux's
/// monotonic clock stops while the machine sleeps, so after a suspend it alone would say the lease
/// is still ours long after it expired in the database; the wall clock keeps counting (a wall
/// clock stepped forward only ends the lease early, the safe direction; one stepped back is
/// outrun by the monotonic clock).
#[derive(Debug)]
pub struct Fence {
    pub(super) epoch: i64,
    pub(super) lease: Duration,
    origin: Instant,
    origin_wall: SystemTime,
    /// Milliseconds after `origin` until which the lease is ours.
    valid_until_ms: AtomicU64,
    lost: CancellationToken,
}

impl Fence {
    fn new(epoch: i64, lease: Duration, asked_at: Instant) -> Self {
        // The wall clock's origin as of `asked_at` (a moment ago).
        let origin_wall = SystemTime::now()
            .checked_sub(asked_at.elapsed())
            .unwrap_or_else(SystemTime::now);
        Self {
            epoch,
            lease,
            origin: asked_at,
            origin_wall,
            valid_until_ms: AtomicU64::new(0),
            lost: CancellationToken::new(),
        }
    }

    /// Time since `origin`, by whichever of the monotonic and the wall clock ran further.
    fn elapsed(&self) -> Duration {
        let wall = SystemTime::now()
            .duration_since(self.origin_wall)
            .unwrap_or_default();
        self.origin.elapsed().max(wall)
    }

    /// How long the lease is still ours by the local clocks; `None` once it is not.
    pub fn time_left(&self) -> Option<Duration> {
        if self.lost.is_cancelled() {
            return None;
        }
        let until = Duration::from_millis(self.valid_until_ms.load(Ordering::Acquire));
        until.checked_sub(self.elapsed()).filter(|d| !d.is_zero())
    }

    /// Whether the lease is still ours by the local clocks.
    pub fn holds(&self) -> bool {
        self.time_left().is_some()
    }

    fn extend(&self, asked_at: Instant, lease: Duration) {
        // The database set expiry from a "now" no earlier than `asked_at`: conservative. The
        // margin leaves room for a request already on the wire when the deadline passes.
        let until = asked_at.duration_since(self.origin) + lease - safety_margin(lease);
        self.valid_until_ms
            .store(until.as_millis() as u64, Ordering::Release);
    }
}

/// How long before the lease's end a leader stops sending writes: a tenth of the lease.
pub fn safety_margin(lease: Duration) -> Duration {
    lease / 10
}

/// Why a writer could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another process holds the lease.
    #[error("the ledger {path} is held by another writer: {holder}")]
    Held {
        /// The ledger.
        path: String,
        /// Who (boxed: keeps every error that carries this one small).
        holder: Box<LeaseHolder>,
    },
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A held writer lease, renewed in the background every third of its length until released or
/// lost. [`LeaderLease::lost`] fires when it is lost.
#[derive(Debug)]
pub struct LeaderLease {
    ledger: Ledger,
    who: Candidate,
    epoch: i64,
    lease: Duration,
    pub(super) fence: Arc<Fence>,
    pub(super) renewer: tokio::task::JoinHandle<()>,
}

impl LeaderLease {
    /// Tries once; `Err(Held)` names the holder.
    pub async fn try_acquire(
        ledger: &Ledger,
        who: &Candidate,
        lease: Duration,
    ) -> Result<LeaderLease, LeaseError> {
        let asked_at = Instant::now();
        let epoch = loop {
            match ledger.try_acquire_lease(who, lease).await {
                Ok(Attempt::Acquired(epoch)) => break epoch,
                Ok(Attempt::Held(holder)) => {
                    return Err(LeaseError::Held {
                        path: ledger.path.clone(),
                        holder: Box::new(holder),
                    });
                }
                // Released between the upsert and the read: try again.
                Err(LedgerError::Query(sqlx::Error::RowNotFound)) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let fence = Arc::new(Fence::new(epoch, lease, asked_at));
        fence.extend(asked_at, lease);
        let renewer = tokio::spawn(renew_loop(
            ledger.clone(),
            who.token.clone(),
            epoch,
            lease,
            fence.clone(),
        ));
        info!(target: LOG_TARGET, event = "leader_acquired", epoch, host = %who.host, pid = who.pid, command = %who.command, lease_ms = lease.as_millis() as u64, "writer lease acquired");
        Ok(LeaderLease {
            ledger: ledger.clone(),
            who: who.clone(),
            epoch,
            lease,
            fence,
            renewer,
        })
    }

    /// Tries until `wait` has passed (at least once), polling every `poll`.
    pub async fn acquire_within(
        ledger: &Ledger,
        who: &Candidate,
        lease: Duration,
        wait: Duration,
        poll: Duration,
    ) -> Result<LeaderLease, LeaseError> {
        let deadline = Instant::now() + wait;
        loop {
            match Self::try_acquire(ledger, who, lease).await {
                Err(LeaseError::Held { .. }) if Instant::now() + poll <= deadline => {
                    tokio::time::sleep(poll).await;
                }
                other => return other,
            }
        }
    }

    /// The acquisition number.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Fires when the lease is lost (taken over, expired unrenewed, or released).
    pub fn lost(&self) -> CancellationToken {
        self.fence.lost.clone()
    }

    /// Whether the lease is still ours by the local clock.
    pub fn holds(&self) -> bool {
        self.fence.holds()
    }

    /// Stops renewing and frees the lease at once, so a standby takes over without waiting for
    /// the expiry.
    pub async fn release(self) {
        self.renewer.abort();
        let was_lost = self.fence.lost.is_cancelled();
        self.fence.lost.cancel();
        match self.ledger.release_lease(&self.who.token, self.epoch).await {
            Ok(true) => {
                info!(
                    target: LOG_TARGET,
                    event = "leader_released",
                    epoch = self.epoch,
                    "writer lease released"
                )
            }
            Ok(false) if !was_lost => {
                warn!(
                    target: LOG_TARGET,
                    event = "leader_lost",
                    epoch = self.epoch,
                    "writer lease was no longer ours at release"
                )
            }
            Ok(false) => {}
            Err(e) => {
                warn!(target: LOG_TARGET, event = "lease_release_failed", epoch = self.epoch, error = %e, "could not release the writer lease; it expires by itself")
            }
        }
    }
}

impl Drop for LeaderLease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Renews every third of the lease; declares the lease lost when the database says it is no
/// longer ours, or when renewals keep failing past the local expiry.
async fn renew_loop(ledger: Ledger, token: String, epoch: i64, lease: Duration, fence: Arc<Fence>) {
    let period = lease / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = fence.lost.cancelled() => return,
        }
        if !fence.holds() {
            // Woken too late (a pause, an overloaded host): the database may already have let
            // someone else in. Never renew an expired lease.
            lose(
                &fence,
                epoch,
                "the lease ran out before it could be renewed",
            );
            return;
        }
        let asked_at = Instant::now();
        match ledger.renew_lease(&token, epoch, lease).await {
            Ok(true) => fence.extend(asked_at, lease),
            Ok(false) => {
                lose(
                    &fence,
                    epoch,
                    "another process holds the lease or it expired",
                );
                return;
            }
            Err(e) => {
                warn!(target: LOG_TARGET, event = "lease_renew_failed", epoch, error = %e, "could not renew the writer lease; retrying");
            }
        }
    }
}

fn lose(fence: &Fence, epoch: i64, reason: &str) {
    warn!(
        target: LOG_TARGET,
        event = "leader_lost",
        epoch, reason, "writer lease lost: no new work is started"
    );
    fence.lost.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspend_that_stopped_the_monotonic_clock_ends_the_lease() {
        let lease = Duration::from_secs(15);
        let asked_at = Instant::now();
        let fence = Fence::new(1, lease, asked_at);
        fence.extend(asked_at, lease);
        let left = fence.time_left().expect("just taken");
        assert!(left > Duration::from_secs(13) && left <= Duration::from_millis(13_500));
        // The machine slept 20 s: the monotonic clock did not count them, the wall clock did.
        let slept = Fence {
            origin_wall: fence.origin_wall - Duration::from_secs(20),
            ..Fence::new(1, lease, asked_at)
        };
        slept.extend(asked_at, lease);
        assert_eq!(slept.time_left(), None, "still ours after a suspend");
        assert!(!slept.holds());
    }
}
