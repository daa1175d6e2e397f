//! The Quo sandbox: a faithful, stateful, in-memory Quo contacts API on a local port.
//!
//! quo-sync's correctness depends on behaviour a canned mock cannot show: 409s on duplicate
//! `(source, externalId)`, two possible PATCH semantics, a strict per-key one-second rate limit,
//! validation errors naming JSON paths, writes that succeed but lose their response, and signed
//! webhooks that may repeat. The sandbox implements the contract in `docs/quo-api.md` and the
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
//! | `GET /_sandbox/contacts[?workspace=foreign]` | every contact, `{"data": [...]}`: the internal truth, untouched by faults and response shapes (`workspace=foreign`: the other workspace's, see `foreign_workspace`) |
//! | `POST /_sandbox/faults`, `DELETE /_sandbox/faults` | arm a [`FaultSpec`] (JSON forms in [`faults`]) / clear every fault |
//! | `GET /_sandbox/faults` | what is armed (`queued`, `drop_after_write_ratio`, `lagging_list`, `repeat_page_token`, `webhooks`) and `fired`: [`FaultCounters`] |
//! | `GET`/`POST /_sandbox/settings` | `patch_mode`, `conflict_on_duplicate`, `latency_ms`, `requests_per_second`, `send_retry_after`, `webhooks_on_api_writes`, `response_shapes` ([`ResponseShapes`]), `refuse_stale_item_ids`, `foreign_workspace` (the key answers for another workspace: [`SandboxHandle::set_foreign_workspace`]) |
//! | `GET`/`POST /_sandbox/custom-fields` | definitions with options / define or redefine one: `{"name","key","type","options"?,"fill"?}` |
//! | `POST /_sandbox/app/contacts[?source=hubspot]` | create as the Quo app / an integration |
//! | `POST /_sandbox/app/seed` | a seed CSV ([`seed`]): contacts that were there before the run, `{"seeded": n}` |
//! | `POST`/`DELETE /_sandbox/app/contacts/{id}` | edit (merge) / delete as a user in the Quo app |
//! | `GET /_sandbox/webhooks`, `POST /_sandbox/webhooks/{event_id}/redeliver` | delivery log / redeliver |
//! | `GET /_sandbox/activity`, `POST /_sandbox/activity/calls\|messages\|flush`, `GET`/`POST /_sandbox/activity/faults`, `GET /_sandbox/activity/deliveries` | calls and messages ([`activity`], the dated `2026-03-30` surface) |
//!
//! Sandbox choices where Quo's behaviour is undocumented: custom field values set to `null` are
//! removed from the contact's `customFields`; `date` values are normalised to UTC with
//! milliseconds; a PATCH addressing an email/phone item `id` the contact does not have (even to
//! remove it) answers 400 `0800400` with one `errors[]` entry per such item, path
//! `/defaultFields/emails/{i}/id` (or `phoneNumbers`) and the id as `value`, applying nothing
//! (`refuse_stale_item_ids`, default on; switched off, merge mode adds such an item as new with a
//! new id and replace mode keeps the sent id); a multi-select field defined with `options`
//! refuses other values (create, PATCH and app edits) with 400 `0801400`, one entry per value at
//! `/customFields/{i}/value/{j}` with the value; `/v1/contact-custom-fields` keeps the spec's
//! shape (no `options`); a field of a type outside the spec's enum (e.g. `rating`) is shown in
//! definitions and on contacts, can be set by app edits only, and an API write to it answers
//! 400 `0801400` at `/customFields/{i}/key`; contacts of Quo's native integrations (sources
//! `hubspot`, `salesforce`, `google-people`, `outlook`) are read-only through the API, as Quo's
//! guide says, and a PATCH or DELETE of one answers 403 `0801403` in the v1 error envelope
//! (Quo documents the refusal, not its status; 403 is its code for an action the key may not
//! take), applying nothing; contacts of any other source, and those with none (made in the app),
//! are writable; a `DropAfterWrite` fault is consumed by the next
//! write that succeeds (a rejected write answers normally and leaves it queued).
//!
//! Modules: `state` stores contacts and applies writes, `validate` turns raw bodies into typed
//! inputs or Quo's 400s, `query` does the same for the list call's query string and page
//! tokens, `error` renders Quo's error bodies, `routes` is the HTTP surface, [`stats`] counts
//! and rate-limits, [`faults`] arms injected failures, [`shapes`] rewrites responses into
//! unusual legal shapes, `conn` lets a handler kill its own connection, and [`webhooks`] signs
//! and delivers events (and drops, repeats or reorders them).

