//! The Quo sandbox: a faithful, stateful, in-memory Quo contacts API on a local port.
//!
//! quo-sync's correctness depends on behaviour a canned mock cannot show: 409s on duplicate
//! `(source, externalId)`, two possible PATCH semantics, a strict per-key one-second rate limit,
//! validation errors naming JSON paths, writes that succeed but lose their response, and signed
//! webhooks that may repeat. The sandbox implements the contract in `shared/quo-api.md` and the
//! v1 OpenAPI spec over real HTTP, so the client is tested exactly as it talks to production.
//! Tests and demos drive it through [`SandboxHandle`] (in process) or the unauthenticated
//! `/_sandbox/…` admin routes (with curl): switch semantics, inject faults, simulate edits made
//! in the Quo app, and read statistics such as the busiest second.
//!
//! Admin routes (no auth, never rate limited, not counted in the statistics):
//!
//! | route | does |
//! | --- | --- |
//! | `GET /_sandbox/stats`, `POST /_sandbox/reset-stats` | read / clear [`SandboxStats`] |
//! | `GET /_sandbox/contacts` | every contact, `{"data": [...]}` |
//! | `POST /_sandbox/faults`, `DELETE /_sandbox/faults` | queue a [`FaultSpec`] / clear the queue |
//! | `GET`/`POST /_sandbox/settings` | `patch_mode`, `conflict_on_duplicate`, `latency_ms`, `requests_per_second`, `send_retry_after`, `webhooks_on_api_writes` |
//! | `POST /_sandbox/app/contacts[?source=hubspot]` | create as the Quo app / an integration |
//! | `POST`/`DELETE /_sandbox/app/contacts/{id}` | edit (merge) / delete as a user in the Quo app |
//! | `GET /_sandbox/webhooks`, `POST /_sandbox/webhooks/{event_id}/redeliver` | delivery log / redeliver |
//!
//! Sandbox choices where Quo's behaviour is undocumented: custom field values set to `null` are
//! removed from the contact's `customFields`; `date` values are normalised to UTC with
//! milliseconds; in merge mode an email/phone item sent with an id the contact does not have is
//! added as a new item (new id), in replace mode the sent id is kept; a `DropAfterWrite` fault is
//! consumed by the next write that succeeds (a rejected write answers normally and leaves it queued).
//!
//! Modules: `state` stores contacts and applies writes, `validate` turns raw requests into
//! typed inputs or Quo's 400s, `error` renders Quo's error bodies, `routes` is the HTTP
//! surface, [`stats`] counts and rate-limits, [`faults`] queues injected failures, `conn` lets
//! a handler kill its own connection, and [`webhooks`] signs and delivers events.

mod conn;
mod error;
pub mod faults;
mod routes;
mod state;
pub mod stats;
mod validate;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::{Fault, FaultSpec};
pub use stats::{SandboxStats, WriteStats};
pub use webhooks::{Delivery, WebhookScheme, WebhookTarget, sign_legacy, sign_standard};

use error::ApiError;
use faults::FaultQueue;
use state::{FieldDef, FieldType, INTEGRATION_SOURCES, Store};
use stats::Accounting;
use validate::Mode;
use webhooks::{Hub, lock};

/// How `PATCH /v1/contacts/{id}` treats the arrays it is sent (design decision 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchMode {
    /// Items addressed by id are updated or (value null) removed, others added; the rest kept.
    #[default]
    Merge,
    /// Every array sent replaces the stored one entirely.
    Replace,
}

/// How a sandbox starts.
#[derive(Clone)]
pub struct SandboxConfig {
    /// The one valid API key, sent raw in `Authorization`. Default `sandbox-key`.
    pub api_key: String,
    /// Accepted API requests per sliding second; 0 = unlimited. Default 10.
    pub requests_per_second: u32,
    /// Whether 429s carry `Retry-After` (whole seconds, ≥ 1). Default true.
    pub send_retry_after: bool,
    /// PATCH semantics. Default merge.
    pub patch_mode: PatchMode,
    /// Whether a create with an existing `(source, externalId)` answers 409. Default true.
    pub conflict_on_duplicate: bool,
    /// Added to every API request after the rate-limit check. Default 0.
    pub latency: Duration,
    /// Webhook receiver, if any.
    pub webhook: Option<WebhookTarget>,
    /// Whether API writes also emit webhooks (Quo does). Default true.
    pub webhooks_on_api_writes: bool,
    /// Workspace custom fields as (name, key, type).
    pub custom_fields: Vec<(String, String, String)>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let cf = |n: &str, k: &str, t: &str| (n.to_string(), k.to_string(), t.to_string());
        SandboxConfig {
            api_key: "sandbox-key".to_string(),
            requests_per_second: 10,
            send_retry_after: true,
            patch_mode: PatchMode::Merge,
            conflict_on_duplicate: true,
            latency: Duration::ZERO,
            webhook: None,
            webhooks_on_api_writes: true,
            custom_fields: vec![
                cf("Lead Score", "lead-score", "number"),
                cf("VIP", "vip", "boolean"),
                cf("Renewal Date", "renewal-date", "date"),
                cf("Tags", "tags", "multi-select"),
                cf("Website", "website", "url"),
                cf("Mailing Address", "mailing-address", "address"),
                cf("Notes", "notes", "string"),
            ],
        }
    }
}

