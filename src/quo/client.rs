//! The Quo API client: typed calls, one shared rate limiter, retries, and creates that can never
//! produce a duplicate.
//!
//! Every attempt (retries included) waits for a limiter permit first, so all work sharing the key
//! stays under Quo's per-key limit. Reads and DELETEs are idempotent and simply retried.
//! A POST whose outcome is unknown (timeout, reset, 5xx after the request was sent) is resolved
//! by waiting, then looking the contact up by `externalIds` + `sources`, before any second POST;
//! a 409 is resolved by the lookup at once. A PATCH is not idempotent under merge semantics: its
//! unknown outcome goes back to the caller, which reads the contact before deciding.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Method;
use secrecy::SecretString;

use super::fence::WriteFence;
use super::grace::AuthGrace;
use super::limiter::RateLimiter;
pub use super::listing::{ContactList, PageTokens, UndecodableContact};
use super::retry::RetryPolicy;
use super::types::{Contact, CustomFieldDef, DataEnvelope, ErrorBody, PatchContact};

mod attempt;
mod create;
pub use create::{CreateError, CreateOutcome, PostJournal};
mod paging;

/// Largest page Quo serves.
pub const MAX_PAGE: u32 = 50;

/// 401/403/404 answers since the workspace was last checked after which absences are no longer
/// believed until it is checked again (`reverse::absence`): a key pointed at another workspace
/// answers 404 for every id.
pub const REFUSAL_STORM: u64 = 10;

/// Why a Quo call failed for good.
#[derive(Debug, thiserror::Error)]
pub enum QuoError {
    /// Quo refused the request (non-retryable 4xx); the record is quarantined with this.
    #[error("Quo answered {status} {title}: {message}{details}", details = format_details(&body.errors))]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Quo's title.
        title: String,
        /// Quo's message.
        message: String,
        /// The full error body.
        body: Box<ErrorBody>,
    },
    /// The API key was refused (401): nothing will work until it is fixed.
    #[error("Quo refused the API key (401 {code}); check quo.api_key")]
    Unauthorized {
        /// Quo's error code.
        code: String,
    },
    /// Retries ran out on 429, 5xx, timeouts or connection errors.
    #[error("Quo {route}: gave up after {attempts} attempts: {last}")]
    Exhausted {
        /// The route, e.g. `POST /v1/contacts`.
        route: &'static str,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A response body did not match the spec.
    #[error("Quo {route}: unexpected response body: {reason}")]
    Decode {
        /// The route.
        route: &'static str,
        /// The decode error.
        reason: String,
    },
    /// A write whose outcome is unknown (timeout, reset, 5xx): it may have been applied. Only
    /// the caller, after reading the contact again, can decide whether to send it again.
    #[error("Quo {route}: outcome unknown: {reason}")]
    Ambiguous {
        /// The route.
        route: &'static str,
        /// What happened.
        reason: String,
    },
    /// A list answered a page token it had already answered: the listing cannot be trusted to
    /// be complete (absence from it proves nothing).
    #[error("Quo {route}: the list repeated page token {token:?}; listing abandoned")]
    Paging {
        /// The route.
        route: &'static str,
        /// The repeated token (Quo's opaque string, shortened).
        token: String,
    },
    /// Shutdown was requested while waiting.
    #[error("cancelled by shutdown")]
    Cancelled,
    /// This process no longer holds the ledger's writer lease: the write was not sent.
    #[error("Quo {route}: not sent: this process no longer holds the ledger's writer lease")]
    Fenced {
        /// The route.
        route: &'static str,
    },
}

fn format_details(errors: &[super::types::ErrorDetail]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = errors
        .iter()
        .map(|e| match &e.value {
            Some(v) => format!("{} {} (value {v})", e.path, e.message),
            None => format!("{} {}", e.path, e.message),
        })
        .collect();
    format!(" [{}]", parts.join("; "))
}

