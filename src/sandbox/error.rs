//! Quo's v1 error bodies, produced the way the real API produces them.
//!
//! Every failure the sandbox can answer with is one [`ApiError`] variant; the variant decides the
//! HTTP status, and the route family (contacts `08…` or custom fields `07…`) decides the code and
//! title, copied from the OpenAPI spec, so a client's error handling is exercised against the
//! exact shapes it will meet in production.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

/// Which error-code family a route belongs to (the spec gives each endpoint group its own codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// `/v1/contacts…`: codes `08…`.
    Contacts,
    /// `/v1/contact-custom-fields`: codes `07…`.
    CustomFields,
}

impl Family {
    /// The family of a request path.
    pub(crate) fn for_path(path: &str) -> Family {
        if path.starts_with("/v1/contact-custom-fields") {
            Family::CustomFields
        } else {
            Family::Contacts
        }
    }
}

/// One entry of the error body's `errors` array: which JSON path was wrong and why.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FieldError {
    /// JSON pointer of the offending value, e.g. `/defaultFields/phoneNumbers/0/value`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// The offending value, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The expected schema, `{"type": …}`.
    pub schema: SchemaType,
    /// Which switchable refusal produced it, for the fault counters (never sent).
    #[serde(skip)]
    pub tag: Option<Refusal>,
}

/// Refusals the fault counters track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// An email/phone item id the contact does not have.
    StaleItemId,
    /// A multi-select value outside the field's options.
    OutsideOptions,
}

/// The `schema` member of a [`FieldError`].
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SchemaType {
    /// Expected JSON type or format, e.g. `string`, `e164`.
    #[serde(rename = "type")]
    pub kind: String,
}

impl FieldError {
    /// A field error at `path` expecting `kind`, with the offending value.
    pub(crate) fn new(
        path: &str,
        message: impl Into<String>,
        value: Option<&Value>,
        kind: &str,
    ) -> Self {
        FieldError {
            path: path.to_string(),
            message: message.into(),
            value: value.cloned(),
            schema: SchemaType {
                kind: kind.to_string(),
            },
            tag: None,
        }
    }

    /// The same error, tagged for the fault counters.
    pub(crate) fn tagged(mut self, tag: Refusal) -> Self {
        self.tag = Some(tag);
        self
    }
}

/// Every error answer of the sandbox's API routes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// Missing or wrong `Authorization` header.
    #[error("unauthorized")]
    Unauthorized,
    /// Malformed body, unknown keys, bad query parameters (`…0400` Bad Request).
    #[error("bad request: {message}")]
    BadRequest {
        /// Summary.
        message: String,
        /// Details per path.
        errors: Vec<FieldError>,
    },
    /// Well-formed body with invalid values (`0801400` Invalid Custom Field Item).
    #[error("invalid contact: {message}")]
    Invalid {
        /// Summary.
        message: String,
        /// Details per path.
        errors: Vec<FieldError>,
    },
    /// The contact is read-only through the API.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such contact or route.
    #[error("not found: {0}")]
    NotFound(String),
    /// Duplicate `(source, externalId)`.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Over the per-key rate limit.
    #[error("too many requests")]
    TooManyRequests {
        /// Whole seconds for `Retry-After`, if it is sent.
        retry_after: Option<u64>,
    },
    /// A fault injected by the test harness.
    #[error("injected fault: status {status}")]
    Injected {
        /// HTTP status to answer.
        status: u16,
        /// Whole seconds for `Retry-After`, if any.
        retry_after: Option<u64>,
    },
}

impl ApiError {
    /// Whether this error refuses a stale item id, and whether a value outside options.
    pub(crate) fn refusal_tags(&self) -> (bool, bool) {
        match self {
            ApiError::BadRequest { errors, .. } | ApiError::Invalid { errors, .. } => (
                errors.iter().any(|e| e.tag == Some(Refusal::StaleItemId)),
                errors
                    .iter()
                    .any(|e| e.tag == Some(Refusal::OutsideOptions)),
            ),
            _ => (false, false),
        }
    }

    /// The HTTP status of this error.
    pub(crate) fn status(&self) -> u16 {
        match self {
            ApiError::Unauthorized => 401,
            ApiError::BadRequest { .. } | ApiError::Invalid { .. } => 400,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::TooManyRequests { .. } => 429,
            ApiError::Injected { status, .. } => *status,
        }
    }

    /// The JSON error body Quo sends for this error on a route of `family`.
    pub(crate) fn body(&self, family: Family) -> Value {
        let status = self.status();
        let invalid = matches!(self, ApiError::Invalid { .. });
        let (code, title, with_description) = code_and_title(family, status, invalid);
        let message = match self {
            ApiError::Unauthorized => {
                "Unauthorized: a valid API key must be sent in the Authorization header".to_string()
            }
            ApiError::BadRequest { message, .. } | ApiError::Invalid { message, .. } => {
                message.clone()
            }
            ApiError::Forbidden(m) | ApiError::NotFound(m) | ApiError::Conflict(m) => m.clone(),
            ApiError::TooManyRequests { .. } => "Too many requests, please slow down".to_string(),
            ApiError::Injected { .. } => format!("{title} (sandbox-injected fault)"),
        };
        let mut body = json!({
            "message": message,
            "code": code,
            "status": status,
            "docs": "https://quo.com/docs",
            "title": title,
            "trace": super::state::random_hex(16),
        });
        if with_description {
            body["description"] = Value::String(title.clone());
        }
        if let ApiError::BadRequest { errors, .. } | ApiError::Invalid { errors, .. } = self
            && !errors.is_empty()
        {
            body["errors"] = serde_json::to_value(errors).unwrap_or(Value::Null);
        }
        body
    }

    /// The full HTTP response for this error on a route of `family`.
    pub(crate) fn into_response_for(self, family: Family) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.body(family))).into_response();
        let retry_after = match self {
            ApiError::TooManyRequests { retry_after } | ApiError::Injected { retry_after, .. } => {
                retry_after
            }
            _ => None,
        };
        if let Some(secs) = retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Code, title and whether the spec adds a `description`, per family and status.
fn code_and_title(family: Family, status: u16, invalid: bool) -> (String, String, bool) {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
        .to_string();
    match family {
        Family::Contacts => match status {
            400 if invalid => ("0801400".into(), "Invalid Custom Field Item".into(), true),
            403 => ("0801403".into(), "Not Phone Number User".into(), true),
            500 => ("0801500".into(), "Unknown".into(), false),
            s => (format!("0800{s}"), reason, false),
        },
        Family::CustomFields => match status {
            500 => ("0701500".into(), "Unknown".into(), false),
            s => (format!("0700{s}"), reason, false),
        },
    }
}
