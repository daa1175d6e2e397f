//! The sandbox's workspace: contacts in memory, in creation order, with Quo's ids and timestamps.
//!
//! This is where a validated request becomes a change. It owns the two PATCH semantics (merge and
//! replace, design decision 1 of `quo-api.md`), keeps `updatedAt` strictly increasing on every
//! write, and renders contacts in the v1 response shape. It deliberately does not reuse the
//! client's wire types (`crate::quo::types`), so a misreading of the spec on one side is caught
//! by the other instead of cancelling out.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration as ChronoDuration, SubsecRound, Utc};
use serde_json::{Value, json};

use super::PatchMode;
use super::validate::{ContactInput, CustomInput, ItemInput};

/// Sources of Quo's native integrations: contacts they create are read-only through the API.
pub(crate) const INTEGRATION_SOURCES: &[&str] =
    &["hubspot", "salesforce", "google-people", "outlook"];

/// The user id given to contacts created without `createdByUserId`.
pub(crate) const SANDBOX_USER_ID: &str = "USsandbox0000";

/// `n` random bytes as lowercase hex (`2n` characters).
pub(crate) fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new Quo-style object id: 24 hex characters.
pub(crate) fn new_id() -> String {
    random_hex(12)
}

/// ISO-8601 UTC with millisecond precision, as Quo writes timestamps.
pub(crate) fn iso_ms(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The value type of a workspace custom field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldType {
    /// JSON string.
    Address,
    /// JSON boolean.
    Boolean,
    /// RFC 3339 date-time string.
    Date,
    /// Array of strings.
    MultiSelect,
    /// JSON number.
    Number,
    /// JSON string.
    String,
    /// JSON string holding a URL.
    Url,
    /// A type this sandbox does not know (e.g. `rating`): shown in definitions and on contacts,
    /// settable only by app edits (any JSON value), refused in API writes.
    Other,
}

impl FieldType {
    /// Parses a wire type name.
    pub(crate) fn parse(s: &str) -> Option<FieldType> {
        Some(match s {
            "address" => FieldType::Address,
            "boolean" => FieldType::Boolean,
            "date" => FieldType::Date,
            "multi-select" => FieldType::MultiSelect,
            "number" => FieldType::Number,
            "string" => FieldType::String,
            "url" => FieldType::Url,
            _ => return None,
        })
    }

    /// The wire type name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FieldType::Address => "address",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::MultiSelect => "multi-select",
            FieldType::Number => "number",
            FieldType::String => "string",
            FieldType::Url => "url",
            FieldType::Other => "other",
        }
    }
}

/// A custom field definition of the workspace.
#[derive(Debug, Clone)]
pub(crate) struct FieldDef {
    /// Display name.
    pub name: String,
    /// Identifying key.
    pub key: String,
    /// Value type.
    pub ftype: FieldType,
    /// The wire type name (differs from `ftype.as_str()` only for [`FieldType::Other`]).
    pub type_name: String,
    /// For multi-select fields: the allowed options (`None`: anything goes).
    pub options: Option<Vec<String>>,
}

impl FieldDef {
    /// A definition from wire parts; an unknown type becomes [`FieldType::Other`].
    pub(crate) fn new(
        name: &str,
        key: &str,
        type_name: &str,
        options: Option<Vec<String>>,
    ) -> Self {
        FieldDef {
            name: name.to_string(),
            key: key.to_string(),
            ftype: FieldType::parse(type_name).unwrap_or(FieldType::Other),
            type_name: type_name.to_string(),
            options,
        }
    }
}

/// An email or phone item on a stored contact.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// Item id.
    pub id: String,
    /// Label.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A custom field value on a stored contact (null values are not stored).
#[derive(Debug, Clone)]
pub(crate) struct CustomValue {
    /// Item id, stable for the life of the value on this contact.
    pub id: String,
    /// Field key.
    pub key: String,
    /// Normalised value.
    pub value: Value,
}

