//! The writer lease: one row in the ledger saying which process may write (host, pid, since,
//! expiry, epoch), so two copies on one ledger never both sync.
//!
//! Why in the ledger itself: it is the one thing every replica already shares, and a lease taken
//! with a single atomic upsert needs no other coordinator. Times come from the database's clock
//! (one clock for every replica). Each acquisition bumps `epoch`; a leader's writes go through a
//! *fenced* pool whose connections carry temporary triggers that refuse any write unless the
//! lease row still has that epoch and has not expired — checked inside the writing transaction,
//! so a paused ex-leader that wakes up after a takeover can never commit.
//!
//! The table is created with `IF NOT EXISTS` before migrations run, so the lease can guard the
//! migrations themselves (concurrent first starts used to race on `CREATE TABLE records`).
//!
//! This file is the lease row (who holds it, taking, renewing and releasing it); the fenced pool
//! is `fencing.rs`, and the held lease with its local clock and renewal task `leader.rs`.

use std::time::Duration;

use sqlx::Row;
use tracing::info;

use super::db::{Pool, on_pool};
use super::{Ledger, LedgerError};

/// "Now" in unix milliseconds by the database's clock (one clock for every replica, so lease
/// expiry never depends on the replicas' clocks agreeing).
pub(super) fn db_now_ms(pg: bool) -> &'static str {
    if pg {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    } else {
        "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"
    }
}

/// The advisory lock key under which PostgreSQL schema objects of the lease are created.
const PG_SCHEMA_LOCK: i64 = 0x5155_4f5f_4c45_4153; // "QUO_LEAS"

/// The lease table; created before (and outside) the numbered migrations. BIGINT is SQLite's
/// INTEGER (64-bit) and PostgreSQL's 64-bit integer alike.
const CREATE_LEASE_TABLE: &str = "CREATE TABLE IF NOT EXISTS leader_lease (
    id          INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    epoch       BIGINT NOT NULL,
    token       TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         BIGINT NOT NULL,
    command     TEXT NOT NULL,
    since_ms    BIGINT NOT NULL,
    renewed_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    host_key    TEXT NOT NULL DEFAULT ''
)";

/// A transaction holding the lease's schema lock: concurrent processes create the lease table,
/// function and triggers one at a time (PostgreSQL's catalog can collide on concurrent DDL).
pub(super) async fn pg_schema_transaction(
    pool: &sqlx::PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PG_SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Who asks for the lease.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Host name (the pod name under Kubernetes).
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// The command (`run`, `once`, `reconcile`, `quarantine`, `migrate`).
    pub command: String,
    /// Unique per process: tells our own row from another process's on the same host.
    pub token: String,
    /// This machine's boot and process namespace: a holder with the same key is a process we
    /// can see, so when its pid is gone it is dead and its lease free without waiting.
    pub host_key: String,
}

impl Candidate {
    /// This process, running `command`.
    pub fn this_process(command: &str) -> Self {
        Self {
            host: host_name(),
            pid: std::process::id(),
            command: command.to_string(),
            token: uuid::Uuid::new_v4().to_string(),
            host_key: host_key(),
        }
    }
}

/// Boot id plus pid namespace: equal only for processes that see each other's pids.
fn host_key() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let pid_ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if boot.trim().is_empty() || pid_ns.is_empty() {
        return String::new(); // unknown: never treat a holder as visibly dead
    }
    format!("{}/{pid_ns}", boot.trim())
}

/// Whether `pid` is certainly not running here. The kernel is asked with `kill(pid, 0)`, which
/// sees every process even where `/proc` hides them (`hidepid=2`, systemd
/// `ProtectProc=invisible`, a `once` run as another user): ESRCH means dead; EPERM (alive, not
/// ours to signal) and any other doubt mean alive, until the lease expires. A process that
/// answers but that `/proc` shows as a zombie (exited, not reaped) is dead.
fn pid_is_dead(pid: i64) -> bool {
    if pid <= 0 || i64::from(std::process::id()) == pid {
        return false;
    }
    let Some(target) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(target) {
        Err(rustix::io::Errno::SRCH) => true,
        Ok(()) => std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        }),
        Err(_) => false,
    }
}

/// The host name: `$HOSTNAME`, else the kernel's, else `unknown`.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The lease row as stored: who holds (or last held) the lease.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaseHolder {
    /// Host of the holder.
    pub host: String,
    /// Its process id.
    pub pid: i64,
    /// The command it runs.
    pub command: String,
    /// The acquisition number.
    pub epoch: i64,
    /// When it took the lease (RFC 3339).
    pub since: String,
    /// When the lease runs out unless renewed (RFC 3339).
    pub expires: String,
    /// Whether the lease is still live (not expired or released).
    pub live: bool,
    #[serde(skip)]
    token: String,
    #[serde(skip)]
    host_key: String,
}

