//! Write-back: applying reverse-path changes to CRM records (PATCH/PUT, fetched first when the
//! whole record or an array must be sent), and reporting each record as written, conflicted
//! or failed.

use std::ops::ControlFlow;

use chrono::SecondsFormat;
use reqwest::header::{ETAG, HeaderMap, IF_MATCH};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value};

use super::RestSource;
use super::config::{ArrayFieldConfig, UpdateConfig, UpdateMethod};
use super::pointer::{set_array_item, set_pointer, typed_like};
use super::versions::ReadVersion;
use crate::quo::encode_path_segment;
use crate::source::{CrmChange, SourceError, SourceItem, WriteGuard, WriteReport};

impl RestSource {
    /// Applies reverse-path changes: one request per record, two when the record is fetched
    /// first (PUT, array fields, or a record this process has read: it is re-checked right
    /// before the write and, when the CRM changed it since the read, not written but reported
    /// as conflicted). The fetched ETag is sent as `If-Match`. 409/412 → conflicted; other
    /// 4xx → failed.
    pub async fn write_back(&self, changes: &[CrmChange]) -> Result<WriteReport, SourceError> {
        self.write_back_guarded(changes, &WriteGuard::default())
            .await
    }

    /// [`RestSource::write_back`], each write (every attempt of it) admitted by `guard` just
    /// before it is sent, with its timeout capped by the leader's fence: once `guard` refuses,
    /// nothing more is sent and the records not written are reported as failed.
    pub async fn write_back_guarded(
        &self,
        changes: &[CrmChange],
        guard: &WriteGuard,
    ) -> Result<WriteReport, SourceError> {
        let mut report = WriteReport::default();
        let Some(update) = &self.config.update else {
            for change in changes {
                report.failed.push((
                    change.external_id.clone(),
                    "write-back is not configured (source.rest.update)".into(),
                ));
            }
            return Ok(report);
        };
        self.prepare().await?;
        // Checked valid when the configuration was loaded.
        let headers = update.headers.header_map().unwrap_or_default();
        for (i, change) in changes.iter().enumerate() {
            match self.write_one(update, &headers, change, guard).await {
                Ok(Outcome::Written) => {
                    // Our own write changed the record; the next read sets a new baseline.
                    self.versions.forget(change.external_id.as_str());
                    report.written.push(change.external_id.clone())
                }
                Ok(Outcome::Conflicted) => report.conflicted.push(change.external_id.clone()),
                Ok(Outcome::Failed(reason)) => {
                    report.failed.push((change.external_id.clone(), reason))
                }
                Err(e @ (SourceError::Unauthorized { .. } | SourceError::Cancelled)) => {
                    return Err(e);
                }
                Err(e @ SourceError::NotSent(_)) => {
                    tracing::warn!(event = "crm_write_stopped", error = %e, left = changes.len() - i, "CRM write-back stopped before its next write");
                    for rest in &changes[i..] {
                        report
                            .failed
                            .push((rest.external_id.clone(), e.to_string()));
                    }
                    return Ok(report);
                }
                Err(e) => report
                    .failed
                    .push((change.external_id.clone(), e.to_string())),
            }
        }
        Ok(report)
    }

    pub(super) async fn write_one(
        &self,
        update: &UpdateConfig,
        headers: &HeaderMap,
        change: &CrmChange,
        guard: &WriteGuard,
    ) -> Result<Outcome, SourceError> {
        let id = change.external_id.as_str();
        let path = update.path.replace("{id}", &encode_path_segment(id));
        let url = self.url(&path)?;
        let touches_array = change
            .fields
            .keys()
            .any(|name| self.array_for(name).is_some());
        let mut headers = headers.clone();
        let full = update
            .send_full_record
            .unwrap_or(update.method == UpdateMethod::Put);
        let baseline = self.versions.get(id);
        let record = if full || touches_array || baseline.is_some() {
            match self
                .record_to_write(update, change, full, baseline, &mut headers)
                .await?
            {
                ControlFlow::Continue(record) => record,
                ControlFlow::Break(outcome) => return Ok(outcome),
            }
        } else {
            Value::Object(Map::new())
        };
        self.send_update(update, &url, record, &headers, change, guard)
            .await
    }

