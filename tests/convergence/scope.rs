//! Scope (#27): a `sync.filter` over `vip`, a field the random CRM edits toggle (and Quo edits
//! write back), so records move in and out of scope during the chaos; seeds rotate
//! `sync.on_leave_scope` across `keep`, `unlink` and `delete`.
//!
//! The test judges scope itself ([`in_scope`], written apart from the product's filter, so a
//! filter that admits everything cannot also blind the check). Around every cycle, killed or
//! not ([`ScopeWatch`]), for each record out of scope in the CSV that cycle reads:
//! - no contact is created for it (no Quo id appears for its externalId);
//! - its contacts are not updated (their managed values are as before), only deleted by
//!   `delete` (or as a twin);
//! - nothing is written to its CRM row (a Quo edit to it is not written back);
//! - after a cycle that finished, a record that was linked is kept (same Quo id), unlinked (the
//!   contact stays) or deleted, as configured; a deletion the guard refused leaves it linked.
//!
//! And for each record back in scope that left with a contact still in Quo: it is linked again
//! to that contact, never to a new one, and gains no contact. After the quiet cycles
//! ([`check`]): an out-of-scope record holds at most one contact; under `keep` the ledger still
//! links it, under `unlink` it links nothing, under `delete` it has no contact. In-scope records
//! get every other invariant; a contact the sync deleted when its record left scope took its
//! Quo-only values with it (logged as a deletion in Quo).

use std::collections::{BTreeMap, BTreeSet};

use quo_sync::domain::ExternalId;
use quo_sync::ledger::RecordState;
use quo_sync::sync::{CycleReport, SyncError};
use serde_json::Value;

use super::model::{Field, Side};
use super::world::World;
use crate::trace;

/// `sync.filter`: a record is in scope unless its `vip` cell says no (a blank one is in).
pub const FILTER: &str =
    r#"!(record.vip.trim().lowerAscii() in ["no", "false", "n", "0", "off", "f"])"#;

/// The `sync.on_leave_scope` values seeds rotate through.
pub const ON_LEAVE: [&str; 3] = ["keep", "unlink", "delete"];

/// The test's own judgement of [`FILTER`] on a CSV row.
pub fn in_scope(row: &[String]) -> bool {
    !matches!(
        row[Field::Vip.column()]
            .trim()
            .to_ascii_lowercase()
            .as_str(),
        "no" | "false" | "n" | "0" | "off" | "f"
    )
}

/// What a seed's scope did, for the invariants.
#[derive(Debug, Default)]
pub struct Scope {
    /// `sync.on_leave_scope` for this seed.
    pub on_leave: &'static str,
    /// Records that left scope with a contact the sync kept (or unlinked and remembers), by
    /// the contact's Quo id: back in scope, they must link it again.
    left_with: BTreeMap<String, String>,
    /// Contacts the sync deleted when their record left scope.
    pub deleted: BTreeSet<String>,
    /// Records deleted in the CRM while out of scope (or left and not yet relinked): under
    /// `keep` and `unlink` their contact may stay (the sync no longer managed it), or go (the
    /// sync never saw them out).
    pub deleted_out_of_scope: BTreeSet<String>,
    /// How often a record left scope, came back, and was relinked to its contact; cycles whose
    /// deletions of records that left scope the guard refused.
    pub left: u64,
    pub returned: u64,
    pub relinked: u64,
    pub refused: u64,
}

impl Scope {
    /// Whether `id` left scope with a contact and has not been seen linked to it again.
    pub fn left_pending(&self, id: &str) -> bool {
        self.left_with.contains_key(id)
    }
}

/// What the world held before a cycle, for [`World::scope_after`].
pub struct ScopeWatch {
    /// Rows out of scope in the CSV the cycle reads.
    out: BTreeMap<String, Vec<String>>,
    /// Rows in scope that left with a contact, and how many contacts they have.
    back: BTreeMap<String, usize>,
    /// Each out-of-scope record's contacts: Quo id -> managed values.
    contacts: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>>,
    /// Each out-of-scope record's ledger link and state.
    linked: BTreeMap<String, (Option<String>, Option<RecordState>)>,
}

impl World {
    /// The ledger's link and state for `id`.
    async fn link_of(&self, id: &str) -> (Option<String>, Option<RecordState>) {
        let row = self
            .app
            .ledger()
            .record(&ExternalId::parse(id).unwrap())
            .await
            .unwrap();
        (
            row.as_ref()
                .and_then(|r| r.quo_id.as_ref())
                .map(|q| q.as_str().to_string()),
            row.map(|r| r.state),
        )
    }

    /// Notes what a cycle over `rows` (the CSV it reads) must leave alone.
    pub async fn scope_before(&self, rows: &[Vec<String>]) -> ScopeWatch {
        let by_record = self.contacts_by_record();
        let mut watch = ScopeWatch {
            out: BTreeMap::new(),
            back: BTreeMap::new(),
            contacts: BTreeMap::new(),
            linked: BTreeMap::new(),
        };
        for row in rows {
            let id = &row[0];
            let contacts = by_record.get(id).cloned().unwrap_or_default();
            if in_scope(row) {
                if self.scope.left_with.contains_key(id) {
                    watch.back.insert(id.clone(), contacts.len());
                }
                continue;
            }
            watch.out.insert(id.clone(), row.clone());
            watch.contacts.insert(
                id.clone(),
                contacts
                    .iter()
                    .map(|c| (c["id"].as_str().unwrap().to_string(), self.quo_fields(c)))
                    .collect(),
            );
            watch.linked.insert(id.clone(), self.link_of(id).await);
        }
        watch
    }

