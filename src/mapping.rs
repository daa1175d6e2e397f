//! TEMPORARY interface stand-in; replaced by the real mapping when its branch merges.
#![allow(missing_docs, unused_variables)]
use std::collections::BTreeMap;

use crate::config::MappingConfig;
use crate::domain::Snapshot;
use crate::quo::types::{Contact, CustomFieldDef};
use crate::source::SourceRecord;

pub struct Mapper;
#[derive(Debug, thiserror::Error)]
#[error("mapping config")]
pub enum MappingConfigError {
    UnknownCustomField {
        name: String,
        available: Vec<String>,
    },
}
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field {field:?}: value {value:?}: {reason}")]
pub struct MappingError {
    pub field: String,
    pub value: String,
    pub reason: String,
}
impl Mapper {
    pub fn new(
        config: &MappingConfig,
        defs: &[CustomFieldDef],
    ) -> Result<Mapper, MappingConfigError> {
        unimplemented!()
    }
    pub fn map(&self, record: &SourceRecord) -> Result<Snapshot, MappingError> {
        unimplemented!()
    }
    pub fn fingerprint(&self, record: &SourceRecord) -> String {
        unimplemented!()
    }
    pub fn from_contact(&self, contact: &Contact) -> Snapshot {
        unimplemented!()
    }
    pub fn to_crm_fields(
        &self,
        snapshot: &Snapshot,
        changed: &[String],
    ) -> Result<BTreeMap<String, String>, MappingError> {
        unimplemented!()
    }
    pub fn custom_field_keys(&self) -> Vec<String> {
        unimplemented!()
    }
    pub fn managed_labels(&self) -> (Vec<String>, Vec<String>) {
        unimplemented!()
    }
}
