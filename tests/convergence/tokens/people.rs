//! What people do in this world: edit the Salesforce org and the Quo app, now and then the same
//! field on both sides, and add CRM records; each change logged as the sync will see it.

use super::*;

/// What one managed field is called on each side: the Salesforce key and what the Quo app edits.
#[derive(Clone, Copy)]
pub(super) struct Field {
    pub(super) crm: &'static str,
    pub(super) quo: QuoField,
}

#[derive(Clone, Copy)]
pub(super) enum QuoField {
    /// A `defaultFields` text value.
    Text(&'static str),
    /// The item labelled `label` in a `defaultFields` list.
    Item(&'static str, &'static str),
}

/// The fields both sides edit (the account name is the CRM's alone: `company` goes to Quo only).
pub(super) const FIELDS: [Field; 6] = [
    Field {
        crm: "FirstName",
        quo: QuoField::Text("firstName"),
    },
    Field {
        crm: "LastName",
        quo: QuoField::Text("lastName"),
    },
    Field {
        crm: "Title",
        quo: QuoField::Text("role"),
    },
    Field {
        crm: "Email",
        quo: QuoField::Item("emails", "work"),
    },
    Field {
        crm: "Phone",
        quo: QuoField::Item("phoneNumbers", "work"),
    },
    Field {
        crm: "MobilePhone",
        quo: QuoField::Item("phoneNumbers", "mobile"),
    },
];

impl Field {
    /// A value nobody typed before, made from `n`, by `who` (`crm`, `quo`).
    pub(super) fn value(self, who: &str, n: u32) -> String {
        match self.quo {
            QuoField::Text(_) => format!("{who}{n}"),
            QuoField::Item("emails", _) => format!("{who}{n}@example.com"),
            QuoField::Item(..) => format!("+1415555{:04}", 2000 + n % 7000),
        }
    }
}

impl World {
    /// A person edits a CRM field (or, one time in seven, the account name).
    pub(super) fn crm_edit(&mut self) {
        let id = crm_id(self.rng.random_range(0..self.records));
        let n = self.next_n();
        if self.rng.random_bool(1.0 / 7.0) {
            let name = format!("crm{n} Inc");
            trace(|| format!("crm edit {id} Account.Name = {name:?}"));
            self.crm_put(
                &id,
                "Account",
                json!({ "attributes": { "type": "Account" }, "Name": name }),
            );
            return;
        }
        let field = FIELDS[self.rng.random_range(0..FIELDS.len())];
        let value = field.value("crm", n);
        trace(|| format!("crm edit {id} {} = {value:?}", field.crm));
        self.crm_put(&id, field.crm, json!(value));
    }

    /// Sets `key` of CRM record `id` and logs what changed for the sync.
    pub(super) fn crm_put(&mut self, id: &str, key: &str, value: Value) {
        let before = self.crm_fields(&self.crm.contact(id).unwrap());
        self.crm.edit(id, key, value);
        let after = self.crm_fields(&self.crm.contact(id).unwrap());
        for (field, value) in after {
            if before.get(&field) != Some(&value) {
                self.log.put(id, &field, Side::Crm, value);
            }
        }
    }

    /// A new CRM record.
    pub(super) fn crm_add(&mut self) {
        let i = self.records;
        let mut record = crm_record(i);
        self.crm.touch(&mut record);
        trace(|| format!("crm add {}", crm_id(i)));
        for (field, value) in self.crm_fields(&record) {
            self.log.put(&crm_id(i), &field, Side::Crm, value);
        }
        self.crm.books().contacts.insert(crm_id(i), record);
        self.records += 1;
    }

    /// A record's one contact (a person cannot tell twins apart: records with two are left).
    pub(super) fn one_contact(&mut self, id: &str) -> Option<Value> {
        let mut found = self.contacts_by_record().remove(id).unwrap_or_default();
        (found.len() == 1).then(|| found.remove(0))
    }

    /// A person edits `field` of `id`'s contact in the Quo app; logs what changed for the sync.
    pub(super) async fn quo_put(&mut self, id: &str, field: Field) {
        let Some(contact) = self.one_contact(id) else {
            return; // not synced yet, or a twin the quiet cycles remove
        };
        let n = self.next_n();
        let value = field.value("quo", n);
        let patch = match field.quo {
            QuoField::Text(key) => json!({ "defaultFields": { key: value } }),
            QuoField::Item(list, label) => {
                let item = contact["defaultFields"][list]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|i| i["name"] == label)
                    .and_then(|i| i["id"].as_str());
                let item = match item {
                    Some(item) => json!({ "id": item, "name": label, "value": value }),
                    None => json!({ "name": label, "value": value }),
                };
                json!({ "defaultFields": { list: [item] } })
            }
        };
        trace(|| format!("quo edit {id} {} = {value:?}", field.crm));
        let before = self.quo_fields(&contact);
        let after = self
            .sandbox
            .app_edit(contact["id"].as_str().unwrap(), patch)
            .expect("the app edit applies");
        for (field, value) in self.quo_fields(&after) {
            if before.get(&field) != Some(&value) {
                self.log.put(id, &field, Side::Quo, value);
            }
        }
        // Timestamps in milliseconds: the next edit is later.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    pub(super) async fn quo_edit(&mut self) {
        let id = crm_id(self.rng.random_range(0..self.records));
        let field = FIELDS[self.rng.random_range(0..FIELDS.len())];
        self.quo_put(&id, field).await;
    }

    /// One field of one record changed on both sides before the sync runs, in either order.
    pub(super) async fn edit_on_both_sides(&mut self) {
        let id = crm_id(self.rng.random_range(0..self.records));
        let field = FIELDS[self.rng.random_range(0..FIELDS.len())];
        let crm_first = self.rng.random_bool(0.5);
        trace(|| {
            format!(
                "both sides edit {id} {} (CRM first: {crm_first})",
                field.crm
            )
        });
        if !crm_first {
            self.quo_put(&id, field).await;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
        let n = self.next_n();
        self.crm_put(&id, field.crm, json!(field.value("crm", n)));
        if crm_first {
            tokio::time::sleep(Duration::from_millis(3)).await;
            self.quo_put(&id, field).await;
        }
    }
}
