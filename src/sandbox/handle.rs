//! The in-process face of a running sandbox: [`SandboxHandle`] starts the server on a port,
//! reads its truth (contacts, statistics, fault counters, webhook deliveries), flips its
//! switches, arms faults, acts as a user in the Quo app, and stops it. Everything it does the
//! `/_sandbox/…` admin routes can do too, on the same shared state.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::faults::{Fault, FaultCounters, FaultQueue};
use super::state::{FieldDef, FieldType, Store};
use super::stats::{Accounting, SandboxStats};
use super::webhooks::{Delivery, Hub, WebhookTarget, lock};
use super::{
    PatchMode, ResponseShapes, SandboxConfig, Settings, Shared, activity, conn, error, routes, seed,
};

/// The target its log lines carried before it left `sandbox/mod.rs` (the JSON lines are an
/// interface).
const LOG_TARGET: &str = "quo_sync::sandbox";

/// Entry point; see [`SandboxHandle`].
#[derive(Debug)]
pub struct Sandbox;

impl Sandbox {
    /// Starts a sandbox on `127.0.0.1:0`; same as [`SandboxHandle::start`].
    pub async fn start(config: SandboxConfig) -> std::io::Result<SandboxHandle> {
        SandboxHandle::start(config).await
    }
}

/// A running sandbox. Dropping it stops the server; [`SandboxHandle::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct SandboxHandle {
    pub(super) shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    worker: Option<JoinHandle<()>>,
}

