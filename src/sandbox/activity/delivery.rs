//! Webhook subscriptions (`POST/GET/PATCH/DELETE /webhooks`, `whsec_` keys returned on create
//! and rotate only) and the signed delivery of activity events to them: Standard Webhooks with
//! the 2026-03-30 envelope for subscriptions, and the legacy `openphone-signature` scheme with the
//! v1 envelope for a hand-made v1 webhook (`set_legacy_activity_webhook`).
//!
//! Each delivery has its own `webhook-id` (stable across its retries) and carries the event's
//! `id` (stable across every delivery of the event). A delivery is retried on a non-2xx answer
//! or a connection error, on a compressed version of Quo's schedule (25 ms doubling, six
//! attempts), concurrently with other deliveries, so ordering is not guaranteed.
//!
//! Faults ([`ActivityFaults`], seeded per event type and activity, like the contact webhook
//! faults): a dropped event is never sent (it stays known for `redeliver`); a duplicated one is
//! sent twice, the copy under the same `webhook-id` (a retry whose answer was lost) or a new one
//! (a second delivery of the event), alternately; a reorder batch holds events and releases them
//! newest first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use super::store::Emitted;
use crate::sandbox::faults::Draw;
use crate::sandbox::state::{iso_ms, random_hex};
use crate::sandbox::webhooks::{WebhookScheme, WebhookTarget, lock, signed_post};

/// Attempts per delivery (the first plus retries).
const MAX_ATTEMPTS: u32 = 6;
/// Backoff before the first retry; doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
/// Deliveries in flight at once.
const IN_FLIGHT: usize = 8;
/// Subscriptions per workspace (quo-api-2026-03-30.md §5.1, secondary).
pub(crate) const MAX_SUBSCRIPTIONS: usize = 50;

/// Every event type a subscription may name (quo-api-2026-03-30.md §5.2).
pub(crate) const EVENT_TYPES: &[&str] = &[
    "message.received",
    "message.delivered",
    "message.failed",
    "message.undelivered",
    "call.ringing",
    "call.answered",
    "call.completed",
    "call.forwarded",
    "call.missed",
    "call.recording.completed",
    "call.summary.completed",
    "call.transcript.completed",
    "call.voicemail.completed",
    "call.menu.selected",
    "contact.updated",
    "contact.deleted",
    "task.created",
    "task.updated",
    "task.deleted",
    "task.completed",
    "task.reopened",
    "task.assigned",
    "task.unassigned",
    "task.overdue",
    "task.linked",
    "task.unlinked",
    "task.duedate.updated",
    "task.duedate.removed",
];

/// Delivery faults for activity events; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActivityFaults {
    /// Share of events never delivered (seeded per event type and activity).
    pub drop_ratio: f64,
    /// Share of events delivered twice.
    pub duplicate_ratio: f64,
    /// Hold this many events, then deliver them newest first (0 or 1: off).
    pub reorder_batch: u32,
    /// Seed of the draws.
    pub seed: u64,
}

/// How many times each activity delivery fault fired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityFaultCounters {
    /// Events never sent.
    pub dropped: u64,
    /// Events sent twice.
    pub duplicated: u64,
    /// Events released out of order by a reorder batch.
    pub reordered: u64,
}

/// One delivery attempt as the sandbox recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityDelivery {
    /// The event's id (`EV…`), the same in every delivery of the event.
    pub event_id: String,
    /// The delivery's `webhook-id` (`msg_…`), the same across its retries; empty for legacy.
    pub delivery_id: String,
    /// `call.completed`, …
    pub event_type: String,
    /// The call or message.
    pub activity_id: String,
    /// Receiver URL.
    pub url: String,
    /// Signing scheme.
    pub scheme: WebhookScheme,
    /// 1-based attempt of this delivery.
    pub attempt: u32,
    /// HTTP status, `None` on a connection error.
    pub status: Option<u16>,
    /// Connection error, if any.
    pub error: Option<String>,
    /// A copy sent by a duplicate fault or `redeliver`.
    pub copy: bool,
    /// When.
    pub at: DateTime<Utc>,
}

