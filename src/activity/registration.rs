//! quo-sync's own webhooks (2026-03-30 `POST /webhooks`), so no one sets them up by hand: with
//! `reverse.public_url`, the activity webhook (the eight call and message events, every phone
//! number) points at `<public_url>/webhooks/quo/activity`, and the contact webhook
//! (`contact.updated`, `contact.deleted`) at `<public_url>/webhooks/quo`.
//!
//! Quo shows a subscription's signing key only when it is created (or rotated), so the key is
//! kept in the ledger the moment Quo answers; it is never logged or shown. Each start checks
//! the subscriptions against the ledger and repairs what drifted: re-enabled when disabled,
//! events and filter set back when changed, made again when deleted. A subscription found at our
//! URL that the ledger does not know (a create whose answer was lost, or a ledger rebuilt) is
//! adopted by rotating its key, never duplicated.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use tracing::{info, warn};

use super::observe::EVENT_TYPES;
use crate::ledger::{Ledger, LedgerError, WebhookRegistration};
use crate::quo::client::QuoError;
use crate::quo::dated::{DatedClient, NewWebhook, WebhookPatch, WebhookSubscription};
use crate::reverse::receiver::{Receiver, webhook_routes};

/// The activity webhook's purpose in the ledger.
pub const ACTIVITY: &str = "activity";
/// The contact webhook's purpose in the ledger.
pub const CONTACTS: &str = "contacts";
/// The label quo-sync gives its subscriptions.
pub const LABEL: &str = "quo-sync";

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// Quo.
    #[error(transparent)]
    Quo(#[from] QuoError),
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A webhook quo-sync wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// `activity` or `contacts`.
    pub purpose: &'static str,
    /// Where Quo delivers.
    pub url: String,
    /// The events.
    pub events: Vec<String>,
    /// The phone-number filter (`["*"]` for call and message events).
    pub resource_ids: Option<Vec<String>>,
}

/// The webhooks for `public_url`: the activity one when activity logging is on, the contact
/// one when the reverse path has no hand-made secret.
pub fn wanted(public_url: &str, activity: bool, contacts: bool) -> Vec<Wanted> {
    let base = public_url.trim_end_matches('/');
    let mut out = Vec::new();
    if activity {
        out.push(Wanted {
            purpose: ACTIVITY,
            url: format!("{base}{}", super::intake::PATH),
            events: EVENT_TYPES.iter().map(|e| e.to_string()).collect(),
            resource_ids: Some(vec!["*".into()]),
        });
    }
    if contacts {
        out.push(Wanted {
            purpose: CONTACTS,
            url: format!("{base}/webhooks/quo"),
            events: vec!["contact.updated".into(), "contact.deleted".into()],
            resource_ids: None,
        });
    }
    out
}

/// What `ensure` did to one webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ensured {
    /// `activity` or `contacts`.
    pub purpose: String,
    /// Quo's subscription id.
    pub subscription_id: String,
    /// `kept`, `created`, `repaired`, `adopted` or `recreated`.
    pub action: String,
    /// What was repaired.
    pub detail: Option<String>,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn same_filter(sub: &WebhookSubscription, wanted: &Wanted) -> bool {
    let all = |ids: &Option<Vec<String>>| {
        ids.as_ref()
            .is_none_or(|ids| ids.is_empty() || ids.iter().any(|i| i == "*"))
    };
    all(&sub.resource_ids) == all(&wanted.resource_ids)
}

fn same_events(sub: &WebhookSubscription, wanted: &Wanted) -> bool {
    let mut have = sub.events.clone();
    let mut want = wanted.events.clone();
    have.sort();
    want.sort();
    have == want
}

/// Registers, checks and repairs quo-sync's webhooks.
#[derive(Debug, Clone)]
pub struct Registrar {
    dated: DatedClient,
    ledger: Ledger,
}

impl Registrar {
    /// A registrar writing keys to `ledger` (a leader's, or under the lease by hand).
    pub fn new(dated: DatedClient, ledger: Ledger) -> Self {
        Self { dated, ledger }
    }

