//! One HTTP exchange with the CRM: rate limit, auth, retries with backoff, 401/403 handling,
//! and URLs redacted before they are shown anywhere.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use backon::Retryable;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use secrecy::ExposeSecret;
use serde_json::Value;

use super::RestSource;
use super::auth::Auth;
use crate::quo::fence::{FencedBody, with_json_body};
use crate::quo::retry;
use crate::source::SourceError;

/// Largest slice of a CRM error body quoted in messages.
pub(super) const MESSAGE_SNIPPET: usize = 300;

/// One finished HTTP exchange (after retries).
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
}

impl Reply {
    pub(super) fn message(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        let snippet: String = text.chars().take(MESSAGE_SNIPPET).collect();
        if snippet.is_empty() {
            format!("HTTP {}", self.status.as_u16())
        } else {
            format!("HTTP {}: {snippet}", self.status.as_u16())
        }
    }
}

/// Why one attempt did not give the final reply.
enum Failure {
    /// 429 or 5xx: retried after the server's `Retry-After` or the backoff; when retries run
    /// out the reply itself is returned (the caller reads its status).
    Status {
        reply: Reply,
        wait_hint: Option<Duration>,
    },
    /// The exchange failed; retried when `transient` (timeout, connection, body).
    Transport {
        error: reqwest::Error,
        transient: bool,
    },
    /// Not worth retrying (401/403, a token that cannot be had).
    Fatal(SourceError),
}

impl Failure {
    /// Whether to try again: a `replayable` request on any retryable failure; a request that
    /// must not be sent twice (a create) only when it surely made nothing (a 429, a connection
    /// never made).
    fn retryable(&self, replayable: bool) -> bool {
        match self {
            Failure::Status { reply, .. } => {
                replayable || reply.status == StatusCode::TOO_MANY_REQUESTS
            }
            Failure::Transport { error, transient } => {
                *transient && (replayable || error.is_connect())
            }
            Failure::Fatal(_) => false,
        }
    }
}

/// What one call sends, shared by its attempts.
struct Exchange<'a> {
    method: &'a Method,
    target: &'a Url,
    shown: &'a str,
    body: Option<&'a Value>,
    headers: &'a HeaderMap,
    /// A write's fence: admits each attempt just before it is sent, its timeout capped.
    guard: Option<&'a crate::source::WriteGuard>,
    /// Attempts made so far (the first is attempt 1).
    attempts: AtomicU32,
    /// An OAuth token refused with 401 is refreshed once per call, not once per attempt.
    refreshed_on_401: AtomicBool,
}