pub mod activity;
mod conn;
mod error;
pub mod faults;
mod query;
mod routes;
pub mod seed;
pub mod shapes;
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

pub use faults::{Fault, FaultCounters, FaultSpec, ListScope, Pick};
pub use shapes::ResponseShapes;
pub use stats::{SandboxStats, WriteStats};
pub use webhooks::{Delivery, WebhookScheme, WebhookTarget, sign_legacy, sign_standard};

use error::ApiError;
use faults::{Draw, FaultQueue, LaggingList};
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
    /// Unusual response shapes (tolerant-reader tests). Default all off.
    pub response_shapes: ResponseShapes,
    /// Whether a PATCH addressing an email/phone item id the contact does not have answers 400
    /// `0800400` (else merge adds it as a new item and replace keeps the sent id). Default true.
    pub refuse_stale_item_ids: bool,
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
            response_shapes: ResponseShapes::default(),
            refuse_stale_item_ids: true,
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
            .field("response_shapes", &self.response_shapes)
            .field("refuse_stale_item_ids", &self.refuse_stale_item_ids)
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
    pub response_shapes: ResponseShapes,
    pub refuse_stale_item_ids: bool,
    /// The key answers for another workspace (see [`SandboxHandle::set_foreign_workspace`]).
    pub foreign_workspace: bool,
}

