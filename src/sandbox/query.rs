//! Query strings of the list call: percent-decoding, `GET /v1/contacts` parameters, and the
//! opaque page tokens, answered with the same 400s as bodies.
//!
//! Kept apart from body validation because a page token is a number from outside: it is
//! decoded strictly here, in one place, and never trusted further.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::error::ApiError;
use super::state::ListQuery;
use super::validate::Problems;

/// The opaque page token for "resume after sequence `seq`".
pub(crate) fn encode_page_token(seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("sbx:{seq}"))
}

fn decode_page_token(token: &str) -> Option<u64> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix("sbx:")?.parse().ok()
}

/// Percent-decodes one query-string component (`+` is a space); `None` when it is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// Decoded `key=value` pairs of a query string (undecodable pairs skipped).
pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// Validates the query string of `GET /v1/contacts`.
pub(crate) fn list_query(raw: Option<&str>) -> Result<ListQuery, ApiError> {
    let mut p = Problems::default();
    let mut q = ListQuery::default();
    let mut max_results: Option<String> = None;
    for pair in raw.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (percent_decode(k), percent_decode(v)) else {
            p.bad(
                "/query",
                "query string is not valid percent-encoding",
                Some(&Value::String(pair.into())),
                "string",
            );
            continue;
        };
        let val = Value::String(v.clone());
        match k.as_str() {
            "externalIds" | "externalIds[]" => {
                if v.is_empty() || v.chars().count() > 75 {
                    p.bad(
                        "/query/externalIds",
                        "each externalId must be 1 to 75 characters",
                        Some(&val),
                        "string",
                    );
                }
                q.external_ids.push(v);
            }
            "sources" | "sources[]" => {
                if v.is_empty() || v.chars().count() > 75 {
                    p.bad(
                        "/query/sources",
                        "each source must be 1 to 75 characters",
                        Some(&val),
                        "string",
                    );
                }
                q.sources.push(v);
            }
            "maxResults" => max_results = Some(v),
            "pageToken" => match decode_page_token(&v) {
                Some(seq) => {
                    q.after_seq = Some(seq);
                    q.page_token = Some(v.clone());
                }
                None if v.is_empty() => {}
                None => p.bad(
                    "/query/pageToken",
                    "invalid pageToken",
                    Some(&val),
                    "string",
                ),
            },
            other => p.bad(
                &format!("/query/{other}"),
                format!("unknown query parameter '{other}'"),
                Some(&val),
                "never",
            ),
        }
    }
    match max_results.as_deref().map(|s| (s, s.parse::<i64>())) {
        None => p.bad(
            "/query/maxResults",
            "maxResults is required",
            None,
            "integer",
        ),
        Some((_, Ok(n))) if (1..=50).contains(&n) => q.max_results = n as usize,
        Some((s, _)) => p.bad(
            "/query/maxResults",
            "maxResults must be an integer from 1 to 50",
            Some(&Value::String(s.to_string())),
            "integer",
        ),
    }
    p.finish(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(decode_page_token(&encode_page_token(42)), Some(42));
        assert_eq!(decode_page_token("garbage!"), None);
    }

    #[test]
    fn query_decoding() {
        let q = list_query(Some(
            "maxResults=5&externalIds=a%20b&externalIds%5B%5D=c&sources=x",
        ))
        .expect("valid");
        assert_eq!(q.external_ids, vec!["a b", "c"]);
        assert_eq!(q.sources, vec!["x"]);
        assert_eq!(q.max_results, 5);
        assert!(list_query(Some("maxResults=0")).is_err());
        assert!(list_query(Some("maxResults=51")).is_err());
        assert!(list_query(None).is_err());
        assert!(list_query(Some("maxResults=5&bogus=1")).is_err());
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn query_strings_never_panic(q in "\\PC{0,40}") {
                let _ = list_query(Some(&q));
                let _ = query_pairs(Some(&q));
            }
        }
    }
}
