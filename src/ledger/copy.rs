//! `quo-sync ledger copy`: moves a whole ledger to another backend (SQLite → PostgreSQL and back).
//!
//! Every table is read from the source and written into an empty, freshly migrated target in
//! one transaction, then the target's row counts are checked against what was read: a copy that
//! does not add up is an error, never a silent partial ledger.
//!
//! The lease table (if any) and the migration bookkeeping are not copied: the target has its own.
//! Neither are pending CRM change notices (`crm_notices`): they only say "read soon", and the
//! first read of a process is a list read, which covers them.

use futures::TryStreamExt;
use serde::Serialize;
use sqlx::Row;

use super::db::{Pool, on_pool};
use super::{Ledger, LedgerError};

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int,
}
use Kind::{Int, Text};

/// One table the copy moves: its columns (the same on both backends) and the column that keeps
/// its rows in arrival order on PostgreSQL (SQLite uses rowid).
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    pg_order: &'static str,
}

const TABLES: &[Table] = &[
    // Before `records`: the triggers that follow each copied record open only what this left
    // unopened (nothing, for a consistent source), so the history arrives as it was.
    Table {
        name: "phone_history",
        columns: &[
            ("phone", Text),
            ("external_id", Text),
            ("opened_at", Text),
            ("closed_at", Text),
            ("since_entry", Int),
            ("changed_at", Text),
        ],
        pg_order: "changed_at, phone, external_id, opened_at",
    },
    Table {
        name: "records",
        columns: &[
            ("external_id", Text),
            ("quo_id", Text),
            ("state", Text),
            ("source_fingerprint", Text),
            ("snapshot", Text),
            ("snapshot_hash", Text),
            ("quo_contact", Text),
            ("quo_updated_at", Text),
            ("crm_updated_at", Text),
            ("attempts", Int),
            ("last_error", Text),
            ("created_at", Text),
            ("updated_at", Text),
            ("scan_seen", Text),
            ("adopt_quo_id", Text),
        ],
        pg_order: "external_id",
    },
    Table {
        name: "runs",
        columns: &[
            ("id", Text),
            ("kind", Text),
            ("started_at", Text),
            ("finished_at", Text),
            ("status", Text),
            ("created", Int),
            ("updated", Int),
            ("unchanged", Int),
            ("deleted", Int),
            ("quarantined", Int),
            ("written_to_crm", Int),
            ("requests", Int),
            ("rate_limited", Int),
            ("duration_ms", Int),
            ("error", Text),
            ("adopted", Int),
            ("held", Int),
            ("exported", Int),
        ],
        pg_order: "seq",
    },
    Table {
        name: "quarantine",
        columns: &[
            ("key", Text),
            ("external_id", Text),
            ("location", Text),
            ("stage", Text),
            ("field", Text),
            ("value", Text),
            ("reason", Text),
            ("raw", Text),
            ("attempts", Int),
            ("first_seen", Text),
            ("last_seen", Text),
            ("last_run_id", Text),
            ("discarded_at", Text),
        ],
        pg_order: "key",
    },
    Table {
        name: "inbox",
        columns: &[
            ("event_id", Text),
            ("event_type", Text),
            ("quo_id", Text),
            ("payload", Text),
            ("received_at", Text),
            ("processed_at", Text),
            ("outcome", Text),
        ],
        pg_order: "seq",
    },
    Table {
        name: "conflicts",
        columns: &[
            ("id", Int),
            ("external_id", Text),
            ("field", Text),
            ("base_value", Text),
            ("crm_value", Text),
            ("quo_value", Text),
            ("winner", Text),
            ("policy", Text),
            ("run_id", Text),
            ("at", Text),
        ],
        pg_order: "id",
    },
    Table {
        name: "unconfirmed_creates",
        columns: &[
            ("id", Int),
            ("external_id", Text),
            ("snapshot", Text),
            ("sent_at", Text),
            ("passes", Int),
            ("seen_at", Text),
            ("failures", Int),
            ("abandoned_at", Text),
            ("abandoned_reason", Text),
        ],
        pg_order: "id",
    },
    Table {
        name: "workspace_contacts",
        columns: &[
            ("quo_id", Text),
            ("source", Text),
            ("external_id", Text),
            ("keys", Text),
            ("contact", Text),
            ("created_at", Text),
            ("updated_at", Text),
            ("seen_at", Text),
        ],
        pg_order: "quo_id",
    },
    Table {
        name: "workspace_keys",
        columns: &[("key", Text), ("quo_id", Text)],
        pg_order: "key, quo_id",
    },
    Table {
        name: "adoptions",
        columns: &[
            ("external_id", Text),
            ("quo_id", Text),
            ("previous_source", Text),
            ("previous_external_id", Text),
            ("replaced", Text),
            ("written", Text),
            ("adopted_at", Text),
        ],
        pg_order: "external_id",
    },
    Table {
        name: "match_decisions",
        columns: &[
            ("external_id", Text),
            ("decision", Text),
            ("quo_id", Text),
            ("decided_at", Text),
        ],
        pg_order: "external_id",
    },
    Table {
        name: "crm_exports",
        columns: &[
            ("quo_id", Text),
            ("external_id", Text),
            ("state", Text),
            ("snapshot", Text),
            ("reason", Text),
            ("created_at", Text),
            ("updated_at", Text),
        ],
        pg_order: "quo_id",
    },
    Table {
        name: "source_absences",
        columns: &[
            ("external_id", Text),
            ("first_missed_at", Text),
            ("run_id", Text),
        ],
        pg_order: "external_id",
    },
    Table {
        name: "crm_holds",
        columns: &[
            ("external_id", Text),
            ("field", Text),
            ("crm_value", Text),
            ("quo_value", Text),
            ("reason", Text),
            ("at", Text),
        ],
        pg_order: "external_id, field",
    },
    Table {
        name: "activity_inbox",
        columns: &[
            ("event_id", Text),
            ("delivery_id", Text),
            ("event_type", Text),
            ("activity_id", Text),
            ("observation", Text),
            ("received_at", Text),
            ("processed_at", Text),
        ],
        pg_order: "seq",
    },
    Table {
        name: "activities",
        columns: &[
            ("activity_id", Text),
            ("family", Text),
            ("occurred_at", Text),
            ("facts", Text),
            ("record_id", Text),
            ("link", Text),
            ("state", Text),
            ("reason", Text),
            ("crm_id", Text),
            ("crm_link", Text),
            ("wanted_digest", Text),
            ("written_digest", Text),
            ("final", Int),
            ("attempts", Int),
            ("next_attempt_at", Text),
            ("last_error", Text),
            ("possible_duplicates", Int),
            ("first_seen_at", Text),
            ("delivered_at", Text),
            ("written_at", Text),
            ("updated_at", Text),
        ],
        pg_order: "activity_id",
    },
    Table {
        name: "webhook_registrations",
        columns: &[
            ("purpose", Text),
            ("subscription_id", Text),
            ("url", Text),
            ("events", Text),
            ("signing_key", Text),
            ("registered_at", Text),
            ("checked_at", Text),
        ],
        pg_order: "purpose",
    },
    Table {
        name: "meta",
        columns: &[("key", Text), ("value", Text)],
        pg_order: "key",
    },
    Table {
        name: "crm_oauth",
        columns: &[
            ("name", Text),
            ("configured", Text),
            ("refresh_token", Text),
            ("generation", Int),
            ("claimed_by", Text),
            ("claim_until_ms", Int),
            ("rotated_at", Text),
        ],
        pg_order: "name",
    },
];

