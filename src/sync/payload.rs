//! Request bodies from snapshots: the create body, and a PATCH body that is correct whether Quo
//! merges or replaces arrays (quo-api.md, design decision 1).
//!
//! The PATCH always carries the complete desired `emails`, `phoneNumbers` and `customFields`:
//! managed items keep their Quo ids, managed items no longer wanted are sent with `value: null`,
//! and unmanaged items (labels or custom fields the mapping does not own, e.g. added in the Quo
//! app) are sent back unchanged, so neither semantics can lose them.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::{Labeled, Snapshot, field};
use crate::quo::types::{
    Contact, ContactItem, CreateContact, CustomFieldValue, DefaultFields, PatchContact,
    PatchDefaultFields,
};

/// What the mapping owns on a contact; everything else is left as Quo has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Managed {
    /// Email labels the mapping writes.
    pub email_labels: Vec<String>,
    /// Phone labels the mapping writes.
    pub phone_labels: Vec<String>,
    /// Custom field keys the mapping writes.
    pub custom_keys: Vec<String>,
    /// Default scalar fields the mapping writes, by diff name (`domain::field`); a PATCH never
    /// sends the others, so a company or role typed in Quo under a mapping without one stays.
    pub default_fields: Vec<&'static str>,
}

/// The `POST /v1/contacts` body for a new contact.
pub fn create_body(
    snapshot: &Snapshot,
    external_id: &str,
    source: &str,
    source_url: Option<String>,
) -> CreateContact {
    let items = |list: &[Labeled]| {
        list.iter()
            .map(|l| ContactItem {
                id: None,
                name: l.name.clone(),
                value: Some(l.value.clone()),
            })
            .collect()
    };
    CreateContact {
        default_fields: DefaultFields {
            first_name: snapshot.first_name.clone(),
            last_name: snapshot.last_name.clone(),
            company: snapshot.company.clone(),
            role: snapshot.role.clone(),
            emails: items(&snapshot.emails),
            phone_numbers: items(&snapshot.phone_numbers),
        },
        custom_fields: snapshot
            .custom_fields
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(key, value)| CustomFieldValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        external_id: external_id.to_string(),
        source: source.to_string(),
        source_url,
    }
}

/// The complete desired item list for one array: managed labels from `desired` (reusing the ids
/// of `current` items with the same label), removed managed items as `value: null`, unmanaged
/// items as they are.
fn merge_items(
    desired: &[Labeled],
    current: &[ContactItem],
    managed_labels: &[String],
) -> Vec<ContactItem> {
    let managed: BTreeSet<&str> = managed_labels.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    let mut used = vec![false; current.len()];
    for want in desired {
        let reuse = current
            .iter()
            .enumerate()
            .find(|(i, item)| !used[*i] && item.name == want.name && item.id.is_some());
        match reuse {
            Some((i, item)) => {
                used[i] = true;
                out.push(ContactItem {
                    id: item.id.clone(),
                    name: want.name.clone(),
                    value: Some(want.value.clone()),
                });
            }
            None => out.push(ContactItem {
                id: None,
                name: want.name.clone(),
                value: Some(want.value.clone()),
            }),
        }
    }
    for (i, item) in current.iter().enumerate() {
        if used[i] {
            continue;
        }
        if managed.contains(item.name.as_str()) {
            if let Some(id) = &item.id {
                out.push(ContactItem {
                    id: Some(id.clone()),
                    name: item.name.clone(),
                    value: None,
                });
            }
        } else {
            out.push(item.clone());
        }
    }
    out
}

