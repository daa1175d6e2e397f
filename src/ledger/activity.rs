//! Activity logging's tables (migration 0012): the activity inbox (webhook deliveries, stored
//! before they are acknowledged, deduplicated by event id and `webhook-id`), one row per call or
//! message with where its CRM copy stands, and the webhooks quo-sync registered itself.
//!
//! The ledger stores an activity's facts as JSON text and knows nothing of their shape (the
//! `activity` module does): this keeps the arrow pointing one way.

use std::collections::BTreeMap;

use super::db::on_pool;
use super::{Ledger, LedgerError, now_text};

/// Where an activity's CRM copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivityState {
    /// To be written (new, or changed since the last write).
    Pending,
    /// The intent is recorded; a CRM write may be in flight. Resolved by lookup before any
    /// second create.
    Writing,
    /// The CRM holds it as the facts say.
    Written,
    /// No record, or two: kept, linked and written once the ledger learns its record.
    Held,
    /// No record, or two, with `activity.unmatched = "skip"`: counted, never written.
    Skipped,
    /// A kind `activity.kinds` does not log.
    Filtered,
}

impl ActivityState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityState::Pending => "pending",
            ActivityState::Writing => "writing",
            ActivityState::Written => "written",
            ActivityState::Held => "held",
            ActivityState::Skipped => "skipped",
            ActivityState::Filtered => "filtered",
        }
    }

    /// The state of stored text (unknown text reads as pending: it is retried, never lost).
    pub fn parse(text: &str) -> Self {
        match text {
            "writing" => ActivityState::Writing,
            "written" => ActivityState::Written,
            "held" => ActivityState::Held,
            "skipped" => ActivityState::Skipped,
            "filtered" => ActivityState::Filtered,
            _ => ActivityState::Pending,
        }
    }
}

/// A delivery to store.
#[derive(Debug, Clone)]
pub struct NewActivityEvent<'a> {
    /// Quo's event id.
    pub event_id: &'a str,
    /// The `webhook-id` header (Standard Webhooks), if any.
    pub delivery_id: Option<&'a str>,
    /// `call.completed`, …
    pub event_type: &'a str,
    /// The call or message.
    pub activity_id: &'a str,
    /// What the event says (JSON, content already dropped unless full).
    pub observation: &'a str,
}

/// A stored delivery waiting to be applied.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ActivityEventRow {
    /// Quo's event id.
    pub event_id: String,
    /// `call.completed`, …
    pub event_type: String,
    /// The call or message.
    pub activity_id: String,
    /// What the event says (JSON).
    pub observation: String,
    /// When it arrived.
    pub received_at: String,
}

/// One call or message and where its CRM copy stands.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct ActivityRow {
    /// Quo's id.
    pub activity_id: String,
    /// `call` or `message`.
    pub family: String,
    /// When it happened (RFC 3339).
    pub occurred_at: String,
    /// The merged facts (JSON; may hold content with `activity.content = "full"`).
    #[serde(skip)]
    pub facts: String,
    /// The CRM record it is linked to.
    pub record_id: Option<String>,
    /// How it was linked (`contact`, `phone`) or why not (`none`, `ambiguous`).
    pub link: Option<String>,
    /// Where it stands.
    pub state: Option<ActivityState>,
    /// Why it is held, skipped or filtered.
    pub reason: Option<String>,
    /// The CRM object's id (the activity id for CSV).
    pub crm_id: Option<String>,
    /// The CRM copy in the CRM's app, when the sink has a link template.
    pub crm_link: Option<String>,
    /// Digest of what the CRM should hold.
    pub wanted_digest: Option<String>,
    /// Digest of what the CRM holds.
    pub written_digest: Option<String>,
    /// Quo will add nothing more.
    pub is_final: bool,
    /// Failed writes since the last success.
    pub attempts: i64,
    /// Not retried before this time.
    pub next_attempt_at: Option<String>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Creates whose outcome no lookup could settle: at most one duplicate each.
    pub possible_duplicates: i64,
    /// When quo-sync first heard of it.
    pub first_seen_at: String,
    /// When the first webhook about it arrived (the start of the delay to the CRM).
    pub delivered_at: Option<String>,
    /// When the CRM first confirmed a write (the end of the delay from the delivery; a later
    /// enrichment does not move it).
    pub written_at: Option<String>,
}

