//! What a cycle does or would do, one line per record: the output of `quo-sync plan` and the
//! detail behind a cycle summary.

use serde::Serialize;

/// The kind of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// One POST.
    Create,
    /// A contact already in Quo made the record's by one PATCH (`quo_id`: the contact;
    /// `fields`: what changes, `source` and `externalId` included).
    Adopt,
    /// One PATCH.
    Update,
    /// One DELETE (`sync.on_source_delete = "delete"`).
    Delete,
    /// Quarantined, with the reason.
    Quarantine,
    /// Held before create (`reason` names the contacts): nothing created, nothing changed.
    Held,
    /// An interrupted create to resolve by lookup.
    Resolve,
    /// A Quo edit written to the CRM.
    WriteCrm,
    /// A contact made in the Quo app made into a CRM record (`quo_id`: the contact; `fields`:
    /// what the record holds), then adopted for it.
    CreateInCrm,
    /// A contact deleted in Quo, handled by `reverse.on_quo_delete`.
    Unlink,
    /// A synced record the filter no longer admits (`reason`: `sync.on_leave_scope`).
    LeaveScope,
    /// A record back in scope, linked to its contact again (`quo_id`).
    Relink,
    /// Work `sync.mode` holds back (`reason` says which mode).
    Skip,
}

impl Action {
    /// The word used in tables and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Adopt => "adopt",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Quarantine => "quarantine",
            Action::Held => "held",
            Action::Resolve => "resolve",
            Action::WriteCrm => "write_crm",
            Action::CreateInCrm => "create_in_crm",
            Action::Unlink => "unlink",
            Action::LeaveScope => "leave_scope",
            Action::Relink => "relink",
            Action::Skip => "skip",
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

/// Renders operations as an aligned table (action, record, contact, what changes), sorted by
/// action in the order a cycle sends them, under a summary line; `colour` paints the actions.
/// Every column comes from [`PlannedOp`] alone, so a new action needs no change here.
pub fn render_table(operations: &[PlannedOp], colour: bool) -> String {
    let mut sorted: Vec<&PlannedOp> = operations.iter().collect();
    sorted.sort_by(|a, b| (a.action as u8, &a.external_id).cmp(&(b.action as u8, &b.external_id)));
    let contact = |op: &PlannedOp| op.quo_id.clone().unwrap_or_else(|| "-".into());
    // A row without an id is named by its location: its file name and line are enough.
    let record = |op: &PlannedOp| crate::telemetry::shorten(&op.external_id);
    let detail = |op: &PlannedOp| {
        let fields = op.fields.join(", ");
        match (&op.reason, fields.is_empty()) {
            (Some(reason), true) => reason.clone(),
            (Some(reason), false) => format!("{fields} ({reason})"),
            (None, _) => fields,
        }
    };
    let width = |title: &str, cell: &dyn Fn(&PlannedOp) -> String| {
        sorted
            .iter()
            .map(|op| cell(op).chars().count())
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let action_w = width("ACTION", &|op| op.action.as_str().to_string());
    let record_w = width("RECORD", &record);
    let contact_w = width("CONTACT", &contact);
    let mut out = summary_line(operations);
    out.push('\n');
    if sorted.is_empty() {
        return out;
    }
    let header = format!(
        "{:<action_w$}  {:<record_w$}  {:<contact_w$}  CHANGES",
        "ACTION", "RECORD", "CONTACT"
    );
    out.push_str(&paint(colour, "1", &header));
    out.push('\n');
    for op in sorted {
        let action = format!("{:<action_w$}", op.action.as_str());
        let row = format!(
            "{}  {:<record_w$}  {:<contact_w$}  {}",
            paint(colour, action_colour(op.action), &action),
            record(op),
            contact(op),
            detail(op)
        );
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}

/// `27 operations: 23 create, 4 quarantine` (by action, in table order).
pub fn summary_line(operations: &[PlannedOp]) -> String {
    let mut counts: Vec<(Action, usize)> = Vec::new();
    for op in operations {
        match counts.iter_mut().find(|(a, _)| *a == op.action) {
            Some((_, n)) => *n += 1,
            None => counts.push((op.action, 1)),
        }
    }
    counts.sort_by_key(|(a, _)| *a as u8);
    if counts.is_empty() {
        return "plan: nothing to do".to_string();
    }
    format!(
        "plan: {} ({})",
        counts
            .iter()
            .map(|(a, n)| format!("{n} {}", a.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
        match operations.len() {
            1 => "1 record".to_string(),
            n => format!("{n} records"),
        }
    )
}

/// The ANSI colour (SGR code) of an action.
fn action_colour(action: Action) -> &'static str {
    // By name, so that an action added later gets a colour without an edit here.
    match action.as_str() {
        "create" => "32",
        "update" | "write_crm" | "adopt" | "relink" | "create_in_crm" => "36",
        "delete" | "unlink" | "leave_scope" => "31",
        "quarantine" | "held" | "skip" => "33",
        _ => "35",
    }
}

fn paint(colour: bool, sgr: &str, text: &str) -> String {
    if colour {
        format!("\u{1b}[{sgr}m{text}\u{1b}[0m")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_aligned_sorted_by_action_and_summarised() {
        let ops = vec![
            PlannedOp::new("C-1017", Action::Quarantine)
                .with_reason("field \"phone\": value \"555-CALL-NOW\": not a valid phone number"),
            PlannedOp::new("C-1002", Action::Update)
                .with_quo_id("6e5a0c")
                .with_fields(vec!["emails".into(), "company".into()]),
            PlannedOp::new("C-1", Action::Create),
        ];
        let table = render_table(&ops, false);
        assert_eq!(
            table,
            "plan: 1 create, 1 update, 1 quarantine (3 records)\n\
             ACTION      RECORD  CONTACT  CHANGES\n\
             create      C-1     -\n\
             update      C-1002  6e5a0c   emails, company\n\
             quarantine  C-1017  -        field \"phone\": value \"555-CALL-NOW\": not a valid phone number\n"
        );
        let coloured = render_table(&ops, true);
        assert!(coloured.contains("\u{1b}[32mcreate"), "{coloured}");
        assert_eq!(render_table(&[], false), "plan: nothing to do\n");
    }
}
