//! The console page, rendered on the server from one snapshot of the ledger. Every value that
//! came from the CRM or Quo passes through [`esc`]; nothing here is trusted markup.

use std::fmt::Write;

use serde::Serialize;

use super::{Console, Role, ServiceInfo};
use crate::ledger::{ConflictRow, InboxEvent, LedgerError, QuarantineEntry, RunRow};
use crate::ops::Status;

/// Rows of each list on the page.
const PAGE_ROWS: i64 = 50;

/// The service's own state, beside the ledger's facts.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceState {
    /// Leader or standby.
    pub role: Role,
    /// When the last cycle started.
    pub last_cycle_at: Option<String>,
    /// When the next cycle is due (last start plus `schedule.interval`; earlier on a webhook).
    pub next_cycle_at: Option<String>,
    /// `schedule.interval` in seconds.
    pub interval_s: u64,
    /// Requests per second the last cycle used.
    pub rate_used: Option<f64>,
    /// The budget, `quo.requests_per_second`.
    pub rate_limit: u32,
    /// 429s in the last cycle.
    pub rate_limited: i64,
}

/// The service state given the last run.
pub fn service_state(service: &ServiceInfo, last: Option<&RunRow>) -> ServiceState {
    let next = last.and_then(|r| {
        let started = chrono::DateTime::parse_from_rfc3339(&r.started_at).ok()?;
        let next = started + chrono::Duration::from_std(service.interval).ok()?;
        Some(next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    });
    ServiceState {
        role: (service.role)(),
        last_cycle_at: last.map(|r| r.started_at.clone()),
        next_cycle_at: next,
        interval_s: service.interval.as_secs(),
        rate_used: last
            .filter(|r| r.duration_ms > 0)
            .map(|r| (r.requests as f64 * 1000.0 / r.duration_ms as f64 * 10.0).round() / 10.0),
        rate_limit: service.requests_per_second,
        rate_limited: last.map(|r| r.rate_limited).unwrap_or(0),
    }
}

/// Everything the page shows, read at once.
pub(super) struct Snapshot {
    status: Status,
    service: ServiceState,
    runs: Vec<RunRow>,
    quarantine: Vec<QuarantineEntry>,
    conflicts: Vec<ConflictRow>,
    inbox: Vec<InboxEvent>,
    activities: Vec<crate::ledger::ActivityRow>,
}

impl Snapshot {
    pub(super) async fn gather(console: &Console) -> Result<Self, LedgerError> {
        let status = crate::ops::status(&console.ledger).await?;
        let service = service_state(&console.service, status.last_run.as_ref());
        Ok(Self {
            runs: console.ledger.recent_runs(PAGE_ROWS).await?,
            quarantine: console.ledger.quarantined().await?,
            conflicts: console.ledger.conflicts(PAGE_ROWS).await?,
            inbox: console.ledger.inbox_pending(PAGE_ROWS).await?,
            activities: console.ledger.recent_activities(PAGE_ROWS).await?,
            status,
            service,
        })
    }
}

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment (a quarantine key may hold `/`, `?` or `#`).
fn segment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn opt(value: &Option<String>) -> String {
    esc(value.as_deref().unwrap_or(""))
}

/// A cell for a value of any length (`html` already escaped): cut to one line with `…` on a
/// wide screen, the whole value on hover (`title`); wrapped in full on a phone (console.css).
fn clipped(label: &str, html: &str) -> String {
    clipped_as(label, html, html)
}

/// [`clipped`] showing `shown` (a short form) with `title` on hover.
fn clipped_as(label: &str, shown: &str, title: &str) -> String {
    format!("<td data-label=\"{label}\" class=\"clip\" title=\"{title}\"><span>{shown}</span></td>")
}

/// An RFC 3339 time shown as `2026-12-06 01:19:52Z`: no fractions, and a line may break
/// between the date and the time, nowhere else.
fn when(time: &str) -> String {
    let short = match (time.split_once('T'), time.find('.')) {
        (Some((date, _)), Some(dot)) if dot > date.len() => {
            let rest = &time[date.len() + 1..dot];
            let zone = time[dot..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
            (date.to_string(), format!("{rest}{zone}"))
        }
        (Some((date, rest)), None) => (date.to_string(), rest.to_string()),
        _ => return esc(time),
    };
    format!(
        "<time datetime=\"{}\"><span>{}</span> <span>{}</span></time>",
        esc(time),
        esc(&short.0),
        esc(&short.1)
    )
}

/// [`clipped`] for a CRM or Quo value, shown as code.
fn clipped_code(label: &str, html: &str) -> String {
    format!(
        "<td data-label=\"{label}\" class=\"clip\" title=\"{html}\"><span><code>{html}</code></span></td>"
    )
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{}</title><link rel=\"stylesheet\" href=\"/console.css\">\
<script src=\"/console.js\" defer></script>\
<noscript><meta http-equiv=\"refresh\" content=\"10\"></noscript></head>",
        esc(title)
    )
}

/// The login page.
pub(super) fn login(error: Option<&str>) -> String {
    let mut out = head("quo-sync console: sign in");
    out.push_str("<body><main class=\"login\"><h1>quo-sync console</h1>");
    if let Some(error) = error {
        let _ = write!(out, "<p class=\"bad\" role=\"alert\">{}</p>", esc(error));
    }
    out.push_str(
        "<form method=\"post\" action=\"/login\"><label>Console token \
<input type=\"password\" name=\"token\" autocomplete=\"current-password\" required autofocus></label>\
<button type=\"submit\">Sign in</button></form></main></body></html>",
    );
    out
}

/// The console page.
pub(super) fn render(s: &Snapshot, csrf: &str) -> String {
    let mut out = head("quo-sync console");
    out.push_str("<body><header><h1>quo-sync</h1></header><main id=\"console\">");
    if let Some(doubt) = &s.status.workspace_doubt {
        render_doubt(&mut out, doubt);
    }
    render_service(&mut out, s);
    super::control::render(&mut out, s.status.paused.as_ref(), csrf);
    render_quarantine(&mut out, &s.quarantine, csrf);
    render_runs(&mut out, &s.runs);
    render_conflicts(&mut out, &s.conflicts);
    render_inbox(&mut out, &s.inbox, s.status.pending_reverse_events);
    out.push_str(&crate::activity::status::panel(
        &s.activities,
        &s.status.activity,
        esc,
    ));
    out.push_str("</main></body></html>");
    out
}

/// The banner over everything while the Quo workspace is in doubt (`crate::ops::doubt`).
fn render_doubt(out: &mut String, doubt: &crate::ops::doubt::DoubtReport) {
    let _ = write!(
        out,
        "<section id=\"workspace-doubt\" class=\"banner\" role=\"alert\">\
<h2>Quo workspace in doubt: creates and deletions are held</h2><dl>\
<dt>Since</dt><dd>{}</dd><dt>Why</dt><dd>{}</dd><dt>Holding</dt><dd>{}</dd>\
<dt>Next step</dt><dd>{}</dd></dl></section>",
        when(&doubt.doubt.since),
        esc(&doubt.reason),
        esc(&doubt.holding),
        crate::ops::doubt::html_with_commands(doubt.next_step, esc),
    );
}

fn render_service(out: &mut String, s: &Snapshot) {
    let svc = &s.service;
    let status = &s.status;
    let (state, class) = match status.last_run.as_ref().map(|r| r.status.as_str()) {
        _ if status.workspace_doubted => ("workspace in doubt", "bad"),
        Some("failed") => ("last cycle failed", "bad"),
        Some("quarantined") => ("records in quarantine", "warn"),
        Some("running") => ("cycle running", "ok"),
        Some(_) => ("healthy", "ok"),
        None => ("no cycle yet", "warn"),
    };
    let role = match svc.role {
        Role::Leader => "leader",
        Role::Standby => "standby",
    };
    let _ = write!(
        out,
        "<section id=\"service\"><h2>Service <span class=\"pill {class}\" id=\"health\">{state}</span></h2><dl>\
<dt>Role</dt><dd id=\"role\">{role}</dd>\
<dt>Last cycle</dt><dd>{}</dd><dt>Next cycle</dt><dd>{}</dd>\
<dt>Quo rate used</dt><dd>{} of {} req/s</dd><dt>429s (last cycle)</dt><dd>{}</dd>\
<dt>Ledger</dt><dd>{}</dd>",
        esc(svc.last_cycle_at.as_deref().unwrap_or("none")),
        esc(svc.next_cycle_at.as_deref().unwrap_or("on start")),
        svc.rate_used
            .map(|r| r.to_string())
            .unwrap_or_else(|| "-".into()),
        svc.rate_limit,
        svc.rate_limited,
        esc(&status.ledger),
    );
    if let Some(error) = &status.last_error {
        let _ = write!(
            out,
            "<dt>Last error</dt><dd class=\"bad\" id=\"last-error\">{}</dd>",
            esc(error)
        );
    }
    out.push_str("</dl><h3>Records by state</h3><ul class=\"states\">");
    if status.records.is_empty() {
        out.push_str("<li>none yet</li>");
    }
    for (state, n) in &status.records {
        let _ = write!(out, "<li><b>{n}</b> {}</li>", esc(state));
    }
    let _ = write!(
        out,
        "<li><b>{}</b> quarantined</li><li id=\"held\"><b>{}</b> held (match contacts already in Quo)</li>\
<li><b>{}</b> conflicts</li></ul></section>",
        status.quarantined, status.held, status.conflicts
    );
}

fn render_quarantine(out: &mut String, entries: &[QuarantineEntry], csrf: &str) {
    let _ = write!(
        out,
        "<section id=\"quarantine\"><h2>Quarantine ({})</h2>",
        entries.len()
    );
    if entries.is_empty() {
        out.push_str("<p class=\"empty\">Nothing is stuck.</p></section>");
        return;
    }
    out.push_str(
        "<p class=\"hint\">Fix the row in the CRM, then press Retry: the next cycle re-reads it.</p>\
<div class=\"scroll\"><table><thead><tr><th>Key</th><th>Location</th><th>Field</th><th>Value</th>\
<th>Reason</th><th>Attempts</th><th>First seen</th><th>Last seen</th><th></th></tr></thead><tbody>",
    );
    for q in entries {
        let key = esc(&q.key);
        let action = |verb: &str, label: &str| {
            format!(
                "<form method=\"post\" action=\"/api/quarantine/{}/{verb}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" class=\"{verb}\">{label}</button></form>",
                segment(&q.key),
                esc(csrf)
            )
        };
        let _ = write!(
            out,
            "<tr data-key=\"{key}\"><td data-label=\"Key\">{key}</td>{}\
<td data-label=\"Field\">{}</td>{}{}\
<td data-label=\"Attempts\">{}</td><td data-label=\"First seen\">{}</td><td data-label=\"Last seen\">{}</td>\
<td class=\"actions\">{}{}</td></tr>",
            clipped_as(
                "Location",
                &esc(&crate::telemetry::shorten(&q.location)),
                &esc(&q.location)
            ),
            opt(&q.field),
            clipped_code("Value", &opt(&q.value)),
            clipped("Reason", &esc(&held_reason(q))),
            q.attempts,
            when(&q.first_seen),
            when(&q.last_seen),
            action("retry", "Retry"),
            action("discard", "Discard"),
        );
    }
    out.push_str("</tbody></table></div></section>");
}

/// A held record's reason says so (its value lists the contacts it matched).
fn held_reason(q: &QuarantineEntry) -> String {
    if q.stage == "match" {
        format!("held: {}", q.reason)
    } else {
        q.reason.clone()
    }
}

fn render_runs(out: &mut String, runs: &[RunRow]) {
    let _ = write!(
        out,
        "<section id=\"runs\"><h2>Last {} runs</h2><div class=\"scroll\"><table><thead><tr>\
<th>Started</th><th>Kind</th><th>Status</th><th>Created</th><th>Updated</th><th>Unchanged</th>\
<th>Deleted</th><th>Quarantined</th><th>Requests</th><th>429s</th><th>ms</th><th>Error</th></tr></thead><tbody>",
        runs.len()
    );
    for r in runs {
        let class = match r.status.as_str() {
            "failed" => "bad",
            "quarantined" => "warn",
            _ => "",
        };
        let _ = write!(
            out,
            "<tr class=\"{class}\"><td data-label=\"Started\">{}</td><td data-label=\"Kind\">{}</td>\
<td data-label=\"Status\">{}</td><td data-label=\"Created\">{}</td><td data-label=\"Updated\">{}</td>\
<td data-label=\"Unchanged\">{}</td><td data-label=\"Deleted\">{}</td><td data-label=\"Quarantined\">{}</td>\
<td data-label=\"Requests\">{}</td><td data-label=\"429s\">{}</td><td data-label=\"ms\">{}</td>\
{}</tr>",
            when(&r.started_at),
            esc(&r.kind),
            esc(&r.status),
            r.created,
            r.updated,
            r.unchanged,
            r.deleted,
            r.quarantined,
            r.requests,
            r.rate_limited,
            r.duration_ms,
            clipped("Error", &opt(&r.error)),
        );
    }
    out.push_str("</tbody></table></div></section>");
}

fn render_conflicts(out: &mut String, conflicts: &[ConflictRow]) {
    let _ = write!(
        out,
        "<section id=\"conflicts\"><h2>Conflicts ({})</h2>",
        conflicts.len()
    );
    if conflicts.is_empty() {
        out.push_str("<p class=\"empty\">No field changed on both sides.</p></section>");
        return;
    }
    out.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>At</th><th>Record</th><th>Field</th>\
<th>CRM value</th><th>Quo value</th><th>Winner</th><th>Policy</th></tr></thead><tbody>",
    );
    for c in conflicts {
        let _ = write!(
            out,
            "<tr><td data-label=\"At\">{}</td><td data-label=\"Record\">{}</td><td data-label=\"Field\">{}</td>\
{}{}\
<td data-label=\"Winner\"><b>{}</b></td><td data-label=\"Policy\">{}</td></tr>",
            when(&c.at),
            esc(&c.external_id),
            esc(&c.field),
            clipped_code("CRM value", &opt(&c.crm_value)),
            clipped_code("Quo value", &opt(&c.quo_value)),
            esc(&c.winner),
            esc(&c.policy),
        );
    }
    out.push_str("</tbody></table></div></section>");
}

