//! The lines the human view writes in its own words: what is synced to where, the read, each
//! write phase, the rows held back (with row, field and value, a few at most), the result
//! (counts, time, requests against the minimum) and what to do next. Cargo-style: a right-
//! aligned verb, then the facts.

use std::time::Duration;

use crate::ops::progress::WriteTiming;
use crate::sync::{CycleReport, HeldBack, ProgressSnapshot};
use crate::telemetry::{Notice, Terminal};

/// Rows (held back or warned about) listed under a cycle before the rest is left to a command.
pub const MAX_ROWS: usize = 5;

/// Width of the verb column.
const VERB: usize = 9;

/// What the human view knows beyond the report.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Quo's requests per second for this key.
    pub limit_per_s: u32,
    /// The built-in sandbox with a throwaway ledger (nothing is kept after exit).
    pub sandbox: bool,
    /// `run` (a service keeps cycling) rather than `once`.
    pub service: bool,
}

/// `verb` right-aligned in the verb column, bold green (or the given style).
pub fn head(terminal: &Terminal, verb: &str, style: console::Style) -> String {
    terminal.paint(style.bold(), &format!("{verb:>VERB$}"))
}

fn ok(terminal: &Terminal, verb: &str) -> String {
    head(terminal, verb, console::Style::new().green())
}

fn warn(terminal: &Terminal, verb: &str) -> String {
    head(terminal, verb, console::Style::new().yellow())
}

