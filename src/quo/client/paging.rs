//! Listing contacts page by page: ours (`sources=<ours>`), the whole workspace (day one), and
//! by external id in chunks of [`MAX_PAGE`]; a repeated page token abandons the listing.

use reqwest::Method;

use super::super::listing::RawContactPage;
use super::super::types::Contact;
use super::{ContactList, MAX_PAGE, PageTokens, QuoClient, QuoError};

impl QuoClient {
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
}
