//! A stateful, in-process fake REST CRM for the REST source adapter's tests.
//!
//! It serves the same contacts in every paging style real CRMs use (one URL prefix per style),
//! checks credentials, filters by `updated_since`, accepts GET/PATCH/PUT on `/contacts/{id}` with
//! ETags and `POST /contacts` (new ids `n1`, `n2`, …; an answer can be lost on demand), records
//! every request, and fails on demand (status bursts with `Retry-After`, malformed
//! JSON, a repeating cursor, a server that ignores paging).

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Value, json};

/// The credentials the fake CRM expects.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Anyone may call.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: Basic <base64>` of `user:password`.
    Basic(String, String),
    /// `<name>: <token>`.
    Header(String, String),
    /// `?<name>=<token>`.
    Query(String, String),
}

/// A failure injected into the next list request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Respond with this status (and `Retry-After`, when given).
    Status(u16, Option<String>),
    /// Respond 200 with a truncated JSON body.
    MalformedJson,
}

/// One request the fake CRM received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
    /// Request headers.
    pub headers: HeaderMap,
    /// JSON body, if any.
    pub body: Option<Value>,
}

#[derive(Default)]
struct Inner {
    contacts: Vec<Value>,
    versions: BTreeMap<String, u64>,
    faults: VecDeque<Fault>,
    write_faults: VecDeque<(u16, String)>,
    repeat_cursor: bool,
    redirects: VecDeque<String>,
    edit_after_list: Option<(String, Value)>,
    ignore_paging: bool,
    requests: Vec<Recorded>,
    /// Creates made so far (ids `n1`, `n2`, …).
    created: u64,
    /// The next creates apply, then answer 502: their answer is lost.
    lose_create_answers: u32,
    /// The next creates are left out of list answers (a list that lags) until revealed.
    hide_creates: u32,
    /// Records made while `hide_creates` was armed, not listed yet.
    hidden: Vec<String>,
}

struct Shared {
    auth: Auth,
    /// Delays (ms) applied to the next requests before answering, to provoke client timeouts.
    delays: Mutex<VecDeque<u64>>,
    base_url: String,
    inner: Mutex<Inner>,
}

/// A running fake CRM.
pub struct FakeCrm {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    shared: Arc<Shared>,
}

/// The time contact `i` (1-based) was last modified: 2026-01-01T00:00:00Z plus `i` hours.
pub fn updated_at(i: usize) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::hours(i as i64)
}

/// `n` HubSpot-like contacts `c001`…, each with nested properties, a labelled email array, a
/// number, a list and a last-modified time.
pub fn contacts(n: usize) -> Vec<Value> {
    (1..=n)
        .map(|i| {
            json!({
                "id": format!("c{i:03}"),
                "properties": {
                    "firstname": format!("First{i}"),
                    "lastname": format!("Last{i}"),
                    "company": "Acme",
                },
                "emails": [
                    {"label": "work", "value": format!("w{i}@example.com"), "primary": true},
                    {"label": "home", "value": format!("h{i}@example.com")},
                ],
                "age": 20 + i,
                "vip": i % 2 == 0,
                "tags": ["a", "b"],
                "updated_at": updated_at(i).to_rfc3339(),
            })
        })
        .collect()
}

impl FakeCrm {
    /// Starts the fake CRM on 127.0.0.1:0 with these contacts.
    pub async fn start(auth: Auth, contacts: Vec<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let versions = contacts
            .iter()
            .filter_map(|c| c["id"].as_str().map(|id| (id.to_string(), 1)))
            .collect();
        let shared = Arc::new(Shared {
            auth,
            delays: Mutex::new(VecDeque::new()),
            base_url: base_url.clone(),
            inner: Mutex::new(Inner {
                contacts,
                versions,
                ..Inner::default()
            }),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base_url, shared }
    }

    /// Answers the next requests (after the auth check) with `307 Temporary Redirect` to these
    /// locations, in order.
    pub fn push_redirects(&self, locations: impl IntoIterator<Item = String>) {
        self.shared
            .inner
            .lock()
            .unwrap()
            .redirects
            .extend(locations);
    }

    /// Once the next list request has been answered, replaces contact `id` with `record` and
    /// moves it to the end of the list, as a CRM listing by last-modified time would after an
    /// edit made while a client pages through it.
    pub fn edit_after_next_list(&self, id: &str, record: Value) {
        self.shared.inner.lock().unwrap().edit_after_list = Some((id.to_string(), record));
    }

    /// Queues failures for the next list requests, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared.inner.lock().unwrap().faults.extend(faults);
    }

