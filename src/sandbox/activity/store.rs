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

fn opt_time(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(iso_ms(&t))).unwrap_or(Value::Null)
}

fn summary_lines(id: &str) -> (Vec<String>, Vec<String>) {
    (
        vec![
            format!("Caller asked about the renewal quoted on call {id}."),
            "Agreed to send the updated pricing sheet.".to_string(),
        ],
        vec!["Email the pricing sheet".to_string()],
    )
}

fn transcript_dialogue(call: &StoredCall) -> Vec<Value> {
    vec![
        json!({"content": "Hello, thanks for calling.", "start": 0.0, "end": 2.1,
               "identifier": call.workspace_number, "userId": call.user_id}),
        json!({"content": format!("Hi, this is about my renewal ({}).", call.id), "start": 2.4, "end": 5.0,
               "identifier": call.external, "userId": null}),
    ]
}

impl StoredCall {
    fn answered(&self) -> bool {
        self.outcome == CallOutcome::Answered
    }

    fn completed_at(&self) -> DateTime<Utc> {
        self.created_at + chrono::Duration::seconds(self.duration as i64 + 5)
    }

    fn sender_and_recipient(&self) -> (&str, &str) {
        match self.direction {
            Direction::Incoming => (&self.external, &self.workspace_number),
            Direction::Outgoing => (&self.workspace_number, &self.external),
        }
    }

