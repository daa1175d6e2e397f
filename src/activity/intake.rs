//! `POST /webhooks/quo/activity`: Quo's call and message webhooks, in both signing schemes and
//! both envelopes, stored in the ledger's activity inbox before they are acknowledged.
//!
//! A delivery is verified against every key that may sign it (the keys of the webhooks
//! quo-sync registered, kept in the ledger and re-read every few seconds so a rotation takes
//! effect, and `activity.webhook_secrets` for webhooks made by hand), read into a view with
//! content dropped unless `activity.content = "full"`, and stored under its event id and its
//! `webhook-id`: a redelivery under either is acknowledged and ignored. Every replica serves
//! this route on its unfenced ledger; only the leader's pipeline applies what was stored.
//!
//! Log lines name event ids, types and activity ids, never a body: a body may hold message
//! text or a transcript.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use secrecy::SecretString;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::observe::parse_event;
use crate::ledger::{Ledger, NewActivityEvent};
use crate::reverse::signature::{self, SignatureError};

/// The route's path.
pub const PATH: &str = "/webhooks/quo/activity";
/// How long the registered keys are trusted before they are read from the ledger again.
const KEYS_TTL: Duration = Duration::from_secs(5);

/// Woken when a delivery is stored: the pipeline of this process starts a pass at once.
static WAKE: LazyLock<Arc<Notify>> = LazyLock::new(|| Arc::new(Notify::new()));

/// The process's activity wake-up (the pipeline waits on it).
pub fn wake() -> Arc<Notify> {
    WAKE.clone()
}

/// The receiver's shared state.
#[derive(Clone)]
pub struct ActivityReceiver {
    /// Where deliveries are stored (a replica's unfenced ledger).
    pub ledger: Ledger,
    /// `activity.webhook_secrets`.
    pub secrets: Vec<SecretString>,
    /// Keep content (`activity.content = "full"`).
    pub full_content: bool,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Longest a body may take to arrive.
    pub read_timeout: Duration,
    registered: Arc<Mutex<(Vec<SecretString>, Option<Instant>)>>,
}

impl std::fmt::Debug for ActivityReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityReceiver")
            .field("secrets", &format!("[{} REDACTED]", self.secrets.len()))
            .finish()
    }
}

impl ActivityReceiver {
    /// A receiver storing into `ledger`.
    pub fn new(
        ledger: Ledger,
        secrets: Vec<SecretString>,
        full_content: bool,
        max_body_bytes: usize,
        read_timeout: Duration,
    ) -> Self {
        Self {
            ledger,
            secrets,
            full_content,
            max_body_bytes,
            read_timeout,
            registered: Arc::default(),
        }
    }

    /// The route.
    pub fn routes(self) -> Router {
        Router::new()
            .route(PATH, post(receive))
            .with_state(Arc::new(self))
    }

    /// Every key that may sign a delivery: registered ones (cached a few seconds), then
    /// configured ones.
    async fn keys(&self) -> Vec<SecretString> {
        let cached = {
            let cache = self.registered.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .1
                .filter(|at| at.elapsed() < KEYS_TTL)
                .map(|_| cache.0.clone())
        };
        let registered = match cached {
            Some(keys) => keys,
            None => {
                let keys: Vec<SecretString> = match self.ledger.webhook_registrations().await {
                    Ok(rows) => rows
                        .into_iter()
                        .map(|r| SecretString::from(r.signing_key))
                        .collect(),
                    Err(e) => {
                        warn!(event = "activity_keys_unreadable", error = %e, "could not read the registered webhook keys");
                        Vec::new()
                    }
                };
                *self.registered.lock().unwrap_or_else(|e| e.into_inner()) =
                    (keys.clone(), Some(Instant::now()));
                keys
            }
        };
        registered
            .into_iter()
            .chain(self.secrets.iter().cloned())
            .collect()
    }
}

fn refuse(status: StatusCode, reason: &str) -> (StatusCode, String) {
    warn!(
        event = "activity_webhook_rejected",
        status = status.as_u16(),
        reason,
        "activity webhook delivery refused"
    );
    metrics::counter!("quo_sync_activity_webhooks_total", "outcome" => "rejected").increment(1);
    (status, format!("{reason}\n"))
}

/// Verifies against each key; the most telling refusal when none matches.
fn verify(headers: &HeaderMap, body: &[u8], keys: &[SecretString]) -> Result<(), SignatureError> {
    let now = chrono::Utc::now().timestamp();
    let mut worst = SignatureError::Missing;
    for key in keys {
        match signature::verify(headers, body, key, now) {
            Ok(()) => return Ok(()),
            Err(
                e @ (SignatureError::Missing
                | SignatureError::Malformed(_)
                | SignatureError::Stale { .. }),
            ) => {
                return Err(e);
            }
            Err(e) => worst = e,
        }
    }
    Err(worst)
}

async fn receive(
    State(receiver): State<Arc<ActivityReceiver>>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    let read = axum::body::to_bytes(body, receiver.max_body_bytes);
    let bytes = match tokio::time::timeout(receiver.read_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body larger than {} bytes", receiver.max_body_bytes),
            );
        }
        Err(_) => return refuse(StatusCode::REQUEST_TIMEOUT, "body not received in time"),
    };
    let keys = receiver.keys().await;
    if keys.is_empty() {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "no signing key: register the webhook (reverse.public_url) or set activity.webhook_secrets",
        );
    }
    if let Err(error) = verify(&headers, &bytes, &keys) {
        return refuse(StatusCode::UNAUTHORIZED, &error.to_string());
    }
    let delivery_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let event = match parse_event(&bytes, delivery_id.as_deref(), receiver.full_content) {
        Ok(Some(event)) => event,
        Ok(None) => {
            debug!(event = "activity_webhook_ignored", "not an activity event");
            metrics::counter!("quo_sync_activity_webhooks_total", "outcome" => "ignored")
                .increment(1);
            return (StatusCode::OK, "ignored\n".into());
        }
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let observation = serde_json::to_string(&event.view).unwrap_or_default();
    let stored = receiver
        .ledger
        .activity_inbox_put(NewActivityEvent {
            event_id: &event.event_id,
            delivery_id: delivery_id.as_deref(),
            event_type: &event.event_type,
            activity_id: &event.view.id,
            observation: &observation,
        })
        .await;
    match stored {
        Ok(true) => {
            info!(event = "activity_webhook_received", event_id = %event.event_id, event_type = %event.event_type, activity_id = %event.view.id, legacy = event.legacy, "activity webhook stored");
            metrics::counter!("quo_sync_activity_webhooks_total", "outcome" => "stored")
                .increment(1);
            WAKE.notify_one();
            (StatusCode::OK, "stored\n".into())
        }
        Ok(false) => {
            info!(event = "activity_webhook_duplicate", event_id = %event.event_id, event_type = %event.event_type, activity_id = %event.view.id, "redelivered activity event ignored");
            metrics::counter!("quo_sync_activity_webhooks_total", "outcome" => "duplicate")
                .increment(1);
            (StatusCode::OK, "duplicate\n".into())
        }
        Err(e) => {
            warn!(event = "activity_webhook_store_failed", event_id = %event.event_id, error = %e, "could not store an activity webhook; Quo will redeliver");
            (StatusCode::SERVICE_UNAVAILABLE, "try again\n".into())
        }
    }
}
