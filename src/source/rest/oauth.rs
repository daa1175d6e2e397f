//! OAuth2 access tokens for the REST source (`[source.rest.auth] kind = "oauth2"`): the
//! `client_credentials` and `refresh_token` grants (RFC 6749 §4.4, §6), the token cached and
//! refreshed shortly before it expires and once when the CRM answers 401, a rotated refresh
//! token kept in the ledger so a restart keeps working, and the API base taken from the token
//! answer where the vendor names it there (Salesforce `instance_url`, Zoho `api_domain`).
//!
//! Why not the `oauth2` crate: its 5.x reqwest integration is built on reqwest 0.12, so using it
//! here (reqwest 0.13) means a second HTTP stack, or an adapter closure around our own client;
//! either way the parts quo-sync needs beyond the grant itself (retries with backoff through
//! the project's `RetryPolicy`, vendor fields such as `instance_url`, refresh-token rotation into
//! the ledger, secret-free errors) would still be ours. The grant is one form POST, so it is
//! implemented here.
//!
//! The rotated refresh token is stored in the ledger's `meta` table in plain text, next to a
//! SHA-256 fingerprint of the configured token (a changed configured token wins over an old
//! rotated one). It is not encrypted: a refresh token for a confidential client is useless
//! without the client secret, which is not in the ledger, and a key derived from that secret
//! would not protect the ledger from anyone who can also read the configuration. Keep the
//! ledger file private (mode 0600), as it already holds the CRM's contact data.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use backon::Retryable;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::auth::resolve_secret;
use super::config::{
    AuthConfig, AuthKind, OAuthGrant, OAuthStyle, RestConfigError, RestSourceConfig,
};
use super::http::error_chain;
use crate::ledger::Ledger;
use crate::quo::retry::{self, RetryPolicy};
use crate::source::SourceError;

/// Ledger `meta` key of the rotated refresh token.
const REFRESH_META_KEY: &str = "source.rest.oauth.refresh_token";

/// The longest safety margin before `expires_in` at which the token is refreshed.
const MAX_MARGIN: Duration = Duration::from_secs(60);

/// Token endpoint error codes that mean "these credentials are refused" (RFC 6749 §5.2): not
/// retried, and `once` exits 2 because an operator must fix them.
const REFUSALS: [&str; 5] = [
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
];

/// An OAuth2 client for one token endpoint, with its cached token.
pub(super) struct OAuth {
    grant: OAuthGrant,
    token_url: Url,
    client_id: String,
    client_secret: SecretString,
    configured_refresh: Option<SecretString>,
    scope: Option<String>,
    audience: Option<String>,
    style: OAuthStyle,
    base_url_pointer: Option<String>,
    scheme: String,
    http: reqwest::Client,
    retry: RetryPolicy,
    state: tokio::sync::Mutex<TokenState>,
    instance_base: std::sync::RwLock<Option<Url>>,
    ledger: OnceLock<Ledger>,
    fetched: AtomicU64,
}

#[derive(Default)]
struct TokenState {
    access: Option<SecretString>,
    refresh_at: Option<Instant>,
    refresh: Option<SecretString>,
    ledger_checked: bool,
}

impl fmt::Debug for OAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "oauth2({:?}, client_id {}, token_url {}, secrets [REDACTED])",
            self.grant, self.client_id, self.token_url
        )
    }
}

