//! Settle step: contacts made in the Quo app reach the CRM (`reverse.create_in_crm`).
//!
//! A contact with no `source` (made in the app or by its import), created since the start of
//! this ledger's first completed cycle (or any, with `once --export-existing`), with a phone or
//! an email, that no CRM record matches (no record's contact shares a phone or email with it,
//! and no record of this read matched it), becomes a CRM record: a CSV row with the id `reverse.new_record_id`
//! makes, or a record the REST CRM makes through `[source.rest.create]`. The contact is then
//! adopted for it (our `source`, the new `externalId`), so later edits on either side flow as for
//! any record.
//!
//! Exactly once, under lost answers and kills: the intent is committed (`crm_exports`) before
//! the CRM create. A record a create made is found by the next complete read, by its id (CSV) or
//! by the Quo id it carries in `reverse.quo_id_field` (REST), and adopted like any record whose
//! contact was chosen for it; a create is sent again only when a complete read that started at
//! least `source.rest.create.lookup_window` (10 minutes) after its intent (past any list lag)
//! did not show it. A REST CRM without
//! `reverse.quo_id_field` cannot be searched: a create whose answer was lost is held for the
//! operator rather than risk a second record.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use tracing::{info, warn};

use super::matching::AdoptTarget;
use super::merge_step::parse_time;
use super::{Action, Cycle, Mode, PlannedOp, SyncError};
use crate::domain::{ExternalId, Labeled, Snapshot};
use crate::ledger::{
    AppContactCursor, Export, ExportState, NewQuarantine, QuarantineStage, WorkspaceContact,
};
use crate::source::{Created, NewRecord, SourceError, SourceRecord};

/// Meta key: when this ledger's first cycle with a complete read started; contacts made in the
/// app since are exported.
pub(super) const FIRST_CYCLE: &str = "sync.first_cycle_at";

/// App contacts read per query.
const PAGE: i64 = 500;

impl Cycle {
    /// Makes CRM records from the contacts made in the app that no record matches, and adopts
    /// each for its record. Only after a complete read: only it tells that no record matches.
    pub(super) async fn export_app_contacts(
        &self,
        complete: bool,
        read_started: DateTime<Utc>,
    ) -> Result<(), SyncError> {
        let day_one = &self.ctx.settings.day_one;
        if !day_one.create_in_crm || !complete || self.stop.is_cancelled() {
            return Ok(());
        }
        let since = match (
            self.ctx.ledger.meta(FIRST_CYCLE).await?,
            day_one.export_existing,
        ) {
            (_, true) => None,
            (Some(first), false) => match chrono::DateTime::parse_from_rfc3339(&first) {
                Ok(first) => Some(first.to_utc()),
                Err(e) => {
                    return Err(crate::ledger::LedgerError::Corrupt {
                        external_id: FIRST_CYCLE.to_string(),
                        column: "meta.value",
                        reason: format!("{first:?} is not a time: {e}"),
                    }
                    .into());
                }
            },
            // The first cycle: what exists now existed before quo-sync.
            (None, false) => return Ok(()),
        };
        // Every contact stamped in the start's second or later; `made_since` picks.
        let from = since.map(|t| crate::ledger::time_text(t.trunc_subsecs(0)));
        let Some(index) = self.workspace_index().await? else {
            return Ok(());
        };
        let mut after = None;
        loop {
            let batch = index
                .ledger
                .workspace_app_contacts(from.as_deref(), after.as_ref(), PAGE)
                .await?;
            for contact in &batch {
                if self.stop.is_cancelled() {
                    return Ok(());
                }
                if since
                    .is_some_and(|start| !made_since(contact.contact.created_at.as_deref(), start))
                {
                    continue;
                }
                if self.exportable(&index.ledger, contact).await? {
                    self.export(contact, read_started).await?;
                }
            }
            match batch.last() {
                Some(last) if batch.len() as i64 == PAGE => {
                    after = Some(AppContactCursor::past(last));
                }
                _ => return Ok(()),
            }
        }
    }

    /// Marks this, the first cycle with a complete read, as the line between the contacts that
    /// were in Quo before quo-sync and those made since: its start, before its listing of the
    /// workspace, so a contact made mid-cycle (or in the millisecond it ends) is new.
    pub(super) async fn mark_first_cycle(&self) -> Result<(), SyncError> {
        let start = crate::ledger::time_text(self.started);
        self.ctx.ledger.set_meta(FIRST_CYCLE, &start).await?;
        Ok(())
    }