/// Seconds as `2.3s`, or `850ms` below a second.
pub fn took(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `Syncing contacts.csv → Quo at https://api.quo.com (ledger quo-sync.db)`.
pub fn syncing_line(terminal: &Terminal, what: &str, quo: &str, ledger: &str) -> String {
    format!("{} {what} → {quo} ({ledger})", ok(terminal, "Syncing"))
}

/// `Read 27 rows in 0.8s: 23 to create, 4 held back`.
pub fn read_line(terminal: &Terminal, snap: &ProgressSnapshot, took_: Duration) -> String {
    let [create, update, delete] = snap.planned;
    let adopt = snap.adopting.min(create);
    // Before the read's decisions are published (a cycle cut short), what sends no write is
    // counted as unchanged.
    let tally = snap.decided.unwrap_or(crate::sync::ReadTally {
        unchanged: snap
            .records_read
            .saturating_sub(create + update + snap.held_back),
        ..Default::default()
    });
    let mut parts = Vec::new();
    for (n, what) in [
        (create - adopt, "to create"),
        (adopt, "to adopt (already in Quo)"),
        (update, "to update"),
        (delete, "to delete"),
        (tally.unchanged, "unchanged"),
        (tally.out_of_scope, "out of scope"),
        (tally.skipped_by_mode, "skipped by sync.mode"),
        (tally.held, "held (they match contacts in Quo)"),
        (snap.held_back, "held back"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if parts.is_empty() {
        parts.push("nothing to do".into());
    }
    format!(
        "{} {} in {}: {}",
        ok(terminal, "Read"),
        plural(snap.records_read, "row", "rows"),
        took(took_),
        parts.join(", ")
    )
}

/// One held-back row or warning: `line 18  C-1017  phone "555-CALL-NOW": not a valid …`.
pub fn row_line(
    location: Option<&str>,
    external_id: Option<&str>,
    field: Option<&str>,
    value: Option<&str>,
    reason: &str,
) -> String {
    let mut words = Vec::new();
    if let Some(location) = location {
        words.push(match location.find("line ") {
            Some(at) => location[at..].to_string(),
            None => crate::telemetry::shorten(location),
        });
    }
    if let Some(id) = external_id.filter(|id| !id.is_empty()) {
        words.push(id.to_string());
    }
    let blamed = match (field, value) {
        (Some(field), Some(value)) => format!("{field} {value:?}: {reason}"),
        (Some(field), None) => format!("{field}: {reason}"),
        _ => reason.to_string(),
    };
    words.push(blamed);
    words.join("  ")
}

/// The rows a cycle's summary names: held back (quarantined), held before create (day one's
/// matches) and warned about.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// Quarantined rows, with row, field and value.
    pub held_back: Vec<HeldBack>,
    /// Records held before create: they match contacts already in Quo.
    pub held_matches: Vec<HeldBack>,
    /// Row-level warnings.
    pub notices: Vec<Notice>,
}

/// Everything after the bars: write phases, held-back rows and warnings, the result, what next.
pub fn outcome_lines(
    terminal: &Terminal,
    report: &CycleReport,
    rows: &Rows,
    writes: WriteTiming,
    setting: Setting,
) -> Vec<String> {
    let Rows {
        held_back,
        held_matches,
        notices,
    } = rows;
    let c = &report.counts;
    let mut lines = Vec::new();
    let kinds: Vec<(u64, &str)> = [
        (c.created, "Created"),
        (c.adopted, "Adopted"),
        (c.updated, "Updated"),
        (c.deleted, "Deleted"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .collect();
    // Confirmations are seen at the view's ticks, so a rate is known to a few percent: one
    // that close to the limit is the limit.
    let pace = match writes.per_second {
        Some(rate) if writes.elapsed >= Duration::from_millis(500) => {
            let limit = f64::from(setting.limit_per_s);
            if rate >= 0.95 * limit {
                format!(
                    " in {} (at Quo's limit of {}/s)",
                    took(writes.elapsed),
                    setting.limit_per_s
                )
            } else {
                format!(
                    " in {} ({rate:.1}/s; Quo allows {}/s)",
                    took(writes.elapsed),
                    setting.limit_per_s
                )
            }
        }
        _ => String::new(),
    };
    match kinds.as_slice() {
        [] => {}
        [(n, verb)] => lines.push(format!(
            "{} {}{}{}",
            ok(terminal, verb),
            plural(*n, "contact", "contacts"),
            if *verb == "Adopted" {
                " already in Quo"
            } else {
                ""
            },
            pace
        )),
        several => lines.push(format!(
            "{} {}{}",
            ok(terminal, "Wrote"),
            several
                .iter()
                .map(|(n, verb)| format!("{n} {}", verb.to_lowercase()))
                .collect::<Vec<_>>()
                .join(", "),
            pace
        )),
    }
    if c.written_to_crm > 0 {
        lines.push(format!(
            "{} {} to the CRM",
            ok(terminal, "Wrote"),
            plural(c.written_to_crm, "Quo edit", "Quo edits")
        ));
    }
    lines.extend(row_block(
        terminal,
        (held_back, c.quarantined.max(held_back.len() as u64)),
        (held_matches, c.held.max(held_matches.len() as u64)),
        notices,
        setting,
    ));
    if report.mass_delete_refused {
        let why = match report.mass_delete_refusal {
            Some(r) if r.workspace_unconfirmed => format!(
                "to act on {} Quo says are gone: the API key is not shown to answer for the synced \
                 workspace (nothing deleted or unlinked)",
                plural(r.would_delete as u64, "contact", "contacts")
            ),
            Some(r) => format!(
                "{} of {} linked contacts: sync.max_delete_fraction allows {} a cycle (nothing deleted)",
                r.would_delete, r.linked, r.allowed
            ),
            None => "this cycle's deletions: more than sync.max_delete_fraction of the contacts"
                .to_string(),
        };
        lines.push(format!("{} {why}", warn(terminal, "Refused")));
    }
    lines.push(result_line(terminal, report, held_back.len()));
    lines.extend(next_lines(
        terminal,
        report,
        c.quarantined.max(held_back.len() as u64),
        setting,
    ));
    lines
}

/// The blocks of rows a summary lists.
#[derive(Debug, Clone, Copy)]
enum Block {
    HeldBack,
    Matched,
    Warned,
}

/// The held-back rows, the records held before create and the row warnings: at most
/// [`MAX_ROWS`] rows in all (and the first of each block).
fn row_block(
    terminal: &Terminal,
    (held_back, held_total): (&[HeldBack], u64),
    (held_matches, matches_total): (&[HeldBack], u64),
    notices: &[Notice],
    setting: Setting,
) -> Vec<String> {
    let indent = " ".repeat(VERB);
    let mut lines = Vec::new();
    let of = |rows: &[HeldBack]| -> Vec<String> {
        rows.iter()
            .map(|row| {
                row_line(
                    Some(&row.location),
                    row.external_id.as_deref(),
                    row.field.as_deref(),
                    row.value.as_deref(),
                    &row.reason,
                )
            })
            .collect()
    };
    let held = of(held_back);
    let matched = of(held_matches);
    let warned: Vec<String> = notices
        .iter()
        .map(|notice| {
            row_line(
                notice.location.as_deref(),
                notice.external_id.as_deref(),
                notice.field.as_deref(),
                notice.value.as_deref(),
                &notice.message,
            )
        })
        .collect();
    // At most MAX_ROWS rows in all, but every block shows its first row; each block says
    // where the rest of its rows are.
    let mut room = MAX_ROWS;
    let warned_total = warned.len() as u64;
    let rest_of = |block: Block| match (block, setting.sandbox) {
        // The sandbox's ledger is thrown away at exit: no later command can list them.
        (_, true) | (Block::Warned, false) => "-v shows each as it happens",
        (Block::HeldBack, false) => "quo-sync quarantine list",
        (Block::Matched, false) => "quo-sync quarantine list, or quo-sync plan",
    };
    for (rows, total, verb, tail, block) in [
        (
            held,
            held_total,
            "Held back",
            " rows, retried every cycle:",
            Block::HeldBack,
        ),
        (
            matched,
            matches_total,
            "Held",
            " records: they match contacts already in Quo (quo-sync link decides):",
            Block::Matched,
        ),
        (warned, warned_total, "Warning", " rows:", Block::Warned),
    ] {
        if total == 0 {
            continue;
        }
        let tail = if total == 1 {
            tail.replacen(" rows", " row", 1)
                .replacen(" records", " record", 1)
        } else {
            tail.to_string()
        };
        lines.push(format!("{} {total}{tail}", warn(terminal, verb)));
        let shown = rows.len().min(room.max(1));
        room = room.saturating_sub(shown);
        let hidden = total as usize - shown;
        lines.extend(
            rows.into_iter()
                .take(shown)
                .map(|r| format!("{indent} {r}")),
        );
        if hidden > 0 {
            lines.push(format!("{indent} … and {hidden} more: {}", rest_of(block)));
        }
    }
    lines
}

/// `Finished in 2.5s: 23 created, 4 held back · 24 requests (minimum 24) · no 429s`.
fn result_line(terminal: &Terminal, report: &CycleReport, held_back: usize) -> String {
    let c = &report.counts;
    let mut counts: Vec<String> = [
        (c.created, "created"),
        (c.adopted, "adopted"),
        (c.updated, "updated"),
        (c.deleted, "deleted"),
        (c.written_to_crm, "written to the CRM"),
        (c.unchanged, "unchanged"),
        (c.out_of_scope, "out of scope"),
        (c.skipped_by_mode, "skipped by sync.mode"),
        (c.held, "held"),
        (c.quarantined.max(held_back as u64), "held back"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if counts.is_empty() {
        counts.push("nothing to change".into());
    }
    let limited = match c.rate_limited {
        0 => "no 429s".to_string(),
        n => format!("{n} × 429"),
    };
    let verb = if report.interrupted {
        warn(terminal, "Stopped")
    } else {
        ok(terminal, "Finished")
    };
    format!(
        "{verb} in {}: {} · {} (minimum {}) · {limited}",
        took(Duration::from_millis(report.duration_ms)),
        counts.join(", "),
        plural(c.requests, "request", "requests"),
        minimum_requests(report)
    )
}

/// The fewest requests this cycle's outcome could have cost: one per confirmed write (an
/// adoption is one PATCH), one read of the custom field definitions, one freshen read per 50
/// updates, and the pages of a listing of the whole workspace the cycle read (day one's match
/// index: one per 50 contacts in Quo).
pub fn minimum_requests(report: &CycleReport) -> u64 {
    let c = &report.counts;
    1 + c.created
        + c.updated
        + c.deleted
        + c.adopted
        + c.listing_pages
        + c.updated.div_ceil(crate::quo::client::MAX_PAGE as u64)
}

/// A cycle that found syncing paused: who paused it and until when, and how to resume. It
/// replaces the outcome lines (nothing was read or sent, so there is nothing to count).
pub fn paused_lines(terminal: &Terminal, pause: &crate::ledger::Pause) -> Vec<String> {
    let until = match &pause.until {
        Some(until) => format!("until {until}"),
        None => "until resumed".to_string(),
    };
    let command = terminal.paint(console::Style::new().bold(), "quo-sync resume");
    vec![
        format!(
            "{} by {} since {}, {until}: nothing was sent to Quo or the CRM",
            warn(terminal, "Paused"),
            pause.by,
            pause.since
        ),
        format!(
            "{} {command}  ends the pause for every replica; what changed meanwhile then syncs",
            ok(terminal, "Next")
        ),
    ]
}

/// What to do next.
fn next_lines(
    terminal: &Terminal,
    report: &CycleReport,
    held_back: u64,
    setting: Setting,
) -> Vec<String> {
    let mut steps: Vec<(String, String)> = Vec::new();
    if report.interrupted {
        steps.push((
            "quo-sync once".into(),
            "finishes the work (nothing is sent twice)".into(),
        ));
    }
    if report.mass_delete_refused {
        steps.push((
            "quo-sync once --allow-mass-delete".into(),
            "if those deletions are intended".into(),
        ));
    }
    if report.counts.held > 0 && !setting.sandbox {
        steps.push((
            "quo-sync link <record> <contact>|--create".into(),
            format!(
                "answers a held record ({} held; docs/day-one.md)",
                report.counts.held
            ),
        ));
    }
    if held_back > 0 && !setting.sandbox {
        steps.push((
            "quo-sync quarantine list".into(),
            format!("shows the {held_back} held back, with their raw rows"),
        ));
    }
    if !setting.service {
        if setting.sandbox {
            steps.push((
                "quo-sync run --with-sandbox".into(),
                "keeps them in sync; fix a held-back row in the CSV and it follows".into(),
            ));
            steps.push((
                "QUO_API_KEY=… quo-sync once".into(),
                "does the same for your own Quo workspace".into(),
            ));
        } else {
            steps.push(("quo-sync run".into(), "keeps them in sync".into()));
        }
    }
    let width = steps.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    steps
        .into_iter()
        .enumerate()
        .map(|(i, (command, what))| {
            let verb = if i == 0 {
                ok(terminal, "Next")
            } else {
                " ".repeat(VERB)
            };
            let command =
                terminal.paint(console::Style::new().bold(), &format!("{command:<width$}"));
            format!("{verb} {command}  {what}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_line_names_row_id_field_and_value() {
        assert_eq!(
            row_line(
                Some("/tmp/x/contacts.example.csv line 18"),
                Some("C-1017"),
                Some("phone"),
                Some("555-CALL-NOW"),
                "not a valid phone number"
            ),
            "line 18  C-1017  phone \"555-CALL-NOW\": not a valid phone number"
        );
        assert_eq!(
            row_line(
                Some("contacts.csv line 27"),
                None,
                Some("crm_id"),
                Some(""),
                "empty"
            ),
            "line 27  crm_id \"\": empty"
        );
        assert_eq!(
            row_line(Some("page 3 item 2"), Some("42"), None, None, "no id"),
            "page 3 item 2  42  no id"
        );
    }

    #[test]
    fn the_minimum_is_one_request_per_write_plus_the_reads_no_cycle_can_skip() {
        let mut report = CycleReport {
            run_id: String::new(),
            counts: Default::default(),
            duration_ms: 0,
            operations: Vec::new(),
            interrupted: false,
            mass_delete_refused: false,
            mass_delete_refusal: None,
            phases_ms: Default::default(),
            paused: None,
        };
        assert_eq!(minimum_requests(&report), 1);
        report.counts.created = 23;
        assert_eq!(minimum_requests(&report), 24);
        report.counts.updated = 51;
        assert_eq!(minimum_requests(&report), 24 + 51 + 2);
        // Day one: the workspace listing's pages and one PATCH per adoption.
        report.counts.listing_pages = 200;
        report.counts.adopted = 3_000;
        assert_eq!(minimum_requests(&report), 24 + 51 + 2 + 200 + 3_000);
    }
}
