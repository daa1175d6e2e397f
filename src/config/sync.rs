//! `[sync]` and `[schedule]`: what a cycle may do (deletes, mode, scope, day one) and how often
//! `run` starts one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{HumanDuration, MatchExisting, OnLeaveScope, SyncMode};

/// What to do when a record disappears from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSourceDelete {
    /// Leave the Quo contact alone (default).
    Ignore,
    /// Delete the Quo contact (logged).
    Delete,
}

/// `[sync]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// `ignore` (default) or `delete`.
    pub on_source_delete: OnSourceDelete,
    /// Largest share of the managed contacts (or CRM rows) one cycle may delete, default `0.1`;
    /// above it the cycle deletes nothing and logs `mass_delete_refused`.
    pub max_delete_fraction: f64,
    /// Which records are in scope: an expression over `record` (none: every record).
    pub filter: Option<String>,
    /// `keep` (default), `unlink` or `delete`: a synced record the filter no longer admits.
    pub on_leave_scope: OnLeaveScope,
    /// `upsert` (default), `update_only` or `create_only`.
    pub mode: SyncMode,
    /// Match a new record against the contacts already in the workspace before creating it.
    pub match_existing: MatchExisting,
    /// Sources of other API integrations (e.g. `zapier`) whose contacts may be adopted; contacts
    /// without a source (made in the Quo app) always may.
    pub adopt_sources: Vec<String>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            on_source_delete: OnSourceDelete::Ignore,
            max_delete_fraction: 0.1,
            filter: None,
            on_leave_scope: OnLeaveScope::Keep,
            mode: SyncMode::Upsert,
            match_existing: MatchExisting::PhoneOrEmail,
            adopt_sources: Vec::new(),
        }
    }
}

/// `[schedule]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Time between the start of one cycle and the next, default `5m`.
    pub interval: HumanDuration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            interval: HumanDuration(Duration::from_secs(300)),
        }
    }
}
