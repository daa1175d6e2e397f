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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use sqlx::Row;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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

/// The SQLite form of fencing: a per-connection TEMP trigger refusing `op` on `table` unless
/// the lease row still carries `epoch` and has not expired by the database's clock. SQLite
/// serialises writers, so the check and the commit cannot be split by a takeover.
fn sqlite_fence_trigger(table: &str, op: &str, epoch: i64) -> String {
    format!(
        "CREATE TEMP TRIGGER IF NOT EXISTS fence_{table}_{lower} BEFORE {op} ON main.\"{table}\"
         WHEN NOT EXISTS (SELECT 1 FROM main.leader_lease WHERE id = 1 AND epoch = {epoch}
                          AND expires_ms > {now})
         BEGIN SELECT RAISE(ABORT, '{FENCED_MESSAGE}'); END",
        lower = op.to_ascii_lowercase(),
        now = db_now_ms(false)
    )
}

/// The PostgreSQL form of fencing: one trigger function on every ledger table that, on a
/// session which set `quo_sync.fence_epoch` (a leader's pool does, on connect), refuses the
/// statement unless the lease row still has that epoch and has not expired. It takes `FOR
/// SHARE` on the lease row, so a takeover's UPDATE waits until this transaction commits: the
/// check cannot go stale between check and commit. Sessions without the setting (standbys
/// storing webhooks, read-only commands, the lease itself) pass.
fn pg_fence_function() -> String {
    format!(
        "CREATE OR REPLACE FUNCTION quo_sync_fence() RETURNS trigger LANGUAGE plpgsql AS $fence$
         DECLARE fence TEXT := current_setting('quo_sync.fence_epoch', true);
         BEGIN
           IF fence IS NULL OR fence = '' THEN RETURN NULL; END IF;
           IF TG_TABLE_NAME = 'inbox' AND TG_OP = 'INSERT' THEN RETURN NULL; END IF;
           PERFORM 1 FROM leader_lease WHERE id = 1 AND epoch = CAST(fence AS BIGINT)
             AND expires_ms > {now} FOR SHARE;
           IF NOT FOUND THEN RAISE EXCEPTION '{FENCED_MESSAGE}'; END IF;
           RETURN NULL;
         END $fence$",
        now = db_now_ms(true)
    )
}

