//! The workspace index: every contact of the Quo workspace with its match keys, kept in the
//! ledger so a restart does not list 100,000 contacts again.
//!
//! A real deployment starts in a workspace that already holds the people quo-sync is about to
//! create. Before a record is POSTed it is matched here: one indexed lookup by its phones (E.164)
//! and emails (trimmed, lower-cased). The index is filled by a full listing (the scanner's pass,
//! 50 a page) and kept fresh by every later pass, by webhooks for contacts the ledger does not
//! link, and by every contact quo-sync itself writes (`commit_synced_batch`). Absence is not
//! deletion: a contact a listing did not show stays; only a 404 removes it.
//!
//! Memory does not grow with the workspace: matching asks the database for the few contacts
//! that share a key with the records being created, never loads the index whole.

use super::db::{Pool, on_pool};
use super::{Ledger, LedgerError};
use crate::quo::types::Contact;

/// Meta key: when the first complete listing of the whole workspace started (the index holds
/// every contact that existed then).
pub const WORKSPACE_LISTED: &str = "workspace.listed_at";

/// Meta key: when the listing started that agreed with the one before it (no record waiting to
/// be created matched a contact the earlier listing had not shown). Until it is set, creates
/// wait for such a listing (`sync::confirm`): Quo's list lags, and a first listing that hid a
/// contact would make its person a second contact.
pub const WORKSPACE_CONFIRMED: &str = "workspace.confirmed_at";

/// The match key of a phone number: `p:` and the number with every character but the leading
/// `+` and the digits removed (Quo stores E.164, so `+1 415…` and `+1415…` are one key); `None`
/// for a value with fewer than 7 digits.
pub fn phone_key(value: &str) -> Option<String> {
    let trimmed = value.trim();
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 7 {
        return None;
    }
    let plus = if trimmed.starts_with('+') { "+" } else { "" };
    Some(format!("p:{plus}{digits}"))
}

/// The match key of an email address: `e:` and the address trimmed and lower-cased; `None`
/// for a value without `@`.
pub fn email_key(value: &str) -> Option<String> {
    let email = value.trim().to_lowercase();
    email.contains('@').then(|| format!("e:{email}"))
}

/// Whether a match key is a phone's (else an email's).
pub fn is_phone_key(key: &str) -> bool {
    key.starts_with("p:")
}

/// The key's value as people write it (`+14155550100`, `ann@example.com`).
pub fn key_value(key: &str) -> &str {
    key.get(2..).unwrap_or(key)
}

/// Every match key of a contact: each phone and each email, whatever its label, deduplicated.
pub fn contact_keys(contact: &Contact) -> Vec<String> {
    let fields = &contact.default_fields;
    let phones = fields
        .phone_numbers
        .iter()
        .filter_map(|i| i.value.as_deref().and_then(phone_key));
    let emails = fields
        .emails
        .iter()
        .filter_map(|i| i.value.as_deref().and_then(email_key));
    let mut keys: Vec<String> = phones.chain(emails).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// One contact as the index holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceContact {
    /// Quo's id.
    pub quo_id: String,
    /// Its `source`; `None` for contacts made in the Quo app or by its import.
    pub source: Option<String>,
    /// Its `externalId`.
    pub external_id: Option<String>,
    /// Its match keys.
    pub keys: Vec<String>,
    /// The contact as last read.
    pub contact: Contact,
    /// Quo's `createdAt` in the ledger's time form (`None`: absent or not a time).
    pub created_at: Option<String>,
    /// When quo-sync last read it (RFC 3339).
    pub seen_at: String,
}

/// Where a listing of app contacts stands: the last contact returned (its creation time, `""`
/// when Quo gave none, and its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppContactCursor {
    /// The contact's `createdAt`, or `""`.
    pub created_at: String,
    /// The contact's Quo id.
    pub quo_id: String,
}