impl RestSource {
    /// Sends one request with the limiter, retries and auth; returns the final reply or an error
    /// (401/403 → `Unauthorized`; transport failure after retries → `Crm`). `backon` runs the
    /// retries with `RetryPolicy`'s full-jitter delays, a `Retry-After` taking a delay's place.
    pub(super) async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        headers: &HeaderMap,
    ) -> Result<Reply, SourceError> {
        self.send_with(method, url, body, headers, None, true).await
    }

    /// [`RestSource::send`] for a write: every attempt is admitted by `guard` just before it is
    /// sent, with its timeout capped by the leader's fence.
    pub(super) async fn send_guarded(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        headers: &HeaderMap,
        guard: &crate::source::WriteGuard,
    ) -> Result<Reply, SourceError> {
        self.send_with(method, url, body, headers, Some(guard), true)
            .await
    }

    /// [`RestSource::send`] for a write that must not be sent twice (a create): retried only
    /// when it surely did not reach the CRM (a connection never made) or was refused unapplied
    /// (429); a 5xx is returned as it is and a lost answer as an error, for the caller to resolve.
    /// Every attempt is admitted by `guard` just before it is sent, like [`RestSource::send_guarded`].
    pub(super) async fn send_once(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        headers: &HeaderMap,
        guard: &crate::source::WriteGuard,
    ) -> Result<Reply, SourceError> {
        self.send_with(method, url, body, headers, Some(guard), false)
            .await
    }

    /// A JSON exchange for the other writers on this CRM's connection (activity logging):
    /// `path` is relative to the API base; auth, limiter and retries as for contacts. A write
    /// passes the leader's `guard`, which admits each attempt just before it is sent. With
    /// `once`, a request that may have been applied is never sent again (as
    /// [`RestSource::send_once`]): a 5xx comes back as the reply and a lost answer (timeout or
    /// reset after sending) as `SourceError::Crm`, for the caller to settle by a lookup.
    /// Returns the status and body.
    pub async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &HeaderMap,
        (guard, once): (Option<&crate::source::WriteGuard>, bool),
    ) -> Result<(u16, Vec<u8>), SourceError> {
        self.prepare().await?;
        let url = self.url(path)?;
        let reply = self
            .send_with(method, &url, body, headers, guard, !once)
            .await?;
        Ok((reply.status.as_u16(), reply.body))
    }

    async fn send_with(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        headers: &HeaderMap,
        guard: Option<&crate::source::WriteGuard>,
        replayable: bool,
    ) -> Result<Reply, SourceError> {
        let shown = self.shown(url);
        let mut target = url.clone();
        if let Auth::Query(name, token) = &self.auth {
            let kept: Vec<(String, String)> = target
                .query_pairs()
                .filter(|(k, _)| k != name)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            target.set_query(None);
            let mut pairs = target.query_pairs_mut();
            for (k, v) in kept {
                pairs.append_pair(&k, &v);
            }
            pairs.append_pair(name, token.expose_secret());
        }
        let exchange = Exchange {
            method: &method,
            target: &target,
            shown: &shown,
            body,
            headers,
            guard,
            attempts: AtomicU32::new(0),
            refreshed_on_401: AtomicBool::new(false),
        };
        let outcome = (|| self.attempt(&exchange))
            .retry(self.retry)
            .when(|failure| failure.retryable(replayable))
            .adjust(|failure, delay| match failure {
                Failure::Status {
                    wait_hint: Some(hint),
                    ..
                } => delay.map(|_| *hint),
                _ => delay,
            })
            .notify(|failure, wait| {
                let retry = exchange.attempts.load(Ordering::Relaxed);
                let wait_ms = wait.as_millis() as u64;
                match failure {
                    Failure::Status { reply, .. } => {
                        tracing::warn!(method = %method, url = %shown, status = reply.status.as_u16(), retry, wait_ms, "CRM asked us to retry")
                    }
                    Failure::Transport { error, .. } => {
                        tracing::warn!(method = %method, url = %shown, error = %error, retry, wait_ms, "CRM request failed; retrying")
                    }
                    Failure::Fatal(_) => {}
                }
            })
            .await;
        let retries = exchange.attempts.load(Ordering::Relaxed).saturating_sub(1);
        match outcome {
            Ok(reply) | Err(Failure::Status { reply, .. }) => Ok(reply),
            Err(Failure::Transport { error, .. }) => Err(SourceError::Crm(format!(
                "{method} {shown}: {} (after {retries} retries)",
                error_chain(&error)
            ))),
            Err(Failure::Fatal(e)) => Err(e),
        }
    }

    /// One attempt: a limiter permit, the request with its auth, the reply classified. An
    /// OAuth token refused with 401 is replaced and the request sent again, once per call.
    async fn attempt(&self, exchange: &Exchange<'_>) -> Result<Reply, Failure> {
        let attempt = exchange.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let (method, shown) = (exchange.method, exchange.shown);
        loop {
            self.limiter.acquire().await;
            let mut used_token = None;
            let mut request = self
                .client
                .request(method.clone(), exchange.target.clone())
                .headers(exchange.headers.clone());
            request = match &self.auth {
                Auth::None | Auth::Query(..) => request,
                Auth::OAuth2(oauth) => {
                    let (value, token) = oauth.authorization().await.map_err(Failure::Fatal)?;
                    used_token = Some(token);
                    request.header(reqwest::header::AUTHORIZATION, value)
                }
                Auth::Bearer(token) => request.bearer_auth(token.expose_secret()),
                Auth::Basic(user, password) => {
                    request.basic_auth(user, Some(password.expose_secret()))
                }
                Auth::Header(name, token) => {
                    let mut value = HeaderValue::from_str(token.expose_secret()).map_err(|_| {
                        Failure::Fatal(SourceError::Crm(
                            "the auth token is not a valid header value".into(),
                        ))
                    })?;
                    value.set_sensitive(true);
                    request.header(name.clone(), value)
                }
            };
            let mut fenced = None;
            if let Some(guard) = exchange.guard {
                let timeout = guard
                    .admit(self.config.timeout.0)
                    .await
                    .map_err(Failure::Fatal)?;
                request = request.timeout(timeout);
                fenced = guard.fence.as_ref().map(|fence| (fence, timeout));
            }
            if let Some(body) = exchange.body {
                // A leader's write asks the fence once more as its connection sends it
                // (`quo::fence::FencedBody`): a process frozen in between sends nothing.
                request = with_json_body(request, body, fenced).map_err(|e| {
                    Failure::Fatal(SourceError::Crm(format!("the request body: {e}")))
                })?;
            }
            tracing::debug!(method = %method, url = %shown, attempt, "CRM request");
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if FencedBody::refused(&e) => {
                    return Err(Failure::Fatal(SourceError::NotSent(
                        "this process no longer holds the writer lease",
                    )));
                }
                Err(e) => return Err(transport(e)),
            };
            let status = response.status();
            if let (Auth::OAuth2(oauth), Some(token), StatusCode::UNAUTHORIZED) =
                (&self.auth, &used_token, status)
                && !exchange.refreshed_on_401.swap(true, Ordering::Relaxed)
            {
                // The token expired early or was revoked: one fresh token, one more try.
                tracing::info!(method = %method, url = %shown, "CRM answered 401; fetching a new access token");
                oauth.invalidate(token).await;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(Failure::Fatal(SourceError::Unauthorized {
                    status: status.as_u16(),
                    url: shown.to_string(),
                }));
            }
            let headers = response.headers().clone();
            if retry::is_retryable_status(status) {
                let wait_hint = retry_after_capped(&headers, self.retry.cap);
                let body = response
                    .bytes()
                    .await
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                return Err(Failure::Status {
                    reply: Reply {
                        status,
                        headers,
                        body,
                    },
                    wait_hint,
                });
            }
            if status.is_success() {
                self.auth_grace.accepted();
            }
            let body = response.bytes().await.map_err(transport)?;
            tracing::debug!(method = %method, url = %shown, status = status.as_u16(), bytes = body.len(), "CRM response");
            return Ok(Reply {
                status,
                headers,
                body: body.to_vec(),
            });
        }
    }
}