    /// Whether no CRM record matches the contact, nothing holds it, and it has a phone or an
    /// email.
    async fn exportable(
        &self,
        index: &crate::ledger::Ledger,
        contact: &WorkspaceContact,
    ) -> Result<bool, SyncError> {
        let quo_id = &contact.quo_id;
        if contact.keys.is_empty()
            || self.matched_contacts.lock().await.contains(quo_id)
            || self.exports_found.lock().await.contains(quo_id)
        {
            return Ok(false);
        }
        // Before `claimed`, which holds every open export's contact for its record: a pending
        // export whose record this read did not show is sent again (`retry_allowed` says when).
        if let Some(export) = self.exports.get(quo_id) {
            return Ok(matches!(export.state, ExportState::Pending));
        }
        if self.claimed.contains_key(quo_id) {
            return Ok(false);
        }
        if self.ctx.ledger.export_known(quo_id).await?
            || self.ctx.ledger.record_holding(quo_id).await?.is_some()
        {
            return Ok(false);
        }
        let ours = self.ctx.client.source();
        let matches_a_record = index
            .workspace_matches(&contact.keys)
            .await?
            .iter()
            .any(|(other, _)| other.quo_id != *quo_id && other.source.as_deref() == Some(ours));
        Ok(!matches_a_record)
    }

    /// Exports one contact: the intent, the CRM create (unless an earlier one may have landed),
    /// then the adoption.
    async fn export(
        &self,
        contact: &WorkspaceContact,
        read_started: DateTime<Utc>,
    ) -> Result<(), SyncError> {
        let quo_id = &contact.quo_id;
        let day_one = &self.ctx.settings.day_one;
        let snapshot = export_snapshot(
            &self
                .mapper
                .from_contact(&self.normalized(contact.contact.clone())),
            &self.normalized(contact.contact.clone()),
            &self.managed,
        );
        let Some(external_id) = self.new_record_id(quo_id) else {
            return Ok(());
        };
        if self.mode == Mode::DryRun {
            self.plan_export(quo_id, external_id.as_ref(), &snapshot)
                .await;
            return Ok(());
        }
        if let Some(earlier) = self.exports.get(quo_id)
            && !self.retry_allowed(earlier, read_started).await?
        {
            return Ok(());
        }
        let mut fields = self
            .mapper
            .to_crm_fields(&snapshot, &all_fields(&snapshot))
            .unwrap_or_default();
        if let Some(field) = &day_one.quo_id_field {
            fields.insert(field.clone(), quo_id.clone());
        }
        self.ctx.ledger.ensure_leader()?;
        self.ctx
            .ledger
            .export_intent(
                quo_id,
                external_id.as_ref().map(ExternalId::as_str),
                &snapshot,
            )
            .await?;
        let now = Utc::now();
        let new = NewRecord {
            quo_id: quo_id.clone(),
            external_id: external_id.clone(),
            fields: fields.clone(),
            updated_at: now,
        };
        match self.send_export(&new).await {
            Some(created) => self.settle_export(contact, created, fields, now).await,
            None => Ok(()),
        }
    }

    /// The CRM id a contact's new record gets: `Some(None)` where the CRM assigns it, `None`
    /// (logged) where `reverse.new_record_id` makes no usable id of this contact's.
    fn new_record_id(&self, quo_id: &str) -> Option<Option<ExternalId>> {
        if !self.ctx.source.assigns_ids() {
            return Some(None);
        }
        let text = self
            .ctx
            .settings
            .day_one
            .new_record_id
            .replace("{quo_id}", quo_id);
        match ExternalId::parse(&text) {
            Ok(id) => Some(Some(id)),
            Err(e) => {
                warn!(event = "crm_create_refused", quo_id, reason = %e, "reverse.new_record_id makes no usable CRM id for this contact");
                None
            }
        }
    }

    /// A dry run's export: the planned CRM create, counted.
    async fn plan_export(
        &self,
        quo_id: &str,
        external_id: Option<&ExternalId>,
        snapshot: &Snapshot,
    ) {
        let mut op = PlannedOp::new(
            external_id.map_or("(new CRM record)", |id| id.as_str()),
            Action::CreateInCrm,
        )
        .with_quo_id(quo_id);
        op.fields = snapshot.changed_fields(&Snapshot::default());
        self.operations.lock().await.push(op);
        self.counts.lock().await.exported += 1;
    }

    /// Sends the CRM create of `new` (its intent already on record): what the CRM answered, or
    /// `None` when nothing was sent (the intent stays pending for whoever leads next) or nothing
    /// came back.
    async fn send_export(&self, new: &NewRecord) -> Option<Created> {
        let quo_id = &new.quo_id;
        match self
            .ctx
            .source
            .create_records(std::slice::from_ref(new), &self.crm_guard())
            .await
        {
            Ok(mut outcomes) => outcomes.pop().map(|(_, o)| o),
            Err(e @ SourceError::NotSent(_)) => {
                // Nothing was sent: the intent stays pending for whoever leads next.
                warn!(event = "crm_create_not_sent", quo_id, reason = %e, "the CRM create was not sent; the export stays pending");
                None
            }
            Err(e) => Some(Created::Unknown(e.to_string())),
        }
    }

