//! "Another process rotates the token you hold", randomized (#21 item 7): the Salesforce example
//! config syncs a fake Salesforce org whose token endpoint rotates the refresh token on every
//! grant and, like vendors that detect reuse, revokes the whole family when a rotated-away token
//! comes back. Per seed, random steps mix:
//!
//! - CRM edits on the fake org and Quo edits in the sandbox (the reverse path writes them back);
//! - cycles of the main process (in-process, `run_cycle` on `app::build_context`);
//! - other processes on the same ledger reading the CRM at random moments, some while the main
//!   cycle runs and with slow grants so refreshes overlap: long-lived ones (a second
//!   `Source::from_config` + `attach_ledger`, kept across steps, as a standby or `reconcile`
//!   would) and the real binary (`quo-sync plan` beside a main cycle, `quo-sync once` between
//!   them);
//! - every access token expiring at once (`TokenDesk::expire_all`);
//! - the main process killed (its cycle dropped at a random point, its ledger connection gone)
//!   and restarted.
//!
//! Invariants: no grant ever presents a refresh token the org already rotated away
//! (`stale_presented() == 0`), the family is never revoked, no `invalid_grant` in any log, every
//! cycle and every binary run succeeds (no `auth_failed`, no exit 2), refreshes did happen (one
//! grant per process start at least, expired tokens refused and replaced), and at the end the CRM
//! and Quo agree: every CRM contact has exactly one Quo contact, with the same names and title,
//! and no Quo contact points at no CRM contact.
//!
//! A kill never lands inside the main process's own token request: a process killed after the
//! vendor rotated the token but before the answer reached it has lost the only valid token, and
//! no client can prevent that (the vendor retired the one it stored). The test kills only while
//! the main process holds a live access token (no refresh can be under way).
//!
//! Both on an SQLite ledger and on PostgreSQL (a fleet's ledger, where the claim on the stored
//! token lives in another server).
//!
//! Seeds: `QUO_SYNC_ROTATION_SEED=<n>` replays one seed; `QUO_SYNC_ROTATION_SEEDS=<count>` runs
//! seeds 1..=count (default 4 on SQLite, 2 on PostgreSQL). A failing seed is printed with the
//! line that replays it.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use quo_sync::config::LogFormat;
use quo_sync::ledger::LedgerTarget;
use quo_sync::sandbox::{SandboxConfig, SandboxHandle};
use quo_sync::sync::{Mode, SyncContext, run_cycle};
use quo_sync::telemetry::{CaptureWriter, init_with_writer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::salesforce::FakeSalesforce;
use support::token_desk::TokenDesk;
use support::vendor_run::{Credentials, SourceProcess, example_context_on, salesforce_config};

const CLIENT_ID: &str = "3MVG9-chaos-consumer-key";
const SECRET: &str = "sf-chaos-secret-DO-NOT-LEAK-5d1e";
const REFRESH: &str = "sf-chaos-refresh-DO-NOT-LEAK-90af";
const CONTACTS: usize = 6;
const STEPS: usize = 28;

/// The log capture for this test binary (one global subscriber).
fn logs() -> CaptureWriter {
    static LOGS: OnceLock<CaptureWriter> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CaptureWriter::default();
        init_with_writer(LogFormat::Json, "info", logs.clone());
        logs
    })
    .clone()
}

fn crm_id(i: usize) -> String {
    format!("0035g00000CH{i:04}AAA")
}

fn contacts() -> Vec<Value> {
    (0..CONTACTS)
        .map(|i| {
            json!({
                "Id": crm_id(i),
                "FirstName": format!("Chaos{i}"),
                "LastName": "Rotor",
                "Email": format!("chaos{i}@example.com"),
                "Phone": format!("+1415555{:04}", 8100 + i),
                "MobilePhone": null,
                "Title": "Engineer",
                "Account": { "attributes": { "type": "Account" }, "Name": format!("Acme {i}") },
            })
        })
        .collect()
}

