//! `[source.rest.update]`: how reverse-path changes are written back to the CRM (method, record
//! paths, where the record sits in write bodies, extra headers).

use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::RestConfigError;

/// `PATCH` or `PUT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum UpdateMethod {
    /// Send only the changed fields (the record is fetched first only for array fields).
    #[default]
    Patch,
    /// Send the whole record, fetched first with `GET get_path`.
    Put,
}

/// `[source.rest.update]`: how reverse-path changes are written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// `PATCH` (default) or `PUT`.
    #[serde(default)]
    pub method: UpdateMethod,
    /// Record path with `{id}` (`/contacts/{id}`).
    pub path: String,
    /// Path to fetch one record, default `path`.
    #[serde(default)]
    pub get_path: Option<String>,
    /// Extra request headers for writes.
    #[serde(default)]
    pub headers: crate::secret_headers::HttpHeaders,
    /// Where the record sits in write bodies; "" = the body is the record.
    #[serde(default)]
    pub wrap_pointer: String,
    /// Where the record sits in `GET get_path` responses, default `wrap_pointer`.
    #[serde(default)]
    pub get_pointer: Option<String>,
    /// Send the whole (fetched) record instead of only the changes; default true for PUT,
    /// false for PATCH (for APIs whose PUT is a partial update, like Pipedrive v1).
    #[serde(default)]
    pub send_full_record: Option<bool>,
    /// Write the change time at `updated_at_pointer`, default true.
    #[serde(default = "super::yes")]
    pub set_updated_at: bool,
    /// Put the record inside a one-item array at `wrap_pointer` (Zoho: `{"data":[{…}]}`).
    #[serde(default)]
    pub wrap_array: bool,
}

impl UpdateConfig {
    /// Paths with `{id}`, pointers, and headers that are valid HTTP.
    pub(super) fn validate(
        &self,
        pointer: &dyn Fn(&str, &str, bool) -> Result<(), RestConfigError>,
    ) -> Result<(), RestConfigError> {
        let update = self;
        for (key, path) in [
            ("update.path", Some(&update.path)),
            ("update.get_path", update.get_path.as_ref()),
        ] {
            if let Some(path) = path
                && (!path.starts_with('/') || !path.contains("{id}"))
            {
                return Err(RestConfigError::new(
                    key,
                    format!("expected a path starting with `/` containing `{{id}}`, got {path:?}"),
                ));
            }
        }
        pointer("update.wrap_pointer", &update.wrap_pointer, true)?;
        if let Some(p) = &update.get_pointer {
            pointer("update.get_pointer", p, true)?;
        }
        for (name, value) in &update.headers {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                RestConfigError::new(format!("update.headers.{name}"), "not a valid header name")
            })?;
            HeaderValue::from_str(value).map_err(|_| {
                RestConfigError::new(format!("update.headers.{name}"), "not a valid header value")
            })?;
        }
        Ok(())
    }
}