    /// Queues a status (and message body) for the next write (PATCH/PUT).
    pub fn push_write_fault(&self, status: u16, message: &str) {
        self.shared
            .inner
            .lock()
            .unwrap()
            .write_faults
            .push_back((status, message.to_string()));
    }

    /// Delays the next requests by these many milliseconds each (before anything else).
    pub fn push_delays(&self, delays_ms: impl IntoIterator<Item = u64>) {
        self.shared.delays.lock().unwrap().extend(delays_ms);
    }

    /// The next `n` creates are left out of list answers (the CRM's list lags them) until
    /// [`FakeCrm::reveal_creates`]; `GET /contacts/{id}` serves them.
    pub fn hide_creates_from_lists(&self, n: u32) {
        self.shared.inner.lock().unwrap().hide_creates = n;
    }

    /// Lists the records [`FakeCrm::hide_creates_from_lists`] hid: the list has caught up.
    pub fn reveal_creates(&self) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.hidden.clear();
        inner.hide_creates = 0;
    }

    /// The next `n` creates (`POST /contacts`) are applied, then answered 502: the client never
    /// learns the new id.
    pub fn lose_create_answers(&self, n: u32) {
        self.shared.inner.lock().unwrap().lose_create_answers = n;
    }

    /// Makes the cursor style return the same cursor forever.
    pub fn repeat_cursor(&self) {
        self.shared.inner.lock().unwrap().repeat_cursor = true;
    }

    /// Makes page/offset styles return the first page whatever is asked (a looping server).
    pub fn ignore_paging(&self) {
        self.shared.inner.lock().unwrap().ignore_paging = true;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.inner.lock().unwrap().requests.clone()
    }

    /// Requests with this method whose path starts with `prefix`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .count()
    }

    /// Replaces a stored contact (a CRM-side edit), bumping its version.
    pub fn replace(&self, id: &str, record: Value) {
        let mut inner = self.shared.inner.lock().unwrap();
        let slot = inner
            .contacts
            .iter_mut()
            .find(|c| c["id"] == id)
            .expect("contact exists");
        *slot = record;
        *inner.versions.entry(id.to_string()).or_insert(1) += 1;
    }

    /// Deletes a stored contact (a CRM-side deletion).
    pub fn remove(&self, id: &str) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.contacts.retain(|c| c["id"] != id);
        inner.versions.remove(id);
    }

    /// The stored contact.
    pub fn contact(&self, id: &str) -> Option<Value> {
        self.shared
            .inner
            .lock()
            .unwrap()
            .contacts
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
    }
}