impl AppContactCursor {
    /// The cursor just past `contact`.
    pub fn past(contact: &WorkspaceContact) -> Self {
        Self {
            created_at: contact.created_at.clone().unwrap_or_default(),
            quo_id: contact.quo_id.clone(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct StoredWorkspaceContact {
    quo_id: String,
    source: Option<String>,
    external_id: Option<String>,
    keys: String,
    contact: String,
    created_at: Option<String>,
    seen_at: String,
}

impl StoredWorkspaceContact {
    fn decode(self) -> Result<WorkspaceContact, LedgerError> {
        let contact = serde_json::from_str(&self.contact).map_err(|e| LedgerError::Corrupt {
            external_id: self.quo_id.clone(),
            column: "workspace_contacts.contact",
            reason: e.to_string(),
        })?;
        Ok(WorkspaceContact {
            quo_id: self.quo_id,
            source: self.source,
            external_id: self.external_id,
            keys: self
                .keys
                .split(' ')
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect(),
            contact,
            created_at: self.created_at,
            seen_at: self.seen_at,
        })
    }
}

/// A match: the key that matched and the contact holding it.
#[derive(sqlx::FromRow)]
struct KeyedRow {
    key: String,
    #[sqlx(flatten)]
    stored: StoredWorkspaceContact,
}

const WORKSPACE_COLUMNS: &str =
    "w.quo_id, w.source, w.external_id, w.keys, w.contact, w.created_at, w.seen_at";

/// `$from, $from+1, …` for `count` parameters.
fn marks(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Ledger {
    /// Stores contacts as Quo just showed them (a listing page, a webhook's fetch, our own
    /// write), replacing their keys, in one transaction.
    pub async fn workspace_put(&self, contacts: &[Contact]) -> Result<(), LedgerError> {
        workspace_put_on(&self.pool, contacts).await?;
        Ok(())
    }

    /// Forgets a contact Quo confirmed gone (a 404).
    pub async fn workspace_remove(&self, quo_id: &str) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| {
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM workspace_keys WHERE quo_id = $1")
                .bind(quo_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM workspace_contacts WHERE quo_id = $1")
                .bind(quo_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The contacts holding any of `keys`, each with the keys of `keys` it holds.
    pub async fn workspace_matches(
        &self,
        keys: &[String],
    ) -> Result<Vec<(WorkspaceContact, Vec<String>)>, LedgerError> {
        let mut found: Vec<(WorkspaceContact, Vec<String>)> = Vec::new();
        for chunk in keys.chunks(400) {
            let sql = format!(
                "SELECT k.key, {WORKSPACE_COLUMNS} FROM workspace_keys k
                 JOIN workspace_contacts w ON w.quo_id = k.quo_id
                 WHERE k.key IN ({}) ORDER BY w.quo_id, k.key",
                marks(1, chunk.len())
            );
            let rows: Vec<KeyedRow> = on_pool!(&self.pool, |p| chunk
                .iter()
                .fold(sqlx::query_as(sqlx::AssertSqlSafe(sql)), |q, k| q.bind(k))
                .fetch_all(p)
                .await)?;
            for KeyedRow { key, stored } in rows {
                if let Some((_, matched)) =
                    found.iter_mut().find(|(c, _)| c.quo_id == stored.quo_id)
                {
                    if !matched.contains(&key) {
                        matched.push(key);
                    }
                    continue;
                }
                found.push((stored.decode()?, vec![key]));
            }
        }
        Ok(found)
    }

    /// One contact of the index.
    pub async fn workspace_contact(
        &self,
        quo_id: &str,
    ) -> Result<Option<WorkspaceContact>, LedgerError> {
        let sql =
            format!("SELECT {WORKSPACE_COLUMNS} FROM workspace_contacts w WHERE w.quo_id = $1");
        let row: Option<StoredWorkspaceContact> =
            on_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(quo_id)
                .fetch_optional(p)
                .await)?;
        row.map(StoredWorkspaceContact::decode).transpose()
    }

    /// Contacts without a `source` (made in the Quo app or by its import) created at or after
    /// `since` (all of them when `None`), in (creation time, id) order after the `after` cursor
    /// (the last contact of the page before), at most `limit`.
    pub async fn workspace_app_contacts(
        &self,
        since: Option<&str>,
        after: Option<&AppContactCursor>,
        limit: i64,
    ) -> Result<Vec<WorkspaceContact>, LedgerError> {
        let sql = format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspace_contacts w
             WHERE w.source IS NULL AND (CAST($1 AS TEXT) IS NULL OR w.created_at >= $1)
               AND (CAST($2 AS TEXT) IS NULL OR COALESCE(w.created_at, '') > $2
                    OR (COALESCE(w.created_at, '') = $2 AND w.quo_id > $3))
             ORDER BY COALESCE(w.created_at, ''), w.quo_id LIMIT $4"
        );
        let rows: Vec<StoredWorkspaceContact> =
            on_pool!(&self.pool, |p| sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(since)
                .bind(after.map(|c| c.created_at.as_str()))
                .bind(after.map(|c| c.quo_id.as_str()).unwrap_or_default())
                .bind(limit)
                .fetch_all(p)
                .await)?;
        rows.into_iter()
            .map(StoredWorkspaceContact::decode)
            .collect()
    }

    /// Contacts the index last read before `before` (RFC 3339): those a complete listing that
    /// started then did not show.
    pub async fn workspace_unseen_since(&self, before: &str) -> Result<Vec<String>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT quo_id FROM workspace_contacts WHERE seen_at < $1 ORDER BY quo_id"
        )
        .bind(before)
        .fetch_all(p)
        .await)?)
    }

    /// How many contacts the index holds that Quo made before `before` (RFC 3339, Quo's
    /// millisecond `Z` form) or whose making time is unknown; all of them without `before`.
    pub async fn workspace_count_made_before(
        &self,
        before: Option<&str>,
    ) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM workspace_contacts
             WHERE CAST($1 AS TEXT) IS NULL OR created_at IS NULL OR created_at < $1"
        )
        .bind(before)
        .fetch_one(p)
        .await)?)
    }

    /// How many contacts the index holds.
    pub async fn workspace_count(&self) -> Result<i64, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM workspace_contacts"
        )
        .fetch_one(p)
        .await)?)
    }

    /// The record that holds contact `quo_id`: linked to it, or adopting it.
    pub async fn record_holding(&self, quo_id: &str) -> Result<Option<String>, LedgerError> {
        Ok(on_pool!(&self.pool, |p| sqlx::query_scalar(
            "SELECT external_id FROM records WHERE quo_id = $1 OR adopt_quo_id = $1 LIMIT 1"
        )
        .bind(quo_id)
        .fetch_optional(p)
        .await)?)
    }
}

