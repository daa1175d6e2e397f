//! Every shape in which Quo describes a call or message, read into an [`Activity`] view: the
//! 2026-03-30 webhook envelope (`data.resource` + `data.context`), the legacy v1 envelope
//! (`data.object`), and the 2026-03-30 REST objects the poller reads.
//!
//! Reading is lenient (clients must ignore unknown fields; a missing field is simply not known)
//! but an event without an id, a type or the activity it concerns is refused, naming what is
//! missing. Content is dropped here, before anything is stored, unless `activity.content =
//! "full"`.
//!
//! Where the contract is secondary or silent, both readings are taken:
//! - the call of `call.recording.completed` and `call.voicemail.completed` is `callId` when
//!   present, else `id`;
//! - a REST participant is the workspace's when it carries an `actorId` **or** its number is one
//!   of the workspace's (`GET /phone-numbers`); the rest are the outside party;
//! - a legacy message's text is `body` or `text`, its `to` a string or a list;
//! - `context.contacts.lookupStatus = "unavailable"` means the ids are unknown, not empty.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::model::{Activity, Family, Summary, Voicemail, normalise_status};

/// The eight event types activity logging consumes.
pub const EVENT_TYPES: [&str; 8] = [
    "call.completed",
    "call.missed",
    "call.voicemail.completed",
    "call.summary.completed",
    "call.transcript.completed",
    "call.recording.completed",
    "message.received",
    "message.delivered",
];

/// The subset that exists as a legacy v1 webhook.
pub const LEGACY_EVENT_TYPES: [&str; 6] = [
    "call.completed",
    "call.summary.completed",
    "call.transcript.completed",
    "call.recording.completed",
    "message.received",
    "message.delivered",
];

/// Why a delivery's body cannot be used (the receiver answers 400 with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not JSON.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// No `id` in the body and no `webhook-id` header.
    #[error("the event has no id")]
    NoId,
    /// No `type`.
    #[error("the event has no type")]
    NoType,
    /// The event names no call or message.
    #[error("{event_type} event {event_id} names no call or message")]
    NoActivity {
        /// The event type.
        event_type: String,
        /// The event id.
        event_id: String,
    },
}

