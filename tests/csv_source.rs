//! The CSV source adapter and the mapping against real files: reading (messy input, bad rows
//! quarantined with their line numbers), surgical atomic write-back, the example files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use quo_sync::config::{Config, CsvEncoding, SourceConfig, SourceKind};
use quo_sync::domain::ExternalId;
use quo_sync::ledger::fingerprint_digest;
use quo_sync::mapping::{Mapper, example_workspace_defs};
use quo_sync::source::csv::CsvSource;
use quo_sync::source::{
    BadRecord, CrmChange, DigestedItem, ReadRequest, ReadSummary, SourceError, SourceItem,
    SourceRecord,
};
use tokio::sync::mpsc;

const EXAMPLE_CSV: &str = "config/contacts.example.csv";
const EXAMPLE_CONFIG: &str = "config/quo-sync.toml";

fn source_config(path: &Path) -> SourceConfig {
    SourceConfig {
        kind: SourceKind::Csv,
        path: Some(path.to_path_buf()),
        id_field: "crm_id".into(),
        updated_at_field: "updated_at".into(),
        rest: None,
        watch: true,
        delimiter: Default::default(),
        encoding: Default::default(),
        quote: Default::default(),
        escape: Default::default(),
        quiet_period: quo_sync::config::HumanDuration(std::time::Duration::from_secs(1)),
    }
}

/// Reads everything through a small channel, as the planner would.
async fn read_all(source: &CsvSource) -> (Vec<SourceRecord>, Vec<BadRecord>, ReadSummary) {
    let (tx, mut rx) = mpsc::channel(2);
    let collect = async {
        let mut items = Vec::new();
        while let Some(item) = rx.recv().await {
            items.push(item);
        }
        items
    };
    let (summary, items) = tokio::join!(source.read(ReadRequest::default(), tx), collect);
    let summary = summary.expect("read succeeds");
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for item in items {
        match item {
            SourceItem::Record(r) => good.push(r),
            SourceItem::Bad(b) => bad.push(b),
        }
    }
    (good, bad, summary)
}

fn write_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

async fn read_bytes(bytes: &[u8]) -> (Vec<SourceRecord>, Vec<BadRecord>, ReadSummary) {
    read_bytes_as(bytes, CsvEncoding::Auto).await
}

async fn read_bytes_as(
    bytes: &[u8],
    encoding: CsvEncoding,
) -> (Vec<SourceRecord>, Vec<BadRecord>, ReadSummary) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "contacts.csv", bytes);
    let config = SourceConfig {
        encoding,
        ..source_config(&path)
    };
    read_all(&CsvSource::new(&config)).await
}

fn change(id: &str, fields: &[(&str, &str)]) -> CrmChange {
    CrmChange {
        external_id: ExternalId::parse(id).unwrap(),
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        updated_at: Utc.with_ymd_and_hms(2026, 11, 27, 3, 0, 0).unwrap(),
    }
}

fn example_mapper() -> Mapper {
    let config = Config::load_with_env(Path::new(EXAMPLE_CONFIG), Vec::new()).unwrap();
    Mapper::new(&config.mapping, &example_workspace_defs()).unwrap()
}

