//! A fake Salesforce org that behaves like the REST API the Salesforce example config targets:
//! - `POST /services/oauth2/token` (refresh_token grant, client credentials as form fields)
//!   answers `access_token` and `instance_url` (this server) but, like Salesforce, no
//!   `expires_in`; tokens die after a short lifetime and the API then answers 401
//!   `INVALID_SESSION_ID`;
//! - `GET /services/data/v62.0/query?q=SELECT … WHERE SystemModstamp > <literal> …` runs the
//!   filter on `SystemModstamp` and answers in batches with `done` / `nextRecordsUrl`;
//! - `GET /services/data/v62.0/query/<locator>` serves the next batch;
//! - `GET` / `PATCH /services/data/v62.0/sobjects/Contact/<id>`: PATCH is a partial update that
//!   refuses read-only fields and answers 204.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::token_desk::{Grant, TokenDesk, parse_form};

const API: &str = "/services/data/v62.0";

/// Fields Salesforce sets itself; a PATCH naming them is refused.
const READ_ONLY: [&str; 4] = ["Id", "SystemModstamp", "LastModifiedDate", "Account"];

/// The fake org.
#[derive(Clone)]
pub struct FakeSalesforce {
    pub base_url: String,
    shared: Arc<Shared>,
}

struct Shared {
    base_url: String,
    desk: TokenDesk,
    batch: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    contacts: BTreeMap<String, Value>,
    locators: HashMap<String, Vec<Value>>,
    next_locator: u64,
    queries: Vec<String>,
    patches: Vec<(String, Value)>,
    unauthorized: u64,
}

/// `2026-01-01T00:00:00.000+0000`, Salesforce's datetime format in JSON.
pub fn sf_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