impl LeaseHolder {
    /// A live holder on this machine (same boot, same pid namespace) whose process is gone:
    /// killed without releasing. Its lease need not run out.
    fn is_dead_here(&self, who: &Candidate) -> bool {
        self.live
            && !who.host_key.is_empty()
            && self.host_key == who.host_key
            && self.token != who.token
            && pid_is_dead(self.pid)
    }
}

impl std::fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {} pid {} ({}, epoch {}, since {}, expires {})",
            self.host, self.pid, self.command, self.epoch, self.since, self.expires
        )
    }
}

fn ms_to_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// Whether a try won the lease.
#[derive(Debug)]
pub enum Attempt {
    /// We hold it with this epoch.
    Acquired(i64),
    /// Someone else holds it.
    Held(LeaseHolder),
}

impl Ledger {
    /// Creates the lease table when missing (idempotent, safe to race).
    pub(super) async fn bootstrap_lease(&self) -> Result<(), LedgerError> {
        match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query(CREATE_LEASE_TABLE).execute(p).await?;
            }
            Pool::Postgres(p) => {
                // Concurrent `CREATE TABLE IF NOT EXISTS` can still collide in PostgreSQL's
                // catalog (a unique violation on pg_type): first starts take turns.
                let mut tx = pg_schema_transaction(p).await?;
                sqlx::query(CREATE_LEASE_TABLE).execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The lease row, if any process ever took the lease.
    pub async fn lease_holder(&self) -> Result<Option<LeaseHolder>, LedgerError> {
        Ok(on_pool!(&self.pool, |p, pg| {
            let sql = format!(
                "SELECT host, pid, command, epoch, since_ms, expires_ms, token, host_key,
                        CAST(CASE WHEN expires_ms > {now} THEN 1 ELSE 0 END AS BIGINT) AS live
                 FROM leader_lease WHERE id = 1",
                now = db_now_ms(pg)
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_optional(p)
                .await?
                .map(|row| {
                    Ok::<_, sqlx::Error>(LeaseHolder {
                        host: row.try_get("host")?,
                        pid: row.try_get("pid")?,
                        command: row.try_get("command")?,
                        epoch: row.try_get("epoch")?,
                        since: ms_to_text(row.try_get("since_ms")?),
                        expires: ms_to_text(row.try_get("expires_ms")?),
                        live: row.try_get::<i64, _>("live")? != 0,
                        token: row.try_get("token")?,
                        host_key: row.try_get("host_key")?,
                    })
                })
                .transpose()
        })?)
    }

    /// Takes the lease when it is free, released or expired, or held by a process of this
    /// machine that is gone (SIGKILL, OOM): each take is one atomic statement.
    pub async fn try_acquire_lease(
        &self,
        who: &Candidate,
        lease: Duration,
    ) -> Result<Attempt, LedgerError> {
        if let Some(epoch) = self.upsert_lease(who, lease, None).await? {
            return Ok(Attempt::Acquired(epoch));
        }
        match self.lease_holder().await? {
            Some(holder) if holder.is_dead_here(who) => {
                // Only that exact holder's row is replaced: if anything changed since we
                // looked, the statement takes nothing.
                match self.upsert_lease(who, lease, Some(&holder.token)).await? {
                    Some(epoch) => {
                        info!(
                            event = "lease_holder_dead",
                            holder_pid = holder.pid,
                            holder_epoch = holder.epoch,
                            "the lease holder on this machine is gone; taking over without waiting for expiry"
                        );
                        Ok(Attempt::Acquired(epoch))
                    }
                    None => Ok(Attempt::Held(self.lease_holder().await?.unwrap_or(holder))),
                }
            }
            Some(holder) => Ok(Attempt::Held(holder)),
            // Released between our two statements: report it as held; the caller retries.
            None => Err(LedgerError::Query(sqlx::Error::RowNotFound)),
        }
    }

    /// The one statement that takes the lease: inserts the row, or replaces it when expired
    /// (or when it is exactly `dead_token`'s). Returns the new epoch when taken.
    async fn upsert_lease(
        &self,
        who: &Candidate,
        lease: Duration,
        dead_token: Option<&str>,
    ) -> Result<Option<i64>, LedgerError> {
        Ok(on_pool!(&self.pool, |p, pg| {
            let now = db_now_ms(pg);
            let sql = format!(
            "INSERT INTO leader_lease (id, epoch, token, host, pid, command, since_ms, renewed_ms, expires_ms, host_key)
             VALUES (1, 1, $1, $2, $3, $4, {now}, {now}, {now} + $5, $6)
             ON CONFLICT(id) DO UPDATE SET epoch = leader_lease.epoch + 1, token = excluded.token,
                host = excluded.host, pid = excluded.pid, command = excluded.command,
                since_ms = excluded.since_ms, renewed_ms = excluded.renewed_ms,
                expires_ms = excluded.expires_ms, host_key = excluded.host_key
             WHERE leader_lease.expires_ms <= excluded.since_ms OR leader_lease.token = $7
             RETURNING epoch"
        );
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(&who.token)
                .bind(&who.host)
                .bind(i64::from(who.pid))
                .bind(&who.command)
                .bind(lease.as_millis() as i64)
                .bind(&who.host_key)
                .bind(dead_token.unwrap_or(""))
                .fetch_optional(p)
                .await
        })?)
    }

    /// Extends our lease; `false` when it is no longer ours (taken over or already expired).
    pub async fn renew_lease(
        &self,
        token: &str,
        epoch: i64,
        lease: Duration,
    ) -> Result<bool, LedgerError> {
        let done = on_pool!(&self.pool, |p, pg| {
            let sql = format!(
                "UPDATE leader_lease SET renewed_ms = {now}, expires_ms = {now} + $1
                 WHERE id = 1 AND token = $2 AND epoch = $3 AND expires_ms > {now}",
                now = db_now_ms(pg)
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(lease.as_millis() as i64)
                .bind(token)
                .bind(epoch)
                .execute(p)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Gives the lease up at once (clean shutdown), if it is still ours.
    pub async fn release_lease(&self, token: &str, epoch: i64) -> Result<bool, LedgerError> {
        let done = on_pool!(&self.pool, |p, pg| {
            let sql = format!(
                "UPDATE leader_lease SET expires_ms = {now}
                 WHERE id = 1 AND token = $1 AND epoch = $2 AND expires_ms > {now}",
                now = db_now_ms(pg)
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(token)
                .bind(epoch)
                .execute(p)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(done == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn ledger(dir: &tempfile::TempDir) -> Ledger {
        Ledger::open(&dir.path().join("l.db")).await.unwrap()
    }

    #[test]
    fn a_pid_is_dead_only_when_the_kernel_says_so_or_it_is_a_zombie() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i64::from(child.id());
        assert!(!pid_is_dead(pid), "a running process");
        assert!(!pid_is_dead(i64::from(std::process::id())), "ourselves");
        assert!(
            !pid_is_dead(1),
            "init (EPERM for an unprivileged user: alive)"
        );
        child.kill().unwrap();
        // Killed, not reaped yet: a zombie, which `kill(pid, 0)` still answers for.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pid_is_dead(pid) {
            assert!(Instant::now() < deadline, "a zombie counts as dead");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(pid_is_dead(pid), "reaped: ESRCH");
        assert!(!pid_is_dead(0) && !pid_is_dead(-5), "never a real pid");
    }

    #[tokio::test]
    async fn a_held_lease_is_refused_and_an_expired_one_taken_with_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        let a = Candidate::this_process("run");
        let b = Candidate::this_process("once");
        let lease = Duration::from_millis(300);
        let Attempt::Acquired(first) = l.try_acquire_lease(&a, lease).await.unwrap() else {
            panic!("free lease not taken")
        };
        match l.try_acquire_lease(&b, lease).await.unwrap() {
            Attempt::Held(h) => {
                assert_eq!((h.command.as_str(), h.epoch, h.live), ("run", first, true))
            }
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(lease + Duration::from_millis(50)).await;
        assert!(
            !l.renew_lease(&a.token, first, lease).await.unwrap(),
            "expired lease renewed"
        );
        let Attempt::Acquired(second) = l.try_acquire_lease(&b, lease).await.unwrap() else {
            panic!("expired lease not taken")
        };
        assert_eq!(second, first + 1);
        assert!(!l.release_lease(&a.token, first).await.unwrap());
        assert!(l.release_lease(&b.token, second).await.unwrap());
        assert!(matches!(
            l.try_acquire_lease(&a, lease).await.unwrap(),
            Attempt::Acquired(e) if e == second + 1
        ));
    }
}
