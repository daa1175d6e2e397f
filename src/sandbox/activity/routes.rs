//! The dated API surface (`Quo-Api-Version: 2026-03-30`, no `/v1` prefix): calls, messages,
//! users, phone numbers and webhook subscriptions, plus the `/_sandbox/activity` admin routes.
//!
//! Every dated request passes one gate, in Quo's order (quo-api-2026-03-30.md §1): the version
//! header (400 without it, checked before auth), then authentication, then the per-key rate
//! limit shared with the `/v1` routes (Quo counts per key), then latency and injected status
//! faults. Errors use the 2026-03-30 envelope `{title, message, docs, trace, errors?}`. Lists
//! are newest first with `limit` (1–50, default 10), `after` and `nextCursor`; filters the
//! contract does not list are refused with 400 naming the parameter, so a client that relies
//! on an undocumented one fails here first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::delivery::{ActivityFaults, EVENT_TYPES, SubscriptionPatch};
use super::store::{ActivityStore, CallSpec, ListFilter, MessageSpec};
use super::{API_VERSION, VERSION_HEADER};
use crate::sandbox::Shared;
use crate::sandbox::query::query_pairs;
use crate::sandbox::state::random_hex;
use crate::sandbox::webhooks::lock;

type S = State<Arc<Shared>>;

/// A 2026-03-30 error answer.
pub(crate) struct DatedError {
    status: StatusCode,
    message: String,
    errors: Vec<Value>,
    retry_after: Option<u64>,
}

impl DatedError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    fn bad(path: &str, message: &str, value: Option<Value>, kind: &str) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "Validation failed for 1 field.");
        e.errors.push(
            json!({"path": path, "message": message, "value": value, "schema": {"type": kind}}),
        );
        e
    }

    fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("The {what} was not found"))
    }
}

impl IntoResponse for DatedError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "message": self.message,
            "docs": "https://quo.com/docs",
            "trace": random_hex(8),
        });
        if !self.errors.is_empty() {
            body["errors"] = Value::Array(self.errors);
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// The dated routes behind their gate, and the activity admin routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    let api = Router::new()
        .route("/calls", get(list_calls))
        .route("/calls/{id}", get(get_call))
        .route("/calls/{id}/transcripts", get(call_transcripts))
        .route("/calls/{id}/recordings", get(call_recordings))
        .route("/messages", get(list_messages))
        .route("/messages/{id}", get(get_message))
        .route("/users", get(list_users))
        .route("/users/{id}", get(get_user))
        .route("/phone-numbers", get(list_numbers))
        .route("/webhooks", get(list_webhooks).post(create_webhook))
        .route(
            "/webhooks/{id}",
            get(get_webhook)
                .patch(update_webhook)
                .delete(delete_webhook),
        )
        .route("/webhooks/{id}/rotate", post(rotate_webhook))
        .layer(middleware::from_fn_with_state(shared, dated_gate));
    let admin = Router::new()
        .route("/_sandbox/activity", get(admin_activity))
        .route("/_sandbox/activity/calls", post(admin_call))
        .route("/_sandbox/activity/messages", post(admin_message))
        .route("/_sandbox/activity/flush", post(admin_flush))
        .route(
            "/_sandbox/activity/faults",
            get(admin_faults).post(admin_set_faults),
        )
        .route("/_sandbox/activity/deliveries", get(admin_deliveries))
        .route(
            "/_sandbox/activity/redeliver/{event_id}",
            post(admin_redeliver),
        );
    api.merge(admin)
}

/// The stats key of a dated path: ids collapsed to `{id}`.
fn route_key(path: &str) -> String {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        [family, _] => format!("/{family}/{{id}}"),
        [family, _, tail] => format!("/{family}/{{id}}/{tail}"),
        _ => path.to_string(),
    }
}

