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
//! Modules: `settings` holds how a sandbox starts and the switches a test flips, `shared` the
//! state the routes and the handle share, `handle` is the in-process [`SandboxHandle`], `state`
//! stores contacts and applies writes, `validate` turns raw bodies into typed inputs or Quo's
//! 400s, `query` does the same for the list call's query string and page tokens, `error`
//! renders Quo's error bodies, `routes` is the HTTP surface, [`stats`] counts and rate-limits,
//! [`faults`] arms injected failures, [`shapes`] rewrites responses into unusual legal shapes,
//! `conn` lets a handler kill its own connection, and [`webhooks`] signs and delivers events
//! (and drops, repeats or reorders them).

pub mod activity;
mod conn;
mod error;
pub mod faults;
mod handle;
mod query;
mod routes;
pub mod seed;
mod settings;
pub mod shapes;
mod shared;
mod state;
pub mod stats;
mod validate;
pub mod webhooks;

pub use faults::{Fault, FaultCounters, FaultSpec, ListScope, Pick};
pub use handle::{Sandbox, SandboxHandle};
pub(crate) use settings::Settings;
pub use settings::{PatchMode, SandboxConfig};
pub use shapes::ResponseShapes;
pub(crate) use shared::Shared;
pub use stats::{SandboxStats, WriteStats};
pub use webhooks::{Delivery, WebhookScheme, WebhookTarget, sign_legacy, sign_standard};
