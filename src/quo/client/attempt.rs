//! One request and the loops around it: a limiter permit, the write fence (a leader's lease
//! asked before every write), the request itself, and the retry decisions (backoff, 429 pauses
//! for every worker, idempotent calls retried, writes sent at most once where they may land).

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;

use super::super::fence::{FencedBody, with_json_body};
use super::super::retry::{is_retryable_status, retry_after};
use super::super::types::ErrorBody;
use super::{QuoClient, QuoError};

/// What one attempt produced, before retry decisions.
pub(in crate::quo) enum AttemptError {
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
    /// A write that is not safe to repeat blindly, sent at most once where it could have
    /// landed: an unknown outcome (timeout, reset, 5xx) comes back as [`QuoError::Ambiguous`]
    /// for the caller to resolve by reading; requests that never reached Quo, and 429s
    /// (refused before any work), are retried here. An empty success body decodes as `null`.
    pub(in crate::quo) async fn write_once<T: DeserializeOwned, B: serde::Serialize + ?Sized>(
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

    /// Sleeps before retry number `retries + 1`, or gives up.
    pub(in crate::quo) async fn before_retry(
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
    pub(in crate::quo) async fn call_idempotent<
        T: DeserializeOwned,
        B: serde::Serialize + ?Sized,
    >(
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
    pub(in crate::quo) async fn attempt<B: serde::Serialize + ?Sized>(
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
        let fence = self.fence.as_ref().filter(|_| method != Method::GET);
        let timeout = match fence {
            Some(fence) => fence
                .admit(self.timeout)
                .await
                .ok_or(AttemptError::Fenced)?,
            None => self.timeout,
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
            // A leader's write asks the fence once more as its connection sends it: a process
            // frozen after the admission and thawed past its lease sends nothing.
            request = with_json_body(request, body, fence.map(|fence| (fence, timeout)))
                .map_err(|e| AttemptError::NotSent(format!("the body: {e}")))?;
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if FencedBody::refused(&e) => return Err(AttemptError::Fenced),
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

pub(in crate::quo) fn decode<T: DeserializeOwned>(
    route: &'static str,
    bytes: &[u8],
) -> Result<T, QuoError> {
    serde_json::from_slice(bytes).map_err(|e| QuoError::Decode {
        route,
        reason: e.to_string(),
    })
}

pub(in crate::quo) fn rejected(status: StatusCode, bytes: &[u8]) -> QuoError {
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
