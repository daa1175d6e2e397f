//! OAuth2 access tokens for the REST source (`[source.rest.auth] kind = "oauth2"`): the
//! `client_credentials` and `refresh_token` grants (RFC 6749 §4.4, §6), the token cached and
//! refreshed shortly before it expires and once when the CRM answers 401, and the API base taken
//! from the token answer where the vendor names it there (Salesforce `instance_url`, Zoho
//! `api_domain`).
//!
//! A refresh token is shared by every process on the ledger (see [`shared`]): it is read from
//! the ledger at each refresh, spent by one process at a time, and a rotated one is stored
//! before it is used. The token endpoint's answers are classified in [`answer`]: a refusal
//! (exit 2) only when the vendor says the credentials are wrong, a retry when it says "later".
//!
//! Why not the `oauth2` crate: its 5.x reqwest integration is built on reqwest 0.12, so using it
//! here (reqwest 0.13) means a second HTTP stack, or an adapter closure around our own client;
//! either way the parts quo-sync needs beyond the grant itself (retries with backoff through
//! the project's `RetryPolicy`, vendor fields such as `instance_url`, refresh tokens shared
//! through the ledger, secret-free errors) would still be ours. The grant is one form POST, so
//! it is implemented here.
//!
//! The rotated refresh token is stored in the ledger in plain text, next to a SHA-256
//! fingerprint of the configured token (a changed configured token wins over an old rotated
//! one). It is not encrypted: a refresh token for a confidential client is useless without the
//! client secret, which is not in the ledger, and a key derived from that secret would not
//! protect the ledger from anyone who can also read the configuration. Keep the ledger file
//! private (mode 0600), as it already holds the CRM's contact data.

mod answer;
mod shared;

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use backon::Retryable;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;

use super::auth::resolve_secret;
use super::config::{
    AuthConfig, AuthKind, OAuthGrant, OAuthStyle, RestConfigError, RestSourceConfig,
    insecure_transport,
};
use super::http::{error_chain, retry_after_capped};
use crate::ledger::Ledger;
use crate::quo::retry::RetryPolicy;
use crate::source::SourceError;
use answer::Verdict;

/// The longest safety margin before `expires_in` at which the token is refreshed.
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// An OAuth2 client for one token endpoint, with its cached token.
pub(super) struct OAuth {
    grant: OAuthGrant,
    token_url: Url,
    /// `token_url` as logs and errors show it: no query (Zoho's documentation puts the refresh
    /// token and client secret there), no user info.
    token_url_shown: String,
    client_id: String,
    client_secret: SecretString,
    configured_refresh: Option<SecretString>,
    scope: Option<String>,
    audience: Option<String>,
    style: OAuthStyle,
    base_url_pointer: Option<String>,
    allow_insecure_http: bool,
    scheme: String,
    http: reqwest::Client,
    timeout: Duration,
    retry: RetryPolicy,
    state: tokio::sync::Mutex<TokenState>,
    instance_base: std::sync::RwLock<Option<Url>>,
    ledger: OnceLock<Ledger>,
    /// This client's name in the ledger's claims on the shared refresh token.
    claimant: String,
    fetched: AtomicU64,
}

#[derive(Default)]
struct TokenState {
    access: Option<SecretString>,
    refresh_at: Option<Instant>,
    /// The latest refresh token, for a client without a ledger (it cannot be shared then).
    refresh: Option<SecretString>,
}

impl fmt::Debug for OAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "oauth2({:?}, client_id {}, token_url {}, secrets [REDACTED])",
            self.grant, self.client_id, self.token_url_shown
        )
    }
}

/// A URL as logs and errors may show a token endpoint: scheme, host, port and path; the query
/// and any user info replaced by `REDACTED`.
pub(super) fn shown_token_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_fragment(None);
    if !shown.username().is_empty() || shown.password().is_some() {
        shown.set_password(None).ok();
        shown.set_username("REDACTED").ok();
    }
    if shown.query().is_some() {
        shown.set_query(Some("REDACTED"));
    }
    shown.to_string()
}

/// How one attempt at the token endpoint failed.
enum Attempt {
    /// Worth retrying after a pause (`wait_hint`: the endpoint's `Retry-After`).
    Transient {
        problem: String,
        wait_hint: Option<Duration>,
    },
    /// Not retried.
    Final(GrantFailure),
}