fn dir_entries(dir: &tempfile::TempDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn example_config_loads_and_maps_against_default_defs() {
    let config = Config::load(Path::new(EXAMPLE_CONFIG)).expect("example config loads");
    assert_eq!(config.source.kind, SourceKind::Csv);
    // Read beside the config file (#22), so the same file whatever the working directory.
    assert_eq!(
        config.source.path.as_deref(),
        Some(std::env::current_dir().unwrap().join(EXAMPLE_CSV).as_path())
    );
    assert_eq!(
        config.reverse.fields.keys().collect::<Vec<_>>(),
        ["custom:lead-score", "lastName"],
        "field names keep their case and punctuation"
    );
    let mapper = Mapper::new(&config.mapping, &example_workspace_defs()).expect("mapper builds");
    assert_eq!(
        mapper.custom_field_keys(),
        ["lead-score", "vip", "renewal-date", "tags", "website"]
    );
    assert_eq!(
        mapper.managed_labels(),
        (
            vec!["email".to_string(), "work".to_string()],
            vec!["phone".to_string(), "mobile".to_string()]
        )
    );
}

#[tokio::test]
async fn reads_the_example_file() {
    let source = CsvSource::new(&source_config(Path::new(EXAMPLE_CSV)));
    assert_eq!(source.describe(), format!("csv {EXAMPLE_CSV}"));
    let (good, bad, summary) = read_all(&source).await;
    assert_eq!(
        summary,
        ReadSummary {
            complete: true,
            items: 27
        }
    );
    assert_eq!(good.len(), 25);
    assert_eq!(bad.len(), 2);

    assert_eq!(bad[0].location, format!("{EXAMPLE_CSV} line 27"));
    assert_eq!(bad[0].external_id, None);
    assert!(
        bad[0].reason.contains("\"crm_id\" is empty"),
        "{}",
        bad[0].reason
    );
    assert_eq!(bad[1].location, format!("{EXAMPLE_CSV} line 28"));
    assert_eq!(bad[1].external_id.as_deref(), Some("C-1002"));
    assert!(
        bad[1]
            .reason
            .contains("duplicate id \"C-1002\": already used by line 3"),
        "{}",
        bad[1].reason
    );
    assert!(bad[1].raw.starts_with("C-1002,Grace,Hopper"));

    let first = &good[0];
    assert_eq!(first.external_id.as_str(), "C-1001");
    assert_eq!(first.location, format!("{EXAMPLE_CSV} line 2"));
    assert_eq!(first.fields.len(), 15);
    assert_eq!(
        first.updated_at,
        Some(Utc.with_ymd_and_hms(2026, 1, 15, 9, 30, 0).unwrap())
    );
    let alan = good
        .iter()
        .find(|r| r.external_id.as_str() == "C-1003")
        .unwrap();
    assert_eq!(alan.fields["first_name"], "Alan", "values are trimmed");
    assert_eq!(
        alan.updated_at,
        Some(Utc.with_ymd_and_hms(2026, 1, 17, 0, 0, 0).unwrap())
    );
    let mary = good
        .iter()
        .find(|r| r.external_id.as_str() == "C-1025")
        .unwrap();
    assert_eq!(
        mary.updated_at, None,
        "an unparseable updated_at is ignored"
    );

    // The mapping quarantines exactly the demo's two bad values.
    let mapper = example_mapper();
    let mut failures = Vec::new();
    for record in &good {
        if let Err(e) = mapper.map(record) {
            failures.push(format!("{}: {e}", record.location));
        }
    }
    assert_eq!(failures.len(), 2, "{failures:#?}");
    assert!(
        failures[0].starts_with(&format!(
            "{EXAMPLE_CSV} line 18: field \"phone\": value \"555-CALL-NOW\""
        )),
        "{}",
        failures[0]
    );
    assert!(
        failures[1].starts_with(&format!(
            "{EXAMPLE_CSV} line 19: field \"lead_score\": value \"high\""
        )),
        "{}",
        failures[1]
    );

    let ada = mapper.map(first).unwrap();
    assert_eq!(ada.phone_numbers[0].value, "+14155550132");
    assert_eq!(ada.custom_fields["vip"], serde_json::json!(true));
    assert_eq!(
        ada.custom_fields["tags"],
        serde_json::json!(["vip", "enterprise"])
    );
}

#[test]
fn example_phone_numbers_normalize() {
    let expected = [
        ("(415) 555-0132", "+14155550132"),
        ("415.555.0199", "+14155550199"),
        ("+1 415 555 0143", "+14155550143"),
        ("+44 20 7946 0958", "+442079460958"),
        ("212 555 0175", "+12125550175"),
        ("646-555-0123", "+16465550123"),
        ("  202 555 0156  ", "+12025550156"),
        ("+44 20 7946 0321", "+442079460321"),
        ("757 555 0119", "+17575550119"),
    ];
    for (raw, e164) in expected {
        assert_eq!(
            quo_sync::mapping::normalize_phone(raw, "US").as_deref(),
            Ok(e164),
            "{raw:?}"
        );
    }
    let err = quo_sync::mapping::normalize_phone("555-CALL-NOW", "US").unwrap_err();
    assert!(err.contains("not a valid phone number"), "{err}");
}

#[tokio::test]
async fn tolerates_bom_crlf_multiline_quotes_and_extra_columns() {
    let file = b"\xEF\xBB\xBFcrm_id,first_name,notes,extra\r\n\
        c1,Ada,\"line one\r\nline two, with comma\",x\r\n\
        c2,\"Grace \"\"Amazing\"\" Hopper\",,y\r\n\
        \r\n\
        c3,Alan,plain,z";
    let (good, bad, summary) = read_bytes(file).await;
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(summary.items, 3);
    assert_eq!(good[0].external_id.as_str(), "c1");
    assert_eq!(good[0].fields["notes"], "line one\r\nline two, with comma");
    assert_eq!(good[0].fields["extra"], "x");
    assert!(
        good[0].location.ends_with("contacts.csv line 2"),
        "{}",
        good[0].location
    );
    assert_eq!(good[1].fields["first_name"], "Grace \"Amazing\" Hopper");
    assert_eq!(good[1].fields["notes"], "");
    assert!(good[1].location.ends_with("line 4"), "{}", good[1].location);
    assert!(good[2].location.ends_with("line 6"), "{}", good[2].location);
    assert_eq!(good[0].updated_at, None, "no updated_at column is fine");
}

#[tokio::test]
async fn quarantines_invalid_utf8_and_reads_the_rest() {
    let file = b"crm_id,first_name\nc1,Ada\nc2,Gr\xFFce\nc3,Alan\n";
    // Under `auto` the first non-ASCII row decides: not UTF-8, so Windows-1252 (FF is ÿ).
    let (good, bad, _) = read_bytes(file).await;
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(good[1].fields["first_name"], "Grÿce");
    // Told the file is UTF-8, the row is quarantined and the rest is read.
    let (good, bad, _) = read_bytes_as(file, CsvEncoding::Utf8).await;
    assert_eq!(
        good.iter()
            .map(|r| r.external_id.as_str())
            .collect::<Vec<_>>(),
        ["c1", "c3"]
    );
    assert_eq!(bad.len(), 1);
    assert!(bad[0].location.ends_with("line 3"));
    assert_eq!(bad[0].external_id.as_deref(), Some("c2"));
    assert!(
        bad[0]
            .reason
            .contains("column \"first_name\" is not valid UTF-8"),
        "{}",
        bad[0].reason
    );
    assert_eq!(bad[0].raw, "c2,Gr\u{FFFD}ce");
}

#[tokio::test]
async fn quarantines_wrong_column_counts_empty_and_long_ids() {
    let long = "x".repeat(76);
    let file = format!(
        "crm_id,first_name,last_name\nc1,Ada,Lovelace\nc2,Grace\nc3,Alan,Turing,extra\n  ,No,Id\n{long},Too,Long\nc6,Ok,Row\n"
    );
    let (good, bad, summary) = read_bytes(file.as_bytes()).await;
    assert_eq!(summary.items, 6);
    assert_eq!(
        good.iter()
            .map(|r| r.external_id.as_str())
            .collect::<Vec<_>>(),
        ["c1", "c6"]
    );
    let reasons: Vec<(&str, &str)> = bad
        .iter()
        .map(|b| (b.location.rsplit_once(' ').unwrap().1, b.reason.as_str()))
        .collect();
    assert_eq!(reasons[0].0, "3");
    assert!(
        reasons[0].1.contains("2 fields but the header has 3"),
        "{}",
        reasons[0].1
    );
    assert_eq!(reasons[1].0, "4");
    assert!(reasons[1].1.contains("4 fields"), "{}", reasons[1].1);
    assert_eq!(reasons[2].0, "5");
    assert!(reasons[2].1.contains("is empty"));
    assert_eq!(reasons[3].0, "6");
    assert!(reasons[3].1.contains("longer than 75"));
    assert_eq!(bad[3].external_id.as_deref(), Some(long.as_str()));
}

#[tokio::test]
async fn quarantines_every_repeat_of_an_id() {
    let file = b"crm_id,first_name\nc1,Ada\nc2,Grace\nc1,Again\n c1 ,Thrice\n";
    let (good, bad, _) = read_bytes(file).await;
    assert_eq!(good.len(), 2);
    assert_eq!(good[0].fields["first_name"], "Ada");
    assert_eq!(bad.len(), 2);
    for (b, line) in bad.iter().zip(["4", "5"]) {
        assert!(b.location.ends_with(&format!("line {line}")));
        assert_eq!(b.reason, "duplicate id \"c1\": already used by line 2");
    }
}

#[tokio::test]
async fn missing_id_column_names_the_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "contacts.csv", b"id,first_name\n1,Ada\n");
    let source = CsvSource::new(&source_config(&path));
    let (tx, _rx) = mpsc::channel(8);
    let err = source.read(ReadRequest::default(), tx).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::MissingColumn { column, key, .. } if column == "crm_id" && key == "source.id_field")
    );
    assert!(err.to_string().contains("source.id_field"), "{err}");

    let empty = write_file(&dir, "empty.csv", b"");
    let (tx, _rx) = mpsc::channel(8);
    let err = CsvSource::new(&source_config(&empty))
        .read(ReadRequest::default(), tx)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::MissingColumn { .. }));
}

