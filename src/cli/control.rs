//! `pause`, `resume` and `run-now`: operator control through the ledger, so every replica (and
//! the leader wherever it runs) sees it. None of them needs the writer lease.

use std::path::Path;

use quo_sync::ops::control;

use super::commands::open_ledger;

/// `pause [--for 1h]`.
pub async fn pause(config: &Path, duration: Option<std::time::Duration>) -> anyhow::Result<u8> {
    let ledger = open_ledger(config).await?;
    let pause = control::pause(&ledger, &control::operator(), duration).await?;
    ledger.close().await;
    println!(
        "{}: nothing is written to Quo or the CRM; webhooks are still received and kept (quo-sync resume)",
        pause.describe()
    );
    Ok(0)
}

/// `resume`.
pub async fn resume(config: &Path) -> anyhow::Result<u8> {
    let ledger = open_ledger(config).await?;
    let was = control::resume(&ledger, &control::operator()).await?;
    ledger.close().await;
    match was {
        Some(was) => println!(
            "resumed (was {}); the leader starts a cycle now",
            was.describe()
        ),
        None => println!("not paused"),
    }
    Ok(0)
}

/// `run-now`.
pub async fn run_now(config: &Path) -> anyhow::Result<u8> {
    let ledger = open_ledger(config).await?;
    control::run_now(&ledger, &control::operator()).await?;
    let leader = ledger.lease_holder().await?.filter(|h| h.live);
    let paused = ledger.pause_state().await?;
    ledger.close().await;
    match leader {
        Some(h) => println!(
            "asked the leader ({} pid {}) to start a cycle",
            h.host, h.pid
        ),
        None => println!(
            "asked for a cycle; no replica holds the writer lease now, so it starts when one does"
        ),
    }
    if let Some(pause) = paused {
        println!("note: {}: the cycle writes nothing", pause.describe());
    }
    Ok(0)
}
