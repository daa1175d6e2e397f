//! What people type, and the log the invariants are checked against.
//!
//! [`Field`] lists every managed field kind the mapping writes (names, company, role, both
//! email labels, both phone labels, and a custom field of each type: number, boolean, date,
//! multi-select, url), with how a person changes it in the CRM (CSV text) and in the Quo app (an
//! app edit). [`AppOnly`] lists what a person keeps only in Quo (notes, a home email): the sync
//! must never lose or revert those. [`Log`] keeps every value typed, per record and field, in the
//! form the sync compares them in (`Snapshot::fields`), so a conflict row can be matched exactly.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

/// Who put a value there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A person editing the CRM (the CSV).
    Crm,
    /// A person in the Quo app (an edit, or a deletion that took the value with it).
    Quo,
}

/// A managed field kind: one CSV column the mapping writes to Quo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    FirstName,
    LastName,
    Company,
    Role,
    Email,
    WorkEmail,
    Phone,
    Mobile,
    LeadScore,
    Vip,
    RenewalDate,
    Tags,
    Website,
}

/// Every managed field kind, in CSV column order.
pub const FIELDS: [Field; 13] = [
    Field::FirstName,
    Field::LastName,
    Field::Company,
    Field::Role,
    Field::Email,
    Field::WorkEmail,
    Field::Phone,
    Field::Mobile,
    Field::LeadScore,
    Field::Vip,
    Field::RenewalDate,
    Field::Tags,
    Field::Website,
];

/// The CSV column of `updated_at` (the CRM's last-modified time).
pub const UPDATED_AT: usize = 14;

/// Options a person picks tags from.
const TAGS: [&str; 5] = ["vip", "enterprise", "smb", "partner", "trial"];

impl Field {
    /// The column in `common::HEADER`.
    pub fn column(self) -> usize {
        FIELDS.iter().position(|f| *f == self).expect("listed") + 1
    }

