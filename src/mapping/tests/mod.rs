//! Unit tests of the mapping rules, through the public `Mapper` where possible.

use super::*;
use crate::config::CustomFieldMapping;
use crate::config::{LabeledFieldMapping, MappingConfig};
use crate::domain::ExternalId;
use crate::domain::{Labeled, Snapshot};
use crate::quo::types::{Contact, ContactItem, CustomFieldDef, CustomFieldType};
use crate::quo::types::{ContactCustomField, DefaultFields};
use crate::source::SourceRecord;
use chrono::Utc;
use serde_json::Value;
use serde_json::json;

fn example_config() -> MappingConfig {
    let labeled = |field: &str, label: &str| LabeledFieldMapping {
        field: field.into(),
        label: label.into(),
    };
    let custom = |name: &str, field: &str| CustomFieldMapping {
        name: name.into(),
        field: field.into(),
        delimiter: None,
    };
    MappingConfig {
        default_region: "US".into(),
        first_name: Some("first_name".into()),
        last_name: Some("last_name".into()),
        company: Some("company".into()),
        role: Some("role".into()),
        emails: vec![labeled("email", "email"), labeled("work_email", "work")],
        phones: vec![labeled("phone", "phone"), labeled("mobile", "mobile")],
        custom_fields: vec![
            custom("Lead Score", "lead_score"),
            custom("VIP", "vip"),
            custom("Renewal Date", "renewal_date"),
            custom("Tags", "tags"),
            custom("Website", "website"),
        ],
        timezone: "UTC".into(),
    }
}

fn mapper() -> Mapper {
    Mapper::new(&example_config(), &example_workspace_defs()).unwrap()
}

fn record(pairs: &[(&str, &str)]) -> SourceRecord {
    SourceRecord {
        external_id: ExternalId::parse("c-1").unwrap(),
        fields: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        updated_at: None,
        location: "test line 2".into(),
    }
}

fn custom_value(field: &str, raw: &str) -> Result<Value, MappingError> {
    let m = mapper();
    let key = m
        .custom
        .iter()
        .find(|c| c.field.column() == Some(field))
        .unwrap()
        .key
        .clone();
    m.map(&record(&[(field, raw)]))
        .map(|s| s.custom_fields[&key].clone())
}

#[test]
fn maps_a_full_row() {
    let snapshot = mapper()
        .map(&record(&[
            ("first_name", "  Ada "),
            ("last_name", "Lovelace"),
            ("company", ""),
            ("email", "Ada@Example.COM"),
            ("phone", "(415) 555-0132"),
            ("mobile", "+44 20 7946 0958"),
            ("lead_score", "1,234.5"),
            ("vip", "Y"),
            ("renewal_date", "2026-03-01"),
            ("tags", "vip; enterprise;;vip"),
            ("website", "example.com"),
            ("ignored", "whatever"),
        ]))
        .unwrap();
    assert_eq!(snapshot.first_name.as_deref(), Some("Ada"));
    assert_eq!(snapshot.company, None);
    assert_eq!(snapshot.role, None);
    assert_eq!(
        snapshot.emails,
        vec![Labeled {
            name: "email".into(),
            value: "Ada@example.com".into()
        }]
    );
    assert_eq!(
        snapshot.phone_numbers,
        vec![
            Labeled {
                name: "phone".into(),
                value: "+14155550132".into()
            },
            Labeled {
                name: "mobile".into(),
                value: "+442079460958".into()
            },
        ]
    );
    let c = &snapshot.custom_fields;
    assert_eq!(c["lead-score"], json!(1234.5));
    assert_eq!(c["vip"], json!(true));
    assert_eq!(c["renewal-date"], json!("2026-03-01T00:00:00.000Z"));
    assert_eq!(c["tags"], json!(["vip", "enterprise"]));
    assert_eq!(c["website"], json!("https://example.com"));
    assert_eq!(c.len(), 5);
}

#[test]
fn empty_values_are_absent_and_custom_keys_null() {
    let snapshot = mapper().map(&record(&[])).unwrap();
    assert_eq!(snapshot.first_name, None);
    assert!(snapshot.emails.is_empty() && snapshot.phone_numbers.is_empty());
    assert_eq!(snapshot.custom_fields.len(), 5);
    assert!(snapshot.custom_fields.values().all(Value::is_null));
}

