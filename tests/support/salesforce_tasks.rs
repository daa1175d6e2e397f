//! Tasks in the fake Salesforce org, as the activity example config writes them (Salesforce
//! REST API and object reference):
//! - `POST …/sobjects/Task` answers 201 `{"id","success","errors"}`; `WhoId` must be a Contact of
//!   the org, `TaskSubtype` one of Salesforce's values, `CallType` Inbound/Internal/Outbound,
//!   `ActivityDate` a date, `CallDurationInSeconds` a whole number; other fields must be Task
//!   fields (the custom `Quo_Activity_Id__c` included);
//! - `GET …/sobjects/Task/Quo_Activity_Id__c/<value>` answers the Task, 404 `NOT_FOUND`, or 300
//!   when several Tasks carry the value (the field is an External ID, not Unique);
//! - `PATCH …/sobjects/Task/<id>` answers 204, and refuses `TaskSubtype` (create-only);
//! - `GET …/query?q=SELECT Id FROM User WHERE Email = '<email>' …` finds users.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::crm_objects::Objects;
use super::salesforce::{API, error};
use super::vendor::Call;

/// Fields a Task accepts on create.
const TASK_FIELDS: [&str; 12] = [
    "WhoId",
    "WhatId",
    "OwnerId",
    "Subject",
    "TaskSubtype",
    "Status",
    "Priority",
    "CallType",
    "CallDurationInSeconds",
    "ActivityDate",
    "Description",
    "Quo_Activity_Id__c",
];

/// The org's Tasks and Users.
#[derive(Debug, Default)]
pub struct Tasks {
    /// Tasks.
    pub objects: Objects,
    /// User ids by email.
    pub users: HashMap<String, String>,
}

fn invalid(code: &str, message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, code, message)
}

fn check(
    fields: &Map<String, Value>,
    contacts: &BTreeMap<String, Value>,
    create: bool,
) -> Option<Response> {
    for (key, value) in fields {
        if !TASK_FIELDS.contains(&key.as_str()) {
            return Some(invalid(
                "INVALID_FIELD",
                &format!("No such column '{key}' on sobject of type Task"),
            ));
        }
        if key == "TaskSubtype" && !create {
            return Some(invalid(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                "Unable to create/update fields: TaskSubtype",
            ));
        }
        let text = value.as_str().unwrap_or_default();
        let bad = match key.as_str() {
            "WhoId" => !contacts.contains_key(text),
            "TaskSubtype" => {
                !["Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn"].contains(&text)
            }
            "CallType" => !["Inbound", "Internal", "Outbound"].contains(&text),
            "CallDurationInSeconds" => !value.is_u64(),
            "ActivityDate" => chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_err(),
            _ => false,
        };
        if bad {
            return Some(invalid(
                "FIELD_INTEGRITY_EXCEPTION",
                &format!("{key}: bad value {value}"),
            ));
        }
    }
    None
}

/// Answers the Task and User calls; `None` for anything else.
pub fn route(
    contacts: &BTreeMap<String, Value>,
    tasks: &mut Tasks,
    call: &Call,
) -> Option<Response> {
    let path = call.path.as_str();
    if path == format!("{API}/query") && call.method == Method::GET {
        let soql = call.query.get("q")?;
        if !soql.contains("FROM User") {
            return None;
        }
        let email = soql
            .split('\'')
            .nth(1)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let records: Vec<Value> = tasks
            .users
            .get(&email)
            .map(|id| json!({"attributes": {"type": "User"}, "Id": id}))
            .into_iter()
            .collect();
        return Some(
            axum::Json(json!({"totalSize": records.len(), "done": true, "records": records}))
                .into_response(),
        );
    }
    let task_path = format!("{API}/sobjects/Task");
    if path == task_path && call.method == Method::POST {
        tasks.objects.creates += 1;
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&call.body) else {
            return Some(invalid("JSON_PARSER_ERROR", "expected a JSON object"));
        };
        if let Some(refusal) = check(&fields, contacts, true) {
            return Some(refusal);
        }
        let id = tasks.objects.insert("00T5g00000TSK", Value::Object(fields));
        let stored = tasks.objects.get_mut(&id).unwrap();
        stored["Id"] = json!(id);
        return Some(
            (
                StatusCode::CREATED,
                axum::Json(json!({"id": id, "success": true, "errors": []})),
            )
                .into_response(),
        );
    }
    if let Some(value) = path.strip_prefix(&format!("{task_path}/Quo_Activity_Id__c/")) {
        tasks.objects.lookups += 1;
        let found = tasks.objects.with("/Quo_Activity_Id__c", value);
        return Some(match found.len() {
            0 => (StatusCode::NOT_FOUND, axum::Json(json!([{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]))).into_response(),
            1 => axum::Json(found[0].1.clone()).into_response(),
            _ => (StatusCode::MULTIPLE_CHOICES, axum::Json(json!(found.iter().map(|(id, _)| format!("{task_path}/{id}")).collect::<Vec<_>>()))).into_response(),
        });
    }
    if let Some(id) = path.strip_prefix(&format!("{task_path}/")) {
        if call.method != Method::PATCH {
            return None;
        }
        tasks.objects.updates += 1;
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&call.body) else {
            return Some(invalid("JSON_PARSER_ERROR", "expected a JSON object"));
        };
        if let Some(refusal) = check(&fields, contacts, false) {
            return Some(refusal);
        }
        let Some(task) = tasks.objects.get_mut(id) else {
            return Some(error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource does not exist",
            ));
        };
        for (k, v) in fields {
            task[k] = v;
        }
        return Some(StatusCode::NO_CONTENT.into_response());
    }
    None
}