/// Version header, auth, rate limit, latency, faults, accounting and logging.
async fn dated_gate(State(s): S, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = route_key(req.uri().path());
    lock(&s.acct).arrived();
    let version_ok = req
        .headers()
        .get(VERSION_HEADER)
        .is_some_and(|v| v.as_bytes() == API_VERSION.as_bytes());
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == s.api_key.as_bytes());
    let settings = s.settings();
    let resp = match refusal(&s, version_ok, authorized, &settings) {
        Some(refused) => refused.into_response(),
        None => {
            let extra = lock(&s.faults).take_latency().unwrap_or(Duration::ZERO);
            let delay = settings.latency + extra;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let injected = lock(&s.faults).take_status();
            match injected {
                Some((status, retry_after)) => {
                    lock(&s.acct).stats.injected_faults += 1;
                    let status =
                        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    let mut e = DatedError::new(status, "sandbox-injected fault");
                    e.retry_after = retry_after;
                    e.into_response()
                }
                None => next.run(req).await,
            }
        }
    };
    let status = resp.status().as_u16();
    lock(&s.acct).answered(method.as_str(), &route, status);
    tracing::debug!(method = %method, route = %route, status, elapsed_ms = started.elapsed().as_millis() as u64, "sandbox dated api request");
    resp
}

/// Why the gate refuses a request before it reaches its handler: the version header first,
/// then the key, then the per-key rate limit.
fn refusal(
    s: &Shared,
    version_ok: bool,
    authorized: bool,
    settings: &crate::sandbox::Settings,
) -> Option<DatedError> {
    if !version_ok {
        return Some(DatedError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "Unsupported or missing Quo-Api-Version header. Supported versions: {API_VERSION}"
            ),
        ));
    }
    if !authorized {
        return Some(DatedError::new(
            StatusCode::UNAUTHORIZED,
            "A valid API key must be sent in the Authorization header",
        ));
    }
    let admitted = lock(&s.acct).admit(settings.requests_per_second);
    admitted.err().map(|wait| {
        let mut e = DatedError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests, please slow down",
        );
        e.retry_after = settings
            .send_retry_after
            .then(|| wait.as_secs_f64().ceil().max(1.0) as u64);
        e
    })
}

/// The opaque cursor for "resume below sequence `seq`".
fn encode_cursor(seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("act:{seq}"))
}

fn decode_cursor(text: &str) -> Option<u64> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("act:")?
        .parse()
        .ok()
}

fn parse_time(key: &str, value: &str) -> Result<DateTime<Utc>, DatedError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            DatedError::bad(
                &format!("/query/{key}"),
                "must be an ISO-8601 date-time",
                Some(json!(value)),
                "date-time",
            )
        })
}

/// Reads a list query; `lower`/`upper` are the range operators this list accepts.
fn list_filter(
    raw: Option<&str>,
    lower: &str,
    upper: &str,
    extra: &[&str],
) -> Result<ListFilter, DatedError> {
    let mut f = ListFilter {
        limit: 10,
        ..ListFilter::default()
    };
    for (key, value) in query_pairs(raw) {
        let inclusive = |op: &str| op.ends_with("e]");
        match key.as_str() {
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=50).contains(&n) => f.limit = n,
                _ => {
                    return Err(DatedError::bad(
                        "/query/limit",
                        "must be an integer from 1 to 50",
                        Some(json!(value)),
                        "integer",
                    ));
                }
            },
            "after" => match decode_cursor(&value) {
                Some(seq) => f.before_seq = Some(seq),
                None => {
                    return Err(DatedError::bad(
                        "/query/after",
                        "invalid cursor",
                        Some(json!(value)),
                        "string",
                    ));
                }
            },
            k if k == format!("createdAt[{lower}]") => {
                f.since = Some((parse_time(k, &value)?, inclusive(lower)))
            }
            k if k == format!("createdAt[{upper}]") => {
                f.until = Some((parse_time(k, &value)?, inclusive(upper)))
            }
            "include" if extra.contains(&"include") => {
                for part in value.split(',') {
                    match part.trim() {
                        "summary" => f.summary = true,
                        "voicemail" => f.voicemail = true,
                        other => {
                            return Err(DatedError::bad(
                                "/query/include",
                                "must be summary, voicemail or both",
                                Some(json!(other)),
                                "string",
                            ));
                        }
                    }
                }
            }
            "direction" => match value.as_str() {
                "incoming" | "outgoing" => f.direction = Some(value),
                _ => {
                    return Err(DatedError::bad(
                        "/query/direction",
                        "must be incoming or outgoing",
                        Some(json!(value)),
                        "string",
                    ));
                }
            },
            k if extra.contains(&k) => f.number = Some(value),
            other => {
                return Err(DatedError::bad(
                    &format!("/query/{other}"),
                    &format!("unsupported query parameter or operator '{other}'"),
                    Some(json!(value)),
                    "never",
                ));
            }
        }
    }
    Ok(f)
}

