//! The sandbox's HTTP surface: Quo's `/v1` contact routes and the `/_sandbox` admin routes.
//!
//! Every `/v1` request passes one gate, in Quo's order: authentication, then the per-key rate
//! limit (at arrival, so added latency cannot hide a burst), then latency, then injected faults,
//! then the handler. The gate also does the accounting and the per-request debug log (never the
//! API key). The admin routes sit outside the gate: no auth, no limit, not counted, so a harness
//! can watch and steer the sandbox without disturbing what it measures.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::conn::ConnInfo;
use super::error::{ApiError, Family};
use super::faults::FaultSpec;
use super::query;
use super::validate::{self, Mode};
use super::webhooks::lock;
use super::{PatchMode, Shared};

type S = State<Arc<Shared>>;

/// The externalId (else the Quo id) of the contact a successful write touched, carried from
/// the handler to the gate in the response's extensions: the key of the seeded drop draw.
#[derive(Debug, Clone)]
struct WriteKey(String);

impl WriteKey {
    fn of(contact: &Value) -> WriteKey {
        let key = contact["externalId"]
            .as_str()
            .or_else(|| contact["id"].as_str())
            .unwrap_or_default();
        WriteKey(key.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_for(Family::Contacts)
    }
}

/// The full router: API routes behind the gate, admin routes beside it.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/v1/contact-custom-fields", get(custom_fields))
        .route("/v1/contacts", get(list).post(create))
        .route(
            "/v1/contacts/{id}",
            get(get_one).patch(update).delete(delete),
        )
        .route("/v1/{*rest}", any(not_found))
        .layer(middleware::from_fn_with_state(shared.clone(), api_gate));
    let admin = Router::new()
        .route("/_sandbox/stats", get(admin_stats))
        .route("/_sandbox/reset-stats", post(admin_reset_stats))
        .route("/_sandbox/contacts", get(admin_contacts))
        .route(
            "/_sandbox/faults",
            get(admin_faults)
                .post(admin_fault)
                .delete(admin_clear_faults),
        )
        .route(
            "/_sandbox/custom-fields",
            get(admin_custom_fields).post(admin_define_field),
        )
        .route(
            "/_sandbox/settings",
            get(admin_settings).post(admin_set_settings),
        )
        .route("/_sandbox/app/contacts", post(admin_app_create))
        .route("/_sandbox/app/seed", post(admin_app_seed))
        .route(
            "/_sandbox/app/contacts/{id}",
            post(admin_app_edit).delete(admin_app_delete),
        )
        .route("/_sandbox/webhooks", get(admin_deliveries))
        .route(
            "/_sandbox/webhooks/{event_id}/redeliver",
            post(admin_redeliver),
        );
    api.merge(admin)
        .merge(super::activity::router(shared.clone()))
        .fallback(not_found)
        .with_state(shared)
}

/// The stats key of a path: ids collapsed to `{id}`.
fn route_key(path: &str) -> String {
    match path.strip_prefix("/v1/contacts/") {
        Some(rest) if !rest.is_empty() && !rest.contains('/') => "/v1/contacts/{id}".to_string(),
        _ => path.to_string(),
    }
}