    /// The record a write starts from, fetched first: the whole record (`full`), or only the
    /// arrays the change touches, complete with their other items. The fetched ETag goes into
    /// `headers` as `If-Match`. Breaks with the outcome when the fetch fails, or when the CRM
    /// changed the record since this process read it (`baseline`).
    async fn record_to_write(
        &self,
        update: &UpdateConfig,
        change: &CrmChange,
        full: bool,
        baseline: Option<ReadVersion>,
        headers: &mut HeaderMap,
    ) -> Result<ControlFlow<Outcome, Value>, SourceError> {
        let id = change.external_id.as_str();
        let get_path = update
            .get_path
            .as_deref()
            .unwrap_or(&update.path)
            .replace("{id}", &encode_path_segment(id));
        let get_url = self.url(&get_path)?;
        let reply = self
            .send(Method::GET, &get_url, None, &HeaderMap::new())
            .await?;
        if !reply.status.is_success() {
            return Ok(ControlFlow::Break(Outcome::Failed(format!(
                "GET {}: {}",
                self.shown(&get_url),
                reply.message()
            ))));
        }
        let body: Value = serde_json::from_slice(&reply.body).map_err(|e| {
            SourceError::Crm(format!(
                "GET {}: the response is not valid JSON ({e})",
                self.shown(&get_url)
            ))
        })?;
        if let Some(etag) = reply.headers.get(ETAG) {
            headers.insert(IF_MATCH, etag.clone());
        }
        let get_pointer = update
            .get_pointer
            .as_deref()
            .unwrap_or(&update.wrap_pointer);
        let Some(Value::Object(current)) = body.pointer(get_pointer) else {
            return Ok(ControlFlow::Break(Outcome::Failed(format!(
                "GET {}: no record object at {get_pointer:?} (update.get_pointer)",
                self.shown(&get_url),
            ))));
        };
        if let Some(baseline) = baseline {
            let location = format!("GET {}", self.shown(&get_url));
            if let Some(outcome) = self.changed_since_read(id, current, baseline, location) {
                return Ok(ControlFlow::Break(outcome));
            }
        }
        Ok(ControlFlow::Continue(if full {
            Value::Object(current.clone())
        } else {
            self.touched_arrays(change, &body, get_pointer)?
        }))
    }

    /// The outcome of a write whose record the CRM changed since this cycle read it
    /// (`baseline`: not overwritten, retried next cycle), or that cannot be checked; `None`
    /// when the record is as read.
    fn changed_since_read(
        &self,
        id: &str,
        current: &Map<String, Value>,
        baseline: ReadVersion,
        location: String,
    ) -> Option<Outcome> {
        match self.parse_record(&Value::Object(current.clone()), location) {
            SourceItem::Record(now) if ReadVersion::of(&now) == baseline => None,
            SourceItem::Record(_) => {
                tracing::info!(
                    id,
                    "CRM record changed since this cycle read it; not overwriting, retried next cycle"
                );
                Some(Outcome::Conflicted)
            }
            SourceItem::Bad(bad) => Some(Outcome::Failed(format!(
                "{}: cannot check the record before writing: {}",
                bad.location, bad.reason
            ))),
        }
    }

    /// Only the arrays the change touches, taken whole from the fetched `body` (the record at
    /// `get_pointer`), so their other items are sent back as they are.
    fn touched_arrays(
        &self,
        change: &CrmChange,
        body: &Value,
        get_pointer: &str,
    ) -> Result<Value, SourceError> {
        let mut partial = Value::Object(Map::new());
        for name in change.fields.keys() {
            if let Some((array, _)) = self.array_for(name)
                && let Some(items) = body.pointer(&format!("{get_pointer}{}", array.pointer))
            {
                set_pointer(&mut partial, &array.pointer, items.clone())
                    .map_err(SourceError::Crm)?;
            }
        }
        Ok(partial)
    }

