//! Which CRM record an activity belongs to, never guessed: first the Quo contacts Quo matched
//! (`context.contacts.ids`) through the ledger (Quo contact id → record), then the outside
//! party's number through an index of the ledger's phone numbers. No record, or two, is an
//! answer of its own ([`Link::Unmatched`], [`Link::Ambiguous`]) that `activity.unmatched`
//! decides about; it is never resolved by picking one.
//!
//! The index lives in memory and is refreshed from the records changed since its last look
//! (`records.updated_at`, with a few seconds of overlap for transactions that committed late),
//! and rebuilt in full every ten minutes. Records gone from the CRM (`deleted`) link nothing.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::model::Activity;
use crate::ledger::{Ledger, LedgerError, RecordPhones};

/// How often the index is rebuilt from scratch.
const FULL_REBUILD: Duration = Duration::from_secs(600);
/// How far back each refresh looks before the newest change it saw.
const OVERLAP: chrono::Duration = chrono::Duration::seconds(5);

/// How an activity was linked, or why it was not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// One record.
    Record {
        /// The CRM id.
        external_id: String,
        /// `contact` (by Quo contact id) or `phone`.
        how: &'static str,
    },
    /// No record.
    Unmatched,
    /// Two or more records: never guessed.
    Ambiguous(Vec<String>),
}

impl Link {
    /// The `link` column: `contact`, `phone`, `none` or `ambiguous`.
    pub fn label(&self) -> &'static str {
        match self {
            Link::Record { how, .. } => how,
            Link::Unmatched => "none",
            Link::Ambiguous(_) => "ambiguous",
        }
    }

    /// Why it was not linked, for `status` and the console.
    pub fn reason(&self, activity: &Activity) -> Option<String> {
        match self {
            Link::Record { .. } => None,
            Link::Unmatched => Some(format!(
                "no record has {} or Quo contact {:?}",
                if activity.external_numbers.is_empty() {
                    "a number".to_string()
                } else {
                    activity.external_numbers.join(", ")
                },
                activity.contact_ids.clone().unwrap_or_default()
            )),
            Link::Ambiguous(ids) => {
                Some(format!("{} records match: {}", ids.len(), ids.join(", ")))
            }
        }
    }
}

/// The digits of a number (`+1 (415) 555-0100` and `+14155550100` are the same).
pub fn phone_key(number: &str) -> String {
    number.chars().filter(char::is_ascii_digit).collect()
}

#[derive(Debug, Default)]
struct Entry {
    phones: Vec<String>,
    quo_id: Option<String>,
}

/// The ledger's records by phone and by Quo contact id.
#[derive(Debug, Default)]
pub struct PhoneIndex {
    records: HashMap<String, Entry>,
    by_phone: HashMap<String, BTreeSet<String>>,
    by_quo: HashMap<String, String>,
    newest: Option<String>,
    built_at: Option<Instant>,
}

impl PhoneIndex {
    /// Records indexed.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is indexed.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn remove(&mut self, external_id: &str) {
        if let Some(old) = self.records.remove(external_id) {
            for phone in old.phones {
                if let Some(ids) = self.by_phone.get_mut(&phone) {
                    ids.remove(external_id);
                    if ids.is_empty() {
                        self.by_phone.remove(&phone);
                    }
                }
            }
            if let Some(quo) = old.quo_id
                && self.by_quo.get(&quo).is_some_and(|id| id == external_id)
            {
                self.by_quo.remove(&quo);
            }
        }
    }

    fn put(&mut self, row: RecordPhones) {
        self.remove(&row.external_id);
        if row.state == "deleted" {
            return;
        }
        let phones: Vec<String> = row
            .phones
            .iter()
            .map(|p| phone_key(p))
            .filter(|p| !p.is_empty())
            .collect();
        for phone in &phones {
            self.by_phone
                .entry(phone.clone())
                .or_default()
                .insert(row.external_id.clone());
        }
        if let Some(quo) = &row.quo_id {
            self.by_quo.insert(quo.clone(), row.external_id.clone());
        }
        self.records.insert(
            row.external_id,
            Entry {
                phones,
                quo_id: row.quo_id,
            },
        );
    }

    /// Brings the index up to date; returns whether any record changed.
    pub async fn refresh(&mut self, ledger: &Ledger) -> Result<bool, LedgerError> {
        let full = self.built_at.is_none_or(|at| at.elapsed() >= FULL_REBUILD);
        let since = if full {
            None
        } else {
            self.newest.as_deref().map(|newest| {
                chrono::DateTime::parse_from_rfc3339(newest)
                    .map(|t| {
                        (t - OVERLAP)
                            .with_timezone(&chrono::Utc)
                            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    })
                    .unwrap_or_default()
            })
        };
        let rows = ledger.records_changed_since(since.as_deref()).await?;
        if full {
            *self = Self {
                built_at: Some(Instant::now()),
                ..Self::default()
            };
        }
        let mut changed = full;
        for row in rows {
            if self
                .newest
                .as_deref()
                .is_none_or(|n| row.updated_at.as_str() > n)
            {
                self.newest = Some(row.updated_at.clone());
            }
            let same = self.records.get(&row.external_id).is_some_and(|e| {
                row.state != "deleted"
                    && e.quo_id == row.quo_id
                    && e.phones
                        == row
                            .phones
                            .iter()
                            .map(|p| phone_key(p))
                            .filter(|p| !p.is_empty())
                            .collect::<Vec<_>>()
            });
            if !same {
                changed = true;
                self.put(row);
            }
        }
        Ok(changed)
    }

    /// Links `activity`: by Quo contact id, then by the outside party's number.
    pub fn link(&self, activity: &Activity) -> Link {
        let by_contact: BTreeSet<String> = activity
            .contact_ids
            .iter()
            .flatten()
            .filter_map(|id| self.by_quo.get(id).cloned())
            .collect();
        if let Some(found) = single(by_contact, "contact") {
            return found;
        }
        let by_phone: BTreeSet<String> = activity
            .external_numbers
            .iter()
            .filter_map(|n| self.by_phone.get(&phone_key(n)))
            .flatten()
            .cloned()
            .collect();
        single(by_phone, "phone").unwrap_or(Link::Unmatched)
    }
}

