//! Injected faults: the failures a real Quo produces only now and then, on demand.
//!
//! A test injects a fault with [`super::SandboxHandle::inject`] or `POST /_sandbox/faults` (one
//! JSON object per call, forms below); `DELETE /_sandbox/faults` clears every fault of every kind
//! (held webhook events are then released). Admin routes never consume or suffer faults, so
//! `GET /_sandbox/contacts` is always the internal truth. `GET /_sandbox/faults` shows what is
//! armed and, under `fired`, how many times each fault fired ([`FaultCounters`], also in
//! `GET /_sandbox/stats` as `faults`; both reset by `POST /_sandbox/reset-stats`).
//!
//! Count faults queue up and are consumed front to back per kind; a zero count is ignored.
//! Ratio faults are seeded (`seed`, default 0) and decided per record, not by arrival order: the
//! n-th candidate for a key fires iff `hash(seed, key, n) < ratio`, where the key is the
//! contact's `externalId` (its Quo id when it has none) — with the method for writes
//! (`"PATCH crm-7"`) and the event type for webhooks (`"contact.updated crm-7"`). So the same
//! seed picks the same victims in every run, however concurrent workers interleave requests to
//! different contacts. A ratio is clamped to `0.0..=1.0`.
//!
//! | JSON (`POST /_sandbox/faults`) | effect |
//! | --- | --- |
//! | `{"kind":"status","status":500,"count":3,"retry_after":2}` | the next `count` API requests answer `status` with Quo's error body (and `Retry-After` if given), applying nothing |
//! | `{"kind":"status_after_write","status":502,"count":2,"retry_after":1}` | the next `count` successful writes are applied, then answered `status` with Quo's error body (a gateway that timed out after the backend did the work); a rejected write answers normally and leaves the fault queued |
//! | `{"kind":"broken_contacts","ids":["…"],"status":500}` | until cleared (or injected again with other ids), every `/v1/contacts/{id}` request (GET, PATCH, DELETE) for these Quo ids answers `status` with Quo's error body, applying nothing: a contact Quo cannot serve; lists still show it |
//! | `{"kind":"drop_after_write","count":1}` | the next `count` successful writes (POST/PATCH/DELETE) are applied, then the connection is closed without a response; a rejected write answers normally and leaves the fault queued |
//! | `{"kind":"drop_after_write_ratio","ratio":0.4,"seed":7,"methods":["PATCH"]}` | until cleared, each successful write whose method is in `methods` (default all three) loses its response with probability `ratio` (seeded, keyed `"METHOD externalId"`); injecting again replaces it; a queued `drop_after_write` count is used first |
//! | `{"kind":"latency","extra_ms":200,"count":2}` | the next `count` API requests are delayed `extra_ms` more |
//! | `{"kind":"lagging_list","ids":["…"],"external_ids":["crm-7"],"ratio":0.3,"seed":7,"next_created":2,"lists":5,"scope":"all"}` | a lagging list, below (every key optional) |
//! | `{"kind":"repeat_page_token","count":1}` | the next `count` list requests that carry a `pageToken` answer their page with `nextPageToken` equal to the token they were sent: the client sees the same token twice in a row |
//! | `{"kind":"webhook_drop","count":2}` or `{"kind":"webhook_drop","ratio":0.3,"seed":7}` | webhook events are never sent: the next `count`, or (until cleared) each with probability `ratio`; they stay known, so `POST /_sandbox/webhooks/{event_id}/redeliver` can still send them |
//! | `{"kind":"webhook_duplicate","count":2}` or `{"kind":"webhook_duplicate","ratio":0.3,"seed":7}` | webhook events are delivered twice in a row (same id and body; the second logged with `redelivery: true`) |
//! | `{"kind":"webhook_reorder","count":3}` | the next `count` events are held and then delivered newest first, once all `count` exist (clearing the faults releases a partial batch, also newest first) |
//!
//! **Lagging list.** The hidden contacts are left out of `GET /v1/contacts` answers (not in
//! `data`, not counted in `totalItems`; paging skips over them) while `GET /v1/contacts/{id}`,
//! PATCH and DELETE see them as usual. They are: the Quo ids in `ids`; the contacts that carry
//! an externalId in `external_ids` (resolved at injection); with `ratio`, each contact
//! that exists at injection (one seeded draw per externalId); and the next `next_created`
//! contacts created (API or app) while the fault is armed. `scope` says which list requests lag:
//! `"all"` (default: with or without `externalIds`), `"unfiltered"` (only requests without
//! `externalIds`, i.e. the scan) or `"by_external_id"` (only requests with `externalIds`; the
//! `sources` filter plays no part). With `lists: K`, the fault ends after K list requests in
//! scope (each page counts one); without it, it lasts until cleared. Injecting again replaces
//! the previous lagging list (`"lists":0` just ends it).
//!
//! **Switches** (settings and definitions rather than faults; they do not count as fired except
//! where noted):
//!
//! | JSON | effect |
//! | --- | --- |
//! | `POST /_sandbox/settings` `{"response_shapes":{"string_values":true,"keyless_custom_fields":true,"null_entries":true,"unknown_field_type":true,"whole_seconds":true}}` | tolerant-reader shapes in every `/v1` contact answer and webhook payload (missing keys off; `{}` all off): number/boolean custom values as strings (`"424242"`, `"false"`), custom-field items without `key`, a `null` first in `emails`, `phoneNumbers` and `customFields` and `"name": null` for items with an empty label, and a workspace field `Rating` (`key` `rating`, `type` `rating`, value `4` on every existing contact), and `createdAt`/`updatedAt` in whole seconds as the spec's examples show them; see [`super::ResponseShapes`] |
//! | `POST /_sandbox/settings` `{"refuse_stale_item_ids":true}` (default `true`) | a PATCH addressing an email/phone item `id` the contact does not have (even with `"value": null` to remove it) answers 400 `0800400`, `errors[]` entries at `/defaultFields/emails/{i}/id` / `/defaultFields/phoneNumbers/{i}/id` with the id as `value`; nothing applied; counted as `stale_item_ids_refused` |
//! | `POST /_sandbox/custom-fields` `{"name":"Tags","key":"tags","type":"multi-select","options":["vip","enterprise"]}` | define or redefine a field; values outside `options` are refused (API and app) with 400 `0801400`, one entry per value at `/customFields/{i}/value/{j}` with the value; counted as `multi_select_refused`. Any `type` is accepted (e.g. `"rating"`: API writes to it answer 400 `0801400` at `/customFields/{i}/key`, app edits set any value); `"fill": v` gives every contact without a value `v` |
//!
//! `GET /_sandbox/contacts` lists every contact as stored (plain shapes, no lag): the truth to
//! compare a sync against.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A fault to inject into the next API requests (or webhook deliveries).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The next `count` API requests answer `status` with Quo's error body, applying nothing.
    Status {
        /// HTTP status, e.g. 429, 500, 503.
        status: u16,
        /// How many requests get it.
        count: u32,
        /// Whole seconds for a `Retry-After` header, if any.
        retry_after: Option<u64>,
    },
    /// The next `count` successful write requests are applied, then answered `status` (with
    /// Quo's error body) instead of their result (rejected writes answer normally).
    StatusAfterWrite {
        /// HTTP status, e.g. 500, 502.
        status: u16,
        /// How many writes get it.
        count: u32,
        /// Whole seconds for a `Retry-After` header, if any.
        retry_after: Option<u64>,
    },
    /// The next `count` successful write requests (POST/PATCH/DELETE) are applied, then their
    /// connection is closed without any response (rejected writes answer normally).
    DropAfterWrite {
        /// How many writes get it.
        count: u32,
    },
    /// Until cleared, every request addressed to one of these contacts by id answers `status`.
    BrokenContacts {
        /// Quo ids.
        ids: Vec<String>,
        /// HTTP status, e.g. 500.
        status: u16,
    },
    /// Until cleared, a seeded random fraction of successful writes lose their response.
    DropAfterWriteRatio {
        /// Probability per write, 0.0–1.0.
        ratio: f64,
        /// Random seed.
        seed: u64,
        /// Methods it applies to (upper case); empty means POST, PATCH and DELETE.
        methods: Vec<String>,
    },
    /// The next `count` API requests are delayed by `extra` on top of the configured latency.
    Latency {
        /// Extra delay.
        extra: Duration,
        /// How many requests get it.
        count: u32,
    },
    /// Contacts left out of list answers for a while (see the module doc).
    LaggingList {
        /// Quo ids to hide.
        ids: Vec<String>,
        /// External ids whose contacts to hide (resolved at injection).
        external_ids: Vec<String>,
        /// Fraction of the existing contacts to hide, drawn with `seed`.
        ratio: Option<f64>,
        /// Random seed for `ratio`.
        seed: u64,
        /// Hide the next this-many contacts created.
        next_created: u32,
        /// List requests in scope before the fault ends; `None`: until cleared.
        lists: Option<u32>,
        /// Which list requests lag.
        scope: ListScope,
    },
    /// The next `count` list requests carrying a page token answer that same token as next.
    RepeatPageToken {
        /// How many list answers get it.
        count: u32,
    },
    /// Webhook events never sent: the next `count`, or a seeded fraction until cleared.
    WebhookDrop(Pick),
    /// Webhook events delivered twice: the next `count`, or a seeded fraction until cleared.
    WebhookDuplicate(Pick),
    /// The next `count` webhook events delivered newest first.
    WebhookReorder {
        /// Batch size.
        count: u32,
    },
}