impl OAuth {
    /// Resolves secrets (config, env or file) and builds the client; no network.
    pub(super) fn resolve(
        config: &AuthConfig,
        timeout: Duration,
        retry: RetryPolicy,
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
            token_url,
            client_id,
            client_secret,
            configured_refresh,
            scope: config.scope.clone(),
            audience: config.audience.clone(),
            style: config.auth_style.unwrap_or_default(),
            base_url_pointer: config.base_url_pointer.clone(),
            scheme: config
                .header_scheme
                .clone()
                .unwrap_or_else(|| "Bearer".into()),
            http,
            retry,
            state: tokio::sync::Mutex::default(),
            instance_base: std::sync::RwLock::default(),
            ledger: OnceLock::new(),
            fetched: AtomicU64::new(0),
        })
    }

    /// Lets the client keep a rotated refresh token in (and read it back from) the ledger.
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
        if !state.ledger_checked {
            state.ledger_checked = true;
            state.refresh = self.stored_refresh().await;
            if state.refresh.is_some() {
                tracing::info!(
                    event = "crm_refresh_token_restored",
                    "using the rotated CRM refresh token kept in the ledger"
                );
            }
        }
        let refresh = state
            .refresh
            .clone()
            .or_else(|| self.configured_refresh.clone());
        let answer = self.request(refresh.as_ref()).await?;
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
            if let Ok(mut slot) = self.instance_base.write() {
                *slot = Some(base);
            }
        }
        if let Some(rotated) = answer
            .get("refresh_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            && refresh
                .as_ref()
                .is_none_or(|r| r.expose_secret() != rotated)
            && self.grant == OAuthGrant::RefreshToken
        {
            let rotated = SecretString::from(rotated.to_string());
            self.store_refresh(&rotated).await;
            state.refresh = Some(rotated);
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

    /// One token request with retries for 429, 5xx and transport failures (run by `backon` with
    /// the source's `RetryPolicy`).
    async fn request(&self, refresh: Option<&SecretString>) -> Result<Value, SourceError> {
        let body = self.form(refresh);
        let retries = AtomicU32::new(0);
        let outcome = (|| self.token_attempt(&body))
            .retry(self.retry)
            .when(|failure| matches!(failure, TokenFailure::Transient(_)))
            .notify(|failure, wait| {
                let retry = retries.fetch_add(1, Ordering::Relaxed) + 1;
                if let TokenFailure::Transient(problem) = failure {
                    tracing::warn!(event = "crm_auth_failed", token_url = %self.token_url, error = %problem, retry, wait_ms = wait.as_millis() as u64, "CRM token request failed; retrying");
                }
            })
            .await;
        match outcome {
            Ok(token) => Ok(token),
            Err(TokenFailure::Final(e)) => Err(e),
            Err(TokenFailure::Transient(problem)) => {
                let retries = retries.load(Ordering::Relaxed);
                Err(self.failed(&format!("{problem} (after {retries} retries)")))
            }
        }
    }

    /// One POST to the token endpoint.
    async fn token_attempt(&self, body: &SecretString) -> Result<Value, TokenFailure> {
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
            Err(e) => return Err(TokenFailure::Transient(error_chain(&e.without_url()))),
        };
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        let code = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // Some vendors (Zoho) answer refusals with 200 and an `error` field.
        if status.is_success() && code.is_empty() {
            return json.filter(Value::is_object).ok_or_else(|| {
                TokenFailure::Final(self.failed(&format!(
                    "HTTP {}: the token answer is not a JSON object",
                    status.as_u16()
                )))
            });
        }
        let refused = REFUSALS.contains(&code.as_str())
            || matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
            || ((status == StatusCode::BAD_REQUEST || status.is_success()) && !code.is_empty());
        if refused {
            let error = if code.is_empty() {
                format!("HTTP {}", status.as_u16())
            } else {
                format!("HTTP {}: {code}", status.as_u16())
            };
            tracing::error!(event = "crm_auth_failed", token_url = %self.token_url, error = %error, "the CRM's token endpoint refused the credentials");
            return Err(TokenFailure::Final(SourceError::CredentialsRefused {
                url: self.token_url.to_string(),
                error,
            }));
        }
        if !retry::is_retryable_status(status) {
            return Err(TokenFailure::Final(
                self.failed(&format!("HTTP {}", status.as_u16())),
            ));
        }
        Err(TokenFailure::Transient(format!("HTTP {}", status.as_u16())))
    }

    fn failed(&self, reason: &str) -> SourceError {
        tracing::error!(event = "crm_auth_failed", token_url = %self.token_url, error = %reason, "cannot get a CRM access token");
        SourceError::Crm(format!(
            "token request to {} failed: {reason}",
            self.token_url
        ))
    }

    /// The fingerprint that ties a stored token to the configured one it replaced.
    fn configured_fingerprint(&self) -> String {
        let configured = self
            .configured_refresh
            .as_ref()
            .map(|s| s.expose_secret().to_string())
            .unwrap_or_default();
        let digest = Sha256::digest(format!("{}\n{configured}", self.client_id).as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    async fn stored_refresh(&self) -> Option<SecretString> {
        let ledger = self.ledger.get()?;
        let text = ledger.meta(REFRESH_META_KEY).await.ok()??;
        let stored: Value = serde_json::from_str(&text).ok()?;
        if stored.get("configured").and_then(Value::as_str)
            != Some(self.configured_fingerprint().as_str())
        {
            return None; // the operator configured another token since: theirs wins
        }
        stored
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(|t| SecretString::from(t.to_string()))
    }

    async fn store_refresh(&self, token: &SecretString) {
        let Some(ledger) = self.ledger.get() else {
            tracing::warn!(
                event = "crm_refresh_token_not_kept",
                "the CRM rotated its refresh token but no ledger is attached; a restart uses the configured one"
            );
            return;
        };
        let value = serde_json::json!({
            "configured": self.configured_fingerprint(),
            "refresh_token": token.expose_secret(),
        });
        match ledger.set_meta(REFRESH_META_KEY, &value.to_string()).await {
            Ok(()) => tracing::info!(
                event = "crm_refresh_token_rotated",
                "the CRM rotated its refresh token; kept in the ledger"
            ),
            Err(e) => tracing::error!(
                event = "crm_refresh_token_not_kept",
                error = %e,
                "cannot keep the rotated CRM refresh token in the ledger"
            ),
        }
    }
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
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => {
                return Err(RestConfigError::new(
                    "auth.token_url",
                    format!("expected an http(s) URL, got {token_url:?}"),
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

/// Why one token request did not give a token.
enum TokenFailure {
    /// 429, 5xx or a transport failure: retried.
    Transient(String),
    /// A refusal or an unusable answer: not retried.
    Final(SourceError),
}
