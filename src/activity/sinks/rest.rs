//! `[activity.rest]`: one CRM object per activity (a Salesforce Task, a HubSpot call, a Zoho
//! Call, a Pipedrive activity), written through `[source.rest]`'s connection (its base URL,
//! credentials and rate limit).
//!
//! A create is sent once where it could have landed: a lost answer, a 5xx or an answer without
//! an id is *ambiguous*, and the pipeline settles it by the lookup before any second create.
//! Updates and lookups are idempotent and retried as usual.

use std::sync::Arc;

use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::template::{fill_strings, path, render};
use super::{Found, Outcome, Outgoing, SinkError};
use crate::activity::config::{RestSinkConfig, body_json};
use crate::source::{Source, SourceError, WriteGuard};

/// Creates in flight at once (the CRM's own limiter spaces them).
const IN_FLIGHT: usize = 4;

/// The REST sink.
#[derive(Debug, Clone)]
pub struct RestSink {
    config: Arc<RestSinkConfig>,
    source: Arc<Source>,
    body: Value,
    update_body: Value,
    lookup_body: Option<Value>,
    headers: HeaderMap,
}

fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(300).collect()
}

impl RestSink {
    /// The sink of `config`, writing through `source` (which must be the REST source).
    pub fn new(config: &RestSinkConfig, source: Arc<Source>) -> Result<Self, SinkError> {
        if !matches!(&*source, Source::Rest(_)) {
            return Err(SinkError::Config(
                "activity.rest needs source.kind = \"rest\"".into(),
            ));
        }
        let headers = config.headers.header_map().map_err(|name| {
            SinkError::Config(format!("activity.rest.headers.{name}: not a valid header"))
        })?;
        Ok(Self {
            body: body_json(&config.body),
            update_body: config
                .update_body
                .as_ref()
                .map(body_json)
                .unwrap_or_else(|| body_json(&config.body)),
            lookup_body: config.lookup_body.as_ref().map(body_json),
            config: Arc::new(config.clone()),
            source,
            headers,
        })
    }

    /// One request; a write (`guard`) is admitted by the leader's fence before each attempt.
    async fn exchange(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        (guard, once): (Option<&WriteGuard>, bool),
    ) -> Result<(u16, Vec<u8>), SourceError> {
        let Source::Rest(rest) = &*self.source else {
            return Err(SourceError::Config("not a REST source".into()));
        };
        rest.exchange(method, path, body, &self.headers, (guard, once))
            .await
    }

    async fn create_one(&self, item: &Outgoing, guard: &WriteGuard) -> Outcome {
        let record = item.doc.text("record_id");
        let target = path(&self.config.path, &item.activity_id, &record, None);
        let body = render(&self.body, &item.doc.0, self.config.omit_nulls);
        match self
            .exchange(
                self.config.method.as_reqwest(),
                &target,
                Some(&body),
                (Some(guard), true),
            )
            .await
        {
            Ok((status, bytes)) if (200..300).contains(&status) => {
                let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                match id_text(answer.pointer(&self.config.id_pointer)) {
                    Some(crm_id) => Outcome::Written { crm_id },
                    None => Outcome::Ambiguous(format!(
                        "HTTP {status} without an id at {} (activity.rest.id_pointer)",
                        self.config.id_pointer
                    )),
                }
            }
            // A conflict may mean the object exists (a unique external key): look it up.
            Ok((409, bytes)) => Outcome::Ambiguous(format!("HTTP 409: {}", snippet(&bytes))),
            Ok((status, bytes)) if status >= 500 || status == 429 => {
                Outcome::Ambiguous(format!("HTTP {status}: {}", snippet(&bytes)))
            }
            Ok((status, bytes)) => Outcome::Refused(format!("HTTP {status}: {}", snippet(&bytes))),
            Err(SourceError::NotSent(why)) => Outcome::NotSent(why.to_string()),
            Err(
                e @ (SourceError::Unauthorized { .. } | SourceError::CredentialsRefused { .. }),
            ) => Outcome::Refused(e.to_string()),
            Err(e) => Outcome::Ambiguous(e.to_string()),
        }
    }