    /// The name the sync gives the field in diffs and conflicts (both email columns are one
    /// `emails` list, both phone columns one `phoneNumbers` list).
    pub fn diff_name(self) -> &'static str {
        match self {
            Field::FirstName => "firstName",
            Field::LastName => "lastName",
            Field::Company => "company",
            Field::Role => "role",
            Field::Email | Field::WorkEmail => "emails",
            Field::Phone | Field::Mobile => "phoneNumbers",
            Field::LeadScore => "custom:lead-score",
            Field::Vip => "custom:vip",
            Field::RenewalDate => "custom:renewal-date",
            Field::Tags => "custom:tags",
            Field::Website => "custom:website",
        }
    }

    /// Whether a person may empty it (an optional second email or phone, a website).
    fn clearable(self) -> bool {
        matches!(self, Field::WorkEmail | Field::Mobile | Field::Website)
    }

    /// The label of an email or phone item.
    fn label(self) -> Option<(&'static str, &'static str)> {
        match self {
            Field::Email => Some(("emails", "email")),
            Field::WorkEmail => Some(("emails", "work")),
            Field::Phone => Some(("phoneNumbers", "phone")),
            Field::Mobile => Some(("phoneNumbers", "mobile")),
            _ => None,
        }
    }

    /// What a person types into the CSV cell: new text made from `n`, or (sometimes, for an
    /// optional field) nothing. `current` is the cell now.
    pub fn crm_text(self, n: u32, current: &str, rng: &mut StdRng) -> String {
        if self.clearable() && !current.is_empty() && rng.random_bool(0.25) {
            return String::new();
        }
        match self {
            Field::FirstName | Field::LastName | Field::Company | Field::Role => format!("crm{n}"),
            Field::Email => format!("crm{n}@example.com"),
            Field::WorkEmail => format!("crm-work{n}@example.com"),
            Field::Phone | Field::Mobile => format!("(415) 555-{:04}", phone_suffix(n)),
            Field::LeadScore => n.to_string(),
            Field::Vip => {
                let now = matches!(
                    current.trim().to_ascii_lowercase().as_str(),
                    "yes" | "true" | "y" | "1" | "on"
                );
                if now { "no" } else { "yes" }.to_string()
            }
            Field::RenewalDate => {
                let (y, m, d) = date(n);
                format!("{y}-{m:02}-{d:02}")
            }
            Field::Tags => tags(rng).join(";"),
            Field::Website => format!("https://crm{n}.example.com"),
        }
    }

    /// The edit a person makes in the Quo app to `contact` (the sandbox's JSON): a new value
    /// made from `n`, or (sometimes, for an optional field) a removal. Items are addressed by
    /// id, as the app does. `None`: nothing to do (removing what is not there).
    pub fn quo_patch(self, n: u32, contact: &Value, rng: &mut StdRng) -> Option<Value> {
        let clear = self.clearable() && rng.random_bool(0.25);
        let text = |key: &str, value: String| Some(json!({"defaultFields": {key: value}}));
        let custom =
            |key: &str, value: Value| Some(json!({"customFields": [{"key": key, "value": value}]}));
        match self {
            Field::FirstName => text("firstName", format!("quo{n}")),
            Field::LastName => text("lastName", format!("quo{n}")),
            Field::Company => text("company", format!("quo{n}")),
            Field::Role => text("role", format!("quo{n}")),
            Field::Email | Field::WorkEmail | Field::Phone | Field::Mobile => {
                let (list, label) = self.label().expect("an item field");
                let value = match self {
                    Field::Email => format!("quo{n}@example.com"),
                    Field::WorkEmail => format!("quo-work{n}@example.com"),
                    _ => format!("+1415555{:04}", phone_suffix(n)),
                };
                let item = item_named(contact, list, label);
                let edit = match (item, clear) {
                    (None, true) => return None,
                    (None, false) => json!({"name": label, "value": value}),
                    (Some(id), true) => json!({"id": id, "name": label, "value": null}),
                    (Some(id), false) => json!({"id": id, "name": label, "value": value}),
                };
                Some(json!({"defaultFields": {list: [edit]}}))
            }
            Field::LeadScore => custom("lead-score", json!(n)),
            Field::Vip => {
                let now = crate::common::custom_value(contact, "vip") == json!(true);
                custom("vip", json!(!now))
            }
            Field::RenewalDate => {
                let (y, m, d) = date(n);
                custom(
                    "renewal-date",
                    json!(format!("{y}-{m:02}-{d:02}T00:00:00.000Z")),
                )
            }
            Field::Tags => custom("tags", json!(tags(rng))),
            Field::Website if clear => custom("website", Value::Null),
            Field::Website => custom("website", json!(format!("https://quo{n}.example.com"))),
        }
    }
}

/// What a person keeps only in Quo: the mapping does not write it, so the sync must carry it
/// through every PATCH untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppOnly {
    /// The `notes` custom field: typed, retyped, and sometimes cleared.
    Notes,
    /// An email item labelled `home`.
    HomeEmail,
}

impl AppOnly {
    /// Its name in the log (and, for notes, in a twin's conflict rows).
    pub fn name(self) -> &'static str {
        match self {
            AppOnly::Notes => "notes",
            AppOnly::HomeEmail => "home",
        }
    }

    /// Its value on `contact`: the note, or the home email (`null` when absent). More than one
    /// home email is a doubled item, which the invariants report separately.
    pub fn value(self, contact: &Value) -> Value {
        match self {
            AppOnly::Notes => crate::common::custom_value(contact, "notes"),
            AppOnly::HomeEmail => contact["defaultFields"]["emails"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["name"] == "home")
                .map(|i| i["value"].clone())
                .unwrap_or(Value::Null),
        }
    }

    /// The edit a person makes, and the value it leaves: a note typed, retyped or (when there
    /// is one, sometimes) cleared; a home email added or changed.
    pub fn edit(self, n: u32, contact: &Value, rng: &mut StdRng) -> (Value, Value) {
        match self {
            AppOnly::Notes => {
                let value = if !self.value(contact).is_null() && rng.random_bool(0.4) {
                    Value::Null
                } else {
                    json!(format!("note{n}"))
                };
                (
                    json!({"customFields": [{"key": "notes", "value": value}]}),
                    value,
                )
            }
            AppOnly::HomeEmail => {
                let value = json!(format!("home{n}@example.org"));
                let item = match item_named(contact, "emails", "home") {
                    Some(id) => json!({"id": id, "name": "home", "value": value}),
                    None => json!({"name": "home", "value": value}),
                };
                (json!({"defaultFields": {"emails": [item]}}), value)
            }
        }
    }
}

