//! The Quo side: typed API bodies, the shared rate limiter, the retry policy, the contact client
//! and the dated (2026-03-30) client for calls, messages, users and webhooks.

pub mod client;
pub mod dated;
pub mod fence;
pub mod grace;
pub mod limiter;
pub mod listing;
pub mod retry;
pub mod types;

/// Characters kept as they are in a URL path segment (RFC 3986 "unreserved"); everything else,
/// `/` and `?` included, is percent-encoded.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes an opaque id (a Quo contact id, a CRM record id) as one URL path segment.
pub fn encode_path_segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, PATH_SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_encoded_as_one_segment() {
        assert_eq!(super::encode_path_segment("a b/c?é"), "a%20b%2Fc%3F%C3%A9");
        assert_eq!(super::encode_path_segment("abc-1_2.3~"), "abc-1_2.3~");
    }
}
