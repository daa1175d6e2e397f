//! A twin of a linked contact, made by a create whose answer was lost: what a person typed on
//! it since our POST (managed fields that differ from what the POST sent, and values of fields we
//! do not manage) moves to the linked contact, where the reverse path merges it into the CRM
//! like any edit made in Quo; a field that also changed on the linked contact keeps the later
//! value and is recorded as a conflict; what cannot be carried is recorded too. Then the twin is
//! deleted, unless it was typed on again meanwhile.

use tracing::{info, warn};

use super::{CopyError, entry_that_made};
use crate::domain::{ExternalId, QuoContactId, Snapshot, field};
use crate::ledger::{LedgerError, NewInboxEvent, UnconfirmedCreate};
use crate::quo::client::QuoError;
use crate::quo::types::{Contact, ContactItem};
use crate::reverse::intake::UnlinkedCopy;
use crate::sync::Cycle;
use crate::sync::merge_step::parse_time;
use crate::sync::payload::{self, Managed};

/// The target its log lines carried before it left `copies.rs` (the JSON lines are an interface).
const LOG_TARGET: &str = "quo_sync::sync::copies";

/// What a person typed on a twin that the linked contact lacks.
#[derive(Debug, Default)]
struct Carried {
    /// The linked contact's managed snapshot with the twin's edits applied.
    desired: Snapshot,
    /// Managed fields taken from the twin.
    fields: Vec<String>,
    /// Unmanaged emails, phones, default fields and custom values taken from the twin.
    unmanaged: Vec<String>,
    /// Default fields the mapping does not manage, typed on the twin, that the linked contact
    /// lacks: set by the carry-over PATCH (the snapshot does not hold them).
    defaults: Vec<(&'static str, String)>,
    /// The linked contact as read, with those unmanaged items added: the PATCH's base.
    current: Option<Contact>,
    /// Fields changed on both the twin and the linked contact since the lost POST.
    conflicts: Vec<TwinConflict>,
}

/// A value typed on a twin that does not go to the linked contact: the field also changed there
/// since the lost POST, or it cannot be carried over.
#[derive(Debug)]
struct TwinConflict {
    field: String,
    /// What the lost POST sent (the base).
    sent: serde_json::Value,
    /// The linked contact's value (the CRM's side, or a later edit there).
    linked: serde_json::Value,
    /// The twin's value.
    twin: serde_json::Value,
    /// Whether the twin was changed later, so its value stands.
    twin_won: bool,
    /// Why (`twin_later_edit`, `twin_not_carried`).
    policy: &'static str,
}

/// The policy named in a twin's conflicts: the later contact's value stands.
const TWIN_POLICY: &str = "twin_later_edit";

/// The policy named when a value typed on a twin cannot be carried over (a field type the API
/// cannot write, or Quo refused the carry-over): the linked contact keeps its value, the twin's
/// is kept in the conflict.
const TWIN_NOT_CARRIED: &str = "twin_not_carried";

impl Cycle {
    /// A twin of the linked contact `linked`: moves what a person typed on it, then deletes it.
    pub(super) async fn remove_twin(
        &self,
        copy: &UnlinkedCopy,
        linked: &QuoContactId,
        entries: &[UnconfirmedCreate],
    ) -> Result<(), CopyError> {
        let Some(twin) = self.read_copy_of(copy, entries).await? else {
            return Ok(());
        };
        let entry = entry_that_made(&self.mapper.from_contact(&twin), entries);
        let Some(kept) = self.ctx.client.get_contact(linked.as_str()).await? else {
            // The linked contact is gone: `reverse.on_quo_delete` decides first.
            return Ok(());
        };
        let kept = self.normalized(kept);
        if !self.is_ours(&kept, copy) {
            // The ledger's contact does not carry our source and this externalId: the "twin"
            // may be the record's only contact of ours. Nothing is deleted; an operator decides.
            return Err(CopyError::NotOurs {
                quo_id: kept.id.clone(),
            });
        }
        // Quo stamps a contact's creation as its last change too: equal stamps mean nobody has
        // touched it, whatever a comparison with what we sent would say.
        let touched = twin.updated_at.is_none() || twin.updated_at != twin.created_at;
        let mut carried = if touched {
            self.carried(&twin, &entry.sent, &kept)
        } else {
            Carried::default()
        };
        if !carried.fields.is_empty() || !carried.unmanaged.is_empty() {
            match self.carry_over(copy, linked, &carried).await {
                Ok(()) => {}
                // Refused as a whole: what it carried is kept as conflicts instead, so nothing
                // typed on the twin goes with it unrecorded (and it is not tried for good).
                Err(CopyError::Quo(error @ QuoError::Rejected { status: 400, .. })) => {
                    warn!(target: LOG_TARGET, event = "twin_carry_over_refused", external_id = %copy.external_id, quo_id = %linked, error = %error, "Quo refused what was typed on a twin; it is recorded as conflicts");
                    let not_carried = self.not_carried(&twin, &entry.sent, &kept, &carried);
                    carried.conflicts.extend(not_carried);
                    carried.fields.clear();
                    carried.unmanaged.clear();
                }
                Err(e) => return Err(e),
            }
        }
        self.record_twin_conflicts(&copy.external_id, &carried.conflicts)
            .await?;
        // Typed on again since it was read: what is new would go with it, so the next pass
        // carries it over first.
        let again = self.read_copy(copy).await?;
        if again
            .as_ref()
            .is_some_and(|a| a.updated_at != twin.updated_at)
        {
            return Ok(());
        }
        if again.is_some() {
            self.ctx.client.delete_contact(copy.quo_id.as_str()).await?;
        }
        self.ctx.ledger.unconfirmed_remove(entry.id).await?;
        metrics::counter!("quo_sync_duplicates_removed_total").increment(1);
        info!(
            target: LOG_TARGET,
            event = "duplicate_removed",
            external_id = %copy.external_id,
            quo_id = %linked,
            removed_quo_id = %copy.quo_id,
            carried_fields = ?carried.fields,
            carried_unmanaged = ?carried.unmanaged,
            "a contact made by a create whose answer was lost was found beside the linked one; what was typed on it was moved to the linked contact and it was deleted"
        );
        Ok(())
    }

