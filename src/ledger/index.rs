//! The ledger index: every record's external id with the little the planner needs to skip an
//! unchanged row (fingerprint digest, state, linked or not), held in memory for one cycle.
//!
//! It is the only memory that grows with the CRM, so it is laid out flat: the ids live end to
//! end in one string, the entries in one vector, and a hash table maps an id to its entry's
//! position. A million records cost about 50 MB and three allocations, where a map of `String`
//! keys cost 120 MB, a million allocations, and a cache miss more per lookup.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::records::RecordState;

/// The compact per-record view the planner keeps in memory for a whole cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// A 64-bit digest of the stored source fingerprint (0 = none).
    pub fingerprint: u64,
    /// The row's state.
    pub state: RecordState,
    /// Whether a Quo id is stored.
    pub has_quo_id: bool,
    /// Set when the current read has seen the record.
    pub seen: bool,
}

/// One entry and where its id sits in `LedgerIndex::ids`.
struct Slot {
    start: usize,
    len: u32,
    entry: IndexEntry,
}

/// The in-memory index: external id → [`IndexEntry`].
pub struct LedgerIndex {
    ids: String,
    slots: Vec<Slot>,
    /// Positions in `slots`, keyed by the id's hash.
    table: HashTable<u32>,
    /// Seeded per process, so no CRM can choose ids that collide on purpose.
    keys: foldhash::fast::RandomState,
}

impl Default for LedgerIndex {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl std::fmt::Debug for LedgerIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerIndex")
            .field("records", &self.len())
            .finish()
    }
}

impl LedgerIndex {
    /// An empty index with room for `records` entries.
    pub fn with_capacity(records: usize) -> Self {
        Self {
            // Ids average well under 16 bytes; the string grows if they do not.
            ids: String::with_capacity(records * 12),
            slots: Vec::with_capacity(records),
            table: HashTable::with_capacity(records),
            keys: foldhash::fast::RandomState::default(),
        }
    }

    /// How many records the index holds.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the index holds no record.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn id_of<'a>(ids: &'a str, slot: &Slot) -> &'a str {
        &ids[slot.start..slot.start + slot.len as usize]
    }

    fn position(&self, external_id: &str) -> Option<usize> {
        let hash = self.keys.hash_one(external_id);
        self.table
            .find(hash, |&at| {
                Self::id_of(&self.ids, &self.slots[at as usize]) == external_id
            })
            .map(|&at| at as usize)
    }

    /// The entry of `external_id`.
    pub fn get(&self, external_id: &str) -> Option<&IndexEntry> {
        self.position(external_id).map(|at| &self.slots[at].entry)
    }

    /// The entry of `external_id`, to mark it seen.
    pub fn get_mut(&mut self, external_id: &str) -> Option<&mut IndexEntry> {
        self.position(external_id)
            .map(move |at| &mut self.slots[at].entry)
    }

    /// Sets the entry of `external_id`, adding the id when it is new (one probe either way).
    pub fn insert(&mut self, external_id: &str, entry: IndexEntry) {
        let hash = self.keys.hash_one(external_id);
        let (ids, slots, keys) = (&self.ids, &mut self.slots, &self.keys);
        match self.table.entry(
            hash,
            |&at| Self::id_of(ids, &slots[at as usize]) == external_id,
            |&at| keys.hash_one(Self::id_of(ids, &slots[at as usize])),
        ) {
            hashbrown::hash_table::Entry::Occupied(found) => {
                slots[*found.get() as usize].entry = entry;
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                let at = u32::try_from(slots.len()).expect("fewer than 4 billion records");
                let len = u32::try_from(external_id.len()).expect("external ids are short");
                slot.insert(at);
                let start = self.ids.len();
                self.ids.push_str(external_id);
                self.slots.push(Slot { start, len, entry });
            }
        }
    }

    /// Every record: (external id, entry), in load order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &IndexEntry)> {
        self.slots
            .iter()
            .map(|slot| (Self::id_of(&self.ids, slot), &slot.entry))
    }

    /// Every record's entry.
    pub fn values(&self) -> impl Iterator<Item = &IndexEntry> {
        self.slots.iter().map(|slot| &slot.entry)
    }
}

impl std::ops::Index<&str> for LedgerIndex {
    type Output = IndexEntry;

    /// The entry of an id known to be there; panics otherwise, as `HashMap` does.
    fn index(&self, external_id: &str) -> &IndexEntry {
        self.get(external_id)
            .unwrap_or_else(|| panic!("{external_id:?} is not in the ledger index"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fingerprint: u64) -> IndexEntry {
        IndexEntry {
            fingerprint,
            state: RecordState::Synced,
            has_quo_id: true,
            seen: false,
        }
    }

    #[test]
    fn finds_updates_and_lists_what_was_inserted() {
        let mut index = LedgerIndex::with_capacity(2);
        // More than the capacity, so the table grows and rehashes from the stored ids.
        for n in 0..1000u64 {
            index.insert(&format!("crm-{n}"), entry(n + 1));
        }
        index.insert("é-unicode", entry(7));
        assert_eq!(index.len(), 1001);
        assert_eq!(index.get("crm-999").map(|e| e.fingerprint), Some(1000));
        assert_eq!(index.get("crm-1000"), None);
        assert_eq!(index.get("é-unicode").map(|e| e.fingerprint), Some(7));
        index.get_mut("crm-5").expect("present").seen = true;
        index.insert("crm-6", entry(99));
        assert_eq!(index.len(), 1001, "an update adds nothing");
        assert_eq!(index.get("crm-6").map(|e| e.fingerprint), Some(99));
        let seen: Vec<&str> = index
            .iter()
            .filter(|(_, e)| e.seen)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(seen, ["crm-5"]);
        assert_eq!(index.values().count(), 1001);
    }
}
