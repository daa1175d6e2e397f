//! Value formats the contact endpoints check: E.164 phone numbers, emails, URLs and URIs, and
//! the sources Quo reserves for itself. Apart from the body walk in `validate` because they are
//! facts about Quo's formats, asked from more than one place (default fields, custom fields).

/// Sources the API refuses (exact match).
const RESERVED_SOURCES: &[&str] = &[
    "openphone",
    "device",
    "csv",
    "zapier",
    "google-people",
    "other",
];
/// Source prefixes the API refuses.
const RESERVED_PREFIXES: &[&str] = &["openphone", "csv"];

/// Whether `source` is refused by the API.
pub(crate) fn is_reserved_source(source: &str) -> bool {
    let s = source.to_ascii_lowercase();
    RESERVED_SOURCES.contains(&s.as_str()) || RESERVED_PREFIXES.iter().any(|p| s.starts_with(p))
}

/// E.164: `+`, a non-zero digit, then 6 to 14 more digits.
pub(crate) fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    let n = digits.len();
    (7..=15).contains(&n) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

/// A plausible email: one `@`, a non-empty local part, a dotted domain, no whitespace.
pub(crate) fn is_email(s: &str) -> bool {
    if s.chars().any(char::is_whitespace) {
        return false;
    }
    let mut parts = s.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// A URL: `scheme://host…` with no whitespace.
pub(crate) fn looks_like_url(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    valid_scheme(scheme)
        && !rest.is_empty()
        && !rest.starts_with('/')
        && !s.chars().any(char::is_whitespace)
}

/// A URI (format `uri`): `scheme:rest` with no whitespace.
pub(super) fn looks_like_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    valid_scheme(scheme) && !rest.is_empty() && !s.chars().any(char::is_whitespace)
}

fn valid_scheme(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164() {
        assert!(is_e164("+15555550100"));
        assert!(is_e164("+4930123456"));
        assert!(!is_e164("15555550100"));
        assert!(!is_e164("+0555550100"));
        assert!(!is_e164("+1555"));
        assert!(!is_e164("+1 555 555 0100"));
        assert!(!is_e164("+1234567890123456"));
    }

    #[test]
    fn emails_and_urls() {
        assert!(is_email("a@example.com"));
        assert!(!is_email("a@example"));
        assert!(!is_email("a@@example.com"));
        assert!(!is_email("@example.com"));
        assert!(looks_like_url("https://example.com/x"));
        assert!(!looks_like_url("example.com"));
        assert!(!looks_like_url("https:///x"));
    }

    #[test]
    fn reserved() {
        for s in [
            "openphone",
            "device",
            "CSV",
            "zapier",
            "google-people",
            "other",
            "openphone-x",
            "csv2",
        ] {
            assert!(is_reserved_source(s), "{s}");
        }
        assert!(!is_reserved_source("quo-sync"));
    }
}