/// A transaction holding the lease's schema lock: concurrent processes create the lease table,
/// function and triggers one at a time (PostgreSQL's catalog can collide on concurrent DDL).
async fn pg_schema_transaction(
    pool: &sqlx::PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PG_SCHEMA_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Attaches the PostgreSQL fence to `table` (idempotent).
fn pg_fence_trigger(table: &str) -> String {
    format!(
        "CREATE OR REPLACE TRIGGER quo_sync_fence BEFORE INSERT OR UPDATE OR DELETE ON \"{table}\"
         FOR EACH STATEMENT EXECUTE FUNCTION quo_sync_fence()"
    )
}

/// Tables whose writes are never fenced: the lease itself (it fences itself by its `WHERE`
/// clauses), sqlx's migration bookkeeping (migrations run only under the lease) and the CRM's
/// OAuth2 refresh token (a rotated token must be kept whoever leads; its row has its own
/// compare-and-swap, see `crm_tokens`).
const UNFENCED_TABLES: [&str; 3] = ["leader_lease", "_sqlx_migrations", "crm_oauth"];

/// The message a fenced write fails with (also matched by [`LedgerError::is_fenced`]).
pub const FENCED_MESSAGE: &str =
    "ledger write refused: this process no longer holds the writer lease";

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

    /// A ledger on the same file whose every write is refused unless `lease` still holds the
    /// lease row with its epoch (see the module docs). Reads are unaffected.
    pub async fn fenced(&self, lease: &LeaderLease) -> Result<Ledger, LedgerError> {
        let epoch = lease.epoch;
        let setup = match &self.pool {
            Pool::Sqlite(p) => {
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                )
                .fetch_all(p)
                .await?;
                let mut triggers = Vec::new();
                for table in tables
                    .iter()
                    .filter(|t| !UNFENCED_TABLES.contains(&t.as_str()))
                {
                    for op in ["INSERT", "UPDATE", "DELETE"] {
                        // Webhook deliveries are stored by every replica (the shared inbox):
                        // only the leader's processing of them is fenced.
                        if table == "inbox" && op == "INSERT" {
                            continue;
                        }
                        triggers.push(sqlite_fence_trigger(table, op, epoch));
                    }
                }
                triggers
            }
            Pool::Postgres(p) => {
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.tables
                     WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
                )
                .fetch_all(p)
                .await?;
                // The function and triggers are schema objects: installed once per leader term
                // (idempotent), inside one transaction so no table is left half fenced.
                let mut tx = pg_schema_transaction(p).await?;
                sqlx::query(sqlx::AssertSqlSafe(pg_fence_function()))
                    .execute(&mut *tx)
                    .await?;
                for table in tables
                    .iter()
                    .filter(|t| !UNFENCED_TABLES.contains(&t.as_str()))
                {
                    sqlx::query(sqlx::AssertSqlSafe(pg_fence_trigger(table)))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                // A leader frozen inside a transaction (SIGSTOP, a VM pause) would hold its
                // FOR SHARE lock and block the takeover forever: the server ends such a session
                // after a third of the lease, releasing the lock; its transaction never commits.
                let idle_ms = (lease.lease().as_millis() / 3).max(100);
                vec![
                    format!("SET quo_sync.fence_epoch = '{epoch}'"),
                    format!("SET idle_in_transaction_session_timeout = {idle_ms}"),
                ]
            }
        };
        // Audited: built from constants, our epoch and table names from our own schema.
        let pool = self
            .options
            .pool(Some(Arc::new(setup)))
            .await
            .map_err(|source| LedgerError::Open {
                path: self.path.clone(),
                source,
            })?;
        Ok(Ledger {
            pool,
            path: self.path.clone(),
            options: self.options.clone(),
            fence: Some(lease.fence.clone()),
        })
    }

    /// For a leader's ledger: its writers' fence (hand it to the Quo client and the CRM
    /// writers): how long the lease is still ours by the local clock, and its write window;
    /// `None` on an unfenced ledger.
    pub fn write_fence(&self) -> Option<crate::quo::fence::WriteFence> {
        let fence = self.fence.clone()?;
        let window = crate::config::lease_write_window(fence.lease);
        Some(crate::quo::fence::WriteFence::new(
            Arc::new(move || fence.time_left()),
            window,
        ))
    }

    /// Fails with [`LedgerError::Fenced`] when this is a leader's ledger whose lease has run out
    /// by the local clock (or was lost). Call before a write to the outside world (Quo, CRM):
    /// the database refuses the ledger writes itself, but nothing else would stop the request.
    pub fn ensure_leader(&self) -> Result<(), LedgerError> {
        match &self.fence {
            Some(fence) if !fence.holds() => Err(LedgerError::Fenced { epoch: fence.epoch }),
            _ => Ok(()),
        }
    }
}

/// The local view of a held lease: its epoch and until when it is certainly still ours.
///
/// Time since `origin` is the longer of the monotonic clock's and the wall clock's: Linux's
/// monotonic clock stops while the machine sleeps, so after a suspend it alone would say the lease
/// is still ours long after it expired in the database; the wall clock keeps counting (a wall
/// clock stepped forward only ends the lease early, the safe direction; one stepped back is
/// outrun by the monotonic clock).
#[derive(Debug)]
pub struct Fence {
    epoch: i64,
    lease: Duration,
    origin: Instant,
    origin_wall: SystemTime,
    /// Milliseconds after `origin` until which the lease is ours.
    valid_until_ms: AtomicU64,
    lost: CancellationToken,
}

impl Fence {
    fn new(epoch: i64, lease: Duration, asked_at: Instant) -> Self {
        // The wall clock's origin as of `asked_at` (a moment ago).
        let origin_wall = SystemTime::now()
            .checked_sub(asked_at.elapsed())
            .unwrap_or_else(SystemTime::now);
        Self {
            epoch,
            lease,
            origin: asked_at,
            origin_wall,
            valid_until_ms: AtomicU64::new(0),
            lost: CancellationToken::new(),
        }
    }

