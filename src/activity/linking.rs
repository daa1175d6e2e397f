//! Which CRM record an activity belongs to, never guessed: first the Quo contacts Quo matched
//! (`context.contacts.ids`) through the ledger (Quo contact id → record), then the outside
//! party's number through the ledger's phone history: the record that held the number when the
//! activity happened (its `createdAt`), not whoever holds it now. No record, or two, is an
//! answer of its own ([`Link::Unmatched`], [`Link::Ambiguous`], [`Link::Forgotten`]) that
//! `activity.unmatched` decides about; it is never resolved by picking one.
//!
//! The phone history (`ledger/phone_history.rs`, migration 0013) has, per number and record,
//! the stretches in which the record's committed snapshot carried the number; its boundaries are
//! the moments Quo's contact changed (Quo's `updatedAt`, the clock `createdAt` is on) where the
//! ledger has it, else our commit time. Who held a number at `t`:
//! - every record whose stretch covers `t`, widened by [`HANDOVER_SKEW`] at both ends, so a call
//!   within a second of a hand-over matches both holders (ambiguous) instead of the wrong one;
//! - a stretch opened with the record's first snapshot (a record new to the ledger, or one the
//!   migration found) reaches back before its opening, to the moment another record let go of
//!   the number (or forever): the caller may have had the number before the CRM knew them (a
//!   held call from a stranger whose record is made later, a backfill on first start);
//! - a pruned stretch (no record) means the holders before its end are forgotten: nothing links.
//!
//! The index lives in memory and is refreshed from the rows changed since its last look
//! (`records.updated_at`, `phone_history.changed_at`, with a few seconds of overlap for
//! transactions that committed late), and rebuilt in full every ten minutes, after forgetting
//! the stretches that ended before the history horizon ([`history_horizon`]). Records gone from
//! the CRM (`deleted`) link nothing.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::model::Activity;
use crate::ledger::{Ledger, LedgerError, PhoneHolding, RecordPhones};

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
    /// The number's holders at the activity's time were forgotten (the phone history keeps
    /// ended stretches for [`history_horizon`]): never guessed from what is left.
    Forgotten(Vec<String>),
}

impl Link {
    /// The `link` column: `contact`, `phone`, `none` or `ambiguous`.
    pub fn label(&self) -> &'static str {
        match self {
            Link::Record { how, .. } => how,
            Link::Unmatched | Link::Forgotten(_) => "none",
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
            Link::Forgotten(numbers) => Some(format!(
                "who had {} then is no longer known (the phone history keeps ended holdings for activity.enrichment_window, activity.backfill or two days, whichever is longest)",
                numbers.join(", ")
            )),
        }
    }
}

/// The digits of a number (`+1 (415) 555-0100` and `+14155550100` are the same).
pub fn phone_key(number: &str) -> String {
    number.chars().filter(char::is_ascii_digit).collect()
}

/// How far a stretch of the phone history is widened at each end when asking who held a number
/// at an activity's `createdAt`: a call this close to a hand-over matches both holders. Most
/// boundaries are Quo's own `updatedAt` of the contact (the clock `createdAt` is on); the rest
/// are our commit times, which follow Quo's change by one request's answer (well under a
/// second) plus the hosts' clock offset (NTP keeps it to milliseconds).
pub const HANDOVER_SKEW: chrono::Duration = chrono::Duration::seconds(1);

/// Quo retries a failed webhook delivery for about 27.5 hours (8 attempts): a delivery may
/// arrive, and be linked, that long after its call.
const WEBHOOK_RETRIES: Duration = Duration::from_secs(2 * 24 * 3600);

/// How long the phone history keeps a stretch after it ended: the oldest activity that can
/// still arrive and be linked by number. New activity is linked when it arrives: a webhook
/// retried for up to a day and a half, a poll over the list's overlap, a summary within
/// `activity.enrichment_window` (a linked call keeps its record; only one never linked is
/// linked again), a first start's `activity.backfill`. The longest of these. A held activity
/// older than that, of a number whose stretches were forgotten, stays held (never guessed).
pub fn history_horizon(enrichment_window: Duration, backfill: Duration) -> Duration {
    enrichment_window.max(backfill).max(WEBHOOK_RETRIES)
}