/// State shared by the HTTP routes and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub api_key: String,
    pub defs: Mutex<Vec<FieldDef>>,
    pub settings: Mutex<Settings>,
    pub store: Mutex<Store>,
    /// The other workspace the key answers for while `foreign_workspace` is on: it holds none
    /// of the home workspace's contacts, and what the API creates meanwhile lands here.
    pub foreign: Mutex<Store>,
    pub acct: Mutex<Accounting>,
    pub faults: Mutex<FaultQueue>,
    pub hub: Arc<Hub>,
    pub activity: Arc<activity::ActivitySandbox>,
    /// API writes (POST, PATCH, DELETE) that arrived and are not answered yet.
    pub writes_in_flight: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    /// A snapshot of the current settings.
    pub(crate) fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    /// The contacts `/v1` requests see: the home workspace's, or the other one's while the key
    /// answers for another workspace.
    pub(crate) fn api_store(&self) -> &Mutex<Store> {
        if self.settings().foreign_workspace {
            &self.foreign
        } else {
            &self.store
        }
    }

    /// A snapshot of the workspace's custom field definitions.
    pub(crate) fn defs(&self) -> Vec<FieldDef> {
        lock(&self.defs).clone()
    }

    /// A contact as the `/v1` routes answer it: rendered, then reshaped per `response_shapes`.
    pub(crate) fn render_api(&self, contact: &state::StoredContact, defs: &[FieldDef]) -> Value {
        let mut v = contact.render(defs);
        self.settings().response_shapes.apply(&mut v);
        v
    }

    /// Defines (or redefines, by key) a custom field; with `fill`, every contact without a
    /// value for it gets that value. Refuses a malformed definition.
    pub(crate) fn define_field(&self, def: FieldDef, fill: Option<&Value>) -> Result<(), String> {
        if def.key.is_empty() || def.name.is_empty() || def.type_name.is_empty() {
            return Err("name, key and type must be non-empty".into());
        }
        if def.options.is_some() && def.ftype != FieldType::MultiSelect {
            return Err(format!(
                "options are only for multi-select fields, not '{}'",
                def.type_name
            ));
        }
        let key = def.key.clone();
        {
            let mut defs = lock(&self.defs);
            match defs.iter_mut().find(|d| d.key == def.key) {
                Some(d) => *d = def,
                None => defs.push(def),
            }
        }
        if let Some(v) = fill.filter(|v| !v.is_null()) {
            lock(&self.store).fill_custom(&key, v);
        }
        Ok(())
    }

    /// Switches response shapes; `unknown_field_type` defines the `rating` field (see
    /// [`ResponseShapes::unknown_field_type`]).
    pub(crate) fn set_shapes(&self, shapes: ResponseShapes) {
        if shapes.unknown_field_type {
            let has = lock(&self.defs).iter().any(|d| d.key == "rating");
            if !has {
                let def = FieldDef::new("Rating", "rating", "rating", None);
                let _ = self.define_field(def, Some(&Value::from(4)));
            }
        }
        lock(&self.settings).response_shapes = shapes;
    }

    /// Arms a fault: API faults in the queue, a lagging list against the current contacts,
    /// webhook faults in the hub.
    pub(crate) fn inject(&self, fault: Fault) {
        match fault {
            Fault::LaggingList {
                ids,
                external_ids,
                ratio,
                seed,
                next_created,
                lists,
                scope,
            } => {
                let mut hidden: std::collections::BTreeSet<String> = ids.into_iter().collect();
                let mut draw = ratio.map(|r| Draw::new(r, seed));
                for c in lock(&self.store).all() {
                    let ext = c.external_id.as_deref();
                    let listed = ext.is_some_and(|e| external_ids.iter().any(|x| x == e));
                    let drawn = draw
                        .as_mut()
                        .is_some_and(|d| d.fire_for(ext.unwrap_or(&c.id)));
                    if listed || drawn {
                        hidden.insert(c.id.clone());
                    }
                }
                let lag = (lists != Some(0)).then_some(LaggingList {
                    hidden,
                    next_created,
                    lists_left: lists,
                    scope,
                });
                lock(&self.faults).set_lag(lag);
            }
            Fault::WebhookDrop(_) | Fault::WebhookDuplicate(_) | Fault::WebhookReorder { .. } => {
                self.hub.arm(fault)
            }
            other => lock(&self.faults).push(other),
        }
    }

    /// Clears every fault; webhook events held for reordering are released.
    pub(crate) fn clear_faults(&self) {
        lock(&self.faults).clear();
        self.hub.clear_faults();
    }

    /// Statistics with the webhook fault counters folded in.
    pub(crate) fn stats(&self) -> SandboxStats {
        let mut stats = lock(&self.acct).stats.clone();
        self.hub.fold_counters(&mut stats.faults);
        stats
    }

    /// Clears the statistics and every fault counter.
    pub(crate) fn reset_stats(&self) {
        lock(&self.acct).reset();
        self.hub.reset_counters();
    }

    /// Emits an event for an API write, when API writes emit and a target is set.
    pub(crate) fn emit_api(&self, kind: &'static str, mut contact: Value) {
        let s = self.settings();
        // Another workspace's webhooks are not subscribed to ours.
        if s.webhooks_on_api_writes && !s.foreign_workspace {
            self.activity.hub.emit_contact(kind, &contact);
        }
        if s.webhooks_on_api_writes
            && !s.foreign_workspace
            && let Some(t) = s.webhook
        {
            s.response_shapes.apply(&mut contact);
            self.hub.emit(&t, kind, contact);
        }
    }

    /// The validation context for `mode` under the current settings.
    pub(crate) fn checks(&self, mode: Mode) -> validate::Checks {
        validate::Checks {
            mode,
            refuse_stale_item_ids: self.settings().refuse_stale_item_ids,
        }
    }

    /// Counts the refusals that fault counters track (stale item ids, multi-select options).
    pub(crate) fn count_refusal(&self, e: ApiError) -> ApiError {
        let (stale, options) = e.refusal_tags();
        if stale || options {
            let f = &mut lock(&self.acct).stats.faults;
            f.stale_item_ids_refused += u64::from(stale);
            f.multi_select_refused += u64::from(options);
        }
        e
    }

    /// Emits an event for an edit made in the Quo app, when a target is set.
    pub(crate) fn emit_app(&self, kind: &'static str, mut contact: Value) {
        let s = self.settings();
        self.activity.hub.emit_contact(kind, &contact);
        if let Some(t) = s.webhook {
            s.response_shapes.apply(&mut contact);
            self.hub.emit(&t, kind, contact);
        }
    }

    /// Every contact in the response shape, in creation order.
    pub(crate) fn contacts(&self) -> Vec<Value> {
        let defs = self.defs();
        lock(&self.store).all().map(|c| c.render(&defs)).collect()
    }

    /// Stores contacts as `POST /v1/contacts` would (same validation and source), in one lock,
    /// without webhook events or statistics: a large workspace for a bench in seconds.
    pub(crate) fn seed(&self, bodies: &[Value]) -> Result<Vec<Value>, ApiError> {
        let defs = self.defs();
        let checks = self.checks(Mode::Create);
        let mut store = lock(&self.store);
        bodies
            .iter()
            .map(|body| {
                let input = validate::contact_body(body, checks, &defs, None)?;
                let source = input
                    .source
                    .clone()
                    .flatten()
                    .unwrap_or_else(|| "public-api".to_string());
                Ok(store.insert(input, Some(source), false).render(&defs))
            })
            .collect()
    }

    /// Stores contacts as the Quo app, another integration or a native one made them before the
    /// run (see [`seed`]): validated as app creates, in one lock, without webhook events or
    /// statistics.
    pub(crate) fn seed_existing(&self, seeds: &[seed::SeedContact]) -> Result<usize, ApiError> {
        let defs = self.defs();
        let checks = self.checks(Mode::AppCreate);
        let inputs = seeds
            .iter()
            .map(|s| validate::contact_body(&s.body, checks, &defs, None))
            .collect::<Result<Vec<_>, _>>()?;
        let mut store = lock(&self.store);
        for (input, seed) in inputs.into_iter().zip(seeds) {
            let source = (!seed.source.is_empty()).then(|| seed.source.clone());
            let read_only = is_native(source.as_deref());
            store.insert(input, source, read_only);
        }
        Ok(seeds.len())
    }

    /// Creates a contact as the Quo app or a native integration would.
    pub(crate) fn app_create(&self, body: &Value, source: &str) -> Result<Value, ApiError> {
        let defs = self.defs();
        let input = validate::contact_body(body, self.checks(Mode::AppCreate), &defs, None)
            .map_err(|e| self.count_refusal(e))?;
        let source = (!source.is_empty()).then(|| source.to_string());
        let read_only = is_native(source.as_deref());
        let contact = {
            let mut store = lock(&self.store);
            let stored = store.insert(input, source, read_only);
            lock(&self.faults).created(&stored.id);
            stored.render(&defs)
        };
        self.emit_app("contact.updated", contact.clone());
        Ok(contact)
    }

    /// Edits a contact as a user in the Quo app would (merge semantics); `Ok(None)` if unknown.
    pub(crate) fn app_edit(&self, id: &str, patch: &Value) -> Result<Option<Value>, ApiError> {
        let defs = self.defs();
        let contact = {
            let mut store = lock(&self.store);
            let Some(existing) = store.get(id) else {
                return Ok(None);
            };
            let input =
                validate::contact_body(patch, self.checks(Mode::AppPatch), &defs, Some(existing))
                    .map_err(|e| self.count_refusal(e))?;
            store
                .patch(id, input, PatchMode::Merge)
                .map(|c| c.render(&defs))
        };
        if let Some(c) = &contact {
            self.emit_app("contact.updated", c.clone());
        }
        Ok(contact)
    }

    /// Deletes a contact as a user in the Quo app would; `None` if unknown.
    pub(crate) fn app_delete(&self, id: &str) -> Option<Value> {
        let defs = self.defs();
        let removed = lock(&self.store).remove(id).map(|c| c.render(&defs))?;
        self.emit_app("contact.deleted", removed.clone());
        Some(removed)
    }
}

/// Whether contacts of `source` come from one of Quo's native integrations (read-only through
/// the API).
fn is_native(source: Option<&str>) -> bool {
    source.is_some_and(|s| INTEGRATION_SOURCES.contains(&s))
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
                tracing::warn!(error = %e, "sandbox app_edit: invalid patch");
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