    /// Creates one object per item (a few at once).
    pub async fn create(&self, items: &[Outgoing], guard: &WriteGuard) -> Vec<Outcome> {
        let writes: Vec<_> = items
            .iter()
            .map(|item| self.create_one(item, guard))
            .collect();
        futures::stream::iter(writes)
            .buffered(IN_FLIGHT)
            .collect()
            .await
    }

    async fn update_one(&self, item: &Outgoing, guard: &WriteGuard) -> Outcome {
        let Some(update_path) = &self.config.update_path else {
            return Outcome::Written {
                crm_id: item.crm_id.clone().unwrap_or_default(),
            };
        };
        let record = item.doc.text("record_id");
        let target = path(
            update_path,
            &item.activity_id,
            &record,
            item.crm_id.as_deref(),
        );
        let body = render(&self.update_body, &item.doc.0, self.config.omit_nulls);
        match self
            .exchange(
                self.config.update_method.as_reqwest(),
                &target,
                Some(&body),
                (Some(guard), false),
            )
            .await
        {
            Ok((status, _)) if (200..300).contains(&status) => Outcome::Written {
                crm_id: item.crm_id.clone().unwrap_or_default(),
            },
            Ok((404 | 410, _)) => Outcome::Missing,
            Ok((status, bytes)) => Outcome::Refused(format!("HTTP {status}: {}", snippet(&bytes))),
            Err(SourceError::NotSent(why)) => Outcome::NotSent(why.to_string()),
            Err(e) => Outcome::Refused(e.to_string()),
        }
    }

    /// Brings existing objects up to date (later enrichment).
    pub async fn update(&self, items: &[Outgoing], guard: &WriteGuard) -> Vec<Outcome> {
        let writes: Vec<_> = items
            .iter()
            .map(|item| self.update_one(item, guard))
            .collect();
        futures::stream::iter(writes)
            .buffered(IN_FLIGHT)
            .collect()
            .await
    }

    /// Finds the object made for `activity_id`, if the CRM has one.
    pub async fn lookup(&self, activity_id: &str) -> Found {
        let (Some(lookup_path), Some(pointer)) =
            (&self.config.lookup_path, &self.config.lookup_id_pointer)
        else {
            return Found::Unknown("no lookup is configured (activity.rest.lookup_path)".into());
        };
        let target = path(lookup_path, activity_id, "", None);
        let body = self
            .lookup_body
            .as_ref()
            .map(|b| fill_strings(b, "{activity_id}", activity_id));
        match self
            .exchange(
                self.config.lookup_method.as_reqwest(),
                &target,
                body.as_ref(),
                (None, false),
            )
            .await
        {
            Ok((404 | 204, _)) => Found::No,
            Ok((status, bytes)) if (200..300).contains(&status) => {
                let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                match id_text(answer.pointer(pointer)) {
                    Some(id) => Found::Yes(id),
                    None => Found::No,
                }
            }
            Ok((status, bytes)) => Found::Unknown(format!("HTTP {status}: {}", snippet(&bytes))),
            Err(e) => Found::Unknown(e.to_string()),
        }
    }

    /// Whether an interrupted create can be settled by a lookup.
    pub fn has_lookup(&self) -> bool {
        self.config.has_lookup()
    }

    /// Whether enrichment can be written.
    pub fn can_update(&self) -> bool {
        self.config.update_path.is_some()
    }

    /// A link to the CRM object (`activity.rest.link`).
    pub fn link(&self, crm_id: &str) -> Option<String> {
        self.config
            .link
            .as_ref()
            .map(|l| l.replace("{crm_id}", crm_id))
    }

    /// `POST /services/data/…/Task` and friends, for logs and `status`.
    pub fn describe(&self) -> String {
        format!("{:?} {}", self.config.method, self.config.path)
    }
}
