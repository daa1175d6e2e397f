//! Three-way merge per field: base = the ledger's last agreed snapshot, one side the CRM as read
//! now, the other Quo as fetched now.
//!
//! A field changed on one side only flows to the other (if its direction allows); a field changed
//! on both sides to different values is a conflict, decided by the field's policy (default
//! `reverse.conflict`) and reported so it can be logged and recorded. The outcome says exactly
//! which fields each side must receive, so nothing is ever written to a side that already has
//! the value.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::{ConflictPolicy, FieldDirection, FieldPolicy};
use crate::domain::Snapshot;

/// Which side won a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The CRM.
    Crm,
    /// Quo.
    Quo,
}

impl Side {
    /// `crm` or `quo`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Crm => "crm",
            Side::Quo => "quo",
        }
    }
}

/// A field both sides changed to different values.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// Diff name of the field.
    pub field: String,
    /// The agreed value before.
    pub base: Value,
    /// The CRM's value.
    pub crm: Value,
    /// Quo's value.
    pub quo: Value,
    /// Who won.
    pub winner: Side,
    /// The policy that decided (`newest`, `crm`, `quo`, or `direction`).
    pub policy: &'static str,
}

/// The merge result.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeOutcome {
    /// The new agreed snapshot.
    pub merged: Snapshot,
    /// Fields Quo must receive (merged differs from Quo).
    pub to_quo: Vec<String>,
    /// Fields the CRM must receive (merged differs from the CRM).
    pub to_crm: Vec<String>,
    /// Conflicts decided.
    pub conflicts: Vec<Conflict>,
}

/// Conflict settings.
#[derive(Debug, Clone, Default)]
pub struct MergePolicy {
    /// The default conflict policy.
    pub conflict: Option<ConflictPolicy>,
    /// Per-field overrides.
    pub fields: BTreeMap<String, FieldPolicy>,
    /// Direction of fields without an override (`both` when unset); one-way sync (the reverse
    /// path off) is `to_quo`: the CRM owns managed fields, and nothing is written to it.
    pub default_direction: Option<FieldDirection>,
}

impl MergePolicy {
    fn direction(&self, field: &str) -> FieldDirection {
        self.fields
            .get(field)
            .and_then(|p| p.direction)
            .or(self.default_direction)
            .unwrap_or(FieldDirection::Both)
    }

    fn conflict(&self, field: &str) -> ConflictPolicy {
        self.fields
            .get(field)
            .and_then(|p| p.conflict)
            .or(self.conflict)
            .unwrap_or(ConflictPolicy::Newest)
    }
}

