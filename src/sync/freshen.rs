//! Phase 4, freshen: a copy of the other side is stale unless it was just read. Before any
//! PATCH, Quo's current copy of the contacts about to be patched is read, up to 50 per
//! `GET /v1/contacts?externalIds=…&sources=…`, so a PATCH body never sends back a value that was
//! not just read from Quo or decided by a merge (quo-api.md decision 5). Where Quo's managed
//! fields moved since the copy the plan used, the record is merged three-way again, with the
//! same policy and conflict records as the reverse path.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{Instrument, info_span, warn};

use super::execute::Failure;
use super::{Cycle, SyncError, Update, WriteBack};
use crate::domain::Snapshot;
use crate::quo::types::Contact;

impl Cycle {
    /// Reads the batch's contacts in one request, then patches each on its fresh copy.
    pub(super) async fn freshen_and_patch(
        self: Arc<Self>,
        batch: Vec<Update>,
        permits: Arc<Semaphore>,
    ) -> Result<(), SyncError> {
        let ids: Vec<&str> = batch
            .iter()
            .map(|u| u.record.external_id.as_str())
            .collect();
        let mut fresh: HashMap<String, Contact> = match self
            .ctx
            .client
            .find_by_external_ids(&ids)
            .await
        {
            Ok(listing) => listing
                .contacts
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect(),
            Err(e) if e.is_fatal() => {
                self.stop.cancel();
                *self.fatal.lock().await = Some(e);
                return Ok(());
            }
            Err(e) => {
                // Each record then reads its own contact by id: one bad answer cannot fail all.
                warn!(event = "freshen_failed", records = batch.len(), error = %e, "batched read failed; reading contacts one by one");
                HashMap::new()
            }
        };
        let mut tasks = JoinSet::new();
        for update in batch {
            if self.stop.is_cancelled() {
                break;
            }
            // Missing from the list answer proves nothing (lists lag): `update` reads it by id.
            let contact = fresh.remove(update.quo_id.as_str());
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let cycle = self.clone();
            let span = info_span!("record", external_id = %update.record.external_id);
            tasks.spawn(
                async move {
                    let _permit = permit;
                    let external_id = update.record.external_id.clone();
                    let location = update.record.location.clone();
                    let updated_at = update.record.updated_at;
                    let outcome = cycle.update(update, contact).await;
                    cycle
                        .settle_failure(outcome, &external_id, &location, updated_at)
                        .await
                }
                .instrument(span),
            );
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("worker panicked")?;
        }
        Ok(())
    }

    /// Decides what to send given Quo's fresh copy: `None` when nothing is to be sent now
    /// (already in agreement, or the CRM must be written first).
    pub(super) async fn reconcile_fresh(
        &self,
        update: &Update,
        fresh: Contact,
    ) -> Result<Option<(Snapshot, Vec<String>, Contact)>, Failure> {
        let quo_now = self.mapper.from_contact(&fresh);
        let seen = match &update.seen {
            Some(contact) => self.mapper.from_contact(contact),
            None => update.base.clone(),
        };
        let mut desired = update.desired.clone();
        let mut changed = update.changed.clone();
        if !quo_now.changed_fields(&seen).is_empty() {
            // Someone edited the contact in Quo since our copy: merge, never overwrite.
            let outcome = self
                .merge_recorded(
                    &update.record.external_id,
                    &update.quo_id,
                    &update.base,
                    &update.crm,
                    &quo_now,
                    update.crm_modified,
                    fresh.updated_at.as_deref(),
                )
                .await?;
            if !outcome.to_crm.is_empty() {
                self.writebacks.lock().await.push(WriteBack {
                    external_id: update.record.external_id.clone(),
                    record: update.read.then(|| update.record.clone()),
                    quo_id: update.quo_id.clone(),
                    contact: fresh,
                    outcome,
                });
                return Ok(None);
            }
            desired = outcome.merged;
            changed = outcome.to_quo;
        }
        if quo_now.changed_fields(&desired).is_empty() {
            // Quo already holds it (the same edit on both sides, or an earlier lost answer).
            self.commit(
                &update.record.external_id,
                &update.quo_id,
                update.fingerprint.as_deref(),
                &desired,
                &fresh,
                update.read.then_some(&update.record),
            )
            .await?;
            self.counts.lock().await.unchanged += 1;
            return Ok(None);
        }
        Ok(Some((desired, changed, fresh)))
    }
}
