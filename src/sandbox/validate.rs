//! Request validation: turns raw JSON bodies and query strings into typed inputs, or into the
//! exact 400 Quo would send.
//!
//! Validation works on `serde_json::Value`, not on typed structs, because the error body must
//! name the JSON path and the offending value of every problem, and because unknown keys are an
//! error (serde would silently drop them). Structural problems (not JSON, wrong shape, unknown
//! keys, bad query parameters) answer `0800400` Bad Request; well-formed bodies with invalid
//! values (bad phone, unknown custom field key, wrong value type, reserved source…) answer
//! `0801400` Invalid Custom Field Item, as the spec's contact endpoints do.

use serde_json::{Map, Value};

mod custom;
mod formats;

use custom::custom_fields;
use formats::{is_e164, is_email, is_reserved_source, looks_like_uri};

use super::error::{ApiError, FieldError, Refusal};
use super::state::{FieldDef, StoredContact};

/// Which body is being validated; decides required keys and the source rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `POST /v1/contacts`.
    Create,
    /// `PATCH /v1/contacts/{id}`.
    Patch,
    /// A contact created in the Quo app (source given separately, not checked).
    AppCreate,
    /// An edit made in the Quo app (source not checked).
    AppPatch,
}

impl Mode {
    fn is_create(self) -> bool {
        matches!(self, Mode::Create | Mode::AppCreate)
    }
    fn is_app(self) -> bool {
        matches!(self, Mode::AppCreate | Mode::AppPatch)
    }
}

/// What a body is validated as, and the switchable checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checks {
    /// Which body.
    pub mode: Mode,
    /// Refuse (in API PATCHes) email/phone item ids the contact does not have.
    pub refuse_stale_item_ids: bool,
}

impl From<Mode> for Checks {
    fn from(mode: Mode) -> Checks {
        Checks {
            mode,
            refuse_stale_item_ids: false,
        }
    }
}

/// An email or phone item of a request body.
#[derive(Debug, Clone)]
pub(crate) struct ItemInput {
    /// Position in the sent array (for error paths).
    pub index: usize,
    /// Item id, addressing an existing item (PATCH).
    pub id: Option<String>,
    /// Label.
    pub name: String,
    /// Value; `None` (JSON null) removes the item in a PATCH.
    pub value: Option<String>,
}

/// A custom field value of a request body, its key resolved.
#[derive(Debug, Clone)]
pub(crate) struct CustomInput {
    /// Field key.
    pub key: String,
    /// Normalised value; `None` (JSON null) clears the field.
    pub value: Option<Value>,
}

/// A validated create or update body. The outer `Option` is "key present".
#[derive(Debug, Clone, Default)]
pub(crate) struct ContactInput {
    /// `externalId`.
    pub external_id: Option<Option<String>>,
    /// `source`.
    pub source: Option<Option<String>>,
    /// `sourceUrl`.
    pub source_url: Option<Option<String>>,
    /// `createdByUserId` (create only).
    pub created_by_user_id: Option<String>,
    /// `defaultFields.firstName`.
    pub first_name: Option<Option<String>>,
    /// `defaultFields.lastName`.
    pub last_name: Option<Option<String>>,
    /// `defaultFields.company`.
    pub company: Option<Option<String>>,
    /// `defaultFields.role`.
    pub role: Option<Option<String>>,
    /// `defaultFields.emails`.
    pub emails: Option<Vec<ItemInput>>,
    /// `defaultFields.phoneNumbers`.
    pub phones: Option<Vec<ItemInput>>,
    /// `customFields`.
    pub custom_fields: Option<Vec<CustomInput>>,
}

/// Problems found so far, split by the error code they lead to.
#[derive(Default)]
pub(crate) struct Problems {
    structural: Vec<FieldError>,
    invalid: Vec<FieldError>,
}

