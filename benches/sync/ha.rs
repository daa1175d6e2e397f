//! `ha` section: failover time of two `run` replicas (the real binary) on one SQLite ledger.
//!
//! - `takeover_ms`: the leader is SIGKILLed 20% into a 200-record initial load; time from the kill
//!   to the standby's `leader_acquired` and to its first successful Quo write. Both replicas run
//!   on one machine, so the standby sees the holder's pid is gone and need not wait for expiry.
//! - `takeover_after_pause_ms`: the same, but the leader is frozen with SIGSTOP (what a leader
//!   on another machine that died or lost its network looks like): the standby must wait for the
//!   lease to run out, so this is bounded by `lease_ms` plus one poll.

use std::time::{Duration, Instant};

use super::service::Service;
use quo_sync::sandbox::{SandboxConfig, SandboxHandle};
use serde_json::{Value, json};

const RECORDS: u64 = 200;
const LEASE: Duration = Duration::from_secs(2);

async fn wait(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "ha bench: {what} not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One failover: `pause` freezes the leader instead of killing it. Returns (ms to
/// `leader_acquired`, ms to the first write) after the fault, and the contacts at the end.
async fn failover(pause: bool) -> (f64, f64, usize) {
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        conflict_on_duplicate: false,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    super::write_csv(&dir.path().join("contacts.csv"), RECORDS, "Acme");
    let config = super::write_config(
        dir.path(),
        &sandbox,
        60,
        &format!("[ha]\nlease = \"{}s\"\n", LEASE.as_secs()),
    );
    let a = Service::start(&config, &[("QUO_SYNC__SCHEDULE__INTERVAL", "200ms")]);
    let b = Service::start(&config, &[("QUO_SYNC__SCHEDULE__INTERVAL", "200ms")]);
    wait("a leader", Duration::from_secs(20), || {
        a.has("leader_acquired") || b.has("leader_acquired")
    })
    .await;
    let (mut leader, standby) = if a.has("leader_acquired") {
        (a, b)
    } else {
        (b, a)
    };
    wait("20% of the load", Duration::from_secs(60), || {
        sandbox.contacts().len() as u64 >= RECORDS / 5
    })
    .await;
    let pid = leader.child.id().unwrap().to_string();
    let before = sandbox.stats().writes_total();
    let fault_at = Instant::now();
    if pause {
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status();
    } else {
        leader.child.start_kill().unwrap();
    }
    // A frozen leader's last in-flight write may still land: count from what it left.
    if pause {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = before.max(sandbox.stats().writes_total());
    let mut acquired = None;
    let mut first_write = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if acquired.is_none() && standby.has("leader_acquired") {
            acquired = Some(fault_at.elapsed());
        }
        if first_write.is_none() && sandbox.stats().writes_total() > before {
            first_write = Some(fault_at.elapsed());
        }
        if acquired.is_some() && first_write.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ha bench: takeover not within 30s (pause: {pause}; acquired after {acquired:?}, \
             first write after {first_write:?}; writes {before} before, {} now);\n\
             standby's log tail:\n{}\nleader's log tail:\n{}",
            sandbox.stats().writes_total(),
            standby.tail(40).join("\n"),
            leader.tail(10).join("\n"),
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait("the rest of the load", Duration::from_secs(60), || {
        sandbox.contacts().len() as u64 >= RECORDS
    })
    .await;
    // A few more cycles: a duplicate would show as more contacts than records.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let contacts = sandbox.contacts().len();
    if pause {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status();
    }
    let _ = leader.child.wait().await;
    drop(standby);
    sandbox.shutdown().await;
    let ms = |d: Option<Duration>| d.unwrap().as_secs_f64() * 1000.0;
    (ms(acquired), ms(first_write), contacts)
}

/// The `ha` figures.
pub async fn takeover() -> Value {
    let (killed_acquired, killed_write, killed_contacts) = failover(false).await;
    let (paused_acquired, paused_write, paused_contacts) = failover(true).await;
    json!({
        "lease_ms": LEASE.as_millis() as u64,
        "records": RECORDS,
        "takeover_ms": killed_acquired,
        "takeover_first_write_ms": killed_write,
        "takeover_after_pause_ms": paused_acquired,
        "takeover_after_pause_first_write_ms": paused_write,
        "contacts_after_kill": killed_contacts,
        "contacts_after_pause": paused_contacts,
    })
}
