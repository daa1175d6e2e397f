//! Dates (quo-api.md, decision 9): Quo stores a date custom field as an instant
//! (`2024-09-11T04:00:00.000Z`, local midnight in US Eastern). quo-sync reads a date-only CRM
//! value as the start of that day in `mapping.timezone`, and writes a Quo instant that is the
//! start of a day in that zone back as `YYYY-MM-DD`, so a round trip never moves a day.
//!
//! Slashed dates follow `mapping.default_region`: month first in the US and the places that
//! write like it, day first in most of the world; where the custom is mixed or year-first
//! (Canada, East Asia, …) a slashed date that reads two ways is refused, never guessed.

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeZone,
    Utc,
};
use chrono_tz::Tz;

/// Which number comes first in a slashed `a/b/YYYY` date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DateOrder {
    /// `MM/DD/YYYY`.
    MonthFirst,
    /// `DD/MM/YYYY`.
    DayFirst,
    /// Mixed or year-first custom: only a slashed date that reads one way is accepted.
    Unknown,
}

impl DateOrder {
    /// The order customary in an ISO 3166 region.
    pub(super) fn for_region(code: &str) -> DateOrder {
        match code {
            // The US, its territories and the freely associated states; the Philippines.
            "US" | "PR" | "GU" | "VI" | "AS" | "MP" | "UM" | "FM" | "MH" | "PW" | "PH" => {
                DateOrder::MonthFirst
            }
            // Mixed (Canada, South Africa) or year-first customs.
            "CA" | "ZA" | "CN" | "JP" | "KR" | "KP" | "TW" | "HU" | "LT" | "MN" | "IR" => {
                DateOrder::Unknown
            }
            _ => DateOrder::DayFirst,
        }
    }
}

/// The date rules of one mapping: its time zone and slashed-date order.
#[derive(Debug, Clone, Copy)]
pub(super) struct DateRules {
    /// `mapping.timezone`.
    pub(super) zone: Tz,
    /// From `mapping.default_region`.
    pub(super) order: DateOrder,
}

impl DateRules {
    /// Reads CRM text: RFC 3339 (its own offset), a naive date-time (local time in the zone),
    /// `YYYY-MM-DD` or `YYYY/MM/DD` (start of that day in the zone), or a slashed
    /// `a/b/YYYY` read in the region's order.
    pub(super) fn parse(&self, raw: &str) -> Result<DateTime<Utc>, String> {
        if let Ok(dt) = DateTime::parse_from_rfc3339(raw) {
            return Ok(dt.with_timezone(&Utc));
        }
        for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(naive) = NaiveDateTime::parse_from_str(raw, format) {
                return self.local(naive);
            }
        }
        for format in ["%Y-%m-%d", "%Y/%m/%d"] {
            if let Ok(date) = NaiveDate::parse_from_str(raw, format) {
                return self.start_of_day(date);
            }
        }
        if let Some(date) = self.slashed(raw)? {
            return self.start_of_day(date);
        }
        Err(format!(
            "expected a date: YYYY-MM-DD, {} or RFC 3339",
            match self.order {
                DateOrder::MonthFirst => "MM/DD/YYYY",
                DateOrder::DayFirst => "DD/MM/YYYY",
                DateOrder::Unknown => "an unambiguous DD/MM/YYYY or MM/DD/YYYY",
            }
        ))
    }

    /// CRM text for a Quo date: `YYYY-MM-DD` when the instant starts a day in the zone, else
    /// the instant in RFC 3339 (UTC).
    pub(super) fn render(&self, value: &str) -> Result<String, String> {
        let instant = parse_instant(value.trim())?;
        let day = instant.with_timezone(&self.zone).date_naive();
        Ok(if self.start_of_day(day).ok() == Some(instant) {
            day.format("%Y-%m-%d").to_string()
        } else {
            instant.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        })
    }

    /// `a/b/YYYY` in the region's order; `Ok(None)` when the text is not of that shape.
    fn slashed(&self, raw: &str) -> Result<Option<NaiveDate>, String> {
        let parts: Vec<&str> = raw.split('/').collect();
        let [a, b, y] = parts.as_slice() else {
            return Ok(None);
        };
        let digits = |s: &str, max: usize| {
            (1..=max).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit())
        };
        if !digits(a, 2) || !digits(b, 2) || y.len() != 4 || !digits(y, 4) {
            return Ok(None);
        }
        let (a, b, y): (u32, u32, i32) = (
            a.parse().unwrap_or(0),
            b.parse().unwrap_or(0),
            y.parse().unwrap_or(0),
        );
        let month_first = NaiveDate::from_ymd_opt(y, a, b);
        let day_first = NaiveDate::from_ymd_opt(y, b, a);
        Ok(match self.order {
            DateOrder::MonthFirst => month_first,
            DateOrder::DayFirst => day_first,
            DateOrder::Unknown => match (month_first, day_first) {
                (Some(m), Some(d)) if m != d => {
                    return Err(
                        "ambiguous date: it reads as MM/DD/YYYY and as DD/MM/YYYY, and \
                         mapping.default_region does not settle the order; write YYYY-MM-DD"
                            .into(),
                    );
                }
                (m, d) => m.or(d),
            },
        })
    }

    /// A naive local time in the zone; the earlier instant when it occurs twice.
    fn local(&self, naive: NaiveDateTime) -> Result<DateTime<Utc>, String> {
        match self.zone.from_local_datetime(&naive) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t.with_timezone(&Utc)),
            LocalResult::None => Err(format!(
                "this local time does not exist in {} (the clocks skip it)",
                self.zone.name()
            )),
        }
    }

    /// The first instant of `day` in the zone: midnight, or the end of a gap that swallowed
    /// midnight (e.g. America/Santiago on DST days).
    pub(super) fn start_of_day(&self, day: NaiveDate) -> Result<DateTime<Utc>, String> {
        for minutes in (0..24 * 60).step_by(15) {
            let time = NaiveTime::from_hms_opt(minutes / 60, minutes % 60, 0).unwrap_or_default();
            match self.zone.from_local_datetime(&day.and_time(time)) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                    return Ok(t.with_timezone(&Utc));
                }
                LocalResult::None => continue,
            }
        }
        Err(format!(
            "the day {:04}-{:02}-{:02} does not exist in {}",
            day.year(),
            day.month(),
            day.day(),
            self.zone.name()
        ))
    }
}

/// Reads an instant as Quo sends it (RFC 3339; a naive ISO date-time or date as UTC).
pub(super) fn parse_instant(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(raw) {
        return Ok(dt.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(raw, format) {
            return Ok(naive.and_utc());
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(date.and_time(NaiveTime::MIN).and_utc());
    }
    Err("expected an ISO-8601 date-time such as 2024-09-11T04:00:00.000Z".into())
}

/// Quo's date form: `2024-09-11T04:00:00.000Z`.
pub(super) fn format_quo_date(date: DateTime<Utc>) -> String {
    date.to_rfc3339_opts(SecondsFormat::Millis, true)
}
