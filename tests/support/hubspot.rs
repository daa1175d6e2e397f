//! A fake HubSpot portal that behaves like the CRM v3 API the HubSpot example configs target:
//! - every call needs `Authorization: Bearer <private app token>`, else 401;
//! - `GET /crm/v3/objects/contacts?limit=&after=&properties=` pages `results` with
//!   `paging.next.after`; `PATCH /crm/v3/objects/contacts/<id>` takes `{"properties":{…}}`;
//! - `POST /crm/v3/objects/calls` takes `{"properties":{…},"associations":[…]}`: `hs_timestamp`
//!   is required (ISO 8601 or Unix ms), `hs_call_direction` INBOUND/OUTBOUND, `hs_call_duration`
//!   milliseconds, an association must be type 194 (call → contact, HUBSPOT_DEFINED) to a contact
//!   of the portal, and `quo_activity_id` is a unique-value property (a second call with the same
//!   value answers 409); answers 201 `{"id", "properties", …}`;
//! - `GET /crm/v3/objects/calls/<value>?idProperty=quo_activity_id` answers the call or 404;
//! - `PATCH /crm/v3/objects/calls/<id>` takes `{"properties":{…}}`.
#![allow(dead_code)]

use std::collections::HashMap;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::token_crm::{Books, TokenCrm};
use super::vendor::Call;

/// The private app token the fake accepts.
pub const TOKEN: &str = "pat-na1-hubspot-DO-NOT-LEAK-5d2a";

fn gate(headers: &HeaderMap, _: &HashMap<String, String>) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

fn problem(status: StatusCode, category: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"status": "error", "message": message, "category": category})),
    )
        .into_response()
}

fn refused() -> Response {
    problem(
        StatusCode::UNAUTHORIZED,
        "INVALID_AUTHENTICATION",
        "Authentication credentials not found.",
    )
}

/// Starts the portal with contacts `(id, properties)`.
pub async fn start(contacts: Vec<(String, Value)>) -> TokenCrm {
    let contacts = contacts
        .into_iter()
        .map(|(id, properties)| {
            let record = json!({"id": id, "properties": properties, "updatedAt": "2026-01-01T00:00:00.000Z", "archived": false});
            (id, record)
        })
        .collect();
    TokenCrm::start(contacts, gate, route, refused).await
}

fn check_call(properties: &Map<String, Value>, create: bool) -> Option<Response> {
    if create {
        let stamp = properties
            .get("hs_timestamp")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ok =
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok() || stamp.parse::<i64>().is_ok();
        if !ok {
            return Some(problem(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "Property values were not valid: hs_timestamp is required",
            ));
        }
    }
    for (key, value) in properties {
        let text = value
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        let bad = match key.as_str() {
            "hs_call_direction" => !["INBOUND", "OUTBOUND"].contains(&text.as_str()),
            "hs_call_duration" => text.parse::<u64>().is_err(),
            "hs_call_status" => ![
                "BUSY",
                "CALLING_CRM_USER",
                "CANCELED",
                "COMPLETED",
                "CONNECTING",
                "FAILED",
                "IN_PROGRESS",
                "NO_ANSWER",
                "QUEUED",
                "RINGING",
            ]
            .contains(&text.as_str()),
            "hs_timestamp"
            | "hs_call_title"
            | "hs_call_body"
            | "hs_call_from_number"
            | "hs_call_to_number"
            | "hubspot_owner_id"
            | "quo_activity_id" => false,
            _ => {
                return Some(problem(
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_ERROR",
                    &format!("Property \"{key}\" does not exist"),
                ));
            }
        };
        if bad {
            return Some(problem(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                &format!("{text} was not a valid value for {key}"),
            ));
        }
    }
    None
}

