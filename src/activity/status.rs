//! What activity logging shows: counts by state for `status` and the console, the gauges and
//! counters behind `/metrics`, and the time from a delivery to its CRM write.
//!
//! Unmatched activity (held or skipped) is counted and shown here with why, never written.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::pipeline::PassReport;
use crate::ledger::{ActivityRow, Ledger, LedgerError};

/// `status`'s activity section.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ActivityStatus {
    /// Activities by state (`written`, `pending`, `writing`, `held`, `skipped`, `filtered`).
    pub activities: std::collections::BTreeMap<String, i64>,
    /// Deliveries and poll views waiting to be applied.
    pub pending_events: i64,
    /// Creates sent again without a lookup: each may have left one duplicate in the CRM.
    pub possible_duplicates: i64,
    /// The oldest activity that matched no record, or two, with why.
    pub oldest_unmatched: Option<Unmatched>,
    /// Webhooks quo-sync registered (purpose, subscription id, URL); never their keys.
    pub webhooks: Vec<(String, String, String)>,
    /// The time from the event to the CRM over the most recent activities (none before the
    /// first delivered activity is written).
    pub delay_ms: Option<DelayToCrm>,
}

/// How long calls and texts take to reach the CRM: from the arrival of the first webhook about
/// an activity to the CRM's confirmation of its first write (the `quo_sync_activity_delay_seconds`
/// histogram and the bench's `activity.delay_ms`, read back from the ledger), over the last
/// [`DELAY_SAMPLE`] delivered activities written. Activities the poller alone found have no
/// delivery and are not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DelayToCrm {
    /// Median, milliseconds.
    pub p50: i64,
    /// 99th percentile, milliseconds.
    pub p99: i64,
    /// The slowest, milliseconds.
    pub max: i64,
    /// How many activities these figures cover.
    pub activities: usize,
}

/// How many of the most recent activities the delay covers.
pub const DELAY_SAMPLE: i64 = 200;

impl DelayToCrm {
    /// The figures of `(delivered_at, written_at)` pairs (RFC 3339); `None` without any. A
    /// write stamped before its delivery (the poller was first) counts as no delay.
    pub fn of(pairs: &[(String, String)]) -> Option<Self> {
        let parse = |t: &str| DateTime::parse_from_rfc3339(t).ok();
        let mut delays: Vec<i64> = pairs
            .iter()
            .filter_map(|(delivered, written)| {
                Some(
                    (parse(written)? - parse(delivered)?)
                        .num_milliseconds()
                        .max(0),
                )
            })
            .collect();
        if delays.is_empty() {
            return None;
        }
        delays.sort_unstable();
        let at = |p: f64| delays[((delays.len() - 1) as f64 * p).round() as usize];
        Some(Self {
            p50: at(0.5),
            p99: at(0.99),
            max: delays[delays.len() - 1],
            activities: delays.len(),
        })
    }
}