impl ActivityDelivery {
    /// Whether the receiver acknowledged this attempt (any 2xx).
    pub fn acknowledged(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// A subscription made through `POST /webhooks`.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub resource_ids: Option<Vec<String>>,
    pub enabled: bool,
    pub label: Option<String>,
    key: Vec<u8>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Subscription {
    /// `{"data": …}` content; the key only on create and rotate.
    pub(crate) fn render(&self, with_key: bool) -> Value {
        let mut v = json!({
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "resourceIds": self.resource_ids,
            "status": if self.enabled { "enabled" } else { "disabled" },
            "label": self.label,
            "apiVersion": super::API_VERSION,
            "createdAt": iso_ms(&self.created_at),
            "updatedAt": iso_ms(&self.updated_at),
        });
        if with_key {
            v["key"] = Value::String(format!("whsec_{}", B64.encode(&self.key)));
        }
        v
    }

    fn wants(&self, e: &Emitted) -> bool {
        // `contact.*` events are workspace-wide: the phone-number filter does not apply.
        let workspace_wide = e.event_type.starts_with("contact.");
        self.enabled
            && self.events.iter().any(|t| t == e.event_type)
            && (workspace_wide
                || self.resource_ids.as_ref().is_none_or(|ids| {
                    ids.is_empty() || ids.iter().any(|id| id == "*" || *id == e.phone_number_id)
                }))
    }
}

/// A change to a subscription (`PATCH /webhooks/{id}`); `None` leaves a field alone.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub resource_ids: Option<Option<Vec<String>>>,
    pub enabled: Option<bool>,
    pub label: Option<Option<String>>,
}

/// One queued delivery.
#[derive(Debug, Clone)]
struct Job {
    event_id: String,
    delivery_id: String,
    event_type: &'static str,
    activity_id: String,
    url: String,
    key: Vec<u8>,
    scheme: WebhookScheme,
    body: Arc<Vec<u8>>,
    copy: bool,
}

#[derive(Debug, Default)]
struct FaultState {
    spec: ActivityFaults,
    drop: Option<Draw>,
    duplicate: Option<Draw>,
    new_id: Option<Draw>,
    held: Vec<Job>,
    dropped: Vec<String>,
    counters: ActivityFaultCounters,
}

/// Subscriptions, the legacy target, the delivery queue, the event log and the delivery log.
#[derive(Debug)]
pub(crate) struct ActivityHub {
    client: reqwest::Client,
    subscriptions: Mutex<(Vec<Subscription>, u64)>,
    legacy: Mutex<Option<WebhookTarget>>,
    /// Jobs of every event, for `redeliver`.
    sent: Mutex<HashMap<String, Vec<Job>>>,
    log: Mutex<Vec<ActivityDelivery>>,
    faults: Mutex<FaultState>,
    tx: mpsc::UnboundedSender<Job>,
}

/// The receiving end of the hub's queue, for [`ActivityHub::run`].
#[derive(Debug)]
pub(crate) struct Queue(mpsc::UnboundedReceiver<Job>);

impl ActivityHub {
    /// A hub and its queue.
    pub(crate) fn new() -> (Arc<ActivityHub>, Queue) {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let hub = ActivityHub {
            client,
            subscriptions: Mutex::new((Vec::new(), 1000)),
            legacy: Mutex::new(None),
            sent: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(FaultState::default()),
            tx,
        };
        (Arc::new(hub), Queue(rx))
    }

    /// Delivers queued jobs, several at once, until the queue closes.
    pub(crate) async fn run(self: Arc<Self>, mut queue: Queue) {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        while let Some(job) = queue.0.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let hub = self.clone();
            tokio::spawn(async move {
                hub.deliver(&job).await;
                drop(permit);
            });
        }
    }

    /// Sets or removes the legacy (v1) webhook target.
    pub(crate) fn set_legacy(&self, target: Option<WebhookTarget>) {
        *lock(&self.legacy) = target;
    }

    /// Arms (or, with the default, disarms) the delivery faults; held events are released.
    pub(crate) fn set_faults(&self, spec: ActivityFaults) {
        let mut f = lock(&self.faults);
        let draw = |ratio: f64, seed: u64| (ratio > 0.0).then(|| Draw::new(ratio, seed));
        f.drop = draw(spec.drop_ratio, spec.seed);
        f.duplicate = draw(spec.duplicate_ratio, spec.seed.wrapping_add(1));
        f.new_id = Some(Draw::new(0.5, spec.seed.wrapping_add(2)));
        f.spec = spec;
        if f.spec.reorder_batch <= 1 {
            let held = std::mem::take(&mut f.held);
            self.release(&mut f, held);
        }
    }

    /// The fault counters.
    pub(crate) fn counters(&self) -> ActivityFaultCounters {
        lock(&self.faults).counters.clone()
    }

    /// Ids of the events a drop fault kept from being sent, oldest first.
    pub(crate) fn dropped(&self) -> Vec<String> {
        lock(&self.faults).dropped.clone()
    }

    /// Every delivery attempt so far.
    pub(crate) fn deliveries(&self) -> Vec<ActivityDelivery> {
        lock(&self.log).clone()
    }

