//! A fake Zoho CRM that behaves like the v8 API the Zoho example config targets:
//! - `POST /oauth/v2/token` (refresh_token grant) answers `access_token`, `expires_in` (seconds),
//!   `api_domain` (this server) and `token_type`; API calls must carry
//!   `Authorization: Zoho-oauthtoken <token>`, and an expired or unknown token gets 401
//!   `INVALID_TOKEN`;
//! - `GET /crm/v8/Contacts?fields=…&per_page=N&page=P` needs `fields`, pages with
//!   `info.more_records`, honours `If-Modified-Since` (ISO 8601) and answers 304 when nothing
//!   changed since, 204 when there is nothing at all;
//! - `GET /crm/v8/Contacts/<id>` answers `{"data":[record]}`;
//! - `PUT /crm/v8/Contacts/<id>` takes `{"data":[{changed fields}]}` (a partial update) and
//!   answers per-record `SUCCESS`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Value, json};

use super::token_desk::TokenDesk;
use super::vendor::{Books, Call, Dialect, Fake, Org};

const MODULE: &str = "/crm/v8/Contacts";
const READ_ONLY: [&str; 3] = ["id", "Modified_Time", "Created_Time"];

/// The fake Zoho CRM.
pub type FakeZoho = Fake<Own>;

/// What only the Zoho fake keeps.
#[derive(Default)]
pub struct Own {
    lists: Vec<(HashMap<String, String>, Option<String>, u16)>,
    puts: Vec<(String, Value)>,
    /// Records of the Calls module (activity logging).
    pub calls: super::crm_objects::Objects,
}

/// Zoho's `Modified_Time` format, in the org's time zone (here +05:30, as in Zoho's examples).
pub fn zoho_time(t: DateTime<Utc>) -> String {
    let ist = FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
    t.with_timezone(&ist)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

const DIALECT: Dialect = Dialect {
    id_key: "id",
    stamp_key: "Modified_Time",
    stamp: zoho_time,
    token_path: "/oauth/v2/token",
    scheme: "Zoho-oauthtoken ",
    token_answer: |base_url, lifetime, access| {
        json!({
            "access_token": access,
            "expires_in": lifetime.as_secs(),
            "api_domain": base_url,
            "token_type": "Bearer",
        })
    },
    // Zoho answers token errors with 200 and an `error` field; quo-sync must still see them as
    // refusals (an answer without access_token).
    refused: |code| axum::Json(json!({ "error": code })).into_response(),
    unauthorized: || {
        error(
            StatusCode::UNAUTHORIZED,
            "INVALID_TOKEN",
            "invalid oauth token",
        )
    },
};

impl Fake<Own> {
    /// Starts the CRM with `contacts` (objects with `id` and fields) and tokens from `desk`.
    pub async fn start(contacts: Vec<Value>, desk: TokenDesk) -> Self {
        Org::start(DIALECT, contacts, desk, route).await
    }

    /// List requests: query, If-Modified-Since, status answered.
    pub fn lists(&self) -> Vec<(HashMap<String, String>, Option<String>, u16)> {
        self.books().own.lists.clone()
    }

    /// PUT bodies received, by id.
    pub fn puts(&self) -> Vec<(String, Value)> {
        self.books().own.puts.clone()
    }

    /// Every record of the Calls module, in creation order.
    pub fn calls(&self) -> Vec<Value> {
        self.books().own.calls.all()
    }

    /// Calls creates, updates and lookups received.
    pub fn call_requests(&self) -> (u64, u64, u64) {
        let books = self.books();
        let c = &books.own.calls;
        (c.creates, c.updates, c.lookups)
    }
}

pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "code": code, "details": {}, "message": message, "status": "error" })),
    )
        .into_response()
}

fn modified(record: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(record["Modified_Time"].as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn route(org: &Org<Own>, inner: &mut Books<Own>, call: Call) -> Response {
    if let Some(answer) = super::zoho_calls::route(&inner.contacts, &mut inner.own.calls, &call) {
        return answer;
    }
    let Call {
        method,
        path,
        query,
        headers,
        body,
    } = call;
    if path == MODULE && method == Method::GET {
        let since_text = headers
            .get("if-modified-since")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let answer = list(&inner.contacts, &query, since_text.as_deref());
        inner
            .own
            .lists
            .push((query, since_text, answer.status().as_u16()));
        return answer;
    }
    if let Some(id) = path.strip_prefix(&format!("{MODULE}/")) {
        let id = id.to_string();
        if !inner.contacts.contains_key(&id) {
            return error(StatusCode::NO_CONTENT, "INVALID_DATA", "record not found");
        }
        if method == Method::GET {
            return axum::Json(json!({ "data": [inner.contacts[&id]] })).into_response();
        }
        if method == Method::PUT {
            let parsed: Option<Value> = serde_json::from_slice(&body).ok();
            let item = parsed
                .as_ref()
                .and_then(|b| b.get("data"))
                .and_then(Value::as_array)
                .filter(|items| items.len() == 1)
                .and_then(|items| items[0].as_object().cloned());
            let Some(fields) = item else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_DATA",
                    "expected {\"data\":[{…}]} with one record",
                );
            };
            if let Some(bad) = fields.keys().find(|k| READ_ONLY.contains(&k.as_str())) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_DATA",
                    &format!("{bad} is read only"),
                );
            }
            inner
                .own
                .puts
                .push((id.clone(), Value::Object(fields.clone())));
            let record = inner.contacts.get_mut(&id).unwrap();
            for (k, v) in fields {
                record[k] = v;
            }
            let stamp = org.touch(record);
            return axum::Json(json!({ "data": [{
                "code": "SUCCESS",
                "details": { "Modified_Time": stamp, "id": id },
                "message": "record updated",
                "status": "success",
            }]}))
            .into_response();
        }
    }
    error(
        StatusCode::NOT_FOUND,
        "INVALID_URL_PATTERN",
        "Please check if the URL trying to access is a correct one",
    )
}

fn list(
    contacts: &BTreeMap<String, Value>,
    query: &HashMap<String, String>,
    since: Option<&str>,
) -> Response {
    let Some(fields) = query.get("fields") else {
        return error(
            StatusCode::BAD_REQUEST,
            "REQUIRED_PARAM_MISSING",
            "One of the expected parameter is missing",
        );
    };
    let fields: Vec<&str> = fields.split(',').collect();
    let since = match since {
        None => None,
        Some(text) => match DateTime::parse_from_rfc3339(text) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_DATA",
                    "invalid If-Modified-Since",
                );
            }
        },
    };
    let matching: Vec<Value> = contacts
        .values()
        .filter(|c| since.is_none_or(|since| modified(c).is_some_and(|m| m > since)))
        .map(|c| {
            let mut out = json!({ "id": c["id"] });
            for f in &fields {
                if let Some(v) = c.get(*f) {
                    out[*f] = v.clone();
                }
            }
            out
        })
        .collect();
    if matching.is_empty() {
        return if since.is_some() {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            StatusCode::NO_CONTENT.into_response()
        };
    }
    let per_page: usize = query
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(200);
    let page: usize = query
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let chunk: Vec<Value> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    if chunk.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let more = matching.len() > page * per_page;
    axum::Json(json!({
        "data": chunk,
        "info": { "per_page": per_page, "count": chunk.len(), "page": page, "more_records": more },
    }))
    .into_response()
}
