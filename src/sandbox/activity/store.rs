//! What the sandbox's Quo workspace holds for activity: users, phone numbers, calls and messages,
//! and the enrichments (summaries, transcripts, recordings, voicemails, delivery receipts) that
//! arrive after an activity, each rendered in the 2026-03-30 REST shape, the 2026-03-30 webhook
//! shape (`data.resource` + `data.context`) and, for the events that have one, the legacy v1
//! shape (`data.object`).
//!
//! Sandbox choices where the contract is silent (quo-api-2026-03-30.md §6): REST call statuses are
//! `completed` (answered), `missed` (incoming, unanswered) and `no-answer` (outgoing,
//! unanswered); a summary not ready yet reads `{"status": "in-progress"}` and a missed call's
//! `{"status": "absent"}`; participants carry `actorId` on the workspace side only; the
//! `call.recording.completed` resource carries the call's `id` beside `recordings`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::sandbox::state::{iso_ms, random_hex};

mod render;
use render::transcript_dialogue;

/// The workspace id the sandbox's events carry in `context.orgId`.
pub(crate) const ORG_ID: &str = "ORsandbox01";

/// Which way a call or message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the outside party to the workspace.
    #[default]
    Incoming,
    /// From the workspace to the outside party.
    Outgoing,
}

impl Direction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }
}

/// How a simulated call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    /// Answered and talked through: recording, summary and transcript follow.
    #[default]
    Answered,
    /// Not picked up (incoming calls also fire `call.missed`).
    Missed,
    /// Not picked up, and the caller left a voicemail (follows as `call.voicemail.completed`).
    Voicemail,
}

/// A call to simulate (`SandboxHandle::activity_call`, `POST /_sandbox/activity/calls`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CallSpec {
    /// The outside party's number (E.164). Contacts holding it are the call's `contacts.ids`.
    pub number: String,
    /// Which way the call went.
    pub direction: Direction,
    /// How it ended.
    pub outcome: CallOutcome,
    /// Seconds talked (or the voicemail's length).
    pub duration: u64,
    /// The user who took or made it (`US…`); the first user when absent.
    pub user_id: Option<String>,
    /// When it started; now when absent (older values make backfill data).
    pub created_at: Option<DateTime<Utc>>,
    /// Whether an answered call is recorded (a `call.recording.completed` follows).
    pub recorded: bool,
}

/// A message to simulate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageSpec {
    /// The outside party's number (E.164).
    pub number: String,
    /// Which way it went.
    pub direction: Direction,
    /// The message text.
    pub text: String,
    /// The user who sent it (outgoing) or whose inbox got it; the first user when absent.
    pub user_id: Option<String>,
    /// When it was sent; now when absent.
    pub created_at: Option<DateTime<Utc>>,
}

/// One enrichment that lands after its activity, in any order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Enrichment {
    /// `call.summary.completed`.
    Summary,
    /// `call.transcript.completed`.
    Transcript,
    /// `call.recording.completed`.
    Recording,
    /// `call.voicemail.completed`.
    Voicemail,
    /// `message.delivered` for an outgoing message.
    Delivered,
}

/// An enrichment waiting for its time.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// When it lands.
    pub due: Instant,
    /// The call or message.
    pub activity_id: String,
    /// What lands.
    pub what: Enrichment,
}

/// An event for the delivery hub: the 2026-03-30 parts, and the legacy v1 object when the event
/// exists in v1.
#[derive(Debug, Clone)]
pub(crate) struct Emitted {
    /// `call.completed`, …
    pub event_type: &'static str,
    /// The activity it is about (for fault draws and the delivery log).
    pub activity_id: String,
    /// The workspace number it happened on (`resourceIds` filter).
    pub phone_number_id: String,
    /// `data.resource`.
    pub resource: Value,
    /// `data.context`.
    pub context: Value,
    /// `data.links.quo`.
    pub link: String,
    /// `data.object` of the legacy envelope, when v1 has this event.
    pub legacy: Option<Value>,
}

/// A stored call.
#[derive(Debug, Clone)]
pub(crate) struct StoredCall {
    seq: u64,
    pub id: String,
    phone_number_id: String,
    workspace_number: String,
    user_id: String,
    direction: Direction,
    outcome: CallOutcome,
    external: String,
    contact_ids: Vec<String>,
    conversation_id: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    duration: u64,
    summary_ready: bool,
    transcript_ready: bool,
    recording: Option<(String, bool)>,
    voicemail: Option<(String, bool)>,
}

