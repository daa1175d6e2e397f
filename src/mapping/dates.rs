//! Dates: CRM text (RFC 3339, `YYYY-MM-DD`, `MM/DD/YYYY`) to the instant Quo stores
//! (`2024-09-11T04:00:00.000Z`), and back.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Timelike, Utc};

pub(super) fn parse_date(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(raw) {
        return Ok(dt.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(raw, format) {
            return Ok(naive.and_utc());
        }
    }
    for format in ["%Y-%m-%d", "%m/%d/%Y"] {
        if let Ok(date) = NaiveDate::parse_from_str(raw, format) {
            return Ok(date
                .and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc());
        }
    }
    Err("expected a date: YYYY-MM-DD, MM/DD/YYYY or RFC 3339".into())
}

/// Quo's date form: `2024-09-11T04:00:00.000Z`.
pub(super) fn format_quo_date(date: DateTime<Utc>) -> String {
    date.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// CRM text for a Quo date: `YYYY-MM-DD` at midnight UTC, else RFC 3339.
pub(super) fn render_date(value: &str) -> Result<String, String> {
    let date = parse_date(value.trim())?;
    let midnight =
        date.hour() == 0 && date.minute() == 0 && date.second() == 0 && date.nanosecond() == 0;
    Ok(if midnight {
        date.format("%Y-%m-%d").to_string()
    } else {
        date.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    })
}