    /// Time since `origin`, by whichever of the monotonic and the wall clock ran further.
    fn elapsed(&self) -> Duration {
        let wall = SystemTime::now()
            .duration_since(self.origin_wall)
            .unwrap_or_default();
        self.origin.elapsed().max(wall)
    }

    /// How long the lease is still ours by the local clocks; `None` once it is not.
    pub fn time_left(&self) -> Option<Duration> {
        if self.lost.is_cancelled() {
            return None;
        }
        let until = Duration::from_millis(self.valid_until_ms.load(Ordering::Acquire));
        until.checked_sub(self.elapsed()).filter(|d| !d.is_zero())
    }

    /// Whether the lease is still ours by the local clocks.
    pub fn holds(&self) -> bool {
        self.time_left().is_some()
    }

    fn extend(&self, asked_at: Instant, lease: Duration) {
        // The database set expiry from a "now" no earlier than `asked_at`: conservative. The
        // margin leaves room for a request already on the wire when the deadline passes.
        let until = asked_at.duration_since(self.origin) + lease - safety_margin(lease);
        self.valid_until_ms
            .store(until.as_millis() as u64, Ordering::Release);
    }
}

/// How long before the lease's end a leader stops sending writes: a tenth of the lease.
pub fn safety_margin(lease: Duration) -> Duration {
    lease / 10
}

/// Why a writer could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another process holds the lease.
    #[error("the ledger {path} is held by another writer: {holder}")]
    Held {
        /// The ledger.
        path: String,
        /// Who (boxed: keeps every error that carries this one small).
        holder: Box<LeaseHolder>,
    },
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A held writer lease, renewed in the background every third of its length until released or
/// lost. [`LeaderLease::lost`] fires when it is lost.
#[derive(Debug)]
pub struct LeaderLease {
    ledger: Ledger,
    who: Candidate,
    epoch: i64,
    lease: Duration,
    fence: Arc<Fence>,
    renewer: tokio::task::JoinHandle<()>,
}

impl LeaderLease {
    /// Tries once; `Err(Held)` names the holder.
    pub async fn try_acquire(
        ledger: &Ledger,
        who: &Candidate,
        lease: Duration,
    ) -> Result<LeaderLease, LeaseError> {
        let asked_at = Instant::now();
        let epoch = loop {
            match ledger.try_acquire_lease(who, lease).await {
                Ok(Attempt::Acquired(epoch)) => break epoch,
                Ok(Attempt::Held(holder)) => {
                    return Err(LeaseError::Held {
                        path: ledger.path.clone(),
                        holder: Box::new(holder),
                    });
                }
                // Released between the upsert and the read: try again.
                Err(LedgerError::Query(sqlx::Error::RowNotFound)) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let fence = Arc::new(Fence::new(epoch, lease, asked_at));
        fence.extend(asked_at, lease);
        let renewer = tokio::spawn(renew_loop(
            ledger.clone(),
            who.token.clone(),
            epoch,
            lease,
            fence.clone(),
        ));
        info!(event = "leader_acquired", epoch, host = %who.host, pid = who.pid, command = %who.command, lease_ms = lease.as_millis() as u64, "writer lease acquired");
        Ok(LeaderLease {
            ledger: ledger.clone(),
            who: who.clone(),
            epoch,
            lease,
            fence,
            renewer,
        })
    }

    /// Tries until `wait` has passed (at least once), polling every `poll`.
    pub async fn acquire_within(
        ledger: &Ledger,
        who: &Candidate,
        lease: Duration,
        wait: Duration,
        poll: Duration,
    ) -> Result<LeaderLease, LeaseError> {
        let deadline = Instant::now() + wait;
        loop {
            match Self::try_acquire(ledger, who, lease).await {
                Err(LeaseError::Held { .. }) if Instant::now() + poll <= deadline => {
                    tokio::time::sleep(poll).await;
                }
                other => return other,
            }
        }
    }

    /// The acquisition number.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Fires when the lease is lost (taken over, expired unrenewed, or released).
    pub fn lost(&self) -> CancellationToken {
        self.fence.lost.clone()
    }

    /// Whether the lease is still ours by the local clock.
    pub fn holds(&self) -> bool {
        self.fence.holds()
    }

    /// Stops renewing and frees the lease at once, so a standby takes over without waiting for
    /// the expiry.
    pub async fn release(self) {
        self.renewer.abort();
        let was_lost = self.fence.lost.is_cancelled();
        self.fence.lost.cancel();
        match self.ledger.release_lease(&self.who.token, self.epoch).await {
            Ok(true) => {
                info!(
                    event = "leader_released",
                    epoch = self.epoch,
                    "writer lease released"
                )
            }
            Ok(false) if !was_lost => {
                warn!(
                    event = "leader_lost",
                    epoch = self.epoch,
                    "writer lease was no longer ours at release"
                )
            }
            Ok(false) => {}
            Err(e) => {
                warn!(event = "lease_release_failed", epoch = self.epoch, error = %e, "could not release the writer lease; it expires by itself")
            }
        }
    }
}

impl Drop for LeaderLease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Renews every third of the lease; declares the lease lost when the database says it is no
/// longer ours, or when renewals keep failing past the local expiry.
async fn renew_loop(ledger: Ledger, token: String, epoch: i64, lease: Duration, fence: Arc<Fence>) {
    let period = lease / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = fence.lost.cancelled() => return,
        }
        if !fence.holds() {
            // Woken too late (a pause, an overloaded host): the database may already have let
            // someone else in. Never renew an expired lease.
            lose(
                &fence,
                epoch,
                "the lease ran out before it could be renewed",
            );
            return;
        }
        let asked_at = Instant::now();
        match ledger.renew_lease(&token, epoch, lease).await {
            Ok(true) => fence.extend(asked_at, lease),
            Ok(false) => {
                lose(
                    &fence,
                    epoch,
                    "another process holds the lease or it expired",
                );
                return;
            }
            Err(e) => {
                warn!(event = "lease_renew_failed", epoch, error = %e, "could not renew the writer lease; retrying");
            }
        }
    }
}