    fn rest_status(&self) -> &'static str {
        match (self.outcome, self.direction) {
            (CallOutcome::Answered, _) => "completed",
            (_, Direction::Incoming) => "missed",
            (_, Direction::Outgoing) => "no-answer",
        }
    }

    fn event_status(&self) -> &'static str {
        if self.answered() {
            "answered"
        } else {
            "unanswered"
        }
    }

    fn link(&self) -> String {
        format!(
            "https://my.quo.test/inbox/{}/c/{}?callId={}",
            self.phone_number_id, self.conversation_id, self.id
        )
    }

    fn summary_value(&self) -> Value {
        if !self.answered() {
            return json!({"status": "absent", "type": "human", "summary": [], "nextSteps": [], "jobs": [], "title": null});
        }
        if !self.summary_ready {
            return json!({"status": "in-progress", "type": "human", "summary": [], "nextSteps": [], "jobs": [], "title": null});
        }
        let (summary, next) = summary_lines(&self.id);
        json!({"status": "completed", "type": "human", "summary": summary, "nextSteps": next, "jobs": [], "title": "Renewal follow-up"})
    }

    fn voicemail_value(&self) -> Value {
        match &self.voicemail {
            None => Value::Null,
            Some((id, false)) => {
                json!({"id": id, "status": "in-progress", "duration": null, "recordingUrl": null, "transcript": null})
            }
            Some((id, true)) => json!({
                "id": id, "status": "completed", "duration": self.duration,
                "recordingUrl": format!("https://files.quo.test/voicemails/{id}.mp3"),
                "transcript": format!("Please call me back about {}.", self.id),
            }),
        }
    }

    /// The call as `GET /calls` answers it.
    pub(crate) fn render(&self, summary: bool, voicemail: bool) -> Value {
        let answered_at = self
            .answered()
            .then(|| self.created_at + chrono::Duration::seconds(4));
        let mut v = json!({
            "id": self.id,
            "phoneNumberId": self.phone_number_id,
            "actorId": self.user_id,
            "direction": self.direction.as_str(),
            "status": self.rest_status(),
            "participants": [
                {"phoneNumber": self.external, "actorId": null},
                {"phoneNumber": self.workspace_number, "actorId": self.user_id},
            ],
            "answeredAt": opt_time(answered_at),
            "answeredBy": if self.answered() { Value::String(self.user_id.clone()) } else { Value::Null },
            "initiatedBy": match self.direction { Direction::Outgoing => Value::String(self.user_id.clone()), Direction::Incoming => Value::Null },
            "completedAt": iso_ms(&self.completed_at()),
            "createdAt": iso_ms(&self.created_at),
            "updatedAt": iso_ms(&self.updated_at),
            "callRoute": "phone-number",
            "duration": self.duration,
            "forwardedFrom": null,
            "forwardedTo": null,
            "aiHandled": null,
        });
        if summary {
            v["summary"] = self.summary_value();
        }
        if voicemail {
            v["voicemail"] = self.voicemail_value();
        }
        v
    }

    fn context(&self) -> Value {
        json!({
            "orgId": ORG_ID,
            "phoneNumberId": self.phone_number_id,
            "conversationId": self.conversation_id,
            "phoneNumberType": "local",
            "userId": self.user_id,
            "contacts": {
                "ids": self.contact_ids,
                "lookupStatus": if self.contact_ids.is_empty() { "none" } else { "matched" },
            },
            "participants": {
                "workspace": [self.workspace_number],
                "external": [self.external],
                "resolution": "available",
            },
        })
    }

    /// The v1 call object of the legacy `call.completed` / `call.recording.completed` events.
    fn legacy_object(&self) -> Value {
        let (from, to) = self.sender_and_recipient();
        let media: Vec<Value> = match &self.recording {
            Some((id, true)) => vec![
                json!({"url": format!("https://files.quo.test/recordings/{id}.mp3"), "type": "audio/mpeg", "duration": self.duration}),
            ],
            _ => Vec::new(),
        };
        json!({
            "id": self.id,
            "object": "call",
            "answeredAt": opt_time(self.answered().then(|| self.created_at + chrono::Duration::seconds(4))),
            "completedAt": iso_ms(&self.completed_at()),
            "conversationId": self.conversation_id,
            "createdAt": iso_ms(&self.created_at),
            "direction": self.direction.as_str(),
            "from": from,
            "to": to,
            "media": media,
            "phoneNumberId": self.phone_number_id,
            "status": if self.answered() { "completed" } else { "no-answer" },
            "userId": self.user_id,
            "voicemail": null,
        })
    }

    fn emitted(&self, event_type: &'static str, resource: Value, legacy: Option<Value>) -> Emitted {
        Emitted {
            event_type,
            activity_id: self.id.clone(),
            phone_number_id: self.phone_number_id.clone(),
            resource,
            context: self.context(),
            link: self.link(),
            legacy,
        }
    }

    /// `call.completed` (and, for an unanswered incoming call, `call.missed`).
    fn ended_events(&self) -> Vec<Emitted> {
        let resource = json!({
            "id": self.id,
            "direction": self.direction.as_str(),
            "status": self.event_status(),
            "createdAt": iso_ms(&self.created_at),
            "answeredAt": opt_time(self.answered().then(|| self.created_at + chrono::Duration::seconds(4))),
            "completedAt": iso_ms(&self.completed_at()),
            "updatedAt": iso_ms(&self.updated_at),
            "duration": self.duration,
            "hasVoicemail": self.voicemail.is_some(),
        });
        let mut out = vec![self.emitted("call.completed", resource, Some(self.legacy_object()))];
        if !self.answered() && self.direction == Direction::Incoming {
            let missed = json!({"id": self.id, "createdAt": iso_ms(&self.created_at), "updatedAt": iso_ms(&self.updated_at)});
            out.push(self.emitted("call.missed", missed, None));
        }
        out
    }

    fn enrichment_event(&self, what: Enrichment) -> Option<Emitted> {
        Some(match what {
            Enrichment::Summary => {
                let (summary, next) = summary_lines(&self.id);
                let resource = json!({
                    "callId": self.id, "processingStatus": "completed", "summary": summary,
                    "nextSteps": next, "jobs": [], "handledByAiAgent": false,
                    "answeredByUserId": self.user_id,
                });
                let legacy = json!({"object": "callSummary", "callId": self.id, "summary": summary, "nextSteps": next, "status": "completed"});
                self.emitted("call.summary.completed", resource, Some(legacy))
            }
            Enrichment::Transcript => {
                let dialogue = transcript_dialogue(self);
                let resource = json!({"callId": self.id, "dialogue": dialogue});
                let legacy = json!({"object": "callTranscript", "callId": self.id, "dialogue": dialogue, "duration": self.duration, "createdAt": iso_ms(&self.updated_at), "status": "completed"});
                self.emitted("call.transcript.completed", resource, Some(legacy))
            }
            Enrichment::Recording => {
                let (id, _) = self.recording.as_ref()?;
                let resource = json!({
                    "id": self.id,
                    "recordings": [{"id": id, "duration": self.duration, "startTime": iso_ms(&self.created_at),
                                    "type": "audio/mpeg", "url": format!("https://files.quo.test/recordings/{id}.mp3")}],
                });
                self.emitted(
                    "call.recording.completed",
                    resource,
                    Some(self.legacy_object()),
                )
            }
            Enrichment::Voicemail => {
                let vm = self.voicemail_value();
                let (from, to) = self.sender_and_recipient();
                let resource = json!({
                    "id": vm["id"], "voicemailId": vm["id"], "callId": self.id, "from": from, "to": to,
                    "duration": vm["duration"], "transcript": vm["transcript"], "recordingUrl": vm["recordingUrl"],
                });
                self.emitted("call.voicemail.completed", resource, None)
            }
            Enrichment::Delivered => return None,
        })
    }
}

