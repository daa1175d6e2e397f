//! "Another process rotates the token you hold" (#21), as a world of the convergence test: the
//! Salesforce example config syncs a fake Salesforce org whose token endpoint rotates the refresh
//! token on every grant and, like vendors that detect reuse, revokes the whole family when a
//! rotated-away token comes back. On an SQLite ledger every seed, and on PostgreSQL (a fleet's
//! ledger, where the claim on the stored token lives in another server) every fourth seed too.
//!
//! Each step, as in the CSV world: 0 to 2 CRM edits (first and last name, title, email, phone,
//! mobile, and the account name, which the config sends to Quo only) and now and then a new CRM
//! record; 0 to 2 Quo app edits (the same fields but the account; the reverse path writes them
//! back); sometimes one field changed on both sides (a conflict the seed's policy decides); one
//! wire fault from the CSV world's draw (`faults.rs`: 429s, 500s, an outage past the retries,
//! lost answers, lagging lists, a repeated page token, a lost create behind a lagging list, slow
//! answers; webhook faults are not drawn, this world has no webhooks); one CRM fault (API calls
//! answered 500 or 503, token requests answered 503 `temporarily_unavailable` or stalled then
//! 503, slow grants); then one of: a main cycle (`run_cycle` on `app::build_context`); a main
//! cycle with another process reading the CRM beside it, grants slowed so the refreshes overlap
//! (a long-lived second `Source` on the same ledger, as a standby or `reconcile` would be); that
//! process reading alone; the real binary's `quo-sync plan` beside a main cycle or `quo-sync once`
//! between them; every access token expiring at once (`TokenDesk::expire_all`); or the main
//! process killed, at a random moment or the moment a write reaches Quo, and restarted.
//!
//! A kill never lands inside the main process's own token request: a process killed after the
//! vendor rotated the token but before the answer reached it has lost the only valid token, and
//! no client can prevent that. Kills land only while it holds a live access token.
//!
//! After every step: no grant presented a refresh token already rotated away, the family is not
//! revoked; a cycle or binary run fails only when an injected Quo fault fired during it, and
//! never for its credentials. After the faults stop and a quiet cycle wrote nothing to either
//! side (at most `QUIET_CAP`), the convergence invariants (`invariants.rs`): no duplicate contact
//! and none without a CRM record, every CRM record linked to exactly one contact whose id the
//! ledger holds, no doubled email or phone item, every conflict names typed values and the
//! policy's winner, the CRM and Quo agree on every managed field, and each holds the last value
//! typed unless a conflict names both; and for the tokens: every process start got a grant,
//! expired tokens were refused and replaced, a rotation was kept in the ledger, no
//! `invalid_grant` and no secret in any log. A run of several seeds must have had rotations by
//! second processes, kills mid-write (every seed ends its chaos with one, if its draws made
//! none), and Quo and CRM faults that fired.
//!
//! Seeds, steps, timeout, trace and replay are the convergence test's
//! (`QUO_SYNC_CONVERGENCE_SEED=N cargo test --test convergence tokens` replays one); without a
//! seed variable, [`DEFAULT_SEEDS`] seeds.

// The Salesforce fake and what it is made of (`tests/support/`), without the rest of it: the
// activity helpers there are already this binary's `activity_support`.
#[path = "../support/crm_objects.rs"]
mod crm_objects;
#[path = "../support/salesforce.rs"]
mod salesforce;
#[path = "../support/salesforce_tasks.rs"]
mod salesforce_tasks;
#[path = "../support/token_desk.rs"]
mod token_desk;
#[path = "../support/vendor.rs"]
mod vendor;
#[path = "../support/vendor_run.rs"]
mod vendor_run;