#[derive(Debug, Default)]
struct Entry {
    quo_id: Option<String>,
}

/// One stretch of the phone history, as linking reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holding {
    /// The record; empty for a pruned stretch.
    external_id: String,
    /// `None`: unreadable or the pruned stretch's "always".
    opened: Option<DateTime<Utc>>,
    /// `None` while open.
    closed: Option<DateTime<Utc>>,
    since_entry: bool,
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl Holding {
    fn from_row(row: &PhoneHolding) -> Self {
        Self {
            external_id: row.external_id.clone(),
            opened: parse_time(&row.opened_at),
            // An unreadable end is taken as "long ago": the stretch covers nothing after it.
            closed: row
                .closed_at
                .as_deref()
                .map(|c| parse_time(c).unwrap_or(DateTime::<Utc>::MIN_UTC)),
            since_entry: row.since_entry != 0,
        }
    }
}

/// What the history says about one number at one moment.
#[derive(Debug, Default, PartialEq, Eq)]
struct Holders {
    records: BTreeSet<String>,
    /// A pruned stretch covers the moment: its holders are forgotten.
    forgotten: bool,
}

/// The ledger's records by Quo contact id, and its phone history by number.
#[derive(Debug, Default)]
pub struct PhoneIndex {
    records: HashMap<String, Entry>,
    by_quo: HashMap<String, String>,
    /// Number digits → (number text, record, opened_at) → stretch.
    by_phone: HashMap<String, HashMap<(String, String, String), Holding>>,
    newest: Option<String>,
    history_newest: Option<String>,
    built_at: Option<Instant>,
    /// How long ended stretches are kept ([`history_horizon`]); `None`: kept.
    horizon: Option<Duration>,
}

/// `newest` minus the refresh overlap, as the ledger writes times.
fn since(newest: Option<&str>) -> Option<String> {
    newest.map(|newest| {
        parse_time(newest)
            .map(|t| crate::ledger::time_text(t - OVERLAP))
            .unwrap_or_default()
    })
}

impl PhoneIndex {
    /// An index whose full rebuilds first forget the history's stretches that ended more than
    /// `horizon` ago.
    pub fn keeping(horizon: Duration) -> Self {
        Self {
            horizon: Some(horizon),
            ..Self::default()
        }
    }