/// One contact as the sandbox stores it.
#[derive(Debug, Clone)]
pub(crate) struct StoredContact {
    /// Creation sequence number: the list order and page-token position.
    pub seq: u64,
    /// Quo id.
    pub id: String,
    /// External id.
    pub external_id: Option<String>,
    /// Source.
    pub source: Option<String>,
    /// Source URL.
    pub source_url: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Company.
    pub company: Option<String>,
    /// Role.
    pub role: Option<String>,
    /// Emails.
    pub emails: Vec<Item>,
    /// Phone numbers.
    pub phones: Vec<Item>,
    /// Custom field values, in the order they were first set.
    pub custom: Vec<CustomValue>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last write time.
    pub updated_at: DateTime<Utc>,
    /// Creator.
    pub created_by_user_id: String,
    /// Made by a native integration: PATCH and DELETE through the API answer 403.
    pub read_only: bool,
}

impl StoredContact {
    /// The contact in the v1 response shape.
    pub(crate) fn render(&self, defs: &[FieldDef]) -> Value {
        let items = |v: &[Item]| -> Value {
            Value::Array(
                v.iter()
                    .map(|i| json!({"id": i.id, "name": i.name, "value": i.value}))
                    .collect(),
            )
        };
        let custom: Vec<Value> = self
            .custom
            .iter()
            .map(|c| {
                let def = defs.iter().find(|d| d.key == c.key);
                json!({
                    "name": def.map(|d| d.name.clone()).unwrap_or_else(|| c.key.clone()),
                    "key": c.key,
                    "id": c.id,
                    "type": def.map(|d| d.type_name.as_str()).unwrap_or("string"),
                    "value": c.value,
                })
            })
            .collect();
        json!({
            "id": self.id,
            "externalId": self.external_id,
            "source": self.source,
            "sourceUrl": self.source_url,
            "defaultFields": {
                "firstName": self.first_name,
                "lastName": self.last_name,
                "company": self.company,
                "role": self.role,
                "emails": items(&self.emails),
                "phoneNumbers": items(&self.phones),
            },
            "customFields": custom,
            "createdAt": iso_ms(&self.created_at),
            "updatedAt": iso_ms(&self.updated_at),
            "createdByUserId": self.created_by_user_id,
        })
    }
}

/// Filters and position of one `GET /v1/contacts` page.
#[derive(Debug, Default)]
pub(crate) struct ListQuery {
    /// Only these external ids (empty: all).
    pub external_ids: Vec<String>,
    /// Only these sources (empty: all).
    pub sources: Vec<String>,
    /// Page size, 1–50.
    pub max_results: usize,
    /// Resume after this sequence number.
    pub after_seq: Option<u64>,
    /// The page token as sent (non-empty), for the repeated-token fault.
    pub page_token: Option<String>,
}

/// One page of results.
pub(crate) struct Page {
    /// The contacts on the page.
    pub items: Vec<Value>,
    /// How many contacts match the filters in all.
    pub total: usize,
    /// Sequence number to resume after, when more remain.
    pub next_after: Option<u64>,
    /// Contacts in this page's range that a lagging list left out.
    pub left_out: usize,
}

/// All contacts of the sandbox workspace.
#[derive(Debug)]
pub(crate) struct Store {
    by_seq: BTreeMap<u64, StoredContact>,
    index: HashMap<String, u64>,
    next_seq: u64,
    last_ts: DateTime<Utc>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            by_seq: BTreeMap::new(),
            index: HashMap::new(),
            next_seq: 1,
            last_ts: DateTime::<Utc>::MIN_UTC,
        }
    }
}

impl Store {
    /// A timestamp (ms precision) strictly later than every one handed out before.
    fn tick(&mut self) -> DateTime<Utc> {
        let now = Utc::now().trunc_subsecs(3);
        let t = if now > self.last_ts {
            now
        } else {
            self.last_ts + ChronoDuration::milliseconds(1)
        };
        self.last_ts = t;
        t
    }