/// A delivery read into a view.
#[derive(Debug, Clone)]
pub struct ActivityEvent {
    /// Quo's event id (stable across redeliveries).
    pub event_id: String,
    /// One of [`EVENT_TYPES`].
    pub event_type: String,
    /// Whether it came in the legacy v1 envelope.
    pub legacy: bool,
    /// What it says about its activity.
    pub view: Activity,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn time(v: &Value, key: &str) -> Option<DateTime<Utc>> {
    let raw = v.get(key)?.as_str()?;
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A non-negative whole number of seconds (numbers from outside are clamped).
fn seconds(v: &Value, key: &str) -> Option<u64> {
    let n = v.get(key)?;
    let f = n.as_f64().or_else(|| n.as_str()?.parse().ok())?;
    (f.is_finite() && f >= 0.0).then(|| f.min(7.0 * 24.0 * 3600.0).round() as u64)
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    match v.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// `context.contacts.ids`, or `None` when Quo could not look (`unavailable`) or did not say.
fn contact_ids(context: &Value) -> Option<Vec<String>> {
    let contacts = context.get("contacts")?;
    if contacts.get("lookupStatus").and_then(Value::as_str) == Some("unavailable") {
        return None;
    }
    Some(strings(contacts, "ids"))
}

fn dialogue_text(dialogue: Option<&Value>) -> Option<String> {
    let lines: Vec<String> = dialogue?
        .as_array()?
        .iter()
        .filter_map(|d| {
            let content = d.get("content")?.as_str()?;
            let who = d
                .get("identifier")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            Some(format!("{who}: {content}"))
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

fn summary_of(v: &Value, status_key: &str) -> Summary {
    let status = v.get(status_key).and_then(Value::as_str).unwrap_or("");
    Summary {
        lines: strings(v, "summary"),
        next_steps: strings(v, "nextSteps"),
        done: matches!(status, "completed" | "absent" | "failed"),
    }
}

/// Reads a delivery's body; `Ok(None)` for an event type activity logging does not consume.
/// `delivery_id` is the `webhook-id` header, used as the event id when the body has none.
pub fn parse_event(
    body: &[u8],
    delivery_id: Option<&str>,
    full_content: bool,
) -> Result<Option<ActivityEvent>, EventError> {
    let event: Value = serde_json::from_slice(body).map_err(|e| EventError::Json(e.to_string()))?;
    let event_id = text(&event, "id")
        .or_else(|| delivery_id.map(str::to_string))
        .ok_or(EventError::NoId)?;
    let event_type = text(&event, "type").ok_or(EventError::NoType)?;
    if !EVENT_TYPES.contains(&event_type.as_str()) {
        return Ok(None);
    }
    let data = event.get("data").cloned().unwrap_or(Value::Null);
    let at = time(&event, "createdAt");
    let (view, legacy) = match data.get("object") {
        Some(object) => (legacy_view(&event_type, object, at), true),
        None => (standard_view(&event_type, &data, at), false),
    };
    let Some(mut view) = view else {
        return Err(EventError::NoActivity {
            event_type,
            event_id,
        });
    };
    view.keep_content(full_content);
    Ok(Some(ActivityEvent {
        event_id,
        event_type,
        legacy,
        view,
    }))
}

/// A 2026-03-30 event (`data.resource`, `data.context`, `data.links.quo`).
fn standard_view(event_type: &str, data: &Value, at: Option<DateTime<Utc>>) -> Option<Activity> {
    let resource = data.get("resource").unwrap_or(&Value::Null);
    let context = data.get("context").unwrap_or(&Value::Null);
    let family = if event_type.starts_with("message.") {
        Family::Message
    } else {
        Family::Call
    };
    let id = match event_type {
        "call.summary.completed" | "call.transcript.completed" => text(resource, "callId"),
        "call.recording.completed" | "call.voicemail.completed" => {
            text(resource, "callId").or_else(|| text(resource, "id"))
        }
        _ => text(resource, "id"),
    }?;
    let mut view = Activity::new(&id, family);
    view.user_id = text(context, "userId");
    view.phone_number_id = text(context, "phoneNumberId");
    view.conversation_id = text(context, "conversationId");
    view.contact_ids = contact_ids(context);
    view.quo_url = data.get("links").and_then(|l| text(l, "quo"));
    if let Some(participants) = context.get("participants") {
        view.external_numbers = strings(participants, "external");
        view.workspace_numbers = strings(participants, "workspace");
    }
    match event_type {
        "call.completed" | "call.missed" => {
            view.direction = text(resource, "direction");
            view.started_at = time(resource, "createdAt");
            view.completed_at = time(resource, "completedAt");
            view.duration_s = seconds(resource, "duration");
            view.has_voicemail = resource
                .get("hasVoicemail")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let status = if event_type == "call.missed" {
                view.direction.get_or_insert_with(|| "incoming".into());
                Some("missed".to_string())
            } else {
                text(resource, "status")
            };
            view.status = status.map(|s| normalise_status(Family::Call, &s));
            view.status_at = time(resource, "updatedAt").or(at);
        }
        "call.recording.completed" => {
            view.recording_urls = resource
                .get("recordings")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(|i| text(i, "url")).collect())
                .unwrap_or_default();
        }
        "call.summary.completed" => {
            let mut summary = summary_of(resource, "processingStatus");
            summary.done |= resource.get("processingStatus").is_none();
            view.summary = Some(summary);
        }
        "call.transcript.completed" => {
            view.transcript = dialogue_text(resource.get("dialogue"));
        }
        "call.voicemail.completed" => {
            view.has_voicemail = true;
            view.voicemail = Some(Voicemail {
                url: text(resource, "recordingUrl"),
                duration_s: seconds(resource, "duration"),
                transcript: text(resource, "transcript"),
                done: true,
            });
            if view.external_numbers.is_empty() {
                view.external_numbers = text(resource, "from").into_iter().collect();
            }
        }
        _ => {
            // message.received / message.delivered
            view.direction = text(resource, "direction");
            view.started_at = time(resource, "createdAt");
            view.text = text(resource, "text");
            view.status = text(resource, "status").map(|s| normalise_status(Family::Message, &s));
            view.status_at = at.or(view.started_at);
            let sender: Vec<String> = text(context, "senderIdentifier").into_iter().collect();
            let recipients = strings(context, "recipientIdentifiers");
            let (external, workspace) = match view.direction.as_deref() {
                Some("outgoing") => (recipients, sender),
                _ => (sender, recipients),
            };
            view.external_numbers = external;
            view.workspace_numbers = workspace;
        }
    }
    Some(view)
}

/// A legacy v1 event (`data.object`).
fn legacy_view(event_type: &str, object: &Value, at: Option<DateTime<Utc>>) -> Option<Activity> {
    match event_type {
        "call.summary.completed" => {
            let mut view = Activity::new(&text(object, "callId")?, Family::Call);
            view.summary = Some(summary_of(object, "status"));
            Some(view)
        }
        "call.transcript.completed" => {
            let mut view = Activity::new(&text(object, "callId")?, Family::Call);
            view.transcript = dialogue_text(object.get("dialogue"));
            Some(view)
        }
        "call.completed" | "call.recording.completed" => {
            let mut view = Activity::new(&text(object, "id")?, Family::Call);
            fill_parties(&mut view, object);
            view.started_at = time(object, "createdAt");
            view.completed_at = time(object, "completedAt");
            view.user_id = text(object, "userId");
            view.phone_number_id = text(object, "phoneNumberId");
            view.conversation_id = text(object, "conversationId");
            if let (Some(answered), Some(done)) = (time(object, "answeredAt"), view.completed_at) {
                view.duration_s = Some((done - answered).num_seconds().max(0) as u64);
            }
            view.recording_urls = object
                .get("media")
                .and_then(Value::as_array)
                .map(|m| m.iter().filter_map(|i| text(i, "url")).collect())
                .unwrap_or_default();
            if let Some(vm) = object.get("voicemail").filter(|v| v.is_object()) {
                view.has_voicemail = true;
                view.voicemail = Some(Voicemail {
                    url: text(vm, "url"),
                    duration_s: seconds(vm, "duration"),
                    transcript: None,
                    done: true,
                });
            }
            if event_type == "call.completed" {
                view.status = text(object, "status").map(|s| normalise_status(Family::Call, &s));
                view.status_at = at;
            }
            Some(view)
        }
        _ => {
            let mut view = Activity::new(&text(object, "id")?, Family::Message);
            fill_parties(&mut view, object);
            view.started_at = time(object, "createdAt");
            view.text = text(object, "body").or_else(|| text(object, "text"));
            view.status = text(object, "status").map(|s| normalise_status(Family::Message, &s));
            view.status_at = at.or(view.started_at);
            view.user_id = text(object, "userId");
            view.phone_number_id = text(object, "phoneNumberId");
            view.conversation_id = text(object, "conversationId");
            Some(view)
        }
    }
}

/// Direction, outside party and workspace number of a v1 object (`from`, `to`).
fn fill_parties(view: &mut Activity, object: &Value) {
    view.direction = text(object, "direction");
    let from = strings(object, "from");
    let to = strings(object, "to");
    let (external, workspace) = match view.direction.as_deref() {
        Some("outgoing") => (to, from),
        _ => (from, to),
    };
    view.external_numbers = external;
    view.workspace_numbers = workspace;
}

/// A call from `GET /calls` or `GET /calls/{id}` (`workspace`: the workspace's own numbers).
pub fn rest_call(item: &Value, workspace: &[String], full_content: bool) -> Option<Activity> {
    let mut view = Activity::new(&text(item, "id")?, Family::Call);
    view.direction = text(item, "direction");
    view.status = text(item, "status").map(|s| normalise_status(Family::Call, &s));
    view.status_at = time(item, "updatedAt");
    view.started_at = time(item, "createdAt");
    view.completed_at = time(item, "completedAt");
    view.duration_s = seconds(item, "duration");
    view.user_id = text(item, "actorId").or_else(|| text(item, "answeredBy"));
    view.phone_number_id = text(item, "phoneNumberId");
    view.conversation_id = text(item, "conversationId");
    for p in item
        .get("participants")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(number) = text(p, "phoneNumber") else {
            continue;
        };
        let ours = text(p, "actorId").is_some() || workspace.contains(&number);
        if ours {
            view.workspace_numbers.push(number);
        } else {
            view.external_numbers.push(number);
        }
    }
    if let Some(summary) = item.get("summary").filter(|s| s.is_object()) {
        view.summary = Some(summary_of(summary, "status"));
    }
    if let Some(vm) = item.get("voicemail").filter(|v| v.is_object()) {
        view.has_voicemail = true;
        view.voicemail = Some(Voicemail {
            url: text(vm, "recordingUrl"),
            duration_s: seconds(vm, "duration"),
            transcript: text(vm, "transcript"),
            done: text(vm, "status").as_deref() == Some("completed"),
        });
    }
    view.keep_content(full_content);
    Some(view)
}

/// A message from `GET /messages` or `GET /messages/{id}`.
pub fn rest_message(item: &Value, full_content: bool) -> Option<Activity> {
    let mut view = Activity::new(&text(item, "id")?, Family::Message);
    view.direction = text(item, "direction");
    view.status = text(item, "status").map(|s| normalise_status(Family::Message, &s));
    view.status_at = time(item, "updatedAt");
    view.started_at = time(item, "createdAt");
    view.user_id = text(item, "userId");
    view.phone_number_id = text(item, "phoneNumberId");
    view.conversation_id = text(item, "conversationId");
    view.text = text(item, "text");
    let from = strings(item, "from");
    let to = strings(item, "to");
    let (external, workspace) = match view.direction.as_deref() {
        Some("outgoing") => (to, from),
        _ => (from, to),
    };
    view.external_numbers = external;
    view.workspace_numbers = workspace;
    view.keep_content(full_content);
    Some(view)
}

/// The transcript of `GET /calls/{id}/transcripts` (every segment, in order).
pub fn rest_transcript(id: &str, items: &[Value]) -> Option<Activity> {
    let parts: Vec<String> = items
        .iter()
        .filter_map(|t| dialogue_text(t.get("dialogue")))
        .collect();
    (!parts.is_empty()).then(|| Activity {
        transcript: Some(parts.join("\n")),
        ..Activity::new(id, Family::Call)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_envelopes_of_a_summary_say_the_same() {
        let standard = json!({"id": "EV1", "type": "call.summary.completed", "createdAt": "2026-05-01T10:00:00Z",
            "data": {"resource": {"callId": "AC1", "processingStatus": "completed", "summary": ["a"], "nextSteps": ["b"]},
                     "context": {"contacts": {"ids": ["c1"], "lookupStatus": "matched"}}}});
        let legacy = json!({"id": "EV2", "object": "event", "type": "call.summary.completed",
            "data": {"object": {"object": "callSummary", "callId": "AC1", "summary": ["a"], "nextSteps": ["b"], "status": "completed"}}});
        let s = parse_event(standard.to_string().as_bytes(), None, false)
            .unwrap()
            .unwrap();
        let l = parse_event(legacy.to_string().as_bytes(), None, false)
            .unwrap()
            .unwrap();
        assert_eq!(s.view.summary, l.view.summary);
        assert!(s.view.summary.as_ref().unwrap().done);
        assert_eq!(s.view.contact_ids, Some(vec!["c1".to_string()]));
        assert!(l.legacy && !s.legacy);
    }

    #[test]
    fn unknown_types_are_ignored_and_broken_events_named() {
        let ringing = json!({"id": "EV1", "type": "call.ringing", "data": {}});
        assert!(
            parse_event(ringing.to_string().as_bytes(), None, false)
                .unwrap()
                .is_none()
        );
        let no_call =
            json!({"id": "EV9", "type": "call.summary.completed", "data": {"resource": {}}});
        let err = parse_event(no_call.to_string().as_bytes(), None, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "call.summary.completed event EV9 names no call or message"
        );
        let no_id = json!({"type": "call.completed", "data": {"resource": {"id": "AC1"}}});
        let ok = parse_event(no_id.to_string().as_bytes(), Some("msg_7"), false)
            .unwrap()
            .unwrap();
        assert_eq!(
            ok.event_id, "msg_7",
            "the webhook-id stands in for a missing event id"
        );
        assert!(matches!(
            parse_event(b"{", None, false),
            Err(EventError::Json(_))
        ));
    }

    #[test]
    fn content_is_dropped_before_storage_unless_full() {
        let message = json!({"id": "EV3", "type": "message.received",
            "data": {"resource": {"id": "AC9", "direction": "incoming", "text": "my card is 4111", "status": "received"},
                     "context": {"senderIdentifier": "+14155550100", "recipientIdentifiers": ["+18885550100"],
                                 "contacts": {"ids": [], "lookupStatus": "unavailable"}}}});
        let meta = parse_event(message.to_string().as_bytes(), None, false)
            .unwrap()
            .unwrap();
        assert_eq!(meta.view.text, None);
        assert_eq!(
            meta.view.contact_ids, None,
            "unavailable: unknown, not empty"
        );
        assert_eq!(meta.view.external_numbers, vec!["+14155550100"]);
        let full = parse_event(message.to_string().as_bytes(), None, true)
            .unwrap()
            .unwrap();
        assert_eq!(full.view.text.as_deref(), Some("my card is 4111"));
    }

    #[test]
    fn a_hostile_duration_is_clamped_or_refused() {
        let d = |v: Value| seconds(&json!({ "duration": v }), "duration");
        assert_eq!(d(json!(61)), Some(61));
        assert_eq!(d(json!("61.4")), Some(61));
        assert_eq!(d(json!(1e300)), Some(7 * 24 * 3600), "a week at most");
        assert_eq!(d(json!(u64::MAX)), Some(7 * 24 * 3600));
        assert_eq!(d(json!(-5)), None, "a negative duration is no duration");
        assert_eq!(d(json!("NaN")), None);
        assert_eq!(d(json!("soon")), None);
    }

    #[test]
    fn rest_participants_are_told_apart_by_actor_or_workspace_number() {
        let call = json!({"id": "AC5", "direction": "incoming", "status": "completed", "duration": 61,
            "participants": [{"phoneNumber": "+14155550100", "actorId": null},
                             {"phoneNumber": "+18885550100", "actorId": null}]});
        let view = rest_call(&call, &["+18885550100".to_string()], false).unwrap();
        assert_eq!(view.external_numbers, vec!["+14155550100"]);
        assert_eq!(view.workspace_numbers, vec!["+18885550100"]);
        assert_eq!(view.duration_s, Some(61));
        assert_eq!(view.status.as_deref(), Some("completed"));
    }
}
