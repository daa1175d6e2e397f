//! Change signals from the CRM side that start a cycle at once instead of at the next
//! `schedule.interval`: the CSV file watched with `notify` (debounced, and ignoring changes that
//! leave the file as quo-sync last read or wrote it, so our own write-back starts no cycle), and
//! `POST /webhooks/crm` for REST CRMs, authenticated by HMAC-SHA256 of the raw body with
//! `source.rest.webhook.secret` (`<signature_header>: sha256=<hex>`). Both only wake the service
//! loop through the same `Notify` the Quo webhook receiver uses; the cycle does the reading (of
//! just the records a webhook names, with `source.rest.webhook.ids_pointer`: see `rest::named`).
//! A CRM notice is stored in the ledger before it is answered, and signalled to the leader
//! (`ledger::inbox`): a standby answers deliveries too, and the leader is another process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use notify::{RecursiveMode, Watcher};
use secrecy::ExposeSecret;
use sha2::Sha256;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::rest::NoticeIds;
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
                        .route("/webhooks/crm", post(crm_webhook))
                        .layer(DefaultBodyLimit::max(max))
                        .with_state(Arc::new(WebhookState {
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

struct WebhookState {
    source: Arc<Source>,
    /// Where notices are stored (the base ledger: a standby stores them too).
    ledger: Ledger,
    wake: Arc<Notify>,
}

/// `POST /webhooks/crm`: a correctly signed notice is stored in the ledger, the leader is
/// signalled (wherever it runs) and the answer is 202; 401 otherwise (413 above the size limit,
/// from the body limit layer; 503 when the ledger cannot store it, so the CRM sends it again).
/// Nothing is read from the CRM here.
async fn crm_webhook(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Source::Rest(rest) = state.source.as_ref() else {
        return StatusCode::NOT_FOUND;
    };
    let Some(settings) = rest.webhook() else {
        return StatusCode::NOT_FOUND;
    };
    let given = headers
        .get(settings.signature_header.as_str())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("sha256="))
        .and_then(decode_hex);
    let valid = given.is_some_and(|signature| {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(settings.secret.expose_secret().as_bytes())
                .expect("HMAC takes any key length");
        mac.update(&body);
        mac.verify_slice(&signature).is_ok() // constant time
    });
    if !valid {
        tracing::warn!(
            event = "crm_webhook_rejected",
            bytes = body.len(),
            "CRM webhook with a missing or wrong signature; ignored"
        );
        metrics::counter!("quo_sync_crm_webhooks_total", "outcome" => "rejected").increment(1);
        return StatusCode::UNAUTHORIZED;
    }
    // With `ids_pointer`, the next read fetches just the named records.
    let (kind, ids) = rest.notice_ids(&body);
    let (read, count) = match kind {
        NoticeIds::Named(n) => ("named", n),
        NoticeIds::None | NoticeIds::Refused => ("list", 0),
    };
    if let Err(e) = state.ledger.crm_notice_put(ids.as_deref(), None).await {
        tracing::warn!(event = "crm_webhook_store_failed", error = %e, "CRM webhook not stored; answered 503 so the CRM sends it again");
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    metrics::counter!("quo_sync_crm_webhooks_total", "outcome" => "accepted").increment(1);
    if let Err(e) = state.ledger.signal_intake().await {
        tracing::warn!(event = "intake_signal_failed", error = %e, "stored CRM notice not signalled to the leader; it is read at the next cycle");
    }
    tracing::info!(
        event = "crm_change_detected",
        via = "webhook",
        bytes = body.len(),
        ids = count,
        read,
        "CRM webhook stored; starting a cycle"
    );
    state.wake.notify_one();
    StatusCode::ACCEPTED
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_decodes_or_refuses() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("abc"), None);
    }
}