    /// Creates a contact from a validated create body.
    pub(crate) fn insert(
        &mut self,
        input: ContactInput,
        source: Option<String>,
        read_only: bool,
    ) -> &StoredContact {
        let now = self.tick();
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = loop {
            let id = new_id();
            if !self.index.contains_key(&id) {
                break id;
            }
        };
        let to_items = |v: Option<Vec<ItemInput>>| -> Vec<Item> {
            v.unwrap_or_default()
                .into_iter()
                .filter_map(|i| {
                    i.value.map(|value| Item {
                        id: new_id(),
                        name: i.name,
                        value,
                    })
                })
                .collect()
        };
        let mut custom = Vec::new();
        apply_custom_merge(&mut custom, input.custom_fields.unwrap_or_default());
        let contact = StoredContact {
            seq,
            id: id.clone(),
            external_id: input.external_id.flatten(),
            source,
            source_url: input.source_url.flatten(),
            first_name: input.first_name.flatten(),
            last_name: input.last_name.flatten(),
            company: input.company.flatten(),
            role: input.role.flatten(),
            emails: to_items(input.emails),
            phones: to_items(input.phones),
            custom,
            created_at: now,
            updated_at: now,
            created_by_user_id: input
                .created_by_user_id
                .unwrap_or_else(|| SANDBOX_USER_ID.to_string()),
            read_only,
        };
        self.index.insert(id, seq);
        self.by_seq.entry(seq).or_insert(contact)
    }

    /// The contact with Quo id `id`.
    pub(crate) fn get(&self, id: &str) -> Option<&StoredContact> {
        self.index.get(id).and_then(|seq| self.by_seq.get(seq))
    }

    /// Removes and returns the contact with Quo id `id`.
    pub(crate) fn remove(&mut self, id: &str) -> Option<StoredContact> {
        let seq = self.index.remove(id)?;
        self.by_seq.remove(&seq)
    }

    /// Every contact, in creation order.
    pub(crate) fn all(&self) -> impl Iterator<Item = &StoredContact> {
        self.by_seq.values()
    }

    /// Gives every contact without a value for `key` the value `value` (a field that was
    /// always there); `updatedAt` is left alone. Returns how many contacts got it.
    pub(crate) fn fill_custom(&mut self, key: &str, value: &Value) -> usize {
        let mut n = 0;
        for c in self.by_seq.values_mut() {
            if !c.custom.iter().any(|cv| cv.key == key) {
                c.custom.push(CustomValue {
                    id: new_id(),
                    key: key.to_string(),
                    value: value.clone(),
                });
                n += 1;
            }
        }
        n
    }

    /// Whether a contact with this `(source, externalId)` exists.
    pub(crate) fn has_duplicate(&self, source: Option<&str>, external_id: &str) -> bool {
        self.by_seq
            .values()
            .any(|c| c.external_id.as_deref() == Some(external_id) && c.source.as_deref() == source)
    }

    /// One page of the list call; contacts whose id is in `hidden` are left out (a lagging
    /// list) and counted in [`Page::left_out`].
    pub(crate) fn list(&self, q: &ListQuery, defs: &[FieldDef], hidden: &BTreeSet<String>) -> Page {
        let filters = |c: &StoredContact| {
            (q.external_ids.is_empty()
                || c.external_id
                    .as_ref()
                    .is_some_and(|e| q.external_ids.contains(e)))
                && (q.sources.is_empty()
                    || c.source.as_ref().is_some_and(|s| q.sources.contains(s)))
        };
        let matches = |c: &StoredContact| filters(c) && !hidden.contains(&c.id);
        let total = self.by_seq.values().filter(|c| matches(c)).count();
        let start = q.after_seq.map(|s| s + 1).unwrap_or(0);
        let mut rest = self
            .by_seq
            .range(start..)
            .map(|(_, c)| c)
            .filter(|c| matches(c));
        let page: Vec<&StoredContact> = rest.by_ref().take(q.max_results).collect();
        let more = rest.next().is_some();
        let end = if more {
            page.last().map(|c| c.seq)
        } else {
            None
        };
        let left_out = self
            .by_seq
            .range(start..)
            .take_while(|(seq, _)| end.is_none_or(|e| **seq <= e))
            .filter(|(_, c)| filters(c) && hidden.contains(&c.id))
            .count();
        Page {
            left_out,
            next_after: if more {
                page.last().map(|c| c.seq)
            } else {
                None
            },
            items: page.iter().map(|c| c.render(defs)).collect(),
            total,
        }
    }

