//! Rendering what the store holds in each shape the contract names: a call or message as the
//! 2026-03-30 REST API returns it, the webhook events an activity and each of its enrichments
//! raise (`data.resource` + `data.context`), and the legacy v1 `data.object` where one exists.
//! Apart from the store because the shapes follow the contract, the store the harness.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::*;
use crate::sandbox::state::iso_ms;

pub(super) fn opt_time(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(iso_ms(&t))).unwrap_or(Value::Null)
}

pub(super) fn summary_lines(id: &str) -> (Vec<String>, Vec<String>) {
    (
        vec![
            format!("Caller asked about the renewal quoted on call {id}."),
            "Agreed to send the updated pricing sheet.".to_string(),
        ],
        vec!["Email the pricing sheet".to_string()],
    )
}

pub(super) fn transcript_dialogue(call: &StoredCall) -> Vec<Value> {
    vec![
        json!({"content": "Hello, thanks for calling.", "start": 0.0, "end": 2.1,
               "identifier": call.workspace_number, "userId": call.user_id}),
        json!({"content": format!("Hi, this is about my renewal ({}).", call.id), "start": 2.4, "end": 5.0,
               "identifier": call.external, "userId": null}),
    ]
}

impl StoredCall {
    pub(super) fn answered(&self) -> bool {
        self.outcome == CallOutcome::Answered
    }

    pub(super) fn completed_at(&self) -> DateTime<Utc> {
        self.created_at + chrono::Duration::seconds(self.duration as i64 + 5)
    }

    pub(super) fn sender_and_recipient(&self) -> (&str, &str) {
        match self.direction {
            Direction::Incoming => (&self.external, &self.workspace_number),
            Direction::Outgoing => (&self.workspace_number, &self.external),
        }
    }

    pub(super) fn rest_status(&self) -> &'static str {
        match (self.outcome, self.direction) {
            (CallOutcome::Answered, _) => "completed",
            (_, Direction::Incoming) => "missed",
            (_, Direction::Outgoing) => "no-answer",
        }
    }

    pub(super) fn event_status(&self) -> &'static str {
        if self.answered() {
            "answered"
        } else {
            "unanswered"
        }
    }

    pub(super) fn link(&self) -> String {
        format!(
            "https://my.quo.test/inbox/{}/c/{}?callId={}",
            self.phone_number_id, self.conversation_id, self.id
        )
    }

    pub(super) fn summary_value(&self) -> Value {
        if !self.answered() {
            return json!({"status": "absent", "type": "human", "summary": [], "nextSteps": [], "jobs": [], "title": null});
        }
        if !self.summary_ready {
            return json!({"status": "in-progress", "type": "human", "summary": [], "nextSteps": [], "jobs": [], "title": null});
        }
        let (summary, next) = summary_lines(&self.id);
        json!({"status": "completed", "type": "human", "summary": summary, "nextSteps": next, "jobs": [], "title": "Renewal follow-up"})
    }

    pub(super) fn voicemail_value(&self) -> Value {
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

    pub(super) fn context(&self) -> Value {
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
    pub(super) fn legacy_object(&self) -> Value {
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

    pub(super) fn emitted(
        &self,
        event_type: &'static str,
        resource: Value,
        legacy: Option<Value>,
    ) -> Emitted {
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
    pub(super) fn ended_events(&self) -> Vec<Emitted> {
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

    pub(super) fn enrichment_event(&self, what: Enrichment) -> Option<Emitted> {
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
    pub(super) fn sender_and_recipient(&self) -> (String, Vec<String>) {
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

    pub(super) fn event(&self, event_type: &'static str) -> Emitted {
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