    /// Checks a cycle against what it must have left alone (`outcome` is `None` for a cycle
    /// that was killed).
    pub async fn scope_after(
        &mut self,
        watch: ScopeWatch,
        outcome: Option<&Result<CycleReport, SyncError>>,
    ) {
        let by_record = self.contacts_by_record();
        let rows: BTreeMap<String, Vec<String>> = self
            .crm_rows()
            .into_iter()
            .map(|r| (r[0].clone(), r))
            .collect();
        let refused = matches!(outcome, Some(Ok(r)) if r.mass_delete_refused);
        let finished = matches!(outcome, Some(Ok(_)));
        for (id, before) in &watch.out {
            let fields = |r: &Vec<String>| r[1..super::model::UPDATED_AT].to_vec();
            if let Some(now) = rows.get(id) {
                assert_eq!(
                    fields(now),
                    fields(before),
                    "{id} is out of scope, yet its CRM row was written (a Quo edit written back?)"
                );
            }
            let had = &watch.contacts[id];
            let now: BTreeMap<String, BTreeMap<String, Value>> = by_record
                .get(id)
                .into_iter()
                .flatten()
                .map(|c| (c["id"].as_str().unwrap().to_string(), self.quo_fields(c)))
                .collect();
            for (quo_id, values) in &now {
                let Some(was) = had.get(quo_id) else {
                    panic!(
                        "{id} is out of scope ({}), yet contact {quo_id} was created for it",
                        before[Field::Vip.column()]
                    );
                };
                assert_eq!(
                    values, was,
                    "{id} is out of scope, yet its contact {quo_id} was updated"
                );
            }
            let (link, state) = &watch.linked[id];
            let Some(quo_id) = link.clone().filter(|q| had.contains_key(q)) else {
                continue;
            };
            let gone = !now.contains_key(&quo_id);
            if gone {
                // The sync deleted it (a twin's removal keeps the linked one): what was typed
                // only in Quo went with it.
                self.scope.deleted.insert(quo_id.clone());
                let crm = self.crm_fields(before);
                self.log.deleted_in_quo(id, &crm);
                trace(|| format!("scope: {id}'s contact {quo_id} deleted"));
            }
            if *state != Some(RecordState::Synced) {
                continue;
            }
            let (link_now, state_now) = self.link_of(id).await;
            if !gone && state_now == Some(RecordState::LeftScope) {
                // Kept or unlinked (a killed cycle's too): back in scope, it links this again.
                self.scope.left_with.insert(id.clone(), quo_id.clone());
            }
            if !finished {
                continue;
            }
            self.scope.left += 1;
            match self.scope.on_leave {
                "delete" if refused && !gone => {
                    self.scope.refused += 1;
                    assert_eq!(
                        link_now.as_deref(),
                        Some(quo_id.as_str()),
                        "{id}: the guard refused its deletion, yet it is not linked"
                    );
                }
                "delete" => {
                    assert!(
                        gone,
                        "{id} left scope under delete, its contact {quo_id} stays"
                    );
                    assert_eq!(link_now, None, "{id} left scope under delete, still linked");
                }
                policy => {
                    assert!(
                        !gone,
                        "{id} left scope under {policy}, its contact was deleted"
                    );
                    let expect = (policy == "keep").then_some(quo_id.as_str());
                    assert_eq!(
                        link_now.as_deref(),
                        expect,
                        "{id} left scope under {policy}: link (state {state_now:?})"
                    );
                }
            }
        }
        for (id, count) in &watch.back {
            let quo_id = self.scope.left_with[id].clone();
            if self.app.sandbox.contact(&quo_id).is_none() {
                // A person deleted it meanwhile: it comes back as any contact deleted in Quo.
                self.scope.left_with.remove(id);
                continue;
            }
            let now = self.app.sandbox.count_by_external_id(id);
            assert!(
                now <= *count,
                "{id} came back into scope with contact {quo_id} in Quo, and gained one ({count} -> {now})"
            );
            let (link, state) = self.link_of(id).await;
            assert!(
                link.is_none() || link.as_deref() == Some(quo_id.as_str()),
                "{id} came back into scope linked to {link:?}, not to its contact {quo_id}"
            );
            if link.is_some() && state == Some(RecordState::Synced) {
                trace(|| format!("scope: {id} relinked to {quo_id}"));
                self.scope.relinked += 1;
                self.scope.left_with.remove(id);
                // Its return sends the CRM's values: what was typed in Quo while it was out of
                // scope is overwritten, not merged (docs/filters.md).
                if let Some(row) = rows.get(id) {
                    for (field, value) in self.crm_fields(row) {
                        self.log.put(id, &field, Side::Crm, value);
                    }
                }
            }
        }
        self.scope.returned += watch.back.len() as u64;
    }
}

/// After the quiet cycles: each out-of-scope record's contact is as `sync.on_leave_scope` says.
pub async fn check(world: &World, out: &[Vec<String>]) {
    for row in out {
        let id = &row[0];
        let contacts = world.app.sandbox.count_by_external_id(id);
        let (link, state) = world.link_of(id).await;
        let context =
            || format!("{id} out of scope: {contacts} contact(s), link {link:?}, state {state:?}");
        assert!(contacts <= 1, "{}", context());
        match world.scope.on_leave {
            "delete" => assert_eq!(contacts, 0, "{}", context()),
            "unlink" => assert_eq!(link, None, "{}", context()),
            _ if contacts == 1 => {
                let quo_id = world.contacts_by_record()[id][0]["id"].clone();
                assert_eq!(link.as_deref(), quo_id.as_str(), "{}", context());
            }
            _ => {}
        }
    }
}