/// Upserts one contact and its keys on an open transaction (either backend).
macro_rules! workspace_put_tx {
    ($tx:expr, $contact:expr) => {{
        let contact: &crate::quo::types::Contact = $contact;
        if !contact.id.is_empty() {
            let keys = crate::ledger::workspace::contact_keys(contact);
            let source = contact.source.as_deref().filter(|s| !s.is_empty());
            sqlx::query("DELETE FROM workspace_keys WHERE quo_id = $1")
                .bind(&contact.id)
                .execute($tx)
                .await?;
            sqlx::query(
                "INSERT INTO workspace_contacts (quo_id, source, external_id, keys, contact, created_at, updated_at, seen_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT(quo_id) DO UPDATE SET source = excluded.source, external_id = excluded.external_id,
                    keys = excluded.keys, contact = excluded.contact, created_at = excluded.created_at,
                    updated_at = excluded.updated_at, seen_at = excluded.seen_at",
            )
            .bind(&contact.id)
            .bind(source)
            .bind(&contact.external_id)
            .bind(keys.join(" "))
            .bind(serde_json::to_string(contact).expect("contact serialises"))
            .bind(contact.created_at.as_deref().and_then(crate::ledger::quo_time_text))
            .bind(&contact.updated_at)
            .bind(crate::ledger::now_text())
            .execute($tx)
            .await?;
            for key in &keys {
                sqlx::query(
                    "INSERT INTO workspace_keys (key, quo_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(key)
                .bind(&contact.id)
                .execute($tx)
                .await?;
            }
        }
    }};
}
pub(crate) use workspace_put_tx;

/// The `workspace_put` statements, on a pool (also run inside `commit_synced_batch`'s
/// transaction through [`workspace_put_tx`]).
async fn workspace_put_on(pool: &Pool, contacts: &[Contact]) -> Result<(), sqlx::Error> {
    if contacts.is_empty() {
        return Ok(());
    }
    on_pool!(pool, |p| {
        let mut tx = p.begin().await?;
        for contact in contacts {
            workspace_put_tx!(&mut *tx, contact);
        }
        tx.commit().await?;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ignore_formatting_and_case() {
        assert_eq!(
            phone_key("+1 (415) 555-0132").as_deref(),
            Some("p:+14155550132")
        );
        assert_eq!(
            phone_key(" +14155550132 ").as_deref(),
            Some("p:+14155550132")
        );
        assert_eq!(phone_key("123"), None);
        assert_eq!(
            email_key("  Ada@Example.COM ").as_deref(),
            Some("e:ada@example.com")
        );
        assert_eq!(email_key("not an email"), None);
        assert!(is_phone_key("p:+1415"));
        assert_eq!(key_value("e:ada@example.com"), "ada@example.com");
    }
}