fn listed(page: super::store::Listed) -> Response {
    axum::Json(json!({"data": page.items, "nextCursor": page.next_after.map(encode_cursor)}))
        .into_response()
}

/// The range operators of calls and messages, as the secondary notes read them or swapped.
fn operators(s: &Shared) -> [(&'static str, &'static str); 2] {
    let pairs = [("gte", "lte"), ("gt", "lt")];
    if s.activity
        .swapped_ranges
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        [pairs[1], pairs[0]]
    } else {
        pairs
    }
}

async fn list_calls(State(s): S, RawQuery(q): RawQuery) -> Result<Response, DatedError> {
    let (low, high) = operators(&s)[0];
    let f = list_filter(q.as_deref(), low, high, &["include", "participant"])?;
    Ok(listed(lock(&s.activity.store).list_calls(&f)))
}

fn include_flags(q: Option<&str>) -> Result<(bool, bool), DatedError> {
    let f = list_filter(q, "gte", "lte", &["include"])?;
    Ok((f.summary, f.voicemail))
}

async fn get_call(
    State(s): S,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, DatedError> {
    let (summary, voicemail) = include_flags(q.as_deref())?;
    let store = lock(&s.activity.store);
    let call = store
        .call(&id)
        .ok_or_else(|| DatedError::not_found("call"))?;
    Ok(axum::Json(json!({"data": call.render(summary, voicemail)})).into_response())
}

async fn call_transcripts(State(s): S, Path(id): Path<String>) -> Result<Response, DatedError> {
    let items = lock(&s.activity.store)
        .transcripts(&id)
        .ok_or_else(|| DatedError::not_found("call"))?;
    Ok(axum::Json(json!({"data": items, "nextCursor": null})).into_response())
}

async fn call_recordings(State(s): S, Path(id): Path<String>) -> Result<Response, DatedError> {
    let items = lock(&s.activity.store)
        .recordings(&id)
        .ok_or_else(|| DatedError::not_found("call"))?;
    Ok(axum::Json(json!({"data": items, "nextCursor": null})).into_response())
}

async fn list_messages(State(s): S, RawQuery(q): RawQuery) -> Result<Response, DatedError> {
    let (low, high) = operators(&s)[1];
    let f = list_filter(q.as_deref(), low, high, &["from", "to"])?;
    Ok(listed(lock(&s.activity.store).list_messages(&f)))
}

async fn get_message(State(s): S, Path(id): Path<String>) -> Result<Response, DatedError> {
    let store = lock(&s.activity.store);
    let message = store
        .message(&id)
        .ok_or_else(|| DatedError::not_found("message"))?;
    Ok(axum::Json(json!({"data": message.render()})).into_response())
}

async fn list_users(State(s): S) -> Response {
    let users: Vec<Value> = lock(&s.activity.store)
        .users
        .iter()
        .map(ActivityStore::render_user)
        .collect();
    axum::Json(json!({"data": users, "nextCursor": null})).into_response()
}

async fn get_user(State(s): S, Path(id): Path<String>) -> Result<Response, DatedError> {
    let store = lock(&s.activity.store);
    let user = store
        .users
        .iter()
        .find(|u| u.id == id)
        .ok_or_else(|| DatedError::not_found("user"))?;
    Ok(axum::Json(json!({"data": ActivityStore::render_user(user)})).into_response())
}

async fn list_numbers(State(s): S) -> Response {
    let numbers: Vec<Value> = lock(&s.activity.store)
        .numbers
        .iter()
        .map(ActivityStore::render_number)
        .collect();
    axum::Json(json!({"data": numbers, "nextCursor": null})).into_response()
}

// ---- webhooks ----

fn json_object(body: &Bytes) -> Result<Map<String, Value>, DatedError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(DatedError::bad(
            "/body",
            "expected a JSON object",
            None,
            "object",
        )),
    }
}