/// A stored message.
#[derive(Debug, Clone)]
pub(crate) struct StoredMessage {
    seq: u64,
    pub id: String,
    phone_number_id: String,
    workspace_number: String,
    user_id: String,
    direction: Direction,
    external: String,
    text: String,
    status: &'static str,
    contact_ids: Vec<String>,
    conversation_id: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A workspace user.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub id: String,
    pub email: String,
    first_name: String,
    last_name: String,
    role: &'static str,
}

/// A workspace phone number.
#[derive(Debug, Clone)]
pub(crate) struct Number {
    pub id: String,
    pub number: String,
    name: &'static str,
}

/// Calls, messages, users and numbers, plus the enrichments still to land.
#[derive(Debug)]
pub(crate) struct ActivityStore {
    seq: u64,
    pub users: Vec<User>,
    pub numbers: Vec<Number>,
    calls: Vec<StoredCall>,
    call_at: HashMap<String, usize>,
    messages: Vec<StoredMessage>,
    message_at: HashMap<String, usize>,
    pub pending: Vec<Pending>,
}

impl Default for ActivityStore {
    fn default() -> Self {
        let user = |id: &str, email: &str, first: &str, last: &str, role| User {
            id: id.into(),
            email: email.into(),
            first_name: first.into(),
            last_name: last.into(),
            role,
        };
        Self {
            seq: 0,
            users: vec![
                user("USada0000001", "ada@quo.test", "Ada", "Lovelace", "owner"),
                user(
                    "USgrace00002",
                    "grace@quo.test",
                    "Grace",
                    "Hopper",
                    "member",
                ),
                user("USalan000003", "alan@quo.test", "Alan", "Turing", "member"),
            ],
            numbers: vec![
                Number {
                    id: "PNmain000001".into(),
                    number: "+18885550100".into(),
                    name: "Main line",
                },
                Number {
                    id: "PNsales00002".into(),
                    number: "+18885550101".into(),
                    name: "Sales",
                },
            ],
            calls: Vec::new(),
            call_at: HashMap::new(),
            messages: Vec::new(),
            message_at: HashMap::new(),
            pending: Vec::new(),
        }
    }
}

/// A page of a newest-first listing.
pub(crate) struct Listed {
    /// The items.
    pub items: Vec<Value>,
    /// The sequence number to resume after, when more follow.
    pub next_after: Option<u64>,
}

/// Filters of `GET /calls` and `GET /messages`.
#[derive(Debug, Default, Clone)]
pub(crate) struct ListFilter {
    /// Inclusive (`[gte]`) or exclusive (`[gt]`) lower bound.
    pub since: Option<(DateTime<Utc>, bool)>,
    /// Inclusive (`[lte]`) or exclusive (`[lt]`) upper bound.
    pub until: Option<(DateTime<Utc>, bool)>,
    /// Resume below this sequence number (newest first).
    pub before_seq: Option<u64>,
    /// Page size.
    pub limit: usize,
    /// `include=summary`.
    pub summary: bool,
    /// `include=voicemail`.
    pub voicemail: bool,
    /// `direction`.
    pub direction: Option<String>,
    /// `participant` / `from` / `to`.
    pub number: Option<String>,
}

impl ListFilter {
    fn admits(&self, at: &DateTime<Utc>) -> bool {
        let low = self
            .since
            .is_none_or(|(t, inclusive)| if inclusive { *at >= t } else { *at > t });
        let high = self
            .until
            .is_none_or(|(t, inclusive)| if inclusive { *at <= t } else { *at < t });
        low && high
    }
}

/// A new id with a Quo prefix.
pub(crate) fn prefixed(prefix: &str) -> String {
    format!("{prefix}{}", random_hex(12))
}

impl ActivityStore {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn user_or_first(&self, id: Option<&str>) -> String {
        id.filter(|id| self.users.iter().any(|u| u.id == *id))
            .map(str::to_string)
            .unwrap_or_else(|| self.users[0].id.clone())
    }

    /// The number a user works from (users alternate between the two lines).
    fn number_for(&self, user_id: &str) -> Number {
        let at = self.users.iter().position(|u| u.id == user_id).unwrap_or(0);
        self.numbers[at % self.numbers.len()].clone()
    }