#[test]
fn number_coercions() {
    for (raw, expected) in [
        ("42", json!(42)),
        ("42.0", json!(42)),
        ("-3.5", json!(-3.5)),
        ("+7", json!(7)),
        ("1,234.5", json!(1234.5)),
        ("1,234,567", json!(1234567)),
        ("0.1", json!(0.1)),
        ("  85 ", json!(85)),
        ("", Value::Null),
    ] {
        assert_eq!(
            custom_value("lead_score", raw).unwrap(),
            expected,
            "{raw:?}"
        );
    }
    for raw in [
        "abc",
        "NaN",
        "inf",
        "-infinity",
        "1e999",
        "12,34",
        "1,2345",
        "--1",
        "1.2.3",
        ".",
    ] {
        let err = custom_value("lead_score", raw).unwrap_err();
        assert_eq!(err.field, "lead_score");
        assert_eq!(err.value, raw.trim());
    }
}

#[test]
fn boolean_coercions() {
    for raw in ["true", "TRUE", "yes", "Y", "1", "on", "On"] {
        assert_eq!(custom_value("vip", raw).unwrap(), json!(true), "{raw:?}");
    }
    for raw in ["false", "No", "n", "0", "off"] {
        assert_eq!(custom_value("vip", raw).unwrap(), json!(false), "{raw:?}");
    }
    assert_eq!(custom_value("vip", "").unwrap(), Value::Null);
    let err = custom_value("vip", "maybe").unwrap_err();
    assert!(err.to_string().contains("\"vip\"") && err.to_string().contains("maybe"));
}

#[test]
fn date_coercions() {
    for (raw, expected) in [
        ("2026-03-01", "2026-03-01T00:00:00.000Z"),
        ("03/01/2026", "2026-03-01T00:00:00.000Z"),
        ("2026-03-01T10:30:00Z", "2026-03-01T10:30:00.000Z"),
        ("2026-03-01T10:30:00+02:00", "2026-03-01T08:30:00.000Z"),
        ("2024-09-11T04:00:00.000Z", "2024-09-11T04:00:00.000Z"),
    ] {
        assert_eq!(
            custom_value("renewal_date", raw).unwrap(),
            json!(expected),
            "{raw:?}"
        );
    }
    for raw in ["tomorrow", "2026-13-01", "31/12/2026", "2026-02-30"] {
        assert!(custom_value("renewal_date", raw).is_err(), "{raw:?}");
    }
}

#[test]
fn multi_select_and_url_coercions() {
    assert_eq!(
        custom_value("tags", " b ;a;b; ;c ").unwrap(),
        json!(["b", "a", "c"])
    );
    assert_eq!(custom_value("tags", " ; ;").unwrap(), Value::Null);
    for (raw, expected) in [
        ("https://acme.example/x?y=1", "https://acme.example/x?y=1"),
        ("http://acme.example", "http://acme.example"),
        ("acme.example", "https://acme.example"),
        ("www.acme.example/path", "https://www.acme.example/path"),
    ] {
        assert_eq!(
            custom_value("website", raw).unwrap(),
            json!(expected),
            "{raw:?}"
        );
    }
    for raw in ["ftp://acme.example", "not a url", "acme", "https://"] {
        assert!(custom_value("website", raw).is_err(), "{raw:?}");
    }
}

#[test]
fn multi_select_uses_configured_delimiter() {
    let mut config = example_config();
    config.custom_fields[3].delimiter = Some("|".into());
    let m = Mapper::new(&config, &example_workspace_defs()).unwrap();
    let s = m.map(&record(&[("tags", "a|b;c")])).unwrap();
    assert_eq!(s.custom_fields["tags"], json!(["a", "b;c"]));
    let back = m.to_crm_fields(&s, &["custom:tags".into()]).unwrap();
    assert_eq!(back["tags"], "a|b;c");
}

