//! What a running cycle has done so far, for whoever shows it (a progress bar on a terminal, a
//! periodic log line in a service): records read, writes planned and writes Quo confirmed, pages
//! of a scan, and the rows held back with their field and value. The cycle only counts; it
//! neither draws nor logs here, so the JSON log is the same whether anyone watches or not.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Held-back rows kept with their details; past this only the count grows (a display lists a
/// few, and `quo-sync quarantine list` has them all).
pub const HELD_BACK_KEPT: usize = 100;

/// Where a cycle stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CyclePhase {
    /// Not started (or between cycles).
    Idle,
    /// Intake: webhook events and, when due, a scan of Quo.
    Intake,
    /// Reading the source and dispatching work as it is planned.
    Reading,
    /// The source is read; writes still in flight and the settle phase.
    Settling,
}

/// A quarantined row as the operator should see it: where, which field, which value, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBack {
    /// Where the row was read (`contacts.csv line 18`).
    pub location: String,
    /// Its id, when one could be read.
    pub external_id: Option<String>,
    /// The field to blame, when one is.
    pub field: Option<String>,
    /// Its value.
    pub value: Option<String>,
    /// Why.
    pub reason: String,
}

/// The kinds of write a cycle sends Quo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// POST.
    Create,
    /// PATCH.
    Update,
    /// DELETE.
    Delete,
}

/// Counters of one cycle, shared with the displays (reset when a cycle starts).
#[derive(Debug, Default)]
pub struct CycleProgress {
    phase: AtomicU8,
    records_read: AtomicU64,
    planned: [AtomicU64; 3],
    confirmed: [AtomicU64; 3],
    pages_scanned: AtomicU64,
    held_back: Mutex<Vec<HeldBack>>,
    held_total: AtomicU64,
    /// Creates dispatched that adopt a contact already in Quo (counted in `planned` too).
    adopting: AtomicU64,
    /// Records held before create (day one), with the contacts they match.
    held_matches: Mutex<Vec<HeldBack>>,
    /// What the read decided, once every record's fate is known.
    decided: Mutex<Option<ReadTally>>,
}

/// What a cycle's read decided about the records it sends no write for, published once the
/// matches are decided (the read line says it; before, a display cannot tell).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadTally {
    /// Records that need no write.
    pub unchanged: u64,
    /// Records outside `sync.filter` (including those that left it this cycle).
    pub out_of_scope: u64,
    /// Records `sync.mode` skips (`update_only`'s unlinked records).
    pub skipped_by_mode: u64,
    /// Records held before create: they match contacts already in Quo that cannot be chosen
    /// without guessing.
    pub held: u64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Where the cycle stands.
    pub phase: Option<CyclePhase>,
    /// Source rows read (readable or not).
    pub records_read: u64,
    /// Writes dispatched: creates, updates, deletes.
    pub planned: [u64; 3],
    /// Writes Quo confirmed (and the ledger committed): creates, updates, deletes.
    pub confirmed: [u64; 3],
    /// Pages of Quo listed by a scan in this cycle.
    pub pages_scanned: u64,
    /// Rows held back so far.
    pub held_back: u64,
    /// Creates that adopt a contact already in Quo (counted in `planned[0]` too).
    pub adopting: u64,
    /// What the read decided, once known.
    pub decided: Option<ReadTally>,
}

impl ProgressSnapshot {
    /// Writes dispatched, all kinds.
    pub fn planned_writes(&self) -> u64 {
        self.planned.iter().sum()
    }

    /// Writes confirmed, all kinds.
    pub fn confirmed_writes(&self) -> u64 {
        self.confirmed.iter().sum()
    }
}

impl WriteKind {
    fn index(self) -> usize {
        match self {
            WriteKind::Create => 0,
            WriteKind::Update => 1,
            WriteKind::Delete => 2,
        }
    }
}

const PHASES: [CyclePhase; 4] = [
    CyclePhase::Idle,
    CyclePhase::Intake,
    CyclePhase::Reading,
    CyclePhase::Settling,
];

impl CycleProgress {
    /// Zeroes every counter for a new cycle.
    pub fn reset(&self) {
        self.phase.store(0, Ordering::Relaxed);
        self.records_read.store(0, Ordering::Relaxed);
        self.pages_scanned.store(0, Ordering::Relaxed);
        self.held_total.store(0, Ordering::Relaxed);
        for counter in self.planned.iter().chain(self.confirmed.iter()) {
            counter.store(0, Ordering::Relaxed);
        }
        self.adopting.store(0, Ordering::Relaxed);
        self.lock_held().clear();
        lock(&self.held_matches).clear();
        *lock(&self.decided) = None;
    }

