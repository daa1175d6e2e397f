//! A key for the wrong workspace (#21): for 1 to 3 steps the sandbox answers as another
//! workspace (every home id 404, lists empty), then the key points home again.
//!
//! While it does, after every cycle (killed or not): no record linked when the window opened
//! lost its Quo id or changed it, and none of those contacts was deleted at home or appeared
//! in the other workspace; every cycle that finished with linked records to scan refused to act
//! on the absences it saw (`mass_delete_refused`: the fraction guard or the read-back sample),
//! even when the operator had allowed mass deletion. Records the CRM deleted or that left
//! scope in the window are exempt from "still linked" (their link may go as asked), not from
//! "never deleted at home". A record first created in the window is created where the key
//! points (the sync cannot tell a new workspace from its own before it has anything linked
//! there to read back): after the window it is created at home, so the end invariants check
//! one contact per record at home only. After the window the run converges as usual.

use std::collections::BTreeMap;

use quo_sync::sync::{CycleReport, SyncError};
use rand::Rng;

use super::world::World;
use crate::trace;

/// The window: steps left, and the links and contacts it must not lose.
#[derive(Debug, Default)]
pub struct Foreign {
    /// Steps the key still points at the other workspace (0: home).
    steps_left: u32,
    /// Records linked when the window opened, and their Quo ids.
    linked: BTreeMap<String, String>,
    /// Windows opened, and cycles finished inside one (each had to refuse).
    pub windows: u32,
    pub cycles: u32,
}

impl Foreign {
    pub fn on(&self) -> bool {
        self.steps_left > 0
    }
}

impl World {
    /// At a step's start: closes a window whose steps ran out, or (after a cycle completed,
    /// with probability 0.08) opens one for 1 to 3 steps.
    pub async fn foreign_step(&mut self) {
        if self.foreign.on() {
            self.foreign.steps_left -= 1;
            if !self.foreign.on() {
                self.foreign_off();
            }
            return;
        }
        if self.counted.cycles == 0 || !self.rng.random_bool(0.08) {
            return;
        }
        let steps = self.rng.random_range(1..=3);
        let mut linked = BTreeMap::new();
        for r in self.crm_rows() {
            if let Some(quo_id) = self.linked_to(&r[0]).await
                && self.app.sandbox.contact(&quo_id).is_some()
            {
                linked.insert(r[0].clone(), quo_id);
            }
        }
        // With nothing linked there is nothing to read back: the key cannot be told from ours
        // (records held on day one would be created there). A known limitation, not drawn.
        if linked.is_empty() {
            return;
        }
        trace(|| {
            format!(
                "key points at another workspace for {steps} step(s); {} linked",
                linked.len()
            )
        });
        self.foreign = Foreign {
            steps_left: steps,
            linked,
            windows: self.foreign.windows + 1,
            cycles: self.foreign.cycles,
        };
        // An operator who sees `workspace_unconfirmed` vouches for no absence: an allowance
        // given before the key moved is withdrawn (it would vouch for every contact gone).
        self.allow_mass_delete_once = false;
        self.app.sandbox.set_foreign_workspace(true);
    }

    /// The key points home again.
    pub fn foreign_off(&mut self) {
        self.foreign.steps_left = 0;
        self.app.sandbox.set_foreign_workspace(false);
        trace(|| "key points home again".into());
    }

    async fn linked_to(&self, id: &str) -> Option<String> {
        self.app
            .ledger()
            .record(&quo_sync::domain::ExternalId::parse(id).unwrap())
            .await
            .unwrap()
            .and_then(|r| r.quo_id)
            .map(|q| q.as_str().to_string())
    }

    /// After a cycle in the window (`outcome` `None` when it was killed).
    pub async fn foreign_after(&mut self, outcome: Option<&Result<CycleReport, SyncError>>) {
        if !self.foreign.on() {
            return;
        }
        let rows: BTreeMap<String, Vec<String>> = self
            .crm_rows()
            .into_iter()
            .map(|r| (r[0].clone(), r))
            .collect();
        let foreign = self.app.sandbox.foreign_contacts();
        for (id, quo_id) in &self.foreign.linked {
            assert!(
                self.app.sandbox.contact(quo_id).is_some()
                    || self.day_one.deleted_in_quo.contains(quo_id),
                "{id}'s contact {quo_id} was deleted at home while the key pointed at another workspace"
            );
            assert!(
                !foreign.iter().any(|c| c["externalId"] == id.as_str()),
                "{id}, linked to {quo_id}, leaked into the other workspace (which holds {:?})",
                foreign.iter().map(|c| &c["externalId"]).collect::<Vec<_>>()
            );
            let stays = rows.get(id).is_some_and(|r| super::scope::in_scope(r));
            if stays {
                assert_eq!(
                    self.linked_to(id).await.as_deref(),
                    Some(quo_id.as_str()),
                    "{id} lost or changed its link to {quo_id} while the key pointed at another workspace"
                );
            }
        }
        if let Some(Ok(report)) = outcome {
            self.foreign.cycles += 1;
            assert!(
                report.mass_delete_refused,
                "a cycle finished against another workspace without refusing to act on what it could not see: {}",
                super::world::summary(report)
            );
        }
    }
}
