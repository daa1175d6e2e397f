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

use std::collections::HashMap;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::token_desk::TokenDesk;
use super::vendor::{Books, Call, Dialect, Fake, Org};

pub(super) const API: &str = "/services/data/v62.0";

/// Fields Salesforce sets itself; a PATCH naming them is refused.
const READ_ONLY: [&str; 4] = ["Id", "SystemModstamp", "LastModifiedDate", "Account"];

/// The fake org.
pub type FakeSalesforce = Fake<Own>;

/// What only the Salesforce fake keeps.
#[derive(Default)]
pub struct Own {
    batch: usize,
    locators: HashMap<String, Vec<Value>>,
    next_locator: u64,
    queries: Vec<String>,
    patches: Vec<(String, Value)>,
    /// Tasks (activity logging) and users by email (owner lookups).
    pub tasks: super::salesforce_tasks::Tasks,
}

/// `2026-01-01T00:00:00.000+0000`, Salesforce's datetime format in JSON.
pub fn sf_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

const DIALECT: Dialect = Dialect {
    id_key: "Id",
    stamp_key: "SystemModstamp",
    stamp: sf_time,
    token_path: "/services/oauth2/token",
    scheme: "Bearer ",
    token_answer: |base_url, _, access| {
        // Like Salesforce: the instance to call, and no `expires_in`.
        json!({
            "access_token": access,
            "instance_url": base_url,
            "id": format!("{base_url}/id/00D000000000001/005000000000001"),
            "token_type": "Bearer",
            "issued_at": Utc::now().timestamp_millis().to_string(),
            "signature": "c2lnbmF0dXJl",
        })
    },
    refused: |code| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": code, "error_description": "authentication failure" })),
        )
            .into_response()
    },
    unauthorized: || {
        error(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        )
    },
};

impl Fake<Own> {
    /// Starts the org with `contacts` (objects with `Id` and fields), tokens from `desk`, query
    /// batches of `batch` records.
    pub async fn start(contacts: Vec<Value>, desk: TokenDesk, batch: usize) -> Self {
        let fake = Org::start(DIALECT, contacts, desk, route).await;
        fake.books().own.batch = batch;
        fake
    }

    /// SOQL statements received.
    pub fn queries(&self) -> Vec<String> {
        self.books().own.queries.clone()
    }

    /// PATCH bodies received, by id.
    pub fn patches(&self) -> Vec<(String, Value)> {
        self.books().own.patches.clone()
    }

    /// Every Task, in creation order.
    pub fn tasks(&self) -> Vec<Value> {
        self.books().own.tasks.objects.all()
    }

    /// Task creates, updates and lookups received.
    pub fn task_calls(&self) -> (u64, u64, u64) {
        let books = self.books();
        let t = &books.own.tasks.objects;
        (t.creates, t.updates, t.lookups)
    }

    /// Adds a user (owner lookups find it by email).
    pub fn add_user(&self, email: &str, id: &str) {
        self.books()
            .own
            .tasks
            .users
            .insert(email.to_ascii_lowercase(), id.into());
    }
}

pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!([{ "message": message, "errorCode": code }])),
    )
        .into_response()
}

fn route(org: &Org<Own>, inner: &mut Books<Own>, call: Call) -> Response {
    if let Some(answer) =
        super::salesforce_tasks::route(&inner.contacts, &mut inner.own.tasks, &call)
    {
        return answer;
    }
    let Call {
        method,
        path,
        query,
        body,
        ..
    } = call;
    if path == format!("{API}/query") && method == Method::GET {
        let Some(soql) = query.get("q") else {
            return error(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", "q is required");
        };
        inner.own.queries.push(soql.clone());
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
        return batch(&mut inner.own, records);
    }
    if let Some(locator) = path.strip_prefix(&format!("{API}/query/"))
        && method == Method::GET
    {
        let Some(rest) = inner.own.locators.remove(locator) else {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_QUERY_LOCATOR",
                "invalid query locator",
            );
        };
        return batch(&mut inner.own, rest);
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
                .own
                .patches
                .push((id.clone(), Value::Object(fields.clone())));
            let record = inner.contacts.get_mut(&id).unwrap();
            for (k, v) in fields {
                record[k] = v;
            }
            org.touch(record);
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

fn batch(own: &mut Own, mut records: Vec<Value>) -> Response {
    let size = own.batch;
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
        own.next_locator += 1;
        let locator = format!("01gXX0000000{:03}-{size}", own.next_locator);
        answer["nextRecordsUrl"] = json!(format!("{API}/query/{locator}"));
        own.locators.insert(locator, rest);
    }
    axum::Json(answer).into_response()
}
