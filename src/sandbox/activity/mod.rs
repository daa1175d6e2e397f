//! The sandbox's activity surface, on the dated API (`Quo-Api-Version: 2026-03-30`,
//! quo-api-2026-03-30.md §5–6): calls and messages with participants; summaries, transcripts,
//! recordings and voicemails that land later and in any order; `GET /users` and
//! `GET /phone-numbers`; webhook subscriptions with `whsec_` keys; signed deliveries with
//! retries and faults (lost, duplicated, reordered).
//!
//! Activity is made by the harness, as people make it in the Quo app: [`SandboxHandle::activity_call`]
//! and [`SandboxHandle::activity_message`] (or `POST /_sandbox/activity/calls|messages`), or the
//! simulator behind `quo-sync sandbox --simulate-calls N/min`. A call's `context.contacts.ids` are
//! the sandbox contacts holding its outside number. Enrichments land after a random delay in
//! `[enrichment_delay.0, enrichment_delay.1]` (default 150–900 ms), each on its own, so a
//! transcript may come before its summary and a recording after everything else;
//! [`SandboxHandle::activity_flush`] lands every pending one at once.
//!
//! Modules: `store` holds the data and renders it in each shape, `delivery` holds subscriptions
//! and signs and sends events, `routes` is the HTTP surface, `simulate` the generator.

mod delivery;
mod routes;
mod simulate;
mod store;

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use delivery::{ActivityDelivery, ActivityFaultCounters, ActivityFaults};
pub use store::{CallOutcome, CallSpec, Direction, MessageSpec};

pub(crate) use routes::router;

use super::webhooks::{WebhookTarget, lock};
use super::{SandboxHandle, Shared};
use delivery::ActivityHub;
use store::{ActivityStore, Emitted, Enrichment};

/// The one dated version the sandbox serves.
pub const API_VERSION: &str = "2026-03-30";
/// The header that must carry it.
pub const VERSION_HEADER: &str = "quo-api-version";

/// The activity side of a running sandbox.
#[derive(Debug)]
pub(crate) struct ActivitySandbox {
    pub store: Mutex<ActivityStore>,
    pub hub: Arc<ActivityHub>,
    delay: Mutex<(Duration, Duration)>,
    /// The other reading of the range operators: calls take `[gt|lt]`, messages `[gte|lte]`.
    pub swapped_ranges: std::sync::atomic::AtomicBool,
    stop: CancellationToken,
}

impl Drop for ActivitySandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ActivitySandbox {
    /// Starts the delivery queue and the enrichment clock (both end with the sandbox).
    pub(crate) fn start() -> Arc<Self> {
        let (hub, queue) = ActivityHub::new();
        let stop = CancellationToken::new();
        let activity = Arc::new(Self {
            store: Mutex::new(ActivityStore::default()),
            hub: hub.clone(),
            delay: Mutex::new((Duration::from_millis(150), Duration::from_millis(900))),
            swapped_ranges: std::sync::atomic::AtomicBool::new(false),
            stop: stop.clone(),
        });
        let until = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = hub.run(queue) => {}
                _ = until.cancelled() => {}
            }
        });
        let weak: Weak<Self> = Arc::downgrade(&activity);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = stop.cancelled() => return,
                }
                let Some(activity) = weak.upgrade() else {
                    return;
                };
                activity.land(Instant::now());
            }
        });
        activity
    }

    /// Lands the enrichments due by `now`; returns how many.
    fn land(&self, now: Instant) -> usize {
        let due = lock(&self.store).take_due(now);
        let count = due.len();
        for pending in due {
            let event = lock(&self.store).apply(&pending.activity_id, pending.what);
            if let Some(event) = event {
                self.hub.emit(event);
            }
        }
        count
    }

    /// Lands every pending enrichment now; returns how many.
    pub(crate) fn flush(&self) -> usize {
        self.land(Instant::now() + Duration::from_secs(365 * 24 * 3600))
    }

    /// A random delay within the configured range.
    fn delay(&self) -> Duration {
        let (low, high) = *lock(&self.delay);
        if high <= low {
            return low;
        }
        let span = (high - low).as_millis() as u64;
        low + Duration::from_millis(rand::random::<u64>() % (span + 1))
    }

    fn emit_all(&self, events: Vec<Emitted>) {
        for event in events {
            self.hub.emit(event);
        }
    }
}

/// Digits of a phone number, for lenient matching (`+1 (415) 555-0100` = `+14155550100`).
fn digits(number: &str) -> String {
    number.chars().filter(char::is_ascii_digit).collect()
}

impl Shared {
    /// The sandbox contacts holding `number`.
    fn contacts_with_number(&self, number: &str) -> Vec<String> {
        let wanted = digits(number);
        lock(&self.store)
            .all()
            .filter(|c| {
                c.phones
                    .iter()
                    .any(|p| !wanted.is_empty() && digits(&p.value) == wanted)
            })
            .map(|c| c.id.clone())
            .collect()
    }

    /// Makes a call happen (events now, enrichments later); returns its id.
    pub(crate) fn activity_call(&self, spec: &CallSpec) -> String {
        let ids = self.contacts_with_number(&spec.number);
        let (call, events) = lock(&self.activity.store).add_call(spec, ids, false);
        {
            let mut store = lock(&self.activity.store);
            for what in ActivityStore::enrichments_of(&call) {
                store.schedule(&call.id, what, self.activity.delay());
            }
        }
        self.activity.emit_all(events);
        call.id
    }

