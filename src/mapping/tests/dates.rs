//! Date rules (quo-api.md decision 9): zones, DST edges, slashed-date order by region.

use super::*;

fn mapper_in(region: &str, timezone: &str) -> Mapper {
    let mut config = example_config();
    config.default_region = region.into();
    config.timezone = timezone.into();
    Mapper::new(&config, &example_workspace_defs()).unwrap()
}

fn date_in(m: &Mapper, raw: &str) -> Result<Value, MappingError> {
    m.map(&record(&[("renewal_date", raw)]))
        .map(|s| s.custom_fields["renewal-date"].clone())
}

fn date_back(m: &Mapper, quo: &str) -> String {
    let mut s = Snapshot::default();
    s.custom_fields.insert("renewal-date".into(), json!(quo));
    m.to_crm_fields(&s, &["custom:renewal-date".into()])
        .unwrap()["renewal_date"]
        .clone()
}

#[test]
fn a_date_only_value_is_midnight_in_the_configured_zone_both_ways() {
    let m = mapper_in("US", "America/New_York");
    // Quo's own example: local midnight in US Eastern.
    assert_eq!(
        date_in(&m, "2024-09-11").unwrap(),
        json!("2024-09-11T04:00:00.000Z")
    );
    assert_eq!(date_back(&m, "2024-09-11T04:00:00.000Z"), "2024-09-11");
    // Winter: UTC-5. A naive date-time is local time too; an offset is kept.
    assert_eq!(
        date_in(&m, "01/15/2026").unwrap(),
        json!("2026-01-15T05:00:00.000Z")
    );
    assert_eq!(
        date_in(&m, "2026-01-15 09:30:00").unwrap(),
        json!("2026-01-15T14:30:00.000Z")
    );
    assert_eq!(
        date_in(&m, "2026-01-15T09:30:00Z").unwrap(),
        json!("2026-01-15T09:30:00.000Z")
    );
    // Not the start of a day there: the instant, unchanged.
    assert_eq!(
        date_back(&m, "2026-01-15T00:00:00.000Z"),
        "2026-01-15T00:00:00Z"
    );
    // East of UTC the day starts the evening before in UTC.
    let tokyo = mapper_in("GB", "Asia/Tokyo");
    assert_eq!(
        date_in(&tokyo, "2026-03-01").unwrap(),
        json!("2026-02-28T15:00:00.000Z")
    );
    assert_eq!(date_back(&tokyo, "2026-02-28T15:00:00.000Z"), "2026-03-01");
}

#[test]
fn midnight_swallowed_by_dst_is_the_first_instant_of_the_day() {
    // Santiago skipped 00:00-01:00 on 2022-09-11.
    let m = mapper_in("CL", "America/Santiago");
    let quo = date_in(&m, "2022-09-11").unwrap();
    assert_eq!(quo, json!("2022-09-11T04:00:00.000Z"));
    assert_eq!(date_back(&m, quo.as_str().unwrap()), "2022-09-11");
    // Samoa skipped 2011-12-30 entirely: refused, not moved to another day.
    let apia = mapper_in("WS", "Pacific/Apia");
    let err = date_in(&apia, "2011-12-30").unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.value.as_str()),
        ("renewal_date", "2011-12-30")
    );
    assert!(err.reason.contains("does not exist"), "{err}");
}

#[test]
fn slashed_dates_follow_the_region() {
    let us = mapper_in("US", "UTC");
    let gb = mapper_in("GB", "UTC");
    let de = mapper_in("DE", "UTC");
    let ca = mapper_in("CA", "UTC");
    assert_eq!(
        date_in(&us, "03/01/2026").unwrap(),
        json!("2026-03-01T00:00:00.000Z")
    );
    assert_eq!(
        date_in(&gb, "03/01/2026").unwrap(),
        json!("2026-01-03T00:00:00.000Z")
    );
    assert_eq!(
        date_in(&de, "31/12/2026").unwrap(),
        json!("2026-12-31T00:00:00.000Z")
    );
    assert!(date_in(&us, "31/12/2026").is_err());
    assert!(date_in(&gb, "12/31/2026").is_err());
    // Where the order is not settled: one reading is accepted, two are refused with a reason.
    assert_eq!(
        date_in(&ca, "31/12/2026").unwrap(),
        json!("2026-12-31T00:00:00.000Z")
    );
    assert_eq!(
        date_in(&ca, "07/07/2026").unwrap(),
        json!("2026-07-07T00:00:00.000Z")
    );
    assert_eq!(
        date_in(&ca, "2026/03/01").unwrap(),
        json!("2026-03-01T00:00:00.000Z")
    );
    let err = date_in(&ca, "03/01/2026").unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.value.as_str()),
        ("renewal_date", "03/01/2026")
    );
    assert!(err.reason.contains("ambiguous"), "{err}");
}

#[test]
fn an_unknown_time_zone_is_a_config_error_naming_the_key() {
    let mut config = example_config();
    config.timezone = "Mars/Olympus_Mons".into();
    let err = Mapper::new(&config, &example_workspace_defs()).unwrap_err();
    assert!(matches!(err, MappingConfigError::BadTimezone { .. }));
    assert!(
        err.to_string()
            .starts_with("mapping.timezone: \"Mars/Olympus_Mons\""),
        "{err}"
    );
}

mod date_props {
    use super::*;
    use chrono::{Duration, NaiveDate};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// A date-only CRM value sent to Quo and read back is the same day, in every zone,
        /// on every day from 1950 to 2100 (DST changes included).
        #[test]
        fn a_day_survives_the_round_trip(
            days in 0i64..(150 * 366),
            zone in 0usize..chrono_tz::TZ_VARIANTS.len(),
            slashed in any::<bool>(),
        ) {
            let zone = chrono_tz::TZ_VARIANTS[zone];
            let day = NaiveDate::from_ymd_opt(1950, 1, 1).unwrap() + Duration::days(days);
            let m = mapper_in("US", zone.name());
            let raw = if slashed {
                day.format("%m/%d/%Y").to_string()
            } else {
                day.format("%Y-%m-%d").to_string()
            };
            match date_in(&m, &raw) {
                Ok(quo) => {
                    let back = date_back(&m, quo.as_str().unwrap());
                    prop_assert_eq!(back, day.format("%Y-%m-%d").to_string(), "{} in {}", raw, zone.name());
                }
                // Only a day the zone skipped entirely may be refused.
                Err(e) => prop_assert!(e.reason.contains("does not exist"), "{}", e),
            }
        }
    }

    #[test]
    fn dst_edges_round_trip() {
        for (zone, day) in [
            ("America/New_York", "2024-03-10"),
            ("America/New_York", "2024-11-03"),
            ("Europe/London", "2024-03-31"),
            ("Europe/London", "2024-10-27"),
            ("America/Sao_Paulo", "2018-11-04"),
            ("America/Sao_Paulo", "2019-02-17"),
            ("America/Havana", "2023-03-12"),
            ("Asia/Beirut", "2023-03-26"),
            ("America/Santiago", "2022-09-11"),
            ("Australia/Lord_Howe", "2024-10-06"),
            ("Pacific/Chatham", "2024-09-29"),
        ] {
            let m = mapper_in("US", zone);
            let quo = date_in(&m, day).unwrap();
            assert_eq!(date_back(&m, quo.as_str().unwrap()), day, "{zone} {day}");
        }
    }
}