/// Which events a webhook fault picks: a count, or a seeded fraction until cleared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    /// The next `n` events.
    Next(u32),
    /// Each event with probability `ratio`, drawn with `seed`.
    Ratio {
        /// Probability, 0.0–1.0.
        ratio: f64,
        /// Random seed.
        seed: u64,
    },
}

/// Which list requests a lagging list affects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListScope {
    /// Every `GET /v1/contacts`.
    #[default]
    All,
    /// Only list requests without `externalIds` (the scan).
    Unfiltered,
    /// Only list requests with `externalIds`.
    ByExternalId,
}

impl ListScope {
    /// Whether a list request (with `externalIds` or not) is in this scope.
    pub(crate) fn covers(self, by_external_id: bool) -> bool {
        match self {
            ListScope::All => true,
            ListScope::Unfiltered => !by_external_id,
            ListScope::ByExternalId => by_external_id,
        }
    }
}

/// The JSON form of a [`Fault`] for `POST /_sandbox/faults`; the forms are in the module doc.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSpec {
    /// See [`Fault::Status`].
    Status {
        /// HTTP status.
        status: u16,
        /// How many requests.
        #[serde(default = "one")]
        count: u32,
        /// `Retry-After` seconds.
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// See [`Fault::StatusAfterWrite`].
    StatusAfterWrite {
        /// HTTP status.
        status: u16,
        /// How many writes.
        #[serde(default = "one")]
        count: u32,
        /// `Retry-After` seconds.
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// See [`Fault::DropAfterWrite`].
    DropAfterWrite {
        /// How many writes.
        #[serde(default = "one")]
        count: u32,
    },
    /// See [`Fault::BrokenContacts`].
    BrokenContacts {
        /// Quo ids.
        ids: Vec<String>,
        /// HTTP status.
        #[serde(default = "five_hundred")]
        status: u16,
    },
    /// See [`Fault::DropAfterWriteRatio`].
    DropAfterWriteRatio {
        /// Probability per write.
        ratio: f64,
        /// Random seed.
        #[serde(default)]
        seed: u64,
        /// Methods, e.g. `["PATCH"]`; default all writes.
        #[serde(default)]
        methods: Vec<String>,
    },
    /// See [`Fault::Latency`].
    Latency {
        /// Extra delay in milliseconds.
        extra_ms: u64,
        /// How many requests.
        #[serde(default = "one")]
        count: u32,
    },
    /// See [`Fault::LaggingList`].
    LaggingList {
        /// Quo ids to hide.
        #[serde(default)]
        ids: Vec<String>,
        /// External ids whose contacts to hide.
        #[serde(default)]
        external_ids: Vec<String>,
        /// Fraction of existing contacts to hide.
        #[serde(default)]
        ratio: Option<f64>,
        /// Random seed.
        #[serde(default)]
        seed: u64,
        /// Hide the next this-many contacts created.
        #[serde(default)]
        next_created: u32,
        /// List requests before the fault ends.
        #[serde(default)]
        lists: Option<u32>,
        /// Which list requests lag.
        #[serde(default)]
        scope: ListScope,
    },
    /// See [`Fault::RepeatPageToken`].
    RepeatPageToken {
        /// How many list answers.
        #[serde(default = "one")]
        count: u32,
    },
    /// See [`Fault::WebhookDrop`].
    WebhookDrop {
        /// How many events (ignored when `ratio` is given).
        #[serde(default = "one")]
        count: u32,
        /// Probability per event, until cleared.
        #[serde(default)]
        ratio: Option<f64>,
        /// Random seed.
        #[serde(default)]
        seed: u64,
    },
    /// See [`Fault::WebhookDuplicate`].
    WebhookDuplicate {
        /// How many events (ignored when `ratio` is given).
        #[serde(default = "one")]
        count: u32,
        /// Probability per event, until cleared.
        #[serde(default)]
        ratio: Option<f64>,
        /// Random seed.
        #[serde(default)]
        seed: u64,
    },
    /// See [`Fault::WebhookReorder`].
    WebhookReorder {
        /// Batch size.
        #[serde(default = "two")]
        count: u32,
    },
}

fn one() -> u32 {
    1
}

fn two() -> u32 {
    2
}

fn five_hundred() -> u16 {
    500
}

fn pick(count: u32, ratio: Option<f64>, seed: u64) -> Pick {
    match ratio {
        Some(ratio) => Pick::Ratio { ratio, seed },
        None => Pick::Next(count),
    }
}

impl From<FaultSpec> for Fault {
    fn from(s: FaultSpec) -> Fault {
        match s {
            FaultSpec::Status {
                status,
                count,
                retry_after,
            } => Fault::Status {
                status,
                count,
                retry_after,
            },
            FaultSpec::StatusAfterWrite {
                status,
                count,
                retry_after,
            } => Fault::StatusAfterWrite {
                status,
                count,
                retry_after,
            },
            FaultSpec::DropAfterWrite { count } => Fault::DropAfterWrite { count },
            FaultSpec::BrokenContacts { ids, status } => Fault::BrokenContacts { ids, status },
            FaultSpec::DropAfterWriteRatio {
                ratio,
                seed,
                methods,
            } => Fault::DropAfterWriteRatio {
                ratio,
                seed,
                methods,
            },
            FaultSpec::Latency { extra_ms, count } => Fault::Latency {
                extra: Duration::from_millis(extra_ms),
                count,
            },
            FaultSpec::LaggingList {
                ids,
                external_ids,
                ratio,
                seed,
                next_created,
                lists,
                scope,
            } => Fault::LaggingList {
                ids,
                external_ids,
                ratio,
                seed,
                next_created,
                lists,
                scope,
            },
            FaultSpec::RepeatPageToken { count } => Fault::RepeatPageToken { count },
            FaultSpec::WebhookDrop { count, ratio, seed } => {
                Fault::WebhookDrop(pick(count, ratio, seed))
            }
            FaultSpec::WebhookDuplicate { count, ratio, seed } => {
                Fault::WebhookDuplicate(pick(count, ratio, seed))
            }
            FaultSpec::WebhookReorder { count } => Fault::WebhookReorder { count },
        }
    }
}

/// How many times each fault fired since start or the last stats reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultCounters {
    /// Answers produced by `status` faults.
    pub status_answers: u64,
    /// Applied writes answered with a status by `status_after_write`.
    pub status_after_write: u64,
    /// Requests to a broken contact answered with its status.
    pub broken_contact_answers: u64,
    /// Requests delayed by `latency` faults.
    pub delayed_requests: u64,
    /// Writes applied and then dropped by a `drop_after_write` count.
    pub dropped_after_write: u64,
    /// Writes applied and then dropped by `drop_after_write_ratio`.
    pub dropped_after_write_ratio: u64,
    /// List answers that left at least one hidden contact out.
    pub lagging_list_answers: u64,
    /// Contacts left out of list answers, summed over answers.
    pub contacts_left_out: u64,
    /// List answers whose `nextPageToken` repeated the token sent.
    pub repeated_page_tokens: u64,
    /// PATCHes refused for addressing an email/phone item id the contact does not have.
    pub stale_item_ids_refused: u64,
    /// Writes refused for a multi-select value outside the field's options.
    pub multi_select_refused: u64,
    /// Webhook events never sent.
    pub webhooks_dropped: u64,
    /// Webhook events sent twice.
    pub webhooks_duplicated: u64,
    /// Webhook events held back and delivered out of order.
    pub webhooks_reordered: u64,
}