/// The Salesforce example config pointed at `crm`, secrets in files, quick retries.
fn write_config(dir: &Path, crm: &str) -> PathBuf {
    let credentials = Credentials {
        client_id: CLIENT_ID,
        secret: SECRET,
        refresh: REFRESH,
    };
    salesforce_config(
        dir,
        crm,
        &credentials,
        &[("timeout = \"30s\"", "timeout = \"10s\"")],
    )
}

/// Another process's REST source on the same ledger (a standby, `reconcile`, a replica).
type Other = SourceProcess;

/// One seed's world: the org, the sandbox, the ledger, the main process and the others.
struct World {
    seed: u64,
    rng: StdRng,
    crm: FakeSalesforce,
    sandbox: SandboxHandle,
    dir: tempfile::TempDir,
    config: PathBuf,
    /// The ledger as the env override that names it (`QUO_SYNC__LEDGER__PATH` or `…__URL`).
    ledger_env: (&'static str, String),
    ledger: LedgerTarget,
    main: Option<SyncContext>,
    /// Whether the main process holds an access token it has not seen expire.
    main_has_token: bool,
    others: Vec<Other>,
    /// Output of every binary run.
    binary_logs: String,
    /// Process starts that then read successfully: each needed a grant of its own.
    starts: u64,
    expiries: u64,
    kills: u64,
    step_log: Vec<String>,
}

impl World {
    /// On an SQLite ledger in the world's folder, or on the PostgreSQL database at `pg_url`.
    async fn new(seed: u64, pg_url: Option<String>) -> World {
        logs();
        let mut desk = TokenDesk::new(CLIENT_ID, SECRET, REFRESH, Duration::from_secs(600));
        desk.rotate = true;
        desk.reuse_detection = true;
        let crm = FakeSalesforce::start(contacts(), desk, 4).await;
        let sandbox = SandboxHandle::start(SandboxConfig {
            requests_per_second: 0,
            conflict_on_duplicate: false,
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &crm.base_url);
        let (ledger_env, ledger) = match pg_url {
            Some(url) => (
                ("QUO_SYNC__LEDGER__URL", url.clone()),
                LedgerTarget::parse(&url).unwrap(),
            ),
            None => {
                let path = dir.path().join("ledger.db");
                (
                    ("QUO_SYNC__LEDGER__PATH", path.display().to_string()),
                    LedgerTarget::Sqlite(path),
                )
            }
        };
        World {
            seed,
            rng: StdRng::seed_from_u64(seed),
            crm,
            sandbox,
            config,
            ledger_env,
            ledger,
            dir,
            main: None,
            main_has_token: false,
            others: Vec::new(),
            binary_logs: String::new(),
            starts: 0,
            expiries: 0,
            kills: 0,
            step_log: Vec::new(),
        }
    }

    async fn main(&mut self) -> &SyncContext {
        if self.main.is_none() {
            let ledger = (self.ledger_env.0, self.ledger_env.1.clone());
            self.main = Some(example_context_on(&self.config, &self.sandbox, ledger).await);
            self.main_has_token = false;
            self.starts += 1;
        }
        self.main.as_ref().unwrap()
    }

    async fn main_cycle(&mut self, what: &str) {
        let seed = self.seed;
        let ctx = self.main().await;
        let report = run_cycle(ctx, Mode::Apply).await;
        if let Err(e) = report {
            panic!("seed {seed}: {what}: the main cycle failed: {e}");
        }
        self.main_has_token = true;
    }

    /// A main cycle and, beside it after a random pause, a read by another process; grants are
    /// slowed by a random delay so refreshes overlap.
    async fn main_cycle_beside_other(&mut self) {
        let delay = Duration::from_millis(self.rng.random_range(0..150));
        let pause = Duration::from_millis(self.rng.random_range(0..60));
        let pick = self.pick_other().await;
        self.crm.desk().set_delay(delay);
        let seed = self.seed;
        self.main().await;
        let ctx = self.main.as_ref().unwrap();
        let other = &self.others[pick];
        let (cycle, read) = tokio::join!(run_cycle(ctx, Mode::Apply), async {
            tokio::time::sleep(pause).await;
            other.read().await
        });
        self.crm.desk().set_delay(Duration::ZERO);
        if let Err(e) = cycle {
            panic!("seed {seed}: the main cycle beside another process failed: {e}");
        }
        let n = read.unwrap_or_else(|e| panic!("seed {seed}: the other process's read: {e}"));
        assert_eq!(
            n, CONTACTS as u64,
            "seed {seed}: the other process read everything"
        );
        self.main_has_token = true;
    }

    /// An existing other process, or a new one (then counted as a start).
    async fn pick_other(&mut self) -> usize {
        if self.others.is_empty() || (self.others.len() < 3 && self.rng.random_bool(0.3)) {
            self.others
                .push(Other::start(&self.config, &self.ledger).await);
            self.starts += 1;
            return self.others.len() - 1;
        }
        self.rng.random_range(0..self.others.len())
    }

    async fn other_read(&mut self) {
        let pick = self.pick_other().await;
        let seed = self.seed;
        let n = self.others[pick]
            .read()
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: another process's read: {e}"));
        assert_eq!(n, CONTACTS as u64, "seed {seed}");
        // Now and then that process ends.
        if self.rng.random_bool(0.2) {
            let other = self.others.swap_remove(pick);
            other.ledger.close().await;
        }
    }

    /// The real binary, `command` (`plan` or `once`), on the same ledger; asserts exit 0.
    fn binary(&self, command: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"));
        c.args([command, "--config"])
            .arg(&self.config)
            .env_remove("QUO_SYNC_CONFIG")
            .env("QUO_SYNC__QUO__BASE_URL", self.sandbox.base_url())
            .env("QUO_API_KEY", self.sandbox.api_key())
            .env("QUO_SYNC__QUO__REQUESTS_PER_SECOND", "1000")
            .env(self.ledger_env.0, &self.ledger_env.1)
            .env("QUO_SYNC__REVERSE__POLL_INTERVAL", "1ms")
            .env("QUO_SYNC__LOG__FORMAT", "json")
            .env("QUO_SYNC__LOG__LEVEL", "info")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    fn record_binary(&mut self, command: &str, out: std::process::Output) {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "seed {}: `quo-sync {command}` failed:\n{text}",
            self.seed
        );
        self.binary_logs.push_str(&text);
        self.starts += 1;
    }

    /// `quo-sync plan` (a dry run: it reads the CRM with the shared token) beside a main cycle.
    async fn plan_beside_main(&mut self) {
        let seed = self.seed;
        let delay = Duration::from_millis(self.rng.random_range(0..100));
        self.crm.desk().set_delay(delay);
        let mut plan = self.binary("plan");
        self.main().await;
        let ctx = self.main.as_ref().unwrap();
        let (cycle, out) = tokio::join!(run_cycle(ctx, Mode::Apply), plan.output());
        self.crm.desk().set_delay(Duration::ZERO);
        if let Err(e) = cycle {
            panic!("seed {seed}: the main cycle beside `plan` failed: {e}");
        }
        self.main_has_token = true;
        self.record_binary("plan", out.unwrap());
    }

    /// `quo-sync once` between main cycles (one writer at a time).
    async fn once_between(&mut self) {
        let out = self.binary("once").output().await.unwrap();
        self.record_binary("once", out);
    }

    /// The main process dies, mid-cycle when it holds a live access token (never inside its own
    /// token request), and a new one starts at its next cycle.
    async fn kill_main(&mut self) {
        if let Some(ctx) = self.main.take() {
            if self.main_has_token {
                let after = Duration::from_millis(self.rng.random_range(0..40));
                let _ = tokio::time::timeout(after, run_cycle(&ctx, Mode::Apply)).await;
            }
            ctx.ledger.close().await;
            drop(ctx);
            self.kills += 1;
        }
        self.main_has_token = false;
    }

    fn crm_edit(&mut self, step: usize) {
        let i = self.rng.random_range(0..CONTACTS);
        let field = ["FirstName", "LastName", "Title"][self.rng.random_range(0..3)];
        let value = format!("{field}-crm-s{}-{step}", self.seed);
        self.crm.edit(&crm_id(i), field, json!(value));
    }

    async fn quo_edit(&mut self, step: usize) {
        let i = self.rng.random_range(0..CONTACTS);
        let id = crm_id(i);
        let Some(contact) = self
            .sandbox
            .contacts()
            .into_iter()
            .find(|c| c["externalId"] == id.as_str())
        else {
            return; // not synced yet
        };
        let field = ["firstName", "lastName", "role"][self.rng.random_range(0..3)];
        let value = format!("{field}-quo-s{}-{step}", self.seed);
        let quo_id = contact["id"].as_str().unwrap().to_string();
        self.sandbox
            .app_edit(&quo_id, json!({ "defaultFields": { field: value } }))
            .expect("the app edit applies");
        // Timestamps in milliseconds: the next edit is later.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    async fn step(&mut self, step: usize) {
        let roll = self.rng.random_range(0..100);
        let name = match roll {
            0..16 => {
                self.crm_edit(step);
                "crm edit"
            }
            16..28 => {
                self.quo_edit(step).await;
                "quo edit"
            }
            28..46 => {
                self.main_cycle("a cycle").await;
                "main cycle"
            }
            46..62 => {
                self.main_cycle_beside_other().await;
                "main cycle beside another process"
            }
            62..72 => {
                self.other_read().await;
                "another process reads"
            }
            72..79 => {
                self.plan_beside_main().await;
                "quo-sync plan beside a main cycle"
            }
            79..83 => {
                self.once_between().await;
                "quo-sync once"
            }
            83..93 => {
                self.crm.desk().expire_all();
                self.main_has_token = false;
                self.expiries += 1;
                "every access token expires"
            }
            _ => {
                self.kill_main().await;
                "main process killed"
            }
        };
        self.step_log.push(format!("{step}: {name}"));
        let desk = self.crm.desk();
        assert_eq!(
            desk.stale_presented(),
            0,
            "seed {}: a rotated-away refresh token was presented (steps: {:?})",
            self.seed,
            self.step_log
        );
        assert!(
            !desk.revoked(),
            "seed {}: the family was revoked",
            self.seed
        );
    }

    /// Main cycles until one changes nothing (at most 6), then CRM and Quo must agree.
    async fn settle_and_check(&mut self) {
        let seed = self.seed;
        let mut quiet = false;
        for _ in 0..6 {
            let ctx = self.main().await;
            let report = run_cycle(ctx, Mode::Apply)
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: a settling cycle failed: {e}"));
            let c = &report.counts;
            if c.created + c.updated + c.deleted == 0 && report.operations.is_empty() {
                quiet = true;
                break;
            }
        }
        let quo = self.sandbox.contacts();
        let mut disagreements = Vec::new();
        for i in 0..CONTACTS {
            let id = crm_id(i);
            let record = self.crm.contact(&id).unwrap();
            let linked: Vec<&Value> = quo
                .iter()
                .filter(|c| c["externalId"] == id.as_str())
                .collect();
            if linked.len() != 1 {
                disagreements.push(format!("{id}: {} Quo contacts", linked.len()));
                continue;
            }
            let fields = &linked[0]["defaultFields"];
            for (crm_key, quo_key) in [
                ("FirstName", "firstName"),
                ("LastName", "lastName"),
                ("Title", "role"),
            ] {
                if record[crm_key] != fields[quo_key] {
                    disagreements.push(format!(
                        "{id}: CRM {crm_key} {} ≠ Quo {quo_key} {}",
                        record[crm_key], fields[quo_key]
                    ));
                }
            }
        }
        let strays = quo
            .iter()
            .filter(|c| {
                c["externalId"]
                    .as_str()
                    .is_none_or(|e| (0..CONTACTS).all(|i| crm_id(i) != e))
            })
            .count();
        assert!(
            disagreements.is_empty() && strays == 0,
            "seed {seed}: CRM and Quo disagree after settling (quiet: {quiet}): {disagreements:#?}, {strays} strays; steps {:?}",
            self.step_log
        );
        assert!(quiet, "seed {seed}: the cycles never went quiet");
    }

    async fn close(mut self) {
        if let Some(ctx) = self.main.take() {
            ctx.ledger.close().await;
        }
        for other in self.others.drain(..) {
            other.ledger.close().await;
        }
        self.sandbox.shutdown().await;
        drop(self.dir);
    }
}

/// Prints the seed that failed and how to replay it.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "token_rotation_chaos failed at seed {0}; replay with QUO_SYNC_ROTATION_SEED={0} cargo test --test token_rotation_chaos",
                self.0
            );
        }
    }
}