#[test]
fn bad_email_and_phone_name_field_and_value() {
    let err = mapper()
        .map(&record(&[("phone", "555-CALL-NOW")]))
        .unwrap_err();
    assert_eq!(err.field, "phone");
    assert_eq!(err.value, "555-CALL-NOW");
    let err = mapper()
        .map(&record(&[("work_email", "not-an-address")]))
        .unwrap_err();
    assert_eq!(err.field, "work_email");
    assert!(
        err.to_string()
            .starts_with("field \"work_email\": value \"not-an-address\"")
    );
}

#[test]
fn phone_normalization_of_sample_numbers() {
    for (raw, expected) in [
        ("(415) 555-0132", "+14155550132"),
        ("415.555.0199", "+14155550199"),
        ("415 555 0143", "+14155550143"),
        ("  212-555-0175 ", "+12125550175"),
        ("+1 (312) 555-0188", "+13125550188"),
        ("+44 20 7946 0958", "+442079460958"),
        ("6175550111", "+16175550111"),
    ] {
        assert_eq!(normalize_phone(raw, "US").unwrap(), expected, "{raw:?}");
    }
    assert_eq!(
        normalize_phone("020 7946 0958", "gb").unwrap(),
        "+442079460958"
    );
    for raw in [
        "555-CALL-NOW",
        "",
        "12",
        "+15555550100",
        "hello",
        "415-555-0132 ext. 12",
    ] {
        assert!(normalize_phone(raw, "US").is_err(), "{raw:?}");
    }
    assert!(normalize_phone("415 555 0132", "XX").is_err());
}

#[test]
fn unknown_custom_field_names_key_and_lists_available() {
    let mut config = example_config();
    config.custom_fields[1].name = "V.I.P.".into();
    let err = Mapper::new(&config, &example_workspace_defs()).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("mapping.custom_fields[1].name"), "{text}");
    assert!(text.contains("\"V.I.P.\""), "{text}");
    assert!(
        text.contains("Lead Score, VIP, Renewal Date, Tags, Website, Mailing Address, Notes"),
        "{text}"
    );
}

#[test]
fn custom_field_names_resolve_exact_then_case_insensitive() {
    let mut config = example_config();
    config.custom_fields[0].name = "lead score".into();
    let m = Mapper::new(&config, &example_workspace_defs()).unwrap();
    assert_eq!(m.custom_field_keys()[0], "lead-score");

    let defs = vec![
        CustomFieldDef {
            name: "score".into(),
            key: "k1".into(),
            field_type: CustomFieldType::Number,
        },
        CustomFieldDef {
            name: "Score".into(),
            key: "k2".into(),
            field_type: CustomFieldType::Number,
        },
    ];
    let config = MappingConfig {
        custom_fields: vec![CustomFieldMapping {
            name: "Score".into(),
            field: "s".into(),
            delimiter: None,
        }],
        ..MappingConfig::default()
    };
    assert_eq!(
        Mapper::new(&config, &defs).unwrap().custom_field_keys(),
        ["k2"]
    );
}

#[test]
fn config_errors() {
    let mut config = example_config();
    config.default_region = "ZZ".into();
    assert!(matches!(
        Mapper::new(&config, &example_workspace_defs()),
        Err(MappingConfigError::BadRegion { .. })
    ));
    let mut config = example_config();
    config.phones[1].label = "phone".into();
    let err = Mapper::new(&config, &example_workspace_defs()).unwrap_err();
    assert!(err.to_string().contains("mapping.phones[1].label"), "{err}");
    let mut config = example_config();
    config.custom_fields[1].name = "lead score".into();
    let err = Mapper::new(&config, &example_workspace_defs()).unwrap_err();
    assert!(matches!(
        err,
        MappingConfigError::DuplicateCustomField { index: 1, .. }
    ));
}