/// A failed exchange, its URL dropped (it may carry a token), transient or not.
fn transport(error: reqwest::Error) -> Failure {
    let error = error.without_url();
    let transient =
        error.is_timeout() || error.is_connect() || error.is_body() || error.is_request();
    Failure::Transport { error, transient }
}

/// `reqwest` errors hide the useful part (`connection refused`) in their sources.
pub(super) fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Whether a query parameter name looks like it carries a secret.
pub(super) fn secret_param(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["token", "key", "secret", "password", "signature", "auth"]
        .iter()
        .any(|word| lower.contains(word))
}

/// The URL with the auth parameter and secret-looking query values replaced by `REDACTED`.
pub fn redact_url(url: &Url, auth_param: Option<&str>) -> String {
    let mut shown = url.clone();
    shown.set_password(None).ok();
    if !shown.username().is_empty() {
        shown.set_username("REDACTED").ok();
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let hide = Some(k.as_ref()) == auth_param || secret_param(&k);
                (
                    k.into_owned(),
                    if hide {
                        "REDACTED".into()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        shown.set_query(None);
        if !pairs.is_empty() {
            let mut out = shown.query_pairs_mut();
            for (k, v) in pairs {
                out.append_pair(&k, &v);
            }
        }
    }
    shown.to_string()
}

/// The CRM's `Retry-After` (delay in seconds, possibly fractional, or an HTTP-date), clamped to
/// `cap` (`max_backoff`). The value is hostile until checked: huge, non-finite or unreadable
/// values never reach `Duration::from_secs_f64` unclamped; negative values and past dates mean
/// "now"; garbage is ignored (the normal backoff applies).
pub(super) fn retry_after_capped(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        if seconds.is_nan() {
            return None;
        }
        let capped = seconds.clamp(0.0, cap.as_secs_f64());
        return Some(Duration::try_from_secs_f64(capped).unwrap_or(cap).min(cap));
    }
    // All three HTTP-date forms (IMF-fixdate, RFC 850, asctime).
    let date = DateTime::<Utc>::from(httpdate::parse_http_date(value).ok()?);
    let wait = (date - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    Some(wait.min(cap))
}

/// Most redirect hops followed within the CRM's origin.
const MAX_REDIRECTS: usize = 10;

/// Follows redirects only within the origin of the request's first URL: reqwest's default
/// policy strips `Authorization` across origins but not custom auth headers, query tokens or
/// bodies, so a redirect elsewhere would hand them to another server.
pub(super) fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if !same {
            let target = attempt.url().origin().ascii_serialization();
            attempt.error(format!(
                "the CRM redirected to another origin ({target}); refusing to send credentials there"
            ))
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_clamped_and_never_panics() {
        let cap = Duration::from_secs(30);
        let hint = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, value.parse().unwrap());
            retry_after_capped(&headers, cap)
        };
        assert_eq!(hint("2"), Some(Duration::from_secs(2)));
        assert_eq!(hint("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(hint("1e20"), Some(cap));
        assert_eq!(hint("99999999999999999999999"), Some(cap));
        assert_eq!(hint("inf"), Some(cap));
        assert_eq!(hint("-5"), Some(Duration::ZERO));
        assert_eq!(hint("NaN"), None);
        assert_eq!(hint("soon"), None);
        assert_eq!(hint("Fri, 31 Dec 9999 23:59:59 GMT"), Some(cap));
        assert_eq!(hint("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        // RFC 850 and asctime forms are HTTP dates too.
        assert_eq!(
            hint("Thursday, 01-Jan-70 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(hint("Thu Jan  1 00:00:00 1970"), Some(Duration::ZERO));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(10));
        let wait = hint(&soon).unwrap();
        assert!(
            wait > Duration::from_secs(8) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
    }

    #[test]
    fn urls_are_redacted() {
        let url = Url::parse("https://u:p@h/c?api_token=abc&page=2&x=1&client_secret=s").unwrap();
        let shown = redact_url(&url, Some("x"));
        assert!(
            !shown.contains("abc") && !shown.contains(":p@") && !shown.contains("=s"),
            "{shown}"
        );
        assert!(shown.contains("page=2"), "{shown}");
        assert!(shown.contains("x=REDACTED"), "{shown}");
    }
}
