//! The faults a step may put on the wire, one drawn per step. To add one: a variant, its line
//! in [`FAULTS`] (listed twice to draw it twice as often), and its arm in [`FaultKind::inject`].

use quo_sync::sandbox::{Fault, SandboxHandle};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::json;

use crate::common::{TestApp, sandbox_fault};

/// A fault on the wire for the next cycle (ratio faults and lagging lists last until the
/// quiet phase clears them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Nothing goes wrong.
    None,
    /// 1–3 answers of 429 with `Retry-After: 0`.
    RateLimited,
    /// 1–3 answers of 500.
    ServerErrors,
    /// A 429, then 11–16 answers of 500 in a row: past the 10 retries of the tests' config, so
    /// a request gives up and what needed it fails (the cycle, or one record, quarantined).
    Outage,
    /// The next 1–3 writes are applied, then their answers lost.
    LostAnswers,
    /// Each write loses its answer with probability 0.4 (seeded per record).
    LostAnswersSeeded,
    /// Webhooks stop (until the quiet phase points them back).
    WebhooksOff,
    /// 30% of the contacts and the next one created are left out of lists for 3 list requests.
    LaggingList,
    /// Half the webhook events are delivered twice.
    DuplicateWebhooks,
    /// Half the webhook events are never sent.
    DroppedWebhooks,
    /// The next paged list answers the token it was sent.
    RepeatedPageToken,
    /// The next write's answer is lost, the next contact created stays out of every list until
    /// the faults clear, and no webhook announces it: a lost create whose lookups miss makes a
    /// twin (where Quo accepts a repeated externalId), which the quiet cycles' scans must find
    /// and remove.
    LostCreateBehindLaggingList,
    /// The next 1–5 requests take 20 ms longer (kills land mid-request).
    SlowAnswers,
}

/// The draw: one entry per chance.
pub const FAULTS: &[FaultKind] = &[
    FaultKind::None,
    FaultKind::RateLimited,
    FaultKind::ServerErrors,
    FaultKind::Outage,
    FaultKind::LostAnswers,
    FaultKind::LostAnswersSeeded,
    FaultKind::WebhooksOff,
    FaultKind::LaggingList,
    FaultKind::LaggingList,
    FaultKind::DuplicateWebhooks,
    FaultKind::DroppedWebhooks,
    FaultKind::RepeatedPageToken,
    FaultKind::LostCreateBehindLaggingList,
    FaultKind::SlowAnswers,
];

impl FaultKind {
    /// Draws one.
    pub fn draw(rng: &mut StdRng) -> FaultKind {
        FAULTS[rng.random_range(0..FAULTS.len())]
    }

    /// Arms it on `app`'s sandbox; `seed` seeds the ratio faults.
    pub async fn inject(self, app: &TestApp, rng: &mut StdRng) {
        self.inject_into(&app.sandbox, rng).await;
    }

    /// Arms it on `sandbox` (a world without a `TestApp`: `tokens.rs`).
    pub async fn inject_into(self, sandbox: &SandboxHandle, rng: &mut StdRng) {
        let base = sandbox.base_url();
        let seed: u64 = rng.random_range(0..1_000_000);
        match self {
            FaultKind::None => {}
            FaultKind::RateLimited => sandbox.inject(Fault::Status {
                status: 429,
                count: rng.random_range(1..4),
                retry_after: Some(0),
            }),
            FaultKind::ServerErrors => sandbox.inject(Fault::Status {
                status: 500,
                count: rng.random_range(1..4),
                retry_after: None,
            }),
            FaultKind::Outage => {
                // A 429 first, so a cycle that fails has spent one (its run row must say so).
                sandbox.inject(Fault::Status {
                    status: 429,
                    count: 1,
                    retry_after: Some(0),
                });
                sandbox.inject(Fault::Status {
                    status: 500,
                    count: rng.random_range(11..17),
                    retry_after: None,
                });
            }
            FaultKind::LostAnswers => sandbox.inject(Fault::DropAfterWrite {
                count: rng.random_range(1..4),
            }),
            FaultKind::LostAnswersSeeded => {
                sandbox_fault(
                    &base,
                    json!({"kind": "drop_after_write_ratio", "ratio": 0.4, "seed": seed}),
                )
                .await
            }
            FaultKind::WebhooksOff => sandbox.set_webhook(None),
            FaultKind::LaggingList => {
                sandbox_fault(
                    &base,
                    json!({"kind": "lagging_list", "ratio": 0.3, "seed": seed, "next_created": 1, "lists": 3}),
                )
                .await
            }
            FaultKind::DuplicateWebhooks => {
                sandbox_fault(
                    &base,
                    json!({"kind": "webhook_duplicate", "ratio": 0.5, "seed": seed}),
                )
                .await
            }
            FaultKind::DroppedWebhooks => {
                sandbox_fault(
                    &base,
                    json!({"kind": "webhook_drop", "ratio": 0.5, "seed": seed}),
                )
                .await
            }
            FaultKind::RepeatedPageToken => {
                sandbox_fault(&base, json!({"kind": "repeat_page_token", "count": 1})).await
            }
            FaultKind::LostCreateBehindLaggingList => {
                sandbox_fault(
                    &base,
                    json!({"kind": "lagging_list", "seed": seed, "next_created": 1, "scope": "all"}),
                )
                .await;
                sandbox.inject(Fault::DropAfterWrite { count: 1 });
                sandbox.set_webhook(None);
            }
            FaultKind::SlowAnswers => sandbox.inject(Fault::Latency {
                extra: std::time::Duration::from_millis(20),
                count: rng.random_range(1..6),
            }),
        }
    }
}
