//! The record fingerprint: a hash of the mapped fields' raw values and of the mapping itself, so a
//! cycle can tell an unchanged row without mapping it, and a change of rules or configuration
//! makes every stored fingerprint stale.

use sha2::{Digest, Sha256};

use super::Mapper;
use super::mapper::ResolvedCustom;
use crate::config::MappingConfig;
use crate::domain::hex;
use crate::source::SourceRecord;

/// Bumped whenever a canonical rule changes, so stored fingerprints stop matching.
const MAPPING_RULES_VERSION: &str = "mapping-rules-v2";

impl Mapper {
    /// A hash of the mapped fields' raw values (absent = empty) and of the mapping itself.
    ///
    /// Equal fingerprints mean `map` would return the same snapshot, so unchanged rows can skip
    /// mapping. Any change to a mapped value (even whitespace) changes it; unmapped columns and
    /// the last-modified time do not take part.
    pub fn fingerprint(&self, record: &SourceRecord) -> String {
        let mut digest = Sha256::new();
        digest.update(self.config_digest.as_bytes());
        for name in &self.mapped_fields {
            let value = record
                .fields
                .get(name)
                .map(String::as_str)
                .unwrap_or_default();
            // Length-prefixed so that ("ab","c") and ("a","bc") differ.
            digest.update((name.len() as u64).to_le_bytes());
            digest.update(name.as_bytes());
            digest.update((value.len() as u64).to_le_bytes());
            digest.update(value.as_bytes());
        }
        hex(&digest.finalize())
    }
}

/// Digest of the rules version, the configuration and the resolved definitions.
pub(super) fn config_digest(config: &MappingConfig, custom: &[ResolvedCustom]) -> String {
    let mut digest = Sha256::new();
    digest.update(MAPPING_RULES_VERSION.as_bytes());
    digest.update(format!("{config:?}").as_bytes());
    for c in custom {
        digest.update(format!("{c:?}").as_bytes());
    }
    hex(&digest.finalize())
}