/// The `PATCH /v1/contacts/{id}` body that turns `current` (as Quo last returned it) into
/// `desired`, sending only changed scalars and complete arrays.
pub fn patch_body(
    desired: &Snapshot,
    current: Option<&Contact>,
    managed: &Managed,
) -> PatchContact {
    let empty = Contact {
        id: String::new(),
        external_id: None,
        source: None,
        source_url: None,
        default_fields: DefaultFields::default(),
        custom_fields: Vec::new(),
        created_at: None,
        updated_at: None,
        created_by_user_id: None,
    };
    let current = current.unwrap_or(&empty);
    let now = &current.default_fields;
    let changed = |name: &str, want: &Option<String>, have: &Option<String>| {
        let have = have.clone().filter(|s| !s.is_empty());
        (managed.default_fields.contains(&name) && *want != have).then(|| want.clone())
    };
    let default_fields = PatchDefaultFields {
        first_name: changed(field::FIRST_NAME, &desired.first_name, &now.first_name),
        last_name: changed(field::LAST_NAME, &desired.last_name, &now.last_name),
        company: changed(field::COMPANY, &desired.company, &now.company),
        role: changed(field::ROLE, &desired.role, &now.role),
        emails: Some(merge_items(
            &desired.emails,
            &now.emails,
            &managed.email_labels,
        )),
        phone_numbers: Some(merge_items(
            &desired.phone_numbers,
            &now.phone_numbers,
            &managed.phone_labels,
        )),
    };
    // Every custom value the contact has, managed or not, plus managed ones it lacks.
    let mut custom: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for field in &current.custom_fields {
        // A value of a type this version does not know is kept by Quo, never written back.
        if field.field_type.as_ref().is_some_and(|t| !t.is_writable()) {
            continue;
        }
        if let Some(key) = &field.key {
            custom.insert(key.clone(), field.value.clone());
        }
    }
    for key in &managed.custom_keys {
        let value = desired
            .custom_fields
            .get(key)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        if value.is_null() && !custom.contains_key(key) {
            continue;
        }
        custom.insert(key.clone(), value);
    }
    PatchContact {
        external_id: None,
        source: None,
        source_url: None,
        default_fields: Some(default_fields),
        custom_fields: Some(
            custom
                .into_iter()
                .map(|(key, value)| CustomFieldValue { key, value })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quo::types::ContactCustomField;
    use serde_json::json;

    fn item(id: &str, name: &str, value: &str) -> ContactItem {
        ContactItem {
            id: Some(id.into()),
            name: name.into(),
            value: Some(value.into()),
        }
    }

    #[test]
    fn patch_keeps_ids_removes_with_null_and_keeps_unmanaged() {
        let managed = Managed {
            email_labels: vec!["email".into(), "work".into()],
            phone_labels: vec!["phone".into()],
            custom_keys: vec!["vip".into(), "lead-score".into()],
            default_fields: vec![field::FIRST_NAME, field::COMPANY],
        };
        let mut contact: Contact = serde_json::from_value(json!({"id": "c1"})).unwrap();
        contact.default_fields.first_name = Some("Ada".into());
        // Not managed: typed in Quo, never cleared by a PATCH.
        contact.default_fields.role = Some("Founder".into());
        contact.default_fields.emails = vec![
            item("e1", "email", "ada@old.io"),
            item("e2", "work", "ada@work.io"),
            item("e3", "home", "ada@home.io"),
        ];
        contact.default_fields.phone_numbers = vec![item("p1", "phone", "+14155550100")];
        contact.custom_fields = vec![
            ContactCustomField {
                name: None,
                key: Some("vip".into()),
                id: None,
                field_type: None,
                value: json!(false),
            },
            ContactCustomField {
                name: None,
                key: Some("notes".into()),
                id: None,
                field_type: None,
                value: json!("typed in app"),
            },
        ];
        let mut desired = Snapshot {
            first_name: Some("Ada".into()),
            ..Default::default()
        };
        desired.emails = vec![Labeled {
            name: "email".into(),
            value: "ada@new.io".into(),
        }];
        desired.phone_numbers = vec![Labeled {
            name: "phone".into(),
            value: "+14155550100".into(),
        }];
        desired.custom_fields.insert("vip".into(), json!(true));
        desired.custom_fields.insert("lead-score".into(), json!(7));

        let body = patch_body(&desired, Some(&contact), &managed);
        let fields = body.default_fields.unwrap();
        assert_eq!(fields.first_name, None, "unchanged scalar is not sent");
        assert_eq!(fields.role, None, "an unmanaged scalar is never sent");
        assert_eq!(
            fields.emails.unwrap(),
            vec![
                ContactItem {
                    id: Some("e1".into()),
                    name: "email".into(),
                    value: Some("ada@new.io".into())
                },
                ContactItem {
                    id: Some("e2".into()),
                    name: "work".into(),
                    value: None
                },
                item("e3", "home", "ada@home.io"),
            ]
        );
        assert_eq!(
            fields.phone_numbers.unwrap(),
            vec![item("p1", "phone", "+14155550100")]
        );
        let custom: BTreeMap<_, _> = body
            .custom_fields
            .unwrap()
            .into_iter()
            .map(|c| (c.key, c.value))
            .collect();
        assert_eq!(custom["vip"], json!(true));
        assert_eq!(custom["lead-score"], json!(7));
        assert_eq!(
            custom["notes"],
            json!("typed in app"),
            "unmanaged custom value is sent back"
        );
    }

    #[test]
    fn create_body_skips_empty_custom_values() {
        let mut snapshot = Snapshot {
            first_name: Some("Bo".into()),
            ..Default::default()
        };
        snapshot
            .custom_fields
            .insert("vip".into(), serde_json::Value::Null);
        snapshot.custom_fields.insert("tags".into(), json!(["a"]));
        let body = create_body(&snapshot, "c-9", "quo-sync", None);
        assert_eq!(
            body.custom_fields,
            vec![CustomFieldValue {
                key: "tags".into(),
                value: json!(["a"])
            }]
        );
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["externalId"], "c-9");
        assert_eq!(json["source"], "quo-sync");
        assert!(json["defaultFields"].get("firstName").is_some());
    }
}