#[tokio::test]
async fn a_dropped_receiver_cancels_the_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = String::from("crm_id,first_name\n");
    for i in 0..1000 {
        file.push_str(&format!("c{i},Name {i}\n"));
    }
    let path = write_file(&dir, "contacts.csv", file.as_bytes());
    let source = CsvSource::new(&source_config(&path));
    let (tx, mut rx) = mpsc::channel(4);
    let consumer = async {
        let first = rx.recv().await;
        drop(rx);
        first
    };
    let (result, first) = tokio::join!(source.read(ReadRequest::default(), tx), consumer);
    assert!(first.is_some());
    assert!(matches!(result, Err(SourceError::Cancelled)));
    // A cancelled read records nothing, so write-back refuses.
    let err = source
        .write_back(&[change("c1", &[("first_name", "X")])])
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::ChangedSinceRead { .. }));
}

/// Reads `original`, writes `changes` back, and returns the new bytes.
async fn write_back_bytes(
    original: &[u8],
    changes: &[CrmChange],
) -> (Vec<u8>, quo_sync::source::WriteReport) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "contacts.csv", original);
    let source = CsvSource::new(&source_config(&path));
    read_all(&source).await;
    let report = source
        .write_back(changes)
        .await
        .expect("write-back succeeds");
    assert_eq!(
        dir_entries(&dir),
        ["contacts.csv"],
        "no temp file left behind"
    );
    (std::fs::read(&path).unwrap(), report)
}

