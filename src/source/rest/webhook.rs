//! `[source.rest.webhook]`: the settings of `POST /webhooks/crm` (signature, optional signed
//! timestamp, size limit, and the optional ids in the body with the record GET that fetches
//! them), their defaults and their validation, apart from the rest of the table because they
//! belong to one feature.

use std::path::PathBuf;

use reqwest::header::HeaderName;
use secrecy::SecretString;
use serde::Deserialize;

use super::config::{RestConfigError, RestSourceConfig};

/// `[source.rest.webhook]`: the CRM's change notices.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The HMAC-SHA256 key the CRM signs bodies with.
    #[serde(default)]
    pub secret: Option<SecretString>,
    /// An environment variable holding it.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// A file holding it (trimmed).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The header carrying `sha256=<hex>`, default `X-Signature`.
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// A header carrying the delivery's time (Unix seconds or milliseconds). When set, every
    /// notice must carry it, the signature covers `<timestamp>.<body>`, a time more than five
    /// minutes from now is refused, and a delivery seen before is acknowledged without effect
    /// (replays). Without it, a captured notice can be replayed for ever.
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// Largest accepted body, default 1 MiB; larger → 413.
    #[serde(default = "default_webhook_body")]
    pub max_body_bytes: usize,
    /// JSON pointer to the changed record ids in the body (a string, a number or an array of
    /// them; a `*` segment walks an array: `/events/*/id`). With ids, only those records are
    /// fetched (`get_path`) instead of an incremental list read.
    #[serde(default)]
    pub ids_pointer: Option<String>,
    /// Path to fetch one named record, with `{id}`; default `update.get_path`, then `update.path`.
    #[serde(default)]
    pub get_path: Option<String>,
    /// Where the record sits in `get_path` responses; default `update.get_pointer`, then
    /// `update.wrap_pointer`, then "" (the body is the record).
    #[serde(default)]
    pub get_pointer: Option<String>,
}

impl RestSourceConfig {
    /// `[source.rest.webhook]`'s part of `[source.rest]` validation (run by `check-config` and
    /// at start-up; the secret is resolved later, when the source is built).
    pub(super) fn validate_webhook(
        &self,
        pointer: &dyn Fn(&str, &str, bool) -> Result<(), RestConfigError>,
    ) -> Result<(), RestConfigError> {
        let Some(webhook) = &self.webhook else {
            return Ok(());
        };
        HeaderName::from_bytes(webhook.signature_header.as_bytes()).map_err(|_| {
            RestConfigError::new("webhook.signature_header", "not a valid header name")
        })?;
        if let Some(name) = &webhook.timestamp_header {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                RestConfigError::new("webhook.timestamp_header", "not a valid header name")
            })?;
        }
        let given = usize::from(webhook.secret.is_some())
            + usize::from(webhook.secret_env.is_some())
            + usize::from(webhook.secret_file.is_some());
        if given != 1 {
            return Err(RestConfigError::new(
                "webhook.secret",
                "set exactly one of webhook.secret, webhook.secret_env, webhook.secret_file",
            ));
        }
        if webhook.max_body_bytes == 0 {
            return Err(RestConfigError::new(
                "webhook.max_body_bytes",
                "expected a whole number above 0",
            ));
        }
        if let Some(p) = &webhook.ids_pointer {
            pointer("webhook.ids_pointer", p, true)?;
            if p.split('/').skip(1).any(|s| s.contains('*') && s != "*") {
                return Err(RestConfigError::new(
                    "webhook.ids_pointer",
                    format!("`*` must be a whole segment (\"/events/*/id\"), got {p:?}"),
                ));
            }
            if self.named_get_path().is_none() {
                return Err(RestConfigError::new(
                    "webhook.get_path",
                    "required with webhook.ids_pointer when there is no [source.rest.update]: the record GET with `{id}`, like \"/contacts/{id}\"",
                ));
            }
        } else if webhook.get_path.is_some() || webhook.get_pointer.is_some() {
            return Err(RestConfigError::new(
                "webhook.ids_pointer",
                "required when webhook.get_path or webhook.get_pointer is set",
            ));
        }
        if let Some(path) = &webhook.get_path
            && (!path.starts_with('/') || !path.contains("{id}"))
        {
            return Err(RestConfigError::new(
                "webhook.get_path",
                format!("expected a path starting with `/` containing `{{id}}`, got {path:?}"),
            ));
        }
        if let Some(p) = &webhook.get_pointer {
            pointer("webhook.get_pointer", p, true)?;
        }
        Ok(())
    }

    /// The record GET for webhook-named ids: `webhook.get_path`, else `update.get_path`, else
    /// `update.path` (the same GET write-back uses).
    pub fn named_get_path(&self) -> Option<&str> {
        let update = self.update.as_ref();
        self.webhook
            .as_ref()
            .and_then(|w| w.get_path.as_deref())
            .or_else(|| update.and_then(|u| u.get_path.as_deref()))
            .or_else(|| update.map(|u| u.path.as_str()))
    }

    /// Where the record sits in the named-record GET's answer (see `WebhookConfig::get_pointer`).
    pub fn named_get_pointer(&self) -> &str {
        let update = self.update.as_ref();
        self.webhook
            .as_ref()
            .and_then(|w| w.get_pointer.as_deref())
            .or_else(|| update.and_then(|u| u.get_pointer.as_deref()))
            .or_else(|| update.map(|u| u.wrap_pointer.as_str()))
            .unwrap_or("")
    }
}

fn default_signature_header() -> String {
    "X-Signature".into()
}

fn default_webhook_body() -> usize {
    1 << 20
}
