//! The activity objects a vendor fake keeps (Salesforce Tasks, Zoho Calls, HubSpot calls,
//! Pipedrive activities): ids handed out in order, every create and update recorded, and the
//! count per external key that tells a duplicate.
#![allow(dead_code)]

use serde_json::Value;

/// Activity objects of one fake CRM.
#[derive(Debug, Default)]
pub struct Objects {
    /// `(id, record)` in creation order.
    pub items: Vec<(String, Value)>,
    /// Create bodies received (accepted or not).
    pub creates: u64,
    /// Update bodies received.
    pub updates: u64,
    /// Lookups answered.
    pub lookups: u64,
    next: u64,
}

impl Objects {
    /// Stores `record` under a new id `<prefix><n>`; returns the id.
    pub fn insert(&mut self, prefix: &str, record: Value) -> String {
        self.next += 1;
        let id = format!("{prefix}{:06}", self.next);
        self.items.push((id.clone(), record));
        id
    }

    /// The record with `id`.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Value> {
        self.items.iter_mut().find(|(i, _)| i == id).map(|(_, r)| r)
    }

    /// Records whose `key` (a JSON pointer) equals `value`.
    pub fn with(&self, pointer: &str, value: &str) -> Vec<(String, Value)> {
        self.items
            .iter()
            .filter(|(_, r)| r.pointer(pointer).and_then(Value::as_str) == Some(value))
            .cloned()
            .collect()
    }

    /// Every record.
    pub fn all(&self) -> Vec<Value> {
        self.items.iter().map(|(_, r)| r.clone()).collect()
    }
}
