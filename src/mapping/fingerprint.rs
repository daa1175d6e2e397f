//! The record fingerprint: a hash of the mapped fields' raw values and of the mapping itself, so a
//! cycle can tell an unchanged row without mapping it, and a change of rules or configuration
//! makes every stored fingerprint stale.
//!
//! [`RawFingerprint`] is the same hash taken straight from a source's raw cells (the CSV reader
//! uses it on its parsing thread), so a no-change read never builds a record at all; both paths
//! share one function, so they cannot disagree.

use sha2::{Digest, Sha256};

use super::Mapper;
use super::mapper::ResolvedCustom;
use crate::config::MappingConfig;
use crate::domain::hex;
use crate::source::SourceRecord;

/// Bumped whenever a canonical rule changes, so stored fingerprints stop matching.
const MAPPING_RULES_VERSION: &str = "mapping-rules-v2";

/// The fingerprint computation detached from the mapper: the mapping's digest and the mapped
/// field names, in order. Cheap to clone and `Send`, for a source's reading thread.
#[derive(Debug, Clone)]
pub struct RawFingerprint {
    /// The hash state after the mapping's digest, the same for every row: cloned per row
    /// instead of re-hashing the prefix.
    prefix: Sha256,
    fields: Vec<String>,
}

impl RawFingerprint {
    /// The mapped source field names, in fingerprint order.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// The SHA-256 of the mapping and of each mapped field's value (`value(i)` for the i-th name
    /// of [`fields`](Self::fields); absent = empty).
    pub fn sha256<'a>(&self, mut value: impl FnMut(usize) -> &'a str) -> [u8; 32] {
        let mut digest = self.prefix.clone();
        for (i, name) in self.fields.iter().enumerate() {
            let value = value(i);
            // Length-prefixed so that ("ab","c") and ("a","bc") differ.
            digest.update((name.len() as u64).to_le_bytes());
            digest.update(name.as_bytes());
            digest.update((value.len() as u64).to_le_bytes());
            digest.update(value.as_bytes());
        }
        digest.finalize().into()
    }

    /// The 64-bit digest the ledger index keeps (`ledger::fingerprint_digest` of the hex form):
    /// the first 8 bytes, big-endian, never 0.
    pub fn digest<'a>(&self, value: impl FnMut(usize) -> &'a str) -> u64 {
        let sha = self.sha256(value);
        let mut head = [0u8; 8];
        head.copy_from_slice(&sha[..8]);
        u64::from_be_bytes(head).max(1)
    }
}

impl Mapper {
    /// A hash of the mapped fields' raw values (absent = empty) and of the mapping itself.
    ///
    /// Equal fingerprints mean `map` would return the same snapshot, so unchanged rows can skip
    /// mapping. Any change to a mapped value (even whitespace) changes it; unmapped columns and
    /// the last-modified time do not take part.
    pub fn fingerprint(&self, record: &SourceRecord) -> String {
        let raw = self.raw_fingerprint();
        let fields = raw.fields();
        hex(&raw.sha256(|i| {
            record
                .fields
                .get(&fields[i])
                .map(String::as_str)
                .unwrap_or_default()
        }))
    }

    /// The fingerprint computation, for a source to run on raw cells.
    pub fn raw_fingerprint(&self) -> &RawFingerprint {
        &self.raw
    }
}

/// Builds the detached fingerprint from the mapping's digest and mapped field names.
pub(super) fn raw_fingerprint(config_digest: &str, fields: &[String]) -> RawFingerprint {
    let mut prefix = Sha256::new();
    prefix.update(config_digest.as_bytes());
    RawFingerprint {
        prefix,
        fields: fields.to_vec(),
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