impl SandboxHandle {
    /// Starts a sandbox on `127.0.0.1` with an OS-assigned port.
    pub async fn start(config: SandboxConfig) -> std::io::Result<SandboxHandle> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a sandbox on `addr`.
    pub async fn start_on(
        config: SandboxConfig,
        addr: SocketAddr,
    ) -> std::io::Result<SandboxHandle> {
        let mut defs = Vec::with_capacity(config.custom_fields.len());
        for (name, key, t) in &config.custom_fields {
            if FieldType::parse(t).is_none() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("custom field '{key}' has unknown type '{t}'"),
                ));
            }
            defs.push(FieldDef::new(name, key, t, None));
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (hub, rx) = Hub::new();
        let shared = Arc::new(Shared {
            api_key: config.api_key.clone(),
            defs: Mutex::new(defs),
            settings: Mutex::new(Settings {
                patch_mode: config.patch_mode,
                conflict_on_duplicate: config.conflict_on_duplicate,
                latency: config.latency,
                requests_per_second: config.requests_per_second,
                send_retry_after: config.send_retry_after,
                webhook: config.webhook.clone(),
                webhooks_on_api_writes: config.webhooks_on_api_writes,
                response_shapes: ResponseShapes::default(),
                refuse_stale_item_ids: config.refuse_stale_item_ids,
                foreign_workspace: false,
            }),
            store: Mutex::new(Store::default()),
            foreign: Mutex::new(Store::default()),
            acct: Mutex::new(Accounting::default()),
            faults: Mutex::new(FaultQueue::default()),
            hub: hub.clone(),
            activity: activity::ActivitySandbox::start(),
            writes_in_flight: tokio::sync::watch::Sender::new(0),
        });
        shared.set_shapes(config.response_shapes);
        let worker = tokio::spawn(hub.run(rx));
        let app = routes::router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let svc = app.into_make_service_with_connect_info::<conn::ConnInfo>();
            let serve = axum::serve(conn::KillableListener::new(listener), svc)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
            if let Err(e) = serve.await {
                tracing::warn!(target: LOG_TARGET, error = %e, "sandbox server stopped with an error");
            }
        });
        tracing::info!(target: LOG_TARGET, %addr, "quo sandbox listening");
        Ok(SandboxHandle {
            shared,
            addr,
            stop: Some(stop),
            server: Some(server),
            worker: Some(worker),
        })
    }

    /// `http://127.0.0.1:PORT`, the base URL to give a client.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The valid API key.
    pub fn api_key(&self) -> &str {
        &self.shared.api_key
    }

    /// Every contact in the v1 response shape, in creation order.
    pub fn contacts(&self) -> Vec<Value> {
        self.shared.contacts()
    }

    /// One contact in the v1 response shape.
    pub fn contact(&self, id: &str) -> Option<Value> {
        let defs = self.shared.defs();
        lock(&self.shared.store).get(id).map(|c| c.render(&defs))
    }

    /// How many contacts carry `external_id` (any source): more than one is a duplicate.
    pub fn count_by_external_id(&self, external_id: &str) -> usize {
        lock(&self.shared.store)
            .all()
            .filter(|c| c.external_id.as_deref() == Some(external_id))
            .count()
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> SandboxStats {
        self.shared.stats()
    }

    /// API writes (POST, PATCH, DELETE) that have arrived and are not answered yet, as a watch:
    /// a test that kills a client can tell (and wait for) a write in flight at that moment.
    pub fn writes_in_flight(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.writes_in_flight.subscribe()
    }

    /// How many times each fault fired (the `faults` member of [`SandboxHandle::stats`]).
    pub fn fault_counters(&self) -> FaultCounters {
        self.shared.stats().faults
    }

    /// Clears the statistics, fault counters included.
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// Switches PATCH semantics.
    pub fn set_patch_mode(&self, m: PatchMode) {
        lock(&self.shared.settings).patch_mode = m;
    }

    /// Switches 409 on duplicate create.
    pub fn set_conflict_on_duplicate(&self, on: bool) {
        lock(&self.shared.settings).conflict_on_duplicate = on;
    }

    /// Sets the latency added to every API request.
    pub fn set_latency(&self, d: Duration) {
        lock(&self.shared.settings).latency = d;
    }

    /// Sets the rate limit (0 = unlimited).
    pub fn set_requests_per_second(&self, n: u32) {
        lock(&self.shared.settings).requests_per_second = n;
    }

    /// Switches `Retry-After` on 429s.
    pub fn set_send_retry_after(&self, on: bool) {
        lock(&self.shared.settings).send_retry_after = on;
    }

    /// Switches webhooks for API writes.
    pub fn set_webhooks_on_api_writes(&self, on: bool) {
        lock(&self.shared.settings).webhooks_on_api_writes = on;
    }

    /// Sets or removes the webhook target (events already queued keep their target).
    pub fn set_webhook(&self, target: Option<WebhookTarget>) {
        lock(&self.shared.settings).webhook = target;
    }

    /// Arms a fault (see [`faults`] for what each does).
    pub fn inject(&self, fault: Fault) {
        self.shared.inject(fault);
    }

    /// Drops every fault of every kind; webhook events held for reordering are released.
    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Quo ids a lagging list currently leaves out of list answers in its scope.
    pub fn hidden_from_lists(&self) -> Vec<String> {
        lock(&self.shared.faults).hidden_now()
    }

    /// Switches the unusual response shapes (see [`ResponseShapes`]).
    pub fn set_response_shapes(&self, shapes: ResponseShapes) {
        self.shared.set_shapes(shapes);
    }

    /// Points the API key at another workspace (`true`) or back home (`false`), as a rotated
    /// key, an API incident or changed access would: meanwhile every `/v1` request sees the other
    /// workspace, which holds none of the home contacts (each known id answers 404, lists are
    /// empty) and keeps whatever the API creates in it (no webhooks: they are not ours). Custom
    /// field definitions are the same (a workspace set up alike). The home workspace, its app
    /// edits and `/_sandbox/contacts` are untouched; [`SandboxHandle::foreign_contacts`] shows the
    /// other one.
    pub fn set_foreign_workspace(&self, on: bool) {
        lock(&self.shared.settings).foreign_workspace = on;
    }

    /// The contacts of the other workspace (what was created there while the key pointed at it).
    pub fn foreign_contacts(&self) -> Vec<Value> {
        let defs = self.shared.defs();
        lock(&self.shared.foreign)
            .all()
            .map(|c| c.render(&defs))
            .collect()
    }

    /// Switches whether PATCHes addressing unknown email/phone item ids answer 400.
    pub fn set_refuse_stale_item_ids(&self, on: bool) {
        lock(&self.shared.settings).refuse_stale_item_ids = on;
    }

    /// Defines or redefines (by `key`) a workspace custom field, as a user in the Quo app would.
    /// `type_name` may be outside the spec's enum (e.g. `rating`); `options` restricts a
    /// multi-select's values; `fill` gives every existing contact a value. Errors on a malformed
    /// definition (empty parts, options on a non-multi-select field).
    pub fn define_custom_field(
        &self,
        name: &str,
        key: &str,
        type_name: &str,
        options: Option<Vec<String>>,
        fill: Option<Value>,
    ) -> Result<(), String> {
        self.shared
            .define_field(FieldDef::new(name, key, type_name, options), fill.as_ref())
    }

    /// Creates a contact as the Quo app (or, with an integration source such as `hubspot`,
    /// `salesforce`, `google-people`, `outlook`, as a native integration: read-only through the
    /// API). `source` `""` means none, as for contacts made in the app's UI. Emits
    /// `contact.updated`. Returns the contact.
    ///
    /// # Panics
    /// If `body` is not a valid contact body (this is test-harness input); see
    /// [`SandboxHandle::try_app_create`].
    pub fn app_create(&self, body: Value, source: &str) -> Value {
        match self.shared.app_create(&body, source) {
            Ok(c) => c,
            Err(e) => panic!(
                "app_create: invalid contact body: {e} ({})",
                e.body(error::Family::Contacts)
            ),
        }
    }

    /// Like [`SandboxHandle::app_create`], returning Quo's error body instead of panicking.
    pub fn try_app_create(&self, body: Value, source: &str) -> Result<Value, Value> {
        self.shared
            .app_create(&body, source)
            .map_err(|e| e.body(error::Family::Contacts))
    }

    /// Stores contacts from `POST /v1/contacts` bodies, as if created through the API before the
    /// run: validated the same way, but no webhook events and no request statistics. Returns
    /// them in the response shape, or Quo's error body for the first invalid one (none stored
    /// after it). For benches that need 100,000 contacts without 100,000 requests.
    pub fn seed_contacts(&self, bodies: &[Value]) -> Result<Vec<Value>, Value> {
        self.shared
            .seed(bodies)
            .map_err(|e| e.body(error::Family::Contacts))
    }

    /// Seeds the workspace from a CSV of people a team already has in Quo (format in [`seed`]):
    /// contacts made in the app (no `source`), by another integration, or by a native one
    /// (read-only: PATCH and DELETE answer 403 `0801403`). No webhook events, no statistics.
    /// Returns how many were stored, or the line, column and value of the first bad row (none
    /// stored then).
    pub fn seed_existing_csv(&self, text: &str) -> Result<usize, String> {
        let seeds = seed::parse_seed_csv(text).map_err(|e| e.to_string())?;
        self.shared
            .seed_existing(&seeds)
            .map_err(|e| format!("{e}: {}", e.body(error::Family::Contacts)))
    }

    /// Edits a contact as a user in the Quo app: merge-patch semantics whatever the API's mode,
    /// bumps `updatedAt`, emits `contact.updated`. `None` if the contact is unknown or the patch
    /// is invalid (logged).
    pub fn app_edit(&self, id: &str, patch: Value) -> Option<Value> {
        match self.shared.app_edit(id, &patch) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target: LOG_TARGET, error = %e, "sandbox app_edit: invalid patch");
                None
            }
        }
    }

    /// Deletes a contact as a user in the Quo app; emits `contact.deleted`. `false` if unknown.
    pub fn app_delete(&self, id: &str) -> bool {
        self.shared.app_delete(id).is_some()
    }

    /// Ids of the webhook events a `webhook_drop` fault kept from being sent, oldest first
    /// ([`SandboxHandle::redeliver`] can still send them).
    pub fn dropped_webhook_events(&self) -> Vec<String> {
        self.shared.hub.dropped_ids()
    }

    /// Every webhook delivery attempt so far.
    pub fn webhook_deliveries(&self) -> Vec<Delivery> {
        self.shared.hub.deliveries()
    }

    /// Delivers event `event_id` again to the current target: same id and body, fresh timestamp
    /// and signature, with retries. `true` once acknowledged; `false` if the event is unknown,
    /// no target is set, or the receiver never answered 2xx.
    pub async fn redeliver(&self, event_id: &str) -> bool {
        let Some(target) = self.shared.settings().webhook else {
            return false;
        };
        self.shared.hub.deliver(event_id, &target, true).await
    }

    /// Stops the server gracefully (idle connections closed, at most ~2 s) and the webhook task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut server) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut server)
                .await
                .is_err()
        {
            server.abort();
        }
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
    }
}
