//! A leader's permission to write, as its writers (the Quo client, the CRM adapters) see it.
//!
//! A leader that lost its lease must send nothing more: a late write from it lands after a new
//! leader read the other side, looks like an edit made there, and is merged back, reverting a
//! newer change with no conflict recorded. The lease (`ledger::lease`) says how long it is still
//! ours by the local clock; here each write asks it just before it is sent (after any wait for a
//! rate-limit permit), gets a timeout no longer than the lease's write window
//! ([`crate::config::lease_write_window`]), and is not started while less than that is left: a
//! write of ours is over (answered, or abandoned by us) before the lease can pass to anyone else.

use std::sync::Arc;
use std::time::Duration;

/// How long this process may still write; `None`: no longer (lost, expired, or never held).
pub type TimeLeft = Arc<dyn Fn() -> Option<Duration> + Send + Sync>;

/// A leader's write fence: its lease's time left and write window. Cheap to clone.
#[derive(Clone)]
pub struct WriteFence {
    time_left: TimeLeft,
    window: Duration,
}

impl std::fmt::Debug for WriteFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFence")
            .field("time_left", &(self.time_left)())
            .field("window", &self.window)
            .finish()
    }
}

impl WriteFence {
    /// A fence over `time_left`, whose writes get at most `window` each.
    pub fn new(time_left: TimeLeft, window: Duration) -> Self {
        Self { time_left, window }
    }

    /// How long this process may still write.
    pub fn time_left(&self) -> Option<Duration> {
        (self.time_left)()
    }

    /// Whether this process may write at all now.
    pub fn holds(&self) -> bool {
        self.time_left().is_some()
    }

    /// Admits one write whose timeout is configured as `timeout`: returns the timeout it must be
    /// sent with (capped at the write window and at the time left), once at least that much is
    /// left (a late renewal is waited for), or `None` when the lease runs out first: the write
    /// must not be sent.
    pub async fn admit(&self, timeout: Duration) -> Option<Duration> {
        let wanted = timeout.min(self.window);
        loop {
            let left = self.time_left()?;
            if left >= wanted {
                return Some(wanted.min(left));
            }
            // A renewal is late: wait for it, or for the lease to run out.
            tokio::time::sleep(left.clamp(Duration::from_millis(1), Duration::from_millis(20)))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn fence_until(deadline: Instant, window: Duration) -> WriteFence {
        WriteFence::new(
            Arc::new(move || deadline.checked_duration_since(Instant::now())),
            window,
        )
    }

    #[tokio::test]
    async fn a_write_gets_the_window_at_most_and_none_once_too_little_is_left() {
        let fence = fence_until(
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(5),
        );
        assert_eq!(
            fence.admit(Duration::from_secs(30)).await,
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            fence.admit(Duration::from_millis(200)).await,
            Some(Duration::from_millis(200))
        );
        // 150 ms left, a write needs 1 s: no renewal comes, so it is never sent.
        let fence = fence_until(
            Instant::now() + Duration::from_millis(150),
            Duration::from_secs(1),
        );
        let started = Instant::now();
        assert_eq!(fence.admit(Duration::from_secs(30)).await, None);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