    /// Writes the change's fields into `record` and sends it (PATCH or PUT, admitted by
    /// `guard`): written, conflicted (409/412: retried next cycle) or failed.
    async fn send_update(
        &self,
        update: &UpdateConfig,
        url: &Url,
        mut record: Value,
        headers: &HeaderMap,
        change: &CrmChange,
        guard: &WriteGuard,
    ) -> Result<Outcome, SourceError> {
        let id = change.external_id.as_str();
        let stamp = update.set_updated_at.then_some(change.updated_at);
        if let Err(reason) = self.apply_fields(&mut record, &change.fields, stamp) {
            return Ok(Outcome::Failed(reason));
        }
        let body = match wrap(record, &update.wrap_pointer, update.wrap_array) {
            Ok(body) => body,
            Err(reason) => return Ok(Outcome::Failed(reason)),
        };
        let method = match update.method {
            UpdateMethod::Patch => Method::PATCH,
            UpdateMethod::Put => Method::PUT,
        };
        let reply = self
            .send_guarded(method.clone(), url, Some(&body), headers, guard)
            .await?;
        let status = reply.status;
        Ok(if status.is_success() {
            tracing::debug!(id, method = %method, "CRM record updated");
            Outcome::Written
        } else if status == StatusCode::CONFLICT || status == StatusCode::PRECONDITION_FAILED {
            tracing::info!(
                id,
                status = status.as_u16(),
                "CRM refused the update as conflicting; retried next cycle"
            );
            Outcome::Conflicted
        } else {
            Outcome::Failed(format!("{method} {}: {}", self.shown(url), reply.message()))
        })
    }

    /// Writes raw field values into a record by the configured pointers (typed like the value
    /// already there) and labelled arrays, and the change time at `updated_at_pointer` when
    /// `stamp` is given: the body of a write-back and of a create alike.
    pub(super) fn apply_fields(
        &self,
        record: &mut Value,
        fields: &std::collections::BTreeMap<String, String>,
        stamp: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), String> {
        for (name, value) in fields {
            if let Some(pointer) = self.config.fields.get(name) {
                let typed = typed_like(record.pointer(pointer), value);
                set_pointer(record, pointer, typed)?;
            } else if let Some((array, label)) = self.array_for(name) {
                set_array_item(record, array, label, value)?;
            } else {
                return Err(format!(
                    "no pointer configured for field {name:?} (source.rest.fields or source.rest.arrays)"
                ));
            }
        }
        if let (Some(at), Some(pointer)) = (stamp, &self.config.updated_at_pointer) {
            let stamp = Value::String(at.to_rfc3339_opts(SecondsFormat::Millis, true));
            set_pointer(record, pointer, stamp)?;
        }
        Ok(())
    }

    /// The array config and label a flattened field name (`email.work`) refers to.
    pub(super) fn array_for<'a>(
        &'a self,
        name: &'a str,
    ) -> Option<(&'a ArrayFieldConfig, &'a str)> {
        self.config.arrays.iter().find_map(|array| {
            name.strip_prefix(array.prefix.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .filter(|label| !label.is_empty())
                .map(|label| (array, label))
        })
    }
}

/// A record placed in a request body: at `wrap_pointer` ("" = the body is the record), inside
/// a one-item array when `wrap_array`.
pub(super) fn wrap(record: Value, wrap_pointer: &str, wrap_array: bool) -> Result<Value, String> {
    let record = if wrap_array {
        Value::Array(vec![record])
    } else {
        record
    };
    if wrap_pointer.is_empty() {
        return Ok(record);
    }
    let mut body = Value::Object(Map::new());
    set_pointer(&mut body, wrap_pointer, record)?;
    Ok(body)
}

pub(super) enum Outcome {
    Written,
    Conflicted,
    Failed(String),
}