/// Auth, rate limit, latency, faults, accounting and logging for every `/v1` request.
async fn api_gate(State(s): S, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = route_key(&path);
    let family = Family::for_path(&path);
    let is_write = matches!(method, Method::POST | Method::PATCH | Method::DELETE);
    let conn = req
        .extensions()
        .get::<ConnectInfo<ConnInfo>>()
        .map(|c| c.0.clone());
    lock(&s.acct).arrived();
    let _in_flight = is_write.then(|| InFlight::enter(&s.writes_in_flight));

    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == s.api_key.as_bytes());
    let settings = s.settings();
    let mut dropped = false;
    let resp = if !authorized {
        ApiError::Unauthorized.into_response_for(family)
    } else if let Err(wait) = lock(&s.acct).admit(settings.requests_per_second) {
        let retry_after = settings
            .send_retry_after
            .then(|| wait.as_secs_f64().ceil().max(1.0) as u64);
        ApiError::TooManyRequests { retry_after }.into_response_for(family)
    } else {
        let extra = lock(&s.faults).take_latency();
        if extra.is_some() {
            lock(&s.acct).stats.faults.delayed_requests += 1;
        }
        let extra = extra.unwrap_or(Duration::ZERO);
        let delay = settings.latency + extra;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let broken = path
            .strip_prefix("/v1/contacts/")
            .and_then(|id| lock(&s.faults).broken_status(id));
        let injected = match broken {
            Some(status) => {
                lock(&s.acct).stats.faults.broken_contact_answers += 1;
                Some((status, None))
            }
            None => lock(&s.faults).take_status(),
        };
        if let Some((status, retry_after)) = injected {
            {
                let mut acct = lock(&s.acct);
                acct.stats.injected_faults += 1;
                acct.stats.faults.status_answers += u64::from(broken.is_none());
            }
            ApiError::Injected {
                status,
                retry_after,
            }
            .into_response_for(family)
        } else {
            let resp = next.run(req).await;
            match status_after_write(&s, is_write, &resp) {
                Some((status, retry_after)) => ApiError::Injected {
                    status,
                    retry_after,
                }
                .into_response_for(family),
                None => {
                    dropped = is_write && drop_after_write(&s, &method, &resp, conn.as_ref());
                    resp
                }
            }
        }
    };
    let status = resp.status().as_u16();
    lock(&s.acct).answered(method.as_str(), &route, status);
    tracing::debug!(
        method = %method,
        route = %route,
        status,
        dropped,
        peer = ?conn.as_ref().map(|c| c.peer),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "sandbox api request"
    );
    resp
}

/// After a successful write: consumes a `status_after_write` count, whose status then replaces
/// the answer (the write stays applied). A rejected write leaves it queued.
fn status_after_write(s: &Shared, is_write: bool, resp: &Response) -> Option<(u16, Option<u64>)> {
    if !is_write || !resp.status().is_success() {
        return None;
    }
    let injected = lock(&s.faults).take_status_after_write()?;
    let mut acct = lock(&s.acct);
    acct.stats.injected_faults += 1;
    acct.stats.faults.status_after_write += 1;
    Some(injected)
}

/// Counts a write in flight until answered (or until its handler is dropped: a client that
/// hangs up can cancel it).
struct InFlight<'a>(&'a tokio::sync::watch::Sender<u64>);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a tokio::sync::watch::Sender<u64>) -> Self {
        gauge.send_modify(|n| *n += 1);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// After a successful write: consumes a `drop_after_write` count or draws the ratio, and if
/// either fires kills the connection so the applied write loses its response. A rejected
/// write never gets here, so it leaves the fault queued.
fn drop_after_write(s: &Shared, method: &Method, resp: &Response, conn: Option<&ConnInfo>) -> bool {
    if !resp.status().is_success() {
        return false;
    }
    let by_ratio = {
        let mut faults = lock(&s.faults);
        if faults.take_drop() {
            false
        } else {
            let key = resp
                .extensions()
                .get::<WriteKey>()
                .map(|k| k.0.as_str())
                .unwrap_or_default();
            if !faults.draw_drop(method.as_str(), key) {
                return false;
            }
            true
        }
    };
    let Some(c) = conn else {
        tracing::warn!("DropAfterWrite: no connection info, answering normally");
        return false;
    };
    c.kill();
    let mut acct = lock(&s.acct);
    acct.stats.dropped_connections += 1;
    if by_ratio {
        acct.stats.faults.dropped_after_write_ratio += 1;
    } else {
        acct.stats.faults.dropped_after_write += 1;
    }
    true
}

async fn not_found() -> Response {
    ApiError::NotFound("Not Found".into()).into_response()
}

fn contact_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("Contact {id} not found"))
}

async fn custom_fields(State(s): S) -> Response {
    let data: Vec<Value> = s
        .defs()
        .iter()
        .map(|d| json!({"name": d.name, "key": d.key, "type": d.type_name}))
        .collect();
    axum::Json(json!({ "data": data })).into_response()
}