    /// PATCHes what was typed on the twin onto the linked contact (built on the copy read just
    /// before), and leaves a notice so the next cycle merges it into the CRM like any edit made in Quo.
    async fn carry_over(
        &self,
        copy: &UnlinkedCopy,
        linked: &QuoContactId,
        carried: &Carried,
    ) -> Result<(), CopyError> {
        let mut body =
            payload::patch_body(&carried.desired, carried.current.as_ref(), &self.managed);
        if let Some(fields) = body.default_fields.as_mut() {
            for (name, value) in &carried.defaults {
                let slot = match *name {
                    field::FIRST_NAME => &mut fields.first_name,
                    field::LAST_NAME => &mut fields.last_name,
                    field::COMPANY => &mut fields.company,
                    field::ROLE => &mut fields.role,
                    _ => continue,
                };
                *slot = Some(Some(value.clone()));
            }
        }
        let updated = self
            .ctx
            .client
            .update_contact(linked.as_str(), &body)
            .await?;
        // The ledger keeps its agreed snapshot: the next cycle reads the linked contact, sees a
        // change made in Quo and merges it into the CRM three-way, as for any edit.
        let stamp = updated.updated_at.as_deref().unwrap_or("unknown");
        let event_id = format!("copy:{}:{stamp}", copy.quo_id);
        self.ctx
            .ledger
            .inbox_put(NewInboxEvent {
                event_id: &event_id,
                event_type: "contact.updated",
                quo_id: Some(linked.as_str()),
                payload: "{\"source\":\"copy\"}",
            })
            .await?;
        Ok(())
    }