    async fn save(
        &self,
        wanted: &Wanted,
        sub: &WebhookSubscription,
        key: Option<String>,
        registered_at: Option<String>,
    ) -> Result<(), RegistrationError> {
        let previous = self.ledger.webhook_registration(wanted.purpose).await?;
        let signing_key = match (key, &previous) {
            (Some(key), _) => key,
            (None, Some(p)) => p.signing_key.clone(),
            (None, None) => String::new(),
        };
        self.ledger
            .save_webhook_registration(&WebhookRegistration {
                purpose: wanted.purpose.to_string(),
                subscription_id: sub.id.clone(),
                url: wanted.url.clone(),
                events: wanted.events.join(","),
                signing_key,
                registered_at: registered_at
                    .or(previous.map(|p| p.registered_at))
                    .unwrap_or_else(now),
                checked_at: now(),
            })
            .await?;
        Ok(())
    }

    /// Creates `wanted`; a lost answer is settled by listing and adopting what landed.
    async fn create(
        &self,
        wanted: &Wanted,
    ) -> Result<(WebhookSubscription, String), RegistrationError> {
        let body = NewWebhook {
            url: wanted.url.clone(),
            events: wanted.events.clone(),
            resource_ids: wanted.resource_ids.clone(),
            label: LABEL.into(),
        };
        match self.dated.create_webhook(&body).await {
            Ok(created) => Ok((
                created.subscription,
                created.key.expose_secret().to_string(),
            )),
            Err(QuoError::Ambiguous { .. }) => {
                let landed = self
                    .dated
                    .webhooks()
                    .await?
                    .into_iter()
                    .find(|s| s.url == wanted.url);
                match landed {
                    Some(sub) => {
                        let key = self.dated.rotate_webhook(&sub.id).await?;
                        Ok((sub, key.expose_secret().to_string()))
                    }
                    None => Ok({
                        let created = self.dated.create_webhook(&body).await?;
                        (
                            created.subscription,
                            created.key.expose_secret().to_string(),
                        )
                    }),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Makes sure each wanted webhook exists, is enabled, delivers the right events, and that
    /// the ledger holds its key.
    pub async fn ensure(&self, wanted: &[Wanted]) -> Result<Vec<Ensured>, RegistrationError> {
        let subs = self.dated.webhooks().await?;
        let mut out = Vec::new();
        for w in wanted {
            let known = self.ledger.webhook_registration(w.purpose).await?;
            let ours = known
                .as_ref()
                .filter(|k| !k.signing_key.is_empty())
                .and_then(|k| subs.iter().find(|s| s.id == k.subscription_id));
            let result = match ours {
                Some(sub) => {
                    let mut wrong = Vec::new();
                    if !sub.is_enabled() {
                        wrong.push("disabled");
                    }
                    if sub.url != w.url {
                        wrong.push("another URL");
                    }
                    if !same_events(sub, w) {
                        wrong.push("events");
                    }
                    if !same_filter(sub, w) {
                        wrong.push("phone-number filter");
                    }
                    if wrong.contains(&"another URL") {
                        // The public URL moved: a new subscription, the old one removed.
                        let (created, key) = self.create(w).await?;
                        self.save(w, &created, Some(key), Some(now())).await?;
                        let _ = self.dated.delete_webhook(&sub.id).await?;
                        Ensured {
                            purpose: w.purpose.into(),
                            subscription_id: created.id,
                            action: "recreated".into(),
                            detail: Some(format!("the public URL changed (was {})", sub.url)),
                        }
                    } else if wrong.is_empty() {
                        self.save(w, sub, None, None).await?;
                        Ensured {
                            purpose: w.purpose.into(),
                            subscription_id: sub.id.clone(),
                            action: "kept".into(),
                            detail: None,
                        }
                    } else {
                        let patch = WebhookPatch {
                            events: Some(w.events.clone()),
                            resource_ids: w.resource_ids.clone(),
                            status: Some("enabled".into()),
                        };
                        let fixed = self.dated.update_webhook(&sub.id, &patch).await?;
                        self.save(w, &fixed, None, None).await?;
                        Ensured {
                            purpose: w.purpose.into(),
                            subscription_id: fixed.id,
                            action: "repaired".into(),
                            detail: Some(wrong.join(", ")),
                        }
                    }
                }
                None => match subs.iter().find(|s| s.url == w.url) {
                    Some(stray) => {
                        // Ours by URL but not by record: learn its key by rotating it.
                        let key = self.dated.rotate_webhook(&stray.id).await?;
                        let patch = WebhookPatch {
                            events: Some(w.events.clone()),
                            resource_ids: w.resource_ids.clone(),
                            status: Some("enabled".into()),
                        };
                        let fixed = self.dated.update_webhook(&stray.id, &patch).await?;
                        self.save(
                            w,
                            &fixed,
                            Some(key.expose_secret().to_string()),
                            Some(now()),
                        )
                        .await?;
                        Ensured {
                            purpose: w.purpose.into(),
                            subscription_id: fixed.id,
                            action: "adopted".into(),
                            detail: Some(
                                "found at our URL without a key in the ledger; key rotated".into(),
                            ),
                        }
                    }
                    None => {
                        let (created, key) = self.create(w).await?;
                        self.save(w, &created, Some(key), Some(now())).await?;
                        Ensured {
                            purpose: w.purpose.into(),
                            subscription_id: created.id,
                            action: if known.is_some() {
                                "recreated"
                            } else {
                                "created"
                            }
                            .into(),
                            detail: known.map(|_| "missing in Quo".to_string()),
                        }
                    }
                },
            };
            if result.action == "kept" {
                info!(event = "webhook_checked", purpose = %result.purpose, subscription_id = %result.subscription_id, "webhook registration in order");
            } else {
                warn!(event = "webhook_repaired", purpose = %result.purpose, subscription_id = %result.subscription_id, action = %result.action, detail = ?result.detail, "webhook registration changed");
            }
            out.push(result);
        }
        Ok(out)
    }

    /// Removes quo-sync's webhook for `purpose` from Quo and its key from the ledger; `None`
    /// when none was registered.
    pub async fn remove(&self, purpose: &str) -> Result<Option<String>, RegistrationError> {
        let Some(known) = self.ledger.webhook_registration(purpose).await? else {
            return Ok(None);
        };
        self.dated.delete_webhook(&known.subscription_id).await?;
        self.ledger.delete_webhook_registration(purpose).await?;
        info!(event = "webhook_removed", purpose, subscription_id = %known.subscription_id, "webhook removed");
        Ok(Some(known.subscription_id))
    }

    /// Quo's subscriptions, each with the purpose quo-sync registered it for (if it did).
    pub async fn list(
        &self,
    ) -> Result<Vec<(WebhookSubscription, Option<String>)>, RegistrationError> {
        let known = self.ledger.webhook_registrations().await?;
        Ok(self
            .dated
            .webhooks()
            .await?
            .into_iter()
            .map(|s| {
                let purpose = known
                    .iter()
                    .find(|k| k.subscription_id == s.id)
                    .map(|k| k.purpose.clone());
                (s, purpose)
            })
            .collect())
    }
}

/// `POST /webhooks/quo` for the contact webhook quo-sync registered itself: each delivery is
/// handed to the reverse receiver with the registered key as its secret, read from the ledger
/// per delivery, so a repaired subscription's new key and a standby both work at once.
pub fn registered_contact_routes(template: Receiver) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/quo", axum::routing::post(forward_contact))
        .with_state(Arc::new(template))
}

async fn forward_contact(State(template): State<Arc<Receiver>>, request: Request) -> Response {
    use tower::ServiceExt;
    let key = match template.ledger.webhook_registration(CONTACTS).await {
        Ok(Some(r)) if !r.signing_key.is_empty() => r.signing_key,
        Ok(_) => {
            warn!(
                event = "webhook_rejected",
                reason = "no registered contact webhook yet",
                "webhook delivery refused"
            );
            return (
                StatusCode::UNAUTHORIZED,
                "no registered contact webhook key yet\n",
            )
                .into_response();
        }
        Err(e) => {
            warn!(event = "webhook_store_failed", error = %e, "could not read the registered key");
            return (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response();
        }
    };
    let receiver = Receiver {
        secret: Some(secrecy::SecretString::from(key)),
        ..(*template).clone()
    };
    match webhook_routes(receiver).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
