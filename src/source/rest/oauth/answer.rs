//! What a token endpoint's answer means: a token, a refusal an operator must fix (exit 2), a
//! "not now" worth retrying, or a failure of this attempt only.
//!
//! A refusal is claimed only when the vendor says the credentials are wrong: an RFC 6749 §5.2
//! code (or Zoho's `invalid_code`), or 401/403 without any code. `temporarily_unavailable`,
//! `server_error`, `slow_down`, 429, 5xx and vendor rate limits worded in the description
//! (Zoho answers 400 `"Access Denied"`, "You have made too many requests continuously") are
//! retried like any transient failure. Any other error code fails this attempt and the cycle,
//! without stopping the service: an unknown code is not proof that the credentials are wrong.

use reqwest::StatusCode;
use serde_json::Value;

use crate::quo::retry;

/// Codes that mean "these credentials are refused": not retried, and `once` exits 2.
const REFUSALS: [&str; 6] = [
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    // Zoho's answer to an unknown or revoked refresh token.
    "invalid_code",
];

/// Codes that mean "try again later" (RFC 6749 §5.2 errata, RFC 8628 §3.5).
const TRANSIENT: [&str; 3] = ["temporarily_unavailable", "server_error", "slow_down"];

/// Words of a vendor's rate-limit answer, in its code or description.
const RATE_LIMITED: [&str; 4] = [
    "too many requests",
    "rate limit",
    "try again after",
    "try again later",
];

/// Longest part of an error description quoted in messages (it is the vendor's text).
const DESCRIPTION_SNIPPET: usize = 120;

/// What one answer from the token endpoint means.
pub(super) enum Verdict {
    /// A JSON object without `error`: the token answer.
    Token(Value),
    /// The credentials are refused; `shown` names the status and code, never a secret.
    Refused { code: String, shown: String },
    /// Worth retrying after a pause.
    Transient(String),
    /// This attempt failed; retrying it at once would not help.
    Failed(String),
}

/// Classifies an answer by its status and body.
pub(super) fn classify(status: StatusCode, body: &[u8]) -> Verdict {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let field = |key: &str| {
        json.as_ref()
            .and_then(|j| j.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let code = field("error");
    let description = field("error_description");
    // Some vendors (Zoho) answer refusals with 200 and an `error` field.
    if status.is_success() && code.is_empty() {
        return match json.filter(Value::is_object) {
            Some(json) => Verdict::Token(json),
            None => Verdict::Failed(format!(
                "HTTP {}: the token answer is not a JSON object",
                status.as_u16()
            )),
        };
    }
    let shown = match (code.is_empty(), description.is_empty()) {
        (true, _) => format!("HTTP {}", status.as_u16()),
        (false, true) => format!("HTTP {}: {code}", status.as_u16()),
        (false, false) => {
            let description: String = description.chars().take(DESCRIPTION_SNIPPET).collect();
            format!("HTTP {}: {code} ({description})", status.as_u16())
        }
    };
    let words = format!("{code} {description}").to_ascii_lowercase();
    if retry::is_retryable_status(status)
        || TRANSIENT.contains(&code.as_str())
        || RATE_LIMITED.iter().any(|w| words.contains(w))
    {
        return Verdict::Transient(shown);
    }
    if REFUSALS.contains(&code.as_str())
        || (code.is_empty() && matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN))
    {
        return Verdict::Refused { code, shown };
    }
    Verdict::Failed(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(status: u16, body: &str) -> &'static str {
        match classify(StatusCode::from_u16(status).unwrap(), body.as_bytes()) {
            Verdict::Token(_) => "token",
            Verdict::Refused { .. } => "refused",
            Verdict::Transient(_) => "transient",
            Verdict::Failed(_) => "failed",
        }
    }

    #[test]
    fn only_what_the_vendor_calls_wrong_credentials_is_a_refusal() {
        assert_eq!(verdict(200, r#"{"access_token":"a"}"#), "token");
        assert_eq!(verdict(200, "not json"), "failed");
        assert_eq!(verdict(400, r#"{"error":"invalid_grant"}"#), "refused");
        assert_eq!(verdict(200, r#"{"error":"invalid_code"}"#), "refused");
        assert_eq!(verdict(401, ""), "refused");
        assert_eq!(verdict(403, "{}"), "refused");
        assert_eq!(
            verdict(400, r#"{"error":"temporarily_unavailable"}"#),
            "transient"
        );
        assert_eq!(verdict(503, r#"{"error":"invalid_client"}"#), "transient");
        assert_eq!(verdict(429, ""), "transient");
        assert_eq!(
            verdict(
                400,
                r#"{"error":"Access Denied","error_description":"You have made too many requests continuously. Please try again after some time."}"#
            ),
            "transient"
        );
        assert_eq!(verdict(400, r#"{"error":"something_new"}"#), "failed");
        assert_eq!(verdict(400, ""), "failed");
    }
}
