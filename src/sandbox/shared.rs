//! The state one sandbox keeps, shared by its HTTP routes (`/v1`, `/_sandbox`) and its
//! [`super::SandboxHandle`]: both workspaces' contacts, custom field definitions, settings,
//! statistics, armed faults and the webhook hub, with the operations both sides perform on it
//! (edits made "in the Quo app", seeds, fault arming, webhook emission), so a test driving the
//! handle and curl driving the admin routes change the same world the same way.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::error::ApiError;
use super::faults::{Draw, Fault, FaultQueue, LaggingList};
use super::state::{self, FieldDef, FieldType, INTEGRATION_SOURCES, Store};
use super::stats::{Accounting, SandboxStats};
use super::validate::{self, Mode};
use super::webhooks::{Hub, lock};
use super::{PatchMode, ResponseShapes, Settings, activity, seed};

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