impl Problems {
    pub(crate) fn bad(
        &mut self,
        path: &str,
        msg: impl Into<String>,
        value: Option<&Value>,
        kind: &str,
    ) {
        self.structural
            .push(FieldError::new(path, msg, value, kind));
    }
    fn invalid(&mut self, path: &str, msg: impl Into<String>, value: Option<&Value>, kind: &str) {
        self.invalid.push(FieldError::new(path, msg, value, kind));
    }
    fn push(&mut self, structural: bool, e: FieldError) {
        if structural {
            self.structural.push(e);
        } else {
            self.invalid.push(e);
        }
    }
    pub(crate) fn finish<T>(self, ok: T) -> Result<T, ApiError> {
        if !self.structural.is_empty() {
            let message = summary(&self.structural);
            Err(ApiError::BadRequest {
                message,
                errors: self.structural,
            })
        } else if !self.invalid.is_empty() {
            let message = summary(&self.invalid);
            Err(ApiError::Invalid {
                message,
                errors: self.invalid,
            })
        } else {
            Ok(ok)
        }
    }
}

fn summary(errors: &[FieldError]) -> String {
    match errors {
        [one] => format!("{}: {}", one.path, one.message),
        [first, ..] => format!(
            "{}: {} (and {} more)",
            first.path,
            first.message,
            errors.len() - 1
        ),
        [] => "Bad Request".to_string(),
    }
}

/// Parses a request body as JSON; anything else is a 400 Bad Request.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest {
        message: format!("Request body is not valid JSON: {e}"),
        errors: vec![FieldError::new(
            "",
            "body must be a JSON object",
            None,
            "object",
        )],
    })
}

/// Validates a contact body for `checks.mode`. `existing` is the contact a PATCH addresses (it
/// resolves custom field items sent by `id`, and item ids when stale ones are refused).
pub(crate) fn contact_body(
    body: &Value,
    checks: impl Into<Checks>,
    defs: &[FieldDef],
    existing: Option<&StoredContact>,
) -> Result<ContactInput, ApiError> {
    let checks = checks.into();
    let mode = checks.mode;
    let mut p = Problems::default();
    let mut out = ContactInput::default();
    let Some(obj) = body.as_object() else {
        p.bad("", "body must be a JSON object", Some(body), "object");
        return p.finish(out);
    };
    let allowed: &[&str] = if mode.is_create() {
        &[
            "defaultFields",
            "customFields",
            "externalId",
            "source",
            "sourceUrl",
            "createdByUserId",
        ]
    } else {
        &[
            "defaultFields",
            "customFields",
            "externalId",
            "source",
            "sourceUrl",
        ]
    };
    unknown_keys(&mut p, obj, "", allowed);
    scalar_fields(&mut p, obj, mode, &mut out);
    // defaultFields
    match obj.get("defaultFields") {
        None if mode.is_create() => p.bad(
            "/defaultFields",
            "defaultFields is required",
            None,
            "object",
        ),
        None => {}
        Some(df) => default_fields(&mut p, df, mode, &mut out),
    }
    if checks.refuse_stale_item_ids
        && mode == Mode::Patch
        && let Some(c) = existing
    {
        stale_ids(&mut p, &out, c);
    }
    // customFields
    if let Some(cf) = obj.get("customFields") {
        out.custom_fields = Some(custom_fields(&mut p, cf, defs, existing, mode.is_app()));
    }
    p.finish(out)
}

/// The body's scalar keys: `externalId`, `source` (not a reserved one), `sourceUrl` and
/// `createdByUserId`.
fn scalar_fields(p: &mut Problems, obj: &Map<String, Value>, mode: Mode, out: &mut ContactInput) {
    // externalId: 1–75 characters or null.
    if let Some(v) = obj.get("externalId") {
        out.external_id = Some(opt_string(p, "/externalId", v, 1, 75));
    }
    // source
    if let Some(v) = obj.get("source") {
        if mode == Mode::AppCreate {
            // The app's source is given separately; ignore the body's.
        } else if v.is_null() && mode.is_create() {
            p.invalid("/source", "source must be a string", Some(v), "string");
        } else {
            let max = if mode.is_create() { 72 } else { 75 };
            let s = opt_string(p, "/source", v, 1, max);
            if let Some(src) = &s
                && !mode.is_app()
                && is_reserved_source(src)
            {
                p.invalid(
                    "/source",
                    "source is reserved: it must not be openphone, device, csv, zapier, google-people, other, nor start with openphone or csv",
                    Some(v),
                    "string",
                );
            }
            out.source = Some(s);
        }
    }
    // sourceUrl: uri, ≤ 200.
    if let Some(v) = obj.get("sourceUrl") {
        if v.is_null() && mode.is_create() {
            p.invalid(
                "/sourceUrl",
                "sourceUrl must be a URI string",
                Some(v),
                "string",
            );
        } else {
            let s = opt_string(p, "/sourceUrl", v, 1, 200);
            if let Some(u) = &s
                && !looks_like_uri(u)
            {
                p.invalid("/sourceUrl", "sourceUrl must be a URI", Some(v), "uri");
            }
            out.source_url = Some(s);
        }
    }
    // createdByUserId: ^US.
    if let Some(v) = obj.get("createdByUserId") {
        match v.as_str() {
            Some(s) if s.starts_with("US") => out.created_by_user_id = Some(s.to_string()),
            _ => p.invalid(
                "/createdByUserId",
                "createdByUserId must be a string starting with US",
                Some(v),
                "string",
            ),
        }
    }
}

