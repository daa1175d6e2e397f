//! `soak` section (#21): two `quo-sync run` replicas (the real binary) on one SQLite ledger keep
//! a CSV of `RECORDS` rows and the sandbox in agreement for `QUO_SYNC_BENCH_SOAK_SECS` seconds
//! (default 600) while the CSV changes every second and random faults, drawn from a seeded
//! generator (`QUO_SYNC_BENCH_SOAK_SEED`, default 21), strike every 10 to 25 seconds:
//!
//! - **Quo 5xx bursts**: the next 5 to 60 API requests answer 500, 502 or 503 (`Fault::Status`);
//! - **the CRM down for 60 s** (a quarter of the run when that is shorter): the CSV file is
//!   moved away, so every read fails, then comes back with the edits made meanwhile;
//! - **the leader SIGSTOPped past its lease**: the lease holder is frozen for the lease plus
//!   2 s (the standby takes over once the lease runs out), then SIGCONTed; it must notice it was
//!   deposed and stand by, its late writes fenced.
//!
//! A PostgreSQL restart is not among them: the harness runs the SQLite ledger (the PostgreSQL
//! cluster of the tests lives in `tests/common/pg.rs`, outside the bench's reach).
//!
//! Figures: `soak.peak_rss_mib` (the larger `VmHWM` of the two processes), `soak.rss_growth_mib`
//! (the larger growth of a process's RSS from the end of the warm-up, a fifth of the run but at
//! least 30 s, to the end), `soak.converged` (after the faults stop, every CSV row has exactly one contact with
//! the row's company within 60 s), `soak.duplicates` (external ids with more than one contact,
//! counted at the end), and the faults injected.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::service::Service;
use quo_sync::ledger::Ledger;
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
    let env = [
        ("QUO_SYNC__SCHEDULE__INTERVAL", "1s"),
        ("QUO_SYNC__QUO__TIMEOUT", "1s"),
        ("QUO_SYNC__QUO__MAX_BACKOFF", "500ms"),
        ("QUO_SYNC__LOG__LEVEL", "warn"),
    ];
    let replicas = [Service::start(&config, &env), Service::start(&config, &env)];
    let pids: Vec<u32> = replicas.iter().map(|r| r.child.id().unwrap()).collect();
    let ledger = Ledger::open(&dir.path().join("ledger.db")).await.unwrap();

    let started = Instant::now();
    // The first cycles load every record and grow the allocators' pools: growth is measured
    // from the end of a warm-up (a fifth of the run, at least 30 s, at most half).
    let warm_up = (run_for / 5).max(Duration::from_secs(30)).min(run_for / 2);
    let crm_down_for = Duration::from_secs(60).min(run_for / 4);
    let mut baseline: Vec<Option<f64>> = vec![None; pids.len()];
    let mut last_rss = vec![0.0f64; pids.len()];
    let mut peak = 0.0f64;
    let mut next_fault = started + Duration::from_secs(rng.random_range(10..25));
    let mut crm_back_at: Option<Instant> = None;
    let mut faults = json!({ "quo_5xx_bursts": 0, "crm_down": 0, "leader_stopped": 0 });
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
                if baseline[k].is_none() && started.elapsed() >= warm_up {
                    baseline[k] = Some(rss);
                }
            }
        }
        if Instant::now() < next_fault || crm_back_at.is_some() {
            continue;
        }
        next_fault = Instant::now() + Duration::from_secs(rng.random_range(10..25));
        match rng.random_range(0..3) {
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
    let alive = replicas.len();
    drop(replicas);
    ledger.close().await;
    sandbox.shutdown().await;
    json!({
        "duration_s": secs,
        "seed": seed,
        "records": RECORDS,
        "replicas": alive,
        "lease_ms": LEASE.as_millis() as u64,
        "csv_edits": edits,
        "faults": faults,
        "crm_down_s": crm_down_for.as_secs(),
        "peak_rss_mib": (peak * 10.0).round() / 10.0,
        "rss_growth_mib": (growth * 10.0).round() / 10.0,
        "rss_mib_after_warm_up": baseline.iter().map(|b| b.map(|b| (b * 10.0).round() / 10.0)).collect::<Vec<_>>(),
        "rss_mib_at_end": last_rss.iter().map(|r| (r * 10.0).round() / 10.0).collect::<Vec<_>>(),
        "warm_up_s": warm_up.as_secs(),
        "converged": converged,
        "converge_ms": converge_ms.round(),
        "duplicates": duplicates,
    })
}
