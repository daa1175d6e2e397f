//! Extra HTTP headers an operator configures for a CRM (`activity.rest.headers`, and the REST
//! source's write headers): often a credential (`Authorization`, `X-Api-Key`), so they must never
//! show in Debug output, logs or `check-config --print`.
//!
//! A leaf: it needs nothing from the rest of the crate, so every config type may hold one.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// What a credential's value prints as.
const REDACTED: &str = "[REDACTED]";

/// Whether a header of this name carries a credential (its value is never shown): any name
/// containing `auth`, `token`, `key`, `secret`, `cookie` or `password`, in any case.
pub fn is_credential_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["auth", "token", "key", "secret", "cookie", "password"]
        .iter()
        .any(|w| lower.contains(w))
}

/// Header name → value, as configured. Deserializes from a plain TOML table; printed (Debug and
/// Serialize) with the value of every credential-like name replaced by `[REDACTED]`. The values
/// themselves are reached only by iterating, to build a request.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct HttpHeaders(BTreeMap<String, String>);

impl HttpHeaders {
    /// Name and value of each header, in name order (values unredacted: for the request).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// The configured names.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }

    /// No header configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many headers are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The headers for a request, each credential marked sensitive (so the HTTP client's
    /// Debug output hides it too); `Err` names the first header that is not valid HTTP.
    pub fn header_map(&self) -> Result<reqwest::header::HeaderMap, String> {
        let mut map = reqwest::header::HeaderMap::new();
        for (name, value) in &self.0 {
            let (Ok(header), Ok(mut value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(value),
            ) else {
                return Err(name.clone());
            };
            value.set_sensitive(is_credential_header(name));
            map.insert(header, value);
        }
        Ok(map)
    }

    /// Name and value as printed: a credential's value redacted.
    fn shown(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(name, value)| {
            let shown = if is_credential_header(name) {
                REDACTED
            } else {
                value.as_str()
            };
            (name.as_str(), shown)
        })
    }
}

impl<'a> IntoIterator for &'a HttpHeaders {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<BTreeMap<String, String>> for HttpHeaders {
    fn from(headers: BTreeMap<String, String>) -> Self {
        Self(headers)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for HttpHeaders {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl fmt::Debug for HttpHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.shown()).finish()
    }
}

impl Serialize for HttpHeaders {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.shown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers() -> HttpHeaders {
        [
            ("Authorization", "Bearer sk-live-123"),
            ("X-Api-Key", "key-456"),
            ("Cookie", "session=789"),
            ("X-Client-Secret", "s3cr3t"),
            ("Accept", "application/json"),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn debug_and_serialize_hide_credentials_and_keep_the_rest() {
        let h = headers();
        let debug = format!("{h:?}");
        let json = serde_json::to_string(&h).unwrap();
        for secret in ["sk-live-123", "key-456", "session=789", "s3cr3t"] {
            assert!(!debug.contains(secret), "{secret} in Debug: {debug}");
            assert!(!json.contains(secret), "{secret} serialized: {json}");
        }
        assert!(
            debug.contains("\"Authorization\": \"[REDACTED]\""),
            "{debug}"
        );
        assert!(debug.contains("application/json"), "{debug}");
        assert!(json.contains("\"Accept\":\"application/json\""), "{json}");
    }

    #[test]
    fn the_request_still_gets_every_value() {
        let h = headers();
        let values: BTreeMap<&String, &String> = h.iter().collect();
        assert_eq!(values.len(), 5);
        assert_eq!(
            h.iter().find(|(n, _)| *n == "Authorization").unwrap().1,
            "Bearer sk-live-123"
        );
    }

    #[test]
    fn reads_a_plain_toml_table() {
        let h: HttpHeaders = toml::from_str("Authorization = \"a\"\nAccept = \"b\"").unwrap();
        assert_eq!(h.len(), 2);
        assert!(is_credential_header("x-AUTH-token"));
        assert!(!is_credential_header("Accept"));
    }
}