impl std::fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("api_key", &"<redacted>")
            .field("requests_per_second", &self.requests_per_second)
            .field("send_retry_after", &self.send_retry_after)
            .field("patch_mode", &self.patch_mode)
            .field("conflict_on_duplicate", &self.conflict_on_duplicate)
            .field("latency", &self.latency)
            .field("webhook", &self.webhook)
            .field("webhooks_on_api_writes", &self.webhooks_on_api_writes)
            .field("custom_fields", &self.custom_fields)
            .finish()
    }
}

/// The switches that can change while the sandbox runs.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub patch_mode: PatchMode,
    pub conflict_on_duplicate: bool,
    pub latency: Duration,
    pub requests_per_second: u32,
    pub send_retry_after: bool,
    pub webhook: Option<WebhookTarget>,
    pub webhooks_on_api_writes: bool,
}

/// State shared by the HTTP routes and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub api_key: String,
    pub defs: Vec<FieldDef>,
    pub settings: Mutex<Settings>,
    pub store: Mutex<Store>,
    pub acct: Mutex<Accounting>,
    pub faults: Mutex<FaultQueue>,
    pub hub: Arc<Hub>,
}

impl Shared {
    /// A snapshot of the current settings.
    pub(crate) fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    /// Emits an event for an API write, when API writes emit and a target is set.
    pub(crate) fn emit_api(&self, kind: &'static str, contact: Value) {
        let s = self.settings();
        if s.webhooks_on_api_writes
            && let Some(t) = s.webhook
        {
            self.hub.emit(&t, kind, contact);
        }
    }

    /// Emits an event for an edit made in the Quo app, when a target is set.
    pub(crate) fn emit_app(&self, kind: &'static str, contact: Value) {
        if let Some(t) = self.settings().webhook {
            self.hub.emit(&t, kind, contact);
        }
    }

    /// Every contact in the response shape, in creation order.
    pub(crate) fn contacts(&self) -> Vec<Value> {
        lock(&self.store)
            .all()
            .map(|c| c.render(&self.defs))
            .collect()
    }

    /// Creates a contact as the Quo app or a native integration would.
    pub(crate) fn app_create(&self, body: &Value, source: &str) -> Result<Value, ApiError> {
        let input = validate::contact_body(body, Mode::AppCreate, &self.defs, None)?;
        let source = (!source.is_empty()).then(|| source.to_string());
        let read_only = source
            .as_deref()
            .is_some_and(|s| INTEGRATION_SOURCES.contains(&s));
        let contact = lock(&self.store)
            .insert(input, source, read_only)
            .render(&self.defs);
        self.emit_app("contact.updated", contact.clone());
        Ok(contact)
    }

    /// Edits a contact as a user in the Quo app would (merge semantics); `Ok(None)` if unknown.
    pub(crate) fn app_edit(&self, id: &str, patch: &Value) -> Result<Option<Value>, ApiError> {
        let contact = {
            let mut store = lock(&self.store);
            let Some(existing) = store.get(id) else {
                return Ok(None);
            };
            let input = validate::contact_body(patch, Mode::AppPatch, &self.defs, Some(existing))?;
            store
                .patch(id, input, PatchMode::Merge)
                .map(|c| c.render(&self.defs))
        };
        if let Some(c) = &contact {
            self.emit_app("contact.updated", c.clone());
        }
        Ok(contact)
    }

    /// Deletes a contact as a user in the Quo app would; `None` if unknown.
    pub(crate) fn app_delete(&self, id: &str) -> Option<Value> {
        let removed = lock(&self.store).remove(id).map(|c| c.render(&self.defs))?;
        self.emit_app("contact.deleted", removed.clone());
        Some(removed)
    }
}

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
    shared: Arc<Shared>,
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
            let ftype = FieldType::parse(t).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("custom field '{key}' has unknown type '{t}'"),
                )
            })?;
            defs.push(FieldDef {
                name: name.clone(),
                key: key.clone(),
                ftype,
            });
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (hub, rx) = Hub::new();
        let shared = Arc::new(Shared {
            api_key: config.api_key.clone(),
            defs,
            settings: Mutex::new(Settings {
                patch_mode: config.patch_mode,
                conflict_on_duplicate: config.conflict_on_duplicate,
                latency: config.latency,
                requests_per_second: config.requests_per_second,
                send_retry_after: config.send_retry_after,
                webhook: config.webhook.clone(),
                webhooks_on_api_writes: config.webhooks_on_api_writes,
            }),
            store: Mutex::new(Store::default()),
            acct: Mutex::new(Accounting::default()),
            faults: Mutex::new(FaultQueue::default()),
            hub: hub.clone(),
        });
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
                tracing::warn!(error = %e, "sandbox server stopped with an error");
            }
        });
        tracing::info!(%addr, "quo sandbox listening");
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
        lock(&self.shared.store)
            .get(id)
            .map(|c| c.render(&self.shared.defs))
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
        lock(&self.shared.acct).stats.clone()
    }

    /// Clears the statistics.
    pub fn reset_stats(&self) {
        lock(&self.shared.acct).reset();
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

    /// Queues a fault for the next matching API requests.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).push(fault);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
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

    /// Edits a contact as a user in the Quo app: merge-patch semantics whatever the API's mode,
    /// bumps `updatedAt`, emits `contact.updated`. `None` if the contact is unknown or the patch
    /// is invalid (logged).
    pub fn app_edit(&self, id: &str, patch: Value) -> Option<Value> {
        match self.shared.app_edit(id, &patch) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "sandbox app_edit: invalid patch");
                None
            }
        }
    }

    /// Deletes a contact as a user in the Quo app; emits `contact.deleted`. `false` if unknown.
    pub fn app_delete(&self, id: &str) -> bool {
        self.shared.app_delete(id).is_some()
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