/// The seeds to run: `QUO_SYNC_ROTATION_SEED`, else 1..=`QUO_SYNC_ROTATION_SEEDS` (else
/// `default`).
fn seeds(default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("QUO_SYNC_ROTATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let count: u64 = std::env::var("QUO_SYNC_ROTATION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (1..=count).collect()
}

async fn one_seed(seed: u64, pg_url: Option<String>) {
    let _guard = SeedGuard(seed);
    let logs = logs();
    let logged_before = logs.contents().len();
    let mut world = World::new(seed, pg_url).await;
    for step in 0..STEPS {
        world.step(step).await;
    }
    // At least one refresh after an expiry, and one process beside the main one, every seed.
    world.crm.desk().expire_all();
    world.expiries += 1;
    world.main_has_token = false;
    world.main_cycle_beside_other().await;
    world.settle_and_check().await;

    let desk = world.crm.desk();
    assert_eq!(desk.stale_presented(), 0, "seed {seed}");
    assert!(!desk.revoked(), "seed {seed}");
    // Refreshes happened: every process start was granted a token of its own, and expired
    // tokens were refused and replaced.
    assert!(
        desk.issued() >= world.starts,
        "seed {seed}: {} grants for {} process starts",
        desk.issued(),
        world.starts
    );
    assert!(
        desk.expired_uses() >= 1,
        "seed {seed}: no expired token was refused"
    );
    assert!(
        world.crm.unauthorized() >= 1,
        "seed {seed}: the CRM never answered 401"
    );
    let captured = logs.contents()[logged_before..].to_string();
    for (what, text) in [
        ("the in-process logs", &captured),
        ("the binaries' output", &world.binary_logs),
    ] {
        assert!(
            !text.contains("invalid_grant"),
            "seed {seed}: invalid_grant in {what}"
        );
        assert!(
            !text.contains(REFRESH) && !text.contains(SECRET),
            "seed {seed}: a secret in {what}"
        );
    }
    assert!(
        captured.contains("crm_refresh_token_rotated")
            || world.binary_logs.contains("crm_refresh_token_rotated"),
        "seed {seed}: no rotation was kept"
    );
    eprintln!(
        "seed {seed}: {} grants, {} process starts, {} expiries, {} kills, {} 401s",
        desk.issued(),
        world.starts,
        world.expiries,
        world.kills,
        world.crm.unauthorized()
    );
    world.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_by_other_processes_at_random_moments_never_goes_stale() {
    for seed in seeds(4) {
        one_seed(seed, None).await;
    }
}

/// The same on a PostgreSQL ledger (a fleet's), where the claim is a row of another database
/// server; two seeds by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_token_rotated_by_other_processes_never_goes_stale() {
    for seed in seeds(2) {
        let Some(url) = common::pg::database().await else {
            return;
        };
        one_seed(seed, Some(url)).await;
    }
}