async fn create(State(s): S, body: Bytes) -> Result<Response, ApiError> {
    let v = validate::parse_json(&body)?;
    let defs = s.defs();
    let input = validate::contact_body(&v, s.checks(Mode::Create), &defs, None)
        .map_err(|e| s.count_refusal(e))?;
    let source = input
        .source
        .clone()
        .flatten()
        .unwrap_or_else(|| "public-api".to_string());
    let conflict = s.settings().conflict_on_duplicate;
    let contact = {
        let mut store = lock(s.api_store());
        if conflict
            && let Some(Some(ext)) = &input.external_id
            && store.has_duplicate(Some(&source), ext)
        {
            return Err(ApiError::Conflict(format!(
                "A contact with externalId '{ext}' and source '{source}' already exists"
            )));
        }
        let stored = store.insert(input, Some(source), false);
        lock(&s.faults).created(&stored.id);
        stored.render(&defs)
    };
    lock(&s.acct).stats.writes.creates += 1;
    s.emit_api("contact.updated", contact.clone());
    let key = WriteKey::of(&contact);
    let mut contact = contact;
    s.settings().response_shapes.apply(&mut contact);
    let mut resp = (StatusCode::CREATED, axum::Json(json!({ "data": contact }))).into_response();
    resp.extensions_mut().insert(key);
    Ok(resp)
}

async fn list(State(s): S, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let query = query::list_query(q.as_deref())?;
    let defs = s.defs();
    let (hidden, repeat) = {
        let mut faults = lock(&s.faults);
        let hidden = faults.hidden_for_list(!query.external_ids.is_empty());
        let repeat = query.page_token.is_some() && faults.take_repeat_token();
        (hidden, repeat)
    };
    let page = lock(s.api_store()).list(&query, &defs, &hidden);
    let shapes = s.settings().response_shapes;
    let mut items = page.items;
    for c in &mut items {
        shapes.apply(c);
    }
    let next = if repeat {
        query.page_token.clone()
    } else {
        page.next_after.map(query::encode_page_token)
    };
    {
        let f = &mut lock(&s.acct).stats.faults;
        if page.left_out > 0 {
            f.lagging_list_answers += 1;
            f.contacts_left_out += page.left_out as u64;
        }
        f.repeated_page_tokens += u64::from(repeat);
    }
    Ok(axum::Json(json!({
        "data": items,
        "totalItems": page.total,
        "nextPageToken": next,
    }))
    .into_response())
}

async fn get_one(State(s): S, Path(id): Path<String>) -> Result<Response, ApiError> {
    let defs = s.defs();
    let contact = lock(s.api_store())
        .get(&id)
        .map(|c| s.render_api(c, &defs))
        .ok_or_else(|| contact_not_found(&id))?;
    Ok(axum::Json(json!({ "data": contact })).into_response())
}

async fn update(State(s): S, Path(id): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let v = validate::parse_json(&body)?;
    let mode = s.settings().patch_mode;
    let defs = s.defs();
    let contact = {
        let mut store = lock(s.api_store());
        let existing = store.get(&id).ok_or_else(|| contact_not_found(&id))?;
        if existing.read_only {
            return Err(read_only(&id));
        }
        let input = validate::contact_body(&v, s.checks(Mode::Patch), &defs, Some(existing))
            .map_err(|e| s.count_refusal(e))?;
        store
            .patch(&id, input, mode)
            .map(|c| c.render(&defs))
            .ok_or_else(|| contact_not_found(&id))?
    };
    lock(&s.acct).stats.writes.updates += 1;
    s.emit_api("contact.updated", contact.clone());
    let key = WriteKey::of(&contact);
    let mut shaped = contact;
    s.settings().response_shapes.apply(&mut shaped);
    let mut resp = axum::Json(json!({ "data": shaped })).into_response();
    resp.extensions_mut().insert(key);
    Ok(resp)
}

async fn delete(State(s): S, Path(id): Path<String>) -> Result<Response, ApiError> {
    let defs = s.defs();
    let removed = {
        let mut store = lock(s.api_store());
        let existing = store.get(&id).ok_or_else(|| contact_not_found(&id))?;
        if existing.read_only {
            return Err(read_only(&id));
        }
        store
            .remove(&id)
            .map(|c| c.render(&defs))
            .ok_or_else(|| contact_not_found(&id))?
    };
    lock(&s.acct).stats.writes.deletes += 1;
    let key = WriteKey::of(&removed);
    s.emit_api("contact.deleted", removed);
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.extensions_mut().insert(key);
    Ok(resp)
}

