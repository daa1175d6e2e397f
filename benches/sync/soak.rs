//! `soak` section (#21): two `quo-sync run` replicas (the real binary) on one ledger keep
//! a CSV of `RECORDS` rows and the sandbox in agreement for `QUO_SYNC_BENCH_SOAK_SECS` seconds
//! (default 600) while the CSV changes every second and random faults, drawn from a seeded
//! generator (`QUO_SYNC_BENCH_SOAK_SEED`, default 21), strike every 10 to 25 seconds:
//!
//! - **Quo 5xx bursts**: the next 5 to 60 API requests answer 500, 502 or 503 (`Fault::Status`);
//! - **the CRM down for 60 s** (a quarter of the run when that is shorter): the CSV file is
//!   moved away, so every read fails, then comes back with the edits made meanwhile;
//! - **the leader SIGSTOPped past its lease**: the lease holder is frozen for the lease plus
//!   2 s (the standby takes over once the lease runs out), then SIGCONTed; it must notice it was
//!   deposed and stand by, its late writes fenced;
//! - **a PostgreSQL restart**: the ledger's server is stopped (`fast`: sessions ended, or
//!   `immediate`: a crash and WAL recovery), left down 1 to 6 s (often past the lease), and
//!   started again; the service must ride it out (cycles fail and are retried, no replica exits).
//!   Right after the server is back, one row is edited: the time until Quo shows that edit is the
//!   recovery time. The first fault is always a restart, so a shortened soak has one.
//!
//! The ledger is PostgreSQL (a server of the bench's own, started with the tests' helper
//! `tests/common/pg.rs`) unless `QUO_SYNC_BENCH_SOAK_LEDGER=sqlite` or PostgreSQL is not
//! installed; then it is one SQLite file and there is no restart (`soak.ledger` says which).
//!
//! Figures: `soak.peak_rss_mib` (the larger `VmHWM` of the two processes), `soak.rss_growth_mib`
//! (the larger growth of a process's RSS from the end of the warm-up, a fifth of the run but at
//! least 30 s, to the end), `soak.converged` (after the faults stop, every CSV row has exactly one contact with
//! the row's company within 60 s), `soak.duplicates` (external ids with more than one contact,
//! counted at the end), `soak.rss_peak_growth_mib` (the larger rise of a replica's highest RSS
//! from the first to the second half after the warm-up: a standby that becomes leader grows
//! once, which `rss_growth_mib` counts as growth when it happens after the warm-up; with
//! `leader_at_warm_up` and `leader_at_end` to tell), the faults injected, `soak.exited` (exit codes of replicas that stopped:
//! none should), and `soak.pg_restart.*`: restarts, how long the server was down each time,
//! cycles that failed on the ledger, leases lost, the slowest and mean recovery, whether every
//! probe edit arrived, and the most external ids with two contacts seen right after a recovery.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::service::Service;
use quo_sync::ledger::{Ledger, LedgerTarget};
use quo_sync::sandbox::{Fault, SandboxConfig, SandboxHandle};

const RECORDS: u64 = 200;
const LEASE: Duration = Duration::from_secs(2);

/// The CSV as the soak keeps it: each row's company carries a version the edits bump.
struct Rows {
    versions: Vec<u32>,
}

impl Rows {
    fn write(&self, path: &Path) {
        use std::io::Write;
        // Written beside and renamed over, as a well-behaved exporter does.
        let tmp = path.with_extension("csv.tmp");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
        writeln!(out, "{}", super::HEADER).unwrap();
        for (i, v) in self.versions.iter().enumerate() {
            writeln!(out, "{}", super::row(i as u64, &format!("Co{v}"))).unwrap();
        }
        drop(out);
        std::fs::rename(&tmp, path).unwrap();
    }

    /// The company row `i` should have in Quo.
    fn company(&self, i: usize) -> String {
        format!("Co{} {i}", self.versions[i])
    }
}

/// RSS and peak RSS (`VmRSS`, `VmHWM`) of `pid`, in MiB.
fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

