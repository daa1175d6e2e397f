//! Phone numbers: E.164 via the `phonenumber` crate, national numbers read in
//! `mapping.default_region`; a number must parse, be valid for its region and carry no
//! extension, because Quo stores E.164 only.

/// Longest phone input handed to the parser; longer text is refused before parsing.
const MAX_PHONE_INPUT: usize = 64;

/// Normalises a phone number to E.164, reading national numbers in `default_region`.
///
/// Refuses empty or over-long input, text the parser cannot read, numbers that are not valid
/// for their region, and numbers with an extension. Never panics.
pub fn normalize_phone(raw: &str, default_region: &str) -> Result<String, String> {
    let code = default_region.trim().to_ascii_uppercase();
    let region =
        parse_region(&code).ok_or_else(|| format!("unknown default region {default_region:?}"))?;
    normalize_phone_in(raw, region, &code)
}

pub(super) fn parse_region(code: &str) -> Option<phonenumber::country::Id> {
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    code.parse().ok()
}

pub(super) fn normalize_phone_in(
    raw: &str,
    region: phonenumber::country::Id,
    region_code: &str,
) -> Result<String, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err("empty phone number".into());
    }
    if text.len() > MAX_PHONE_INPUT {
        return Err(format!(
            "longer than {MAX_PHONE_INPUT} characters, not a phone number"
        ));
    }
    // phonenumber ≥ 0.3.6 does not panic on crafted input (RUSTSEC-2024-0369); catching an
    // unwind anyway keeps one odd cell from taking the whole cycle down.
    let parsed = std::panic::catch_unwind(|| phonenumber::parse(Some(region), text))
        .map_err(|_| "the phone parser failed on this value".to_string())?
        .map_err(|e| format!("not a phone number ({e})"))?;
    if parsed.extension().is_some() {
        return Err("has an extension, which E.164 cannot hold".into());
    }
    if !parsed.is_valid() {
        return Err(format!(
            "not a valid phone number (national numbers are read as {region_code}; write others with +country code)"
        ));
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}