/// How one token request ended, before it becomes a [`SourceError`].
enum GrantFailure {
    /// The endpoint refused the credentials (`code` is the OAuth2 error code, if any).
    Refused { code: String, error: SourceError },
    /// Before a retry, the claim on the shared refresh token had passed to another process:
    /// nothing was sent, the token must be read again.
    ClaimLost,
    /// Anything else: retries ran out, an unreadable answer, a ledger failure.
    Failed(SourceError),
}

impl From<GrantFailure> for SourceError {
    fn from(failure: GrantFailure) -> Self {
        match failure {
            GrantFailure::Refused { error, .. } | GrantFailure::Failed(error) => error,
            GrantFailure::ClaimLost => SourceError::Crm(
                "the CRM refresh token was claimed by another process; try again".into(),
            ),
        }
    }
}

impl OAuth {
    /// Resolves secrets (config, env or file) and builds the client; no network.
    pub(super) fn resolve(
        config: &AuthConfig,
        timeout: Duration,
        retry: RetryPolicy,
        allow_insecure_http: bool,
    ) -> Result<Self, RestConfigError> {
        let missing = |key: &str| RestConfigError::new(key, "required when auth.kind = \"oauth2\"");
        let grant = config.grant.ok_or_else(|| missing("auth.grant"))?;
        let token_url = config
            .token_url
            .as_deref()
            .ok_or_else(|| missing("auth.token_url"))?;
        let token_url = Url::parse(token_url)
            .map_err(|e| RestConfigError::new("auth.token_url", e.to_string()))?;
        let client_id = config
            .client_id
            .clone()
            .ok_or_else(|| missing("auth.client_id"))?;
        let client_secret = resolve_secret(
            "client_secret",
            &config.client_secret,
            &config.client_secret_env,
            &config.client_secret_file,
        )?;
        let configured_refresh = match grant {
            OAuthGrant::RefreshToken => Some(resolve_secret(
                "refresh_token",
                &config.refresh_token,
                &config.refresh_token_env,
                &config.refresh_token_file,
            )?),
            OAuthGrant::ClientCredentials => None,
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("quo-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RestConfigError::new("auth.token_url", e.to_string()))?;
        Ok(Self {
            grant,
            token_url_shown: shown_token_url(&token_url),
            token_url,
            client_id,
            client_secret,
            configured_refresh,
            scope: config.scope.clone(),
            audience: config.audience.clone(),
            style: config.auth_style.unwrap_or_default(),
            base_url_pointer: config.base_url_pointer.clone(),
            allow_insecure_http,
            scheme: config
                .header_scheme
                .clone()
                .unwrap_or_else(|| "Bearer".into()),
            http,
            timeout,
            retry,
            state: tokio::sync::Mutex::default(),
            instance_base: std::sync::RwLock::default(),
            ledger: OnceLock::new(),
            claimant: uuid::Uuid::new_v4().to_string(),
            fetched: AtomicU64::new(0),
        })
    }

    /// Lets the client share its refresh token with the other processes on the ledger.
    pub(super) fn attach_ledger(&self, ledger: Ledger) {
        let _ = self.ledger.set(ledger);
    }

    /// The API base named by the token answer (`base_url_pointer`), once a token was fetched.
    pub(super) fn instance_base(&self) -> Option<Url> {
        self.instance_base.read().ok().and_then(|b| b.clone())
    }

    /// Whether the API base comes from the token answer.
    pub(super) fn wants_instance_base(&self) -> bool {
        self.base_url_pointer.is_some()
    }

    /// Tokens fetched from the token endpoint by this process (tests, metrics).
    pub(super) fn tokens_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// The `Authorization` header value for the current token, fetching one if none is cached
    /// or it expires within the margin.
    pub(super) async fn authorization(&self) -> Result<(HeaderValue, SecretString), SourceError> {
        let mut state = self.state.lock().await;
        let fresh = state.refresh_at.is_none_or(|at| Instant::now() < at);
        let token = match &state.access {
            Some(token) if fresh => token.clone(),
            _ => self.fetch(&mut state).await?,
        };
        let mut value =
            HeaderValue::from_str(&format!("{} {}", self.scheme, token.expose_secret())).map_err(
                |_| SourceError::Crm("the access token is not a valid header value".into()),
            )?;
        value.set_sensitive(true);
        Ok((value, token))
    }

    /// Forgets `used` after the CRM answered 401 to it, so the next request fetches a new one
    /// (a token already replaced by a concurrent request is left alone).
    pub(super) async fn invalidate(&self, used: &SecretString) {
        let mut state = self.state.lock().await;
        if state
            .access
            .as_ref()
            .is_some_and(|t| t.expose_secret() == used.expose_secret())
        {
            state.access = None;
        }
    }

    async fn fetch(&self, state: &mut TokenState) -> Result<SecretString, SourceError> {
        let answer = match (self.grant, self.ledger.get()) {
            (OAuthGrant::ClientCredentials, _) => self.request(None, None).await?,
            (OAuthGrant::RefreshToken, Some(ledger)) => self.refresh_shared(ledger).await?,
            (OAuthGrant::RefreshToken, None) => self.refresh_alone(state).await?,
        };
        let access = answer
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.failed("the token answer has no access_token"))?;
        let access = SecretString::from(access.to_string());
        let expires_in = answer.get("expires_in").and_then(|v| match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
        state.refresh_at = expires_in.filter(|s| s.is_finite() && *s > 0.0).map(|s| {
            let lifetime = Duration::from_secs_f64(s.min(1e9));
            Instant::now() + lifetime - (lifetime / 4).min(MAX_MARGIN)
        });
        if let Some(pointer) = &self.base_url_pointer {
            let base = self.instance_base_from(&answer, pointer)?;
            if let Ok(mut slot) = self.instance_base.write() {
                *slot = Some(base);
            }
        }
        state.access = Some(access.clone());
        self.fetched.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            event = "crm_token_refreshed",
            expires_in_s = expires_in.map(|s| s as u64),
            "fetched a CRM access token"
        );
        Ok(access)
    }

    /// The API base the token answer names at `pointer`: an http(s) URL, and not plain http to
    /// a host beyond loopback unless `allow_insecure_http` (the access token would travel in
    /// clear text to wherever the answer points).
    fn instance_base_from(&self, answer: &Value, pointer: &str) -> Result<Url, SourceError> {
        let base = answer
            .pointer(pointer)
            .and_then(Value::as_str)
            .and_then(|b| Url::parse(b.trim_end_matches('/')).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                self.failed(&format!(
                    "the token answer has no http(s) URL at {pointer:?} (auth.base_url_pointer)"
                ))
            })?;
        if insecure_transport(&base) && !self.allow_insecure_http {
            let shown = super::http::redact_url(&base, None);
            let shown = shown.trim_end_matches('/');
            tracing::error!(event = "crm_insecure_base_refused", base = %shown, "the token answer names a plain-http API base beyond loopback; no credentials are sent there");
            return Err(SourceError::Crm(format!(
                "the token answer names {shown} as the API base (auth.base_url_pointer): refusing to send credentials over plain http beyond loopback; use https, or set source.rest.allow_insecure_http = true"
            )));
        }
        Ok(base)
    }