fn checked_url(value: &Value) -> Result<String, DatedError> {
    match value.as_str() {
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
            Ok(url.to_string())
        }
        _ => Err(DatedError::bad(
            "/body/url",
            "must be an http(s) URL",
            Some(value.clone()),
            "uri",
        )),
    }
}

fn checked_events(value: &Value) -> Result<Vec<String>, DatedError> {
    let Some(items) = value.as_array().filter(|a| !a.is_empty()) else {
        return Err(DatedError::bad(
            "/body/events",
            "must be a non-empty array of event types",
            Some(value.clone()),
            "array",
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, e)| match e.as_str() {
            Some(name) if EVENT_TYPES.contains(&name) => Ok(name.to_string()),
            _ => Err(DatedError::bad(
                &format!("/body/events/{i}"),
                "unknown event type",
                Some(e.clone()),
                "string",
            )),
        })
        .collect()
}

fn checked_ids(value: &Value) -> Result<Option<Vec<String>>, DatedError> {
    match value {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    DatedError::bad(
                        "/body/resourceIds",
                        "must be phone number ids or \"*\"",
                        Some(i.clone()),
                        "string",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        other => Err(DatedError::bad(
            "/body/resourceIds",
            "must be an array or null",
            Some(other.clone()),
            "array",
        )),
    }
}

fn checked_status(value: &Value) -> Result<bool, DatedError> {
    match value.as_str() {
        Some("enabled") => Ok(true),
        Some("disabled") => Ok(false),
        _ => Err(DatedError::bad(
            "/body/status",
            "must be enabled or disabled",
            Some(value.clone()),
            "string",
        )),
    }
}

fn checked_label(value: &Value) -> Result<Option<String>, DatedError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(DatedError::bad(
            "/body/label",
            "must be a string",
            Some(other.clone()),
            "string",
        )),
    }
}

async fn create_webhook(State(s): S, body: Bytes) -> Result<Response, DatedError> {
    let map = json_object(&body)?;
    if let Some(key) = map
        .keys()
        .find(|k| !["url", "events", "resourceIds", "status", "label"].contains(&k.as_str()))
    {
        return Err(DatedError::bad(
            &format!("/body/{key}"),
            "unknown property",
            None,
            "never",
        ));
    }
    let url = checked_url(map.get("url").unwrap_or(&Value::Null))?;
    let events = checked_events(map.get("events").unwrap_or(&Value::Null))?;
    let ids = checked_ids(map.get("resourceIds").unwrap_or(&Value::Null))?;
    let enabled = match map.get("status") {
        Some(v) => checked_status(v)?,
        None => true,
    };
    let label = checked_label(map.get("label").unwrap_or(&Value::Null))?;
    let sub = s
        .activity
        .hub
        .subscribe(url, events, ids, enabled, label)
        .ok_or_else(|| {
            DatedError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "The workspace already has 50 webhooks",
            )
        })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"data": sub.render(true)})),
    )
        .into_response())
}

async fn list_webhooks(State(s): S) -> Response {
    let subs: Vec<Value> = s
        .activity
        .hub
        .subscriptions()
        .iter()
        .map(|w| w.render(false))
        .collect();
    axum::Json(json!({"data": subs})).into_response()
}

async fn get_webhook(State(s): S, Path(id): Path<String>) -> Result<Response, DatedError> {
    let sub = s
        .activity
        .hub
        .subscription(&id)
        .ok_or_else(|| DatedError::not_found("webhook"))?;
    Ok(axum::Json(json!({"data": sub.render(false)})).into_response())
}