fn lose(fence: &Fence, epoch: i64, reason: &str) {
    warn!(
        event = "leader_lost",
        epoch, reason, "writer lease lost: no new work is started"
    );
    fence.lost.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ledger(dir: &tempfile::TempDir) -> Ledger {
        Ledger::open(&dir.path().join("l.db")).await.unwrap()
    }

    #[test]
    fn a_suspend_that_stopped_the_monotonic_clock_ends_the_lease() {
        let lease = Duration::from_secs(15);
        let asked_at = Instant::now();
        let fence = Fence::new(1, lease, asked_at);
        fence.extend(asked_at, lease);
        let left = fence.time_left().expect("just taken");
        assert!(left > Duration::from_secs(13) && left <= Duration::from_millis(13_500));
        // The machine slept 20 s: the monotonic clock did not count them, the wall clock did.
        let slept = Fence {
            origin_wall: fence.origin_wall - Duration::from_secs(20),
            ..Fence::new(1, lease, asked_at)
        };
        slept.extend(asked_at, lease);
        assert_eq!(slept.time_left(), None, "still ours after a suspend");
        assert!(!slept.holds());
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

    #[tokio::test]
    async fn a_fenced_ledger_refuses_writes_once_another_epoch_holds() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        let a = Candidate::this_process("run");
        let lease = Duration::from_millis(400);
        let held = LeaderLease::try_acquire(&l, &a, lease).await.unwrap();
        let fenced = l.fenced(&held).await.unwrap();
        fenced.set_meta("k", "1").await.unwrap();
        // Simulate a pause: stop renewing, let it expire, let another process in.
        held.renewer.abort();
        tokio::time::sleep(lease + Duration::from_millis(50)).await;
        assert!(fenced.ensure_leader().is_err(), "local fence still holds");
        let b = Candidate::this_process("run");
        let _other = LeaderLease::try_acquire(&l, &b, lease).await.unwrap();
        let err = fenced.set_meta("k", "2").await.unwrap_err();
        assert!(err.is_fenced(), "{err}");
        assert_eq!(l.meta("k").await.unwrap().as_deref(), Some("1"));
        // Unfenced writers (the webhook inbox on any replica) still work.
        l.set_meta("k", "3").await.unwrap();
    }
}