    /// The `refresh_token` grant for a client without a ledger: the token is this process's
    /// alone (a rotated one lasts until the process ends).
    async fn refresh_alone(&self, state: &mut TokenState) -> Result<Value, SourceError> {
        let refresh = state
            .refresh
            .clone()
            .or_else(|| self.configured_refresh.clone());
        let answer = self.request(refresh.as_ref(), None).await?;
        if let Some(rotated) = rotated_refresh(&answer, refresh.as_ref()) {
            tracing::warn!(
                event = "crm_refresh_token_not_kept",
                "the CRM rotated its refresh token but no ledger is attached; a restart uses the configured one"
            );
            state.refresh = Some(rotated);
        }
        Ok(answer)
    }

    /// The token request's form body (holds secrets).
    fn form(&self, refresh: Option<&SecretString>) -> SecretString {
        let mut form = form_urlencoded::Serializer::new(String::new());
        match self.grant {
            OAuthGrant::ClientCredentials => {
                form.append_pair("grant_type", "client_credentials");
            }
            OAuthGrant::RefreshToken => {
                form.append_pair("grant_type", "refresh_token");
                if let Some(refresh) = refresh {
                    form.append_pair("refresh_token", refresh.expose_secret());
                }
            }
        }
        if self.style == OAuthStyle::Body {
            form.append_pair("client_id", &self.client_id);
            form.append_pair("client_secret", self.client_secret.expose_secret());
        }
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        if let Some(audience) = &self.audience {
            form.append_pair("audience", audience);
        }
        SecretString::from(form.finish())
    }

