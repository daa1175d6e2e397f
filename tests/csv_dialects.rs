//! CSV files as spreadsheets and CRMs really export them: a semicolon Windows-1252 export with
//! CRLF line endings and a BOM-less header, Excel's tab-separated UTF-16LE "Unicode text" with a
//! BOM, and a Latin-1 file. Each is read with the right characters (checked in the sandbox's
//! contacts), an edit made in Quo is written back in the file's own dialect, and every other
//! row keeps its bytes. A value the file's encoding cannot hold (an emoji for Windows-1252) is a
//! recorded conflict: the rest of the record is written, the value stays in Quo.

mod common;

use std::time::Duration;

use common::{TestApp, custom_value};
use encoding_rs::WINDOWS_1252;
use quo_sync::sandbox::SandboxConfig;
use serde_json::json;

const POLL: &str = "[reverse]\npoll_interval = \"1ms\"\n";

const COLUMNS: [&str; 15] = [
    "crm_id",
    "first_name",
    "last_name",
    "company",
    "role",
    "email",
    "work_email",
    "phone",
    "mobile",
    "lead_score",
    "vip",
    "renewal_date",
    "tags",
    "website",
    "updated_at",
];

/// A file's text: the header and rows joined by `sep`, each line ended by `eol`.
fn text(sep: &str, eol: &str, rows: &[&str]) -> String {
    let mut out = COLUMNS.join(sep);
    out.push_str(eol);
    for row in rows {
        out.push_str(row);
        out.push_str(eol);
    }
    out
}

/// Spawns on `bytes` with `source_keys` added to `[source]` (reloaded as a restart would).
async fn spawn(bytes: &[u8], source_keys: &str) -> TestApp {
    let mut app = TestApp::spawn_with("", SandboxConfig::default(), POLL).await;
    std::fs::write(&app.csv_path, bytes).unwrap();
    if !source_keys.is_empty() {
        let config = std::fs::read_to_string(&app.config_path).unwrap();
        let config = config.replacen(
            "[source]\nkind = \"csv\"\n",
            &format!("[source]\nkind = \"csv\"\n{source_keys}\n"),
            1,
        );
        std::fs::write(&app.config_path, config).unwrap();
        app.restart().await;
    }
    app
}

/// A sandbox contact's default field.
fn field(app: &TestApp, id: &str, name: &str) -> String {
    app.contact_for(id)["defaultFields"][name]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// An edit typed in the Quo app, then a cycle (whose scan finds it).
async fn edit_in_quo(app: &TestApp, id: &str, default_fields: serde_json::Value) {
    app.sandbox
        .app_edit(&app.quo_id(id), json!({ "defaultFields": default_fields }))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    app.cycle().await;
}

/// Splits a file's bytes after each occurrence of `eol` (the line ending stays with its line).
fn lines<'a>(bytes: &'a [u8], eol: &[u8], unit: usize) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + eol.len() <= bytes.len() {
        if &bytes[i..i + eol.len()] == eol {
            out.push(&bytes[start..i + eol.len()]);
            start = i + eol.len();
            i = start;
        } else {
            i += unit;
        }
    }
    if start < bytes.len() {
        out.push(&bytes[start..]);
    }
    out
}

/// Every line but `changed` is byte for byte what it was.
fn only_line_changed(before: &[&[u8]], after: &[&[u8]], changed: usize) {
    assert_eq!(before.len(), after.len(), "line count");
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        if i == changed {
            assert_ne!(b, a, "line {i} should have changed");
        } else {
            assert_eq!(b, a, "line {i} changed");
        }
    }
}

/// One line's cells, parsed with `sep`.
fn cells(line: &[u8], sep: u8) -> Vec<Vec<u8>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(sep)
        .from_reader(line);
    let record = reader.byte_records().next().unwrap().unwrap();
    record.iter().map(<[u8]>::to_vec).collect()
}

fn cp1252(text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = WINDOWS_1252.encode(text);
    assert!(!unmappable, "{text}");
    bytes.into_owned()
}

