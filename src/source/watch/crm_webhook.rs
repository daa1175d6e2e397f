//! `POST /webhooks/crm`: a REST CRM's change notice, authenticated by HMAC-SHA256 with
//! `source.rest.webhook.secret` (`<signature_header>: sha256=<hex>`), stored in the ledger
//! before it is answered and signalled to the leader (`ledger::inbox`): a standby answers
//! deliveries too, and the leader is another process.
//!
//! A notice is hostile until checked. What the headers alone can refuse is refused before a byte
//! of the body is read (no signature, a malformed one, a missing or stale timestamp, a declared
//! length over the limit), so an unsigned sender costs one header parse; a body that arrives too
//! slowly is cut off by the listener (408). With `webhook.timestamp_header`, the signature
//! covers `<timestamp>.<body>`, a time more than five minutes away is refused, and a delivery
//! already stored (same timestamp, same body) is acknowledged without effect: a captured notice
//! cannot be replayed. Without it, the body alone is signed and a replay is indistinguishable
//! from the CRM sending the same notice again.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::ledger::Ledger;
use crate::source::Source;
use crate::source::rest::{NoticeIds, WebhookSettings};

/// How far a signed timestamp may be from now, in seconds.
const TIMESTAMP_WINDOW_SECONDS: i64 = 5 * 60;

/// What the route's handler shares.
pub(super) struct WebhookState {
    pub(super) source: Arc<Source>,
    /// Where notices are stored (the base ledger: a standby stores them too).
    pub(super) ledger: Ledger,
    pub(super) wake: Arc<Notify>,
}

/// The handler: 202 for a stored notice, 200 for a delivery already stored, 401 for a bad or
/// missing signature or timestamp, 413 above the size limit, 503 when the ledger cannot store
/// it (the CRM sends it again). Nothing is read from the CRM here.
pub(super) async fn receive(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Body,
) -> StatusCode {
    let Source::Rest(rest) = state.source.as_ref() else {
        return StatusCode::NOT_FOUND;
    };
    let Some(settings) = rest.webhook() else {
        return StatusCode::NOT_FOUND;
    };
    // Refused on the headers alone, before the body is read.
    let Some(signature) = signature(&headers, settings) else {
        return rejected(StatusCode::UNAUTHORIZED, "missing or malformed signature");
    };
    let timestamp = match &settings.timestamp_header {
        None => None,
        Some(name) => match timestamp(&headers, name, chrono::Utc::now().timestamp()) {
            Ok(text) => Some(text),
            Err(reason) => return rejected(StatusCode::UNAUTHORIZED, reason),
        },
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > settings.max_body_bytes) {
        return rejected(StatusCode::PAYLOAD_TOO_LARGE, "body over max_body_bytes");
    }
    let Ok(body) = axum::body::to_bytes(body, settings.max_body_bytes).await else {
        return rejected(StatusCode::PAYLOAD_TOO_LARGE, "body over max_body_bytes");
    };
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(settings.secret.expose_secret().as_bytes())
            .expect("HMAC takes any key length");
    if let Some(timestamp) = &timestamp {
        mac.update(timestamp.as_bytes());
        mac.update(b".");
    }
    mac.update(&body);
    if mac.verify_slice(&signature).is_err() {
        // Constant time (`verify_slice`).
        return rejected(StatusCode::UNAUTHORIZED, "signature does not match");
    }
    // A delivery is its signed time and body: the same twice is a replay (or a redelivery).
    let delivery = timestamp.map(|timestamp| {
        let mut digest = Sha256::new();
        digest.update(timestamp.as_bytes());
        digest.update(b".");
        digest.update(&body);
        digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    // With `ids_pointer`, the next read fetches just the named records.
    let (kind, ids) = rest.notice_ids(&body);
    let (read, count) = match kind {
        NoticeIds::Named(n) => ("named", n),
        NoticeIds::None | NoticeIds::Refused => ("list", 0),
    };
    match state
        .ledger
        .crm_notice_put(ids.as_deref(), delivery.as_deref())
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(
                event = "crm_webhook_duplicate",
                "CRM webhook delivery already received (a replay or a redelivery); nothing to do"
            );
            metrics::counter!("quo_sync_crm_webhooks_total", "outcome" => "duplicate").increment(1);
            return StatusCode::OK;
        }
        Err(e) => {
            tracing::warn!(event = "crm_webhook_store_failed", error = %e, "CRM webhook not stored; answered 503 so the CRM sends it again");
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    metrics::counter!("quo_sync_crm_webhooks_total", "outcome" => "accepted").increment(1);
    // The leader may be another replica: it watches the signal.
    if let Err(e) = state.ledger.signal_intake().await {
        tracing::warn!(event = "intake_signal_failed", error = %e, "stored CRM notice not signalled to other replicas; a leader elsewhere reads it at its next cycle");
    }
    tracing::info!(
        event = "crm_change_detected",
        via = "webhook",
        bytes = body.len(),
        ids = count,
        read,
        "CRM webhook stored; starting a cycle"
    );
    state.wake.notify_one();
    StatusCode::ACCEPTED
}

fn rejected(status: StatusCode, reason: &str) -> StatusCode {
    tracing::warn!(
        event = "crm_webhook_rejected",
        status = status.as_u16(),
        reason,
        "CRM webhook refused; ignored"
    );
    metrics::counter!("quo_sync_crm_webhooks_total", "outcome" => "rejected").increment(1);
    status
}

/// The signature bytes of `<signature_header>: sha256=<hex>`.
fn signature(headers: &HeaderMap, settings: &WebhookSettings) -> Option<Vec<u8>> {
    headers
        .get(settings.signature_header.as_str())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("sha256="))
        .and_then(decode_hex)
        .filter(|bytes| bytes.len() == 32)
}

/// The timestamp header's text, when it is a time within the window of `now` (Unix seconds;
/// a value past 10^11 is read as milliseconds).
fn timestamp(headers: &HeaderMap, name: &str, now: i64) -> Result<String, &'static str> {
    let text = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or("missing timestamp")?;
    let raw: i64 = text.parse().map_err(|_| "malformed timestamp")?;
    let seconds = if raw > 100_000_000_000 {
        raw / 1000
    } else {
        raw
    };
    if now.abs_diff(seconds) > TIMESTAMP_WINDOW_SECONDS.unsigned_abs() {
        return Err("timestamp more than five minutes from now");
    }
    Ok(text.to_string())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_decodes_or_refuses() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("abc"), None);
    }

    #[test]
    fn timestamps_outside_five_minutes_are_refused() {
        let mut headers = HeaderMap::new();
        let now = 1_800_000_000;
        assert_eq!(timestamp(&headers, "x-ts", now), Err("missing timestamp"));
        for (value, ok) in [
            ("1800000000", true),
            ("1800000300", true),
            ("1799999699", false),
            ("1800000000123", true),
            ("soon", false),
        ] {
            headers.insert("x-ts", value.parse().unwrap());
            assert_eq!(timestamp(&headers, "x-ts", now).is_ok(), ok, "{value}");
        }
    }
}