/// Every app-only kind.
pub const APP_ONLY: [AppOnly; 2] = [AppOnly::Notes, AppOnly::HomeEmail];

/// The id of the first email/phone item labelled `label`.
fn item_named(contact: &Value, list: &str, label: &str) -> Option<String> {
    contact["defaultFields"][list]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == label)
        .and_then(|i| i["id"].as_str())
        .map(str::to_string)
}

/// A distinct valid US number suffix per `n`.
fn phone_suffix(n: u32) -> u32 {
    2000 + n % 7000
}

/// A distinct date per `n`.
fn date(n: u32) -> (u32, u32, u32) {
    (2027 + n / 336, 1 + (n / 28) % 12, 1 + n % 28)
}

/// A non-empty set of tags.
fn tags(rng: &mut StdRng) -> Vec<&'static str> {
    let mut picked: Vec<&str> = TAGS
        .iter()
        .copied()
        .filter(|_| rng.random_bool(0.4))
        .collect();
    if picked.is_empty() {
        picked.push(TAGS[rng.random_range(0..TAGS.len())]);
    }
    picked
}

/// One value put into a field, in the sync's comparison form.
#[derive(Debug, Clone)]
pub struct Edit {
    /// Who put it there (shown in failure messages).
    #[expect(dead_code, reason = "read through Debug in failure messages")]
    pub side: Side,
    /// The value (`Snapshot::fields` form for managed fields; JSON `null` for cleared).
    pub value: Value,
}

/// Everything people did, per record and field name (diff names for managed fields,
/// [`AppOnly::name`] for app-only values).
#[derive(Debug, Default)]
pub struct Log {
    typed: BTreeMap<(String, String), Vec<Edit>>,
    /// Records deleted in the CRM.
    pub deleted_in_crm: BTreeSet<String>,
}

impl Log {
    /// Records that `side` put `value` into `id`'s `field`.
    pub fn put(&mut self, id: &str, field: &str, side: Side, value: Value) {
        self.typed
            .entry((id.to_string(), field.to_string()))
            .or_default()
            .push(Edit { side, value });
    }

    /// Every value put into `id`'s `field`, in order.
    pub fn edits(&self, id: &str, field: &str) -> &[Edit] {
        self.typed
            .get(&(id.to_string(), field.to_string()))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The value `id`'s `field` should hold if nothing conflicted: the last one put there
    /// (`null` when nothing ever was).
    pub fn last(&self, id: &str, field: &str) -> Value {
        self.edits(id, field)
            .last()
            .map(|e| e.value.clone())
            .unwrap_or(Value::Null)
    }

    /// Whether anyone ever put `value` into `id`'s `field` (`null` counts for a field never
    /// typed).
    pub fn was_typed(&self, id: &str, field: &str, value: &Value) -> bool {
        let edits = self.edits(id, field);
        (edits.is_empty() && value.is_null()) || edits.iter().any(|e| &e.value == value)
    }

    /// A contact deleted in the Quo app and brought back from the CRM: what was typed only in
    /// Quo went with it, and each managed field comes back with the CRM's current value (`crm`).
    pub fn deleted_in_quo(&mut self, id: &str, crm: &BTreeMap<String, Value>) {
        for (field, value) in crm {
            self.put(id, field, Side::Crm, value.clone());
        }
        for kind in APP_ONLY {
            self.put(id, kind.name(), Side::Quo, Value::Null);
        }
    }
}