#[test]
fn fingerprint_tracks_mapped_values_only() {
    let m = mapper();
    let base = record(&[("first_name", "Ada"), ("notes_col", "x"), ("vip", "yes")]);
    let fp = m.fingerprint(&base);
    let mut other = base.clone();
    other.fields.insert("notes_col".into(), "changed".into());
    other.updated_at = Some(Utc::now());
    other.location = "elsewhere".into();
    assert_eq!(m.fingerprint(&other), fp);
    other.fields.insert("vip".into(), "no".into());
    assert_ne!(m.fingerprint(&other), fp);
    let mut blank = base.clone();
    blank.fields.insert("company".into(), String::new());
    assert_eq!(m.fingerprint(&blank), fp, "absent and empty are the same");
    let mut spaced = base.clone();
    spaced.fields.insert("first_name".into(), "Ada ".into());
    assert_ne!(m.fingerprint(&spaced), fp, "raw values take part");

    let mut config = example_config();
    config.role = None;
    let m2 = Mapper::new(&config, &example_workspace_defs()).unwrap();
    assert_ne!(m2.fingerprint(&base), fp, "the mapping takes part");
}

#[test]
fn round_trip_through_crm_fields() {
    let m = mapper();
    let original = record(&[
        ("first_name", "Grace"),
        ("last_name", "Hopper"),
        ("company", "Navy"),
        ("role", "Rear Admiral"),
        ("email", "grace@NAVY.example"),
        ("mobile", "415.555.0199"),
        ("lead_score", "0.25"),
        ("vip", "no"),
        ("renewal_date", "2026-03-01T10:30:00Z"),
        ("tags", "a;b"),
        ("website", "navy.example"),
    ]);
    let snapshot = m.map(&original).unwrap();
    let all: Vec<String> = snapshot.fields().keys().cloned().collect();
    let crm = m.to_crm_fields(&snapshot, &all).unwrap();
    assert_eq!(crm["work_email"], "");
    assert_eq!(crm["phone"], "");
    assert_eq!(crm["mobile"], "+14155550199");
    assert_eq!(crm["lead_score"], "0.25");
    assert_eq!(crm["vip"], "false");
    assert_eq!(crm["renewal_date"], "2026-03-01T10:30:00Z");
    let mut again = original.clone();
    again.fields.extend(crm);
    assert_eq!(m.map(&again).unwrap(), snapshot);

    let mut midnight = snapshot.clone();
    midnight.set_field("custom:renewal-date", json!("2026-04-01T00:00:00.000Z"));
    midnight.set_field("custom:lead-score", json!(1e21));
    let crm = m
        .to_crm_fields(
            &midnight,
            &[
                "custom:renewal-date".into(),
                "custom:lead-score".into(),
                "custom:unknown".into(),
                "sourceUrl".into(),
            ],
        )
        .unwrap();
    assert_eq!(crm.len(), 2);
    assert_eq!(crm["renewal_date"], "2026-04-01");
    assert_eq!(
        m.map(&record(&[("lead_score", &crm["lead_score"])]))
            .unwrap()
            .custom_fields["lead-score"],
        json!(1e21)
    );
}

#[test]
fn to_crm_fields_rejects_wrong_json_types() {
    let m = mapper();
    let mut s = Snapshot::default();
    s.custom_fields.insert("vip".into(), json!("sure"));
    let err = m.to_crm_fields(&s, &["custom:vip".into()]).unwrap_err();
    assert_eq!(err.field, "vip");
    assert_eq!(err.value, "\"sure\"");
}