impl ActivityRow {
    /// The state, pending when unset.
    pub fn state(&self) -> ActivityState {
        self.state.unwrap_or(ActivityState::Pending)
    }
}

#[derive(sqlx::FromRow)]
struct StoredActivity {
    activity_id: String,
    family: String,
    occurred_at: String,
    facts: String,
    record_id: Option<String>,
    link: Option<String>,
    state: String,
    reason: Option<String>,
    crm_id: Option<String>,
    crm_link: Option<String>,
    wanted_digest: Option<String>,
    written_digest: Option<String>,
    #[sqlx(rename = "final")]
    is_final: i64,
    attempts: i64,
    next_attempt_at: Option<String>,
    last_error: Option<String>,
    possible_duplicates: i64,
    first_seen_at: String,
    delivered_at: Option<String>,
    written_at: Option<String>,
}

impl From<StoredActivity> for ActivityRow {
    fn from(r: StoredActivity) -> Self {
        Self {
            activity_id: r.activity_id,
            family: r.family,
            occurred_at: r.occurred_at,
            facts: r.facts,
            record_id: r.record_id,
            link: r.link,
            state: Some(ActivityState::parse(&r.state)),
            reason: r.reason,
            crm_id: r.crm_id,
            crm_link: r.crm_link,
            wanted_digest: r.wanted_digest,
            written_digest: r.written_digest,
            is_final: r.is_final != 0,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            possible_duplicates: r.possible_duplicates,
            first_seen_at: r.first_seen_at,
            delivered_at: r.delivered_at,
            written_at: r.written_at,
        }
    }
}

const ACTIVITY_COLUMNS: &str = "activity_id, family, occurred_at, facts, record_id, link, state, reason, crm_id, crm_link, wanted_digest, written_digest, final, attempts, next_attempt_at, last_error, possible_duplicates, first_seen_at, delivered_at, written_at";

const UPSERT: &str = "INSERT INTO activities (activity_id, family, occurred_at, facts, record_id, link, state, reason, crm_id, wanted_digest, written_digest, final, attempts, next_attempt_at, last_error, possible_duplicates, first_seen_at, delivered_at, written_at, updated_at, crm_link)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
     ON CONFLICT (activity_id) DO UPDATE SET family = excluded.family, occurred_at = excluded.occurred_at,
       facts = excluded.facts, record_id = excluded.record_id, link = excluded.link, state = excluded.state,
       reason = excluded.reason, crm_id = excluded.crm_id, wanted_digest = excluded.wanted_digest,
       written_digest = excluded.written_digest, final = excluded.final, attempts = excluded.attempts,
       next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,
       possible_duplicates = excluded.possible_duplicates, first_seen_at = excluded.first_seen_at,
       delivered_at = excluded.delivered_at, written_at = excluded.written_at, updated_at = excluded.updated_at,
       crm_link = excluded.crm_link";

/// A webhook quo-sync registered itself. `Debug` hides the key.
#[derive(Clone, PartialEq, sqlx::FromRow)]
pub struct WebhookRegistration {
    /// `activity` or `contacts`.
    pub purpose: String,
    /// Quo's subscription id.
    pub subscription_id: String,
    /// The URL it delivers to.
    pub url: String,
    /// The event types, comma-separated.
    pub events: String,
    /// The signing key (`whsec_…`): never logged, never shown.
    pub signing_key: String,
    /// When it was registered.
    pub registered_at: String,
    /// When it was last found in order.
    pub checked_at: String,
}

