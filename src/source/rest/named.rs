//! Reading only the records a CRM change notice names (`source.rest.webhook.ids_pointer`):
//! the ids taken from a signed `POST /webhooks/crm` body, stored in the ledger by whichever
//! replica received it (`crm_notices`), taken by the leader's next read, and that read fetching
//! each with the record GET instead of listing.
//!
//! Why it is shaped like this:
//! - a named read is *partial*: it is never `complete` (no deletion may be inferred from a record
//!   it did not fetch) and it does not move the incremental high-water mark (a record changed
//!   without a notice must still come with the next list read);
//! - a list read stays the safety net: it replaces the named read when no list read has run in
//!   this process yet, when the last one is older than `schedule.interval` (notices arriving
//!   more often than that would otherwise starve it), when a periodic full read is due, when the
//!   notices named more than `MAX_NAMED_IDS` ids, or after a named read failed;
//! - a body is hostile until checked: the ids are counted while they are collected and the
//!   collection stops past the cap.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use super::RestSource;
use super::records::json_type;
use crate::domain::ExternalId;
use crate::ledger::Ledger;
use crate::quo::encode_path_segment;
use crate::source::{BadRecord, ReadRequest, ReadSummary, SourceError, SourceItem};

/// Most ids fetched one by one in a cycle; more pending ids make that cycle a list read.
pub const MAX_NAMED_IDS: usize = 100;

/// Until the service says otherwise (`schedule.interval`'s default): how old the last list read
/// may be for a named read to replace the next one.
pub(super) const DEFAULT_LIST_READ_EVERY: Duration = Duration::from_secs(300);

/// What the change notices since the last read asked for.
#[derive(Debug, Default)]
pub(super) struct Pending {
    ids: BTreeSet<String>,
    /// A notice named too many ids, or a named read failed: the next read lists.
    list: bool,
}

/// The named-read state of one REST source.
#[derive(Debug)]
pub(super) struct NamedReads {
    pending: Mutex<Pending>,
    /// Where stored notices are taken from: the leader's ledger while it runs cycles (a `plan`
    /// or a standby takes none).
    notices: Mutex<Option<Ledger>>,
    last_list_read: Mutex<Option<Instant>>,
    list_read_every_ms: std::sync::atomic::AtomicU64,
    /// Whether the last read was a named one (the planner keeps the high-water mark then).
    last_was_named: std::sync::atomic::AtomicBool,
}

impl Default for NamedReads {
    fn default() -> Self {
        Self {
            pending: Mutex::default(),
            notices: Mutex::default(),
            last_list_read: Mutex::default(),
            list_read_every_ms: (DEFAULT_LIST_READ_EVERY.as_millis() as u64).into(),
            last_was_named: false.into(),
        }
    }
}

/// What one accepted notice contributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeIds {
    /// The body named these many ids; the next read fetches just the pending ones.
    Named(usize),
    /// No ids in the body (or no `ids_pointer`): the next read is a list read, as before.
    None,
    /// More than `MAX_NAMED_IDS`, or something at `ids_pointer` that is not an id: the next
    /// read is a list read.
    Refused,
}

impl NamedReads {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notices(&self) -> std::sync::MutexGuard<'_, Option<Ledger>> {
        self.notices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Pending {
    /// Adds what one notice asked for: its ids, or a list read (`None`).
    fn add(&mut self, ids: Option<Vec<String>>) {
        match ids {
            Some(ids) => {
                self.ids.extend(ids);
                if self.ids.len() > MAX_NAMED_IDS {
                    self.list = true;
                }
            }
            None => self.list = true,
        }
    }
}

impl RestSource {
    /// Reads the CRM into `tx`: the records pending change notices named, when that replaces
    /// the list read (see the module comment), else the list call (`read_list`).
    pub async fn read(
        &self,
        request: ReadRequest,
        tx: mpsc::Sender<SourceItem>,
    ) -> Result<ReadSummary, SourceError> {
        self.take_stored_notices().await;
        let named = self.take_named(request);
        self.named
            .last_was_named
            .store(named.is_some(), Ordering::Relaxed);
        match named {
            Some(ids) => self.read_named(ids, tx).await,
            None => {
                let summary = self.read_list(request, tx).await?;
                *self
                    .named
                    .last_list_read
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
                Ok(summary)
            }
        }
    }