/// A seeded draw: `true` with probability `ratio`, decided per key and per occurrence.
///
/// The outcome of the n-th draw for a key is a pure function of (seed, key, n), so concurrent
/// clients that interleave their requests differently from run to run still meet the same
/// faults for the same records: what a reproducible randomized test needs.
#[derive(Debug)]
pub(crate) struct Draw {
    ratio: f64,
    seed: u64,
    seen: HashMap<String, u64>,
}

impl Draw {
    /// A draw firing with probability `ratio` (clamped to 0–1; NaN is 0), seeded with `seed`.
    pub(crate) fn new(ratio: f64, seed: u64) -> Draw {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Draw {
            ratio,
            seed,
            seen: HashMap::new(),
        }
    }

    /// The next draw for `key` (its first, second, … occurrence).
    pub(crate) fn fire_for(&mut self, key: &str) -> bool {
        let n = self.seen.entry(key.to_string()).or_insert(0);
        let occurrence = *n;
        *n += 1;
        let h = mix(mix(self.seed ^ fnv1a(key.as_bytes())) ^ occurrence);
        // 53 random bits as a fraction in [0, 1).
        ((h >> 11) as f64 / (1u64 << 53) as f64) < self.ratio
    }

    /// `{"ratio","seed"}` for the admin view.
    pub(crate) fn view(&self) -> Value {
        json!({"ratio": self.ratio, "seed": self.seed})
    }
}