fn read_only(id: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "Contact {id} is synced by a native integration and is read-only through the API"
    ))
}

// ---- admin routes ----

fn admin_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// A malformed admin request body.
struct BadAdminBody(String);

impl IntoResponse for BadAdminBody {
    fn into_response(self) -> Response {
        admin_error(StatusCode::BAD_REQUEST, self.0)
    }
}

fn admin_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, BadAdminBody> {
    serde_json::from_slice(body).map_err(|e| BadAdminBody(format!("invalid JSON: {e}")))
}

async fn admin_stats(State(s): S) -> Response {
    axum::Json(s.stats()).into_response()
}

async fn admin_reset_stats(State(s): S) -> StatusCode {
    s.reset_stats();
    StatusCode::NO_CONTENT
}

/// `GET /_sandbox/contacts[?workspace=foreign]`: the home workspace's contacts (or the other
/// workspace's, see `foreign_workspace`).
async fn admin_contacts(State(s): S, RawQuery(q): RawQuery) -> Response {
    let foreign = q.as_deref() == Some("workspace=foreign");
    let data = if foreign {
        let defs = s.defs();
        lock(&s.foreign).all().map(|c| c.render(&defs)).collect()
    } else {
        s.contacts()
    };
    axum::Json(json!({ "data": data })).into_response()
}

async fn admin_fault(State(s): S, body: Bytes) -> Response {
    match admin_json::<FaultSpec>(&body) {
        Ok(spec) => {
            s.inject(spec.into());
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => r.into_response(),
    }
}

async fn admin_clear_faults(State(s): S) -> StatusCode {
    s.clear_faults();
    StatusCode::NO_CONTENT
}

/// `GET /_sandbox/faults`: what is armed, and how many times each fault fired.
async fn admin_faults(State(s): S) -> Response {
    let mut v = lock(&s.faults).view();
    v["webhooks"] = s.hub.faults_view();
    v["fired"] = serde_json::to_value(s.stats().faults).unwrap_or(Value::Null);
    axum::Json(v).into_response()
}

/// Body of `POST /_sandbox/custom-fields`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldDefBody {
    name: String,
    key: String,
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    options: Option<Vec<String>>,
    #[serde(default)]
    fill: Option<Value>,
}

fn defs_view(s: &Shared) -> Response {
    let data: Vec<Value> = s
        .defs()
        .iter()
        .map(|d| json!({"name": d.name, "key": d.key, "type": d.type_name, "options": d.options}))
        .collect();
    axum::Json(json!({ "data": data })).into_response()
}

async fn admin_custom_fields(State(s): S) -> Response {
    defs_view(&s)
}

async fn admin_define_field(State(s): S, body: Bytes) -> Response {
    let b = match admin_json::<FieldDefBody>(&body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let def = super::state::FieldDef::new(&b.name, &b.key, &b.type_name, b.options);
    match s.define_field(def, b.fill.as_ref()) {
        Ok(()) => defs_view(&s),
        Err(e) => admin_error(StatusCode::BAD_REQUEST, e),
    }
}

/// Body of `POST /_sandbox/settings`: every key optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsPatch {
    patch_mode: Option<PatchMode>,
    conflict_on_duplicate: Option<bool>,
    latency_ms: Option<u64>,
    requests_per_second: Option<u32>,
    send_retry_after: Option<bool>,
    webhooks_on_api_writes: Option<bool>,
    response_shapes: Option<super::ResponseShapes>,
    refuse_stale_item_ids: Option<bool>,
    foreign_workspace: Option<bool>,
}