    /// Whether the last read fetched only named records (it says nothing of the others).
    pub fn last_read_was_named(&self) -> bool {
        self.named.last_was_named.load(Ordering::Relaxed)
    }

    /// How old the last list read may be for a named read to replace the next one: the
    /// service's `schedule.interval`, so notices never delay the periodic list read.
    pub fn set_list_read_every(&self, every: Duration) {
        self.named
            .list_read_every_ms
            .store(every.as_millis() as u64, Ordering::Relaxed);
    }

    /// Lets this source take the notices stored in `ledger` (the leader's, while it runs
    /// cycles); `None` stops it.
    pub fn take_notices_from(&self, ledger: Option<Ledger>) {
        *self.named.notices() = ledger;
    }

    /// What a signed notice asks the next read for: the ids it names (`webhook.ids_pointer`),
    /// or `None`, a list read (no `ids_pointer`, no ids, too many, or something at the pointer
    /// that is not an id, which is logged).
    pub fn notice_ids(&self, body: &[u8]) -> (NoticeIds, Option<Vec<String>>) {
        let Some(pointer) = self
            .config
            .webhook
            .as_ref()
            .and_then(|w| w.ids_pointer.as_deref())
        else {
            return (NoticeIds::None, None);
        };
        let ids = serde_json::from_slice::<Value>(body)
            .map_err(|e| format!("the body is not JSON ({e})"))
            .and_then(|body| ids_at(&body, pointer, MAX_NAMED_IDS));
        match ids {
            Ok(ids) if ids.is_empty() => (NoticeIds::None, None),
            Ok(ids) => (NoticeIds::Named(ids.len()), Some(ids)),
            Err(reason) => {
                // The reason may quote the body: keep a hostile one from flooding the log.
                let reason: String = reason.chars().take(200).collect();
                tracing::warn!(
                    event = "crm_webhook_ids_refused",
                    pointer,
                    reason = %reason,
                    "CRM webhook ids not usable (source.rest.webhook.ids_pointer); the next read is a list read"
                );
                (NoticeIds::Refused, None)
            }
        }
    }

    /// Queues what a signed notice asks for in this process's memory (a source without a
    /// ledger to store notices in).
    pub fn queue_notice(&self, body: &[u8]) -> NoticeIds {
        let (kind, ids) = self.notice_ids(body);
        self.named.pending().add(ids);
        kind
    }

    /// Moves the notices stored in the ledger (by any replica) into this read's pending ids.
    /// A ledger that cannot be read makes this read a list read, which covers every notice.
    async fn take_stored_notices(&self) {
        let Some(ledger) = self.named.notices().clone() else {
            return;
        };
        match ledger.crm_notices_take().await {
            Ok(notices) => {
                let mut pending = self.named.pending();
                for ids in notices {
                    pending.add(ids);
                }
            }
            Err(e) => {
                tracing::warn!(event = "crm_notices_unreadable", error = %e, "cannot take the stored CRM notices; this read is a list read");
                self.named.pending().list = true;
            }
        }
    }

    /// The pending ids, when they replace this read's list call; taking them either way (a
    /// list read covers them).
    fn take_named(&self, request: ReadRequest) -> Option<Vec<ExternalId>> {
        let pending = std::mem::take(&mut *self.named.pending());
        if pending.list || pending.ids.is_empty() {
            return None;
        }
        // An incremental source asked for everything: a periodic or forced full read.
        if self.supports_incremental() && request.since.is_none() {
            return None;
        }
        let every = Duration::from_millis(self.named.list_read_every_ms.load(Ordering::Relaxed));
        let recent = self
            .named
            .last_list_read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < every);
        if !recent {
            return None;
        }
        // `queue_notice` parsed every id; a pending id that no longer parses cannot happen.
        pending
            .ids
            .iter()
            .map(|id| ExternalId::parse(id).ok())
            .collect()
    }