/// The Windows-1252 export Excel saves in western Europe: semicolons, CRLF, no BOM, a quoted
/// cell holding the separator, a multi-select with `;` inside quotes.
fn excel_export() -> Vec<u8> {
    cp1252(&text(
        ";",
        "\r\n",
        &[
            "r-1;Jürgen;Müller;Bäckerei Schön;Meister;juergen@example.com;;(415) 555-1001;;10;yes;2026-03-01;vip;https://baeckerei.example.com;2026-01-01T00:00:00Z",
            "r-2;José;García;\"Café Noir; Bar\";Dueño;jose@example.com;;(415) 555-1002;;20;no;2026-03-02;\"vip;enterprise\";https://cafe.example.com;2026-01-01T00:00:00Z",
            "r-3;Zoë;Ñúñez;Crème & Co;Chef;zoe@example.com;;(415) 555-1003;;30;yes;2026-03-03;enterprise;https://creme.example.com;2026-01-01T00:00:00Z",
        ],
    ))
}

#[tokio::test]
async fn a_semicolon_windows_1252_export_with_crlf_reads_and_writes_back_in_its_dialect() {
    let app = spawn(&excel_export(), "").await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 3, "{report:?}");
    assert_eq!(report.counts.quarantined, 0, "{report:?}");
    assert_eq!(field(&app, "r-1", "firstName"), "Jürgen");
    assert_eq!(field(&app, "r-1", "lastName"), "Müller");
    assert_eq!(field(&app, "r-1", "company"), "Bäckerei Schön");
    assert_eq!(field(&app, "r-2", "company"), "Café Noir; Bar");
    assert_eq!(field(&app, "r-2", "role"), "Dueño");
    assert_eq!(field(&app, "r-3", "lastName"), "Ñúñez");
    assert_eq!(
        custom_value(&app.contact_for("r-2"), "tags"),
        json!(["vip", "enterprise"])
    );
    let dialect = app.ctx.source.describe_dialect().unwrap();
    assert!(
        dialect.starts_with("windows-1252 (detected: line 2")
            && dialect.contains("separator \";\" (detected from the header)")
            && dialect.contains("CRLF"),
        "{dialect}"
    );

    let before = std::fs::read(&app.csv_path).unwrap();
    edit_in_quo(&app, "r-2", json!({"lastName": "García-Núñez"})).await;
    let after = std::fs::read(&app.csv_path).unwrap();
    let (old, new) = (lines(&before, b"\r\n", 1), lines(&after, b"\r\n", 1));
    only_line_changed(&old, &new, 2);
    let (was, now) = (cells(old[2], b';'), cells(new[2], b';'));
    assert_eq!(now[2], b"Garc\xeda-N\xfa\xf1ez", "Windows-1252 bytes");
    for i in (0..15).filter(|i| ![2, 14].contains(i)) {
        assert_eq!(was[i], now[i], "cell {i} of the written row");
    }
    assert_ne!(was[14], now[14], "updated_at is stamped");
    assert!(
        new[2].starts_with(b"r-2;Jos\xe9;Garc\xeda-N\xfa\xf1ez;\"Caf\xe9 Noir; Bar\";")
            && new[2].ends_with(b"\r\n"),
        "{:?}",
        String::from_utf8_lossy(new[2])
    );
    assert!(std::str::from_utf8(&after).is_err(), "still not UTF-8");
    assert_eq!(field(&app, "r-2", "lastName"), "García-Núñez");
}

