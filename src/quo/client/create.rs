//! The create that never makes a duplicate: each POST on record before it is sent, an
//! ambiguous or conflicting outcome resolved by looking the contact up by external id before any
//! second POST, and a found contact adopted instead of created again.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::{Method, StatusCode};

use super::super::types::{Contact, CreateContact, DataEnvelope};
use super::attempt::{AttemptError, decode, rejected};
use super::{QuoClient, QuoError};

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

/// What one POST of a create came to: the contact (made, or found after a 409), or what the
/// retry needs: the failure, Quo's wait hint, whether the rate limit refused it, whether to look
/// the contact up before the next POST, and whether nothing listed then makes a second POST
/// safe enough.
enum Posted {
    Contact(Box<CreateOutcome>),
    Again((String, Option<Duration>, bool, bool, bool)),
}

impl QuoClient {
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
            let (last, wait_hint, limited, look_first, resend) =
                match self.post_once(route, body, journal).await? {
                    Posted::Contact(outcome) => return Ok(*outcome),
                    Posted::Again(again) => again,
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

    /// One POST of [`QuoClient::create_contact`] and what it came to; a POST whose outcome is
    /// unknown is on record (`journal.may_have_landed`) before this returns.
    async fn post_once<J: PostJournal>(
        &self,
        route: &'static str,
        body: &CreateContact,
        journal: &J,
    ) -> Result<Posted, CreateError<J::Error>> {
        let again = match self
            .attempt(route, Method::POST, "/v1/contacts", &[], Some(body))
            .await
        {
            Ok((status, bytes)) if status.is_success() => {
                let envelope: DataEnvelope<Contact> = decode(route, &bytes)?;
                return Ok(Posted::Contact(Box::new(CreateOutcome {
                    contact: envelope.data,
                    adopted: false,
                })));
            }
            // Quo says it exists: look now (no wait needed for a definite answer). A 409
            // made nothing, so a second POST after it leaves no contact unaccounted for.
            Ok((StatusCode::CONFLICT, _)) => {
                let found = self.lookup_after_post(route, &body.external_id).await?;
                if let Some(contact) = found {
                    return Ok(Posted::Contact(Box::new(CreateOutcome {
                        contact,
                        adopted: true,
                    })));
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
        Ok(Posted::Again(again))
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
}