    /// Queues an event for every subscription that wants it (and the legacy target when the
    /// event exists in v1); returns its id.
    pub(crate) fn emit(&self, e: Emitted) -> String {
        let event_id = format!("EV{}", random_hex(16));
        let created_at = iso_ms(&Utc::now());
        let mut jobs = Vec::new();
        let standard = json!({
            "id": event_id,
            "apiVersion": super::API_VERSION,
            "createdAt": created_at,
            "type": e.event_type,
            "data": {"resource": e.resource, "context": e.context, "links": {"quo": e.link}},
        });
        let standard = Arc::new(serde_json::to_vec(&standard).unwrap_or_default());
        for sub in lock(&self.subscriptions).0.iter().filter(|s| s.wants(&e)) {
            jobs.push(Job {
                event_id: event_id.clone(),
                delivery_id: format!("msg_{}", random_hex(12)),
                event_type: e.event_type,
                activity_id: e.activity_id.clone(),
                url: sub.url.clone(),
                key: sub.key.clone(),
                scheme: WebhookScheme::Standard,
                body: standard.clone(),
                copy: false,
            });
        }
        if let (Some(object), Some(target)) = (&e.legacy, lock(&self.legacy).clone()) {
            let legacy = json!({
                "id": event_id, "object": "event", "apiVersion": "v3", "createdAt": created_at,
                "type": e.event_type, "data": {"object": object},
            });
            jobs.push(Job {
                event_id: event_id.clone(),
                delivery_id: String::new(),
                event_type: e.event_type,
                activity_id: e.activity_id.clone(),
                url: target.url.clone(),
                key: target.secret_key.clone(),
                scheme: WebhookScheme::Legacy,
                body: Arc::new(serde_json::to_vec(&legacy).unwrap_or_default()),
                copy: false,
            });
        }
        if jobs.is_empty() {
            return event_id;
        }
        lock(&self.sent).insert(event_id.clone(), jobs.clone());
        let key = format!("{} {}", e.event_type, e.activity_id);
        let mut f = lock(&self.faults);
        if f.drop.as_mut().is_some_and(|d| d.fire_for(&key)) {
            f.counters.dropped += 1;
            f.dropped.push(event_id.clone());
            return event_id;
        }
        if f.duplicate.as_mut().is_some_and(|d| d.fire_for(&key)) {
            f.counters.duplicated += 1;
            let new_id = f.new_id.as_mut().is_some_and(|d| d.fire_for(&key));
            let copies: Vec<Job> = jobs
                .iter()
                .map(|j| Job {
                    copy: true,
                    delivery_id: if new_id && j.scheme == WebhookScheme::Standard {
                        format!("msg_{}", random_hex(12))
                    } else {
                        j.delivery_id.clone()
                    },
                    ..j.clone()
                })
                .collect();
            jobs.extend(copies);
        }
        if f.spec.reorder_batch > 1 {
            f.held.extend(jobs);
            let events = {
                let mut ids: Vec<&str> = f.held.iter().map(|j| j.event_id.as_str()).collect();
                ids.dedup();
                ids.len()
            };
            if events as u32 >= f.spec.reorder_batch {
                let held = std::mem::take(&mut f.held);
                self.release(&mut f, held);
            }
            return event_id;
        }
        for job in jobs {
            let _ = self.tx.send(job);
        }
        event_id
    }

    /// Delivers a contact event (`contact.updated`, `contact.deleted`) to the subscriptions
    /// that name it, with the contact as `data.resource`.
    pub(crate) fn emit_contact(&self, kind: &'static str, contact: &Value) {
        let id = contact["id"].as_str().unwrap_or_default().to_string();
        self.emit(Emitted {
            event_type: kind,
            activity_id: id,
            phone_number_id: String::new(),
            resource: contact.clone(),
            context: json!({"orgId": super::store::ORG_ID}),
            link: String::new(),
            legacy: None,
        });
    }

    /// Sends held jobs newest event first.
    fn release(&self, f: &mut FaultState, held: Vec<Job>) {
        if held.is_empty() {
            return;
        }
        let mut batches: Vec<Vec<Job>> = Vec::new();
        for job in held {
            match batches.last_mut() {
                Some(batch) if batch[0].event_id == job.event_id => batch.push(job),
                _ => batches.push(vec![job]),
            }
        }
        f.counters.reordered += batches.len() as u64;
        for batch in batches.into_iter().rev() {
            for job in batch {
                let _ = self.tx.send(job);
            }
        }
    }

