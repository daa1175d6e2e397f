//! The console's Pause, Resume and Run now buttons (CSRF-protected like Retry and Discard) and
//! the section that shows them: the same operations as `quo-sync pause|resume|run-now`.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::page::esc;
use super::{Console, answer, auth, ledger_error};
use crate::ledger::Pause;

/// Who the ledger records for a console action.
const BY: &str = "console";

/// `POST /api/pause` (form or API; `for=1h` optional): pauses syncing for every replica.
pub(super) async fn pause(
    State(console): State<Console>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !console.auth.csrf_ok(&headers, &body) {
        return auth::csrf_refused();
    }
    let duration = match form_value(&body, "for").filter(|v| !v.trim().is_empty()) {
        None => None,
        Some(text) => match humantime::parse_duration(text.trim()) {
            Ok(d) => Some(d),
            Err(_) => {
                return answer(
                    &headers,
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": "for: expected a duration such as 30m or 1h" }),
                );
            }
        },
    };
    match crate::ops::control::pause(&console.ledger, BY, duration).await {
        Ok(pause) => answer(
            &headers,
            StatusCode::OK,
            serde_json::json!({ "paused": pause }),
        ),
        Err(e) => ledger_error(e),
    }
}

/// `POST /api/resume`: ends the pause; the leader starts a cycle at once.
pub(super) async fn resume(
    State(console): State<Console>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !console.auth.csrf_ok(&headers, &body) {
        return auth::csrf_refused();
    }
    match crate::ops::control::resume(&console.ledger, BY).await {
        Ok(was) => {
            console.wake.notify_one();
            answer(
                &headers,
                StatusCode::OK,
                serde_json::json!({ "resumed": was.is_some() }),
            )
        }
        Err(e) => ledger_error(e),
    }
}

/// `POST /api/run-now`: the leader, wherever it runs, starts a cycle within a second.
pub(super) async fn run_now(
    State(console): State<Console>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !console.auth.csrf_ok(&headers, &body) {
        return auth::csrf_refused();
    }
    match crate::ops::control::run_now(&console.ledger, BY).await {
        Ok(()) => {
            console.wake.notify_one();
            answer(
                &headers,
                StatusCode::ACCEPTED,
                serde_json::json!({ "run": "requested" }),
            )
        }
        Err(e) => ledger_error(e),
    }
}

/// One field of a form body.
fn form_value(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The control section: paused or syncing, and the buttons.
pub(super) fn render(out: &mut String, paused: Option<&Pause>, csrf: &str) {
    let button = |action: &str, label: &str, extra: &str| {
        format!(
            "<form method=\"post\" action=\"/api/{action}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">{extra}<button type=\"submit\" class=\"{action}\">{label}</button></form>",
            esc(csrf)
        )
    };
    out.push_str("<section id=\"control\"><h2>Control</h2>");
    match paused {
        Some(pause) => {
            let _ = write!(
                out,
                "<p class=\"warn\" id=\"paused\">Paused by {} since {}, {}. Nothing is written to Quo or the CRM; webhooks are received and kept.</p>",
                esc(&pause.by),
                esc(&pause.since),
                esc(&pause
                    .until
                    .as_ref()
                    .map(|u| format!("until {u}"))
                    .unwrap_or_else(|| "until resumed".into()))
            );
            out.push_str(&button("resume", "Resume", ""));
        }
        None => {
            out.push_str("<p id=\"syncing\">Syncing.</p>");
            out.push_str(&button(
                "pause",
                "Pause",
                "<label>for <input name=\"for\" placeholder=\"1h\" size=\"4\"></label>",
            ));
        }
    }
    out.push_str(&button("run-now", "Run now", ""));
    out.push_str("</section>");
}