#[tokio::test]
async fn an_emoji_for_a_windows_1252_file_is_a_conflict_and_stays_in_quo() {
    let app = spawn(&excel_export(), "").await;
    app.cycle().await;
    let before = std::fs::read(&app.csv_path).unwrap();
    edit_in_quo(
        &app,
        "r-1",
        json!({"firstName": "Jürgen 😀", "company": "Bäckerei Neu"}),
    )
    .await;

    // The conflict names the record and the field; Quo keeps the emoji.
    let conflicts = app.ledger().conflicts(10).await.unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let conflict = &conflicts[0];
    assert_eq!(
        (conflict.external_id.as_str(), conflict.field.as_str()),
        ("r-1", "firstName")
    );
    assert_eq!(conflict.policy, "crm_cannot_hold");
    assert_eq!(conflict.quo_value.as_deref(), Some("\"Jürgen 😀\""));
    assert_eq!(conflict.crm_value.as_deref(), Some("\"Jürgen\""));
    assert_eq!(field(&app, "r-1", "firstName"), "Jürgen 😀");

    // The rest of the record is written, in Windows-1252; the name is not turned into '?'.
    let after = std::fs::read(&app.csv_path).unwrap();
    let (old, new) = (lines(&before, b"\r\n", 1), lines(&after, b"\r\n", 1));
    only_line_changed(&old, &new, 1);
    let now = cells(new[1], b';');
    assert_eq!(now[1], b"J\xfcrgen");
    assert_eq!(now[3], b"B\xe4ckerei Neu");
    assert!(
        !new[1].contains(&b'?'),
        "{:?}",
        String::from_utf8_lossy(new[1])
    );
    assert_eq!(field(&app, "r-1", "company"), "Bäckerei Neu");

    // Steady: the next cycles write nothing, record nothing, and leave Quo's value alone.
    let report = app.cycle().await;
    assert_eq!(report.counts.written_to_crm, 0, "{report:?}");
    assert_eq!(report.counts.updated, 0, "{report:?}");
    assert_eq!(std::fs::read(&app.csv_path).unwrap(), after);
    assert_eq!(app.ledger().conflicts(10).await.unwrap().len(), 1);

    // A CRM edit of another field of that record goes to Quo without taking the emoji away.
    let text = WINDOWS_1252
        .decode(&after)
        .0
        .replace(";Meister;", ";Meisterin;");
    std::fs::write(&app.csv_path, cp1252(&text)).unwrap();
    let report = app.cycle().await;
    assert_eq!(report.counts.updated, 1, "{report:?}");
    assert_eq!(field(&app, "r-1", "role"), "Meisterin");
    assert_eq!(field(&app, "r-1", "firstName"), "Jürgen 😀");

    // A CRM edit of the held field itself is an edit like any other: it reaches Quo.
    let text = WINDOWS_1252
        .decode(&std::fs::read(&app.csv_path).unwrap())
        .0
        .replace("r-1;Jürgen;", "r-1;Jörg;");
    std::fs::write(&app.csv_path, cp1252(&text)).unwrap();
    app.cycle().await;
    assert_eq!(field(&app, "r-1", "firstName"), "Jörg");
}

fn utf16le_with_bom(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xFE];
    bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    bytes
}

fn from_utf16le(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect();
    String::from_utf16(&units).unwrap()
}

#[tokio::test]
async fn a_tab_separated_utf16le_file_with_a_bom_reads_and_writes_back_in_its_dialect() {
    let file = utf16le_with_bom(&text(
        "\t",
        "\r\n",
        &[
            "r-1\tSøren\tKierkegaard\tSunflower 🌻 Co\tPhilosopher\tsoren@example.com\t\t(415) 555-1001\t\t10\tyes\t2026-03-01\tvip\thttps://soren.example.com\t2026-01-01T00:00:00Z",
            "r-2\t雷\t李\tÆrø ApS\tOwner\tlei@example.com\t\t(415) 555-1002\t\t20\tno\t2026-03-02\tvip;enterprise\thttps://aero.example.com\t2026-01-01T00:00:00Z",
            "r-3\tZoë\tŁukasz\t\"Quoted\tTab\"\tChef\tzoe@example.com\t\t(415) 555-1003\t\t30\tyes\t2026-03-03\tenterprise\thttps://zoe.example.com\t2026-01-01T00:00:00Z",
        ],
    ));
    let app = spawn(&file, "").await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 3, "{report:?}");
    assert_eq!(field(&app, "r-1", "firstName"), "Søren");
    assert_eq!(field(&app, "r-1", "company"), "Sunflower 🌻 Co");
    assert_eq!(field(&app, "r-2", "firstName"), "雷");
    assert_eq!(field(&app, "r-2", "company"), "Ærø ApS");
    assert_eq!(field(&app, "r-3", "lastName"), "Łukasz");
    assert_eq!(field(&app, "r-3", "company"), "Quoted\tTab");
    let dialect = app.ctx.source.describe_dialect().unwrap();
    assert!(
        dialect.starts_with("utf-16le (byte order mark)") && dialect.contains("separator \"\\t\""),
        "{dialect}"
    );

    let before = std::fs::read(&app.csv_path).unwrap();
    edit_in_quo(&app, "r-2", json!({"company": "Ærø Øst 🚲"})).await;
    let after = std::fs::read(&app.csv_path).unwrap();
    assert_eq!(&after[..2], &[0xFF, 0xFE], "the byte order mark stays");
    let crlf = [0x0D, 0x00, 0x0A, 0x00];
    let (old, new) = (lines(&before[2..], &crlf, 2), lines(&after[2..], &crlf, 2));
    only_line_changed(&old, &new, 2);
    let written = from_utf16le(new[2]);
    assert!(
        written.starts_with("r-2\t雷\t李\tÆrø Øst 🚲\tOwner\t") && written.ends_with("\r\n"),
        "{written:?}"
    );
    assert_eq!(field(&app, "r-2", "company"), "Ærø Øst 🚲");
}