    /// Sends event `event_id` again to everyone it went to (new attempts of the same
    /// deliveries); `false` if the event is unknown.
    pub(crate) fn redeliver(&self, event_id: &str) -> bool {
        let Some(jobs) = lock(&self.sent).get(event_id).cloned() else {
            return false;
        };
        for job in jobs {
            let _ = self.tx.send(Job { copy: true, ..job });
        }
        true
    }

    async fn deliver(&self, job: &Job) {
        let mut backoff = FIRST_BACKOFF;
        for n in 0..MAX_ATTEMPTS {
            if n > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            let now = Utc::now();
            let request = signed_post(
                &self.client,
                &job.url,
                job.scheme,
                &job.key,
                &job.delivery_id,
                &job.body,
                now,
            );
            let (status, error) = match request.send().await {
                Ok(response) => (Some(response.status().as_u16()), None),
                Err(e) => (None, Some(e.to_string())),
            };
            let delivery = {
                let mut log = lock(&self.log);
                let attempt = log
                    .iter()
                    .filter(|d| {
                        d.event_id == job.event_id
                            && d.delivery_id == job.delivery_id
                            && d.url == job.url
                    })
                    .count() as u32
                    + 1;
                let d = ActivityDelivery {
                    event_id: job.event_id.clone(),
                    delivery_id: job.delivery_id.clone(),
                    event_type: job.event_type.to_string(),
                    activity_id: job.activity_id.clone(),
                    url: job.url.clone(),
                    scheme: job.scheme,
                    attempt,
                    status,
                    error,
                    copy: job.copy,
                    at: now,
                };
                log.push(d.clone());
                d
            };
            tracing::debug!(event_id = %delivery.event_id, event_type = %delivery.event_type, attempt = delivery.attempt, status = ?delivery.status, "sandbox activity webhook delivery");
            if delivery.acknowledged() {
                return;
            }
        }
    }

    // ---- subscriptions ----

    /// Every subscription, oldest first.
    pub(crate) fn subscriptions(&self) -> Vec<Subscription> {
        lock(&self.subscriptions).0.clone()
    }

    /// One subscription.
    pub(crate) fn subscription(&self, id: &str) -> Option<Subscription> {
        lock(&self.subscriptions)
            .0
            .iter()
            .find(|s| s.id == id)
            .cloned()
    }

    /// Creates a subscription with a fresh key; `None` when the workspace has 50 already.
    pub(crate) fn subscribe(
        &self,
        url: String,
        events: Vec<String>,
        resource_ids: Option<Vec<String>>,
        enabled: bool,
        label: Option<String>,
    ) -> Option<Subscription> {
        let mut subs = lock(&self.subscriptions);
        if subs.0.len() >= MAX_SUBSCRIPTIONS {
            return None;
        }
        subs.1 += 1;
        let now = Utc::now();
        let sub = Subscription {
            id: subs.1.to_string(),
            url,
            events,
            resource_ids,
            enabled,
            label,
            key: (0..32).map(|_| rand::random::<u8>()).collect(),
            created_at: now,
            updated_at: now,
        };
        subs.0.push(sub.clone());
        Some(sub)
    }

    /// Applies a patch; `None` if unknown.
    pub(crate) fn update(&self, id: &str, patch: SubscriptionPatch) -> Option<Subscription> {
        let mut subs = lock(&self.subscriptions);
        let sub = subs.0.iter_mut().find(|s| s.id == id)?;
        if let Some(url) = patch.url {
            sub.url = url;
        }
        if let Some(events) = patch.events {
            sub.events = events;
        }
        if let Some(ids) = patch.resource_ids {
            sub.resource_ids = ids;
        }
        if let Some(enabled) = patch.enabled {
            sub.enabled = enabled;
        }
        if let Some(label) = patch.label {
            sub.label = label;
        }
        sub.updated_at = Utc::now();
        Some(sub.clone())
    }

    /// Gives a subscription a new key (the old one stops signing at once); `None` if unknown.
    pub(crate) fn rotate(&self, id: &str) -> Option<Subscription> {
        let mut subs = lock(&self.subscriptions);
        let sub = subs.0.iter_mut().find(|s| s.id == id)?;
        sub.key = (0..32).map(|_| rand::random::<u8>()).collect();
        sub.updated_at = Utc::now();
        Some(sub.clone())
    }

    /// Removes a subscription; `false` if unknown.
    pub(crate) fn unsubscribe(&self, id: &str) -> bool {
        let mut subs = lock(&self.subscriptions);
        let before = subs.0.len();
        subs.0.retain(|s| s.id != id);
        subs.0.len() != before
    }
}