/// FNV-1a, 64 bits: a stable hash of a key (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64's finaliser: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An armed `drop_after_write_ratio`.
#[derive(Debug)]
struct DropRatio {
    draw: Draw,
    methods: Vec<String>,
}

/// An armed lagging list.
#[derive(Debug, Default)]
pub(crate) struct LaggingList {
    /// Quo ids left out of list answers.
    pub hidden: BTreeSet<String>,
    /// Contacts still to be hidden as they are created.
    pub next_created: u32,
    /// List requests left; `None`: until cleared.
    pub lists_left: Option<u32>,
    /// Which list requests lag.
    pub scope: ListScope,
}

/// Every armed API fault (webhook faults live with the webhook hub).
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    queue: VecDeque<Fault>,
    drop_ratio: Option<DropRatio>,
    lag: Option<LaggingList>,
    repeat_token: u32,
    broken: HashMap<String, u16>,
}

impl FaultQueue {
    /// Arms a count fault or a drop ratio (a zero count is ignored). Lagging lists and webhook
    /// faults need the store or the hub and are armed through [`FaultQueue::set_lag`] and the hub.
    pub(crate) fn push(&mut self, fault: Fault) {
        match fault {
            Fault::Status { count, .. }
            | Fault::StatusAfterWrite { count, .. }
            | Fault::DropAfterWrite { count }
            | Fault::Latency { count, .. } => {
                if count > 0 {
                    self.queue.push_back(fault);
                }
            }
            Fault::DropAfterWriteRatio {
                ratio,
                seed,
                methods,
            } => {
                self.drop_ratio = Some(DropRatio {
                    draw: Draw::new(ratio, seed),
                    methods: methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                });
            }
            Fault::RepeatPageToken { count } => self.repeat_token += count,
            Fault::BrokenContacts { ids, status } => {
                self.broken = ids.into_iter().map(|id| (id, status)).collect();
            }
            Fault::LaggingList { .. }
            | Fault::WebhookDrop(_)
            | Fault::WebhookDuplicate(_)
            | Fault::WebhookReorder { .. } => {
                tracing::warn!(?fault, "FaultQueue::push: fault armed elsewhere, ignored")
            }
        }
    }