/// Merges `crm` and `quo` against `base`.
pub fn merge(
    base: &Snapshot,
    crm: &Snapshot,
    quo: &Snapshot,
    crm_modified: Option<DateTime<Utc>>,
    quo_modified: Option<DateTime<Utc>>,
    policy: &MergePolicy,
) -> MergeOutcome {
    let base_fields = base.fields();
    let crm_fields = crm.fields();
    let quo_fields = quo.fields();
    let mut names: Vec<&String> = base_fields
        .keys()
        .chain(crm_fields.keys())
        .chain(quo_fields.keys())
        .collect();
    names.sort();
    names.dedup();

    let mut merged = crm.clone();
    let mut conflicts = Vec::new();
    for name in names {
        let b = base_fields.get(name).cloned().unwrap_or(Value::Null);
        let c = crm_fields.get(name).cloned().unwrap_or(Value::Null);
        let q = quo_fields.get(name).cloned().unwrap_or(Value::Null);
        let direction = policy.direction(name);
        let pick = if c == q {
            Side::Crm
        } else if c == b {
            // Only Quo changed.
            if direction == FieldDirection::ToQuo {
                Side::Crm
            } else {
                Side::Quo
            }
        } else if q == b {
            // Only the CRM changed.
            if direction == FieldDirection::ToCrm {
                Side::Quo
            } else {
                Side::Crm
            }
        } else {
            let (winner, decided_by) = match direction {
                FieldDirection::ToQuo => (Side::Crm, "direction"),
                FieldDirection::ToCrm => (Side::Quo, "direction"),
                FieldDirection::Both => match policy.conflict(name) {
                    ConflictPolicy::Crm => (Side::Crm, "crm"),
                    ConflictPolicy::Quo => (Side::Quo, "quo"),
                    ConflictPolicy::Newest => match (crm_modified, quo_modified) {
                        (Some(crm_at), Some(quo_at)) if quo_at > crm_at => (Side::Quo, "newest"),
                        (Some(_), Some(_)) => (Side::Crm, "newest"),
                        // A side without a time: the CRM is the system of record.
                        _ => (Side::Crm, "newest"),
                    },
                },
            };
            conflicts.push(Conflict {
                field: name.clone(),
                base: b,
                crm: c.clone(),
                quo: q.clone(),
                winner,
                policy: decided_by,
            });
            winner
        };
        let value = if pick == Side::Crm { c } else { q };
        merged.set_field(name, value);
    }
    let to_quo = quo.changed_fields(&merged);
    let to_crm = crm.changed_fields(&merged);
    MergeOutcome {
        merged,
        to_quo,
        to_crm,
        conflicts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(first: &str, company: &str) -> Snapshot {
        Snapshot {
            first_name: Some(first.into()),
            company: Some(company.into()),
            ..Default::default()
        }
    }

    fn at(s: &str) -> Option<DateTime<Utc>> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn one_sided_changes_flow_to_the_other_side() {
        let base = snap("Ada", "Acme");
        let crm = snap("Ada", "Globex");
        let quo = snap("Ada L.", "Acme");
        let out = merge(&base, &crm, &quo, None, None, &MergePolicy::default());
        assert_eq!(out.merged, snap("Ada L.", "Globex"));
        assert_eq!(out.to_quo, vec!["company"]);
        assert_eq!(out.to_crm, vec!["firstName"]);
        assert!(out.conflicts.is_empty());
    }

    #[test]
    fn nothing_moves_when_both_sides_agree() {
        let base = snap("Ada", "Acme");
        let same = snap("Ada", "Initech");
        let out = merge(&base, &same, &same, None, None, &MergePolicy::default());
        assert!(out.to_quo.is_empty() && out.to_crm.is_empty() && out.conflicts.is_empty());
    }

    #[test]
    fn conflicts_follow_each_policy() {
        let base = snap("Ada", "Acme");
        let crm = snap("Ada", "CRM Co");
        let quo = snap("Ada", "Quo Co");
        let newer_quo = merge(
            &base,
            &crm,
            &quo,
            at("2026-01-01T00:00:00Z"),
            at("2026-01-02T00:00:00Z"),
            &MergePolicy::default(),
        );
        assert_eq!(newer_quo.merged.company.as_deref(), Some("Quo Co"));
        assert_eq!(newer_quo.conflicts[0].winner, Side::Quo);
        assert_eq!(newer_quo.to_crm, vec!["company"]);
        let newer_crm = merge(
            &base,
            &crm,
            &quo,
            at("2026-01-03T00:00:00Z"),
            at("2026-01-02T00:00:00Z"),
            &MergePolicy::default(),
        );
        assert_eq!(newer_crm.merged.company.as_deref(), Some("CRM Co"));
        let no_time = merge(
            &base,
            &crm,
            &quo,
            None,
            at("2026-01-02T00:00:00Z"),
            &MergePolicy::default(),
        );
        assert_eq!(
            no_time.conflicts[0].winner,
            Side::Crm,
            "missing time falls back to crm"
        );
        let quo_wins = MergePolicy {
            conflict: Some(ConflictPolicy::Quo),
            ..Default::default()
        };
        assert_eq!(
            merge(&base, &crm, &quo, None, None, &quo_wins)
                .merged
                .company
                .as_deref(),
            Some("Quo Co")
        );
        let crm_wins = MergePolicy {
            conflict: Some(ConflictPolicy::Crm),
            ..Default::default()
        };
        let out = merge(
            &base,
            &crm,
            &quo,
            at("2026-01-01T00:00:00Z"),
            at("2026-01-02T00:00:00Z"),
            &crm_wins,
        );
        assert_eq!(out.merged.company.as_deref(), Some("CRM Co"));
        assert_eq!(out.conflicts[0].crm, json!("CRM Co"));
        assert_eq!(out.conflicts[0].quo, json!("Quo Co"));
    }

    #[test]
    fn per_field_overrides_and_directions_apply() {
        let base = snap("Ada", "Acme");
        let crm = snap("Ada", "CRM Co");
        let quo = snap("Adaline", "Quo Co");
        let mut fields = BTreeMap::new();
        fields.insert(
            "company".to_string(),
            FieldPolicy {
                conflict: Some(ConflictPolicy::Quo),
                direction: None,
            },
        );
        fields.insert(
            "firstName".to_string(),
            FieldPolicy {
                conflict: None,
                direction: Some(FieldDirection::ToQuo),
            },
        );
        let policy = MergePolicy {
            conflict: Some(ConflictPolicy::Crm),
            fields,
            default_direction: None,
        };
        let out = merge(&base, &crm, &quo, None, None, &policy);
        assert_eq!(out.merged.company.as_deref(), Some("Quo Co"));
        // firstName flows CRM → Quo only: Quo's edit is overwritten with the CRM's value.
        assert_eq!(out.merged.first_name.as_deref(), Some("Ada"));
        assert_eq!(out.to_quo, vec!["firstName"]);
    }
}