    /// Records indexed.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is indexed.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn remove(&mut self, external_id: &str) {
        if let Some(old) = self.records.remove(external_id)
            && let Some(quo) = old.quo_id
            && self.by_quo.get(&quo).is_some_and(|id| id == external_id)
        {
            self.by_quo.remove(&quo);
        }
    }

    fn put(&mut self, row: RecordPhones) {
        self.remove(&row.external_id);
        if row.state == "deleted" {
            return;
        }
        if let Some(quo) = &row.quo_id {
            self.by_quo.insert(quo.clone(), row.external_id.clone());
        }
        self.records
            .insert(row.external_id, Entry { quo_id: row.quo_id });
    }

    /// Takes in one row of the phone history; returns whether it changed anything.
    fn put_holding(&mut self, row: &PhoneHolding) -> bool {
        let key = phone_key(&row.phone);
        if key.is_empty() {
            return false;
        }
        let holding = Holding::from_row(row);
        let slot = (
            row.phone.clone(),
            row.external_id.clone(),
            row.opened_at.clone(),
        );
        let stretches = self.by_phone.entry(key).or_default();
        if stretches.get(&slot) == Some(&holding) {
            return false;
        }
        stretches.insert(slot, holding);
        true
    }

    /// Brings the index up to date; returns whether any record or holding changed. A full
    /// rebuild first forgets the history's stretches older than the horizon.
    pub async fn refresh(&mut self, ledger: &Ledger) -> Result<bool, LedgerError> {
        let full = self.built_at.is_none_or(|at| at.elapsed() >= FULL_REBUILD);
        if full && let Some(horizon) = self.horizon {
            let before = chrono::Duration::from_std(horizon)
                .ok()
                .and_then(|h| Utc::now().checked_sub_signed(h));
            if let Some(before) = before {
                let pruned = ledger
                    .phone_history_prune(&crate::ledger::time_text(before))
                    .await?;
                if pruned > 0 {
                    tracing::debug!(
                        event = "phone_history_pruned",
                        pruned,
                        "phone history: stretches that ended before the horizon forgotten"
                    );
                }
            }
        }
        let (since_records, since_history) = if full {
            (None, None)
        } else {
            (
                since(self.newest.as_deref()),
                since(self.history_newest.as_deref()),
            )
        };
        let rows = ledger
            .records_changed_since(since_records.as_deref())
            .await?;
        let history = ledger.phone_history_since(since_history.as_deref()).await?;
        if full {
            *self = Self {
                built_at: Some(Instant::now()),
                horizon: self.horizon,
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
            let same = self
                .records
                .get(&row.external_id)
                .is_some_and(|e| row.state != "deleted" && e.quo_id == row.quo_id);
            if !same {
                changed = true;
                self.put(row);
            }
        }
        for row in &history {
            if self
                .history_newest
                .as_deref()
                .is_none_or(|n| row.changed_at.as_str() > n)
            {
                self.history_newest = Some(row.changed_at.clone());
            }
            changed |= self.put_holding(row);
        }
        Ok(changed)
    }

    /// Who held the number `key` at `at` (now, i.e. the open stretches, when `None`).
    fn holders(&self, key: &str, at: Option<DateTime<Utc>>) -> Holders {
        let mut found = Holders::default();
        let Some(stretches) = self.by_phone.get(key) else {
            return found;
        };
        for holding in stretches.values() {
            let covers = match at {
                None => holding.closed.is_none() && !holding.external_id.is_empty(),
                Some(t) => {
                    let start = if holding.since_entry {
                        reach_back(stretches.values(), holding)
                    } else {
                        holding.opened
                    };
                    start.is_none_or(|s| t >= s - HANDOVER_SKEW)
                        && holding.closed.is_none_or(|c| t < c + HANDOVER_SKEW)
                }
            };
            if !covers {
                continue;
            }
            if holding.external_id.is_empty() {
                found.forgotten = true;
            } else {
                found.records.insert(holding.external_id.clone());
            }
        }
        found
    }

    /// Links `activity`: by Quo contact id, then by who held its outside party's number when
    /// it happened.
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
        let mut by_phone = BTreeSet::new();
        let mut forgotten = Vec::new();
        for number in &activity.external_numbers {
            let holders = self.holders(&phone_key(number), activity.started_at);
            if holders.forgotten {
                forgotten.push(number.clone());
            }
            by_phone.extend(holders.records);
        }
        if !forgotten.is_empty() {
            return Link::Forgotten(forgotten);
        }
        // The one who had the number then is gone from the CRM (or the ledger): nothing to
        // link to. (Two holders stay ambiguous even if one is gone: the other is no surer.)
        if by_phone.len() == 1 && by_phone.iter().any(|id| !self.records.contains_key(id)) {
            return Link::Unmatched;
        }
        single(by_phone, "phone").unwrap_or(Link::Unmatched)
    }
}