    /// Stores a call; returns it and the events that fire at once (none when `quiet`).
    pub(crate) fn add_call(
        &mut self,
        spec: &CallSpec,
        contact_ids: Vec<String>,
        quiet: bool,
    ) -> (StoredCall, Vec<Emitted>) {
        let seq = self.next_seq();
        let user_id = self.user_or_first(spec.user_id.as_deref());
        let number = self.number_for(&user_id);
        // A call is reported when it ends: it started its length (plus ringing) ago.
        let length = chrono::Duration::seconds(spec.duration as i64 + 5);
        let created_at = spec.created_at.unwrap_or_else(|| Utc::now() - length);
        let answered = spec.outcome == CallOutcome::Answered;
        let call = StoredCall {
            seq,
            id: prefixed("AC"),
            phone_number_id: number.id,
            workspace_number: number.number,
            user_id,
            direction: spec.direction,
            outcome: spec.outcome,
            external: spec.number.clone(),
            contact_ids,
            conversation_id: prefixed("CN"),
            created_at,
            updated_at: created_at + length,
            duration: spec.duration,
            // Quiet (seeded) calls are old and complete.
            summary_ready: quiet && answered,
            transcript_ready: quiet && answered,
            recording: (answered && spec.recorded).then(|| (prefixed("CR"), quiet)),
            voicemail: (spec.outcome == CallOutcome::Voicemail).then(|| (prefixed("VM"), quiet)),
        };
        let events = if quiet {
            Vec::new()
        } else {
            call.ended_events()
        };
        self.call_at.insert(call.id.clone(), self.calls.len());
        self.calls.push(call.clone());
        (call, events)
    }

    /// The enrichments a new call will receive.
    pub(crate) fn enrichments_of(call: &StoredCall) -> Vec<Enrichment> {
        let mut out = Vec::new();
        if call.answered() {
            out.extend([Enrichment::Summary, Enrichment::Transcript]);
        }
        if call.recording.is_some() {
            out.push(Enrichment::Recording);
        }
        if call.voicemail.is_some() {
            out.push(Enrichment::Voicemail);
        }
        out
    }

    /// Stores a message; returns it and the events that fire at once.
    pub(crate) fn add_message(
        &mut self,
        spec: &MessageSpec,
        contact_ids: Vec<String>,
        quiet: bool,
    ) -> (StoredMessage, Vec<Emitted>) {
        let seq = self.next_seq();
        let user_id = self.user_or_first(spec.user_id.as_deref());
        let number = self.number_for(&user_id);
        let created_at = spec.created_at.unwrap_or_else(Utc::now);
        let status = match (spec.direction, quiet) {
            (Direction::Incoming, _) => "received",
            (Direction::Outgoing, true) => "delivered",
            (Direction::Outgoing, false) => "sent",
        };
        let message = StoredMessage {
            seq,
            id: prefixed("AC"),
            phone_number_id: number.id,
            workspace_number: number.number,
            user_id,
            direction: spec.direction,
            external: spec.number.clone(),
            text: spec.text.clone(),
            status,
            contact_ids,
            conversation_id: prefixed("CN"),
            created_at,
            updated_at: created_at,
        };
        let events = if !quiet && spec.direction == Direction::Incoming {
            vec![message.event("message.received")]
        } else {
            Vec::new()
        };
        self.message_at
            .insert(message.id.clone(), self.messages.len());
        self.messages.push(message.clone());
        (message, events)
    }

    /// Applies an enrichment (the stored activity changes and its `updatedAt` moves); returns the
    /// event it fires.
    pub(crate) fn apply(&mut self, activity_id: &str, what: Enrichment) -> Option<Emitted> {
        let now = Utc::now();
        if what == Enrichment::Delivered {
            let at = *self.message_at.get(activity_id)?;
            let message = &mut self.messages[at];
            message.status = "delivered";
            message.updated_at = now.max(message.updated_at + chrono::Duration::milliseconds(1));
            return Some(message.event("message.delivered"));
        }
        let at = *self.call_at.get(activity_id)?;
        let call = &mut self.calls[at];
        match what {
            Enrichment::Summary => call.summary_ready = true,
            Enrichment::Transcript => call.transcript_ready = true,
            Enrichment::Recording => call.recording.as_mut()?.1 = true,
            Enrichment::Voicemail => call.voicemail.as_mut()?.1 = true,
            Enrichment::Delivered => {}
        }
        call.updated_at = now.max(call.updated_at + chrono::Duration::milliseconds(1));
        call.enrichment_event(what)
    }

