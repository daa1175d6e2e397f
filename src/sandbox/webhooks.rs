//! Outgoing webhooks: `contact.updated` / `contact.deleted` events, signed the way Quo signs them.
//!
//! Events are queued by writes (API writes when enabled, app edits always) and delivered in order
//! by one background task, retried a few times on a non-2xx answer or a connection error. Every
//! attempt is recorded so tests can assert on what the receiver acknowledged. An event keeps its
//! id and body for life; a redelivery sends the same bytes under a fresh timestamp and signature,
//! which is what lets a receiver prove it dedupes on the event id. The two signing functions are
//! public so receiver tests can forge requests, valid or not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::faults::{Draw, Fault, FaultCounters, Pick};
use super::state::{iso_ms, random_hex};

/// Attempts per delivery (the first plus retries).
const MAX_ATTEMPTS: u32 = 4;
/// Backoff before the first retry; doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How deliveries are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookScheme {
    /// `openphone-signature: hmac;1;<ts ms>;<base64>`, envelope `data.object`.
    Legacy,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`,
    /// envelope `data.resource`.
    Standard,
}

/// Where and how webhooks are sent.
#[derive(Clone)]
pub struct WebhookTarget {
    /// Receiver URL.
    pub url: String,
    /// Raw HMAC key. Users configure it as `base64(secret_key)` (legacy) or
    /// `"whsec_" + base64(secret_key)` (Standard Webhooks).
    pub secret_key: Vec<u8>,
    /// Signing scheme and envelope.
    pub scheme: WebhookScheme,
}

impl WebhookTarget {
    /// The signing secret as a Quo user would paste it into configuration.
    pub fn configured_secret(&self) -> String {
        match self.scheme {
            WebhookScheme::Legacy => B64.encode(&self.secret_key),
            WebhookScheme::Standard => format!("whsec_{}", B64.encode(&self.secret_key)),
        }
    }
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("secret_key", &"<redacted>")
            .field("scheme", &self.scheme)
            .finish()
    }
}

/// One delivery attempt as the sandbox recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Event id (`EV…`), the same across attempts and redeliveries.
    pub event_id: String,
    /// `contact.updated` or `contact.deleted`.
    pub event_type: String,
    /// The contact the event is about.
    pub contact_id: String,
    /// Receiver URL.
    pub url: String,
    /// Signing scheme used.
    pub scheme: WebhookScheme,
    /// 1-based attempt number for this event (continues across redeliveries).
    pub attempt: u32,
    /// HTTP status received, `None` on a connection error.
    pub status: Option<u16>,
    /// Connection error, if any.
    pub error: Option<String>,
    /// Sent by `redeliver`.
    pub redelivery: bool,
    /// When the attempt was made.
    pub at: DateTime<Utc>,
}

impl Delivery {
    /// Whether the receiver acknowledged this attempt (any 2xx).
    pub fn acknowledged(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// `openphone-signature` header value: `hmac;1;<ts_ms>;<base64(HMAC-SHA256(key, "<ts_ms>.<body>"))>`.
pub fn sign_legacy(key: &[u8], ts_ms: i64, body: &[u8]) -> String {
    let mut msg = format!("{ts_ms}.").into_bytes();
    msg.extend_from_slice(body);
    format!("hmac;1;{ts_ms};{}", hmac_b64(key, &msg))
}

/// `webhook-signature` header value: `v1,<base64(HMAC-SHA256(key, "<id>.<ts_s>.<body>"))>`.
pub fn sign_standard(key: &[u8], id: &str, ts_s: i64, body: &[u8]) -> String {
    let mut msg = format!("{id}.{ts_s}.").into_bytes();
    msg.extend_from_slice(body);
    format!("v1,{}", hmac_b64(key, &msg))
}

/// A POST of `body` to `url`, signed with `key` as `scheme` signs: `openphone-signature`, or
/// `webhook-id` (`delivery_id`), `webhook-timestamp` and `webhook-signature`.
pub(crate) fn signed_post(
    client: &reqwest::Client,
    url: &str,
    scheme: WebhookScheme,
    key: &[u8],
    delivery_id: &str,
    body: &[u8],
    now: DateTime<Utc>,
) -> reqwest::RequestBuilder {
    let req = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "quo-sandbox-webhooks/1");
    let req = match scheme {
        WebhookScheme::Legacy => req.header(
            "openphone-signature",
            sign_legacy(key, now.timestamp_millis(), body),
        ),
        WebhookScheme::Standard => req
            .header("webhook-id", delivery_id)
            .header("webhook-timestamp", now.timestamp().to_string())
            .header(
                "webhook-signature",
                sign_standard(key, delivery_id, now.timestamp(), body),
            ),
    };
    req.body(body.to_vec())
}

fn hmac_b64(key: &[u8], msg: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(msg);
    B64.encode(mac.finalize().into_bytes())
}

/// An emitted event, kept for redelivery.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    id: String,
    kind: &'static str,
    created_at: String,
    contact_id: String,
    contact: Value,
}

impl Event {
    /// The request body for `scheme`: the same bytes every time.
    fn body(&self, scheme: WebhookScheme) -> Vec<u8> {
        let envelope = match scheme {
            WebhookScheme::Legacy => json!({
                "id": self.id,
                "object": "event",
                "apiVersion": "v4",
                "createdAt": self.created_at,
                "type": self.kind,
                "data": {"object": self.contact},
            }),
            WebhookScheme::Standard => json!({
                "id": self.id,
                "apiVersion": "v4",
                "createdAt": self.created_at,
                "type": self.kind,
                "data": {"resource": self.contact, "context": {}},
            }),
        };
        serde_json::to_vec(&envelope).unwrap_or_default()
    }
}

/// A queued delivery: the event and the target as configured when it was emitted.
#[derive(Debug)]
pub(crate) struct Job {
    event_id: String,
    target: WebhookTarget,
    /// A second copy sent by a duplicate fault (logged as a redelivery).
    copy: bool,
}

/// A count or seeded-ratio selector of events, armed.
#[derive(Debug)]
enum Selector {
    Next(u32),
    Ratio(Draw),
}

impl Selector {
    fn new(p: Pick) -> Option<Selector> {
        match p {
            Pick::Next(0) => None,
            Pick::Next(n) => Some(Selector::Next(n)),
            Pick::Ratio { ratio, seed } => Some(Selector::Ratio(Draw::new(ratio, seed))),
        }
    }

    fn view(&self) -> Value {
        match self {
            Selector::Next(n) => json!({"count": n}),
            Selector::Ratio(d) => d.view(),
        }
    }
}

/// Takes one pick from an armed selector for an event keyed `key`, disarming an exhausted count.
fn take(sel: &mut Option<Selector>, key: &str) -> bool {
    let hit = match sel {
        None => false,
        Some(Selector::Next(n)) => {
            *n -= 1;
            true
        }
        Some(Selector::Ratio(d)) => d.fire_for(key),
    };
    if matches!(sel, Some(Selector::Next(0))) {
        *sel = None;
    }
    hit
}

/// Armed webhook delivery faults and their counters.
#[derive(Debug, Default)]
struct WebhookFaults {
    drop: Option<Selector>,
    duplicate: Option<Selector>,
    /// Batch size to reorder, and the jobs held so far.
    reorder: Option<(u32, Vec<Job>)>,
    /// Ids of the events never sent, oldest first.
    dropped_ids: Vec<String>,
    dropped: u64,
    duplicated: u64,
    reordered: u64,
}

/// The webhook side of the sandbox: emitted events, the delivery queue and the delivery log.
#[derive(Debug)]
pub(crate) struct Hub {
    client: reqwest::Client,
    events: Mutex<HashMap<String, Event>>,
    deliveries: Mutex<Vec<Delivery>>,
    faults: Mutex<WebhookFaults>,
    tx: mpsc::UnboundedSender<Job>,
}

impl Hub {
    /// A hub and the receiving end of its queue (to hand to [`Hub::run`]).
    pub(crate) fn new() -> (Arc<Hub>, mpsc::UnboundedReceiver<Job>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let hub = Hub {
            client,
            events: Mutex::new(HashMap::new()),
            deliveries: Mutex::new(Vec::new()),
            faults: Mutex::new(WebhookFaults::default()),
            tx,
        };
        (Arc::new(hub), rx)
    }

    /// Delivers queued events in order until the queue closes.
    pub(crate) async fn run(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Job>) {
        while let Some(job) = rx.recv().await {
            self.deliver(&job.event_id, &job.target, job.copy).await;
        }
    }

    /// Records a new event about `contact` and queues its delivery to `target`.
    pub(crate) fn emit(
        &self,
        target: &WebhookTarget,
        kind: &'static str,
        contact: Value,
    ) -> String {
        let id = format!("EV{}", random_hex(16));
        let event = Event {
            id: id.clone(),
            kind,
            created_at: iso_ms(&Utc::now()),
            contact_id: contact
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            contact,
        };
        // Ratio faults draw per (event type, contact externalId) and occurrence: reproducible
        // whatever the interleaving of writes to different contacts.
        let key = format!(
            "{kind} {}",
            event.contact["externalId"]
                .as_str()
                .unwrap_or(&event.contact_id)
        );
        lock(&self.events).insert(id.clone(), event);
        let job = |copy| Job {
            event_id: id.clone(),
            target: target.clone(),
            copy,
        };
        let mut f = lock(&self.faults);
        if take(&mut f.drop, &key) {
            f.dropped += 1;
            f.dropped_ids.push(id.clone());
            tracing::debug!(event_id = %id, "sandbox webhook dropped by fault");
            return id;
        }
        let mut jobs = vec![job(false)];
        if take(&mut f.duplicate, &key) {
            f.duplicated += 1;
            jobs.push(job(true));
        }
        let release = match &mut f.reorder {
            Some((size, held)) => {
                held.extend(jobs);
                let events = held.iter().filter(|j| !j.copy).count() as u32;
                (events >= *size).then(|| std::mem::take(held))
            }
            None => {
                for j in jobs {
                    let _ = self.tx.send(j);
                }
                return id;
            }
        };
        if let Some(held) = release {
            f.reorder = None;
            self.release(&mut f, held);
        }
        id
    }

    /// Sends held jobs newest event first (a duplicate stays right after its original).
    fn release(&self, f: &mut WebhookFaults, held: Vec<Job>) {
        let mut batches: Vec<Vec<Job>> = Vec::new();
        for j in held {
            match batches.last_mut() {
                Some(b) if j.copy => b.push(j),
                _ => batches.push(vec![j]),
            }
        }
        f.reordered += batches.len() as u64;
        for b in batches.into_iter().rev() {
            for j in b {
                let _ = self.tx.send(j);
            }
        }
    }

    /// Arms a webhook fault (other faults are ignored).
    pub(crate) fn arm(&self, fault: Fault) {
        let mut f = lock(&self.faults);
        match fault {
            Fault::WebhookDrop(p) => f.drop = Selector::new(p),
            Fault::WebhookDuplicate(p) => f.duplicate = Selector::new(p),
            Fault::WebhookReorder { count } if count > 1 => {
                let held = f.reorder.take().map(|(_, h)| h).unwrap_or_default();
                f.reorder = Some((count, held));
            }
            _ => {}
        }
    }

    /// Disarms every webhook fault; held events are released (newest first).
    pub(crate) fn clear_faults(&self) {
        let mut f = lock(&self.faults);
        f.drop = None;
        f.duplicate = None;
        if let Some((_, held)) = f.reorder.take() {
            self.release(&mut f, held);
        }
    }

    /// What is armed, for `GET /_sandbox/faults`.
    pub(crate) fn faults_view(&self) -> Value {
        let f = lock(&self.faults);
        json!({
            "drop": f.drop.as_ref().map(Selector::view),
            "duplicate": f.duplicate.as_ref().map(Selector::view),
            "reorder": f.reorder.as_ref().map(|(n, held)| json!({"count": n, "held": held.len()})),
            "dropped_event_ids": f.dropped_ids,
        })
    }

    /// Ids of the events a drop fault kept from being sent, oldest first.
    pub(crate) fn dropped_ids(&self) -> Vec<String> {
        lock(&self.faults).dropped_ids.clone()
    }

    /// Copies the webhook fault counters into `c`.
    pub(crate) fn fold_counters(&self, c: &mut FaultCounters) {
        let f = lock(&self.faults);
        c.webhooks_dropped = f.dropped;
        c.webhooks_duplicated = f.duplicated;
        c.webhooks_reordered = f.reordered;
    }

    /// Zeroes the webhook fault counters.
    pub(crate) fn reset_counters(&self) {
        let mut f = lock(&self.faults);
        f.dropped = 0;
        f.duplicated = 0;
        f.reordered = 0;
    }

    /// Every attempt so far.
    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }

    /// Sends event `event_id` to `target`, retrying; `false` if unknown or never acknowledged.
    pub(crate) async fn deliver(
        &self,
        event_id: &str,
        target: &WebhookTarget,
        redelivery: bool,
    ) -> bool {
        let Some(event) = lock(&self.events).get(event_id).cloned() else {
            return false;
        };
        let body = event.body(target.scheme);
        let mut backoff = FIRST_BACKOFF;
        for n in 0..MAX_ATTEMPTS {
            if n > 0 {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            let now = Utc::now();
            let req = signed_post(
                &self.client,
                &target.url,
                target.scheme,
                &target.secret_key,
                &event.id,
                &body,
                now,
            );
            let result = req.send().await;
            let (status, error) = match result {
                Ok(resp) => (Some(resp.status().as_u16()), None),
                Err(e) => (None, Some(e.to_string())),
            };
            let delivery = {
                let mut log = lock(&self.deliveries);
                let attempt = log.iter().filter(|d| d.event_id == event.id).count() as u32 + 1;
                let d = Delivery {
                    event_id: event.id.clone(),
                    event_type: event.kind.to_string(),
                    contact_id: event.contact_id.clone(),
                    url: target.url.clone(),
                    scheme: target.scheme,
                    attempt,
                    status,
                    error,
                    redelivery,
                    at: now,
                };
                log.push(d.clone());
                d
            };
            tracing::debug!(
                event_id = %delivery.event_id,
                event_type = %delivery.event_type,
                attempt = delivery.attempt,
                status = ?delivery.status,
                "sandbox webhook delivery"
            );
            if delivery.acknowledged() {
                return true;
            }
        }
        false
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_have_the_documented_shape() {
        let legacy = sign_legacy(b"key", 1_700_000_000_000, b"{}");
        assert!(legacy.starts_with("hmac;1;1700000000000;"));
        let std = sign_standard(b"key", "EV1", 1_700_000_000, b"{}");
        assert!(std.starts_with("v1,"));
        assert_ne!(
            sign_standard(b"key", "EV1", 1_700_000_000, b"{}"),
            sign_standard(b"key", "EV2", 1_700_000_000, b"{}")
        );
    }

    #[test]
    fn configured_secrets() {
        let mut t = WebhookTarget {
            url: "http://x".into(),
            secret_key: b"abc".to_vec(),
            scheme: WebhookScheme::Legacy,
        };
        assert_eq!(t.configured_secret(), "YWJj");
        t.scheme = WebhookScheme::Standard;
        assert_eq!(t.configured_secret(), "whsec_YWJj");
        assert!(!format!("{t:?}").contains("abc"));
    }
}