fn authorized(auth: &Auth, headers: &HeaderMap, query: &BTreeMap<String, String>) -> bool {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match auth {
        Auth::None => true,
        Auth::Bearer(token) => header("authorization") == Some(format!("Bearer {token}")),
        Auth::Basic(user, password) => {
            use base64::Engine as _;
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            header("authorization") == Some(format!("Basic {encoded}"))
        }
        Auth::Header(name, token) => header(name).as_deref() == Some(token.as_str()),
        Auth::Query(name, token) => query.get(name) == Some(token),
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: BTreeMap<String, String> = Query::try_from_uri(&uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let path = uri.path().to_string();
    let json_body = serde_json::from_slice::<Value>(&body).ok();
    let delay = shared.delays.lock().unwrap().pop_front();
    if let Some(ms) = delay {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let mut inner = shared.inner.lock().unwrap();
    inner.requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        headers: headers.clone(),
        body: json_body.clone(),
    });
    if !authorized(&shared.auth, &headers, &query) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"message": "bad credentials"}),
        );
    }
    if let Some(location) = inner.redirects.pop_front() {
        let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_str(&location).unwrap());
        return response;
    }
    let mut segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // `/wrapped/contacts/{id}`: Pipedrive-like, GET answers `{"data": record}` and PUT merges.
    let wrapped = segments.len() == 3 && segments[0] == "wrapped";
    if wrapped {
        segments.remove(0);
    }
    match (segments.as_slice(), method.clone()) {
        ([style, "contacts"], Method::GET) => {
            let response = list(&shared, &mut inner, style, &query);
            if let Some((id, record)) = inner.edit_after_list.take() {
                inner.contacts.retain(|c| c["id"] != id.as_str());
                inner.contacts.push(record);
                *inner.versions.entry(id).or_insert(1) += 1;
            }
            response
        }
        (["contacts"], Method::POST) => {
            let Some(mut record) = json_body.filter(Value::is_object) else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"message": "body is not a JSON object"}),
                );
            };
            inner.created += 1;
            let id = format!("n{}", inner.created);
            record["id"] = json!(id);
            if record.get("updated_at").is_none_or(Value::is_null) {
                record["updated_at"] = json!(Utc::now().to_rfc3339());
            }
            inner.contacts.push(record.clone());
            if inner.hide_creates > 0 {
                inner.hide_creates -= 1;
                inner.hidden.push(id.clone());
            }
            inner.versions.insert(id, 1);
            if inner.lose_create_answers > 0 {
                inner.lose_create_answers -= 1;
                return json_response(
                    StatusCode::BAD_GATEWAY,
                    json!({"message": "upstream timeout"}),
                );
            }
            json_response(StatusCode::CREATED, record)
        }
        (["contacts", id], Method::GET) => match inner.contacts.iter().find(|c| c["id"] == *id) {
            Some(contact) => {
                let version = inner.versions.get(*id).copied().unwrap_or(1);
                let body = if wrapped {
                    json!({"success": true, "data": contact})
                } else {
                    contact.clone()
                };
                let mut response = json_response(StatusCode::OK, body);
                response.headers_mut().insert(
                    header::ETAG,
                    HeaderValue::from_str(&format!("\"v{version}\"")).unwrap(),
                );
                response
            }
            None => json_response(StatusCode::NOT_FOUND, json!({"message": "no such contact"})),
        },
        (["contacts", id], m) if m == Method::PATCH || m == Method::PUT => {
            if let Some((status, message)) = inner.write_faults.pop_front() {
                return json_response(
                    StatusCode::from_u16(status).unwrap(),
                    json!({"message": message}),
                );
            }
            let Some(patch) = json_body else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"message": "body is not JSON"}),
                );
            };
            let id = id.to_string();
            let version = inner.versions.get(&id).copied().unwrap_or(1);
            if let Some(expected) = headers.get(header::IF_MATCH)
                && expected.to_str().unwrap_or_default() != format!("\"v{version}\"")
            {
                return json_response(
                    StatusCode::PRECONDITION_FAILED,
                    json!({"message": "changed since read"}),
                );
            }
            let Some(contact) = inner.contacts.iter_mut().find(|c| c["id"] == id.as_str()) else {
                return json_response(StatusCode::NOT_FOUND, json!({"message": "no such contact"}));
            };
            if m == Method::PUT && !wrapped {
                let mut replacement = patch;
                replacement["id"] = json!(id);
                *contact = replacement;
            } else {
                merge(contact, patch);
            }
            let updated = contact.clone();
            inner.versions.insert(id, version + 1);
            json_response(StatusCode::OK, updated)
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"message": "no such route"})),
    }
}

/// JSON merge: objects merge recursively, everything else is replaced.
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
        (target, patch) => *target = patch,
    }
}