/// What a copy moved: rows per table, checked against the target afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    /// The target, without password.
    pub target: String,
    /// (table, rows) in copy order.
    pub tables: Vec<(String, i64)>,
}

impl Ledger {
    /// Rows in each ledger table, in copy order.
    pub async fn table_counts(&self) -> Result<Vec<(String, i64)>, LedgerError> {
        let mut counts = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let sql = format!("SELECT COUNT(*) FROM {}", table.name);
            let n: i64 = on_pool!(&self.pool, |p| sqlx::query_scalar(sqlx::AssertSqlSafe(
                sql.clone()
            ))
            .fetch_one(p)
            .await)?;
            counts.push((table.name.to_string(), n));
        }
        Ok(counts)
    }

    /// Copies every table of this ledger into `target`, which must be empty, in one
    /// transaction; then checks the target's row counts against the rows read.
    pub async fn copy_to(&self, target: &Ledger) -> Result<CopyReport, LedgerError> {
        for (table, rows) in target.table_counts().await? {
            if rows > 0 {
                let table = TABLES
                    .iter()
                    .find(|t| t.name == table)
                    .map_or("?", |t| t.name);
                return Err(LedgerError::TargetNotEmpty {
                    target: target.path.clone(),
                    table,
                    rows,
                });
            }
        }
        let source_pg = matches!(self.pool, Pool::Postgres(_));
        let mut copied = Vec::with_capacity(TABLES.len());
        on_pool!(&target.pool, |tp, target_pg| {
            let mut tx = tp.begin().await?;
            for table in TABLES {
                let names: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
                let marks: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
                let insert = format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    table.name,
                    names.join(", "),
                    marks.join(", ")
                );
                let select = format!(
                    "SELECT {} FROM {} ORDER BY {}",
                    names.join(", "),
                    table.name,
                    if source_pg { table.pg_order } else { "rowid" }
                );
                let mut rows_copied = 0i64;
                on_pool!(&self.pool, |sp| {
                    let mut rows = sqlx::query(sqlx::AssertSqlSafe(select)).fetch(sp);
                    while let Some(row) = rows.try_next().await? {
                        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
                        for (i, (_, kind)) in table.columns.iter().enumerate() {
                            query = match kind {
                                Text => query.bind(row.try_get::<Option<String>, _>(i)?),
                                Int => query.bind(row.try_get::<Option<i64>, _>(i)?),
                            };
                        }
                        query.execute(&mut *tx).await?;
                        rows_copied += 1;
                    }
                });
                copied.push((table.name, rows_copied));
            }
            if target_pg {
                // Explicit ids bypass the identity sequence: move it past them.
                sqlx::query(
                    "SELECT setval(pg_get_serial_sequence('conflicts', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM conflicts",
                )
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "SELECT setval(pg_get_serial_sequence('unconfirmed_creates', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM unconfirmed_creates",
                )
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        let found = target.table_counts().await?;
        for ((table, rows), (_, in_target)) in copied.iter().zip(&found) {
            if rows != in_target {
                return Err(LedgerError::CountMismatch {
                    table,
                    source_rows: *rows,
                    target_rows: *in_target,
                });
            }
        }
        Ok(CopyReport {
            target: target.path.clone(),
            tables: found,
        })
    }
}
