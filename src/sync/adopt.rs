//! Adoption: a contact already in Quo becomes a record's by one PATCH that sets our `source` and
//! the record's `externalId` and brings the managed fields to the CRM's values. The person keeps
//! their contact, and with it their conversation history.
//!
//! Nothing typed disappears without a trace: every managed value the PATCH replaces (and an
//! unmanaged email or phone item relabelled because it holds the CRM's value) is recorded first
//! as a conflict with policy `adopted` (`quo-sync conflicts`), and what the contact held before
//! in `adoptions` (so `quo-sync link <id> --undo` can give it back). Unmanaged items and custom
//! fields are sent back exactly as read, so they survive under both PATCH semantics.
//!
//! Exactly once: the intent (the record, the contact, what the PATCH sends) is committed before
//! the PATCH. A lost answer is resolved by reading the contact back; a crash, by the next cycle,
//! which finds the contact carrying our source and the record's id (by lookup or by id) and
//! links it instead of adopting twice. An adoption is not a POST: it can never make a twin.
//!
//! The PATCH is built on the contact as the listing read it when that was this cycle and no
//! webhook has announced a change since (day one's first cycle: one request per adoption);
//! otherwise on a fresh read.

use std::collections::BTreeMap;

use serde_json::Value;
use tracing::{info, warn};

use super::execute::Failure;
use super::matching::{AdoptTarget, Held, Owner};
use super::merge_step::parse_time;
use super::{Action, Cycle};
use crate::domain::{ExternalId, QuoContactId, Snapshot, field};
use crate::ledger::workspace::{email_key, phone_key};
use crate::ledger::{Adoption, AdoptionIntent};
use crate::quo::client::QuoError;
use crate::quo::types::{Contact, ContactItem};
use crate::source::SourceRecord;

/// The policy named in an adoption's conflicts.
pub(super) const ADOPTED: &str = "adopted";

/// What makes a PATCH an adoption: the identity it gives the contact.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    /// Our `source`.
    pub source: String,
    /// The record's id.
    pub external_id: String,
    /// `sourceUrl`, when `quo.source_url_template` is set.
    pub source_url: Option<String>,
}

impl Claim {
    /// Whether `contact` carries this identity.
    pub(super) fn holds(&self, contact: &Contact) -> bool {
        contact.source.as_deref() == Some(self.source.as_str())
            && contact.external_id.as_deref() == Some(self.external_id.as_str())
    }
}

impl Cycle {
    /// The claim an adoption for `external_id` makes.
    pub(super) fn claim_for(&self, external_id: &ExternalId) -> Claim {
        Claim {
            source: self.ctx.client.source().to_string(),
            external_id: external_id.to_string(),
            source_url: self
                .ctx
                .settings
                .source_url_template
                .as_ref()
                .map(|t| t.replace("{id}", external_id.as_str())),
        }
    }

    /// Adopts `target` for the record by one PATCH, then commits the link.
    pub(super) async fn adopt_existing(
        &self,
        record: &SourceRecord,
        crm: &Snapshot,
        fingerprint: Option<&str>,
        target: &AdoptTarget,
    ) -> Result<(), Failure> {
        let external_id = &record.external_id;
        let quo_id = QuoContactId(target.contact.quo_id.clone());
        let Some(fresh) = self.adoption_base(target).await? else {
            warn!(event = "adopt_target_gone", external_id = %external_id, quo_id = %quo_id, "the contact chosen for adoption is gone from Quo; the record is matched again next cycle");
            self.ctx.ledger.workspace_remove(quo_id.as_str()).await?;
            return Ok(());
        };
        let claim = self.claim_for(external_id);
        if claim.holds(&fresh) {
            // An earlier adoption landed and was never committed (a crash): link it.
            let sent = Some(crm.clone());
            return self
                .adopt(external_id, Some(record), crm, sent, fingerprint, fresh)
                .await;
        }
        if let Some(reason) = self.not_adoptable(&fresh, crm, target) {
            if let Some(held) = reason {
                self.hold(record, &held).await?;
            }
            return Ok(());
        }
        let mut base = fresh.clone();
        let relabelled = relabel(&mut base, crm, &self.managed);
        let have = self.mapper.from_contact(&fresh);
        let (replaced, written) = replaced_values(&have, crm, &relabelled);
        // What the PATCH replaces is on record before it is sent.
        self.record_adoption_intent(external_id, &quo_id, &fresh, crm, &replaced, written)
            .await?;
        let patched = self
            .patch_confirmed_claiming(&quo_id, crm, base, Some(&claim))
            .await;
        let Some(confirmed) = self.adoption_patched(record, &quo_id, patched).await? else {
            return Ok(());
        };
        self.commit(
            external_id,
            &quo_id,
            fingerprint,
            crm,
            &confirmed,
            Some(record),
        )
        .await?;
        if target.decided {
            self.ctx
                .ledger
                .clear_match_decision(external_id.as_str())
                .await?;
        }
        info!(event = "existing_contact_adopted", external_id = %external_id, quo_id = %quo_id,
              previous_source = ?fresh.source, replaced = ?replaced.keys().collect::<Vec<_>>(),
              "a contact already in Quo became the record's: our source and its externalId, the CRM's values; its history stays");
        let fields = adoption_fields(&have, crm, &relabelled);
        self.counted(Action::Adopt, external_id, Some(quo_id.as_str()), fields)
            .await;
        Ok(())
    }