impl QuoError {
    /// The HTTP status when Quo answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            QuoError::Rejected { status, .. } => Some(*status),
            QuoError::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }

    /// Whether the whole cycle should stop (bad key, shutdown) rather than one record fail.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            QuoError::Unauthorized { .. } | QuoError::Cancelled | QuoError::Fenced { .. }
        )
    }
}

/// Counters every caller shares (for the cycle summary, metrics and benchmarks).
#[derive(Debug, Default)]
pub struct ClientStats {
    /// HTTP requests sent, retries included.
    pub requests: AtomicU64,
    /// 429 answers.
    pub rate_limited: AtomicU64,
    /// Retries (attempts after the first).
    pub retries: AtomicU64,
    /// Creates resolved by lookup (409 or ambiguous outcome).
    pub adopted: AtomicU64,
    /// 401, 403 and 404 answers.
    pub refusals: AtomicU64,
    /// `refusals + 1` when the key was last shown to answer for our workspace; 0: never.
    workspace_checked_at: AtomicU64,
    /// The last read-back of linked contacts did not find most of them: the key may point at
    /// another workspace, until a read-back finds them again.
    workspace_doubted: std::sync::atomic::AtomicBool,
}

impl ClientStats {
    /// (requests, rate_limited) so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.rate_limited.load(Ordering::Relaxed),
        )
    }
}

/// Settings for `QuoClient::new`.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// API root, e.g. `https://api.quo.com`.
    pub base_url: String,
    /// The key (sent raw in `Authorization`).
    pub api_key: SecretString,
    /// Our `source` label.
    pub source: String,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retry policy.
    pub retry: RetryPolicy,
}

/// The Quo client; cheap to clone, all clones share the limiter and counters.
#[derive(Clone)]
pub struct QuoClient {
    http: reqwest::Client,
    base_url: String,
    api_key: SecretString,
    source: String,
    limiter: Arc<RateLimiter>,
    retry: RetryPolicy,
    stats: Arc<ClientStats>,
    /// Requests of background work (the reverse scan) yield to the others.
    background: bool,
    /// `Quo-Api-Version` sent with every request (the dated API); `None` for `/v1`.
    api_version: Option<&'static str>,
    /// The per-request timeout.
    timeout: Duration,
    /// A leader's lease, asked before every write attempt; `None`: always allowed.
    fence: Option<WriteFence>,
    /// The key's refusal clock, told of every accepted (2xx) answer; `None`: nobody asks.
    auth: Option<Arc<AuthGrace>>,
}

impl std::fmt::Debug for QuoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuoClient")
            .field("base_url", &self.base_url)
            .field("api_key", &"[REDACTED]")
            .field("source", &self.source)
            .finish()
    }
}

impl QuoClient {
    /// Builds a client sharing `limiter` with every other user of the same key.
    pub fn new(settings: ClientSettings, limiter: Arc<RateLimiter>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("quo-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a TLS backend is compiled in");
        Self {
            http,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            api_key: settings.api_key,
            source: settings.source,
            limiter,
            retry: settings.retry,
            stats: Arc::new(ClientStats::default()),
            background: false,
            timeout: settings.timeout,
            fence: None,
            auth: None,
            api_version: None,
        }
    }

    /// A clone that sends `Quo-Api-Version: version` with every request (same key, limiter,
    /// counters, write fence and refusal clock): the dated API's requests share the key's
    /// budget.
    pub(crate) fn with_api_version(&self, version: &'static str) -> Self {
        Self {
            api_version: Some(version),
            ..self.clone()
        }
    }