    /// Replaces (or with `None` ends) the lagging list.
    pub(crate) fn set_lag(&mut self, lag: Option<LaggingList>) {
        self.lag = lag;
    }

    /// Drops every armed API fault.
    pub(crate) fn clear(&mut self) {
        *self = FaultQueue::default();
    }

    /// Takes one unit of the first fault matching `pick`, removing it when exhausted.
    fn take<T>(&mut self, pick: impl Fn(&mut Fault) -> Option<(T, &mut u32)>) -> Option<T> {
        let mut found = None;
        for (i, f) in self.queue.iter_mut().enumerate() {
            if let Some((t, count)) = pick(f) {
                *count -= 1;
                found = Some((i, t, *count == 0));
                break;
            }
        }
        let (i, t, exhausted) = found?;
        if exhausted {
            self.queue.remove(i);
        }
        Some(t)
    }

    /// Consumes one injected status answer, if queued.
    pub(crate) fn take_status(&mut self) -> Option<(u16, Option<u64>)> {
        self.take(|f| match f {
            Fault::Status {
                status,
                count,
                retry_after,
            } => Some(((*status, *retry_after), count)),
            _ => None,
        })
    }

    /// Consumes one status-after-write answer, if queued.
    pub(crate) fn take_status_after_write(&mut self) -> Option<(u16, Option<u64>)> {
        self.take(|f| match f {
            Fault::StatusAfterWrite {
                status,
                count,
                retry_after,
            } => Some(((*status, *retry_after), count)),
            _ => None,
        })
    }

