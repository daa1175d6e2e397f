//! The Calls module of the fake Zoho CRM, as the activity example config writes it (Zoho CRM
//! API v8):
//! - `POST /crm/v8/Calls` takes `{"data":[{…}]}` and answers 201 with per-record `SUCCESS` and
//!   `details.id`; `Subject` is required, `Who_Id.id` must be a Contact, `Call_Type` one of
//!   Inbound/Outbound/Missed, `Call_Start_Time` `yyyy-MM-ddTHH:mm:ss±HH:mm`, `Call_Duration`
//!   `mm:ss`;
//! - `PUT /crm/v8/Calls/<id>` takes `{"data":[{changed fields}]}`;
//! - `GET /crm/v8/Calls/search?criteria=(Quo_Activity_Id:equals:<v>)` answers the matches, or 204.
#![allow(dead_code)]

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::crm_objects::Objects;
use super::vendor::Call;
use super::zoho::error;

const CALLS: &str = "/crm/v8/Calls";

/// The one record of a `{"data":[{…}]}` body.
fn one_record(body: &[u8]) -> Option<Map<String, Value>> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    parsed
        .as_ref()
        .and_then(|b| b.get("data"))
        .and_then(Value::as_array)
        .filter(|items| items.len() == 1)
        .and_then(|items| items[0].as_object().cloned())
}

fn not_one_record() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "INVALID_DATA",
        "expected {\"data\":[{…}]} with one record",
    )
}

fn check(
    fields: &Map<String, Value>,
    contacts: &BTreeMap<String, Value>,
    create: bool,
) -> Option<Response> {
    if create
        && fields
            .get("Subject")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "MANDATORY_NOT_FOUND",
            "required field not found: Subject",
        ));
    }
    for (key, value) in fields {
        let text = value.as_str().unwrap_or_default();
        let bad = match key.as_str() {
            "Who_Id" => !value["id"]
                .as_str()
                .is_some_and(|id| contacts.contains_key(id)),
            "Owner" => !value["id"].is_string(),
            "Call_Type" => !["Inbound", "Outbound", "Missed"].contains(&text),
            "Call_Start_Time" => {
                chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%:z").is_err()
            }
            "Call_Duration" => {
                let parts: Vec<&str> = text.split(':').collect();
                parts.len() != 2 || parts.iter().any(|p| p.parse::<u32>().is_err())
            }
            "Subject" | "Description" | "Quo_Activity_Id" => !value.is_string(),
            _ => {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_DATA",
                    &format!("invalid field {key}"),
                ));
            }
        };
        if bad {
            return Some(error(
                StatusCode::BAD_REQUEST,
                "INVALID_DATA",
                &format!("invalid data for {key}: {value}"),
            ));
        }
    }
    None
}

fn success(id: &str, status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"data": [{"code": "SUCCESS", "details": {"id": id}, "message": message, "status": "success"}]})),
    )
        .into_response()
}

/// Answers the Calls module's requests; `None` for anything else.
pub fn route(
    contacts: &BTreeMap<String, Value>,
    calls: &mut Objects,
    call: &Call,
) -> Option<Response> {
    let path = call.path.as_str();
    if path == CALLS && call.method == Method::POST {
        calls.creates += 1;
        let Some(fields) = one_record(&call.body) else {
            return Some(not_one_record());
        };
        if let Some(refusal) = check(&fields, contacts, true) {
            return Some(refusal);
        }
        let id = calls.insert("3477061000099", Value::Object(fields));
        calls.get_mut(&id).unwrap()["id"] = json!(id);
        return Some(success(&id, StatusCode::CREATED, "record added"));
    }
    if path == format!("{CALLS}/search") && call.method == Method::GET {
        calls.lookups += 1;
        let criteria = call.query.get("criteria").cloned().unwrap_or_default();
        let Some(value) = criteria
            .strip_prefix("(Quo_Activity_Id:equals:")
            .and_then(|v| v.strip_suffix(')'))
        else {
            return Some(error(
                StatusCode::BAD_REQUEST,
                "INVALID_QUERY",
                "invalid criteria",
            ));
        };
        let found: Vec<Value> = calls
            .with("/Quo_Activity_Id", value)
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        if found.is_empty() {
            return Some(StatusCode::NO_CONTENT.into_response());
        }
        let count = found.len();
        return Some(
            axum::Json(json!({"data": found, "info": {"count": count, "more_records": false}}))
                .into_response(),
        );
    }
    if let Some(id) = path.strip_prefix(&format!("{CALLS}/"))
        && call.method == Method::PUT
    {
        calls.updates += 1;
        let Some(fields) = one_record(&call.body) else {
            return Some(not_one_record());
        };
        if let Some(refusal) = check(&fields, contacts, false) {
            return Some(refusal);
        }
        let Some(record) = calls.get_mut(id) else {
            return Some(error(
                StatusCode::NOT_FOUND,
                "INVALID_DATA",
                "record not found",
            ));
        };
        for (k, v) in fields {
            record[k] = v;
        }
        return Some(success(id, StatusCode::OK, "record updated"));
    }
    None
}
