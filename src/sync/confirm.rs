//! Creates wait until two listings agree. Quo's list lags writes (`GET /v1/contacts` can leave
//! out a contact that `GET /v1/contacts/{id}` serves), and the v1 contract offers no other way
//! to find an existing person: no filter by phone, email or name, `externalIds` only for
//! contacts that carry one (people typed in the app carry none), and `totalItems` documented as
//! inaccurate. So a first listing that hid a contact would make its person a second contact on
//! day one.
//!
//! Until a listing has been confirmed ([`WORKSPACE_CONFIRMED`]), a record with no candidate in
//! the index is not created during the read: it waits with the records that have matches. If
//! any waits so, the cycle lists the workspace once more (the scanner's pass, under the scan
//! gate), then looks every waiting record up again. When no waiting record's candidates
//! changed, the two listings agree: the confirmation is recorded and the cycle goes on
//! (records with no candidate are created, the others decided as usual with what the second
//! listing showed). When some changed, the list was lagging: it lists again, at most
//! [`CONFIRMING_PASSES`] times in the cycle; records still without a candidate after that are
//! held (stage `match`) and evaluated again next cycle, which lists again.
//!
//! Cost: one more listing (one request per 50 contacts), once per ledger, and only in a cycle
//! that has something to create. What it cannot promise: a contact that every listing of the
//! cycle hides (a lag longer than the listings take) is not seen.

use tracing::{info, warn};

use super::matching::{Deferred, Found, Held, record_keys};
use super::{Cycle, SyncError};
use crate::ledger::WORKSPACE_CONFIRMED;

/// Listings a cycle makes at most to confirm the first one.
pub(super) const CONFIRMING_PASSES: u32 = 3;

impl Cycle {
    /// Lists the workspace again until a listing agrees with the index for every waiting
    /// record (module doc), refreshing `deferred`'s candidates from each listing. Records left
    /// without a candidate when the listings never agreed are marked `unconfirmed`.
    pub(super) async fn confirm_listing(&self, deferred: &mut [Deferred]) -> Result<(), SyncError> {
        let Some(index) = self.workspace_index().await? else {
            return Ok(());
        };
        if index.confirmed {
            return Ok(());
        }
        let index = index.ledger.clone();
        info!(
            event = "workspace_listing_confirming",
            records = deferred.iter().filter(|d| d.would_create()).count(),
            "listing the workspace again before the first creates: Quo's list can lag, and two listings must agree"
        );
        for pass in 1..=CONFIRMING_PASSES {
            let started = chrono::Utc::now();
            {
                let _pass = self.ctx.scan_gate.lock().await;
                self.listing_pass(&index).await?;
            }
            if self.stop.is_cancelled() {
                return Ok(()); // nothing is decided after a shutdown
            }
            let changed = self.look_up_again(&index, deferred).await?;
            if changed == 0 {
                self.ctx
                    .ledger
                    .set_meta(WORKSPACE_CONFIRMED, &started.to_rfc3339())
                    .await?;
                info!(
                    event = "workspace_listing_confirmed",
                    passes = pass,
                    "a second listing agrees with the index: records with no match are created"
                );
                return Ok(());
            }
            warn!(
                event = "workspace_listing_lagged",
                pass,
                records = changed,
                "a listing showed contacts the one before it hid (Quo's list lags); records they match are decided on them, and the workspace is listed again"
            );
        }
        for waiting in deferred.iter_mut().filter(|d| d.would_create()) {
            waiting.unconfirmed = true;
        }
        Ok(())
    }

    /// Looks every waiting record without a decision up again in `index`; returns how many
    /// found other candidates than before.
    async fn look_up_again(
        &self,
        index: &crate::ledger::Ledger,
        deferred: &mut [Deferred],
    ) -> Result<usize, SyncError> {
        let mode = self.ctx.settings.day_one.match_existing;
        let mut changed = 0;
        for waiting in deferred
            .iter_mut()
            .filter(|d| d.decided.is_none() && d.own.is_none())
        {
            let keys = record_keys(&waiting.snapshot, mode);
            let external_id = waiting.record.external_id.to_string();
            match self
                .find_candidates(index, &external_id, &keys, false)
                .await?
            {
                Found::Own(contact) => {
                    waiting.own = Some(contact);
                    waiting.candidates.clear();
                    changed += 1;
                }
                Found::Candidates(candidates) => {
                    let ids = |c: &[super::matching::Candidate]| {
                        let mut ids: Vec<String> =
                            c.iter().map(|c| c.contact.quo_id.clone()).collect();
                        ids.sort();
                        ids
                    };
                    if ids(&candidates) != ids(&waiting.candidates) {
                        changed += 1;
                        self.matched_contacts
                            .lock()
                            .await
                            .extend(candidates.iter().map(|c| c.contact.quo_id.clone()));
                        waiting.candidates = candidates;
                    }
                }
            }
        }
        Ok(changed)
    }
}

/// Why a record with no candidate is held after listings that never agreed.
pub(super) fn unconfirmed_hold(waiting: &Deferred) -> Held {
    let id = waiting.record.external_id.as_str();
    Held {
        reason: format!(
            "{CONFIRMING_PASSES} listings of the workspace disagreed (Quo's list lags), so whether this person is already in Quo is not known; nothing is created until two listings agree (next cycle), or resolve with `quo-sync link {id} --create`"
        ),
        contacts: Vec::new(),
        field: None,
    }
}