fn list(
    shared: &Shared,
    inner: &mut Inner,
    style: &str,
    query: &BTreeMap<String, String>,
) -> Response {
    match inner.faults.pop_front() {
        Some(Fault::Status(status, retry_after)) => {
            let mut response = json_response(
                StatusCode::from_u16(status).unwrap(),
                json!({"message": "injected fault"}),
            );
            if let Some(after) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_str(&after).unwrap());
            }
            return response;
        }
        Some(Fault::MalformedJson) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"results\": [{\"id\": ",
            )
                .into_response();
        }
        None => {}
    }
    let since = query.get("updated_since").map(|s| {
        DateTime::parse_from_rfc3339(s)
            .expect("updated_since is RFC 3339")
            .with_timezone(&Utc)
    });
    let records: Vec<Value> = inner
        .contacts
        .iter()
        .filter(|c| !inner.hidden.iter().any(|h| c["id"] == h.as_str()))
        .filter(|c| match since {
            None => true,
            Some(since) => c["updated_at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t.with_timezone(&Utc) >= since),
        })
        .cloned()
        .collect();
    let number = |key: &str, default: usize| {
        query
            .get(key)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(default)
    };
    let slice = |from: usize, limit: usize| -> Vec<Value> {
        records.iter().skip(from).take(limit).cloned().collect()
    };
    let limit = number("limit", 1000);
    let ignore = inner.ignore_paging;
    match style {
        "page" => {
            let page = if ignore { 1 } else { number("page", 1) };
            json_response(
                StatusCode::OK,
                json!({"results": slice((page.max(1) - 1) * limit, limit)}),
            )
        }
        "offset" => {
            let offset = if ignore { 0 } else { number("offset", 0) };
            json_response(StatusCode::OK, json!({"results": slice(offset, limit)}))
        }
        "cursor" => {
            let from = match query.get("after") {
                None => 0,
                Some(after) => records
                    .iter()
                    .position(|c| c["id"] == after.as_str())
                    .unwrap_or(records.len()),
            };
            let end = from + limit;
            let next_at = if inner.repeat_cursor { limit } else { end };
            let mut body = json!({"results": slice(from, limit)});
            if let Some(next) = records.get(next_at) {
                body["paging"] = json!({"next": {"after": next["id"]}});
            }
            json_response(StatusCode::OK, body)
        }
        "pipedrive" => {
            let start = number("start", 0);
            let page = slice(start, limit);
            let more = start + limit < records.len();
            let data = if page.is_empty() {
                Value::Null
            } else {
                json!(page)
            };
            json_response(
                StatusCode::OK,
                json!({
                    "success": true,
                    "data": data,
                    "additional_data": {"pagination": {
                        "start": start, "limit": limit, "more_items_in_collection": more,
                        "next_start": if more { json!(start + limit) } else { Value::Null },
                    }},
                }),
            )
        }
        "next" => {
            let start = number("start", 0);
            let next = if start + limit < records.len() {
                json!(format!(
                    "/next/contacts?limit={limit}&start={}",
                    start + limit
                ))
            } else {
                Value::Null
            };
            json_response(
                StatusCode::OK,
                json!({"results": slice(start, limit), "next": next}),
            )
        }
        "link" => {
            let limit = number("_limit", 10);
            let page = number("_page", 1).max(1);
            let last = records.len().div_ceil(limit).max(1);
            let link =
                |p: usize| format!("{}/link/contacts?_page={p}&_limit={limit}", shared.base_url);
            let mut links = vec![format!("<{}>; rel=\"first\"", link(1))];
            if page < last {
                links.push(format!("<{}>; rel=\"next\"", link(page + 1)));
            }
            links.push(format!("<{}>; rel=\"last\"", link(last)));
            let mut response =
                json_response(StatusCode::OK, json!(slice((page - 1) * limit, limit)));
            response.headers_mut().insert(
                header::LINK,
                HeaderValue::from_str(&links.join(", ")).unwrap(),
            );
            response
        }
        "root" => json_response(StatusCode::OK, json!(records)),
        _ => json_response(StatusCode::NOT_FOUND, json!({"message": "no such style"})),
    }
}