async fn update_webhook(
    State(s): S,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, DatedError> {
    let map = json_object(&body)?;
    if map.is_empty() {
        return Err(DatedError::bad(
            "/body",
            "at least one property is required",
            None,
            "object",
        ));
    }
    let mut patch = SubscriptionPatch::default();
    for (key, value) in &map {
        match key.as_str() {
            "url" => patch.url = Some(checked_url(value)?),
            "events" => patch.events = Some(checked_events(value)?),
            "resourceIds" => patch.resource_ids = Some(checked_ids(value)?),
            "status" => patch.enabled = Some(checked_status(value)?),
            "label" => patch.label = Some(checked_label(value)?),
            "apiVersion" => {
                return Err(DatedError::bad(
                    "/body/apiVersion",
                    "the API version of a webhook cannot change",
                    Some(value.clone()),
                    "never",
                ));
            }
            other => {
                return Err(DatedError::bad(
                    &format!("/body/{other}"),
                    "unknown property",
                    None,
                    "never",
                ));
            }
        }
    }
    let sub = s
        .activity
        .hub
        .update(&id, patch)
        .ok_or_else(|| DatedError::not_found("webhook"))?;
    Ok(axum::Json(json!({"data": sub.render(false)})).into_response())
}

async fn delete_webhook(State(s): S, Path(id): Path<String>) -> Result<Response, DatedError> {
    if s.activity.hub.unsubscribe(&id) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(DatedError::not_found("webhook"))
    }
}

async fn rotate_webhook(State(s): S, Path(id): Path<String>) -> Result<Response, DatedError> {
    let sub = s
        .activity
        .hub
        .rotate(&id)
        .ok_or_else(|| DatedError::not_found("webhook"))?;
    let key = sub.render(true)["key"].clone();
    Ok(axum::Json(json!({"data": {"key": key}})).into_response())
}

// ---- admin ----

fn admin_error(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": message})),
    )
        .into_response()
}

async fn admin_activity(State(s): S) -> Response {
    let store = lock(&s.activity.store);
    axum::Json(json!({"calls": store.all_calls(), "messages": store.all_messages()}))
        .into_response()
}

async fn admin_call(State(s): S, body: Bytes) -> Response {
    match serde_json::from_slice::<CallSpec>(&body) {
        Ok(spec) => axum::Json(json!({"id": s.activity_call(&spec)})).into_response(),
        Err(e) => admin_error(format!("invalid JSON: {e}")),
    }
}

async fn admin_message(State(s): S, body: Bytes) -> Response {
    match serde_json::from_slice::<MessageSpec>(&body) {
        Ok(spec) => axum::Json(json!({"id": s.activity_message(&spec)})).into_response(),
        Err(e) => admin_error(format!("invalid JSON: {e}")),
    }
}

async fn admin_flush(State(s): S) -> Response {
    axum::Json(json!({"applied": s.activity.flush()})).into_response()
}

async fn admin_faults(State(s): S) -> Response {
    axum::Json(
        json!({"fired": s.activity.hub.counters(), "dropped_event_ids": s.activity.hub.dropped()}),
    )
    .into_response()
}

async fn admin_set_faults(State(s): S, body: Bytes) -> Response {
    match serde_json::from_slice::<ActivityFaults>(&body) {
        Ok(spec) => {
            s.activity.hub.set_faults(spec);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => admin_error(format!("invalid JSON: {e}")),
    }
}

async fn admin_deliveries(State(s): S) -> Response {
    axum::Json(json!({"data": s.activity.hub.deliveries()})).into_response()
}

async fn admin_redeliver(State(s): S, Path(event_id): Path<String>) -> Response {
    axum::Json(json!({"queued": s.activity.hub.redeliver(&event_id)})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_keys_and_cursors() {
        assert_eq!(route_key("/calls/AC1"), "/calls/{id}");
        assert_eq!(
            route_key("/calls/AC1/transcripts"),
            "/calls/{id}/transcripts"
        );
        assert_eq!(route_key("/calls"), "/calls");
        assert_eq!(decode_cursor(&encode_cursor(7)), Some(7));
        assert_eq!(decode_cursor("nope"), None);
        assert!(
            list_filter(
                Some("createdAt[gt]=2026-01-01T00:00:00Z"),
                "gte",
                "lte",
                &[]
            )
            .is_err()
        );
        assert!(
            list_filter(
                Some("createdAt[gte]=2026-01-01T00:00:00Z&limit=50"),
                "gte",
                "lte",
                &[]
            )
            .is_ok()
        );
        assert!(list_filter(Some("limit=51"), "gt", "lt", &[]).is_err());
    }
}
