//! The workspace doubt (`reverse::doubt`) as an operator meets it: the `status` lines and
//! fields, the `/readyz` answer, and the console's banner all say the same three things: since
//! when and why the key is not shown to answer for the synced workspace, what is held back
//! meanwhile, and what to do.

use serde::Serialize;

use crate::reverse::doubt::{NEXT_STEP, WorkspaceDoubt};

/// The doubt on record with its reason and the next step spelled out (`status --json`'s
/// `workspace_doubt`, the console's `/api/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoubtReport {
    /// The record: `since`, `checked_at`, `sampled`, `found`, `missing`, `held`, `held_at`.
    #[serde(flatten)]
    pub doubt: WorkspaceDoubt,
    /// Why, in words (`10 of 10 linked contacts read back answered 404`).
    pub reason: String,
    /// What is held back, in words.
    pub holding: String,
    /// What the operator does.
    pub next_step: &'static str,
}

impl DoubtReport {
    /// The report of `doubt`.
    pub fn of(doubt: WorkspaceDoubt) -> Self {
        Self {
            reason: doubt.reason(),
            holding: holding(&doubt),
            next_step: NEXT_STEP,
            doubt,
        }
    }

    /// The `status` lines.
    pub fn render(&self) -> String {
        let d = &self.doubt;
        format!(
            "workspace     IN DOUBT since {}: {} (last read-back {})\n  holding     {}\n  next step   {}\n",
            d.since, self.reason, d.checked_at, self.holding, self.next_step
        )
    }

    /// `/readyz`'s words (numbers and times only: that route needs no login).
    pub fn readiness(&self) -> String {
        format!(
            "the Quo workspace is in doubt since {} ({}); creates and deletions are held; check quo.api_key (details: quo-sync status)",
            self.doubt.since, self.reason
        )
    }
}

/// Creates and deletions always wait; the counts are the last cycle's in doubt.
fn holding(doubt: &WorkspaceDoubt) -> String {
    match &doubt.held_at {
        Some(at) => format!("{} (the cycle of {at})", doubt.held_words()),
        None => "creates and deletions wait (no cycle has ended in doubt yet)".to_string(),
    }
}

/// The commands and keys an operator types, in the next step's words.
const TYPED: &[&str] = &[
    "quo-sync once --allow-mass-delete",
    "QUO_SYNC__QUO__API_KEY",
    "quo.api_key",
];

/// `text`, HTML-escaped by `esc`, with the commands and keys in it set as code (never broken
/// across lines on the console).
pub fn html_with_commands(text: &str, esc: impl Fn(&str) -> String) -> String {
    let mut html = esc(text);
    for typed in TYPED {
        let escaped = esc(typed);
        html = html.replace(&escaped, &format!("<code>{escaped}</code>"));
    }
    html
}
