//! The tolerant reader (quo-api.md decision 8): lenient responses parse, normalise, and map
//! like the CRM row they mirror.

use super::*;

/// A Quo response in every shape the spec allows (decision 8): nulls in arrays and names, a
/// key-less item, string-typed number and boolean, a new type, a multi-select in Quo's order.
fn lenient_contact() -> Contact {
    serde_json::from_value(json!({
        "id": "q1",
        "externalId": "c-1",
        "defaultFields": {
            "firstName": "Ada",
            "emails": [null, {"id": "e1", "name": null, "value": "x@y.example"},
                       {"id": "e2", "name": "email", "value": "ada@x.example"}],
            "phoneNumbers": null
        },
        "customFields": [
            null,
            {"name": "Lead Score", "type": "number", "value": "424242"},
            {"name": "VIP", "key": "vip", "value": "false"},
            {"name": "Tags", "key": "tags", "type": "multi-select", "value": ["enterprise", null, "vip"]},
            {"name": "Region Code", "key": "region-code", "type": "currency", "value": {"amount": 3}},
            {"name": null, "key": "notes", "type": "string", "value": "kept"}
        ]
    }))
    .expect("a lenient response parses")
}

#[test]
fn lenient_responses_parse_and_normalize() {
    let mut contact = lenient_contact();
    assert_eq!(contact.default_fields.emails.len(), 2, "null item dropped");
    assert_eq!(
        contact.default_fields.emails[0].name, "",
        "null name reads empty"
    );
    assert!(contact.default_fields.phone_numbers.is_empty());
    assert_eq!(contact.custom_fields.len(), 5);

    let mut defs = example_workspace_defs();
    defs.push(CustomFieldDef {
        name: "Region Code".into(),
        key: "region-code".into(),
        field_type: CustomFieldType::Unknown("currency".into()),
    });
    normalize_contact(&mut contact, &defs);
    let item = |key: &str| {
        contact
            .custom_fields
            .iter()
            .find(|c| c.key.as_deref() == Some(key))
            .unwrap_or_else(|| panic!("no item with key {key}"))
    };
    assert_eq!(
        item("lead-score").value,
        json!(424242),
        "key filled by name"
    );
    assert_eq!(item("lead-score").field_type, Some(CustomFieldType::Number));
    assert_eq!(item("vip").value, json!(false));
    assert_eq!(item("tags").value, json!(["enterprise", "vip"]));
    assert_eq!(
        item("region-code").value,
        json!({"amount": 3}),
        "kept as read"
    );
    assert!(
        !item("region-code")
            .field_type
            .clone()
            .unwrap()
            .is_writable()
    );
    // The unknown type round-trips to its wire name, so nothing is lost when it is stored.
    let stored = serde_json::to_value(item("region-code")).unwrap();
    assert_eq!(stored["type"], json!("currency"));
}

#[test]
fn from_contact_reads_lenient_values_like_the_crm_row() {
    let m = mapper();
    let crm = m
        .map(&record(&[
            ("first_name", "Ada"),
            ("email", "ada@x.example"),
            ("lead_score", "424242"),
            ("vip", "no"),
            ("tags", "vip;enterprise"),
        ]))
        .unwrap();
    // Without normalising: key-less item found by name, strings read as their type.
    let quo = m.from_contact(&lenient_contact());
    assert_eq!(quo.custom_fields["lead-score"], json!(424242));
    assert_eq!(quo.custom_fields["vip"], json!(false));
    assert!(
        crm.changed_fields(&quo).is_empty(),
        "{:?}",
        crm.changed_fields(&quo)
    );
    let mut normalized = lenient_contact();
    normalize_contact(&mut normalized, &example_workspace_defs());
    assert_eq!(m.from_contact(&normalized), quo);
}

#[test]
fn mapping_an_unknown_type_is_a_config_error() {
    let mut defs = example_workspace_defs();
    defs[1].field_type = CustomFieldType::Unknown("currency".into());
    let err = Mapper::new(&example_config(), &defs).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("mapping.custom_fields[1].name") && text.contains("\"currency\""),
        "{text}"
    );
}

#[test]
fn normalize_leaves_ambiguous_or_unknown_names_keyless() {
    let mut contact: Contact = serde_json::from_value(json!({
        "id": "q2",
        "customFields": [{"name": "score", "value": "7"}, {"name": "Nobody", "value": "x"}]
    }))
    .unwrap();
    let defs = vec![
        CustomFieldDef {
            name: "Score".into(),
            key: "k1".into(),
            field_type: CustomFieldType::Number,
        },
        CustomFieldDef {
            name: "SCORE".into(),
            key: "k2".into(),
            field_type: CustomFieldType::String,
        },
    ];
    normalize_contact(&mut contact, &defs);
    assert_eq!(
        contact.custom_fields[0].key, None,
        "two case-insensitive matches"
    );
    assert_eq!(contact.custom_fields[0].value, json!("7"));
    assert_eq!(contact.custom_fields[1].key, None);
}