    /// A create that adopts a contact already in Quo was dispatched.
    pub fn adopting(&self) {
        self.adopting.fetch_add(1, Ordering::Relaxed);
    }

    /// A record was held before create (day one's matching).
    pub fn held_match(&self, row: HeldBack) {
        let mut kept = lock(&self.held_matches);
        if kept.len() < HELD_BACK_KEPT {
            kept.push(row);
        }
    }

    /// The first [`HELD_BACK_KEPT`] records held before create this cycle.
    pub fn held_matches(&self) -> Vec<HeldBack> {
        lock(&self.held_matches).clone()
    }

    /// The read's decisions are all taken (matches included).
    pub fn decided(&self, tally: ReadTally) {
        *lock(&self.decided) = Some(tally);
    }

    /// The cycle moved on.
    pub fn enter(&self, phase: CyclePhase) {
        let index = PHASES.iter().position(|p| *p == phase).unwrap_or(0);
        self.phase.store(index as u8, Ordering::Relaxed);
    }

    /// `n` more source rows read.
    pub fn read(&self, n: u64) {
        self.records_read.fetch_add(n, Ordering::Relaxed);
    }

    /// Source rows read so far.
    pub fn records_read(&self) -> u64 {
        self.records_read.load(Ordering::Relaxed)
    }

    /// A write was dispatched.
    pub fn planned(&self, kind: WriteKind) {
        self.planned[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Quo confirmed a write and the ledger committed it.
    pub fn confirmed(&self, kind: WriteKind) {
        self.confirmed[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A scan listed one more page.
    pub fn page_scanned(&self) {
        self.pages_scanned.fetch_add(1, Ordering::Relaxed);
    }

    /// A row was quarantined.
    pub fn held(&self, row: HeldBack) {
        self.held_total.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.lock_held();
        if kept.len() < HELD_BACK_KEPT {
            kept.push(row);
        }
    }

    /// The first [`HELD_BACK_KEPT`] rows held back so far, in the order they were quarantined
    /// (`snapshot().held_back` counts them all).
    pub fn held_back(&self) -> Vec<HeldBack> {
        self.lock_held().clone()
    }

    /// The counters now.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let load = |c: &[AtomicU64; 3]| {
            [
                c[0].load(Ordering::Relaxed),
                c[1].load(Ordering::Relaxed),
                c[2].load(Ordering::Relaxed),
            ]
        };
        ProgressSnapshot {
            phase: PHASES
                .get(self.phase.load(Ordering::Relaxed) as usize)
                .copied(),
            records_read: self.records_read.load(Ordering::Relaxed),
            planned: load(&self.planned),
            confirmed: load(&self.confirmed),
            pages_scanned: self.pages_scanned.load(Ordering::Relaxed),
            held_back: self.held_total.load(Ordering::Relaxed),
            adopting: self.adopting.load(Ordering::Relaxed),
            decided: *lock(&self.decided),
        }
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, Vec<HeldBack>> {
        lock(&self.held_back)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_planned_and_confirmed_writes_apart_and_resets() {
        let progress = CycleProgress::default();
        progress.enter(CyclePhase::Reading);
        progress.read(27);
        for _ in 0..23 {
            progress.planned(WriteKind::Create);
        }
        progress.confirmed(WriteKind::Create);
        progress.held(HeldBack {
            location: "line 18".into(),
            external_id: Some("C-1017".into()),
            field: Some("phone".into()),
            value: Some("555-CALL-NOW".into()),
            reason: "not a valid phone number".into(),
        });
        let now = progress.snapshot();
        assert_eq!(now.phase, Some(CyclePhase::Reading));
        assert_eq!((now.planned_writes(), now.confirmed_writes()), (23, 1));
        assert_eq!((now.records_read, now.held_back), (27, 1));
        for _ in 0..HELD_BACK_KEPT + 5 {
            progress.held(progress.held_back()[0].clone());
        }
        assert_eq!(
            progress.held_back().len(),
            HELD_BACK_KEPT,
            "details of the first few"
        );
        assert_eq!(
            progress.snapshot().held_back,
            HELD_BACK_KEPT as u64 + 6,
            "all counted"
        );
        progress.reset();
        assert_eq!(
            progress.snapshot(),
            ProgressSnapshot {
                phase: Some(CyclePhase::Idle),
                ..ProgressSnapshot::default()
            }
        );
    }
}