/// Refuses email/phone items addressed by an id the contact does not have (`0800400`).
fn stale_ids(p: &mut Problems, out: &ContactInput, contact: &StoredContact) {
    let lists = [
        ("emails", "email", &out.emails, &contact.emails),
        ("phoneNumbers", "phone number", &out.phones, &contact.phones),
    ];
    for (list, what, sent, stored) in lists {
        for item in sent.iter().flatten() {
            let Some(id) = &item.id else { continue };
            if !stored.iter().any(|s| &s.id == id) {
                let e = FieldError::new(
                    &format!("/defaultFields/{list}/{}/id", item.index),
                    format!("the contact has no {what} with id '{id}'"),
                    Some(&Value::String(id.clone())),
                    "string",
                )
                .tagged(Refusal::StaleItemId);
                p.push(true, e);
            }
        }
    }
}

fn default_fields(p: &mut Problems, df: &Value, mode: Mode, out: &mut ContactInput) {
    let Some(obj) = df.as_object() else {
        p.bad(
            "/defaultFields",
            "defaultFields must be an object",
            Some(df),
            "object",
        );
        return;
    };
    unknown_keys(
        p,
        obj,
        "/defaultFields",
        &[
            "firstName",
            "lastName",
            "company",
            "role",
            "emails",
            "phoneNumbers",
        ],
    );
    if mode.is_create() && !obj.contains_key("firstName") {
        p.bad(
            "/defaultFields/firstName",
            "firstName is required",
            None,
            "string",
        );
    }
    let scalar = |p: &mut Problems, key: &str| -> Option<Option<String>> {
        let v = obj.get(key)?;
        let path = format!("/defaultFields/{key}");
        match v {
            Value::Null => Some(None),
            Value::String(s) => Some(Some(s.clone())),
            other => {
                p.invalid(
                    &path,
                    format!("{key} must be a string or null"),
                    Some(other),
                    "string",
                );
                None
            }
        }
    };
    out.first_name = scalar(p, "firstName");
    out.last_name = scalar(p, "lastName");
    out.company = scalar(p, "company");
    out.role = scalar(p, "role");
    if let Some(v) = obj.get("emails") {
        out.emails = Some(items(p, "/defaultFields/emails", v, ItemKind::Email, mode));
    }
    if let Some(v) = obj.get("phoneNumbers") {
        let path = "/defaultFields/phoneNumbers";
        out.phones = Some(items(p, path, v, ItemKind::Phone, mode));
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    Email,
    Phone,
}

fn items(p: &mut Problems, path: &str, v: &Value, kind: ItemKind, mode: Mode) -> Vec<ItemInput> {
    let Some(arr) = v.as_array() else {
        p.bad(path, "must be an array", Some(v), "array");
        return Vec::new();
    };
    arr.iter()
        .enumerate()
        .filter_map(|(i, item)| list_item(p, &format!("{path}/{i}"), i, item, kind, mode))
        .collect()
}

/// Item `i` of an email or phone list (at `ipath`), or `None` with its problems recorded: its
/// name, id and value are each checked, so one response names every problem of the item.
fn list_item(
    p: &mut Problems,
    ipath: &str,
    i: usize,
    item: &Value,
    kind: ItemKind,
    mode: Mode,
) -> Option<ItemInput> {
    let Some(obj) = item.as_object() else {
        p.bad(
            ipath,
            "item must be an object with name and value",
            Some(item),
            "object",
        );
        return None;
    };
    unknown_keys(p, obj, ipath, &["id", "name", "value"]);
    let name = match obj.get("name") {
        Some(Value::String(s)) => Some(s.clone()),
        // The Quo app can leave a label empty; responses may then show `null`.
        Some(Value::Null) if mode.is_app() => Some(String::new()),
        None => {
            p.bad(&format!("{ipath}/name"), "name is required", None, "string");
            None
        }
        Some(other) => {
            p.invalid(
                &format!("{ipath}/name"),
                "name must be a string",
                Some(other),
                "string",
            );
            None
        }
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            p.invalid(
                &format!("{ipath}/id"),
                "id must be a string",
                Some(other),
                "string",
            );
            None
        }
    };
    let value = item_value(p, &format!("{ipath}/value"), obj.get("value"), kind)?;
    Some(ItemInput {
        index: i,
        id,
        name: name?,
        value,
    })
}