fn render_inbox(out: &mut String, events: &[InboxEvent], pending: i64) {
    let _ = write!(
        out,
        "<section id=\"inbox\"><h2>Pending webhook events ({pending})</h2>"
    );
    if events.is_empty() {
        out.push_str("<p class=\"empty\">None waiting.</p></section>");
        return;
    }
    out.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>Received</th><th>Type</th><th>Contact</th>\
<th>Event id</th></tr></thead><tbody>",
    );
    for e in events {
        let _ = write!(
            out,
            "<tr><td data-label=\"Received\">{}</td><td data-label=\"Type\">{}</td>\
<td data-label=\"Contact\">{}</td>{}</tr>",
            when(&e.received_at),
            esc(&e.event_type),
            opt(&e.quo_id),
            clipped("Event id", &esc(&e.event_id)),
        );
    }
    out.push_str("</tbody></table></div></section>");
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_short_and_may_wrap_between_date_and_time() {
        assert_eq!(
            super::when("2026-12-06T01:19:52.360Z"),
            "<time datetime=\"2026-12-06T01:19:52.360Z\"><span>2026-12-06</span> <span>01:19:52Z</span></time>"
        );
        assert!(
            super::when("2026-12-06T01:19:52+00:00")
                .ends_with("<span>01:19:52+00:00</span></time>")
        );
        assert_eq!(super::when("<yesterday>"), "&lt;yesterday&gt;");
    }
}
