//! What each record looked like when this process last read it, so write-back can tell whether
//! the CRM changed the record since (issue 9 item 8) and refuse to overwrite that edit.
//!
//! Kept in memory, per record: the last-modified time and a hash of the read fields (not the
//! fields themselves, so memory stays small for large CRMs). A record with no baseline (never
//! read by this process, or just written by it) is written without the check, as before.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::source::SourceRecord;

/// The state of one record as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadVersion {
    updated_at: Option<DateTime<Utc>>,
    fields_hash: u64,
}

impl ReadVersion {
    /// The version of a parsed record.
    pub(super) fn of(record: &SourceRecord) -> Self {
        let mut hasher = DefaultHasher::new();
        record.fields.hash(&mut hasher);
        Self {
            updated_at: record.updated_at,
            fields_hash: hasher.finish(),
        }
    }
}

/// Baselines by external id.
#[derive(Debug, Default)]
pub(super) struct ReadVersions(Mutex<HashMap<String, ReadVersion>>);

impl ReadVersions {
    /// Remembers the version just read.
    pub(super) fn record(&self, record: &SourceRecord) {
        self.lock().insert(
            record.external_id.as_str().to_string(),
            ReadVersion::of(record),
        );
    }

    /// The version last read, if any.
    pub(super) fn get(&self, id: &str) -> Option<ReadVersion> {
        self.lock().get(id).copied()
    }

    /// Forgets the baseline (after our own write changed the record).
    pub(super) fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ReadVersion>> {
        // A panic elsewhere while holding the lock leaves a plain map: still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