    /// Calls newest first, filtered and paged.
    pub(crate) fn list_calls(&self, f: &ListFilter) -> Listed {
        let matching = self.calls.iter().rev().filter(|c| {
            f.before_seq.is_none_or(|s| c.seq < s)
                && f.admits(&c.created_at)
                && f.direction
                    .as_deref()
                    .is_none_or(|d| d == c.direction.as_str())
                && f.number
                    .as_deref()
                    .is_none_or(|n| n == c.external || n == c.workspace_number)
        });
        page(
            matching.map(|c| (c.seq, c.render(f.summary, f.voicemail))),
            f.limit,
        )
    }

    /// Messages newest first, filtered and paged.
    pub(crate) fn list_messages(&self, f: &ListFilter) -> Listed {
        let matching = self.messages.iter().rev().filter(|m| {
            f.before_seq.is_none_or(|s| m.seq < s)
                && f.admits(&m.created_at)
                && f.direction
                    .as_deref()
                    .is_none_or(|d| d == m.direction.as_str())
                && f.number.as_deref().is_none_or(|n| n == m.external)
        });
        page(matching.map(|m| (m.seq, m.render())), f.limit)
    }

    /// One call.
    pub(crate) fn call(&self, id: &str) -> Option<&StoredCall> {
        self.call_at.get(id).map(|&at| &self.calls[at])
    }

    /// One message.
    pub(crate) fn message(&self, id: &str) -> Option<&StoredMessage> {
        self.message_at.get(id).map(|&at| &self.messages[at])
    }

    /// A call's transcript (`GET /calls/{id}/transcripts`), one entry per recording segment.
    pub(crate) fn transcripts(&self, id: &str) -> Option<Vec<Value>> {
        let call = self.call(id)?;
        Some(if call.transcript_ready {
            vec![json!({
                "recordingId": call.recording.as_ref().map(|(r, _)| r.clone()),
                "status": "completed",
                "startTime": iso_ms(&call.created_at),
                "createdAt": iso_ms(&call.updated_at),
                "duration": call.duration,
                "dialogue": transcript_dialogue(call).into_iter().map(|mut d| {
                    d["actorId"] = d["userId"].take();
                    d
                }).collect::<Vec<_>>(),
            })]
        } else {
            Vec::new()
        })
    }

    /// A call's recordings (`GET /calls/{id}/recordings`).
    pub(crate) fn recordings(&self, id: &str) -> Option<Vec<Value>> {
        let call = self.call(id)?;
        Some(match &call.recording {
            Some((rid, true)) => vec![json!({
                "id": rid, "status": "completed", "startTime": iso_ms(&call.created_at),
                "duration": call.duration, "url": format!("https://files.quo.test/recordings/{rid}.mp3"),
                "type": "audio/mpeg",
            })],
            _ => Vec::new(),
        })
    }

    /// Every call as stored (summary and voicemail included), oldest first.
    pub(crate) fn all_calls(&self) -> Vec<Value> {
        self.calls.iter().map(|c| c.render(true, true)).collect()
    }

    /// Every message as stored, oldest first.
    pub(crate) fn all_messages(&self) -> Vec<Value> {
        self.messages.iter().map(StoredMessage::render).collect()
    }

    /// A user as `GET /users` answers it.
    pub(crate) fn render_user(u: &User) -> Value {
        json!({
            "id": u.id, "email": u.email, "firstName": u.first_name, "lastName": u.last_name,
            "pictureUrl": null, "role": u.role,
            "createdAt": "2026-01-05T09:00:00.000Z", "updatedAt": "2026-01-05T09:00:00.000Z",
        })
    }

    /// A number as `GET /phone-numbers` answers it.
    pub(crate) fn render_number(n: &Number) -> Value {
        json!({"id": n.id, "number": n.number, "name": n.name, "createdAt": "2026-01-05T09:00:00.000Z"})
    }

    /// The enrichments due by `now`, removed from the queue, soonest first.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<Pending> {
        let (due, later): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.due <= now);
        self.pending = later;
        let mut due = due;
        due.sort_by_key(|p| p.due);
        due
    }

    /// Schedules `what` for `activity_id` after `delay`.
    pub(crate) fn schedule(&mut self, activity_id: &str, what: Enrichment, delay: Duration) {
        self.pending.push(Pending {
            due: Instant::now() + delay,
            activity_id: activity_id.to_string(),
            what,
        });
    }
}

fn page(items: impl Iterator<Item = (u64, Value)>, limit: usize) -> Listed {
    let mut out = Vec::with_capacity(limit);
    let mut last = None;
    let mut more = false;
    for (seq, item) in items {
        if out.len() == limit {
            more = true;
            break;
        }
        last = Some(seq);
        out.push(item);
    }
    Listed {
        items: out,
        next_after: if more { last } else { None },
    }
}
