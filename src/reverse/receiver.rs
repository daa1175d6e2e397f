//! The webhook receiver: `POST /webhooks/quo` (and `GET /healthz`) on `reverse.listen`.
//!
//! It verifies the signature, refuses what it must (401 bad or stale signature, 413 too large,
//! 400 malformed), stores the event in the ledger's inbox *before* answering 2xx, and wakes the
//! service, wherever the leader runs (the intake signal, see `ledger::inbox`). Applying the
//! event happens later in a cycle, so an acknowledged event survives a crash, and a redelivery
//! (same event id) is recognised and ignored.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::signature;
use crate::ledger::{Ledger, NewInboxEvent};

/// Shared state of the receiver.
#[derive(Clone)]
pub struct Receiver {
    /// Where events are stored.
    pub ledger: Ledger,
    /// The signing secret; without one every delivery is refused.
    pub secret: Option<SecretString>,
    /// Woken when a new event is stored (a leader in another process hears of it through the
    /// ledger's intake signal, see `ledger::inbox`).
    pub wake: Arc<Notify>,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Longest the body may take to arrive (a slow client gets 408, not a held connection).
    pub read_timeout: std::time::Duration,
    /// Counts the events stored (the terminal's status line shows it).
    pub received: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("secret", &self.secret.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// The routes: `POST /webhooks/quo`, `GET /healthz`.
pub fn router(receiver: Receiver) -> Router {
    webhook_routes(receiver).route("/healthz", get(|| async { "ok\n" }))
}

/// Only `POST /webhooks/quo`, for sharing a listener with the service routes.
pub fn webhook_routes(receiver: Receiver) -> Router {
    Router::new()
        .route("/webhooks/quo", post(receive))
        .with_state(Arc::new(receiver))
}

fn refuse(status: StatusCode, reason: &str) -> (StatusCode, String) {
    warn!(
        event = "webhook_rejected",
        status = status.as_u16(),
        reason,
        "webhook delivery refused"
    );
    metrics::counter!("quo_sync_webhooks_total", "outcome" => "rejected").increment(1);
    (status, format!("{reason}\n"))
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    // What the headers alone refuse is refused before the body is read.
    let Some(secret) = &receiver.secret else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "reverse.webhook_secret is not configured",
        );
    };
    if !headers.contains_key("webhook-signature") && !headers.contains_key("openphone-signature") {
        return refuse(
            StatusCode::UNAUTHORIZED,
            &signature::SignatureError::Missing.to_string(),
        );
    }
    let read = axum::body::to_bytes(body, receiver.max_body_bytes);
    let bytes = match tokio::time::timeout(receiver.read_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body larger than {} bytes", receiver.max_body_bytes),
            );
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "body not received within {}s",
                    receiver.read_timeout.as_secs_f64()
                ),
            );
        }
    };
    if let Err(error) = signature::verify(&headers, &bytes, secret, chrono::Utc::now().timestamp())
    {
        return refuse(StatusCode::UNAUTHORIZED, &error.to_string());
    }
    let event: Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("malformed JSON: {e}")),
    };
    let event_id = event["id"].as_str().map(str::to_string).or_else(|| {
        headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let (Some(event_id), Some(event_type)) = (event_id, event["type"].as_str()) else {
        return refuse(StatusCode::BAD_REQUEST, "event has no id or type");
    };
    if !event_type.starts_with("contact.") {
        debug!(
            event = "webhook_ignored",
            event_id, event_type, "not a contact event"
        );
        return (StatusCode::OK, "ignored\n".into());
    }
    let contact = event["data"]
        .get("object")
        .or_else(|| event["data"].get("resource"))
        .cloned()
        .unwrap_or(Value::Null);
    let quo_id = contact["id"].as_str();
    let payload = String::from_utf8_lossy(&bytes);
    match receiver
        .ledger
        .inbox_put(NewInboxEvent {
            event_id: &event_id,
            event_type,
            quo_id,
            payload: &payload,
        })
        .await
    {
        Ok(true) => {
            info!(
                event = "webhook_received",
                event_id, event_type, quo_id, "webhook stored"
            );
            metrics::counter!("quo_sync_webhooks_total", "outcome" => "stored").increment(1);
            receiver
                .received
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The leader may be another replica: it watches the signal. Failing to bump it only
            // delays the event there to the next tick or scan: it is stored.
            if let Err(e) = receiver.ledger.signal_intake().await {
                warn!(event = "intake_signal_failed", error = %e, "stored webhook not signalled to other replicas; a leader elsewhere applies it at its next cycle");
            }
            receiver.wake.notify_one();
            (StatusCode::OK, "stored\n".into())
        }
        Ok(false) => {
            info!(
                event = "webhook_duplicate",
                event_id, event_type, quo_id, "redelivered event ignored"
            );
            metrics::counter!("quo_sync_webhooks_total", "outcome" => "duplicate").increment(1);
            (StatusCode::OK, "duplicate\n".into())
        }
        Err(e) => {
            // Not stored: let Quo redeliver.
            warn!(event = "webhook_store_failed", event_id, error = %e, "could not store webhook");
            (StatusCode::SERVICE_UNAVAILABLE, "try again\n".into())
        }
    }
}