    /// Fetches each named record with the record GET. A 404 is logged and skipped (deletions
    /// are decided by full reads under `sync.on_source_delete`; the next read is a full one); any
    /// other failure fails the read and makes the next one a list read.
    async fn read_named(
        &self,
        ids: Vec<ExternalId>,
        tx: mpsc::Sender<SourceItem>,
    ) -> Result<ReadSummary, SourceError> {
        let result = self.fetch_named(&ids, tx).await;
        if result.is_err() {
            self.named.pending().list = true;
        }
        result
    }

    async fn fetch_named(
        &self,
        ids: &[ExternalId],
        tx: mpsc::Sender<SourceItem>,
    ) -> Result<ReadSummary, SourceError> {
        let path = self.config.named_get_path().ok_or_else(|| {
            SourceError::Config("source.rest.webhook.get_path: required with ids_pointer".into())
        })?;
        let pointer = self.config.named_get_pointer();
        self.prepare().await?;
        tracing::info!(
            event = "crm_named_read",
            ids = ids.len(),
            "reading only the records the CRM webhook named"
        );
        let mut items = 0u64;
        for id in ids {
            let url = self.url(&path.replace("{id}", &encode_path_segment(id.as_str())))?;
            let location = format!("GET {}", self.shown(&url));
            let reply = self
                .send(Method::GET, &url, None, &Default::default())
                .await?;
            if reply.status == StatusCode::NOT_FOUND || reply.status == StatusCode::GONE {
                tracing::info!(
                    event = "crm_named_record_missing",
                    external_id = %id,
                    status = reply.status.as_u16(),
                    "a record the CRM webhook named is not there; skipped (the next read is a full read, where sync.on_source_delete decides)"
                );
                self.full_read_due.store(true, Ordering::Relaxed);
                continue;
            }
            if !reply.status.is_success() {
                return Err(SourceError::Crm(format!(
                    "{location} failed: {}",
                    reply.message()
                )));
            }
            let item = match serde_json::from_slice::<Value>(&reply.body) {
                Err(e) => bad(
                    id,
                    &location,
                    format!("the response is not valid JSON ({e})"),
                    &reply.body,
                ),
                Ok(body) => match body.pointer(pointer) {
                    Some(record @ Value::Object(_)) => self.parse_record(record, location),
                    other => bad(
                        id,
                        &location,
                        format!(
                            "no record object at {pointer:?} (webhook.get_pointer), found {}",
                            other.map_or("nothing", json_type)
                        ),
                        &reply.body,
                    ),
                },
            };
            if let SourceItem::Record(record) = &item {
                self.versions.record(record);
            }
            tx.send(item).await.map_err(|_| SourceError::Cancelled)?;
            items += 1;
        }
        Ok(ReadSummary {
            complete: false,
            items,
        })
    }
}

fn bad(id: &ExternalId, location: &str, reason: String, raw: &[u8]) -> SourceItem {
    SourceItem::Bad(BadRecord {
        location: location.to_string(),
        external_id: Some(id.to_string()),
        reason,
        raw: String::from_utf8_lossy(raw).chars().take(2000).collect(),
        blame: None,
    })
}

/// The ids at `pointer` in `body`: a string, a number or an array of them; a `*` segment walks
/// every item of the array there. Stops with an error past `cap` ids or on anything else.
pub(super) fn ids_at(body: &Value, pointer: &str, cap: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    collect(body, pointer, cap, &mut out)?;
    let mut seen = BTreeSet::new();
    out.retain(|id| seen.insert(id.clone()));
    Ok(out)
}

