//! What a cycle does or would do, one line per record: the output of `quo-sync plan` and the
//! detail behind a cycle summary.

use serde::Serialize;

/// The kind of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// One POST.
    Create,
    /// One PATCH.
    Update,
    /// One DELETE (`sync.on_source_delete = "delete"`).
    Delete,
    /// Quarantined, with the reason.
    Quarantine,
    /// An interrupted create to resolve by lookup.
    Resolve,
    /// A Quo edit written to the CRM.
    WriteCrm,
    /// A contact deleted in Quo, handled by `reverse.on_quo_delete`.
    Unlink,
    /// A contact already in Quo made the record's by one PATCH (`quo_id`: the contact;
    /// `fields`: what changes, `source` and `externalId` included).
    Adopt,
    /// Held before create (`reason` names the contacts): nothing created, nothing changed.
    Held,
    /// A contact made in the Quo app made into a CRM record (`quo_id`: the contact; `fields`:
    /// what the record holds), then adopted for it.
    CreateInCrm,
}

impl Action {
    /// The word used in tables and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Quarantine => "quarantine",
            Action::Resolve => "resolve",
            Action::WriteCrm => "write_crm",
            Action::Unlink => "unlink",
            Action::Adopt => "adopt",
            Action::Held => "held",
            Action::CreateInCrm => "create_in_crm",
        }
    }
}

/// One planned or performed operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedOp {
    /// The record.
    pub external_id: String,
    /// What happens to it.
    pub action: Action,
    /// The Quo contact, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quo_id: Option<String>,
    /// Changed fields (updates).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Why (quarantine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl PlannedOp {
    /// A bare operation.
    pub fn new(external_id: &str, action: Action) -> Self {
        Self {
            external_id: external_id.to_string(),
            action,
            quo_id: None,
            fields: Vec::new(),
            reason: None,
        }
    }

    /// With changed fields.
    pub fn with_fields(mut self, fields: Vec<String>) -> Self {
        self.fields = fields;
        self
    }

    /// With the Quo id.
    pub fn with_quo_id(mut self, quo_id: &str) -> Self {
        self.quo_id = Some(quo_id.to_string());
        self
    }

    /// With a reason.
    pub fn with_reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_string());
        self
    }
}

/// The text `quo-sync plan` prints: a summary of counts, then one line per record (`adopt
/// <contact-id>: <fields that change>`, `create`, `update <fields>`, `held <reason>`, …).
pub fn render_plan(counts: &crate::ledger::RunCounts, operations: &[PlannedOp]) -> String {
    let c = counts;
    let mut out = format!(
        "plan: create {}  adopt {}  update {}  held {}  delete {}  unchanged {}  quarantine {}{}\n",
        c.created,
        c.adopted,
        c.updated,
        c.held,
        c.deleted,
        c.unchanged,
        c.quarantined,
        if c.exported > 0 {
            format!("  create_in_crm {}", c.exported)
        } else {
            String::new()
        }
    );
    out.push_str(&render_table(operations));
    out
}

/// Renders operations as an aligned text table.
pub fn render_table(operations: &[PlannedOp]) -> String {
    let mut out = String::new();
    let width = operations
        .iter()
        .map(|o| o.external_id.len())
        .max()
        .unwrap_or(9)
        .max(9);
    out.push_str(&format!(
        "{:<10} {:<width$} {}\n",
        "ACTION", "EXTERNAL_ID", "DETAIL"
    ));
    for op in operations {
        let detail = match (&op.reason, op.fields.is_empty(), &op.quo_id) {
            (Some(reason), _, _) => reason.clone(),
            (None, false, Some(quo_id)) if op.action == Action::Adopt => {
                format!("{quo_id}: {}", op.fields.join(", "))
            }
            (None, false, _) => op.fields.join(", "),
            (None, true, quo_id) => quo_id.clone().unwrap_or_default(),
        };
        out.push_str(&format!(
            "{:<10} {:<width$} {}\n",
            op.action.as_str(),
            op.external_id,
            detail
        ));
    }
    out
}
