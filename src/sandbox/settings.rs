//! How a sandbox starts ([`SandboxConfig`]) and the switches that can change while it runs
//! (`Settings`: PATCH semantics, duplicates, latency, rate, webhooks, response shapes): what a
//! test chooses, apart from the state the sandbox keeps.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ResponseShapes, WebhookTarget};

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
    /// The key answers for another workspace (see [`super::SandboxHandle::set_foreign_workspace`]).
    pub foreign_workspace: bool,
}