/// Where a stretch opened with its record's first snapshot begins: when another record that
/// held the number before this one came let go of it (no later than this one's opening), or
/// forever. A holder that came after this one says nothing about before it.
fn reach_back<'a>(
    stretches: impl Iterator<Item = &'a Holding>,
    holding: &Holding,
) -> Option<DateTime<Utc>> {
    let opened = holding.opened.unwrap_or(DateTime::<Utc>::MAX_UTC);
    stretches
        .filter(|other| other.external_id != holding.external_id)
        .filter(|other| other.opened.is_none_or(|o| o <= opened))
        .filter_map(|other| other.closed)
        .map(|closed| closed.min(opened))
        .max()
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

    fn record(id: &str, quo: Option<&str>, state: &str) -> RecordPhones {
        RecordPhones {
            external_id: id.into(),
            quo_id: quo.map(str::to_string),
            state: state.into(),
            phones: Vec::new(),
            updated_at: "2026-05-01T00:00:00.000Z".into(),
        }
    }

    /// `minute` past 10:00 on 2026-05-01.
    fn at(minute: u32, second: u32) -> String {
        format!("2026-05-01T10:{minute:02}:{second:02}.000Z")
    }

    fn held(
        phone: &str,
        id: &str,
        opened: &str,
        closed: Option<&str>,
        since_entry: bool,
    ) -> PhoneHolding {
        PhoneHolding {
            phone: phone.into(),
            external_id: id.into(),
            opened_at: opened.into(),
            closed_at: closed.map(str::to_string),
            since_entry: i64::from(since_entry),
            changed_at: opened.into(),
        }
    }

    fn call(contacts: Option<Vec<&str>>, numbers: &[&str], when: Option<&str>) -> Activity {
        Activity {
            contact_ids: contacts.map(|c| c.into_iter().map(str::to_string).collect()),
            external_numbers: numbers.iter().map(|n| n.to_string()).collect(),
            started_at: when.and_then(parse_time),
            ..Activity::new("AC1", Family::Call)
        }
    }

    /// An index knowing these records (synced, no Quo id).
    fn live(ids: &[&str]) -> PhoneIndex {
        let mut index = PhoneIndex::default();
        for id in ids {
            index.put(record(id, None, "synced"));
        }
        index
    }

    fn phone(id: &str) -> Link {
        Link::Record {
            external_id: id.into(),
            how: "phone",
        }
    }

    #[test]
    fn contacts_first_then_phones_and_never_a_guess() {
        let mut index = PhoneIndex::default();
        index.put(record("crm-1", Some("q1"), "synced"));
        index.put(record("crm-2", Some("q2"), "synced"));
        index.put(record("crm-3", Some("q3"), "synced"));
        index.put(record("crm-4", Some("q4"), "deleted"));
        index.put_holding(&held("+14155550100", "crm-1", &at(0, 0), None, true));
        index.put_holding(&held("+1 (415) 555-0200", "crm-2", &at(0, 0), None, true));
        index.put_holding(&held("+14155550200", "crm-3", &at(0, 0), None, true));
        let now = Some(at(30, 0));
        let by_contact = index.link(&call(Some(vec!["q1"]), &["+14155550200"], now.as_deref()));
        assert_eq!(
            by_contact,
            Link::Record {
                external_id: "crm-1".into(),
                how: "contact"
            }
        );
        assert_eq!(
            index.link(&call(
                Some(vec!["unknown"]),
                &["+14155550100"],
                now.as_deref()
            )),
            phone("crm-1")
        );
        assert_eq!(
            index.link(&call(None, &["+14155550200"], now.as_deref())),
            Link::Ambiguous(vec!["crm-2".into(), "crm-3".into()]),
            "two records share the number: ambiguous, not the first"
        );
        assert_eq!(
            index.link(&call(Some(vec!["q1", "q2"]), &[], now.as_deref())),
            Link::Ambiguous(vec!["crm-1".into(), "crm-2".into()])
        );
        assert_eq!(
            index.link(&call(Some(vec!["q4"]), &[], now.as_deref())),
            Link::Unmatched,
            "deleted records link nothing"
        );
        assert_eq!(
            index.link(&call(Some(vec![]), &["+19995550000"], now.as_deref())),
            Link::Unmatched
        );
        // A record that drops the number no longer matches it from then on.
        index.put_holding(&held(
            "+14155550200",
            "crm-3",
            &at(0, 0),
            Some(&at(10, 0)),
            true,
        ));
        assert_eq!(
            index.link(&call(None, &["+14155550200"], now.as_deref())),
            phone("crm-2")
        );
        assert_eq!(
            index.link(&call(None, &["+14155550200"], None)),
            phone("crm-2"),
            "no time: today's holders"
        );
    }

    #[test]
    fn a_number_links_to_whoever_held_it_when_the_call_happened() {
        let x = "+14155550100";
        let mut index = live(&["crm-a", "crm-b", "crm-c"]);
        // crm-a came with the number; at 10:10 it was renumbered and crm-b (already known,
        // with another number) was given it at 10:12.
        index.put_holding(&held(x, "crm-a", &at(0, 0), Some(&at(10, 0)), true));
        index.put_holding(&held(x, "crm-b", &at(12, 0), None, false));
        let link = |index: &PhoneIndex, when: String| index.link(&call(None, &[x], Some(&when)));
        assert_eq!(
            link(&index, at(5, 0)),
            phone("crm-a"),
            "while crm-a held it"
        );
        assert_eq!(
            link(&index, "2026-04-01T00:00:00.000Z".into()),
            phone("crm-a"),
            "before the ledger knew crm-a, it reaches back"
        );
        assert_eq!(link(&index, at(11, 0)), Link::Unmatched, "nobody held it");
        assert_eq!(link(&index, at(20, 0)), phone("crm-b"));
        // Within a second of a hand-over: both, never one of them.
        index.put_holding(&held(x, "crm-c", &at(20, 0), None, false));
        index.put_holding(&held(x, "crm-b", &at(12, 0), Some(&at(20, 0)), false));
        assert_eq!(
            link(&index, "2026-05-01T10:19:59.500Z".into()),
            Link::Ambiguous(vec!["crm-b".into(), "crm-c".into()])
        );
        assert_eq!(
            link(&index, "2026-05-01T10:20:01.500Z".into()),
            phone("crm-c")
        );
        // crm-a is deleted since: a call from when it had the number links nothing.
        index.put(record("crm-a", None, "deleted"));
        assert_eq!(link(&index, at(5, 0)), Link::Unmatched);
    }

    #[test]
    fn a_new_record_reaches_back_only_to_the_previous_holder_letting_go() {
        let x = "+14155550100";
        let mut index = live(&["crm-a", "crm-b", "crm-n"]);
        index.put_holding(&held(x, "crm-a", &at(0, 0), Some(&at(10, 0)), true));
        // crm-n is new to the ledger with the number (a stranger's record made later).
        index.put_holding(&held(x, "crm-n", &at(30, 0), None, true));
        let link = |index: &PhoneIndex, when: String| index.link(&call(None, &[x], Some(&when)));
        assert_eq!(link(&index, at(5, 0)), phone("crm-a"));
        assert_eq!(
            link(&index, at(15, 0)),
            phone("crm-n"),
            "a call before its record was made"
        );
        // Entering in the same cycle as the other let go (committed first): from its entry.
        let mut index = live(&["crm-a", "crm-b", "crm-n"]);
        index.put_holding(&held(x, "crm-a", &at(0, 0), Some(&at(10, 1)), true));
        index.put_holding(&held(x, "crm-n", &at(10, 0), None, true));
        assert_eq!(
            index.link(&call(None, &[x], Some(&at(5, 0)))),
            phone("crm-a")
        );
        // A holder that came after it (and went) says nothing about before it.
        let mut index = live(&["crm-a", "crm-b", "crm-n"]);
        index.put_holding(&held(x, "crm-n", &at(10, 0), None, true));
        index.put_holding(&held(x, "crm-b", &at(12, 0), Some(&at(14, 0)), false));
        assert_eq!(
            index.link(&call(None, &[x], Some(&at(5, 0)))),
            phone("crm-n")
        );
        assert_eq!(
            index.link(&call(None, &[x], Some(&at(13, 0)))),
            Link::Ambiguous(vec!["crm-b".into(), "crm-n".into()])
        );
    }

    #[test]
    fn forgotten_holders_link_nothing() {
        let x = "+14155550100";
        let mut index = live(&["crm-a", "crm-b", "crm-n"]);
        index.put_holding(&held(x, "", "", Some(&at(10, 0)), false));
        index.put_holding(&held(x, "crm-n", &at(30, 0), None, true));
        let link = |index: &PhoneIndex, when: String| index.link(&call(None, &[x], Some(&when)));
        assert_eq!(link(&index, at(5, 0)), Link::Forgotten(vec![x.into()]));
        assert_eq!(link(&index, at(15, 0)), phone("crm-n"));
        assert_eq!(link(&index, at(5, 0)).label(), "none");
    }

    #[test]
    fn the_horizon_is_the_longest_way_an_activity_can_still_arrive() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(history_horizon(day, Duration::ZERO), 2 * day);
        assert_eq!(history_horizon(day, 30 * day), 30 * day);
        assert_eq!(history_horizon(7 * day, day), 7 * day);
    }
}
