//! Webhook signature verification for both schemes Quo uses (quo-api.md, "Webhooks"):
//! the legacy `openphone-signature: hmac;1;<ms>;<base64>` header over `<ts>.<body>`, and
//! Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> …`) over
//! `<id>.<ts>.<body>`. The scheme is told by the headers; comparison is constant time; timestamps
//! more than five minutes away from now are refused so a captured delivery cannot be replayed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use secrecy::SecretString;
use sha2::Sha256;

/// How far a delivery's timestamp may be from now.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

/// Why a delivery was refused. The messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Neither scheme's headers are present.
    #[error("no signature headers (openphone-signature or webhook-signature)")]
    Missing,
    /// A header is not in the scheme's format.
    #[error("malformed {0} header")]
    Malformed(&'static str),
    /// The timestamp is more than five minutes from now.
    #[error("timestamp {timestamp} is {skew_seconds}s away from now (limit 300s)")]
    Stale {
        /// The delivery's timestamp in seconds.
        timestamp: i64,
        /// Its distance from now.
        skew_seconds: i64,
    },
    /// No signature matched.
    #[error("signature does not match")]
    Mismatch,
    /// The configured secret is not valid base64.
    #[error("reverse.webhook_secret is not a base64 key (legacy) or a whsec_ key")]
    BadSecret,
}

/// The signing key bytes of a configured secret (`whsec_<base64>` or plain base64).
fn key_bytes(secret: &SecretString) -> Result<Vec<u8>, SignatureError> {
    crate::config::webhook_signing_key(secret).ok_or(SignatureError::BadSecret)
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length")
}

fn check_time(timestamp_seconds: i64, now_seconds: i64) -> Result<(), SignatureError> {
    let skew = (now_seconds - timestamp_seconds).abs();
    if skew > TOLERANCE_SECONDS {
        return Err(SignatureError::Stale {
            timestamp: timestamp_seconds,
            skew_seconds: skew,
        });
    }
    Ok(())
}

/// Verifies a delivery against `secret` at time `now_seconds` (unix seconds).
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secret: &SecretString,
    now_seconds: i64,
) -> Result<(), SignatureError> {
    let key = key_bytes(secret)?;
    if let Some(value) = headers.get("webhook-signature") {
        let signatures = value
            .to_str()
            .map_err(|_| SignatureError::Malformed("webhook-signature"))?;
        let id = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .ok_or(SignatureError::Malformed("webhook-id"))?;
        let timestamp: i64 = headers
            .get("webhook-timestamp")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .ok_or(SignatureError::Malformed("webhook-timestamp"))?;
        check_time(timestamp, now_seconds)?;
        let mut signed = Vec::with_capacity(id.len() + body.len() + 24);
        signed.extend_from_slice(format!("{id}.{timestamp}.").as_bytes());
        signed.extend_from_slice(body);
        for entry in signatures.split_whitespace() {
            let Some(encoded) = entry.strip_prefix("v1,") else {
                continue;
            };
            let Ok(candidate) = B64.decode(encoded) else {
                continue;
            };
            let mut check = mac(&key);
            check.update(&signed);
            if check.verify_slice(&candidate).is_ok() {
                return Ok(());
            }
        }
        return Err(SignatureError::Mismatch);
    }
    if let Some(value) = headers.get("openphone-signature") {
        let text = value
            .to_str()
            .map_err(|_| SignatureError::Malformed("openphone-signature"))?;
        let parts: Vec<&str> = text.split(';').collect();
        let [scheme, version, timestamp, encoded] = parts.as_slice() else {
            return Err(SignatureError::Malformed("openphone-signature"));
        };
        if *scheme != "hmac" || *version != "1" {
            return Err(SignatureError::Malformed("openphone-signature"));
        }
        let raw_ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::Malformed("openphone-signature"))?;
        // The documented example is 13 digits (milliseconds); accept seconds too.
        let seconds = if raw_ts > 100_000_000_000 {
            raw_ts / 1000
        } else {
            raw_ts
        };
        check_time(seconds, now_seconds)?;
        let candidate = B64
            .decode(encoded.trim())
            .map_err(|_| SignatureError::Malformed("openphone-signature"))?;
        let mut check = mac(&key);
        check.update(timestamp.trim().as_bytes());
        check.update(b".");
        check.update(body);
        return check
            .verify_slice(&candidate)
            .map_err(|_| SignatureError::Mismatch);
    }
    Err(SignatureError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &[u8], message: &[u8]) -> String {
        let mut m = mac(key);
        m.update(message);
        B64.encode(m.finalize().into_bytes())
    }

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn standard_webhooks_signature_verifies_and_rejects_tampering() {
        let secret = SecretString::from(format!("whsec_{}", B64.encode(KEY)));
        let body = br#"{"type":"contact.updated"}"#;
        let now = 1_800_000_000;
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        let sig = sign(
            KEY,
            format!("msg_1.{now}.")
                .as_bytes()
                .iter()
                .chain(body.iter())
                .copied()
                .collect::<Vec<_>>()
                .as_slice(),
        );
        headers.insert(
            "webhook-signature",
            format!("v1,bogus v1,{sig}").parse().unwrap(),
        );
        assert_eq!(verify(&headers, body, &secret, now), Ok(()));
        assert_eq!(
            verify(&headers, b"{}", &secret, now),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(&headers, body, &secret, now + 301),
            Err(SignatureError::Stale { .. })
        ));
    }

    #[test]
    fn legacy_signature_with_millisecond_timestamp_verifies() {
        let secret = SecretString::from(B64.encode(KEY));
        let body = br#"{"id":"EV1"}"#;
        let ts_ms = 1_800_000_000_123i64;
        let sig = sign(
            KEY,
            format!("{ts_ms}.{}", std::str::from_utf8(body).unwrap()).as_bytes(),
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "openphone-signature",
            format!("hmac;1;{ts_ms};{sig}").parse().unwrap(),
        );
        assert_eq!(verify(&headers, body, &secret, 1_800_000_010), Ok(()));
        let wrong = SecretString::from(B64.encode(b"another key entirely"));
        assert_eq!(
            verify(&headers, body, &wrong, 1_800_000_010),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(&headers, body, &secret, 1_700_000_000),
            Err(SignatureError::Stale { .. })
        ));
        assert_eq!(
            verify(&HeaderMap::new(), body, &secret, 0),
            Err(SignatureError::Missing)
        );
    }
}
