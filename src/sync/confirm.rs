//! Creates wait until two listings agree. Quo's list lags writes (`GET /v1/contacts` can leave
//! out a contact that `GET /v1/contacts/{id}` serves), and the v1 contract offers no other way
//! to find an existing person: no filter by phone, email or name, `externalIds` only for
//! contacts that carry one (people typed in the app carry none), and `totalItems` documented as
//! inaccurate. So a first listing that hid a contact would make its person a second contact on
//! day one.
//!
//! Until a listing has been confirmed ([`WORKSPACE_CONFIRMED`]), the first record of a cycle
//! that the index shows no match for is not created at once: the cycle lists the workspace once
//! more (the scanner's pass, under the scan gate), and the listings agree when the second showed
//! no contact made before the first began that the first had not shown. Then the confirmation
//! is recorded, the record is looked up again and every later one is created as usual; records
//! waiting for the whole read are looked up again too (`refresh_candidates`). When they do not
//! agree, the list was lagging: it lists again, at most [`CONFIRMING_PASSES`] times in the
//! cycle; records with no match after that are held (stage `match`) and evaluated again next
//! cycle, which lists again.
//!
//! Cost: one more listing (one request per 50 contacts), once per ledger, and only in a cycle
//! that has something to create; the read goes on streaming (nothing is held in memory for
//! it). What it cannot promise: a contact that every listing hides (a lag longer than the
//! listings take) is not seen.

use tracing::{info, warn};

use super::matching::{Deferred, Found, Held, record_keys};
use super::{Cycle, SyncError};
use crate::ledger::{WORKSPACE_CONFIRMED, WORKSPACE_LISTED};

/// Listings a cycle makes at most to confirm the first one.
pub(super) const CONFIRMING_PASSES: u32 = 3;

impl Cycle {
    /// Whether two listings agree (module doc): listing the workspace again, once per cycle,
    /// the first time it is asked. `false` when they never agreed (or shutdown cut it short).
    pub(super) async fn listing_agreed(&self) -> Result<bool, SyncError> {
        let agreed = self
            .confirmation
            .get_or_try_init(|| async {
                let Some(index) = self.workspace_index().await? else {
                    return Ok::<_, SyncError>(false);
                };
                if index.confirmed {
                    return Ok(true);
                }
                let ledger = index.ledger.clone();
                // Contacts made before the first complete listing began: a later listing that
                // shows more of them shows what the first one hid.
                let before = ledger
                    .meta(WORKSPACE_LISTED)
                    .await?
                    .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok())
                    .map(|at| {
                        at.with_timezone(&chrono::Utc)
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    });
                info!(
                    event = "workspace_listing_confirming",
                    "listing the workspace again before the first create: Quo's list can lag, and two listings must agree"
                );
                for pass in 1..=CONFIRMING_PASSES {
                    let started = chrono::Utc::now();
                    let known = ledger.workspace_count_made_before(before.as_deref()).await?;
                    {
                        let _pass = self.ctx.scan_gate.lock().await;
                        self.listing_pass(&ledger).await?;
                    }
                    if self.stop.is_cancelled() {
                        return Ok(false); // nothing is created after a shutdown
                    }
                    let shown = ledger.workspace_count_made_before(before.as_deref()).await?;
                    if shown <= known {
                        self.ctx
                            .ledger
                            .set_meta(WORKSPACE_CONFIRMED, &started.to_rfc3339())
                            .await?;
                        info!(
                            event = "workspace_listing_confirmed",
                            passes = pass,
                            "a second listing agrees with the first: records with no match are created"
                        );
                        return Ok(true);
                    }
                    warn!(
                        event = "workspace_listing_lagged",
                        pass,
                        contacts = shown - known,
                        "a listing showed contacts the one before it hid (Quo's list lags); the workspace is listed again"
                    );
                }
                Ok(false)
            })
            .await?;
        Ok(*agreed)
    }

    /// A record with no match before the listing is confirmed: confirms it
    /// ([`Cycle::listing_agreed`]), then looks the record up again in what the confirming
    /// listing showed. The flag: the listings never agreed. `None` after a shutdown.
    pub(super) async fn look_up_confirmed(
        &self,
        index: &crate::ledger::Ledger,
        external_id: &str,
        keys: &[String],
    ) -> Result<Option<(Found, bool)>, SyncError> {
        let agreed = self.listing_agreed().await?;
        if self.stop.is_cancelled() {
            return Ok(None);
        }
        let found = self
            .find_candidates(index, external_id, keys, false)
            .await?;
        Ok(Some((found, !agreed)))
    }

    /// After a confirming listing: looks every waiting record without a decision up again, so
    /// a contact the first listing hid counts among its candidates.
    pub(super) async fn refresh_candidates(
        &self,
        deferred: &mut [Deferred],
    ) -> Result<(), SyncError> {
        let Some(index) = self.workspace_index().await? else {
            return Ok(());
        };
        let index = index.ledger.clone();
        let mode = self.ctx.settings.day_one.match_existing;
        for waiting in deferred
            .iter_mut()
            .filter(|d| d.decided.is_none() && d.own.is_none() && !d.unconfirmed)
        {
            let keys = record_keys(&waiting.snapshot, mode);
            let external_id = waiting.record.external_id.to_string();
            match self
                .find_candidates(&index, &external_id, &keys, false)
                .await?
            {
                Found::Own(contact) => {
                    waiting.own = Some(contact);
                    waiting.candidates.clear();
                }
                Found::Candidates(candidates) => {
                    self.matched_contacts
                        .lock()
                        .await
                        .extend(candidates.iter().map(|c| c.contact.quo_id.clone()));
                    waiting.candidates = candidates;
                }
            }
        }
        Ok(())
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