    /// Records what the CRM create of `contact` came to: a made record is adopted, a refused
    /// one's intent forgotten (the next cycle tries again), an unknown one left for a later read.
    async fn settle_export(
        &self,
        contact: &WorkspaceContact,
        created: Created,
        fields: BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<(), SyncError> {
        let quo_id = &contact.quo_id;
        match created {
            Created::Made(id) => {
                self.ctx
                    .ledger
                    .export_state(quo_id, ExportState::Created, Some(id.as_str()), None)
                    .await?;
                info!(event = "crm_record_created", external_id = %id, quo_id, "a contact made in the Quo app is a CRM record now");
                self.counts.lock().await.exported += 1;
                metrics::counter!("quo_sync_records_total", "outcome" => "exported").increment(1);
                self.adopt_exported(contact, id, fields, now).await
            }
            Created::Refused(reason) => {
                // Nothing was made: the intent goes, and the next cycle tries again.
                self.ctx.ledger.export_forget(quo_id).await?;
                warn!(event = "crm_create_refused", quo_id, reason = %reason, "the CRM refused to create a record for a contact made in Quo; tried again next cycle");
                Ok(())
            }
            Created::Unknown(reason) => {
                warn!(event = "crm_create_unknown", quo_id, reason = %reason, "the CRM create's outcome is unknown; a later read finds the record instead of creating it again");
                Ok(())
            }
        }
    }

    /// Whether a pending export whose record no read has shown may be created again: only for
    /// a CRM the read can search (an id known in advance, or `reverse.quo_id_field`), and only
    /// when this complete read started long enough after the intent to have listed what the
    /// earlier create made. Holds it for the operator when the CRM cannot be searched.
    async fn retry_allowed(
        &self,
        earlier: &Export,
        read_started: DateTime<Utc>,
    ) -> Result<bool, SyncError> {
        let searchable =
            self.ctx.source.assigns_ids() || self.ctx.settings.day_one.quo_id_field.is_some();
        if !searchable {
            let reason = format!(
                "a CRM record for Quo contact {} may exist (its create's answer was lost) and the CRM cannot be searched for it: set reverse.quo_id_field; check the CRM and link the record with `quo-sync link <crm-id> {}`",
                earlier.quo_id, earlier.quo_id
            );
            self.ctx
                .ledger
                .export_state(&earlier.quo_id, ExportState::Held, None, Some(&reason))
                .await?;
            let location = format!("quo contact {}", earlier.quo_id);
            self.ctx
                .ledger
                .quarantine(
                    NewQuarantine {
                        external_id: None,
                        location: &location,
                        stage: QuarantineStage::Match,
                        field: None,
                        value: Some(&earlier.quo_id),
                        reason: &reason,
                        raw: None,
                    },
                    &self.run_id,
                )
                .await?;
            warn!(event = "crm_create_held", quo_id = %earlier.quo_id, "{reason}");
            return Ok(false);
        }
        if self.ctx.source.assigns_ids() {
            // The file was read whole just now: without the row, the create did not land.
            return Ok(true);
        }
        // How long the CRM's list may lag the create (`source.rest.create.lookup_window`): a
        // complete read that started later than that and did not show the record says the
        // create did not land.
        let window = chrono::TimeDelta::from_std(self.ctx.source.create_lookup_window())
            .unwrap_or(chrono::TimeDelta::MAX);
        let intent = parse_time(Some(&earlier.created_at));
        let waited = intent.is_some_and(|at| at + window <= read_started);
        if !waited {
            info!(event = "crm_create_looked_for", quo_id = %earlier.quo_id, "a CRM create whose outcome is unknown is looked for, not sent again, until source.rest.create.lookup_window has passed");
        }
        Ok(waited)
    }

    /// Adopts a contact for the record just made from it, with the record as written (so its
    /// next read is unchanged).
    async fn adopt_exported(
        &self,
        contact: &WorkspaceContact,
        external_id: ExternalId,
        fields: BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<(), SyncError> {
        let record = SourceRecord {
            external_id: external_id.clone(),
            fields,
            updated_at: Some(now),
            location: format!("made from Quo contact {}", contact.quo_id),
        };
        let Ok(crm) = self.mapper.map(&record) else {
            return Ok(()); // the next read maps (or quarantines) it and adopts
        };
        let fingerprint = self.mapper.fingerprint(&record);
        let target = AdoptTarget {
            contact: contact.clone(),
            decided: true,
        };
        // The adoption PATCH is a write the progress display confirms: plan it first.
        self.ctx
            .progress
            .planned(super::progress::WriteKind::Create);
        let adopted = self
            .adopt_existing(&record, &crm, Some(&fingerprint), &target)
            .await;
        let location = record.location.clone();
        self.settle_failure(adopted, &external_id, &location, Some(now))
            .await?;
        if self
            .ctx
            .ledger
            .record(&external_id)
            .await?
            .and_then(|r| r.quo_id)
            .is_some_and(|q| q.as_str() == contact.quo_id)
        {
            self.ctx
                .ledger
                .export_state(&contact.quo_id, ExportState::Done, None, None)
                .await?;
        }
        Ok(())
    }

    /// Marks exports whose record is linked to their contact done (the next cycle's adoption of
    /// a record an interrupted export made).
    pub(super) async fn settle_exports(&self) -> Result<(), SyncError> {
        for export in self.exports.values() {
            let Some(id) = export.external_id.as_deref() else {
                continue;
            };
            let Ok(id) = ExternalId::parse(id) else {
                continue;
            };
            let linked = self
                .ctx
                .ledger
                .record(&id)
                .await?
                .and_then(|r| r.quo_id)
                .is_some_and(|q| q.as_str() == export.quo_id);
            if linked {
                self.ctx
                    .ledger
                    .export_state(&export.quo_id, ExportState::Done, None, None)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Every field of a snapshot by diff name (what a new record is written with).
fn all_fields(snapshot: &Snapshot) -> Vec<String> {
    snapshot.fields().into_keys().collect()
}

/// Whether Quo made a contact at or after `start`, by its `createdAt` as Quo wrote it (`None`:
/// no). Quo's stamps may have whole seconds (its spec's examples: `2022-01-01T00:00:00Z`) or
/// milliseconds; the start is cut to the stamp's own precision, and a tie counts as made since:
/// a contact made in the app up to a second before quo-sync started can become a CRM record,
/// but none made after is left out.
fn made_since(created_at: Option<&str>, start: DateTime<Utc>) -> bool {
    let Some(stamp) = created_at else {
        return false;
    };
    let Ok(made) = DateTime::parse_from_rfc3339(stamp) else {
        return false;
    };
    let digits = stamp.split_once('.').map_or(0, |(_, fraction)| {
        fraction.bytes().take_while(u8::is_ascii_digit).count()
    });
    made.to_utc() >= start.trunc_subsecs(u16::try_from(digits).unwrap_or(9))
}

/// What a record made from `contact` holds: its managed values, and its emails and phones under
/// the mapping's labels (items already under a managed label keep it; the others fill the
/// remaining labels in order), so the record matches the contact it came from.
fn export_snapshot(
    managed_view: &Snapshot,
    contact: &crate::quo::types::Contact,
    managed: &super::payload::Managed,
) -> Snapshot {
    let mut snapshot = managed_view.clone();
    let fill = |have: &[Labeled],
                items: &[crate::quo::types::ContactItem],
                labels: &[String]|
     -> Vec<Labeled> {
        let mut out: Vec<Labeled> = have.to_vec();
        let taken: Vec<String> = out.iter().map(|o| o.name.clone()).collect();
        let mut free = labels.iter().filter(|l| !taken.contains(l)).cloned();
        for item in items {
            let Some(value) = item
                .value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
            else {
                continue;
            };
            if out.iter().any(|o| o.value == value) {
                continue;
            }
            let Some(label) = free.next() else { break };
            out.push(Labeled {
                name: label,
                value: value.to_string(),
            });
        }
        out
    };
    let fields = &contact.default_fields;
    snapshot.emails = fill(&snapshot.emails, &fields.emails, &managed.email_labels);
    snapshot.phone_numbers = fill(
        &snapshot.phone_numbers,
        &fields.phone_numbers,
        &managed.phone_labels,
    );
    snapshot
}

#[cfg(test)]
mod tests {
    use super::made_since;
    use chrono::{DateTime, Utc};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn a_stamp_is_compared_at_its_own_precision_and_a_tie_is_new() {
        let start = at("2026-12-06T12:00:05.120Z");
        // Whole seconds: the start's own second may be either side; it counts as new.
        assert!(made_since(Some("2026-12-06T12:00:05Z"), start));
        assert!(!made_since(Some("2026-12-06T12:00:04Z"), start));
        assert!(made_since(Some("2026-12-06T12:00:05+00:00"), start));
        assert!(!made_since(Some("2026-12-06T13:00:04+01:00"), start));
        // Milliseconds: exact, the start's millisecond included.
        assert!(made_since(Some("2026-12-06T12:00:05.120Z"), start));
        assert!(!made_since(Some("2026-12-06T12:00:05.119Z"), start));
        assert!(made_since(Some("2026-12-06T12:00:05.12Z"), start));
        assert!(!made_since(Some("2026-12-06T12:00:05.1199999Z"), start));
        // No stamp, or not a time: not known to be new.
        assert!(!made_since(None, start));
        assert!(!made_since(Some("yesterday"), start));
    }
}