/// An item's `value` (at `vpath`): a string in the kind's format, or null; `None` when the item
/// cannot be used (missing, or not a string).
fn item_value(
    p: &mut Problems,
    vpath: &str,
    value: Option<&Value>,
    kind: ItemKind,
) -> Option<Option<String>> {
    match value {
        None => {
            p.bad(vpath, "value is required", None, "string");
            None
        }
        Some(Value::Null) => Some(None),
        Some(val @ Value::String(s)) => {
            match kind {
                ItemKind::Phone if !is_e164(s) => p.invalid(
                    vpath,
                    "phone number must be in E.164 format, e.g. +15555550100",
                    Some(val),
                    "e164",
                ),
                ItemKind::Email if !is_email(s) => {
                    p.invalid(vpath, "value must be an email address", Some(val), "email")
                }
                _ => {}
            }
            Some(Some(s.clone()))
        }
        Some(other) => {
            p.invalid(
                vpath,
                "value must be a string or null",
                Some(other),
                "string",
            );
            None
        }
    }
}

pub(super) fn unknown_keys(
    p: &mut Problems,
    obj: &Map<String, Value>,
    path: &str,
    allowed: &[&str],
) {
    for (k, v) in obj {
        if !allowed.contains(&k.as_str()) {
            p.bad(
                &format!("{path}/{k}"),
                format!("unknown property '{k}'"),
                Some(v),
                "never",
            );
        }
    }
}

/// A string of `min..=max` characters or null; problems recorded at `path`.
fn opt_string(p: &mut Problems, path: &str, v: &Value, min: usize, max: usize) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => {
            let n = s.chars().count();
            if n < min || n > max {
                p.invalid(
                    path,
                    format!("must be {min} to {max} characters long"),
                    Some(v),
                    "string",
                );
            }
            Some(s.clone())
        }
        other => {
            p.invalid(path, "must be a string or null", Some(other), "string");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    mod fuzz {
        use super::super::*;
        use crate::sandbox::state::{FieldDef, FieldType};
        use proptest::prelude::*;
        use serde_json::json;

        fn arb_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                "[a-z@.+0-9:/ -]{0,12}".prop_map(Value::String),
                prop_oneof![
                    Just("+15555550100"),
                    Just("lead-score"),
                    Just("tags"),
                    Just("renewal-date"),
                    Just("2024-09-11T04:00:00Z"),
                ]
                .prop_map(|s| Value::String(s.to_string())),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                let keys = prop_oneof![
                    Just("defaultFields"),
                    Just("customFields"),
                    Just("firstName"),
                    Just("emails"),
                    Just("phoneNumbers"),
                    Just("key"),
                    Just("value"),
                    Just("name"),
                    Just("id"),
                    Just("source"),
                    Just("externalId"),
                    Just("sourceUrl"),
                    Just("other"),
                ];
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(keys.prop_map(str::to_string), inner, 0..5)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn defs() -> Vec<FieldDef> {
            [
                ("lead-score", FieldType::Number),
                ("tags", FieldType::MultiSelect),
                ("renewal-date", FieldType::Date),
            ]
            .into_iter()
            .map(|(k, t)| FieldDef::new(k, k, t.as_str(), None))
            .collect()
        }

        proptest! {
            #[test]
            fn contact_bodies_never_panic(v in arb_json()) {
                let defs = defs();
                for mode in [Mode::Create, Mode::Patch, Mode::AppCreate, Mode::AppPatch] {
                    let _ = contact_body(&v, mode, &defs, None);
                }
            }
        }
    }
}
