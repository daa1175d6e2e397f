//! What quo-sync knows about one call or message: an [`Activity`], built up from every view Quo
//! gives of it (webhook events of both schemes, list pages, single reads), in whatever order they
//! arrive, and the [`ActivityDocument`] the CRM gets from it.
//!
//! Views merge by rule, not by arrival: a status moves forward (`in-progress` → an ending, `sent`
//! → `delivered`), and among endings the view seen last wins; a final summary beats a pending
//! one; lists of recording links grow; nothing set is ever unset by a view that lacks it. So a
//! late summary, a duplicate delivery or a poll that re-reads the call can only add, and the
//! same facts always make the same document (its digest decides whether the CRM needs a write).
//!
//! Content (message text, transcripts, voicemail transcripts) is kept only with
//! `activity.content = "full"`, is never part of `Debug` output, and never reaches a log line.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Whether a view is about a call or a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// A call (voicemails are calls with a voicemail).
    #[default]
    Call,
    /// A text message.
    Message,
}

impl Family {
    /// `call` or `message`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Call => "call",
            Family::Message => "message",
        }
    }
}

/// The CSV `kind` column: `call`, `message` or `voicemail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivityKind {
    /// A call.
    Call,
    /// A text.
    Message,
    /// A call that left a voicemail.
    Voicemail,
}

impl ActivityKind {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::Call => "call",
            ActivityKind::Message => "message",
            ActivityKind::Voicemail => "voicemail",
        }
    }
}

/// A call's AI summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Summary lines.
    #[serde(default)]
    pub lines: Vec<String>,
    /// Next steps.
    #[serde(default)]
    pub next_steps: Vec<String>,
    /// Whether Quo is done with it (`completed`, or `absent` on plans without summaries).
    #[serde(default)]
    pub done: bool,
}

/// A voicemail left on a call.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voicemail {
    /// Link to the audio (never downloaded).
    #[serde(default)]
    pub url: Option<String>,
    /// Seconds.
    #[serde(default)]
    pub duration_s: Option<u64>,
    /// Its transcript: content, kept only with `activity.content = "full"`.
    #[serde(default)]
    pub transcript: Option<String>,
    /// Whether Quo is done with it.
    #[serde(default)]
    pub done: bool,
}

impl fmt::Debug for Voicemail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Voicemail")
            .field("url", &self.url)
            .field("duration_s", &self.duration_s)
            .field("transcript", &self.transcript.as_ref().map(|_| "[CONTENT]"))
            .field("done", &self.done)
            .finish()
    }
}

/// Everything known about one call or message: merged from every view, stored in the ledger.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// Quo's id (`AC…`).
    pub id: String,
    /// Call or message.
    pub family: Family,
    /// `incoming` or `outgoing`.
    #[serde(default)]
    pub direction: Option<String>,
    /// The normalised status (see [`normalise_status`]).
    #[serde(default)]
    pub status: Option<String>,
    /// When the view that set `status` was made.
    #[serde(default)]
    pub status_at: Option<DateTime<Utc>>,
    /// When it started (`createdAt`).
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// When a call ended.
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    /// Seconds talked.
    #[serde(default)]
    pub duration_s: Option<u64>,
    /// The user who took, made or sent it (`US…`).
    #[serde(default)]
    pub user_id: Option<String>,
    /// The workspace number it happened on (`PN…`).
    #[serde(default)]
    pub phone_number_id: Option<String>,
    /// `CN…`.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Quo contact ids Quo matched, when it said (`None`: not said or `unavailable`).
    #[serde(default)]
    pub contact_ids: Option<Vec<String>>,
    /// The outside party's numbers (E.164).
    #[serde(default)]
    pub external_numbers: Vec<String>,
    /// The workspace's numbers on it.
    #[serde(default)]
    pub workspace_numbers: Vec<String>,
    /// The AI summary.
    #[serde(default)]
    pub summary: Option<Summary>,
    /// The call transcript: content, kept only with `activity.content = "full"`.
    #[serde(default)]
    pub transcript: Option<String>,
    /// Recording links (never downloaded).
    #[serde(default)]
    pub recording_urls: Vec<String>,
    /// The voicemail, when one was left.
    #[serde(default)]
    pub voicemail: Option<Voicemail>,
    /// Whether the call left a voicemail (`hasVoicemail`), before its details land.
    #[serde(default)]
    pub has_voicemail: bool,
    /// The message text: content, kept only with `activity.content = "full"`.
    #[serde(default)]
    pub text: Option<String>,
    /// `data.links.quo`: the activity in the Quo app.
    #[serde(default)]
    pub quo_url: Option<String>,
}