    /// One token request, retried (by `backon`, with the source's `RetryPolicy`; a
    /// `Retry-After` takes a delay's place) for transport failures and the answers [`answer`]
    /// calls transient. With a `claim` on the shared refresh token, the claim is renewed before
    /// each retry, and a claim lost to another process ends the request before anything is sent.
    async fn request(
        &self,
        refresh: Option<&SecretString>,
        claim: Option<&shared::Claim<'_>>,
    ) -> Result<Value, GrantFailure> {
        let body = self.form(refresh);
        let attempts = AtomicU32::new(0);
        let outcome = (|| self.grant_attempt(&body, claim, &attempts))
            .retry(self.retry)
            .when(|failure| matches!(failure, Attempt::Transient { .. }))
            .adjust(|failure, delay| match failure {
                Attempt::Transient {
                    wait_hint: Some(hint),
                    ..
                } => delay.map(|_| *hint),
                _ => delay,
            })
            .notify(|failure, wait| {
                if let Attempt::Transient { problem, .. } = failure {
                    let retry = attempts.load(Ordering::Relaxed);
                    tracing::warn!(event = "crm_auth_failed", token_url = %self.token_url_shown, error = %problem, retry, wait_ms = wait.as_millis() as u64, "CRM token request failed; retrying");
                }
            })
            .await;
        match outcome {
            Ok(answer) => Ok(answer),
            Err(Attempt::Final(failure)) => Err(failure),
            Err(Attempt::Transient { problem, .. }) => {
                let retries = attempts.load(Ordering::Relaxed).saturating_sub(1);
                Err(GrantFailure::Failed(
                    self.failed(&format!("{problem} (after {retries} retries)")),
                ))
            }
        }
    }

    /// One POST to the token endpoint (after renewing the claim, from the second on).
    async fn grant_attempt(
        &self,
        body: &SecretString,
        claim: Option<&shared::Claim<'_>>,
        attempts: &AtomicU32,
    ) -> Result<Value, Attempt> {
        if attempts.fetch_add(1, Ordering::Relaxed) > 0
            && let Some(claim) = claim
        {
            claim.renew(self).await.map_err(Attempt::Final)?;
        }
        let mut request = self
            .http
            .post(self.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body.expose_secret().to_string());
        if self.style == OAuthStyle::Basic {
            let encode =
                |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request = request.basic_auth(
                encode(&self.client_id),
                Some(encode(self.client_secret.expose_secret())),
            );
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return Err(Attempt::Transient {
                    problem: error_chain(&e.without_url()),
                    wait_hint: None,
                });
            }
        };
        let status = response.status();
        let wait_hint = retry_after_capped(response.headers(), self.retry.cap);
        let bytes = response.bytes().await.unwrap_or_default();
        match answer::classify(status, &bytes) {
            Verdict::Token(json) => Ok(json),
            Verdict::Refused { code, shown } => {
                tracing::error!(event = "crm_auth_failed", token_url = %self.token_url_shown, error = %shown, "the CRM's token endpoint refused the credentials");
                Err(Attempt::Final(GrantFailure::Refused {
                    code,
                    error: SourceError::CredentialsRefused {
                        url: self.token_url_shown.clone(),
                        error: shown,
                    },
                }))
            }
            Verdict::Failed(shown) => {
                Err(Attempt::Final(GrantFailure::Failed(self.failed(&shown))))
            }
            Verdict::Transient(problem) => Err(Attempt::Transient { problem, wait_hint }),
        }
    }

    fn failed(&self, reason: &str) -> SourceError {
        tracing::error!(event = "crm_auth_failed", token_url = %self.token_url_shown, error = %reason, "cannot get a CRM access token");
        SourceError::Crm(format!(
            "token request to {} failed: {reason}",
            self.token_url_shown
        ))
    }
}

