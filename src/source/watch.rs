//! Change signals from the CRM side that start a cycle at once instead of at the next
//! `schedule.interval`: the CSV file watched with `notify` (debounced, and ignoring changes that
//! leave the file as quo-sync last read or wrote it, so our own write-back starts no cycle; the
//! cycle's read then waits until the file has been still for `source.quiet_period`, so a file
//! rewritten in place with pauses is not read half-written), and `POST /webhooks/crm` for REST
//! CRMs (see [`crm_webhook`]). Both only wake the service loop through the same `Notify` the Quo
//! webhook receiver uses; the cycle does the reading (of just the records a webhook names, with
//! `source.rest.webhook.ids_pointer`: see `rest::named`).

mod crm_webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Source, SourceError};
use crate::ledger::Ledger;

/// Quiet time after the last file event before the change is acted on (editors write in bursts).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The running signals; dropping it stops the file watcher.
pub struct Signals {
    _watcher: Option<notify::RecommendedWatcher>,
    webhook: Option<Router>,
}

impl Signals {
    /// Starts what the source supports: a file watcher for CSV, the webhook route for REST with
    /// `[source.rest.webhook]`.
    pub fn start(
        source: Arc<Source>,
        watch_file: bool,
        ledger: Ledger,
        wake: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Result<Self, SourceError> {
        if let Source::Csv(csv) = source.as_ref() {
            // Whatever starts a cycle (the watcher, the schedule, a Quo webhook), the service
            // reads the file only once it has been still for `source.quiet_period`.
            csv.guard_reads();
        }
        match source.as_ref() {
            Source::Csv(_) if !watch_file => Ok(Self {
                _watcher: None,
                webhook: None,
            }),
            Source::Csv(csv) => {
                let watcher = watch_csv(csv.path().to_path_buf(), source.clone(), wake, cancel)?;
                Ok(Self {
                    _watcher: Some(watcher),
                    webhook: None,
                })
            }
            Source::Rest(rest) => Ok(Self {
                _watcher: None,
                webhook: rest.webhook().map(|settings| {
                    let max = settings.max_body_bytes;
                    Router::new()
                        .route("/webhooks/crm", post(crm_webhook::receive))
                        .layer(DefaultBodyLimit::max(max))
                        .with_state(Arc::new(crm_webhook::WebhookState {
                            source: source.clone(),
                            ledger,
                            wake,
                        }))
                }),
            }),
        }
    }

    /// The `/webhooks/crm` routes, when the source has a webhook.
    pub fn webhook_routes(&self) -> Option<Router> {
        self.webhook.clone()
    }
}

fn watch_csv(
    path: PathBuf,
    source: Arc<Source>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) -> Result<notify::RecommendedWatcher, SourceError> {
    let io = |e: notify::Error| SourceError::Io {
        path: path.display().to_string(),
        reason: format!("cannot watch for changes: {e}"),
    };
    // The directory is watched, not the file: write-back (ours or an editor's) replaces the
    // file by rename, which would end a watch on the old inode.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.send(());
        }
    })
    .map_err(io)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(io)?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                _ = cancel.cancelled() => return,
            }
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if let Source::Csv(csv) = source.as_ref()
                && csv.matches_last_seen().await
            {
                tracing::debug!(
                    event = "crm_change_ignored",
                    "CSV file is as quo-sync last read or wrote it"
                );
                continue;
            }
            tracing::info!(
                event = "crm_change_detected",
                via = "file",
                "CSV file changed; starting a cycle"
            );
            wake.notify_one();
        }
    });
    Ok(watcher)
}