    /// Applies a validated PATCH body to contact `id` under `mode`, bumping `updatedAt`.
    pub(crate) fn patch(
        &mut self,
        id: &str,
        input: ContactInput,
        mode: PatchMode,
    ) -> Option<&StoredContact> {
        let seq = *self.index.get(id)?;
        let now = self.tick();
        let c = self.by_seq.get_mut(&seq)?;
        if let Some(v) = input.external_id {
            c.external_id = v;
        }
        if let Some(v) = input.source {
            c.source = v;
        }
        if let Some(v) = input.source_url {
            c.source_url = v;
        }
        if let Some(v) = input.first_name {
            c.first_name = v;
        }
        if let Some(v) = input.last_name {
            c.last_name = v;
        }
        if let Some(v) = input.company {
            c.company = v;
        }
        if let Some(v) = input.role {
            c.role = v;
        }
        match mode {
            PatchMode::Merge => {
                if let Some(items) = input.emails {
                    merge_items(&mut c.emails, items);
                }
                if let Some(items) = input.phones {
                    merge_items(&mut c.phones, items);
                }
                if let Some(cf) = input.custom_fields {
                    apply_custom_merge(&mut c.custom, cf);
                }
            }
            PatchMode::Replace => {
                if let Some(items) = input.emails {
                    c.emails = replace_items(items);
                }
                if let Some(items) = input.phones {
                    c.phones = replace_items(items);
                }
                if let Some(cf) = input.custom_fields {
                    let mut fresh: Vec<CustomValue> = Vec::new();
                    for item in cf {
                        let Some(value) = item.value.filter(|v| !v.is_null()) else {
                            fresh.retain(|f| f.key != item.key);
                            continue;
                        };
                        let id = c
                            .custom
                            .iter()
                            .find(|o| o.key == item.key)
                            .map(|o| o.id.clone())
                            .unwrap_or_else(new_id);
                        match fresh.iter_mut().find(|f| f.key == item.key) {
                            Some(f) => f.value = value,
                            None => fresh.push(CustomValue {
                                id,
                                key: item.key,
                                value,
                            }),
                        }
                    }
                    c.custom = fresh;
                }
            }
        }
        c.updated_at = now;
        Some(c)
    }
}

/// Merge semantics for email/phone items: by id update or (value null) remove; without id add.
fn merge_items(stored: &mut Vec<Item>, items: Vec<ItemInput>) {
    for item in items {
        let pos = item
            .id
            .as_ref()
            .and_then(|id| stored.iter().position(|s| &s.id == id));
        match (pos, item.value) {
            (Some(p), None) => {
                stored.remove(p);
            }
            (Some(p), Some(value)) => {
                stored[p].name = item.name;
                stored[p].value = value;
            }
            (None, Some(value)) => stored.push(Item {
                id: new_id(),
                name: item.name,
                value,
            }),
            (None, None) => {}
        }
    }
}

/// Replace semantics for email/phone items: the sent list, ids kept, null values dropped.
fn replace_items(items: Vec<ItemInput>) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::new();
    for item in items {
        let Some(value) = item.value else { continue };
        let id = match item.id {
            Some(id) if !out.iter().any(|o| o.id == id) => id,
            _ => new_id(),
        };
        out.push(Item {
            id,
            name: item.name,
            value,
        });
    }
    out
}

/// Merge semantics for custom fields: sent keys set (null removes), others kept.
fn apply_custom_merge(stored: &mut Vec<CustomValue>, items: Vec<CustomInput>) {
    for item in items {
        let pos = stored.iter().position(|s| s.key == item.key);
        match (pos, item.value.filter(|v| !v.is_null())) {
            (Some(p), None) => {
                stored.remove(p);
            }
            (Some(p), Some(v)) => stored[p].value = v,
            (None, Some(v)) => stored.push(CustomValue {
                id: new_id(),
                key: item.key,
                value: v,
            }),
            (None, None) => {}
        }
    }
}