#[test]
fn from_contact_keeps_managed_fields_only() {
    let m = mapper();
    let item = |name: &str, value: &str| ContactItem {
        id: Some(format!("id-{name}")),
        name: name.into(),
        value: Some(value.into()),
    };
    let custom = |key: &str, value: Value| ContactCustomField {
        name: None,
        key: Some(key.into()),
        id: None,
        field_type: None,
        value,
    };
    let contact = Contact {
        id: "q1".into(),
        external_id: Some("c-1".into()),
        source: Some("quo-sync".into()),
        source_url: None,
        default_fields: DefaultFields {
            first_name: Some("Ada".into()),
            last_name: Some(" ".into()),
            company: None,
            role: None,
            emails: vec![
                item("home", "h@x.example"),
                item("work", "A@X.EXAMPLE"),
                item("email", "a@x.example"),
            ],
            phone_numbers: vec![item("mobile", "+14155550199"), item("fax", "+14155550100")],
        },
        custom_fields: vec![
            custom("vip", json!(true)),
            custom("lead-score", json!(85.0)),
            custom("tags", json!([])),
            custom("renewal-date", json!("2026-03-01T00:00:00Z")),
            custom("notes", json!("unmanaged")),
        ],
        created_at: None,
        updated_at: None,
        created_by_user_id: None,
    };
    let s = m.from_contact(&contact);
    assert_eq!(s.first_name.as_deref(), Some("Ada"));
    assert_eq!(s.last_name, None);
    assert_eq!(
        s.emails
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect::<Vec<_>>(),
        [("email", "a@x.example"), ("work", "A@x.example")]
    );
    assert_eq!(s.phone_numbers.len(), 1);
    assert_eq!(s.custom_fields.len(), 5);
    assert_eq!(s.custom_fields["vip"], json!(true));
    assert_eq!(s.custom_fields["lead-score"], json!(85));
    assert_eq!(s.custom_fields["tags"], Value::Null);
    assert_eq!(s.custom_fields["website"], Value::Null);
    assert_eq!(
        s.custom_fields["renewal-date"],
        json!("2026-03-01T00:00:00.000Z")
    );
    assert!(!s.custom_fields.contains_key("notes"));
    assert_eq!(
        m.managed_labels(),
        (
            vec!["email".to_string(), "work".to_string()],
            vec!["phone".to_string(), "mobile".to_string()]
        )
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn normalize_phone_never_panics(raw in any::<String>(), region in "[A-Z]{2}") {
            let _ = normalize_phone(&raw, &region);
        }

        #[test]
        fn normalize_phone_never_panics_on_phoneish_text(raw in "[-+0-9 ().xX#*;=a-z]{0,40}") {
            if let Ok(e164) = normalize_phone(&raw, "US") {
                prop_assert!(e164.starts_with('+'));
                prop_assert_eq!(normalize_phone(&e164, "US"), Ok(e164.clone()));
            }
        }
    }
}

mod dates;
mod lenient;

/// The raw-cell digest a CSV read computes must equal the ledger digest of the mapper's
/// fingerprint, or every no-change row would be re-planned (or a changed one missed).
#[test]
fn raw_digest_matches_fingerprint_digest_and_sees_changes() {
    let m = mapper();
    let raw = m.raw_fingerprint();
    let fields = [
        ("first_name", "Ada"),
        ("email", "ada@example.com"),
        ("lead_score", "7"),
    ];
    let digest_of = |pairs: &[(&str, &str)]| {
        let rec = record(pairs);
        raw.digest(|i| {
            rec.fields
                .get(&raw.fields()[i])
                .map(String::as_str)
                .unwrap_or_default()
        })
    };
    let rec = record(&fields);
    let expected = crate::ledger::fingerprint_digest(&m.fingerprint(&rec));
    assert_eq!(digest_of(&fields), expected);
    let changed = [
        ("first_name", "Ada"),
        ("email", "ada@example.org"),
        ("lead_score", "7"),
    ];
    assert_ne!(digest_of(&changed), expected);
}

#[test]
fn default_scope_rules_leave_the_fingerprint_as_it_was() {
    // A ledger written before sync.filter existed (or with none configured, in upsert mode)
    // keeps recognising its unchanged rows: the no-change cycle stays a hash lookup.
    let base = record(&[("first_name", "Ada"), ("vip", "yes"), ("tier", "2")]);
    let plain = mapper().fingerprint(&base);
    let (rules, fields) = crate::sync::ScopeRules::default().fingerprint_inputs();
    assert_eq!(
        mapper()
            .fingerprint_also(&rules, &fields)
            .fingerprint(&base),
        plain
    );
    // A filter or another mode does change it, so their judgements are made again.
    let filtered = crate::sync::ScopeRules::from_config(&crate::config::SyncConfig {
        filter: Some("record.tier == \"2\"".into()),
        ..Default::default()
    })
    .unwrap();
    let (rules, fields) = filtered.fingerprint_inputs();
    let scoped = mapper().fingerprint_also(&rules, &fields);
    assert_ne!(scoped.fingerprint(&base), plain);
    let mut other_tier = base.clone();
    other_tier.fields.insert("tier".into(), "3".into());
    assert_ne!(
        scoped.fingerprint(&other_tier),
        scoped.fingerprint(&base),
        "the filter's fields take part"
    );
}