impl fmt::Debug for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let content = |v: &Option<String>| v.as_ref().map(|_| "[CONTENT]");
        f.debug_struct("Activity")
            .field("id", &self.id)
            .field("family", &self.family)
            .field("direction", &self.direction)
            .field("status", &self.status)
            .field("started_at", &self.started_at)
            .field("duration_s", &self.duration_s)
            .field("user_id", &self.user_id)
            .field("contact_ids", &self.contact_ids)
            .field("external_numbers", &self.external_numbers)
            .field("summary", &self.summary.as_ref().map(|s| s.done))
            .field("transcript", &content(&self.transcript))
            .field("voicemail", &self.voicemail)
            .field("text", &content(&self.text))
            .finish()
    }
}

/// How far along a status is: a view never moves an activity back.
fn status_rank(family: Family, status: &str) -> u8 {
    match (family, status) {
        (Family::Call, "in-progress") => 0,
        (Family::Call, _) => 1,
        (Family::Message, "queued") => 0,
        (Family::Message, "sent") => 1,
        (Family::Message, _) => 2,
    }
}

/// One status vocabulary for every view: the REST enum and the webhook enum of calls differ
/// (quo-api-2026-03-30.md §6.1, §6.5), and a poll must not undo what a webhook said.
///
/// Calls: `completed` (REST `completed`/`answered`, webhook `answered`), `missed` (REST
/// `missed`/`no-answer`/`busy`/`canceled`, webhook `unanswered`, `call.missed`), `forwarded`,
/// `abandoned`, `failed`, `ai-handled`, `in-progress` (REST `queued`/`initiated`/`ringing`/
/// `in-progress`). Messages keep Quo's words (`queued`, `sent`, `delivered`, `undelivered`,
/// `received`, `failed`). Unknown words are kept as they are.
pub fn normalise_status(family: Family, wire: &str) -> String {
    let lower = wire.trim().to_ascii_lowercase();
    if family == Family::Message {
        return lower;
    }
    match lower.as_str() {
        "completed" | "answered" => "completed",
        "missed" | "no-answer" | "busy" | "canceled" | "cancelled" | "unanswered" => "missed",
        "queued" | "initiated" | "ringing" | "in-progress" => "in-progress",
        other => return other.to_string(),
    }
    .to_string()
}

fn union(into: &mut Vec<String>, from: &[String]) {
    for item in from {
        if !into.contains(item) {
            into.push(item.clone());
        }
    }
}

fn fill<T: Clone>(into: &mut Option<T>, from: &Option<T>) {
    if into.is_none() {
        into.clone_from(from);
    }
}

impl Activity {
    /// An empty activity for `id`.
    pub fn new(id: &str, family: Family) -> Self {
        Self {
            id: id.to_string(),
            family,
            ..Self::default()
        }
    }