#[tokio::test]
async fn a_latin1_file_reads_and_writes_back_in_latin1() {
    let latin1 = |text: &str| -> Vec<u8> {
        assert!(encoding_rs::mem::is_str_latin1(text));
        encoding_rs::mem::encode_latin1_lossy(text).into_owned()
    };
    let file = latin1(&text(
        ",",
        "\n",
        &[
            "r-1,Renée,Weiß,Großhandel Köln,Buyer,renee@example.com,,(415) 555-1001,,10,yes,2026-03-01,vip,https://koeln.example.com,2026-01-01T00:00:00Z",
            "r-2,André,Gößling,Café Élysée,Owner,andre@example.com,,(415) 555-1002,,20,no,2026-03-02,vip,https://elysee.example.com,2026-01-01T00:00:00Z",
            "r-3,Ada,Lovelace,Analytical,Countess,ada@example.com,,(415) 555-1003,,30,yes,2026-03-03,vip,https://ada.example.com,2026-01-01T00:00:00Z",
        ],
    ));
    let app = spawn(&file, "encoding = \"latin1\"").await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 3, "{report:?}");
    assert_eq!(field(&app, "r-1", "firstName"), "Renée");
    assert_eq!(field(&app, "r-1", "lastName"), "Weiß");
    assert_eq!(field(&app, "r-2", "lastName"), "Gößling");
    assert_eq!(field(&app, "r-2", "company"), "Café Élysée");

    let before = std::fs::read(&app.csv_path).unwrap();
    edit_in_quo(&app, "r-1", json!({"lastName": "Straße-Hélène"})).await;
    let after = std::fs::read(&app.csv_path).unwrap();
    let (old, new) = (lines(&before, b"\n", 1), lines(&after, b"\n", 1));
    only_line_changed(&old, &new, 1);
    assert!(
        new[1].starts_with(b"r-1,Ren\xe9e,Stra\xdfe-H\xe9l\xe8ne,Gro\xdfhandel K\xf6ln,"),
        "{:?}",
        String::from_utf8_lossy(new[1])
    );
    assert_eq!(field(&app, "r-1", "lastName"), "Straße-Hélène");
}

/// `check-config` and `plan` say what `auto` found: the Excel export's encoding, separator and
/// line endings, with how each was decided.
#[test]
fn check_config_and_plan_show_the_detected_dialect() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("quo-sync.toml");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/quo-sync.toml"),
        &config,
    )
    .unwrap();
    std::fs::write(dir.path().join("contacts.example.csv"), excel_export()).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("QUO_API_KEY")
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let expected = [
        "windows-1252 (detected: line 2 is the first non-ASCII line, and it is not UTF-8)",
        "separator \";\" (detected from the header)",
        "CRLF line endings",
    ];

    let checked = run(&["check-config"]);
    for needle in expected {
        assert!(checked.contains(needle), "{needle:?} not in: {checked}");
    }

    let planned: serde_json::Value =
        serde_json::from_str(&run(&["plan", "--json", "--with-sandbox"])).unwrap();
    assert_eq!(planned["counts"]["created"], 3, "{planned}");
    let dialect = planned["source_dialect"].as_str().unwrap_or_default();
    for needle in expected {
        assert!(dialect.contains(needle), "{needle:?} not in: {planned}");
    }
    let table = run(&["plan", "--with-sandbox"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("source: csv ")
                && expected.iter().all(|needle| l.contains(needle))),
        "{table}"
    );
}