    /// The status a request to contact `id` gets while it is broken.
    pub(crate) fn broken_status(&self, id: &str) -> Option<u16> {
        self.broken.get(id).copied()
    }

    /// Consumes one counted connection drop, if queued.
    pub(crate) fn take_drop(&mut self) -> bool {
        self.take(|f| match f {
            Fault::DropAfterWrite { count } => Some(((), count)),
            _ => None,
        })
        .is_some()
    }

    /// One draw of the drop ratio for a successful write with `method` to the contact keyed
    /// `key` (its externalId); `false` if none armed or the method is not covered (no draw is
    /// made then).
    pub(crate) fn draw_drop(&mut self, method: &str, key: &str) -> bool {
        let Some(d) = &mut self.drop_ratio else {
            return false;
        };
        let covered = if d.methods.is_empty() {
            matches!(method, "POST" | "PATCH" | "DELETE")
        } else {
            d.methods.iter().any(|m| m == method)
        };
        covered && d.draw.fire_for(&format!("{method} {key}"))
    }

    /// Consumes one extra latency, if queued.
    pub(crate) fn take_latency(&mut self) -> Option<Duration> {
        self.take(|f| match f {
            Fault::Latency { extra, count } => Some((*extra, count)),
            _ => None,
        })
    }

    /// Consumes one repeated page token, if armed.
    pub(crate) fn take_repeat_token(&mut self) -> bool {
        if self.repeat_token > 0 {
            self.repeat_token -= 1;
            true
        } else {
            false
        }
    }

    /// A contact was created: hides it if the lagging list still waits for new contacts.
    pub(crate) fn created(&mut self, id: &str) {
        if let Some(lag) = &mut self.lag
            && lag.next_created > 0
        {
            lag.next_created -= 1;
            lag.hidden.insert(id.to_string());
        }
    }

