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

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::fence::WriteFence;
use super::grace::AuthGrace;
use super::limiter::RateLimiter;
use super::listing::RawContactPage;
pub use super::listing::{ContactList, PageTokens, UndecodableContact};
use super::retry::{RetryPolicy, is_retryable_status, retry_after};
use super::types::{Contact, CreateContact, CustomFieldDef, DataEnvelope, ErrorBody, PatchContact};

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

/// How a create ended.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateOutcome {
    /// The contact as Quo has it.
    pub contact: Contact,
    /// True when an existing contact was found and adopted instead of created.
    pub adopted: bool,
}

/// What [`QuoClient::create_contact`] tells the caller's record of POSTs as they happen, so a
/// POST that may have made a contact is never forgotten: Quo has no idempotency key, a list can
/// lag a create for longer than any wait, and only the record tells a contact such a POST made
/// from a stranger's later on.
pub trait PostJournal {
    /// Why the record could not be written (the create stops: nothing unrecorded is sent).
    type Error;

    /// A POST is about to be sent: what it sends must be on record until its outcome is known.
    fn sending(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The POST just sent may have made a contact (a 5xx, a timeout, a reset): record it as
    /// unconfirmed now, before any lookup or second POST.
    fn may_have_landed(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A journal that keeps nothing (tests and tools that create by hand).
impl PostJournal for () {
    type Error = std::convert::Infallible;

    async fn sending(&self) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn may_have_landed(&self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Why [`QuoClient::create_contact`] failed: Quo, or the journal.
#[derive(Debug, thiserror::Error)]
pub enum CreateError<E> {
    /// Quo refused the create, or its outcome is unknown.
    #[error(transparent)]
    Quo(#[from] QuoError),
    /// The journal could not record a POST; nothing more was sent.
    #[error("the record of POSTs failed")]
    Journal(E),
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

/// What one attempt produced, before retry decisions.
pub(super) enum AttemptError {
    /// Never reached the server: safe to retry anything.
    NotSent(String),
    /// May or may not have been applied.
    Ambiguous(String),
    /// Not sent: the write gate refused (the writer lease is no longer ours).
    Fenced,
    /// Quo answered with a retryable status (429, 5xx).
    Retryable {
        status: StatusCode,
        retry_after: Option<Duration>,
        text: String,
    },
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

    /// A write that is not safe to repeat blindly, sent at most once where it could have
    /// landed: an unknown outcome (timeout, reset, 5xx) comes back as [`QuoError::Ambiguous`]
    /// for the caller to resolve by reading; requests that never reached Quo, and 429s
    /// (refused before any work), are retried here. An empty success body decodes as `null`.
    pub(super) async fn write_once<T: DeserializeOwned, B: serde::Serialize + ?Sized>(
        &self,
        route: &'static str,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, QuoError> {
        let mut retries = 0u32;
        loop {
            let (last, wait_hint, limited) =
                match self.attempt(route, method.clone(), path, &[], body).await {
                    Ok((status, bytes)) if status.is_success() => {
                        return decode(route, if bytes.is_empty() { b"null" } else { &bytes });
                    }
                    Ok((status, bytes)) => return Err(rejected(status, &bytes)),
                    Err(AttemptError::Fenced) => return Err(QuoError::Fenced { route }),
                    Err(AttemptError::NotSent(text)) => (text, None, false),
                    Err(AttemptError::Retryable {
                        status: StatusCode::TOO_MANY_REQUESTS,
                        retry_after,
                        text,
                    }) => (text, retry_after, true),
                    Err(AttemptError::Retryable { text, .. })
                    | Err(AttemptError::Ambiguous(text)) => {
                        return Err(QuoError::Ambiguous {
                            route,
                            reason: text,
                        });
                    }
                };
            retries = self
                .before_retry(route, retries, last, wait_hint, limited)
                .await?;
        }
    }

    /// Waits as before retry number `retries + 1` (backoff with jitter), or gives up: for callers
    /// that own a retry loop of their own (an ambiguous PATCH, read back before resending).
    pub async fn backoff_before_retry(
        &self,
        route: &'static str,
        retries: u32,
        last: String,
    ) -> Result<u32, QuoError> {
        self.before_retry(route, retries, last, None, false).await
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

    /// Our contacts with this external id (`externalIds` + `sources`), oldest first.
    pub async fn find_by_external_id(&self, external_id: &str) -> Result<Vec<Contact>, QuoError> {
        Ok(self
            .find_by_external_ids(&[external_id])
            .await?
            .contacts
            .into_iter()
            .filter(|c| c.external_id.as_deref() == Some(external_id))
            .collect())
    }

    /// Our contacts with any of these external ids, up to [`MAX_PAGE`] ids per request (one
    /// request per 50 ids when each id has one contact). A repeated page token is an error.
    pub async fn find_by_external_ids(
        &self,
        external_ids: &[&str],
    ) -> Result<ContactList, QuoError> {
        let route = "GET /v1/contacts";
        let mut found = ContactList::default();
        for chunk in external_ids.chunks(MAX_PAGE as usize) {
            let mut tokens = PageTokens::default();
            let mut token: Option<String> = None;
            loop {
                let mut query: Vec<(&str, String)> = chunk
                    .iter()
                    .map(|id| ("externalIds", id.to_string()))
                    .collect();
                query.push(("sources", self.source.clone()));
                query.push(("maxResults", MAX_PAGE.to_string()));
                if let Some(t) = &token {
                    query.push(("pageToken", t.clone()));
                }
                let raw: RawContactPage = self
                    .call_idempotent(route, Method::GET, "/v1/contacts", &query, None::<&()>)
                    .await?;
                let page = ContactList::from(raw);
                found.contacts.extend(
                    page.contacts
                        .into_iter()
                        .filter(|c| c.external_id.as_deref().is_some_and(|e| chunk.contains(&e))),
                );
                found.undecodable.extend(page.undecodable);
                match page.next_page_token {
                    Some(next) => {
                        tokens.next(route, &next)?;
                        token = Some(next);
                    }
                    None => break,
                }
            }
        }
        Ok(found)
    }

    /// One page of our contacts (`sources=<ours>`, 50 a page), decoded contact by contact.
    pub async fn list_page(&self, page_token: Option<&str>) -> Result<ContactList, QuoError> {
        self.contacts_page(Some(&self.source), page_token).await
    }

    /// One page of every contact in the workspace, whatever its source (the day-one listing).
    pub async fn list_workspace_page(
        &self,
        page_token: Option<&str>,
    ) -> Result<ContactList, QuoError> {
        self.contacts_page(None, page_token).await
    }

    /// One page of `GET /v1/contacts` (50 a page), of one source or of all.
    async fn contacts_page(
        &self,
        source: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<ContactList, QuoError> {
        // Our source first, as Quo's examples order them.
        let mut query: Vec<(&str, String)> = source
            .map(|source| ("sources", source.to_string()))
            .into_iter()
            .collect();
        query.push(("maxResults", MAX_PAGE.to_string()));
        if let Some(t) = page_token {
            query.push(("pageToken", t.to_string()));
        }
        let raw: RawContactPage = self
            .call_idempotent(
                "GET /v1/contacts",
                Method::GET,
                "/v1/contacts",
                &query,
                None::<&()>,
            )
            .await?;
        Ok(raw.into())
    }

    /// Every contact with our source, page by page; a repeated page token is an error.
    pub async fn list_all(&self) -> Result<ContactList, QuoError> {
        let mut all = ContactList::default();
        let mut tokens = PageTokens::default();
        let mut token: Option<String> = None;
        loop {
            let page = self.list_page(token.as_deref()).await?;
            all.contacts.extend(page.contacts);
            all.undecodable.extend(page.undecodable);
            match page.next_page_token {
                Some(next) => {
                    tokens.next("GET /v1/contacts", &next)?;
                    token = Some(next);
                }
                None => return Ok(all),
            }
        }
    }

    /// `POST /v1/contacts`, never creating a duplicate: a 409 or an unknown outcome is resolved
    /// by a lookup by external id, and a found contact is adopted instead of created again.
    ///
    /// `journal` is told before each POST is sent ([`PostJournal::sending`]) and at the moment
    /// each one's outcome becomes unknown ([`PostJournal::may_have_landed`]: a 5xx, a timeout, a
    /// reset), before any lookup or resend: a POST that may have made a contact is on record
    /// whatever happens next (retries running out, a later timeout, the lookup adopting an
    /// older contact, the process dying).
    pub async fn create_contact<J: PostJournal>(
        &self,
        body: &CreateContact,
        journal: &J,
    ) -> Result<CreateOutcome, CreateError<J::Error>> {
        let route = "POST /v1/contacts";
        let mut retries = 0u32;
        loop {
            journal.sending().await.map_err(CreateError::Journal)?;
            // `resend`: whether nothing listed after the wait makes a second POST safe enough.
            let (last, wait_hint, limited, look_first, resend) = match self
                .attempt(route, Method::POST, "/v1/contacts", &[], Some(body))
                .await
            {
                Ok((status, bytes)) if status.is_success() => {
                    let envelope: DataEnvelope<Contact> = decode(route, &bytes)?;
                    return Ok(CreateOutcome {
                        contact: envelope.data,
                        adopted: false,
                    });
                }
                // Quo says it exists: look now (no wait needed for a definite answer). A 409
                // made nothing, so a second POST after it leaves no contact unaccounted for.
                Ok((StatusCode::CONFLICT, _)) => {
                    let found = self.lookup_after_post(route, &body.external_id).await?;
                    if let Some(contact) = found {
                        return Ok(CreateOutcome {
                            contact,
                            adopted: true,
                        });
                    }
                    let text = format!(
                        "409 on create, yet no contact with externalId {:?} is listed",
                        body.external_id
                    );
                    (text, None, false, true, true)
                }
                // Refused, so this POST made nothing (an earlier one of this call that may have
                // is on record already).
                Ok((status, bytes)) => return Err(rejected(status, &bytes).into()),
                // Never reached Quo, or refused by the rate limit before any work: plain retry.
                Err(AttemptError::Fenced) => return Err(QuoError::Fenced { route }.into()),
                Err(AttemptError::NotSent(text)) => (text, None, false, false, false),
                Err(AttemptError::Retryable {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    retry_after,
                    text,
                }) => (text, retry_after, true, false, false),
                // A 5xx usually applied nothing, but may have: on record, then look, and send
                // again if nothing is listed.
                Err(AttemptError::Retryable {
                    retry_after, text, ..
                }) => {
                    journal
                        .may_have_landed()
                        .await
                        .map_err(CreateError::Journal)?;
                    (text, retry_after, false, true, true)
                }
                // The write may have landed, and a list may lag the write: on record, wait,
                // look, and never send again in this call.
                Err(AttemptError::Ambiguous(text)) => {
                    journal
                        .may_have_landed()
                        .await
                        .map_err(CreateError::Journal)?;
                    (text, None, false, true, false)
                }
            };
            retries = self
                .before_retry(route, retries, last, wait_hint, limited)
                .await?;
            if look_first {
                if let Some(contact) = self.lookup_after_post(route, &body.external_id).await? {
                    return Ok(CreateOutcome {
                        contact,
                        adopted: true,
                    });
                }
                if !resend {
                    // Our POST may have landed and a list may lag it: sending again now could
                    // make a duplicate that no lookup can undo. The intent stays pending; the
                    // next cycle looks again before any POST.
                    return Err(QuoError::Ambiguous {
                        route,
                        reason: "the create's outcome is unknown and the contact is not listed yet; resolved by lookup next cycle".into(),
                    }
                    .into());
                }
            }
        }
    }

    /// `lookup_for_adoption` after a POST whose outcome is not known: a refused lookup leaves
    /// the outcome unknown (`Ambiguous`), so `Rejected` from `create_contact` always means the
    /// POST itself was refused.
    async fn lookup_after_post(
        &self,
        route: &'static str,
        external_id: &str,
    ) -> Result<Option<Contact>, QuoError> {
        self.lookup_for_adoption(external_id)
            .await
            .map_err(|e| match e {
                QuoError::Rejected { .. } => QuoError::Ambiguous {
                    route,
                    reason: format!("the lookup after the POST was refused: {e}"),
                },
                other => other,
            })
    }

    async fn lookup_for_adoption(&self, external_id: &str) -> Result<Option<Contact>, QuoError> {
        let found = self.find_by_external_id(external_id).await?;
        if found.is_empty() {
            return Ok(None);
        }
        self.stats.adopted.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("quo_sync_creates_adopted_total").increment(1);
        if found.len() > 1 {
            tracing::warn!(
                external_id,
                count = found.len(),
                "Quo holds several contacts with this externalId; adopting the oldest"
            );
        }
        Ok(found.into_iter().next())
    }

    /// Sleeps before retry number `retries + 1`, or gives up.
    pub(super) async fn before_retry(
        &self,
        route: &'static str,
        retries: u32,
        last: String,
        retry_after: Option<Duration>,
        rate_limited: bool,
    ) -> Result<u32, QuoError> {
        if !self.retry.may_retry(retries) {
            return Err(QuoError::Exhausted {
                route,
                attempts: retries + 1,
                last,
            });
        }
        let retry = retries + 1;
        let wait = self.retry.backoff(retry, retry_after);
        if rate_limited {
            // Quo counts per key: every worker waits, not only this one.
            self.limiter.pause_for(wait);
        }
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("quo_sync_quo_retries_total", "route" => route).increment(1);
        tracing::debug!(route, retry, wait_ms = wait.as_millis() as u64, reason = %last, "retrying Quo request");
        tokio::time::sleep(wait).await;
        Ok(retry)
    }

    /// An idempotent call: retried on every retryable failure.
    pub(super) async fn call_idempotent<T: DeserializeOwned, B: serde::Serialize + ?Sized>(
        &self,
        route: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, QuoError> {
        let mut retries = 0u32;
        loop {
            let (last, wait_hint, limited) =
                match self.attempt(route, method.clone(), path, query, body).await {
                    Ok((status, bytes)) if status.is_success() => {
                        if bytes.is_empty() {
                            return decode(route, b"null");
                        }
                        return decode(route, &bytes);
                    }
                    Ok((status, bytes)) => return Err(rejected(status, &bytes)),
                    Err(AttemptError::Fenced) => return Err(QuoError::Fenced { route }),
                    Err(AttemptError::NotSent(text)) | Err(AttemptError::Ambiguous(text)) => {
                        (text, None, false)
                    }
                    Err(AttemptError::Retryable {
                        status,
                        retry_after,
                        text,
                    }) => (text, retry_after, status == StatusCode::TOO_MANY_REQUESTS),
                };
            retries = self
                .before_retry(route, retries, last, wait_hint, limited)
                .await?;
        }
    }

    /// One attempt: a limiter permit, then the request. `Ok` carries a final (non-retryable)
    /// status with its body; retryable outcomes come back as `AttemptError`.
    pub(super) async fn attempt<B: serde::Serialize + ?Sized>(
        &self,
        route: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<(StatusCode, bytes::Bytes), AttemptError> {
        if self.background {
            self.limiter.acquire_background().await;
        } else {
            self.limiter.acquire().await;
        }
        let timeout = match &self.fence {
            Some(fence) if method != Method::GET => fence
                .admit(self.timeout)
                .await
                .ok_or(AttemptError::Fenced)?,
            _ => self.timeout,
        };
        let mut request = self
            .http
            .request(method, format!("{}{}", self.base_url, path))
            .header(reqwest::header::AUTHORIZATION, self.api_key.expose_secret())
            .query(query)
            .timeout(timeout);
        if let Some(version) = self.api_version {
            request = request.header("Quo-Api-Version", version);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let status = if e.is_timeout() { "timeout" } else { "error" };
                metrics::counter!("quo_sync_quo_requests_total", "route" => route, "status" => status).increment(1);
                let text = describe_reqwest_error(&e);
                return Err(if e.is_connect() {
                    AttemptError::NotSent(text)
                } else {
                    AttemptError::Ambiguous(text)
                });
            }
        };
        let status = response.status();
        metrics::counter!("quo_sync_quo_requests_total", "route" => route, "status" => status.as_u16().to_string())
            .increment(1);
        let wait = retry_after(response.headers());
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return Err(AttemptError::Ambiguous(describe_reqwest_error(&e))),
        };
        if matches!(status.as_u16(), 401 | 403 | 404) {
            self.stats.refusals.fetch_add(1, Ordering::AcqRel);
        }
        if status.is_success()
            && let Some(auth) = &self.auth
        {
            auth.accepted();
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("quo_sync_quo_rate_limited_total").increment(1);
        }
        if is_retryable_status(status) {
            let text = format!("{} {}", status.as_u16(), error_summary(&bytes));
            return Err(AttemptError::Retryable {
                status,
                retry_after: wait,
                text,
            });
        }
        // A final answer; `rejected` turns 401 into `Unauthorized`.
        Ok((status, bytes))
    }
}

pub(super) fn decode<T: DeserializeOwned>(
    route: &'static str,
    bytes: &[u8],
) -> Result<T, QuoError> {
    serde_json::from_slice(bytes).map_err(|e| QuoError::Decode {
        route,
        reason: e.to_string(),
    })
}

pub(super) fn rejected(status: StatusCode, bytes: &[u8]) -> QuoError {
    let body: ErrorBody = serde_json::from_slice(bytes).unwrap_or_else(|_| ErrorBody {
        message: String::from_utf8_lossy(bytes).chars().take(300).collect(),
        status: status.as_u16(),
        ..ErrorBody::default()
    });
    if status == StatusCode::UNAUTHORIZED {
        return QuoError::Unauthorized { code: body.code };
    }
    QuoError::Rejected {
        status: status.as_u16(),
        title: body.title.clone(),
        message: body.message.clone(),
        body: Box::new(body),
    }
}

fn error_summary(bytes: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) if !body.message.is_empty() => body.message,
        _ => String::from_utf8_lossy(bytes).chars().take(200).collect(),
    }
}

/// A reqwest error without the URL's query (never holds secrets here, but keep lines short).
fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_request() || error.is_body() {
        "connection lost"
    } else {
        "request failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(err) = source {
        detail = err.to_string();
        source = err.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}