impl std::fmt::Debug for WebhookRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRegistration")
            .field("purpose", &self.purpose)
            .field("subscription_id", &self.subscription_id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("signing_key", &"[REDACTED]")
            .finish()
    }
}

/// A `records` row as the phone index reads it.
#[derive(sqlx::FromRow)]
struct ChangedRecord {
    external_id: String,
    quo_id: Option<String>,
    state: String,
    snapshot: Option<String>,
    updated_at: String,
}

/// A linkable record: its id, Quo contact id, state and phone numbers (E.164).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPhones {
    /// The CRM id.
    pub external_id: String,
    /// The Quo contact id, when linked.
    pub quo_id: Option<String>,
    /// The record's state (`synced`, `deleted`, …).
    pub state: String,
    /// The snapshot's phone numbers.
    pub phones: Vec<String>,
    /// The row's `updated_at`.
    pub updated_at: String,
}

impl Ledger {
    /// Stores a delivery; `false` when its event id or `webhook-id` was already stored.
    pub async fn activity_inbox_put(&self, e: NewActivityEvent<'_>) -> Result<bool, LedgerError> {
        let done = on_pool!(&self.pool, |p| {
            sqlx::query(
            "INSERT INTO activity_inbox (event_id, delivery_id, event_type, activity_id, observation, received_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
        )
        .bind(e.event_id)
        .bind(e.delivery_id)
        .bind(e.event_type)
        .bind(e.activity_id)
        .bind(e.observation)
        .bind(now_text())
        .execute(p)
        .await
        .map(|d| d.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Deliveries not yet applied, oldest first.
    pub async fn activity_inbox_pending(
        &self,
        limit: i64,
    ) -> Result<Vec<ActivityEventRow>, LedgerError> {
        Ok(on_pool!(&self.pool, |p, pg| sqlx::query_as(if pg {
            "SELECT event_id, event_type, activity_id, observation, received_at FROM activity_inbox
             WHERE processed_at IS NULL ORDER BY received_at, seq LIMIT $1"
        } else {
            "SELECT event_id, event_type, activity_id, observation, received_at FROM activity_inbox
             WHERE processed_at IS NULL ORDER BY received_at, rowid LIMIT $1"
        })
        .bind(limit)
        .fetch_all(p)
        .await)?)
    }

    /// Deliveries waiting to be applied.
    pub async fn activity_inbox_depth(&self) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM activity_inbox WHERE processed_at IS NULL"
        )
        .fetch_one(p)
        .await)?)
    }