    /// Puts on record, before the PATCH is sent, what adopting `fresh` replaces: the ledger's
    /// adoption intent, and a conflict (the CRM wins) for each value typed in Quo it replaces.
    async fn record_adoption_intent(
        &self,
        external_id: &ExternalId,
        quo_id: &QuoContactId,
        fresh: &Contact,
        crm: &Snapshot,
        replaced: &BTreeMap<String, Value>,
        written: BTreeMap<String, Value>,
    ) -> Result<(), Failure> {
        let adoption = Adoption {
            external_id: external_id.to_string(),
            quo_id: quo_id.to_string(),
            previous_source: fresh.source.clone().filter(|s| !s.is_empty()),
            previous_external_id: fresh.external_id.clone(),
            replaced: replaced.clone(),
            written,
            adopted_at: crate::ledger::now_text(),
        };
        self.ctx
            .ledger
            .record_adoption_intent(&AdoptionIntent {
                sent: crm,
                adoption: &adoption,
                run_id: Some(&self.run_id),
            })
            .await?;
        for (field, quo) in replaced {
            let crm_value = adoption.written.get(field).cloned().unwrap_or(Value::Null);
            warn!(event = "conflict", external_id = %external_id, quo_id = %quo_id, field = %field,
                  crm_value = %crm_value, quo_value = %quo, winner = "crm", policy = ADOPTED,
                  "adoption replaces a value typed in Quo");
            metrics::counter!("quo_sync_conflicts_total").increment(1);
        }
        Ok(())
    }

