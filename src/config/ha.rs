//! `[ha]`: the writer lease that lets one process of many write a ledger, and the write window
//! it leaves (which the configured timeouts must fit).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HumanDuration;

/// `[ha]`: the writer lease that lets exactly one process write a ledger.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// How long a lease lasts unless renewed (renewed every third of it); a standby takes over
    /// at most this long (plus one poll) after the leader dies. Default `15s`.
    pub lease: HumanDuration,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            lease: HumanDuration(Duration::from_secs(15)),
        }
    }
}

impl HaConfig {
    /// How often a standby (or a waiting one-shot command) asks for the lease.
    pub fn poll_interval(&self) -> Duration {
        (self.lease.0 / 3).min(Duration::from_secs(1))
    }
}

/// The least time a held lease of length `lease` has left whenever its renewals (every third of
/// it) are on time, before the safety margin (a tenth) at its end: 17/30 of it. A leader's write
/// timeouts are capped at it, and a write starts only when that much is left, so no write of a
/// leader is still in flight when its lease can have passed to another process.
pub fn lease_write_window(lease: Duration) -> Duration {
    lease.saturating_sub(lease / 3).saturating_sub(lease / 10)
}

/// The shortest write timeout a lease must leave room for (or the configured timeout, when
/// shorter): below it a write is cut short before Quo or the CRM can answer.
pub const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