/// The faults, the quiet cycles and the end invariants.
#[path = "tokens/checks.rs"]
mod checks;
/// People's edits on both sides, and the fields they edit.
#[path = "tokens/people.rs"]
mod people;
/// The world: org, sandbox, ledger, and the processes that share the token.
#[path = "tokens/world.rs"]
mod world;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use quo_sync::config::LogFormat;
use quo_sync::ledger::LedgerTarget;
use quo_sync::mapping::Mapper;
use quo_sync::sandbox::{FaultCounters, PatchMode, SandboxConfig, SandboxHandle};
use quo_sync::source::{Source, SourceRecord};
use quo_sync::sync::{CycleReport, Mode, SyncContext, SyncError, run_cycle};
use quo_sync::telemetry::{CaptureWriter, init_with_writer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use salesforce::FakeSalesforce;
use serde_json::{Value, json};
use token_desk::TokenDesk;
use vendor_run::{Credentials, SourceProcess, example_context_on, salesforce_config};

use super::faults::FaultKind;
use super::invariants;
use super::model::{Log, Side};
use world::{World, crm_id, crm_record, fired};

const CLIENT_ID: &str = "3MVG9-chaos-consumer-key";
const SECRET: &str = "sf-chaos-secret-DO-NOT-LEAK-5d1e";
const REFRESH: &str = "sf-chaos-refresh-DO-NOT-LEAK-90af";
const INITIAL: usize = 6;
/// The row of the shared refresh token in `crm_oauth`.
const TOKEN_ROW: &str = "source.rest";

/// What the seeds did, for the run's own check.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenTally {
    pub seeds: u64,
    pub postgres_seeds: u64,
    /// Grants to processes other than the main one (each rotated the refresh token).
    pub rotations_by_others: u64,
    /// Grants in all (each a refresh, each a rotation).
    pub refreshes: u64,
    pub expiries: u64,
    pub kills: u64,
    /// Kills that landed while a write to Quo was in flight.
    pub mid_write: u64,
    /// Injected Quo faults that fired (status answers, lost answers, lagging lists, …).
    pub quo_faults: u64,
    /// CRM API calls answered 5xx, and token requests stalled or answered 503.
    pub crm_faults: u64,
    /// Cycles and binary runs that failed under a Quo fault.
    pub failed_runs: u64,
    pub conflicts: u64,
}

impl TokenTally {
    fn merge(&mut self, o: TokenTally) {
        self.seeds += o.seeds;
        self.postgres_seeds += o.postgres_seeds;
        self.rotations_by_others += o.rotations_by_others;
        self.refreshes += o.refreshes;
        self.expiries += o.expiries;
        self.kills += o.kills;
        self.mid_write += o.mid_write;
        self.quo_faults += o.quo_faults;
        self.crm_faults += o.crm_faults;
        self.failed_runs += o.failed_runs;
        self.conflicts += o.conflicts;
    }
}

/// The log capture for this test binary (one global subscriber), and whether it is installed
/// (under `QUO_SYNC_CONVERGENCE_TRACE` the CSV world may have installed its own first; then
/// the log scans are skipped and said so).
fn logs() -> &'static (CaptureWriter, bool) {
    static LOGS: OnceLock<(CaptureWriter, bool)> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CaptureWriter::default();
        let installed = init_with_writer(LogFormat::Json, "info", logs.clone());
        (logs, installed)
    })
}

/// The log lines captured since the last call (the CSV world's too, when it runs beside).
fn drain_logs() -> String {
    let bytes = std::mem::take(&mut *logs().0.0.lock().expect("log buffer"));
    String::from_utf8_lossy(&bytes).into_owned()
}

/// This world's steps, for a failure's message and the watchdog (the CSV world keeps its own
/// in `crate::STEPS`; both tests run at once).
static STEPS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// When the current seed started (steps show the milliseconds since).
static SEED_START: Mutex<Option<std::time::Instant>> = Mutex::new(None);

/// Records a step; `QUO_SYNC_CONVERGENCE_TRACE=1` also prints it.
fn trace(line: impl FnOnce() -> String) {
    let start = *SEED_START
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(std::time::Instant::now);
    let line = format!("{:>6} ms  {}", start.elapsed().as_millis(), line());
    if std::env::var_os("QUO_SYNC_CONVERGENCE_TRACE").is_some() {
        eprintln!("[convergence tokens] {line}");
    }
    STEPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(line);
}

impl World {
    async fn step(&mut self, step: usize) {
        trace(|| format!("step {step}"));
        for _ in 0..self.rng.random_range(0..3) {
            self.crm_edit();
        }
        for _ in 0..self.rng.random_range(0..3) {
            self.quo_edit().await;
        }
        if self.rng.random_bool(0.3) {
            self.edit_on_both_sides().await;
        }
        if self.rng.random_bool(0.05) {
            self.crm_add();
        }
        self.wire_fault().await;
        self.crm_fault();
        match self.rng.random_range(0..100) {
            0..30 => self.main_cycle().await,
            30..50 => self.main_cycle_beside_other().await,
            50..58 => self.other_read().await,
            58..68 => self.plan_beside_main().await,
            68..74 => self.once_between().await,
            74..84 => {
                trace(|| "every access token expires".into());
                self.crm.desk().expire_all();
                self.main_has_token = false;
                self.tally.expiries += 1;
            }
            _ => self.kill_main(None).await,
        }
        let desk = self.crm.desk();
        assert_eq!(
            desk.stale_presented(),
            0,
            "a rotated-away refresh token was presented"
        );
        assert!(!desk.revoked(), "the token family was revoked");
    }
}