    /// The contact the adoption PATCH left, confirmed; or `None` when it did not land: Quo
    /// refused to write the contact (403: a native integration's, read-only; the record is held
    /// with the way out) or it was deleted (matched again next cycle).
    async fn adoption_patched(
        &self,
        record: &SourceRecord,
        quo_id: &QuoContactId,
        patched: Result<Contact, Failure>,
    ) -> Result<Option<Contact>, Failure> {
        let external_id = &record.external_id;
        match patched {
            Err(Failure::Quo(QuoError::Rejected {
                status: 403,
                message,
                ..
            })) => {
                // Quo refuses to write it (a native integration's, read-only): nothing changed.
                self.ctx.ledger.forget(external_id).await?;
                self.ctx
                    .ledger
                    .forget_adoption(external_id.as_str())
                    .await?;
                let held = Held {
                    reason: format!(
                        "Quo refused to write contact {quo_id} (403: {message}): it is read-only (a native integration's); resolve with `quo-sync link {external_id} --create`, or fix the data"
                    ),
                    contacts: vec![quo_id.to_string()],
                    field: None,
                };
                self.hold(record, &held).await?;
                Ok(None)
            }
            Err(Failure::Missing) => {
                self.ctx.ledger.forget(external_id).await?;
                self.ctx.ledger.workspace_remove(quo_id.as_str()).await?;
                warn!(event = "adopt_target_gone", external_id = %external_id, quo_id = %quo_id, "the contact chosen for adoption was deleted in Quo; the record is matched again next cycle");
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// The contact to build the adoption PATCH on: the listing's copy when it was read this
    /// cycle and no webhook announced a change since, else a read by id (`None`: gone).
    async fn adoption_base(&self, target: &AdoptTarget) -> Result<Option<Contact>, Failure> {
        let quo_id = &target.contact.quo_id;
        let read_now = parse_time(Some(&target.contact.seen_at)).is_some_and(|t| t >= self.started)
            && !self.ctx.ledger.inbox_pending_for(quo_id).await?;
        if read_now {
            return Ok(Some(self.normalized(target.contact.contact.clone())));
        }
        let fresh = self
            .ctx
            .client
            .get_contact(quo_id)
            .await
            .map_err(Failure::Quo)?;
        Ok(fresh.map(|c| self.normalized(c)))
    }

    /// Why `fresh` may not be adopted now: `Some(Some(held))` to hold the record, `Some(None)`
    /// to leave it for the next cycle's match (the contact changed since the index read it),
    /// `None` when it may.
    fn not_adoptable(
        &self,
        fresh: &Contact,
        crm: &Snapshot,
        target: &AdoptTarget,
    ) -> Option<Option<Held>> {
        let day_one = &self.ctx.settings.day_one;
        let source = fresh.source.as_deref().filter(|s| !s.is_empty());
        let quo_id = &fresh.id;
        if source == Some(self.ctx.client.source()) {
            warn!(event = "adopt_target_taken", quo_id = %quo_id, external_id = ?fresh.external_id, "the contact chosen for adoption is quo-sync's for another record now; the record is matched again next cycle");
            return Some(None);
        }
        match Owner::of(source, &day_one.adopt_sources) {
            Owner::Native(source) => {
                return Some(Some(Held {
                    reason: format!(
                        "contact {quo_id} belongs to Quo's native {source} integration (read-only in Quo, never written); choose another with `quo-sync link <external-id> <contact-id>` or `--create`"
                    ),
                    contacts: vec![quo_id.clone()],
                    field: None,
                }));
            }
            Owner::Integration {
                adoptable: false, ..
            } if !target.decided => {
                warn!(event = "adopt_target_changed", quo_id = %quo_id, source = ?source, "the contact chosen for adoption changed source since the index read it; the record is matched again next cycle");
                return Some(None);
            }
            _ => {}
        }
        if !target.decided {
            let keys = super::matching::record_keys(crm, day_one.match_existing);
            let now = crate::ledger::workspace::contact_keys(fresh);
            if !keys.iter().any(|k| now.contains(k)) {
                warn!(event = "adopt_target_changed", quo_id = %quo_id, "the contact chosen for adoption no longer shares a phone or email with the record; matched again next cycle");
                return Some(None);
            }
        }
        None
    }

    /// The fields an adoption of `target` would change, for `plan`.
    pub(super) fn adoption_plan(&self, crm: &Snapshot, target: &AdoptTarget) -> Vec<String> {
        let mut base = self.normalized(target.contact.contact.clone());
        let have = self.mapper.from_contact(&base);
        let relabelled = relabel(&mut base, crm, &self.managed);
        adoption_fields(&have, crm, &relabelled)
    }
}

/// The fields an adoption changes: the managed ones that differ, relabelled lists, and the
/// identity (`source`, `externalId`).
fn adoption_fields(
    have: &Snapshot,
    crm: &Snapshot,
    relabelled: &[(&str, ContactItem)],
) -> Vec<String> {
    let mut fields = have.changed_fields(crm);
    for (field, _) in relabelled {
        if !fields.iter().any(|f| f == field) {
            fields.push(field.to_string());
        }
    }
    fields.sort();
    fields.push("source".into());
    fields.push("externalId".into());
    fields
}

/// Gives an unmanaged email or phone item that holds a value the CRM wants under a managed label
/// that label (same item id, so neither semantics doubles the number), instead of adding the
/// value a second time. Returns the items as they were.
fn relabel(
    contact: &mut Contact,
    crm: &Snapshot,
    managed: &super::payload::Managed,
) -> Vec<(&'static str, ContactItem)> {
    let mut before = Vec::new();
    let fields = &mut contact.default_fields;
    for (name, items, labels, wanted, key) in [
        (
            field::EMAILS,
            &mut fields.emails,
            &managed.email_labels,
            &crm.emails,
            email_key as fn(&str) -> Option<String>,
        ),
        (
            field::PHONE_NUMBERS,
            &mut fields.phone_numbers,
            &managed.phone_labels,
            &crm.phone_numbers,
            phone_key,
        ),
    ] {
        for want in wanted {
            if items.iter().any(|i| i.name == want.name) {
                continue;
            }
            let same = items.iter_mut().find(|i| {
                !labels.contains(&i.name)
                    && i.id.is_some()
                    && i.value.as_deref().and_then(key) == key(&want.value)
            });
            if let Some(item) = same {
                before.push((name, item.clone()));
                item.name = want.name.clone();
            }
        }
    }
    before
}

/// The managed values an adoption replaces (Quo's, by field) and what replaces them: a field
/// whose Quo value is not empty and not kept by the CRM's (a list keeps it when it holds every
/// item), and the lists whose items were relabelled.
fn replaced_values(
    have: &Snapshot,
    crm: &Snapshot,
    relabelled: &[(&str, ContactItem)],
) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let quo = have.fields();
    let ours = crm.fields();
    let mut replaced = BTreeMap::new();
    let mut written = BTreeMap::new();
    for field in have.changed_fields(crm) {
        let q = quo.get(&field).cloned().unwrap_or(Value::Null);
        let c = ours.get(&field).cloned().unwrap_or(Value::Null);
        let empty = match &q {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(items) => items.is_empty(),
            _ => false,
        };
        let kept = match (&q, &c) {
            (Value::Array(qs), Value::Array(cs)) => qs.iter().all(|i| cs.contains(i)),
            _ => false,
        };
        if !empty && !kept {
            replaced.insert(field.clone(), q);
            written.insert(field, c);
        }
    }
    for (field, item) in relabelled {
        let entry = replaced
            .entry(field.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(items) = entry {
            items.push(serde_json::json!({"name": item.name, "value": item.value}));
        }
        written.insert(
            field.to_string(),
            ours.get(*field).cloned().unwrap_or(Value::Null),
        );
    }
    (replaced, written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Labeled;
    use crate::quo::types::DefaultFields;
    use crate::sync::payload::Managed;

    fn contact(phones: &[(&str, &str)]) -> Contact {
        Contact {
            id: "c1".into(),
            external_id: None,
            source: None,
            source_url: None,
            default_fields: DefaultFields {
                first_name: Some("Bob".into()),
                phone_numbers: phones
                    .iter()
                    .enumerate()
                    .map(|(i, (name, value))| ContactItem {
                        id: Some(format!("p{i}")),
                        name: name.to_string(),
                        value: Some(value.to_string()),
                    })
                    .collect(),
                ..DefaultFields::default()
            },
            custom_fields: Vec::new(),
            created_at: None,
            updated_at: None,
            created_by_user_id: None,
        }
    }

    #[test]
    fn an_unmanaged_item_holding_the_crm_value_is_relabelled_not_doubled() {
        let managed = Managed {
            phone_labels: vec!["phone".into()],
            ..Managed::default()
        };
        let crm = Snapshot {
            phone_numbers: vec![Labeled {
                name: "phone".into(),
                value: "+14155550100".into(),
            }],
            ..Snapshot::default()
        };
        let mut c = contact(&[("main", "+1 415 555 0100"), ("home", "+14155550199")]);
        let before = relabel(&mut c, &crm, &managed);
        assert_eq!(before.len(), 1);
        assert_eq!(before[0].1.name, "main");
        let phones = &c.default_fields.phone_numbers;
        assert_eq!(phones[0].name, "phone", "same id, managed label");
        assert_eq!(phones[0].id.as_deref(), Some("p0"));
        assert_eq!(phones[1].name, "home", "other unmanaged items stay");
    }

    #[test]
    fn only_values_the_crm_does_not_keep_count_as_replaced() {
        let have = Snapshot {
            first_name: Some("Bob".into()),
            company: None,
            emails: vec![Labeled {
                name: "email".into(),
                value: "bob@x.example".into(),
            }],
            ..Snapshot::default()
        };
        let crm = Snapshot {
            first_name: Some("Robert".into()),
            company: Some("Acme".into()),
            emails: vec![
                Labeled {
                    name: "email".into(),
                    value: "bob@x.example".into(),
                },
                Labeled {
                    name: "work".into(),
                    value: "r@acme.example".into(),
                },
            ],
            ..Snapshot::default()
        };
        let (replaced, written) = replaced_values(&have, &crm, &[]);
        assert_eq!(
            replaced.keys().collect::<Vec<_>>(),
            ["firstName"],
            "an empty company and a kept email are not replaced"
        );
        assert_eq!(written["firstName"], "Robert");
    }
}