    /// Merges another view of the same activity into this one (see the module doc); returns
    /// whether anything changed.
    pub fn absorb(&mut self, view: &Activity) -> bool {
        let before = self.clone();
        fill(&mut self.direction, &view.direction);
        fill(&mut self.started_at, &view.started_at);
        fill(&mut self.user_id, &view.user_id);
        fill(&mut self.phone_number_id, &view.phone_number_id);
        fill(&mut self.conversation_id, &view.conversation_id);
        fill(&mut self.contact_ids, &view.contact_ids);
        fill(&mut self.text, &view.text);
        fill(&mut self.quo_url, &view.quo_url);
        fill(&mut self.transcript, &view.transcript);
        if view.completed_at.is_some() {
            self.completed_at = self.completed_at.max(view.completed_at);
        }
        if let Some(d) = view.duration_s.filter(|d| *d > 0) {
            self.duration_s = Some(self.duration_s.map_or(d, |mine| mine.max(d)));
        } else {
            fill(&mut self.duration_s, &view.duration_s);
        }
        union(&mut self.external_numbers, &view.external_numbers);
        union(&mut self.workspace_numbers, &view.workspace_numbers);
        union(&mut self.recording_urls, &view.recording_urls);
        self.has_voicemail |= view.has_voicemail;
        if let Some(status) = &view.status {
            let rank = |s: &str| status_rank(self.family, s);
            let newer = match (&self.status, self.status_at, view.status_at) {
                (None, _, _) => true,
                (Some(mine), _, _) if rank(status) != rank(mine) => rank(status) > rank(mine),
                (Some(_), Some(mine), Some(theirs)) => theirs > mine,
                (Some(_), None, Some(_)) => true,
                _ => false,
            };
            if newer {
                self.status = Some(status.clone());
                self.status_at = view.status_at.or(self.status_at);
            }
        }
        match (&mut self.summary, &view.summary) {
            (None, Some(s)) => self.summary = Some(s.clone()),
            (Some(mine), Some(theirs)) if theirs.done && (!mine.done || *mine != *theirs) => {
                *mine = theirs.clone();
            }
            _ => {}
        }
        match (&mut self.voicemail, &view.voicemail) {
            (None, Some(v)) => self.voicemail = Some(v.clone()),
            (Some(mine), Some(theirs)) => {
                fill(&mut mine.url, &theirs.url);
                fill(&mut mine.duration_s, &theirs.duration_s);
                fill(&mut mine.transcript, &theirs.transcript);
                mine.done |= theirs.done;
            }
            _ => {}
        }
        *self != before
    }

    /// Drops content (message text, transcripts) unless `full` content is wanted.
    pub fn keep_content(&mut self, full: bool) {
        if full {
            return;
        }
        self.text = None;
        self.transcript = None;
        if let Some(v) = &mut self.voicemail {
            v.transcript = None;
        }
    }

    /// Whether Quo will add nothing more to it: a message with a final status; a call that
    /// ended, whose summary is done (or that has none to wait for) and whose voicemail, if
    /// any, landed.
    pub fn is_final(&self) -> bool {
        match self.family {
            Family::Message => self
                .status
                .as_deref()
                .is_some_and(|s| status_rank(Family::Message, s) >= 2),
            Family::Call => {
                let ended = self.status.as_deref().is_some_and(|s| s != "in-progress");
                let answered = self.status.as_deref() == Some("completed");
                let summary_done = !answered || self.summary.as_ref().is_some_and(|s| s.done);
                let voicemail_done =
                    !self.has_voicemail || self.voicemail.as_ref().is_some_and(|v| v.done);
                ended && summary_done && voicemail_done
            }
        }
    }

    /// The kind shown in the CRM.
    pub fn kind(&self, voicemails: bool) -> ActivityKind {
        match self.family {
            Family::Message => ActivityKind::Message,
            Family::Call if voicemails && (self.has_voicemail || self.voicemail.is_some()) => {
                ActivityKind::Voicemail
            }
            Family::Call => ActivityKind::Call,
        }
    }

    /// `(from, to)`: the outside party and the workspace number, by direction.
    pub fn from_and_to(&self) -> (String, String) {
        let external = self.external_numbers.join(", ");
        let workspace = self.workspace_numbers.join(", ");
        match self.direction.as_deref() {
            Some("outgoing") => (workspace, external),
            _ => (external, workspace),
        }
    }
}

/// Who the activity is attributed to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    /// The Quo user's email.
    pub user_email: Option<String>,
    /// The CRM owner id, from `activity.owners` or the owner lookup.
    pub owner_id: Option<String>,
}

fn time(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true)))
        .unwrap_or(Value::Null)
}

fn hh_mm(total_minutes: u64) -> String {
    format!("{:02}:{:02}", total_minutes / 60, total_minutes % 60)
}

/// The summary column: its lines, then `Next steps: …`.
fn summary_text(summary: Option<&Summary>) -> Option<String> {
    let s = summary.filter(|s| !s.lines.is_empty() || !s.next_steps.is_empty())?;
    let mut out = s.lines.join(" ");
    if !s.next_steps.is_empty() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("Next steps: ");
        out.push_str(&s.next_steps.join("; "));
    }
    Some(out)
}

