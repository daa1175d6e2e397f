//! The mapping's promises seen from outside: ids that would break the ledger are quarantined
//! with a readable reason while the rest of the file syncs.

mod common;

use common::{TestApp, csv, row};

/// An id with a control character (here U+0001 inside the id) is refused at read time: the row
/// lands in quarantine with the id escaped in its reason, and every other row is created.
#[tokio::test]
async fn an_id_with_a_control_character_is_quarantined_and_the_rest_sync() {
    let data = vec![row("c1", 1), row("c\u{1}2", 2), row("c3", 3)];
    let app = TestApp::spawn(&csv(&data)).await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 2);
    assert_eq!(report.counts.quarantined, 1);
    app.assert_created_once(&["c1".into(), "c3".into()]).await;
    assert_eq!(app.sandbox.contacts().len(), 2, "nothing else created");
    let quarantine = app.ledger().quarantined().await.unwrap();
    assert_eq!(quarantine.len(), 1, "{quarantine:#?}");
    let entry = &quarantine[0];
    assert!(entry.location.ends_with("line 3"), "{}", entry.location);
    assert!(
        entry.reason.contains("c\\u{1}2") && entry.reason.contains("control character"),
        "the reason names the escaped id: {}",
        entry.reason
    );
    assert!(
        !entry.reason.contains('\u{1}') && !entry.key.contains('\u{1}'),
        "no raw control character reaches the ledger: {entry:?}"
    );
}

/// `mapping.timezone` must be an IANA name: anything else stops `check-config` with exit 2,
/// naming the key and the value; a real zone (also through the env override) is accepted.
#[test]
fn an_unknown_time_zone_exits_2_naming_mapping_timezone() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[source]\nkind = \"csv\"\npath = \"contacts.csv\"\n";
    let check = |text: &str, env: &[(&str, &str)]| {
        let path = dir.path().join("tz.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
            .args(["check-config", "--config"])
            .arg(&path)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check(
        &format!("{base}\n[mapping]\ntimezone = \"Eastern Standard\"\n"),
        &[],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("mapping.timezone") && stderr.contains("Eastern Standard"),
        "{stderr}"
    );
    let (code, stderr) = check(
        &format!("{base}\n[mapping]\ntimezone = \"America/New_York\"\n"),
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = check(base, &[("QUO_SYNC__MAPPING__TIMEZONE", "Nowhere/Land")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("mapping.timezone"), "{stderr}");
}