fn single(ids: BTreeSet<String>, how: &'static str) -> Option<Link> {
    match ids.len() {
        0 => None,
        1 => ids
            .into_iter()
            .next()
            .map(|external_id| Link::Record { external_id, how }),
        _ => Some(Link::Ambiguous(ids.into_iter().collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::model::Family;

    fn record(id: &str, quo: Option<&str>, phones: &[&str], state: &str) -> RecordPhones {
        RecordPhones {
            external_id: id.into(),
            quo_id: quo.map(str::to_string),
            state: state.into(),
            phones: phones.iter().map(|p| p.to_string()).collect(),
            updated_at: "2026-05-01T00:00:00.000Z".into(),
        }
    }

    fn call(contacts: Option<Vec<&str>>, numbers: &[&str]) -> Activity {
        Activity {
            contact_ids: contacts.map(|c| c.into_iter().map(str::to_string).collect()),
            external_numbers: numbers.iter().map(|n| n.to_string()).collect(),
            ..Activity::new("AC1", Family::Call)
        }
    }

    #[test]
    fn contacts_first_then_phones_and_never_a_guess() {
        let mut index = PhoneIndex::default();
        index.put(record("crm-1", Some("q1"), &["+14155550100"], "synced"));
        index.put(record(
            "crm-2",
            Some("q2"),
            &["+1 (415) 555-0200"],
            "synced",
        ));
        index.put(record("crm-3", Some("q3"), &["+14155550200"], "synced"));
        index.put(record("crm-4", Some("q4"), &["+14155550400"], "deleted"));
        let by_contact = index.link(&call(Some(vec!["q1"]), &["+14155550200"]));
        assert_eq!(
            by_contact,
            Link::Record {
                external_id: "crm-1".into(),
                how: "contact"
            }
        );
        let by_phone = index.link(&call(Some(vec!["unknown"]), &["+14155550100"]));
        assert_eq!(
            by_phone,
            Link::Record {
                external_id: "crm-1".into(),
                how: "phone"
            }
        );
        assert_eq!(
            index.link(&call(None, &["+14155550200"])),
            Link::Ambiguous(vec!["crm-2".into(), "crm-3".into()]),
            "two records share the number: ambiguous, not the first"
        );
        assert_eq!(
            index.link(&call(Some(vec!["q1", "q2"]), &[])),
            Link::Ambiguous(vec!["crm-1".into(), "crm-2".into()])
        );
        assert_eq!(
            index.link(&call(None, &["+14155550400"])),
            Link::Unmatched,
            "deleted records link nothing"
        );
        assert_eq!(
            index.link(&call(Some(vec![]), &["+19995550000"])),
            Link::Unmatched
        );
        // A record that drops the number no longer matches it.
        index.put(record("crm-3", Some("q3"), &["+14155550300"], "synced"));
        assert_eq!(
            index.link(&call(None, &["+14155550200"])),
            Link::Record {
                external_id: "crm-2".into(),
                how: "phone"
            }
        );
    }
}