fn route(books: &mut Books, call: &Call) -> (Response, bool) {
    let path = call.path.as_str();
    let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
    if path == "/crm/v3/objects/contacts" && call.method == Method::GET {
        let limit: usize = call
            .query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(10);
        let after: usize = call
            .query
            .get("after")
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let all: Vec<Value> = books.contacts.values().cloned().collect();
        let page: Vec<Value> = all.iter().skip(after).take(limit).cloned().collect();
        let mut answer = json!({"results": page});
        if after + limit < all.len() {
            answer["paging"] = json!({"next": {"after": (after + limit).to_string()}});
        }
        return (axum::Json(answer).into_response(), false);
    }
    if let Some(id) = path.strip_prefix("/crm/v3/objects/contacts/") {
        let Some(contact) = books.contacts.get_mut(id) else {
            return (
                problem(
                    StatusCode::NOT_FOUND,
                    "OBJECT_NOT_FOUND",
                    "resource not found",
                ),
                false,
            );
        };
        if call.method == Method::PATCH {
            for (k, v) in body["properties"].as_object().cloned().unwrap_or_default() {
                contact["properties"][k] = v;
            }
        }
        return (axum::Json(contact.clone()).into_response(), false);
    }
    if path == "/crm/v3/objects/calls" && call.method == Method::POST {
        books.objects.creates += 1;
        let properties = body["properties"].as_object().cloned().unwrap_or_default();
        if let Some(refusal) = check_call(&properties, true) {
            return (refusal, false);
        }
        let associations = body["associations"].as_array().cloned().unwrap_or_default();
        for a in &associations {
            let to = a["to"]["id"].as_str().unwrap_or_default();
            let typed = a["types"].as_array().into_iter().flatten().all(|t| {
                t["associationCategory"] == "HUBSPOT_DEFINED" && t["associationTypeId"] == 194
            });
            if !books.contacts.contains_key(to) || !typed {
                return (
                    problem(
                        StatusCode::BAD_REQUEST,
                        "VALIDATION_ERROR",
                        &format!("invalid association to {to}"),
                    ),
                    false,
                );
            }
        }
        if let Some(key) = properties.get("quo_activity_id").and_then(Value::as_str)
            && !books
                .objects
                .with("/properties/quo_activity_id", key)
                .is_empty()
        {
            return (
                problem(
                    StatusCode::CONFLICT,
                    "CONFLICT",
                    &format!("A call with quo_activity_id {key} already exists"),
                ),
                false,
            );
        }
        let record =
            json!({"properties": properties, "associations": associations, "archived": false});
        let id = books.objects.insert("5570000", record);
        let stored = books.objects.get_mut(&id).unwrap();
        stored["id"] = json!(id);
        return (
            (StatusCode::CREATED, axum::Json(stored.clone())).into_response(),
            true,
        );
    }
    if let Some(key) = path.strip_prefix("/crm/v3/objects/calls/") {
        if call.method == Method::GET
            && call.query.get("idProperty").map(String::as_str) == Some("quo_activity_id")
        {
            books.objects.lookups += 1;
            return match books
                .objects
                .with("/properties/quo_activity_id", key)
                .first()
            {
                Some((_, record)) => (axum::Json(record.clone()).into_response(), false),
                None => (
                    problem(
                        StatusCode::NOT_FOUND,
                        "OBJECT_NOT_FOUND",
                        "resource not found",
                    ),
                    false,
                ),
            };
        }
        if call.method == Method::PATCH {
            books.objects.updates += 1;
            let properties = body["properties"].as_object().cloned().unwrap_or_default();
            if let Some(refusal) = check_call(&properties, false) {
                return (refusal, false);
            }
            let Some(record) = books.objects.get_mut(key) else {
                return (
                    problem(
                        StatusCode::NOT_FOUND,
                        "OBJECT_NOT_FOUND",
                        "resource not found",
                    ),
                    false,
                );
            };
            for (k, v) in properties {
                record["properties"][k] = v;
            }
            return (axum::Json(record.clone()).into_response(), false);
        }
    }
    (
        problem(StatusCode::NOT_FOUND, "OBJECT_NOT_FOUND", "unknown route"),
        false,
    )
}