#[tokio::test]
async fn write_back_changes_only_the_target_cells_lf() {
    let original = "crm_id,first_name,email,notes,updated_at\n\
        c1,Ada,ada@x.example,\"quoted, with comma\",2026-01-01T00:00:00Z\n\
        c2,\"Grace\",grace@x.example,\"multi\nline\",2026-01-02T00:00:00Z\n\
        c3,Alan,alan@x.example,plain,2026-01-03T00:00:00Z\n";
    let (bytes, report) = write_back_bytes(
        original.as_bytes(),
        &[change(
            "c2",
            &[("first_name", "Grace B."), ("email", "gb@x.example")],
        )],
    )
    .await;
    assert_eq!(report.written, [ExternalId::parse("c2").unwrap()]);
    assert!(report.failed.is_empty() && report.conflicted.is_empty());
    let expected = original
        .replace("\"Grace\",grace@x.example", "\"Grace B.\",gb@x.example")
        .replace("line\",2026-01-02T00:00:00Z", "line\",2026-11-27T03:00:00Z");
    assert_eq!(String::from_utf8(bytes).unwrap(), expected);
}

#[tokio::test]
async fn write_back_changes_only_the_target_cells_crlf_bom_no_final_newline() {
    let original = "\u{FEFF}crm_id,first_name,email,notes,updated_at\r\n\
        c1,Ada,ada@x.example,\"quoted, with comma\",2026-01-01T00:00:00Z\r\n\
        c2,Grace,grace@x.example,\"he said \"\"hi\"\"\",2026-01-02T00:00:00Z\r\n\
        c3,Alan,alan@x.example,plain,2026-01-03T00:00:00Z";
    let (bytes, report) = write_back_bytes(
        original.as_bytes(),
        &[
            change("c3", &[("notes", "now, with a comma")]),
            change("c1", &[("email", "")]),
        ],
    )
    .await;
    assert_eq!(report.written.len(), 2);
    let expected = original
        .replace(
            "c3,Alan,alan@x.example,plain,2026-01-03T00:00:00Z",
            "c3,Alan,alan@x.example,\"now, with a comma\",2026-11-27T03:00:00Z",
        )
        .replace(
            "c1,Ada,ada@x.example,\"quoted, with comma\",2026-01-01T00:00:00Z",
            "c1,Ada,,\"quoted, with comma\",2026-11-27T03:00:00Z",
        );
    assert_eq!(String::from_utf8(bytes).unwrap(), expected);
}

#[tokio::test]
async fn write_back_without_updated_at_column_and_with_bad_rows_around() {
    let original = b"crm_id,first_name\nc1,Ada\nc2,Gr\xFFce\nc3,Alan,extra\nc1,Dup\nc4,Last\n";
    let (bytes, report) =
        write_back_bytes(original, &[change("c4", &[("first_name", "Ken")])]).await;
    assert_eq!(report.written.len(), 1);
    assert_eq!(
        bytes,
        b"crm_id,first_name\nc1,Ada\nc2,Gr\xFFce\nc3,Alan,extra\nc1,Dup\nc4,Ken\n".to_vec()
    );
}

