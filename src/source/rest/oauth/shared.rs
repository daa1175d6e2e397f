//! The refresh token shared through the ledger (`crm_oauth`, see `ledger::crm_tokens`): read at
//! each refresh, spent by one process at a time, stored before it is used.
//!
//! The seams this closes: a `plan`, `reconcile` or another replica rotating the token while the
//! leader keeps the old one in memory; two processes refreshing with one token at once (with
//! reuse detection, the vendor revokes the whole family); a request that timed out retried after
//! another process rotated the token; a ledger read error that used to fall back to the
//! configured token (long rotated away); and a rotated token lost because its store failed.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{GrantFailure, OAuth, rotated_refresh};
use crate::ledger::{Ledger, LedgerError};
use crate::source::SourceError;

/// The row's name in `crm_oauth` (one REST source per configuration).
const NAME: &str = "source.rest";

/// How often a process waiting for another's claim looks again.
const CLAIM_POLL: Duration = Duration::from_millis(50);

/// Beyond the request timeout, how long a claim lasts (a claimant that died holds the others up
/// this long at most; one that lives renews its claim before every retry).
const CLAIM_SLACK: Duration = Duration::from_secs(10);

/// Longest pause between attempts to store a rotated token.
const STORE_BACKOFF_CAP: Duration = Duration::from_secs(5);

/// This process's claim on the stored token at `generation`.
pub(super) struct Claim<'a> {
    ledger: &'a Ledger,
    generation: i64,
}

impl Claim<'_> {
    /// Extends the claim before a retry; [`GrantFailure::ClaimLost`] when another process has
    /// taken it (the token may have been rotated since: it must not be sent again).
    pub(super) async fn renew(&self, oauth: &OAuth) -> Result<(), GrantFailure> {
        match self
            .ledger
            .crm_token_claim(NAME, &oauth.claimant, self.generation, oauth.claim_ttl())
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!(
                    event = "crm_refresh_claim_lost",
                    "another process took over the CRM refresh token while this one waited to retry; reading it again"
                );
                Err(GrantFailure::ClaimLost)
            }
            Err(e) => Err(GrantFailure::Failed(ledger_failed(&e))),
        }
    }
}

/// A ledger failure while reading or claiming the token: the refresh stops (the cycle fails
/// and is retried), rather than guessing which token is current.
fn ledger_failed(e: &LedgerError) -> SourceError {
    tracing::error!(event = "crm_refresh_token_unreadable", error = %e, "cannot read the CRM refresh token from the ledger; no token requested");
    SourceError::Crm(format!(
        "cannot read the CRM refresh token from the ledger ({e}); no token requested"
    ))
}

impl OAuth {
    /// How long a claim on the shared token lasts.
    fn claim_ttl(&self) -> Duration {
        self.timeout + CLAIM_SLACK
    }