/// One seed on SQLite, or on PostgreSQL at `pg_url`.
async fn run_seed(seed: u64, steps: usize, pg_url: Option<String>) -> TokenTally {
    drain_logs();
    let mut world = World::new(seed, pg_url).await;
    for step in 1..=steps {
        world.step(step).await;
    }
    trace(|| "quiet".into());
    world.calm().await;
    // At least one kill while a write is in flight (a CRM edit to send, a token held) every
    // seed, so a run of a few seeds cannot miss it by chance.
    if world.tally.mid_write == 0 {
        world.main_cycle().await;
        world.crm_edit();
        world.kill_main(Some(true)).await;
    }
    // At least one refresh after an expiry (of a token the main process holds), and one
    // process beside the main one, every seed.
    world.main_cycle().await;
    world.crm.desk().expire_all();
    world.tally.expiries += 1;
    world.main_has_token = false;
    world.main_cycle_beside_other().await;
    world.quiet(crate::QUIET_CAP).await;
    world.check().await;
    let tally = world.tally;
    trace(|| format!("seed {seed}: {tally:?}"));
    world.close().await;
    tally
}

/// Seeds when neither `QUO_SYNC_CONVERGENCE_SEED` nor `QUO_SYNC_CONVERGENCE_SEEDS` is set: a
/// seed of this world takes about 10 s in a debug build on a loaded 2-core machine (five times
/// the CSV world's), so `cargo test` runs 4 (and seed 4 on PostgreSQL too).
const DEFAULT_SEEDS: u64 = 4;

/// The convergence seed list when one is asked for, else 1..=[`DEFAULT_SEEDS`].
fn seeds() -> Vec<u64> {
    let asked = ["QUO_SYNC_CONVERGENCE_SEED", "QUO_SYNC_CONVERGENCE_SEEDS"]
        .iter()
        .any(|name| std::env::var_os(name).is_some());
    if asked {
        crate::seeds()
    } else {
        (1..=DEFAULT_SEEDS).collect()
    }
}

/// A seed that hangs where the runtime's timeout cannot reach it still fails (as
/// `crate::watchdog` does for the CSV world, with this world's steps).
fn watchdog(seed: u64, after: Duration) -> std::sync::mpsc::Sender<()> {
    crate::watchdog_over(&STEPS, "convergence (tokens)", "tokens", seed, after)
}

/// Every seed of the convergence seed list (`QUO_SYNC_CONVERGENCE_SEED`/`…_SEEDS`, steps and
/// timeout as the CSV world takes them) on SQLite, and every fourth on PostgreSQL too; then the
/// run's own check that the faults it is about happened.
pub async fn run() {
    let steps: usize = crate::env_number("QUO_SYNC_CONVERGENCE_STEPS", 12);
    let limit = Duration::from_secs(crate::env_number("QUO_SYNC_CONVERGENCE_SEED_TIMEOUT", 120));
    let seeds = seeds();
    let mut tally = TokenTally::default();
    for &seed in &seeds {
        let postgres = seed % 4 == 0;
        for backend in [false, true] {
            if backend && !postgres {
                continue;
            }
            let pg_url = if backend {
                match crate::common::pg::database().await {
                    Some(url) => Some(url),
                    None => continue,
                }
            } else {
                None
            };
            STEPS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
            *SEED_START
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            let watchdog = watchdog(seed, limit + crate::WATCHDOG_GRACE);
            let mut task = tokio::spawn(run_seed(seed, steps, pg_url));
            let failure = match tokio::time::timeout(limit, &mut task).await {
                Ok(Ok(seed_tally)) => {
                    tally.merge(seed_tally);
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => {
                    task.abort();
                    Some(format!("timed out after {limit:?} (a hung cycle?)"))
                }
            };
            if let Some(failure) = failure {
                std::mem::forget(watchdog);
                let steps = STEPS
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .join("\n  ");
                let on = if backend { "PostgreSQL" } else { "SQLite" };
                panic!(
                    "convergence (tokens) failed for seed {seed} on {on} (replay: QUO_SYNC_CONVERGENCE_SEED={seed} cargo test --test convergence tokens): {failure}\nsteps:\n  {steps}"
                );
            }
            drop(watchdog);
        }
    }
    eprintln!(
        "convergence (tokens): {} seeds ({} on PostgreSQL), {} refreshes, {} rotations by second processes, {} expiries, {} kills ({} mid-write), {} Quo faults fired, {} CRM faults fired, {} runs failed under a fault, {} conflicts",
        tally.seeds,
        tally.postgres_seeds,
        tally.refreshes,
        tally.rotations_by_others,
        tally.expiries,
        tally.kills,
        tally.mid_write,
        tally.quo_faults,
        tally.crm_faults,
        tally.failed_runs,
        tally.conflicts
    );
    if seeds.len() >= 3 {
        assert!(
            tally.rotations_by_others > 0,
            "no second process rotated the token: {tally:?}"
        );
        assert!(
            tally.mid_write > 0,
            "no kill landed while a write was in flight: {tally:?}"
        );
        assert!(
            tally.quo_faults > 0 && tally.crm_faults > 0,
            "no Quo or no CRM fault fired: {tally:?}"
        );
    }
}