/// Whether Quo holds exactly one contact per row with the row's company; and the number of
/// external ids with more than one contact.
fn agreement(sandbox: &SandboxHandle, rows: &Rows) -> (bool, usize) {
    let mut by_id: std::collections::HashMap<String, Vec<Value>> = Default::default();
    for contact in sandbox.contacts() {
        if let Some(id) = contact["externalId"].as_str() {
            by_id.entry(id.to_string()).or_default().push(contact);
        }
    }
    let duplicates = by_id.values().filter(|c| c.len() > 1).count();
    let agreed = (0..rows.versions.len()).all(|i| {
        by_id.get(&format!("b-{i}")).is_some_and(|c| {
            c.len() == 1 && c[0]["defaultFields"]["company"] == rows.company(i).as_str()
        })
    });
    (agreed && by_id.len() == rows.versions.len(), duplicates)
}

/// The `soak` figures.
pub async fn soak() -> Value {
    let secs: u64 = std::env::var("QUO_SYNC_BENCH_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let seed: u64 = std::env::var("QUO_SYNC_BENCH_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    let run_for = Duration::from_secs(secs);
    let mut rng = StdRng::seed_from_u64(seed);
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        // A duplicate must show as a second contact, not be refused by the sandbox.
        conflict_on_duplicate: false,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("contacts.csv");
    let mut rows = Rows {
        versions: vec![0; RECORDS as usize],
    };
    rows.write(&csv);
    let config = super::write_config(
        dir.path(),
        &sandbox,
        50,
        &format!("[ha]\nlease = \"{}s\"\n", LEASE.as_secs()),
    );
    let server = match std::env::var("QUO_SYNC_BENCH_SOAK_LEDGER").as_deref() {
        Ok("sqlite") => None,
        _ => super::pg::OwnServer::start().await,
    };
    let url = server.as_ref().map(|s| s.url());
    let mut env = vec![
        ("QUO_SYNC__SCHEDULE__INTERVAL", "1s"),
        ("QUO_SYNC__QUO__TIMEOUT", "1s"),
        ("QUO_SYNC__QUO__MAX_BACKOFF", "500ms"),
        ("QUO_SYNC__LOG__LEVEL", "warn"),
    ];
    if let Some(url) = &url {
        env.push(("QUO_SYNC__LEDGER__URL", url));
    }
    let mut replicas = [Service::start(&config, &env), Service::start(&config, &env)];
    let pids: Vec<u32> = replicas.iter().map(|r| r.child.id().unwrap()).collect();
    let target = match &url {
        Some(url) => LedgerTarget::parse(url).unwrap(),
        None => LedgerTarget::Sqlite(dir.path().join("ledger.db")),
    };
    let ledger = Ledger::open_target(&target).await.unwrap();

    let started = Instant::now();
    // The first cycles load every record and grow the allocators' pools: growth is measured
    // from the end of a warm-up (a fifth of the run, at least 30 s, at most half).
    let warm_up = (run_for / 5).max(Duration::from_secs(30)).min(run_for / 2);
    let crm_down_for = Duration::from_secs(60).min(run_for / 4);
    let mut baseline: Vec<Option<f64>> = vec![None; pids.len()];
    let mut last_rss = vec![0.0f64; pids.len()];
    // Highest RSS of each replica in the first and the second half after the warm-up: a leak
    // raises the second; a standby that becomes leader raises its RSS once, in either half.
    let second_half_from = warm_up + (run_for.saturating_sub(warm_up)) / 2;
    let mut halves_peak = vec![[0.0f64; 2]; pids.len()];
    let mut leader_at_warm_up: Option<usize> = None;
    let mut peak = 0.0f64;
    let mut next_fault = started + Duration::from_secs(rng.random_range(10..25));
    let mut crm_back_at: Option<Instant> = None;
    let mut faults =
        json!({ "quo_5xx_bursts": 0, "crm_down": 0, "leader_stopped": 0, "pg_restarts": 0 });
    let mut restarts = Restarts::default();
    let mut edits = 0u64;
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A few rows change every second; while the CRM is down the edits wait for it.
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..RECORDS as usize);
            rows.versions[i] += 1;
            edits += 1;
        }
        match crm_back_at {
            Some(at) if Instant::now() >= at => {
                crm_back_at = None;
                rows.write(&csv);
            }
            Some(_) => {}
            None => rows.write(&csv),
        }
        for (k, pid) in pids.iter().enumerate() {
            if let Some((rss, hwm)) = rss_mib(*pid) {
                peak = peak.max(hwm);
                last_rss[k] = rss;
                if started.elapsed() >= warm_up {
                    let half = usize::from(started.elapsed() >= second_half_from);
                    halves_peak[k][half] = halves_peak[k][half].max(rss);
                }
                if baseline[k].is_none() && started.elapsed() >= warm_up {
                    baseline[k] = Some(rss);
                    if leader_at_warm_up.is_none() {
                        leader_at_warm_up = leader_index(&ledger, &pids).await;
                    }
                }
            }
        }
        if Instant::now() < next_fault || crm_back_at.is_some() {
            continue;
        }
        next_fault = Instant::now() + Duration::from_secs(rng.random_range(10..25));
        // On PostgreSQL the first fault is a restart, so a short soak has one too.
        let kind = match &server {
            Some(_) if restarts.down_ms.is_empty() => 3,
            Some(_) => rng.random_range(0..4),
            None => rng.random_range(0..3),
        };
        match kind {
            0 => {
                sandbox.inject(Fault::Status {
                    status: [500, 502, 503][rng.random_range(0..3)],
                    count: rng.random_range(5..60),
                    retry_after: None,
                });
                faults["quo_5xx_bursts"] = json!(faults["quo_5xx_bursts"].as_u64().unwrap() + 1);
            }
            1 => {
                let _ = std::fs::remove_file(&csv);
                crm_back_at = Some(Instant::now() + crm_down_for);
                faults["crm_down"] = json!(faults["crm_down"].as_u64().unwrap() + 1);
            }
            3 => {
                let server = server.as_ref().unwrap();
                let mode = ["fast", "immediate"][rng.random_range(0..2)];
                let down_for = Duration::from_millis(rng.random_range(1000..6000));
                server.restart(mode, down_for).await;
                faults["pg_restarts"] = json!(faults["pg_restarts"].as_u64().unwrap() + 1);
                // The server is back: an edit made now must reach Quo.
                let probe = rng.random_range(0..RECORDS as usize);
                rows.versions[probe] += 1;
                edits += 1;
                rows.write(&csv);
                let back = Instant::now();
                let want = rows.company(probe);
                let mut arrived = false;
                while back.elapsed() < Duration::from_secs(60) {
                    let company = sandbox
                        .contacts()
                        .into_iter()
                        .find(|c| c["externalId"] == format!("b-{probe}").as_str())
                        .map(|c| c["defaultFields"]["company"].clone());
                    if company.is_some_and(|c| c == want.as_str()) {
                        arrived = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                restarts.down_ms.push(down_for.as_millis() as u64);
                restarts.modes.push(mode);
                restarts.recovery_s.push(back.elapsed().as_secs_f64());
                restarts.all_arrived &= arrived;
                restarts.duplicates = restarts.duplicates.max(agreement(&sandbox, &rows).1);
            }
            _ => {
                let holder = ledger.lease_holder().await.ok().flatten();
                if let Some(pid) = holder
                    .filter(|h| h.live)
                    .and_then(|h| u32::try_from(h.pid).ok())
                    .filter(|pid| pids.contains(pid))
                {
                    signal(pid, "-STOP");
                    tokio::time::sleep(LEASE + Duration::from_secs(2)).await;
                    signal(pid, "-CONT");
                    faults["leader_stopped"] =
                        json!(faults["leader_stopped"].as_u64().unwrap() + 1);
                }
            }
        }
    }
    // The faults stop; the CSV is whole again. Agreement must follow.
    rows.write(&csv);
    let quiet = Instant::now();
    let mut converged = false;
    let mut duplicates = 0;
    while quiet.elapsed() < Duration::from_secs(60) {
        let (agreed, dups) = agreement(&sandbox, &rows);
        duplicates = dups;
        if agreed {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converge_ms = quiet.elapsed().as_secs_f64() * 1000.0;
    // Settle a few more cycles: a late twin would show now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (still, dups) = agreement(&sandbox, &rows);
    duplicates = duplicates.max(dups);
    converged &= still;
    for (k, pid) in pids.iter().enumerate() {
        if let Some((rss, hwm)) = rss_mib(*pid) {
            peak = peak.max(hwm);
            last_rss[k] = rss;
        }
    }
    let growth = (0..pids.len())
        .filter_map(|k| baseline[k].map(|b| last_rss[k] - b))
        .fold(0.0f64, f64::max);
    let leader_at_end = leader_index(&ledger, &pids).await;
    let peak_growth = halves_peak
        .iter()
        .filter(|[first, second]| *first > 0.0 && *second > 0.0)
        .map(|[first, second]| second - first)
        .fold(0.0f64, f64::max);
    let ledger_failures: usize = replicas
        .iter()
        .map(|r| r.count("cycle_failed", "ledger"))
        .sum();
    let leases_lost: usize = replicas.iter().map(|r| r.count("leader_lost", "")).sum();
    let exited: Vec<Option<i32>> = replicas
        .iter_mut()
        .filter_map(|r| r.child.try_wait().ok().flatten())
        .map(|status| status.code())
        .collect();
    let alive = replicas.len() - exited.len();
    drop(replicas);
    ledger.close().await;
    drop(server);
    let recovery_max = restarts.recovery_s.iter().copied().fold(0.0f64, f64::max);
    let recovery_mean = if restarts.recovery_s.is_empty() {
        0.0
    } else {
        restarts.recovery_s.iter().sum::<f64>() / restarts.recovery_s.len() as f64
    };
    let round = |s: f64| (s * 100.0).round() / 100.0;
    sandbox.shutdown().await;
    json!({
        "duration_s": secs,
        "seed": seed,
        "records": RECORDS,
        "ledger": if url.is_some() { "postgres" } else { "sqlite" },
        "replicas": alive,
        "exited": exited,
        "lease_ms": LEASE.as_millis() as u64,
        "csv_edits": edits,
        "faults": faults,
        "crm_down_s": crm_down_for.as_secs(),
        "peak_rss_mib": (peak * 10.0).round() / 10.0,
        "rss_growth_mib": (growth * 10.0).round() / 10.0,
        "rss_mib_after_warm_up": baseline.iter().map(|b| b.map(|b| (b * 10.0).round() / 10.0)).collect::<Vec<_>>(),
        "rss_mib_at_end": last_rss.iter().map(|r| (r * 10.0).round() / 10.0).collect::<Vec<_>>(),
        "warm_up_s": warm_up.as_secs(),
        "rss_peak_growth_mib": (peak_growth * 10.0).round() / 10.0,
        "rss_peak_mib_by_half": halves_peak.iter().map(|h| h.map(|r| (r * 10.0).round() / 10.0)).collect::<Vec<_>>(),
        "leader_at_warm_up": leader_at_warm_up,
        "leader_at_end": leader_at_end,
        "converged": converged,
        "converge_ms": converge_ms.round(),
        "duplicates": duplicates,
        "pg_restart": {
            "count": restarts.down_ms.len(),
            "down_ms": restarts.down_ms,
            "modes": restarts.modes,
            "cycles_failed": ledger_failures,
            "leases_lost": leases_lost,
            "recovery_s_max": round(recovery_max),
            "recovery_s_mean": round(recovery_mean),
            "recovered": restarts.all_arrived,
            "duplicates": restarts.duplicates,
        },
    })
}

/// Which replica (0 or 1) holds the lease, if the ledger answers.
async fn leader_index(ledger: &Ledger, pids: &[u32]) -> Option<usize> {
    let holder = ledger.lease_holder().await.ok().flatten()?;
    pids.iter()
        .position(|pid| i64::from(*pid) == holder.pid && holder.live)
}

/// What the PostgreSQL restarts showed.
struct Restarts {
    down_ms: Vec<u64>,
    modes: Vec<&'static str>,
    /// From the server being back to Quo showing the edit made then, per restart.
    recovery_s: Vec<f64>,
    all_arrived: bool,
    /// The most external ids with more than one contact, right after a recovery.
    duplicates: usize,
}

impl Default for Restarts {
    fn default() -> Self {
        Self {
            down_ms: Vec::new(),
            modes: Vec::new(),
            recovery_s: Vec::new(),
            all_arrived: true,
            duplicates: 0,
        }
    }
}