fn settings_view(s: &Shared) -> Response {
    let st = s.settings();
    axum::Json(json!({
        "patch_mode": st.patch_mode,
        "conflict_on_duplicate": st.conflict_on_duplicate,
        "latency_ms": st.latency.as_millis() as u64,
        "requests_per_second": st.requests_per_second,
        "send_retry_after": st.send_retry_after,
        "webhooks_on_api_writes": st.webhooks_on_api_writes,
        "response_shapes": st.response_shapes,
        "refuse_stale_item_ids": st.refuse_stale_item_ids,
        "foreign_workspace": st.foreign_workspace,
        "webhook": st.webhook.as_ref().map(|w| json!({"url": w.url, "scheme": w.scheme})),
    }))
    .into_response()
}

async fn admin_settings(State(s): S) -> Response {
    settings_view(&s)
}

async fn admin_set_settings(State(s): S, body: Bytes) -> Response {
    let patch = match admin_json::<SettingsPatch>(&body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    {
        let mut st = lock(&s.settings);
        if let Some(m) = patch.patch_mode {
            st.patch_mode = m;
        }
        if let Some(c) = patch.conflict_on_duplicate {
            st.conflict_on_duplicate = c;
        }
        if let Some(ms) = patch.latency_ms {
            st.latency = Duration::from_millis(ms);
        }
        if let Some(n) = patch.requests_per_second {
            st.requests_per_second = n;
        }
        if let Some(b) = patch.send_retry_after {
            st.send_retry_after = b;
        }
        if let Some(b) = patch.webhooks_on_api_writes {
            st.webhooks_on_api_writes = b;
        }
        if let Some(b) = patch.refuse_stale_item_ids {
            st.refuse_stale_item_ids = b;
        }
        if let Some(b) = patch.foreign_workspace {
            st.foreign_workspace = b;
        }
    }
    if let Some(shapes) = patch.response_shapes {
        s.set_shapes(shapes);
    }
    settings_view(&s)
}

/// `POST /_sandbox/app/contacts[?source=hubspot]`: the body is a contact body; the source comes
/// from the query, else the body's `source`, else none.
async fn admin_app_create(State(s): S, RawQuery(q): RawQuery, body: Bytes) -> Response {
    let v: Value = match admin_json(&body) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let params: HashMap<String, String> = query::query_pairs(q.as_deref()).into_iter().collect();
    let source = params
        .get("source")
        .cloned()
        .or_else(|| v.get("source").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    match s.app_create(&v, &source) {
        Ok(c) => (StatusCode::CREATED, axum::Json(json!({ "data": c }))).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /_sandbox/app/seed`: the body is a seed CSV (`super::seed`); answers `{"seeded": n}`.
async fn admin_app_seed(State(s): S, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    let seeds = match super::seed::parse_seed_csv(&text) {
        Ok(seeds) => seeds,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match s.seed_existing(&seeds) {
        Ok(n) => axum::Json(json!({ "seeded": n })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn admin_app_edit(State(s): S, Path(id): Path<String>, body: Bytes) -> Response {
    let v: Value = match admin_json(&body) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    match s.app_edit(&id, &v) {
        Ok(Some(c)) => axum::Json(json!({ "data": c })).into_response(),
        Ok(None) => contact_not_found(&id).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn admin_app_delete(State(s): S, Path(id): Path<String>) -> Response {
    match s.app_delete(&id) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => contact_not_found(&id).into_response(),
    }
}

async fn admin_deliveries(State(s): S) -> Response {
    axum::Json(json!({ "data": s.hub.deliveries() })).into_response()
}

async fn admin_redeliver(State(s): S, Path(event_id): Path<String>) -> Response {
    let Some(target) = s.settings().webhook else {
        return admin_error(StatusCode::CONFLICT, "no webhook target configured");
    };
    let acknowledged = s.hub.deliver(&event_id, &target, true).await;
    axum::Json(json!({ "acknowledged": acknowledged })).into_response()
}

#[cfg(test)]
mod tests {
    use super::route_key;

    #[test]
    fn route_keys_collapse_ids() {
        assert_eq!(route_key("/v1/contacts/abc"), "/v1/contacts/{id}");
        assert_eq!(route_key("/v1/contacts"), "/v1/contacts");
        assert_eq!(
            route_key("/v1/contact-custom-fields"),
            "/v1/contact-custom-fields"
        );
    }
}