#[tokio::test]
async fn write_back_reports_unknown_ids_columns_and_quarantined_rows() {
    let original = b"crm_id,first_name,updated_at\nc1,Ada,\nc2,Grace\nc3,Alan,\n";
    let (bytes, report) = write_back_bytes(
        original,
        &[
            change("c1", &[("nickname", "Countess")]),
            change("c2", &[("first_name", "G")]),
            change("zz", &[("first_name", "Nobody")]),
            change("c3", &[("first_name", "Alan M.")]),
        ],
    )
    .await;
    assert_eq!(report.written, [ExternalId::parse("c3").unwrap()]);
    let failed: BTreeMap<&str, &str> = report
        .failed
        .iter()
        .map(|(id, reason)| (id.as_str(), reason.as_str()))
        .collect();
    assert_eq!(failed.len(), 3);
    assert!(
        failed["c1"].contains("line 2") && failed["c1"].contains("no column \"nickname\""),
        "{}",
        failed["c1"]
    );
    assert!(
        failed["c2"].contains("line 3") && failed["c2"].contains("quarantined"),
        "{}",
        failed["c2"]
    );
    assert!(
        failed["zz"].contains("no record with id \"zz\""),
        "{}",
        failed["zz"]
    );
    assert_eq!(
        bytes,
        b"crm_id,first_name,updated_at\nc1,Ada,\nc2,Grace\nc3,Alan M.,2026-11-27T03:00:00Z\n"
            .to_vec()
    );
}

#[tokio::test]
async fn write_back_with_nothing_applicable_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let original = b"crm_id,first_name\nc1,Ada\n";
    let path = write_file(&dir, "contacts.csv", original);
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let source = CsvSource::new(&source_config(&path));
    read_all(&source).await;
    let report = source
        .write_back(&[change("zz", &[("first_name", "X")])])
        .await
        .unwrap();
    assert!(report.written.is_empty());
    assert_eq!(report.failed.len(), 1);
    assert_eq!(std::fs::read(&path).unwrap(), original);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(dir_entries(&dir), ["contacts.csv"]);
}

#[tokio::test]
async fn write_back_refuses_when_the_file_changed_since_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "contacts.csv", b"crm_id,first_name\nc1,Ada\n");
    let source = CsvSource::new(&source_config(&path));

    let err = source
        .write_back(&[change("c1", &[("first_name", "X")])])
        .await
        .unwrap_err();
    assert!(
        matches!(err, SourceError::ChangedSinceRead { .. }),
        "nothing read yet"
    );

    read_all(&source).await;
    // Same size, different bytes: only the content hash can tell.
    std::fs::write(&path, b"crm_id,first_name\nc1,Bob\n").unwrap();
    let err = source
        .write_back(&[change("c1", &[("first_name", "X")])])
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::ChangedSinceRead { .. }), "{err}");
    assert!(err.to_string().contains("changed on disk"));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"crm_id,first_name\nc1,Bob\n"
    );
    assert_eq!(dir_entries(&dir), ["contacts.csv"]);

    // After a fresh read the write goes through, and a second write in the same cycle too.
    read_all(&source).await;
    source
        .write_back(&[change("c1", &[("first_name", "Carol")])])
        .await
        .unwrap();
    source
        .write_back(&[change("c1", &[("first_name", "Dave")])])
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"crm_id,first_name\nc1,Dave\n"
    );
    let (good, _, _) = read_all(&source).await;
    assert_eq!(good[0].fields["first_name"], "Dave");
}

#[cfg(unix)]
#[tokio::test]
async fn write_back_keeps_file_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "contacts.csv", b"crm_id,first_name\nc1,Ada\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let source = CsvSource::new(&source_config(&path));
    read_all(&source).await;
    source
        .write_back(&[change("c1", &[("first_name", "X")])])
        .await
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