    /// Deletes applied deliveries processed before `before` (RFC 3339); returns how many.
    pub async fn activity_inbox_prune(&self, before: &str) -> Result<u64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query(
            "DELETE FROM activity_inbox WHERE processed_at IS NOT NULL AND processed_at < $1"
        )
        .bind(before)
        .execute(p)
        .await
        .map(|d| d.rows_affected()))?)
    }

    /// The rows of these activities (those that exist).
    pub async fn activity_rows(&self, ids: &[String]) -> Result<Vec<ActivityRow>, LedgerError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(200) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {ACTIVITY_COLUMNS} FROM activities WHERE activity_id IN ({})",
                marks.join(", ")
            );
            let rows: Vec<StoredActivity> = on_pool!(&self.pool, |p| chunk
                .iter()
                .fold(sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())), |q, id| q
                    .bind(id))
                .fetch_all(p)
                .await)?;
            out.extend(rows.into_iter().map(ActivityRow::from));
        }
        Ok(out)
    }

    /// Writes these rows and marks these deliveries applied, in one transaction: the facts
    /// and the intent they carry are committed together, or not at all.
    pub async fn activity_commit(
        &self,
        rows: &[ActivityRow],
        applied_events: &[String],
    ) -> Result<(), LedgerError> {
        if rows.is_empty() && applied_events.is_empty() {
            return Ok(());
        }
        let now = now_text();
        on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            for r in rows {
                sqlx::query(UPSERT)
                    .bind(&r.activity_id)
                    .bind(&r.family)
                    .bind(&r.occurred_at)
                    .bind(&r.facts)
                    .bind(&r.record_id)
                    .bind(&r.link)
                    .bind(r.state().as_str())
                    .bind(&r.reason)
                    .bind(&r.crm_id)
                    .bind(&r.wanted_digest)
                    .bind(&r.written_digest)
                    .bind(i64::from(r.is_final))
                    .bind(r.attempts)
                    .bind(&r.next_attempt_at)
                    .bind(&r.last_error)
                    .bind(r.possible_duplicates)
                    .bind(&r.first_seen_at)
                    .bind(&r.delivered_at)
                    .bind(&r.written_at)
                    .bind(&now)
                    .bind(&r.crm_link)
                    .execute(&mut *tx)
                    .await?;
            }
            for id in applied_events {
                sqlx::query("UPDATE activity_inbox SET processed_at = $1 WHERE event_id = $2")
                    .bind(&now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(())
        })?;
        Ok(())
    }

    async fn activities_where(
        &self,
        clause: &str,
        binds: &[&str],
        limit: i64,
    ) -> Result<Vec<ActivityRow>, LedgerError> {
        let sql = format!(
            "SELECT {ACTIVITY_COLUMNS} FROM activities WHERE {clause} LIMIT {}",
            limit.max(0)
        );
        let rows: Vec<StoredActivity> = on_pool!(&self.pool, |p| binds
            .iter()
            .fold(sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())), |q, b| q
                .bind(*b))
            .fetch_all(p)
            .await)?;
        Ok(rows.into_iter().map(ActivityRow::from).collect())
    }

    /// Activities to write now: pending and due, and every one left `writing` (an interrupted
    /// write, resolved before anything else), oldest first.
    pub async fn activities_due(
        &self,
        now: &str,
        limit: i64,
    ) -> Result<Vec<ActivityRow>, LedgerError> {
        self.activities_where(
            "state IN ('writing', 'pending') AND (next_attempt_at IS NULL OR next_attempt_at <= $1)
             ORDER BY CASE WHEN state = 'writing' THEN 0 ELSE 1 END, occurred_at",
            &[now],
            limit,
        )
        .await
    }

    /// Activities in `state`, oldest first.
    pub async fn activities_in_state(
        &self,
        state: ActivityState,
        limit: i64,
    ) -> Result<Vec<ActivityRow>, LedgerError> {
        self.activities_where("state = $1 ORDER BY occurred_at", &[state.as_str()], limit)
            .await
    }

    /// Activities of `family` since `since` that Quo may still add to, oldest first.
    pub async fn activities_unfinal(
        &self,
        family: &str,
        since: &str,
        limit: i64,
    ) -> Result<Vec<ActivityRow>, LedgerError> {
        self.activities_where(
            "final = 0 AND state <> 'skipped' AND family = $1 AND occurred_at >= $2 ORDER BY occurred_at",
            &[family, since],
            limit,
        )
        .await
    }

    /// The most recent activities, newest first (the console's panel).
    pub async fn recent_activities(&self, limit: i64) -> Result<Vec<ActivityRow>, LedgerError> {
        self.activities_where("1 = 1 ORDER BY occurred_at DESC", &[], limit)
            .await
    }

    /// When the first webhook about each of the `limit` most recent activities arrived and
    /// when the CRM first confirmed it, newest first (activities the poller alone found have no
    /// delivery and are left out): `status`'s time from the event to the CRM.
    pub async fn activity_delivery_delays(
        &self,
        limit: i64,
    ) -> Result<Vec<(String, String)>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT delivered_at, written_at FROM activities
                 WHERE delivered_at IS NOT NULL AND written_at IS NOT NULL
                 ORDER BY occurred_at DESC LIMIT $1"
        )
        .bind(limit.max(0))
        .fetch_all(p)
        .await)?)
    }

    /// Activities by state (`written`, `held`, …).
    pub async fn activity_counts(&self) -> Result<BTreeMap<String, i64>, LedgerError> {
        let rows: Vec<(String, i64)> = on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT state, COUNT(*) FROM activities GROUP BY state"
        )
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().collect())
    }

    /// Creates that may each have left one duplicate in a CRM without a lookup.
    pub async fn activity_possible_duplicates(&self) -> Result<i64, LedgerError> {
        let total: Option<i64> = on_pool!(&self.pool, |p, pg| sqlx::query_scalar(if pg {
            "SELECT CAST(SUM(possible_duplicates) AS BIGINT) FROM activities"
        } else {
            "SELECT SUM(possible_duplicates) FROM activities"
        })
        .fetch_one(p)
        .await)?;
        Ok(total.unwrap_or(0))
    }

    /// How many activities happened since `since` (RFC 3339): sizes the poller's re-reads.
    pub async fn activities_since(&self, since: &str) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM activities WHERE occurred_at >= $1"
        )
        .bind(since)
        .fetch_one(p)
        .await)?)
    }

    /// Records whose row changed at or after `since` (all with `None`), with their phones: the
    /// linker's phone index is refreshed from these.
    pub async fn records_changed_since(
        &self,
        since: Option<&str>,
    ) -> Result<Vec<RecordPhones>, LedgerError> {
        let rows: Vec<ChangedRecord> = on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT external_id, quo_id, state, snapshot, updated_at FROM records
                 WHERE updated_at >= $1 ORDER BY updated_at"
        )
        .bind(since.unwrap_or(""))
        .fetch_all(p)
        .await)?;
        Ok(rows
            .into_iter()
            .map(
                |ChangedRecord {
                     external_id,
                     quo_id,
                     state,
                     snapshot,
                     updated_at,
                 }| {
                    let phones = snapshot
                        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                        .and_then(|s| s.get("phoneNumbers").cloned())
                        .and_then(|p| p.as_array().cloned())
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|p| p.get("value")?.as_str().map(str::to_string))
                        .collect();
                    RecordPhones {
                        external_id,
                        quo_id,
                        state,
                        phones,
                        updated_at,
                    }
                },
            )
            .collect())
    }

    /// The webhook registered for `purpose`.
    pub async fn webhook_registration(
        &self,
        purpose: &str,
    ) -> Result<Option<WebhookRegistration>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT purpose, subscription_id, url, events, signing_key, registered_at, checked_at
             FROM webhook_registrations WHERE purpose = $1"
        )
        .bind(purpose)
        .fetch_optional(p)
        .await)?)
    }

    /// Every webhook quo-sync registered.
    pub async fn webhook_registrations(&self) -> Result<Vec<WebhookRegistration>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_as(
            "SELECT purpose, subscription_id, url, events, signing_key, registered_at, checked_at
             FROM webhook_registrations ORDER BY purpose"
        )
        .fetch_all(p)
        .await)?)
    }

    /// Records (or replaces) the webhook registered for its purpose.
    pub async fn save_webhook_registration(
        &self,
        r: &WebhookRegistration,
    ) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| {
            sqlx::query(
            "INSERT INTO webhook_registrations (purpose, subscription_id, url, events, signing_key, registered_at, checked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (purpose) DO UPDATE SET subscription_id = excluded.subscription_id, url = excluded.url,
               events = excluded.events, signing_key = excluded.signing_key,
               registered_at = excluded.registered_at, checked_at = excluded.checked_at"
        )
        .bind(&r.purpose)
        .bind(&r.subscription_id)
        .bind(&r.url)
        .bind(&r.events)
        .bind(&r.signing_key)
        .bind(&r.registered_at)
        .bind(&r.checked_at)
        .execute(p)
        .await
        .map(drop)
        })?;
        Ok(())
    }

    /// Forgets the webhook registered for `purpose`.
    pub async fn delete_webhook_registration(&self, purpose: &str) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "DELETE FROM webhook_registrations WHERE purpose = $1"
        )
        .bind(purpose)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }
}
