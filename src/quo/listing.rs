//! Contact listings as Quo answers them: decoded contact by contact (so one odd contact is set
//! apart instead of failing a whole scan), and page tokens that must never repeat (a list that
//! answers a token twice cannot be trusted to be complete, and absence from it proves nothing).

use super::client::QuoError;
use super::types::Contact;

/// A contact in a list answer that does not decode: kept apart so one odd contact cannot fail
/// a whole scan (it is quarantined by the caller, stage `quo`).
#[derive(Debug, Clone, PartialEq)]
pub struct UndecodableContact {
    /// Its Quo id, when the answer had one.
    pub quo_id: Option<String>,
    /// Its externalId, when the answer had one.
    pub external_id: Option<String>,
    /// Why it did not decode.
    pub reason: String,
}

/// One page of a contact listing, decoded contact by contact.
#[derive(Debug, Clone, Default)]
pub struct ContactList {
    /// The contacts that decoded.
    pub contacts: Vec<Contact>,
    /// The ones that did not.
    pub undecodable: Vec<UndecodableContact>,
    /// Token for the next page; `None` on the last one.
    pub next_page_token: Option<String>,
}

/// The wire form of a list answer before each contact is decoded on its own.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawContactPage {
    #[serde(default)]
    data: Vec<serde_json::Value>,
    #[serde(default)]
    next_page_token: Option<String>,
}

impl From<RawContactPage> for ContactList {
    fn from(raw: RawContactPage) -> Self {
        let mut list = ContactList {
            next_page_token: raw.next_page_token.filter(|t| !t.is_empty()),
            ..ContactList::default()
        };
        for value in raw.data {
            let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
            let (quo_id, external_id) = (text("id"), text("externalId"));
            match serde_json::from_value::<Contact>(value) {
                Ok(contact) => list.contacts.push(contact),
                Err(e) => list.undecodable.push(UndecodableContact {
                    quo_id,
                    external_id,
                    reason: e.to_string(),
                }),
            }
        }
        list
    }
}

/// Remembers the page tokens of one listing and refuses a repeat (quo-api.md decision 7).
#[derive(Debug, Default)]
pub struct PageTokens {
    seen: std::collections::HashSet<String>,
}

impl PageTokens {
    /// Accepts the next token, or fails when the list already answered it.
    pub fn next(&mut self, route: &'static str, token: &str) -> Result<(), QuoError> {
        if self.seen.insert(token.to_string()) {
            Ok(())
        } else {
            Err(QuoError::Paging {
                route,
                token: token.chars().take(40).collect(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_undecodable_contact_is_set_apart_not_fatal_to_the_page() {
        let raw: RawContactPage = serde_json::from_value(serde_json::json!({
            "data": [
                {"id": "good", "externalId": "c-1", "defaultFields": {"firstName": "Ada"}},
                {"id": "odd", "externalId": "c-2", "defaultFields": "not an object"},
            ],
            "nextPageToken": ""
        }))
        .unwrap();
        let list = ContactList::from(raw);
        assert_eq!(list.contacts.len(), 1);
        assert_eq!(list.undecodable.len(), 1);
        assert_eq!(list.undecodable[0].quo_id.as_deref(), Some("odd"));
        assert_eq!(list.undecodable[0].external_id.as_deref(), Some("c-2"));
        assert_eq!(list.next_page_token, None, "an empty token ends the list");
    }

    #[test]
    fn a_repeated_page_token_is_an_error() {
        let mut tokens = PageTokens::default();
        tokens.next("GET /v1/contacts", "a").unwrap();
        tokens.next("GET /v1/contacts", "b").unwrap();
        assert!(matches!(
            tokens.next("GET /v1/contacts", "a"),
            Err(QuoError::Paging { .. })
        ));
    }
}