    /// What a person typed on `twin` since our POST sent `sent`, applied to the linked contact
    /// `kept`. A field that also changed on the linked contact since that POST (the CRM or a
    /// person changed it there) keeps the later of the two contacts' values, and the clash is
    /// recorded as a conflict.
    fn carried(&self, twin: &Contact, sent: &Snapshot, kept: &Contact) -> Carried {
        let twin_snapshot = self.mapper.from_contact(twin);
        let theirs = twin_snapshot.fields();
        let sent_fields = sent.fields();
        let kept_snapshot = self.mapper.from_contact(kept);
        let kept_fields = kept_snapshot.fields();
        let twin_later =
            parse_time(twin.updated_at.as_deref()) > parse_time(kept.updated_at.as_deref());
        let mut carried = Carried {
            desired: kept_snapshot.clone(),
            ..Carried::default()
        };
        for field in twin_snapshot.changed_fields(sent) {
            let value = theirs.get(&field).cloned().unwrap_or_default();
            let ours = kept_fields.get(&field).cloned().unwrap_or_default();
            if ours == value {
                continue;
            }
            if sent_fields.get(&field) != Some(&ours) {
                carried.conflicts.push(TwinConflict {
                    field: field.clone(),
                    sent: sent_fields.get(&field).cloned().unwrap_or_default(),
                    linked: ours,
                    twin: value.clone(),
                    twin_won: twin_later,
                    policy: TWIN_POLICY,
                });
                if !twin_later {
                    continue;
                }
            }
            if carried.desired.set_field(&field, value) {
                carried.fields.push(field);
            }
        }
        let mut current = kept.clone();
        let added = add_unmanaged(&mut current, twin, &self.managed);
        carried.unmanaged = added.into_iter().map(|(name, _)| name).collect();
        carried.current = Some(current);
        for (name, theirs, ours) in unmanaged_defaults(twin, kept, &self.managed) {
            match ours {
                None => {
                    carried.unmanaged.push(name.to_string());
                    carried.defaults.push((name, theirs));
                }
                Some(ours) if ours != theirs => carried.conflicts.push(TwinConflict {
                    field: name.to_string(),
                    sent: serde_json::Value::Null,
                    linked: ours.into(),
                    twin: theirs.into(),
                    twin_won: false,
                    policy: TWIN_POLICY,
                }),
                Some(_) => {}
            }
        }
        carried
            .conflicts
            .extend(unmanaged_clashes(kept, twin, &self.managed));
        carried
            .conflicts
            .extend(unwritable_left_behind(kept, twin, &self.managed));
        carried
    }

    /// What `carried` would have moved from `twin` to `kept`, as conflicts (the linked
    /// contact's value stands, the twin's is kept in the record): for a carry-over Quo refused.
    fn not_carried(
        &self,
        twin: &Contact,
        sent: &Snapshot,
        kept: &Contact,
        carried: &Carried,
    ) -> Vec<TwinConflict> {
        let twin_fields = self.mapper.from_contact(twin).fields();
        let kept_fields = self.mapper.from_contact(kept).fields();
        let sent_fields = sent.fields();
        let value = |fields: &std::collections::BTreeMap<String, serde_json::Value>, name: &str| {
            fields.get(name).cloned().unwrap_or_default()
        };
        let mut conflicts: Vec<TwinConflict> = carried
            .fields
            .iter()
            .map(|name| TwinConflict {
                field: name.clone(),
                sent: value(&sent_fields, name),
                linked: value(&kept_fields, name),
                twin: value(&twin_fields, name),
                twin_won: false,
                policy: TWIN_NOT_CARRIED,
            })
            .collect();
        let mut scratch = kept.clone();
        let unmanaged = add_unmanaged(&mut scratch, twin, &self.managed)
            .into_iter()
            .chain(
                carried
                    .defaults
                    .iter()
                    .map(|(name, v)| (name.to_string(), v.clone().into())),
            );
        conflicts.extend(unmanaged.map(|(name, twin_value)| TwinConflict {
            field: name,
            sent: serde_json::Value::Null,
            linked: serde_json::Value::Null,
            twin: twin_value,
            twin_won: false,
            policy: TWIN_NOT_CARRIED,
        }));
        conflicts
    }