impl StoredMessage {
    fn sender_and_recipient(&self) -> (String, Vec<String>) {
        match self.direction {
            Direction::Incoming => (self.external.clone(), vec![self.workspace_number.clone()]),
            Direction::Outgoing => (self.workspace_number.clone(), vec![self.external.clone()]),
        }
    }

    /// The message as `GET /messages` answers it.
    pub(crate) fn render(&self) -> Value {
        let (from, to) = self.sender_and_recipient();
        json!({
            "id": self.id,
            "to": to,
            "from": from,
            "text": self.text,
            "conversationId": self.conversation_id,
            "direction": self.direction.as_str(),
            "status": self.status,
            "createdAt": iso_ms(&self.created_at),
            "updatedAt": iso_ms(&self.updated_at),
            "media": [],
            "phoneNumberId": self.phone_number_id,
            "userId": self.user_id,
        })
    }

    fn event(&self, event_type: &'static str) -> Emitted {
        let (from, to) = self.sender_and_recipient();
        let resource = json!({
            "id": self.id, "direction": self.direction.as_str(), "text": self.text, "media": [],
            "status": self.status, "createdAt": iso_ms(&self.created_at),
        });
        let context = json!({
            "orgId": ORG_ID,
            "phoneNumberId": self.phone_number_id,
            "conversationId": self.conversation_id,
            "userId": self.user_id,
            "contacts": {
                "ids": self.contact_ids,
                "lookupStatus": if self.contact_ids.is_empty() { "none" } else { "matched" },
            },
            "senderIdentifier": from,
            "recipientIdentifiers": to,
        });
        let legacy = json!({
            "id": self.id, "object": "message", "from": from, "to": to.first().cloned().unwrap_or_default(),
            "direction": self.direction.as_str(), "body": self.text, "media": [], "status": self.status,
            "createdAt": iso_ms(&self.created_at), "userId": self.user_id,
            "phoneNumberId": self.phone_number_id, "conversationId": self.conversation_id,
        });
        Emitted {
            event_type,
            activity_id: self.id.clone(),
            phone_number_id: self.phone_number_id.clone(),
            resource,
            context,
            link: format!(
                "https://my.quo.test/inbox/{}/c/{}",
                self.phone_number_id, self.conversation_id
            ),
            legacy: Some(legacy),
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