/// What the CRM gets: the CSV row and the values REST templates point into, as one JSON object.
///
/// The stable CSV columns are keys of the same name; the other keys are formats CRMs want
/// (`started_at_ms`, `started_at_offset`, `started_date`, `started_time`, `duration_hhmm`,
/// `duration_mmss`, `duration_ms`, `call_type` (Inbound/Outbound), `call_kind`
/// (Inbound/Outbound/Missed), `direction_upper`, `subtype` (Call, or Task for a text),
/// `record_id_number` and `owner_id_number` for CRMs with numeric ids), a `subject` and a
/// `description`. Content keys (`text`, `transcript`, `voicemail_transcript`) are present only
/// with full content.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityDocument(pub Value);

impl ActivityDocument {
    /// The document of `activity`, linked to `record_id`.
    pub fn build(
        activity: &Activity,
        record_id: &str,
        people: &Attribution,
        voicemails: bool,
        full_content: bool,
    ) -> Self {
        let kind = activity.kind(voicemails);
        let (from, to) = activity.from_and_to();
        let duration = activity.duration_s.unwrap_or(0);
        let summary = summary_text(activity.summary.as_ref());
        let voicemail = activity.voicemail.as_ref().filter(|_| voicemails);
        let incoming = activity.direction.as_deref() != Some("outgoing");
        let party = if incoming { &from } else { &to };
        let subject = match kind {
            ActivityKind::Call if incoming => format!("Call from {party}"),
            ActivityKind::Call => format!("Call to {party}"),
            ActivityKind::Voicemail => format!("Voicemail from {party}"),
            ActivityKind::Message if incoming => format!("Text from {party}"),
            ActivityKind::Message => format!("Text to {party}"),
        };
        let mut description: Vec<String> = vec![format!(
            "{} {} ({})",
            subject,
            activity.status.as_deref().unwrap_or("unknown"),
            activity.id
        )];
        if let Some(s) = &summary {
            description.push(s.clone());
        }
        if let Some(url) = activity.recording_urls.first() {
            description.push(format!("Recording: {url}"));
        }
        if let Some(url) = voicemail.and_then(|v| v.url.as_ref()) {
            description.push(format!("Voicemail: {url}"));
        }
        if let Some(url) = &activity.quo_url {
            description.push(format!("In Quo: {url}"));
        }
        let started = activity.started_at;
        let mut doc = json!({
            "activity_id": activity.id,
            "record_id": record_id,
            "kind": kind.as_str(),
            "direction": activity.direction,
            "status": activity.status,
            "from": from,
            "to": to,
            "started_at": time(started),
            "duration_s": duration,
            "user_email": people.user_email,
            "summary": summary,
            "quo_url": activity.quo_url,
            "owner_id": people.owner_id,
            "user_id": activity.user_id,
            "completed_at": time(activity.completed_at),
            "recording_url": activity.recording_urls.first(),
            "voicemail_url": voicemail.and_then(|v| v.url.clone()),
            "subject": subject,
            "description": description.join("\n"),
            "call_type": if incoming { "Inbound" } else { "Outbound" },
            "call_kind": match (activity.status.as_deref(), incoming) {
                (Some("missed"), true) => "Missed",
                (_, true) => "Inbound",
                (_, false) => "Outbound",
            },
            "subtype": if activity.family == Family::Message { "Task" } else { "Call" },
            "record_id_number": record_id.parse::<i64>().ok(),
            "owner_id_number": people.owner_id.as_deref().and_then(|o| o.parse::<i64>().ok()),
            "started_at_offset": started.map(|t| t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()),
            "direction_upper": if incoming { "INBOUND" } else { "OUTBOUND" },
            "started_at_ms": started.map(|t| t.timestamp_millis()),
            "started_date": started.map(|t| t.format("%Y-%m-%d").to_string()),
            "started_time": started.map(|t| t.format("%H:%M").to_string()),
            "duration_ms": duration * 1000,
            "duration_hhmm": hh_mm(duration.div_ceil(60)),
            "duration_mmss": format!("{:02}:{:02}", duration / 60, duration % 60),
        });
        if full_content {
            doc["text"] = json!(activity.text);
            doc["transcript"] = json!(activity.transcript);
            doc["voicemail_transcript"] = json!(voicemail.and_then(|v| v.transcript.clone()));
        }
        Self(doc)
    }