    /// Records each field changed on both the twin and the linked contact, with the winner.
    async fn record_twin_conflicts(
        &self,
        external_id: &ExternalId,
        conflicts: &[TwinConflict],
    ) -> Result<(), LedgerError> {
        for conflict in conflicts {
            let winner = if conflict.twin_won { "quo" } else { "crm" };
            warn!(target: LOG_TARGET, event = "conflict", external_id = %external_id, field = %conflict.field,
                  crm_value = %conflict.linked, quo_value = %conflict.twin, winner,
                  policy = conflict.policy, "a value typed on a twin made by a lost create does not go to the linked contact");
            metrics::counter!("quo_sync_conflicts_total").increment(1);
            self.ctx
                .ledger
                .record_conflict(
                    external_id.as_str(),
                    &conflict.field,
                    &conflict.sent,
                    &conflict.linked,
                    &conflict.twin,
                    winner,
                    conflict.policy,
                    Some(&self.run_id),
                )
                .await?;
        }
        Ok(())
    }
}

/// Custom values we do not manage that the twin and the linked contact both hold, differently:
/// the linked contact's stays (nothing tells which is later per field), and the twin's is
/// recorded as a conflict rather than deleted with it unseen.
fn unmanaged_clashes(kept: &Contact, twin: &Contact, managed: &Managed) -> Vec<TwinConflict> {
    let mut clashes = Vec::new();
    for field in &twin.custom_fields {
        let Some(key) = &field.key else { continue };
        if managed.custom_keys.contains(key) || field.value.is_null() {
            continue;
        }
        let theirs = kept
            .custom_fields
            .iter()
            .find(|k| k.key.as_ref() == Some(key) && !k.value.is_null());
        if let Some(linked) = theirs.filter(|k| k.value != field.value) {
            clashes.push(TwinConflict {
                field: key.clone(),
                sent: serde_json::Value::Null,
                linked: linked.value.clone(),
                twin: field.value.clone(),
                twin_won: false,
                policy: TWIN_POLICY,
            });
        }
    }
    clashes
}

/// Default fields (`firstName`, `lastName`, `company`, `role`) the mapping does not manage that
/// the twin holds: (name, the twin's value, the linked contact's value if any).
fn unmanaged_defaults(
    twin: &Contact,
    kept: &Contact,
    managed: &Managed,
) -> Vec<(&'static str, String, Option<String>)> {
    fn text(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    let (t, k) = (&twin.default_fields, &kept.default_fields);
    [
        (field::FIRST_NAME, &t.first_name, &k.first_name),
        (field::LAST_NAME, &t.last_name, &k.last_name),
        (field::COMPANY, &t.company, &k.company),
        (field::ROLE, &t.role, &k.role),
    ]
    .into_iter()
    .filter(|(name, _, _)| !managed.default_fields.contains(name))
    .filter_map(|(name, theirs, ours)| {
        Some((
            name,
            text(theirs)?.to_string(),
            text(ours).map(str::to_string),
        ))
    })
    .collect()
}

/// Custom values of types the API cannot write that the twin holds and the linked contact
/// lacks: they cannot be carried over, so each is recorded rather than deleted with the twin.
fn unwritable_left_behind(kept: &Contact, twin: &Contact, managed: &Managed) -> Vec<TwinConflict> {
    twin.custom_fields
        .iter()
        .filter(|f| f.field_type.as_ref().is_some_and(|t| !t.is_writable()))
        .filter(|f| !f.value.is_null())
        .filter_map(|f| Some((f.key.as_ref()?, f)))
        .filter(|(key, _)| !managed.custom_keys.contains(key))
        .filter(|(key, _)| {
            !kept
                .custom_fields
                .iter()
                .any(|k| k.key.as_ref() == Some(key) && !k.value.is_null())
        })
        .map(|(key, f)| TwinConflict {
            field: key.clone(),
            sent: serde_json::Value::Null,
            linked: serde_json::Value::Null,
            twin: f.value.clone(),
            twin_won: false,
            policy: TWIN_NOT_CARRIED,
        })
        .collect()
}

/// Adds to `kept` the emails, phones (labels the mapping does not write) and custom values
/// (keys it does not write, of types the API can write) that `twin` has and `kept` lacks;
/// returns their names and values. Item ids are the twin's, so they are dropped: Quo appends the
/// items as new.
fn add_unmanaged(
    kept: &mut Contact,
    twin: &Contact,
    managed: &Managed,
) -> Vec<(String, serde_json::Value)> {
    let mut added = Vec::new();
    let mut items = |kept: &mut Vec<ContactItem>, twin: &[ContactItem], labels: &[String]| {
        for item in twin {
            let unmanaged = !labels.contains(&item.name);
            let missing = !kept.iter().any(|k| k.value == item.value);
            if let Some(value) = item.value.as_ref().filter(|_| unmanaged && missing) {
                added.push((item.name.clone(), value.clone().into()));
                kept.push(ContactItem {
                    id: None,
                    ..item.clone()
                });
            }
        }
    };
    items(
        &mut kept.default_fields.emails,
        &twin.default_fields.emails,
        &managed.email_labels,
    );
    items(
        &mut kept.default_fields.phone_numbers,
        &twin.default_fields.phone_numbers,
        &managed.phone_labels,
    );
    for field in &twin.custom_fields {
        let Some(key) = &field.key else { continue };
        let writable = field.field_type.as_ref().is_none_or(|t| t.is_writable());
        let unmanaged = !managed.custom_keys.contains(key);
        let missing = !kept
            .custom_fields
            .iter()
            .any(|k| k.key.as_ref() == Some(key) && !k.value.is_null());
        if writable && unmanaged && missing && !field.value.is_null() {
            added.push((key.clone(), field.value.clone()));
            kept.custom_fields.retain(|k| k.key.as_ref() != Some(key));
            kept.custom_fields.push(field.clone());
        }
    }
    added
}