impl FakeSalesforce {
    /// Starts the org with `contacts` (objects with `Id` and fields), tokens from `desk`, query
    /// batches of `batch` records.
    pub async fn start(contacts: Vec<Value>, desk: TokenDesk, batch: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let now = sf_time(Utc::now() - chrono::Duration::minutes(10));
        let contacts = contacts
            .into_iter()
            .map(|mut c| {
                c["SystemModstamp"] = json!(now);
                (c["Id"].as_str().unwrap().to_string(), c)
            })
            .collect();
        let shared = Arc::new(Shared {
            base_url: base_url.clone(),
            desk,
            batch,
            inner: Mutex::new(Inner {
                contacts,
                ..Inner::default()
            }),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { base_url, shared }
    }

    /// The token endpoint's bookkeeping.
    pub fn desk(&self) -> &TokenDesk {
        &self.shared.desk
    }

    /// A contact as stored.
    pub fn contact(&self, id: &str) -> Option<Value> {
        self.shared.inner.lock().unwrap().contacts.get(id).cloned()
    }

    /// Edits a contact as a Salesforce user would (SystemModstamp moves).
    pub fn edit(&self, id: &str, field: &str, value: Value) {
        let mut inner = self.shared.inner.lock().unwrap();
        let record = inner.contacts.get_mut(id).expect("contact exists");
        record[field] = value;
        record["SystemModstamp"] = json!(sf_time(Utc::now()));
    }

    /// SOQL statements received.
    pub fn queries(&self) -> Vec<String> {
        self.shared.inner.lock().unwrap().queries.clone()
    }

    /// PATCH bodies received, by id.
    pub fn patches(&self) -> Vec<(String, Value)> {
        self.shared.inner.lock().unwrap().patches.clone()
    }

    /// API requests answered 401.
    pub fn unauthorized(&self) -> u64 {
        self.shared.inner.lock().unwrap().unauthorized
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!([{ "message": message, "errorCode": code }])),
    )
        .into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if path == "/services/oauth2/token" && method == Method::POST {
        return match shared.desk.grant(&parse_form(&body)) {
            Grant::Token { access, refresh } => {
                let mut answer = json!({
                    "access_token": access,
                    "instance_url": shared.base_url,
                    "id": format!("{}/id/00D000000000001/005000000000001", shared.base_url),
                    "token_type": "Bearer",
                    "issued_at": Utc::now().timestamp_millis().to_string(),
                    "signature": "c2lnbmF0dXJl",
                });
                if let Some(refresh) = refresh {
                    answer["refresh_token"] = json!(refresh);
                }
                axum::Json(answer).into_response()
            }
            Grant::Refused(code) => (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": code, "error_description": "authentication failure" })),
            )
                .into_response(),
        };
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !shared.desk.check(token) {
        shared.inner.lock().unwrap().unauthorized += 1;
        return error(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        );
    }
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let mut inner = shared.inner.lock().unwrap();
    if path == format!("{API}/query") && method == Method::GET {
        let Some(soql) = query.get("q") else {
            return error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", "q is required");
        };
        inner.queries.push(soql.clone());
        let since = match soql.split("SystemModstamp > ").nth(1) {
            Some(rest) => {
                let literal = rest.split_whitespace().next().unwrap_or_default();
                match DateTime::parse_from_rfc3339(literal) {
                    Ok(t) => Some(t.with_timezone(&Utc)),
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "MALFORMED_QUERY",
                            &format!("bad datetime literal {literal:?}"),
                        );
                    }
                }
            }
            None => None,
        };
        let mut records: Vec<Value> = inner
            .contacts
            .values()
            .filter(|c| {
                since.is_none_or(|since| {
                    let stamp = c["SystemModstamp"].as_str().unwrap_or_default();
                    DateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%.3f%z")
                        .map(|t| t.with_timezone(&Utc) > since)
                        .unwrap_or(true)
                })
            })
            .map(with_attributes)
            .collect();
        records.sort_by(|a, b| {
            a["SystemModstamp"]
                .as_str()
                .cmp(&b["SystemModstamp"].as_str())
                .then(a["Id"].as_str().cmp(&b["Id"].as_str()))
        });
        return batch(&mut inner, shared.batch, records);
    }
    if let Some(locator) = path.strip_prefix(&format!("{API}/query/"))
        && method == Method::GET
    {
        let Some(rest) = inner.locators.remove(locator) else {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_QUERY_LOCATOR",
                "invalid query locator",
            );
        };
        return batch(&mut inner, shared.batch, rest);
    }
    if let Some(id) = path.strip_prefix(&format!("{API}/sobjects/Contact/")) {
        let id = id.to_string();
        if !inner.contacts.contains_key(&id) {
            return error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource does not exist",
            );
        }
        if method == Method::GET {
            return axum::Json(with_attributes(&inner.contacts[&id])).into_response();
        }
        if method == Method::PATCH {
            let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "JSON_PARSER_ERROR",
                    "expected a JSON object",
                );
            };
            if let Some(bad) = fields
                .keys()
                .find(|k| READ_ONLY.contains(&k.as_str()) || k.as_str() == "attributes")
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    &format!("Unable to create/update fields: {bad}"),
                );
            }
            inner
                .patches
                .push((id.clone(), Value::Object(fields.clone())));
            let record = inner.contacts.get_mut(&id).unwrap();
            for (k, v) in fields {
                record[k] = v;
            }
            record["SystemModstamp"] = json!(sf_time(Utc::now()));
            return StatusCode::NO_CONTENT.into_response();
        }
    }
    error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "The requested resource does not exist",
    )
}

fn with_attributes(record: &Value) -> Value {
    let mut out = record.clone();
    out["attributes"] = json!({
        "type": "Contact",
        "url": format!("{API}/sobjects/Contact/{}", record["Id"].as_str().unwrap_or_default()),
    });
    out
}

fn batch(inner: &mut Inner, size: usize, mut records: Vec<Value>) -> Response {
    let rest = if records.len() > size {
        records.split_off(size)
    } else {
        Vec::new()
    };
    let mut answer = json!({
        "totalSize": records.len() + rest.len(),
        "done": rest.is_empty(),
        "records": records,
    });
    if !rest.is_empty() {
        inner.next_locator += 1;
        let locator = format!("01gXX0000000{:03}-{size}", inner.next_locator);
        answer["nextRecordsUrl"] = json!(format!("{API}/query/{locator}"));
        inner.locators.insert(locator, rest);
    }
    axum::Json(answer).into_response()
}
