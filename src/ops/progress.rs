//! Progress on long work: a bar with counts and ETA on a terminal, plain log lines otherwise.

use std::io::IsTerminal;

/// A spinner on a terminal; nothing otherwise.
pub fn progress_bar(message: &'static str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(message);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(bar)
}

/// Shows cycle progress: a bar with counts and ETA on a terminal (the total estimated from the
/// ledger's size; while the workspace is listed before the first creates, the contacts listed),
/// plain log lines every 10 s otherwise.
pub fn watch_progress(ctx: &crate::sync::SyncContext) -> tokio::task::JoinHandle<()> {
    let counter = ctx.progress.clone();
    let listing = ctx.listing.clone();
    let ledger = ctx.ledger.clone();
    tokio::spawn(async move {
        use std::sync::atomic::Ordering;
        let expected: i64 = ledger.record_count().await.unwrap_or(0);
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(expected.max(1) as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos}/{len} records  {per_sec}  eta {eta}  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            loop {
                let done = counter.load(Ordering::Relaxed);
                if done > bar.length().unwrap_or(0) {
                    bar.set_length(done);
                }
                bar.set_position(done);
                let listed = listing.load(Ordering::Relaxed);
                if listed > 0 {
                    bar.set_message(format!("(Quo workspace listed: {listed} contacts)"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        } else {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                tracing::info!(
                    event = "progress",
                    records_read = counter.load(Ordering::Relaxed),
                    expected,
                    contacts_listed = listing.load(Ordering::Relaxed),
                    "cycle in progress"
                );
            }
        }
    })
}
