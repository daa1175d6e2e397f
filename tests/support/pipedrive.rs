//! A fake Pipedrive company that behaves like the API the Pipedrive example configs target:
//! - every call needs `?api_token=<token>`, else 401;
//! - `GET /api/v1/persons?start=&limit=` pages `data` with
//!   `additional_data.pagination.next_start`; `PUT /api/v1/persons/<id>` is a partial update;
//! - `POST /api/v2/activities` takes `subject`, `type`, `owner_id` (a number), `participants`
//!   (`[{"person_id": <number>, "primary": true}]`, persons of the company), `due_date`
//!   (`YYYY-MM-DD`), `due_time` and `duration` (`HH:MM`), `done`, `note`; answers
//!   `{"success": true, "data": {"id": <number>, …}}`;
//! - `PATCH /api/v2/activities/<id>` updates;
//! - there is no lookup of an activity by an external key.
#![allow(dead_code)]

use std::collections::HashMap;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::token_crm::{Books, TokenCrm};
use super::vendor::Call;

/// The API token the fake accepts.
pub const TOKEN: &str = "pipedrive-token-DO-NOT-LEAK-88c1";

fn gate(_: &HeaderMap, query: &HashMap<String, String>) -> bool {
    query.get("api_token").map(String::as_str) == Some(TOKEN)
}

fn failure(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"success": false, "error": message})),
    )
        .into_response()
}

fn refused() -> Response {
    failure(
        StatusCode::UNAUTHORIZED,
        "You need to be authorized to make this request.",
    )
}

/// Starts the company with persons (objects with a numeric `id`).
pub async fn start(persons: Vec<Value>) -> TokenCrm {
    let persons = persons
        .into_iter()
        .map(|p| (p["id"].to_string(), p))
        .collect();
    TokenCrm::start(persons, gate, route, refused).await
}

fn hh_mm(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.parse::<u32>().is_ok())
}

fn check(
    fields: &Map<String, Value>,
    persons: &std::collections::BTreeMap<String, Value>,
) -> Option<Response> {
    for (key, value) in fields {
        let bad = match key.as_str() {
            "subject" | "note" | "type" => !value.is_string(),
            "owner_id" => !value.is_u64(),
            "done" => !value.is_boolean(),
            "due_date" => value
                .as_str()
                .is_none_or(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err()),
            "due_time" | "duration" => value.as_str().is_none_or(|t| !hh_mm(t)),
            "participants" => !value.as_array().is_some_and(|ps| {
                ps.iter().all(|p| {
                    p["person_id"]
                        .as_u64()
                        .is_some_and(|id| persons.contains_key(&id.to_string()))
                })
            }),
            _ => {
                return Some(failure(
                    StatusCode::BAD_REQUEST,
                    &format!("Unknown field {key}"),
                ));
            }
        };
        if bad {
            return Some(failure(
                StatusCode::BAD_REQUEST,
                &format!("Invalid value for {key}: {value}"),
            ));
        }
    }
    None
}

fn route(books: &mut Books, call: &Call) -> (Response, bool) {
    let path = call.path.as_str();
    let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
    if path == "/api/v1/persons" && call.method == Method::GET {
        let limit: usize = call
            .query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100);
        let start: usize = call
            .query
            .get("start")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let all: Vec<Value> = books.contacts.values().cloned().collect();
        let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
        let more = start + limit < all.len();
        let answer = json!({
            "success": true,
            "data": if page.is_empty() { Value::Null } else { Value::Array(page) },
            "additional_data": {"pagination": {"start": start, "limit": limit, "more_items_in_collection": more,
                                                "next_start": if more { json!(start + limit) } else { Value::Null }}},
        });
        return (axum::Json(answer).into_response(), false);
    }
    if let Some(id) = path.strip_prefix("/api/v1/persons/") {
        let Some(person) = books.contacts.get_mut(id) else {
            return (failure(StatusCode::NOT_FOUND, "Person not found"), false);
        };
        if call.method == Method::PUT {
            for (k, v) in body.as_object().cloned().unwrap_or_default() {
                person[k] = v;
            }
        }
        return (
            axum::Json(json!({"success": true, "data": person})).into_response(),
            false,
        );
    }
    if path == "/api/v2/activities" && call.method == Method::POST {
        books.objects.creates += 1;
        let fields = body.as_object().cloned().unwrap_or_default();
        if let Some(refusal) = check(&fields, &books.contacts) {
            return (refusal, false);
        }
        let id = books.objects.insert("", Value::Object(fields));
        let numeric: u64 = id.parse().unwrap();
        let stored = books.objects.get_mut(&id).unwrap();
        stored["id"] = json!(numeric);
        return (
            axum::Json(json!({"success": true, "data": stored})).into_response(),
            true,
        );
    }
    if let Some(id) = path.strip_prefix("/api/v2/activities/")
        && call.method == Method::PATCH
    {
        books.objects.updates += 1;
        let fields = body.as_object().cloned().unwrap_or_default();
        if let Some(refusal) = check(&fields, &books.contacts) {
            return (refusal, false);
        }
        let key = format!("{:06}", id.parse::<u64>().unwrap_or(0));
        let Some(record) = books.objects.get_mut(&key) else {
            return (failure(StatusCode::NOT_FOUND, "Activity not found"), false);
        };
        for (k, v) in fields {
            record[k] = v;
        }
        return (
            axum::Json(json!({"success": true, "data": record})).into_response(),
            false,
        );
    }
    (failure(StatusCode::NOT_FOUND, "Unknown method"), false)
}