#[tokio::test]
async fn mapping_round_trips_through_the_file() {
    // map → to_crm_fields → write-back → read → map gives the same snapshot.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contacts.csv");
    std::fs::copy(EXAMPLE_CSV, &path).unwrap();
    let source = CsvSource::new(&source_config(&path));
    let mapper = example_mapper();
    let (good, _, _) = read_all(&source).await;
    let record = good
        .iter()
        .find(|r| r.external_id.as_str() == "C-1004")
        .unwrap();
    let mut snapshot = mapper.map(record).unwrap();
    snapshot.company = Some("Orbital, Mechanics & Co".into());
    snapshot
        .custom_fields
        .insert("tags".into(), serde_json::json!(["nasa", "hidden figures"]));
    snapshot
        .custom_fields
        .insert("lead-score".into(), serde_json::json!(81.5));
    let changed = vec![
        "company".to_string(),
        "custom:tags".into(),
        "custom:lead-score".into(),
    ];
    let fields = mapper.to_crm_fields(&snapshot, &changed).unwrap();
    let report = source
        .write_back(&[CrmChange {
            external_id: record.external_id.clone(),
            fields,
            updated_at: Utc::now(),
        }])
        .await
        .unwrap();
    assert_eq!(report.written.len(), 1);
    let (again, _, _) = read_all(&source).await;
    let reread = again
        .iter()
        .find(|r| r.external_id.as_str() == "C-1004")
        .unwrap();
    assert_eq!(mapper.map(reread).unwrap(), snapshot);
    // Every other row is untouched.
    let before = std::fs::read_to_string(EXAMPLE_CSV).unwrap();
    let after = std::fs::read_to_string(&path).unwrap();
    let diff: Vec<(&str, &str)> = before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(diff.len(), 1);
    assert!(
        diff[0]
            .1
            .starts_with("C-1004,Katherine,Johnson,\"Orbital, Mechanics & Co\",Mathematician"),
        "{}",
        diff[0].1
    );
}

#[tokio::test]
async fn write_back_around_multiline_fields_and_blank_lines_crlf() {
    let original = "crm_id,first_name,notes,updated_at\r\n\
        c1,Ada,\"first\r\nsecond\",2026-01-01\r\n\
        \r\n\
        c2,Grace,\"x\",2026-01-02\r\n\
        c3,Alan,\"multi\r\nline, too\",2026-01-03\r\n";
    let (bytes, report) = write_back_bytes(
        original.as_bytes(),
        &[
            change("c2", &[("notes", "y")]),
            change("c3", &[("first_name", "Alan \"the\" T")]),
        ],
    )
    .await;
    assert_eq!(report.written.len(), 2, "{report:?}");
    let expected = original
        .replace(
            "c2,Grace,\"x\",2026-01-02",
            "c2,Grace,\"y\",2026-11-27T03:00:00Z",
        )
        .replace(
            "c3,Alan,\"multi\r\nline, too\",2026-01-03",
            "c3,\"Alan \"\"the\"\" T\",\"multi\r\nline, too\",2026-11-27T03:00:00Z",
        );
    assert_eq!(String::from_utf8(bytes).unwrap(), expected);

    // Line numbers in write-back failures count the multi-line field and the blank line.
    let (_, report) =
        write_back_bytes(original.as_bytes(), &[change("c3", &[("nope", "1")])]).await;
    assert!(
        report.failed[0].1.contains("contacts.csv line 6"),
        "{:?}",
        report.failed
    );
}