    /// A stable digest of the document: equal digests mean the CRM needs no write.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(&self.0).unwrap_or_default();
        let hash = Sha256::digest(&bytes);
        hash.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// A field as CSV text (`null` → empty).
    pub fn text(&self, key: &str) -> String {
        match self.0.get(key) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: u32) -> Option<DateTime<Utc>> {
        Some(
            DateTime::parse_from_rfc3339(&format!("2026-05-01T10:{minute:02}:00Z"))
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    fn status(s: &str, minute: u32) -> Activity {
        Activity {
            status: Some(s.into()),
            status_at: at(minute),
            ..Activity::new("AC1", Family::Message)
        }
    }

    #[test]
    fn statuses_move_forward_whatever_the_order() {
        let mut a = Activity::new("AC1", Family::Message);
        assert!(a.absorb(&status("delivered", 5)));
        assert!(
            !a.absorb(&status("sent", 7)),
            "a later `sent` view cannot undo delivery"
        );
        assert_eq!(a.status.as_deref(), Some("delivered"));
        assert!(
            a.absorb(&status("failed", 9)),
            "among endings the later view wins"
        );
        assert!(!a.absorb(&status("delivered", 6)), "an older ending loses");
        assert_eq!(a.status.as_deref(), Some("failed"));
    }

    #[test]
    fn summaries_and_voicemails_only_fill_in() {
        let mut a = Activity::new("AC2", Family::Call);
        let pending = Activity {
            summary: Some(Summary::default()),
            status: Some("completed".into()),
            ..Activity::new("AC2", Family::Call)
        };
        let done = Activity {
            summary: Some(Summary {
                lines: vec!["Talked".into()],
                next_steps: vec![],
                done: true,
            }),
            ..Activity::new("AC2", Family::Call)
        };
        assert!(a.absorb(&pending));
        assert!(!a.is_final(), "the summary is still to come");
        assert!(a.absorb(&done));
        assert!(
            !a.absorb(&pending),
            "a pending summary never replaces a done one"
        );
        assert!(a.is_final());
        assert!(!a.absorb(&done), "the same view twice changes nothing");
        let mut b = Activity::new("AC3", Family::Call);
        b.absorb(&Activity {
            status: Some("missed".into()),
            has_voicemail: true,
            ..Activity::new("AC3", Family::Call)
        });
        assert!(!b.is_final(), "the voicemail is still to come");
        assert_eq!(b.kind(true), ActivityKind::Voicemail);
        assert_eq!(b.kind(false), ActivityKind::Call);
    }

    #[test]
    fn rest_and_webhook_words_agree() {
        assert_eq!(normalise_status(Family::Call, "answered"), "completed");
        assert_eq!(normalise_status(Family::Call, "completed"), "completed");
        assert_eq!(normalise_status(Family::Call, "unanswered"), "missed");
        assert_eq!(normalise_status(Family::Call, "no-answer"), "missed");
        assert_eq!(normalise_status(Family::Call, "ringing"), "in-progress");
        assert_eq!(normalise_status(Family::Message, "Delivered"), "delivered");
    }

    #[test]
    fn content_stays_out_of_debug_and_metadata_documents() {
        let mut a = Activity {
            text: Some("secret plans".into()),
            direction: Some("incoming".into()),
            external_numbers: vec!["+14155550100".into()],
            ..Activity::new("AC4", Family::Message)
        };
        assert!(!format!("{a:?}").contains("secret plans"));
        let full = ActivityDocument::build(&a, "crm-1", &Attribution::default(), true, true);
        assert_eq!(full.text("text"), "secret plans");
        a.keep_content(false);
        let meta = ActivityDocument::build(&a, "crm-1", &Attribution::default(), true, false);
        assert!(meta.0.get("text").is_none());
        assert_eq!(meta.text("subject"), "Text from +14155550100");
        assert_ne!(full.digest(), meta.digest());
    }
}