    /// Makes a message happen; returns its id.
    pub(crate) fn activity_message(&self, spec: &MessageSpec) -> String {
        let ids = self.contacts_with_number(&spec.number);
        let (message, events) = lock(&self.activity.store).add_message(spec, ids, false);
        if spec.direction == Direction::Outgoing {
            lock(&self.activity.store).schedule(
                &message.id,
                Enrichment::Delivered,
                self.activity.delay(),
            );
        }
        self.activity.emit_all(events);
        message.id
    }
}

impl SandboxHandle {
    /// Makes a call happen as in the Quo app: `call.completed` (and `call.missed`) now, the
    /// recording, summary, transcript or voicemail later, each after its own delay. Returns the
    /// call's id (`AC…`).
    pub fn activity_call(&self, spec: CallSpec) -> String {
        self.shared.activity_call(&spec)
    }

    /// Sends or receives a message: `message.received` now for an incoming one,
    /// `message.delivered` later for an outgoing one. Returns its id.
    pub fn activity_message(&self, spec: MessageSpec) -> String {
        self.shared.activity_message(&spec)
    }

    /// Stores finished calls and messages as if made before the run (no events, no request
    /// statistics, enrichments already in place): backfill data for benches and tests.
    pub fn seed_activity(&self, calls: &[CallSpec], messages: &[MessageSpec]) -> Vec<String> {
        let mut out = Vec::with_capacity(calls.len() + messages.len());
        for spec in calls {
            let ids = self.shared.contacts_with_number(&spec.number);
            out.push(
                lock(&self.shared.activity.store)
                    .add_call(spec, ids, true)
                    .0
                    .id,
            );
        }
        for spec in messages {
            let ids = self.shared.contacts_with_number(&spec.number);
            out.push(
                lock(&self.shared.activity.store)
                    .add_message(spec, ids, true)
                    .0
                    .id,
            );
        }
        out
    }

    /// Lands every pending enrichment now (their events go out); returns how many.
    pub fn activity_flush(&self) -> usize {
        self.shared.activity.flush()
    }

    /// Enrichments still waiting to land.
    pub fn activity_pending(&self) -> usize {
        lock(&self.shared.activity.store).pending.len()
    }

    /// Sets the range of the delay after which each enrichment lands.
    pub fn set_activity_enrichment_delay(&self, low: Duration, high: Duration) {
        *lock(&self.shared.activity.delay) = (low, high.max(low));
    }

    /// Serves the other reading of the secondary-source range operators (quo-api-2026-03-30.md
    /// §6): `GET /calls` takes `createdAt[gt|lt]` and `GET /messages` `createdAt[gte|lte]`.
    pub fn set_activity_ranges_swapped(&self, swapped: bool) {
        self.shared
            .activity
            .swapped_ranges
            .store(swapped, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every call as stored (summary and voicemail included), oldest first.
    pub fn activity_calls(&self) -> Vec<Value> {
        lock(&self.shared.activity.store).all_calls()
    }

    /// Every message as stored, oldest first.
    pub fn activity_messages(&self) -> Vec<Value> {
        lock(&self.shared.activity.store).all_messages()
    }

    /// Arms (or, with the default, disarms) activity delivery faults.
    pub fn set_activity_faults(&self, faults: ActivityFaults) {
        self.shared.activity.hub.set_faults(faults);
    }

    /// How many times each activity delivery fault fired.
    pub fn activity_fault_counters(&self) -> ActivityFaultCounters {
        self.shared.activity.hub.counters()
    }

    /// Events a drop fault kept from being sent.
    pub fn activity_dropped_events(&self) -> Vec<String> {
        self.shared.activity.hub.dropped()
    }

    /// Every activity delivery attempt so far.
    pub fn activity_deliveries(&self) -> Vec<ActivityDelivery> {
        self.shared.activity.hub.deliveries()
    }

    /// Sends a v1-style (legacy) copy of the activity events that exist in v1 to `target`,
    /// as a webhook made by hand in the Quo app would; `None` stops it.
    pub fn set_legacy_activity_webhook(&self, target: Option<WebhookTarget>) {
        self.shared.activity.hub.set_legacy(target);
    }

    /// Webhook subscriptions as `GET /webhooks` shows them (no keys).
    pub fn webhook_subscriptions(&self) -> Vec<Value> {
        self.shared
            .activity
            .hub
            .subscriptions()
            .iter()
            .map(|s| s.render(false))
            .collect()
    }

    /// Disables (or enables) a subscription as a person in the Quo app might.
    pub fn set_webhook_subscription_enabled(&self, id: &str, enabled: bool) -> bool {
        let patch = delivery::SubscriptionPatch {
            enabled: Some(enabled),
            ..Default::default()
        };
        self.shared.activity.hub.update(id, patch).is_some()
    }

    /// Deletes a subscription as a person in the Quo app might.
    pub fn delete_webhook_subscription(&self, id: &str) -> bool {
        self.shared.activity.hub.unsubscribe(id)
    }

    /// Starts generating calls and texts against the contacts that have phone numbers, about
    /// `per_minute` a minute, until the sandbox stops.
    pub fn simulate_activity(&self, per_minute: u32) {
        simulate::start(Arc::downgrade(&self.shared), per_minute);
    }
}