    /// This client, telling `auth` of every answer that shows the key accepted (a 2xx): that
    /// stops its refusal clock, and tells a later refusal from a key that never worked.
    pub fn with_auth_grace(mut self, auth: Arc<AuthGrace>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// This client, writing only under `fence`: asked after the rate limiter's wait and before
    /// each write attempt, which is sent with a timeout no longer than the lease's write window
    /// and only while that much is left, so no write of a process that lost its lease (paused,
    /// suspended, cut off) is sent or still in flight when another may lead.
    pub fn with_write_fence(mut self, fence: WriteFence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// A clone whose requests are background work: they take at most the limiter's background
    /// share of the rate while other requests wait (same key, limiter and counters).
    pub fn background(&self) -> Self {
        Self {
            background: true,
            ..self.clone()
        }
    }

    /// Shared counters.
    pub fn stats(&self) -> &Arc<ClientStats> {
        &self.stats
    }

    /// Whether absences seen through this key may be believed: the workspace was checked, and
    /// fewer than [`REFUSAL_STORM`] 401/403/404 answers came since (see `reverse::absence`).
    pub fn absences_trusted(&self) -> bool {
        let checked = self.stats.workspace_checked_at.load(Ordering::Acquire);
        checked != 0
            && !self.workspace_doubted()
            && self.stats.refusals.load(Ordering::Acquire) + 1 - checked < REFUSAL_STORM
    }

    /// Records that a sample of linked contacts was just read back: the key answers for our
    /// workspace.
    pub fn workspace_confirmed(&self) {
        let now = self.stats.refusals.load(Ordering::Acquire);
        self.stats
            .workspace_checked_at
            .store(now + 1, Ordering::Release);
        self.stats.workspace_doubted.store(false, Ordering::Release);
    }

    /// Records that a read-back of linked contacts did not find most of them: until one finds
    /// them again no absence is believed and no contact is created (`sync::execute`'s
    /// workspace gate).
    pub fn workspace_unconfirmed(&self) {
        self.stats.workspace_doubted.store(true, Ordering::Release);
    }

    /// Whether the last read-back of linked contacts did not find most of them.
    pub fn workspace_doubted(&self) -> bool {
        self.stats.workspace_doubted.load(Ordering::Acquire)
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    /// Our `source` label.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `GET /v1/contact-custom-fields`.
    pub async fn custom_fields(&self) -> Result<Vec<CustomFieldDef>, QuoError> {
        let route = "GET /v1/contact-custom-fields";
        let envelope: DataEnvelope<Vec<CustomFieldDef>> = self
            .call_idempotent(
                route,
                Method::GET,
                "/v1/contact-custom-fields",
                &[],
                None::<&()>,
            )
            .await?;
        Ok(envelope.data)
    }

    /// `GET /v1/contacts/{id}`; `None` when Quo no longer has it.
    pub async fn get_contact(&self, id: &str) -> Result<Option<Contact>, QuoError> {
        let route = "GET /v1/contacts/{id}";
        let path = format!("/v1/contacts/{}", super::encode_path_segment(id));
        match self
            .call_idempotent::<DataEnvelope<Contact>, ()>(route, Method::GET, &path, &[], None)
            .await
        {
            Ok(envelope) => Ok(Some(envelope.data)),
            Err(QuoError::Rejected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PATCH /v1/contacts/{id}`, sent at most once per call where it could have landed.
    ///
    /// PATCH is not idempotent under merge semantics (an item without `id` is appended each
    /// time), so an unknown outcome (timeout, reset, 5xx) comes back as [`QuoError::Ambiguous`]
    /// instead of being resent: the caller reads the contact and decides. Requests that never
    /// reached Quo, and 429s (refused before any work), are retried here.
    pub async fn update_contact(&self, id: &str, body: &PatchContact) -> Result<Contact, QuoError> {
        let route = "PATCH /v1/contacts/{id}";
        let path = format!("/v1/contacts/{}", super::encode_path_segment(id));
        let envelope: DataEnvelope<Contact> = self
            .write_once(route, Method::PATCH, &path, Some(body))
            .await?;
        Ok(envelope.data)
    }

    /// `DELETE /v1/contacts/{id}`; `false` when it was already gone.
    pub async fn delete_contact(&self, id: &str) -> Result<bool, QuoError> {
        let route = "DELETE /v1/contacts/{id}";
        let path = format!("/v1/contacts/{}", super::encode_path_segment(id));
        match self
            .call_idempotent::<serde_json::Value, ()>(route, Method::DELETE, &path, &[], None)
            .await
        {
            Ok(_) => Ok(true),
            Err(QuoError::Rejected { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
