//! Creating a record from a contact made in the Quo app (`reverse.create_in_crm`):
//! `[source.rest.create]` says how (method, path, the body built like the write-back body, and
//! where the new id sits in the answer).
//!
//! A create is sent at most once per call. The CRM assigns the id, so a create whose answer was
//! lost cannot be looked up by it: its outcome is `Unknown`, and the cycle finds the record by
//! the Quo id it carries (`reverse.quo_id_field`) in a later read instead of creating again.

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::RestSource;
use super::config::RestConfigError;
use super::write::wrap;
use crate::config::HumanDuration;
use crate::domain::ExternalId;
use crate::source::{Created, NewRecord, SourceError, WriteGuard};

/// The create request's method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CreateMethod {
    /// `POST` (default).
    #[default]
    Post,
    /// `PUT`.
    Put,
}

/// `[source.rest.create]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConfig {
    /// `POST` (default) or `PUT`.
    #[serde(default)]
    pub method: CreateMethod,
    /// The collection path, `/contacts`.
    pub path: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: crate::secret_headers::HttpHeaders,
    /// Where the record sits in the body; "" = the body is the record.
    #[serde(default)]
    pub wrap_pointer: String,
    /// Put the record inside a one-item array at `wrap_pointer` (Zoho: `{"data":[{…}]}`).
    #[serde(default)]
    pub wrap_array: bool,
    /// JSON pointer to the new record's id in the answer (`/id`, `/data/0/details/id`).
    pub id_pointer: String,
    /// How long the CRM's list may lag a create: a create whose answer was lost is only looked
    /// for (by the Quo id it carries) until a complete read that started this long after its
    /// intent has not shown it; then it is sent again. Default 10 minutes.
    #[serde(default = "default_lookup_window")]
    pub lookup_window: HumanDuration,
}

/// How long a CRM's list is assumed to lag a create unless `create.lookup_window` says.
pub const DEFAULT_LOOKUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

fn default_lookup_window() -> HumanDuration {
    HumanDuration(DEFAULT_LOOKUP_WINDOW)
}

impl CreateConfig {
    pub(super) fn validate(&self) -> Result<(), RestConfigError> {
        if !self.path.starts_with('/') {
            return Err(RestConfigError::new(
                "create.path",
                format!("expected a path starting with `/`, got {:?}", self.path),
            ));
        }
        if !self.id_pointer.starts_with('/') {
            return Err(RestConfigError::new(
                "create.id_pointer",
                format!(
                    "expected a JSON pointer like \"/id\", got {:?}",
                    self.id_pointer
                ),
            ));
        }
        if !(self.wrap_pointer.is_empty() || self.wrap_pointer.starts_with('/')) {
            return Err(RestConfigError::new(
                "create.wrap_pointer",
                format!(
                    "expected a JSON pointer like \"/data\" or \"\", got {:?}",
                    self.wrap_pointer
                ),
            ));
        }
        Ok(())
    }
}

impl RestSource {
    /// Whether `[source.rest.create]` is configured.
    pub fn can_create(&self) -> bool {
        self.config.create.is_some()
    }

    /// `create.lookup_window` (the default when creating is not configured).
    pub fn create_lookup_window(&self) -> std::time::Duration {
        self.config
            .create
            .as_ref()
            .map_or(DEFAULT_LOOKUP_WINDOW, |c| c.lookup_window.0)
    }

    /// Creates each record, one request each, never twice: `Made` with the id from the answer,
    /// `Refused` (a 4xx: nothing made) or `Unknown` (a 5xx, a lost answer, an answer without
    /// an id: the record may exist). Each create (every attempt of it) is admitted by `guard`
    /// just before it is sent: once `guard` refuses (shutdown, or this process lost the writer
    /// lease), nothing more is sent; the records not sent are left out of the answer, and when
    /// none was sent the refusal is the error (`SourceError::NotSent`).
    pub async fn create_records(
        &self,
        records: &[NewRecord],
        guard: &WriteGuard,
    ) -> Result<Vec<(String, Created)>, SourceError> {
        let Some(create) = &self.config.create else {
            return Ok(records
                .iter()
                .map(|r| {
                    let reason = "creating records is not configured (source.rest.create)";
                    (r.quo_id.clone(), Created::Refused(reason.into()))
                })
                .collect());
        };
        self.prepare().await?;
        // Checked valid when the configuration was loaded.
        let headers = create.headers.header_map().unwrap_or_default();
        let url = self.url(&create.path)?;
        let method = match create.method {
            CreateMethod::Post => Method::POST,
            CreateMethod::Put => Method::PUT,
        };
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let mut body = Value::Object(Map::new());
            let built = self
                .apply_fields(&mut body, &record.fields, Some(record.updated_at))
                .and_then(|()| wrap(body, &create.wrap_pointer, create.wrap_array));
            let body = match built {
                Ok(body) => body,
                Err(reason) => {
                    out.push((record.quo_id.clone(), Created::Refused(reason)));
                    continue;
                }
            };
            let reply = match self
                .send_once(method.clone(), &url, Some(&body), &headers, guard)
                .await
            {
                Ok(reply) => reply,
                Err(e @ (SourceError::Unauthorized { .. } | SourceError::Cancelled)) => {
                    return Err(e);
                }
                Err(e @ SourceError::NotSent(_)) if out.is_empty() => return Err(e),
                Err(e @ SourceError::NotSent(_)) => {
                    tracing::warn!(event = "crm_write_stopped", error = %e, left = records.len() - out.len(), "CRM creates stopped before the next one");
                    return Ok(out);
                }
                Err(e) => {
                    out.push((record.quo_id.clone(), Created::Unknown(e.to_string())));
                    continue;
                }
            };
            let shown = format!("{method} {}", self.shown(&url));
            let created = if reply.status.is_success() {
                let id = serde_json::from_slice::<Value>(&reply.body)
                    .ok()
                    .and_then(|answer| match answer.pointer(&create.id_pointer) {
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(Value::Number(n)) => Some(n.to_string()),
                        _ => None,
                    })
                    .and_then(|id| ExternalId::parse(&id).ok());
                match id {
                    Some(id) => Created::Made(id),
                    None => Created::Unknown(format!(
                        "{shown}: the answer has no id at {:?} (create.id_pointer)",
                        create.id_pointer
                    )),
                }
            } else if reply.status.is_client_error() {
                Created::Refused(format!("{shown}: {}", reply.message()))
            } else {
                Created::Unknown(format!("{shown}: {}", reply.message()))
            };
            out.push((record.quo_id.clone(), created));
        }
        Ok(out)
    }
}