    /// The ids to leave out of one list request (with `externalIds` or not), counting the
    /// request against the lagging list's budget; empty when no lag applies.
    pub(crate) fn hidden_for_list(&mut self, by_external_id: bool) -> BTreeSet<String> {
        let Some(lag) = &mut self.lag else {
            return BTreeSet::new();
        };
        if !lag.scope.covers(by_external_id) {
            return BTreeSet::new();
        }
        let hidden = lag.hidden.clone();
        if let Some(left) = &mut lag.lists_left {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.lag = None;
            }
        }
        hidden
    }

    /// The ids a list in scope would leave out now (no budget consumed).
    pub(crate) fn hidden_now(&self) -> Vec<String> {
        self.lag
            .as_ref()
            .map(|l| l.hidden.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// What is armed, for `GET /_sandbox/faults`.
    pub(crate) fn view(&self) -> Value {
        let queued: Vec<Value> = self
            .queue
            .iter()
            .map(|f| match f {
                Fault::Status {
                    status,
                    count,
                    retry_after,
                } => json!({"kind": "status", "status": status, "count": count, "retry_after": retry_after}),
                Fault::StatusAfterWrite {
                    status,
                    count,
                    retry_after,
                } => json!({"kind": "status_after_write", "status": status, "count": count, "retry_after": retry_after}),
                Fault::DropAfterWrite { count } => json!({"kind": "drop_after_write", "count": count}),
                Fault::Latency { extra, count } => json!({"kind": "latency", "extra_ms": extra.as_millis() as u64, "count": count}),
                other => json!({"kind": format!("{other:?}")}),
            })
            .collect();
        json!({
            "queued": queued,
            "drop_after_write_ratio": self.drop_ratio.as_ref().map(|d| {
                let mut v = d.draw.view();
                v["methods"] = json!(d.methods);
                v
            }),
            "lagging_list": self.lag.as_ref().map(|l| json!({
                "hidden": l.hidden,
                "next_created": l.next_created,
                "lists_left": l.lists_left,
                "scope": l.scope,
            })),
            "repeat_page_token": self.repeat_token,
            "broken_contacts": self.broken,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_consumed_per_kind() {
        let mut q = FaultQueue::default();
        q.push(Fault::Status {
            status: 500,
            count: 2,
            retry_after: None,
        });
        q.push(Fault::DropAfterWrite { count: 1 });
        assert!(q.take_drop());
        assert!(!q.take_drop());
        assert_eq!(q.take_status(), Some((500, None)));
        assert_eq!(q.take_status(), Some((500, None)));
        assert_eq!(q.take_status(), None);
        assert_eq!(q.take_latency(), None);
    }

    #[test]
    fn draws_are_deterministic_per_seed_key_and_occurrence_and_clamped() {
        let run = |seed, keys: &[&str]| {
            let mut d = Draw::new(0.4, seed);
            keys.iter()
                .map(|k| (k.to_string(), d.fire_for(k)))
                .collect::<Vec<_>>()
        };
        let keys: Vec<String> = (0..64).map(|n| format!("k{}", n % 16)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let a = run(7, &keys);
        assert_eq!(a, run(7, &keys));
        assert_ne!(a, run(8, &keys));
        let hits = a.iter().filter(|(_, b)| *b).count();
        assert!((10..40).contains(&hits), "{hits}");
        // Another interleaving of the same keys: the same outcome per key and occurrence.
        let mut reversed = keys.clone();
        reversed.reverse();
        let mut b = run(7, &reversed);
        let per_key = |v: &[(String, bool)], k: &str| -> Vec<bool> {
            v.iter().filter(|(x, _)| x == k).map(|(_, f)| *f).collect()
        };
        b.reverse();
        for k in ["k0", "k5", "k15"] {
            let mut rb = per_key(&b, k);
            rb.reverse();
            assert_eq!(per_key(&a, k), rb, "{k}");
        }
        let mut always = Draw::new(5.0, 1);
        assert!((0..10).all(|_| always.fire_for("x")));
        let mut never = Draw::new(f64::NAN, 1);
        assert!((0..10).all(|_| !never.fire_for("x")));
    }

    #[test]
    fn lagging_list_budget_and_scope() {
        let mut q = FaultQueue::default();
        q.set_lag(Some(LaggingList {
            hidden: ["a".to_string()].into(),
            next_created: 1,
            lists_left: Some(2),
            scope: ListScope::Unfiltered,
        }));
        q.created("b");
        q.created("c");
        assert!(q.hidden_for_list(true).is_empty(), "out of scope");
        assert_eq!(q.hidden_for_list(false).len(), 2);
        assert_eq!(q.hidden_for_list(false).len(), 2);
        assert!(q.hidden_for_list(false).is_empty(), "budget spent");
    }
}