/// The refresh token a token answer rotated to, when it names one other than `sent`.
fn rotated_refresh(answer: &Value, sent: Option<&SecretString>) -> Option<SecretString> {
    answer
        .get("refresh_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .filter(|t| sent.is_none_or(|s| s.expose_secret() != *t))
        .map(|t| SecretString::from(t.to_string()))
}

/// OAuth2's part of `[source.rest]` validation (run by `check-config` and at start-up).
impl RestSourceConfig {
    /// The shape of `[source.rest.auth]` for `kind = "oauth2"` (secrets are resolved later,
    /// when the source is built, so `check-config` needs no environment).
    pub(super) fn validate_oauth(
        &self,
        pointer: &dyn Fn(&str, &str, bool) -> Result<(), RestConfigError>,
    ) -> Result<(), RestConfigError> {
        let auth = &self.auth;
        if auth.kind != AuthKind::OAuth2 {
            if let Some(key) = auth.oauth_keys_set().first() {
                return Err(RestConfigError::new(
                    format!("auth.{key}"),
                    "only used with auth.kind = \"oauth2\"",
                ));
            }
            return Ok(());
        }
        for (key, set) in [
            (
                "token",
                auth.token.is_some() || auth.token_env.is_some() || auth.token_file.is_some(),
            ),
            ("username", auth.username.is_some()),
            (
                "password",
                auth.password.is_some()
                    || auth.password_env.is_some()
                    || auth.password_file.is_some(),
            ),
            ("header_name", auth.header_name.is_some()),
            ("param_name", auth.param_name.is_some()),
        ] {
            if set {
                return Err(RestConfigError::new(
                    format!("auth.{key}"),
                    "not used with auth.kind = \"oauth2\"",
                ));
            }
        }
        let grant = auth.grant.ok_or_else(|| {
            RestConfigError::new(
                "auth.grant",
                "required when auth.kind = \"oauth2\": \"client_credentials\" or \"refresh_token\"",
            )
        })?;
        let token_url = auth.token_url.as_deref().ok_or_else(|| {
            RestConfigError::new("auth.token_url", "required when auth.kind = \"oauth2\"")
        })?;
        match Url::parse(token_url) {
            Ok(url) if insecure_transport(&url) && !self.allow_insecure_http => {
                return Err(RestConfigError::new(
                    "auth.token_url",
                    format!(
                        "{} sends the client secret and refresh token over plain http to a host beyond loopback; use https, or set source.rest.allow_insecure_http = true",
                        shown_token_url(&url)
                    ),
                ));
            }
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => {
                return Err(RestConfigError::new(
                    "auth.token_url",
                    "expected an http(s) URL (the value is not shown: it may hold secrets)",
                ));
            }
        }
        if auth
            .client_id
            .as_deref()
            .is_none_or(|id| id.trim().is_empty())
        {
            return Err(RestConfigError::new(
                "auth.client_id",
                "required when auth.kind = \"oauth2\"",
            ));
        }
        let count = |a: bool, b: bool, c: bool| usize::from(a) + usize::from(b) + usize::from(c);
        if count(
            auth.client_secret.is_some(),
            auth.client_secret_env.is_some(),
            auth.client_secret_file.is_some(),
        ) != 1
        {
            return Err(RestConfigError::new(
                "auth.client_secret",
                "set exactly one of auth.client_secret, auth.client_secret_env, auth.client_secret_file",
            ));
        }
        let refresh = count(
            auth.refresh_token.is_some(),
            auth.refresh_token_env.is_some(),
            auth.refresh_token_file.is_some(),
        );
        match grant {
            OAuthGrant::RefreshToken if refresh != 1 => {
                return Err(RestConfigError::new(
                    "auth.refresh_token",
                    "grant = \"refresh_token\" needs exactly one of auth.refresh_token, auth.refresh_token_env, auth.refresh_token_file",
                ));
            }
            OAuthGrant::ClientCredentials if refresh != 0 => {
                return Err(RestConfigError::new(
                    "auth.refresh_token",
                    "not used with grant = \"client_credentials\"",
                ));
            }
            _ => {}
        }
        if let Some(p) = &auth.base_url_pointer {
            pointer("auth.base_url_pointer", p, false)?;
        }
        if let Some(scheme) = &auth.header_scheme
            && (scheme.trim().is_empty() || scheme.contains(char::is_whitespace))
        {
            return Err(RestConfigError::new(
                "auth.header_scheme",
                format!("expected one word such as \"Bearer\", got {scheme:?}"),
            ));
        }
        Ok(())
    }
}