/// The no-change fast path (cells fingerprinted on the reader thread, a record built only on
/// demand from the batch's store) yields exactly what the plain read yields, across batches.
#[tokio::test]
async fn a_digested_read_builds_the_same_records_and_fingerprints_as_a_plain_read() {
    let config = Config::load(Path::new(EXAMPLE_CONFIG)).expect("example config loads");
    let mapper = Mapper::new(&config.mapping, &example_workspace_defs()).expect("mapper builds");
    let mut csv = String::from(
        "crm_id,first_name,last_name,email,phone,company,lead_score,first_name,updated_at\n",
    );
    // More rows than one batch (512), with quoting, commas, Unicode, padding, a repeated
    // column, an empty cell, CRLF endings and a bad row in the middle.
    for n in 0..1300 {
        match n % 5 {
            0 => csv.push_str(&format!(
                "c{n},\"Ada, {n}\",Lovelace,ada{n}@example.com,+1 415 555 {:04},\"Acme \"\"Q\"\"\",{n},Shadow,2026-03-01T10:00:00Z\n",
                n % 10000
            )),
            1 => csv.push_str(&format!("c{n}, Zoë ,Ångström ,,,,,,\r\n")),
            2 => csv.push_str(&format!(
                "c{n},\"multi\nline\",X,x{n}@example.com,,Co,1,,2026-03-01\n"
            )),
            3 if n == 503 => csv.push_str("c503,too,few\n"),
            _ => csv.push_str(&format!("c{n},B{n},C,,,,,,\n")),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "contacts.csv", csv.as_bytes());
    let source = CsvSource::new(&source_config(&path));
    let (plain, plain_bad, _) = read_all(&source).await;

    let (tx, mut rx) = mpsc::channel(2);
    let collect = async {
        let mut batches = Vec::new();
        while let Some(batch) = rx.recv().await {
            batches.push(batch);
        }
        batches
    };
    let (summary, batches) = tokio::join!(
        source.read_digested(mapper.raw_fingerprint().clone(), tx),
        collect
    );
    summary.expect("digested read succeeds");
    assert!(batches.len() >= 3, "the rows span several batches");
    let (mut built, mut bad) = (Vec::new(), Vec::new());
    for item in batches.into_iter().flatten() {
        match item {
            DigestedItem::Row(row) => {
                let digest = row.digest;
                let record = row.into_record();
                assert_eq!(
                    digest,
                    fingerprint_digest(&mapper.fingerprint(&record)),
                    "{}",
                    record.location
                );
                built.push(record);
            }
            DigestedItem::Item(SourceItem::Bad(b)) => bad.push(b),
            DigestedItem::Item(SourceItem::Record(r)) => built.push(r),
        }
    }
    assert_eq!(built.len(), 1299);
    assert_eq!(built, plain);
    assert_eq!(bad, plain_bad);
    assert_eq!(bad.len(), 1);
    assert_eq!(built[1].fields["first_name"], "Zoë");
    assert_eq!(
        built[0].fields["first_name"], "Ada, 0",
        "the first of a repeated column wins"
    );
}

/// A file that changes while it is read (a writer still at work) gives an incomplete read, so
/// no record counts as gone, and its last row, which may be cut, is not used.
#[tokio::test]
async fn a_read_during_which_the_file_changes_is_incomplete_and_drops_its_last_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = String::from("crm_id,first_name\n");
    for i in 0..3000 {
        file.push_str(&format!("c{i},Name {i}\n"));
    }
    file.push_str("c3000,Alexand");
    let path = write_file(&dir, "contacts.csv", file.as_bytes());
    let source = CsvSource::new(&source_config(&path));
    // A channel of one: the reader waits after the first rows, long before the end of the file.
    let (tx, mut rx) = mpsc::channel(1);
    let consumer = async {
        let first = rx.recv().await.unwrap();
        // The writer goes on: the row that was cut is finished.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"ra\n").unwrap();
        let mut items = vec![first];
        while let Some(item) = rx.recv().await {
            items.push(item);
        }
        items
    };
    let (summary, items) = tokio::join!(source.read(ReadRequest::default(), tx), consumer);
    let summary = summary.unwrap();
    assert!(!summary.complete, "the file changed under the read");
    assert_eq!(summary.items, 3000);
    let last = items.last().unwrap();
    assert!(
        matches!(last, SourceItem::Record(r) if r.external_id.as_str() == "c2999"),
        "{last:?}"
    );
    // Read again, still, the file is whole and complete.
    let (good, bad, summary) = read_all(&source).await;
    assert!(summary.complete && bad.is_empty());
    assert_eq!(good.last().unwrap().fields["first_name"], "Alexandra");
}

/// A writer that stalls longer than the quiet period leaves a still file whose last row is cut
/// ("Alexand" for "Alexandra"): it has the right number of fields, so only its missing line
/// end tells. After a read of the file that ended with one, such a read is incomplete (no
/// record counts as gone) and does not use that row; the whole file is read whole again. A file
/// that never ends with a line end is read as it is.
#[tokio::test]
async fn a_last_row_without_the_line_end_the_file_had_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let whole = "crm_id,first_name\nc1,Ada\nc2,Alexandra\n";
    let path = write_file(&dir, "contacts.csv", whole.as_bytes());
    let source = CsvSource::new(&source_config(&path));
    let (good, _, summary) = read_all(&source).await;
    assert!(summary.complete && good.len() == 2);

    std::fs::write(&path, "crm_id,first_name\nc1,Ada\nc2,Alexand").unwrap();
    let (good, bad, summary) = read_all(&source).await;
    assert!(
        !summary.complete,
        "a read of a file whose last row may be cut"
    );
    assert!(bad.is_empty(), "{bad:?}");
    let names: Vec<&str> = good
        .iter()
        .map(|r| r.fields["first_name"].as_str())
        .collect();
    assert_eq!(names, ["Ada"], "the cut value is never used");

    // The writer finishes: whole again. A file that keeps no final line end is then read as
    // it is, its last row included.
    std::fs::write(&path, whole).unwrap();
    assert!(read_all(&source).await.2.complete);
    std::fs::write(&path, "crm_id,first_name\nc1,Ada\nc2,Alexandra").unwrap();
    let (good, _, summary) = read_all(&source).await;
    assert!(!summary.complete, "first read without the line end");
    assert_eq!(good.len(), 1);
    let (good, _, summary) = read_all(&source).await;
    assert!(summary.complete, "the file's own style from then on");
    assert_eq!(good[1].fields["first_name"], "Alexandra");
}