/// Milliseconds as a person reads them: `850 ms`, `2.4 s`, `3 min 5 s`.
fn human_ms(ms: i64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// An activity no record matched.
#[derive(Debug, Clone, Serialize)]
pub struct Unmatched {
    /// Quo's id.
    pub activity_id: String,
    /// When it happened.
    pub occurred_at: String,
    /// `held` or `skipped`.
    pub state: String,
    /// Why.
    pub reason: Option<String>,
}

impl ActivityStatus {
    /// Held plus skipped.
    pub fn unmatched(&self) -> i64 {
        self.count("held") + self.count("skipped")
    }

    /// Activities in `state`.
    pub fn count(&self, state: &str) -> i64 {
        self.activities.get(state).copied().unwrap_or(0)
    }

    /// The human lines of `status`.
    pub fn render(&self) -> String {
        let mut out = format!(
            "activity      written {}, pending {}, writing {}, held {}, skipped {}, filtered {}; {} events to apply\n",
            self.count("written"),
            self.count("pending"),
            self.count("writing"),
            self.count("held"),
            self.count("skipped"),
            self.count("filtered"),
            self.pending_events
        );
        if let Some(d) = &self.delay_ms {
            out.push_str(&format!(
                "  to the CRM  p50 {}, p99 {}, max {} (from the webhook's arrival to the first CRM write, last {} delivered)\n",
                human_ms(d.p50),
                human_ms(d.p99),
                human_ms(d.max),
                d.activities
            ));
        }
        if let Some(u) = &self.oldest_unmatched {
            out.push_str(&format!(
                "  unmatched   {} ({}, {}): {}\n",
                u.activity_id,
                u.state,
                u.occurred_at,
                u.reason.as_deref().unwrap_or("no record")
            ));
        }
        if self.possible_duplicates > 0 {
            out.push_str(&format!(
                "  possible duplicates {} (creates resent to a CRM without a lookup)\n",
                self.possible_duplicates
            ));
        }
        for (purpose, id, url) in &self.webhooks {
            out.push_str(&format!("  webhook     {purpose} #{id} -> {url}\n"));
        }
        out
    }
}

/// Gathers the activity status (all zero on a ledger that never logged activity).
pub async fn gather(ledger: &Ledger) -> Result<ActivityStatus, LedgerError> {
    let mut status = counts(ledger).await?;
    status.delay_ms = DelayToCrm::of(&ledger.activity_delivery_delays(DELAY_SAMPLE).await?);
    Ok(status)
}

/// The status without the delay (what the gauges need).
async fn counts(ledger: &Ledger) -> Result<ActivityStatus, LedgerError> {
    let activities = ledger.activity_counts().await?;
    let held = ledger
        .activities_in_state(crate::ledger::ActivityState::Held, 1)
        .await?;
    let skipped = ledger
        .activities_in_state(crate::ledger::ActivityState::Skipped, 1)
        .await?;
    let oldest = held
        .into_iter()
        .chain(skipped)
        .min_by(|a, b| a.occurred_at.cmp(&b.occurred_at))
        .map(|r: ActivityRow| Unmatched {
            state: r.state().as_str().to_string(),
            activity_id: r.activity_id,
            occurred_at: r.occurred_at,
            reason: r.reason,
        });
    Ok(ActivityStatus {
        activities,
        pending_events: ledger.activity_inbox_depth().await?,
        possible_duplicates: ledger.activity_possible_duplicates().await?,
        oldest_unmatched: oldest,
        webhooks: ledger
            .webhook_registrations()
            .await?
            .into_iter()
            .map(|r| (r.purpose, r.subscription_id, r.url))
            .collect(),
        delay_ms: None,
    })
}

/// The console's panel: the last activities, the record each went to, and its CRM copy (a link
/// when the sink has one). `esc` escapes text for HTML; content is never shown.
pub fn panel(rows: &[ActivityRow], status: &ActivityStatus, esc: fn(&str) -> String) -> String {
    let mut out = format!(
        "<section id=\"activity\"><h2>Activity</h2><ul class=\"counts\"><li><b>{}</b> written</li>\
         <li><b>{}</b> pending</li><li><b>{}</b> unmatched</li><li><b>{}</b> events to apply</li></ul>",
        status.count("written"),
        status.count("pending") + status.count("writing"),
        status.unmatched(),
        status.pending_events
    );
    if let Some(d) = &status.delay_ms {
        out.push_str(&format!(
            "<p class=\"delay\">To the CRM: <b>{}</b> median, <b>{}</b> p99 \
             (from the webhook's arrival to the first CRM write, last {} delivered)</p>",
            esc(&human_ms(d.p50)),
            esc(&human_ms(d.p99)),
            d.activities
        ));
    }
    if rows.is_empty() {
        out.push_str("<p class=\"empty\">No calls or texts yet.</p></section>");
        return out;
    }
    out.push_str(
        "<div class=\"scroll\"><table><thead><tr><th>When</th><th>Activity</th><th>Kind</th>\
         <th>Record</th><th>State</th><th>CRM</th></tr></thead><tbody>",
    );
    for row in rows {
        let facts: Option<super::model::Activity> = serde_json::from_str(&row.facts).ok();
        let kind = facts
            .as_ref()
            .map(|f| {
                format!(
                    "{} {}",
                    f.direction.as_deref().unwrap_or(""),
                    f.kind(true).as_str()
                )
            })
            .unwrap_or_else(|| row.family.clone());
        let crm = match (&row.crm_link, &row.crm_id) {
            (Some(link), Some(id))
                if link.starts_with("https://") || link.starts_with("http://") =>
            {
                format!(
                    "<a href=\"{}\" rel=\"noreferrer\">{}</a>",
                    esc(link),
                    esc(id)
                )
            }
            (_, Some(id)) => esc(id),
            _ => esc(row.reason.as_deref().unwrap_or("")),
        };
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&row.occurred_at),
            esc(&row.activity_id),
            esc(kind.trim()),
            esc(row.record_id.as_deref().unwrap_or("—")),
            esc(row.state().as_str()),
            crm
        ));
    }
    out.push_str("</tbody></table></div></section>");
    out
}

