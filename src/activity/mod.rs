//! Activity logging: every call, text and voicemail of a linked contact lands on its CRM
//! record, once, within a second, with no gaps (issue #23).
//!
//! The path of an activity: Quo's webhooks ([`intake`], both schemes and envelopes) and the
//! [`poller`] (what deliveries missed, late summaries, backfill) put views of it into the
//! ledger's activity inbox; the [`pipeline`] merges them into its facts ([`model`], read from
//! every wire shape by [`observe`]), links it to a record ([`linking`]), attributes it to a
//! person ([`owners`]) and writes it to the CRM exactly once ([`sinks`]: the activity CSV file
//! or REST objects), updating the same CRM copy as enrichment lands. [`registration`] keeps
//! quo-sync's own webhooks registered; [`status`] shows what happened.
//!
//! Only the leader runs the pipeline and the poller; every replica stores deliveries.

pub mod config;
pub mod intake;
pub mod linking;
pub mod model;
pub mod observe;
pub mod owners;
pub mod pipeline;
pub mod poller;
pub mod registration;
pub mod sinks;
pub mod status;

use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::{info, trace, warn};

use crate::config::Config;
use crate::ledger::Ledger;
use crate::quo::dated::DatedClient;
use crate::sync::SyncContext;
use config::ActivityConfig;
use owners::People;
use pipeline::{Pipeline, Settings};
use poller::{PollSettings, Poller};
use sinks::{Sink, SinkError};

/// The `[activity]` table when activity logging is on.
pub fn enabled(config: &Config) -> Option<&ActivityConfig> {
    config.activity.as_ref().filter(|a| a.enabled)
}

/// The activity webhook route for a replica's listener (stores into its unfenced `ledger`).
pub fn receiver_routes(config: &Config, ledger: &Ledger) -> Option<axum::Router> {
    let activity = enabled(config)?;
    Some(
        intake::ActivityReceiver::new(
            ledger.clone(),
            activity.webhook_secrets.clone(),
            activity.full_content(),
            config.reverse.max_body_bytes,
            config.reverse.read_timeout.0,
        )
        .routes(),
    )
}

/// The contact webhook route: the reverse receiver with its configured secret, or, when none is
/// configured and `reverse.public_url` is set, with the key of the contact webhook quo-sync
/// registered itself.
pub fn contact_routes(
    config: &Config,
    receiver: crate::reverse::receiver::Receiver,
) -> axum::Router {
    if receiver.secret.is_none() && config.reverse.public_url.is_some() {
        registration::registered_contact_routes(receiver)
    } else {
        crate::reverse::receiver::webhook_routes(receiver)
    }
}

/// The webhooks quo-sync registers itself, from the configuration.
pub fn wanted_webhooks(config: &Config) -> Vec<registration::Wanted> {
    let Some(url) = &config.reverse.public_url else {
        return Vec::new();
    };
    let activity = enabled(config).is_some_and(|a| a.register_webhooks);
    let contacts = config.reverse.enabled
        && config.reverse.listen.is_some()
        && config.reverse.webhook_secret.is_none();
    registration::wanted(url, activity, contacts)
}

/// Activity logging of one leader term: the pipeline and the poller, until `ctx.cancel`.
#[derive(Debug)]
pub struct Running {
    /// The pipeline (tests and benches run passes by hand).
    pub pipeline: Arc<Pipeline>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Waits for both tasks to end (they end with the context's cancel token).
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Builds the pipeline on `ctx` (its fenced ledger, its client's key and limiter, its source).
pub fn pipeline(activity: &ActivityConfig, ctx: &SyncContext) -> Result<Pipeline, SinkError> {
    let sink = Sink::open(activity, ctx.source.clone())?;
    let dated = DatedClient::new(&ctx.client);
    let lookup = activity
        .owner_lookup
        .clone()
        .map(|l| (l, ctx.source.clone()));
    let people = People::new(dated, &activity.owners, lookup);
    let guard = crate::source::WriteGuard {
        fence: ctx.ledger.write_fence(),
        cancel: ctx.cancel.clone(),
    };
    Ok(Pipeline::new(
        ctx.ledger.clone(),
        (sink, guard),
        people,
        Settings::from_config(activity, ctx.settings.inbox_retention),
    ))
}

/// The poller on `ctx`, reading behind the contact writes.
pub fn poller(activity: &ActivityConfig, ctx: &SyncContext) -> Poller {
    use config::KindName;
    Poller::new(
        ctx.ledger.clone(),
        DatedClient::new(&ctx.client).background(),
        PollSettings {
            calls: activity.logs(KindName::Calls) || activity.logs(KindName::Voicemails),
            messages: activity.logs(KindName::Messages),
            full: activity.full_content(),
            window: activity.enrichment_window.0,
            backfill: activity.backfill.0,
        },
        intake::wake(),
    )
}

/// Starts a leader term's webhook registration (`reverse.public_url`) and activity logging
/// (when `[activity]` is on). A sink that cannot be opened, or a registration that fails, is
/// logged and leaves contact sync running (the poller still fills in).
pub fn start(config: &Config, ctx: &SyncContext) -> Option<Running> {
    let wanted = wanted_webhooks(config);
    if !wanted.is_empty() {
        let registrar =
            registration::Registrar::new(DatedClient::new(&ctx.client), ctx.ledger.clone());
        let (ledger, cancel) = (ctx.ledger.clone(), ctx.cancel.clone());
        tokio::spawn(async move {
            // A registration writes to Quo: not while syncing is paused (`quo-sync pause`).
            let mut looks = 0u64;
            while matches!(ledger.pause_state().await, Ok(Some(_))) {
                if looks == 0 {
                    info!(
                        event = "webhook_registration_paused",
                        "syncing is paused: quo-sync registers its webhooks after `quo-sync resume`"
                    );
                }
                looks += 1;
                trace!(
                    event = "webhook_registration_waiting",
                    looks, "webhook registration still waits for resume"
                );
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                    _ = cancel.cancelled() => return,
                }
            }
            if let Err(e) = registrar.ensure(&wanted).await {
                warn!(event = "webhook_registration_failed", error = %e, "could not register quo-sync's webhooks; the poller still fills in; retried at the next start or with `quo-sync webhooks ensure`");
            }
        });
    }
    let activity = enabled(config)?;
    status::register_metrics();
    let pipeline = match pipeline(activity, ctx) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            warn!(event = "activity_sink_unusable", error = %e, "activity logging is off for this run");
            return None;
        }
    };
    let mut tasks = vec![tokio::spawn(
        pipeline.clone().run(intake::wake(), ctx.cancel.clone()),
    )];
    match activity.poll_every() {
        Some(every) => {
            let poller = poller(activity, ctx);
            tasks.push(tokio::spawn(poller.run(every, ctx.cancel.clone())));
        }
        None => info!(
            event = "activity_poller_off",
            "activity.poll_interval = 0s: webhooks only; a lost delivery is not filled"
        ),
    }
    Some(Running { pipeline, tasks })
}