#[tokio::test]
async fn auto_finds_the_separator_and_explicit_settings_read_quotes_and_escapes() {
    // `;` wins: `,` splits the header too, but does not find the id column.
    let (good, bad, _) = read_bytes(b"crm_id;first_name;note\r\nc1;Ada;\"a, b; c\"\r\n").await;
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(good[0].fields["note"], "a, b; c");
    // Pipes, single quotes and backslash escapes, as configured.
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        &dir,
        "contacts.csv",
        b"crm_id|first_name|note\nc1|Ada|'it\\'s | here'\n",
    );
    let config = SourceConfig {
        delimiter: quo_sync::config::CsvDelimiter::Byte(b'|'),
        quote: quo_sync::config::CsvQuote(b'\''),
        escape: quo_sync::config::CsvEscape(Some(b'\\')),
        ..source_config(&path)
    };
    let source = CsvSource::new(&config);
    let (good, bad, _) = read_all(&source).await;
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(good[0].fields["note"], "it's | here");
    let report = source
        .write_back(&[change("c1", &[("first_name", "O'Neil | Ada")])])
        .await
        .unwrap();
    assert_eq!(report.written.len(), 1);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"crm_id|first_name|note\nc1|'O\\'Neil | Ada'|'it\\'s | here'\n"
    );
}

#[tokio::test]
async fn a_byte_order_mark_that_contradicts_the_configured_encoding_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "contacts.csv", b"\xFF\xFEc\x00");
    let config = SourceConfig {
        encoding: CsvEncoding::Windows1252,
        ..source_config(&path)
    };
    let (tx, _rx) = mpsc::channel(8);
    let err = CsvSource::new(&config)
        .read(ReadRequest::default(), tx)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(
            "starts with a utf-16le byte order mark, but source.encoding = \"windows-1252\""
        ),
        "{err}"
    );
}

/// Rows appended for contacts made in Quo follow the file's dialect: a Windows-1252 semicolon
/// CRLF file without a final line ending gets one in its own bytes, then the new row in
/// Windows-1252; a value the encoding cannot hold (an emoji) fails that row only, naming the
/// column. A tab-separated UTF-16LE file gets UTF-16LE rows.
#[tokio::test]
async fn appended_rows_are_written_in_the_files_dialect() {
    let dir = tempfile::tempdir().unwrap();
    let (cp1252, _, _) =
        encoding_rs::WINDOWS_1252.encode("crm_id;first_name;updated_at\r\nc1;Jürgen;2026-01-01");
    let path = write_file(&dir, "cp1252.csv", &cp1252);
    let source = CsvSource::new(&source_config(&path));
    let (_, bad, _) = read_all(&source).await;
    assert!(bad.is_empty(), "{bad:?}");
    let report = source
        .append_records(&[
            change("quo-1", &[("first_name", "Zoë; Ann")]),
            change("quo-2", &[("first_name", "Ada 😀")]),
        ])
        .await
        .unwrap();
    assert_eq!(report.written.len(), 1, "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0.as_str(), "quo-2");
    assert!(
        report.failed[0].1.contains("column \"first_name\""),
        "{report:?}"
    );
    let mut expected = cp1252.into_owned();
    expected.extend_from_slice(b"\r\nquo-1;\"Zo\xeb; Ann\";2026-11-27T03:00:00Z\r\n");
    assert_eq!(std::fs::read(&path).unwrap(), expected);

    let utf16 = |text: &str| -> Vec<u8> {
        [0xFF, 0xFE]
            .into_iter()
            .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
            .collect()
    };
    let path = write_file(
        &dir,
        "utf16.csv",
        &utf16("crm_id\tfirst_name\r\nc1\tAda\r\n"),
    );
    let source = CsvSource::new(&source_config(&path));
    read_all(&source).await;
    let report = source
        .append_records(&[change("quo-3", &[("first_name", "Zoë 😀")])])
        .await
        .unwrap();
    assert_eq!(report.written.len(), 1, "{report:?}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        utf16("crm_id\tfirst_name\r\nc1\tAda\r\nquo-3\tZoë 😀\r\n")
    );
}
