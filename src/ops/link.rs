//! `quo-sync link`: an operator's answer to a record held before create, and the way back.
//!
//! - `link <external-id> <quo-contact-id>`: adopt that contact for the record (even when it
//!   matches others, or comes from a source `sync.adopt_sources` does not list), by the next
//!   cycle's adoption PATCH;
//! - `link <external-id> --create`: create a new contact for the record whatever it matches;
//! - `link <external-id> --undo`: give an adopted contact back. Its `source` and `externalId`
//!   return to what they were, every managed value the adoption replaced returns where the
//!   contact still holds what the adoption wrote (an edit made since stays), and the record is
//!   held until the operator decides again. A contact quo-sync created is not undone this way.
//!
//! The decision is kept in the ledger (`match_decisions`) and applied by the cycle the command
//! runs (and by every later one until it is), so `link` is safe to repeat.

use serde_json::Value;

use crate::domain::{ExternalId, field};
use crate::ledger::{Ledger, LedgerError, MatchDecision};
use crate::mapping::Mapper;
use crate::quo::client::{QuoClient, QuoError};

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRequest {
    /// Adopt this contact.
    To(String),
    /// Create a new contact.
    Create,
    /// Give back the contact the record adopted.
    Undo,
}

/// Why a link request was refused (nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The contact does not exist in Quo.
    #[error("Quo has no contact {0}")]
    NoContact(String),
    /// The contact belongs to a native integration: read-only in Quo.
    #[error(
        "contact {quo_id} belongs to Quo's native {integration} integration and is read-only in Quo; it cannot be adopted (use --create)"
    )]
    ReadOnly {
        /// The contact.
        quo_id: String,
        /// Its source.
        integration: String,
    },
    /// The contact is another record's.
    #[error(
        "contact {quo_id} is record {holder}'s; undo that first (`quo-sync link {holder} --undo`) or choose another"
    )]
    Taken {
        /// The contact.
        quo_id: String,
        /// The record holding it.
        holder: String,
    },
    /// The record is linked already.
    #[error(
        "{external_id} is already linked to contact {quo_id}; `quo-sync link {external_id} --undo` gives an adopted contact back first"
    )]
    Linked {
        /// The record.
        external_id: String,
        /// Its contact.
        quo_id: String,
    },
    /// `--undo` on a record whose contact was not adopted.
    #[error(
        "{0} did not adopt a contact (quo-sync created it, or it is not linked): nothing to undo"
    )]
    NotAdopted(String),
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Quo.
    #[error(transparent)]
    Quo(#[from] QuoError),
}

/// Records the operator's decision for `external_id` after checking it can be applied.
pub async fn decide(
    ledger: &Ledger,
    client: &QuoClient,
    external_id: &ExternalId,
    request: &LinkRequest,
) -> Result<(), LinkError> {
    let row = ledger.record(external_id).await?;
    if let Some(quo_id) = row.as_ref().and_then(|r| r.quo_id.clone()) {
        return Err(LinkError::Linked {
            external_id: external_id.to_string(),
            quo_id: quo_id.to_string(),
        });
    }
    let decision = match request {
        LinkRequest::Create => MatchDecision::Create,
        LinkRequest::To(quo_id) => {
            let contact = client
                .get_contact(quo_id)
                .await?
                .ok_or_else(|| LinkError::NoContact(quo_id.clone()))?;
            if let Some(source) = contact.source.as_deref().filter(|s| {
                crate::config::NATIVE_SOURCES.contains(&s.to_ascii_lowercase().as_str())
            }) {
                return Err(LinkError::ReadOnly {
                    quo_id: quo_id.clone(),
                    integration: source.to_string(),
                });
            }
            let holder = ledger
                .record_holding(quo_id)
                .await?
                .filter(|h| h != external_id.as_str())
                .or_else(|| {
                    // Ours for another record (a contact quo-sync made).
                    (contact.source.as_deref() == Some(client.source()))
                        .then(|| contact.external_id.clone())
                        .flatten()
                        .filter(|e| e != external_id.as_str())
                });
            if let Some(holder) = holder {
                return Err(LinkError::Taken {
                    quo_id: quo_id.clone(),
                    holder,
                });
            }
            ledger.workspace_put(std::slice::from_ref(&contact)).await?;
            MatchDecision::Link(quo_id.clone())
        }
        LinkRequest::Undo => unreachable!("undo is not a decision: see `undo`"),
    };
    ledger
        .set_match_decision(external_id.as_str(), &decision)
        .await?;
    tracing::info!(event = "match_decided", external_id = %external_id, decision = ?decision, "an operator decided a held record");
    Ok(())
}