/// Sets the activity gauges from the ledger (called when `/metrics` is scraped).
pub async fn publish(ledger: &Ledger) {
    let Ok(status) = counts(ledger).await else {
        return;
    };
    for state in [
        "written", "pending", "writing", "held", "skipped", "filtered",
    ] {
        metrics::gauge!("quo_sync_activities", "state" => state).set(status.count(state) as f64);
    }
    metrics::gauge!("quo_sync_activity_inbox_depth").set(status.pending_events as f64);
    metrics::gauge!("quo_sync_activity_possible_duplicates").set(status.possible_duplicates as f64);
    let oldest_pending = ledger
        .activities_in_state(crate::ledger::ActivityState::Pending, 1)
        .await
        .ok()
        .and_then(|rows| rows.into_iter().next())
        .and_then(|r| DateTime::parse_from_rfc3339(&r.first_seen_at).ok())
        .map(|t| {
            (Utc::now() - t.with_timezone(&Utc))
                .num_milliseconds()
                .max(0) as f64
                / 1000.0
        })
        .unwrap_or(0.0);
    metrics::gauge!("quo_sync_activity_oldest_pending_seconds").set(oldest_pending);
}

/// Registers the activity series at zero, so alerts see them before the first activity.
pub fn register_metrics() {
    for op in ["create", "update"] {
        metrics::counter!("quo_sync_activity_writes_total", "op" => op).increment(0);
    }
    metrics::counter!("quo_sync_activity_adopted_total").increment(0);
    metrics::counter!("quo_sync_activity_possible_duplicates_total").increment(0);
    for outcome in ["stored", "duplicate", "ignored", "rejected"] {
        metrics::counter!("quo_sync_activity_webhooks_total", "outcome" => outcome).increment(0);
    }
    metrics::gauge!("quo_sync_activity_oldest_pending_seconds").set(0.0);
}

/// Records the time from a delivery to its CRM write.
pub fn record_delay(delivered_at: Option<&str>, written: DateTime<Utc>) {
    let Some(delivered) = delivered_at.and_then(|d| DateTime::parse_from_rfc3339(d).ok()) else {
        return;
    };
    let delay = (written - delivered.with_timezone(&Utc))
        .num_milliseconds()
        .max(0) as f64
        / 1000.0;
    metrics::histogram!("quo_sync_activity_delay_seconds").record(delay);
}

/// Counts what a pass did.
pub fn record_pass(report: &PassReport) {
    if report.refused > 0 {
        metrics::counter!("quo_sync_activity_refused_total").increment(report.refused as u64);
    }
    if report.relinked > 0 {
        metrics::counter!("quo_sync_activity_relinked_total").increment(report.relinked as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(delivered_ms: i64, written_ms: i64) -> (String, String) {
        let at = |ms: i64| {
            (DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z").unwrap()
                + chrono::Duration::milliseconds(ms))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        (at(delivered_ms), at(written_ms))
    }

    #[test]
    fn the_delay_is_read_as_percentiles_of_delivery_to_first_write() {
        // 100 activities written 10..=1000 ms after their delivery, one before it.
        let mut pairs: Vec<_> = (1..=100).map(|i| pair(0, i * 10)).collect();
        pairs.push(pair(500, 0));
        let d = DelayToCrm::of(&pairs).unwrap();
        assert_eq!((d.activities, d.max), (101, 1000));
        assert_eq!(d.p50, 500);
        assert_eq!(d.p99, 990);
        assert_eq!(DelayToCrm::of(&[]), None);
        assert_eq!(human_ms(850), "850 ms");
        assert_eq!(human_ms(2_460), "2.5 s");
        assert_eq!(human_ms(185_000), "3 min 5 s");
    }
}