    /// The fingerprint that ties a stored token to the configured one it descends from.
    fn configured_fingerprint(&self) -> String {
        let configured = self
            .configured_refresh
            .as_ref()
            .map(|s| s.expose_secret().to_string())
            .unwrap_or_default();
        let digest = Sha256::digest(format!("{}\n{configured}", self.client_id).as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The `refresh_token` grant with the token stored in the ledger: read it, claim it, send
    /// it, store what it rotated to. On `invalid_grant`, when the ledger holds another token by
    /// then (a process outside the claims rotated it), that one is tried once.
    pub(super) async fn refresh_shared(&self, ledger: &Ledger) -> Result<Value, SourceError> {
        let fingerprint = self.configured_fingerprint();
        let mut retried_refusal = false;
        let waiting_since = std::time::Instant::now();
        loop {
            let (generation, token) = self.current(ledger, &fingerprint).await?;
            let claimed = ledger
                .crm_token_claim(NAME, &self.claimant, generation, self.claim_ttl())
                .await
                .map_err(|e| ledger_failed(&e))?;
            if !claimed {
                // Another process is refreshing (or just stored a new token): wait, read again.
                if waiting_since.elapsed() > self.claim_ttl() * 2 {
                    return Err(self.failed(
                        "another process has held the CRM refresh token for longer than its claim allows",
                    ));
                }
                tokio::time::sleep(CLAIM_POLL).await;
                continue;
            }
            let claim = Claim { ledger, generation };
            match self.request(Some(&token), Some(&claim)).await {
                Ok(answer) => {
                    match rotated_refresh(&answer, Some(&token)) {
                        Some(rotated) => {
                            self.keep(ledger, generation, &fingerprint, &rotated).await
                        }
                        None => self.release(ledger).await,
                    }
                    return Ok(answer);
                }
                Err(GrantFailure::ClaimLost) => continue,
                Err(GrantFailure::Refused { code, error }) => {
                    self.release(ledger).await;
                    if code == "invalid_grant" && !retried_refusal {
                        let (_, now) = self.current(ledger, &fingerprint).await?;
                        if now.expose_secret() != token.expose_secret() {
                            tracing::warn!(
                                event = "crm_refresh_token_retry",
                                "the CRM refused the refresh token, and the ledger holds a newer one; trying that once"
                            );
                            retried_refusal = true;
                            continue;
                        }
                    }
                    return Err(error);
                }
                Err(failure) => {
                    self.release(ledger).await;
                    return Err(failure.into());
                }
            }
        }
    }

    /// The generation and token to spend: the stored one when it descends from the configured
    /// token, else the configured one (an operator's new token wins over an old rotated one).
    /// A ledger that cannot be read is an error, never the configured token.
    async fn current(
        &self,
        ledger: &Ledger,
        fingerprint: &str,
    ) -> Result<(i64, SecretString), SourceError> {
        let stored = ledger
            .crm_token(NAME)
            .await
            .map_err(|e| ledger_failed(&e))?;
        let configured = || {
            self.configured_refresh
                .clone()
                .ok_or_else(|| self.failed("no refresh token configured"))
        };
        Ok(match stored {
            Some(row) if row.configured == fingerprint => match row.token {
                Some(token) => (row.generation, token),
                None => (row.generation, configured()?),
            },
            Some(row) => (row.generation, configured()?),
            None => (0, configured()?),
        })
    }

    /// Stores a rotated token, retrying until the ledger takes it: the vendor has already
    /// retired the one before it, so this token is the only way back in.
    async fn keep(
        &self,
        ledger: &Ledger,
        generation: i64,
        fingerprint: &str,
        token: &SecretString,
    ) {
        let mut attempt = 0u32;
        loop {
            match ledger
                .crm_token_rotated(NAME, generation, fingerprint, token.expose_secret())
                .await
            {
                Ok(true) => {
                    tracing::info!(
                        event = "crm_refresh_token_rotated",
                        generation = generation + 1,
                        attempts = attempt + 1,
                        "the CRM rotated its refresh token; kept in the ledger"
                    );
                    return;
                }
                Ok(false) => {
                    tracing::warn!(
                        event = "crm_refresh_token_superseded",
                        "the CRM rotated its refresh token, but another process stored a newer one first; keeping that"
                    );
                    return;
                }
                Err(e) => {
                    attempt += 1;
                    let wait = self
                        .retry
                        .base
                        .saturating_mul(1 << attempt.min(10))
                        .min(STORE_BACKOFF_CAP);
                    tracing::error!(
                        event = "crm_refresh_token_not_kept",
                        error = %e,
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "cannot keep the rotated CRM refresh token in the ledger; retrying (it is the only valid one)"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Ends this process's claim (a failure only delays the others until it runs out).
    async fn release(&self, ledger: &Ledger) {
        if let Err(e) = ledger.crm_token_release(NAME, &self.claimant).await {
            tracing::warn!(event = "crm_refresh_claim_not_released", error = %e, "cannot release the claim on the CRM refresh token; it runs out by itself");
        }
    }
}