/// What `--undo` gave back.
#[derive(Debug, Clone, PartialEq)]
pub struct Undone {
    /// The contact.
    pub quo_id: String,
    /// Managed fields set back to the values the adoption replaced.
    pub restored: Vec<String>,
    /// Fields left as they are because they changed since the adoption.
    pub kept: Vec<String>,
}

/// Gives back the contact `external_id` adopted: its previous `source` and `externalId`, and
/// the replaced values the contact still holds as the adoption wrote them; the record is then
/// held until the operator decides again.
pub async fn undo(
    ledger: &Ledger,
    client: &QuoClient,
    mapper: &Mapper,
    managed: &crate::sync::payload::Managed,
    external_id: &ExternalId,
) -> Result<Undone, LinkError> {
    let not_adopted = || LinkError::NotAdopted(external_id.to_string());
    let adoption = ledger
        .adoption(external_id.as_str())
        .await?
        .ok_or_else(not_adopted)?;
    let row = ledger.record(external_id).await?.ok_or_else(not_adopted)?;
    if row.quo_id.as_ref().map(|q| q.as_str()) != Some(adoption.quo_id.as_str()) {
        return Err(not_adopted());
    }
    let current = client
        .get_contact(&adoption.quo_id)
        .await?
        .ok_or_else(|| LinkError::NoContact(adoption.quo_id.clone()))?;
    let now = mapper.from_contact(&current);
    let now_fields = now.fields();
    let mut desired = now.clone();
    let (mut restored, mut kept) = (Vec::new(), Vec::new());
    for (name, before) in &adoption.replaced {
        let wrote = adoption.written.get(name).cloned().unwrap_or(Value::Null);
        let still = now_fields.get(name).cloned().unwrap_or(Value::Null);
        if still == wrote && restorable(name, before, &mut desired) {
            restored.push(name.clone());
        } else {
            kept.push(name.clone());
        }
    }
    let mut body = crate::sync::payload::patch_body(&desired, Some(&current), managed);
    body.source = Some(adoption.previous_source.clone());
    body.external_id = Some(adoption.previous_external_id.clone());
    // Only the managed values and the identity change; a list the adoption relabelled is
    // written in full (labels are how the mapping tells its items from others).
    client.update_contact(&adoption.quo_id, &body).await?;
    ledger.forget(external_id).await?;
    ledger.forget_adoption(external_id.as_str()).await?;
    ledger
        .set_match_decision(external_id.as_str(), &MatchDecision::Hold)
        .await?;
    if let Some(updated) = client.get_contact(&adoption.quo_id).await? {
        ledger.workspace_put(std::slice::from_ref(&updated)).await?;
    }
    tracing::warn!(event = "adoption_undone", external_id = %external_id, quo_id = %adoption.quo_id,
                   restored = ?restored, kept = ?kept, "an operator gave an adopted contact back; the record is held");
    Ok(Undone {
        quo_id: adoption.quo_id,
        restored,
        kept,
    })
}

/// Sets field `name` of `desired` back to `before` (a list's relabelled items included);
/// `false` for a name the snapshot does not hold.
fn restorable(name: &str, before: &Value, desired: &mut crate::domain::Snapshot) -> bool {
    match name {
        field::EMAILS | field::PHONE_NUMBERS => {
            let items: Vec<crate::domain::Labeled> =
                serde_json::from_value(before.clone()).unwrap_or_default();
            if name == field::EMAILS {
                desired.emails = items;
            } else {
                desired.phone_numbers = items;
            }
            true
        }
        _ => desired.set_field(name, before.clone()),
    }
}