fn collect(value: &Value, pointer: &str, cap: usize, out: &mut Vec<String>) -> Result<(), String> {
    if let Some(at) = pointer.find("/*").filter(|&at| {
        let rest = &pointer[at + 2..];
        rest.is_empty() || rest.starts_with('/')
    }) {
        let (head, rest) = (&pointer[..at], &pointer[at + 2..]);
        return match value.pointer(head) {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Array(items)) => {
                for item in items {
                    collect(item, rest, cap, out)?;
                }
                Ok(())
            }
            Some(other) => Err(format!(
                "{head:?} is {}, expected an array for `*`",
                json_type(other)
            )),
        };
    }
    let mut push = |value: &Value| -> Result<(), String> {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(format!(
                    "found {} where an id (text or number) was expected",
                    json_type(other)
                ));
            }
        };
        let id = ExternalId::parse(&text).map_err(|e| e.to_string())?;
        if out.len() >= cap {
            return Err(format!("more than {cap} ids"));
        }
        out.push(id.as_str().to_string());
        Ok(())
    };
    match value.pointer(pointer) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) => items.iter().try_for_each(&mut push),
        Some(one) => push(one),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::rest::test_support::*;
    use chrono::Utc;
    use serde_json::json;

    fn source() -> RestSource {
        RestSource::from_table(&table(&format!(
            "{MINIMAL}\nupdated_since_param = \"since\"\n[webhook]\nsecret = \"s\"\nids_pointer = \"/ids\"\nget_path = \"/c/{{id}}\"\n"
        )))
        .unwrap()
    }

    fn notice(ids: &[String]) -> Vec<u8> {
        serde_json::to_vec(&json!({ "ids": ids })).unwrap()
    }

    #[test]
    fn named_ids_replace_only_a_recent_incremental_list_read() {
        let source = source();
        let incremental = ReadRequest {
            since: Some(Utc::now()),
        };
        let ab = notice(&["a".into(), "b".into()]);
        assert_eq!(source.queue_notice(&ab), NoticeIds::Named(2));
        assert!(source.take_named(incremental).is_none(), "no list read yet");
        *source.named.last_list_read.lock().unwrap() = Some(Instant::now());
        assert!(
            source.take_named(incremental).is_none(),
            "taken by the list read"
        );

        source.queue_notice(&ab);
        let ids = source.take_named(incremental).unwrap();
        assert_eq!(
            ids.iter().map(ExternalId::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );

        source.queue_notice(&ab);
        assert!(
            source.take_named(ReadRequest { since: None }).is_none(),
            "a full read is due"
        );
        source.set_list_read_every(Duration::ZERO);
        source.queue_notice(&ab);
        assert!(
            source.take_named(incremental).is_none(),
            "the list read is due"
        );
        source.set_list_read_every(Duration::from_secs(3600));

        // Notices add up; past the cap together, the next read lists.
        let first: Vec<String> = (0..60).map(|i| format!("a{i}")).collect();
        let second: Vec<String> = (0..60).map(|i| format!("b{i}")).collect();
        assert_eq!(source.queue_notice(&notice(&first)), NoticeIds::Named(60));
        assert_eq!(source.queue_notice(&notice(&second)), NoticeIds::Named(60));
        assert!(source.take_named(incremental).is_none());

        assert_eq!(source.queue_notice(b"{not json"), NoticeIds::Refused);
        source.queue_notice(&ab);
        assert!(
            source.take_named(incremental).is_none(),
            "a refused notice lists"
        );
        assert_eq!(source.queue_notice(b"{}"), NoticeIds::None);
        assert!(source.take_named(incremental).is_none());
    }

    #[test]
    fn ids_come_as_one_a_list_or_through_a_star() {
        let body = json!({"ids": ["a", 7, "a"], "data": [{"id": "x"}], "events": [{"id": 1}, {"id": "2"}, {}]});
        assert_eq!(ids_at(&body, "/ids", 10).unwrap(), ["a", "7"]);
        assert_eq!(ids_at(&body, "/data/0/id", 10).unwrap(), ["x"]);
        assert_eq!(ids_at(&body, "/events/*/id", 10).unwrap(), ["1", "2"]);
        assert_eq!(ids_at(&body, "/missing", 10).unwrap(), Vec::<String>::new());
        assert_eq!(ids_at(&json!(["r1", "r2"]), "", 10).unwrap(), ["r1", "r2"]);
    }

    #[test]
    fn hostile_bodies_are_refused() {
        let many: Vec<u32> = (0..1000).collect();
        let err = ids_at(&json!({ "ids": many }), "/ids", 100).unwrap_err();
        assert_eq!(err, "more than 100 ids");
        assert!(ids_at(&json!({"ids": [{"id": 1}]}), "/ids", 10).is_err());
        assert!(ids_at(&json!({"ids": [""]}), "/ids", 10).is_err());
        assert!(ids_at(&json!({"events": {"id": 1}}), "/events/*/id", 10).is_err());
    }
}
