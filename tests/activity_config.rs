//! `[activity]` is checked at start-up like every other table: `check-config` accepts the
//! shipped examples (CSV, and each REST vendor's with its contacts example) and refuses a bad
//! key with exit code 2, naming `activity.<key>` and what was expected.

use std::process::Command;

fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quo-sync.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("QUO_API_KEY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn shipped() -> String {
    std::fs::read_to_string("config/quo-sync.toml").unwrap()
}

#[test]
fn the_examples_pass_and_bad_keys_are_named() {
    let csv = format!(
        "{}\n{}",
        shipped(),
        std::fs::read_to_string("config/activity-csv.example.toml").unwrap()
    );
    let (code, out) = check(&csv);
    assert_eq!(code, 0, "{out}");
    for vendor in ["salesforce", "hubspot", "zoho", "pipedrive"] {
        let text = format!(
            "{}\n{}",
            std::fs::read_to_string(format!("config/rest-{vendor}.example.toml")).unwrap(),
            std::fs::read_to_string(format!("config/activity-{vendor}.example.toml")).unwrap()
        );
        let (code, out) = check(&text);
        assert_eq!(code, 0, "{vendor}: {out}");
    }
    let cases = [
        (
            "[activity]\nkinds = [\"faxes\"]\n[activity.csv]\npath = \"a.csv\"\n",
            "activity.kinds",
        ),
        (
            "[activity]\ncontent = \"everything\"\n[activity.csv]\npath = \"a.csv\"\n",
            "activity.content",
        ),
        (
            "[activity]\nunmatched = \"guess\"\n[activity.csv]\npath = \"a.csv\"\n",
            "activity.unmatched",
        ),
        (
            "[activity]\nkinds = []\n[activity.csv]\npath = \"a.csv\"\n",
            "activity.kinds",
        ),
        ("[activity]\n", "activity.csv"),
        (
            "[activity]\n[activity.rest]\npath = \"/x\"\nbody = {}\nid_pointer = \"/id\"\n",
            "activity.rest",
        ),
        (
            "[activity]\npoll_interval = \"often\"\n[activity.csv]\npath = \"a.csv\"\n",
            "poll_interval",
        ),
        (
            "[activity]\nowners = { \"not-an-email\" = \"1\" }\n[activity.csv]\npath = \"a.csv\"\n",
            "activity.owners",
        ),
    ];
    for (table, key) in cases {
        let (code, out) = check(&format!("{}\n{table}", shipped()));
        assert_eq!(code, 2, "{table}: {out}");
        assert!(out.contains(key), "{table}: the error names {key}: {out}");
    }
    let rest = format!(
        "{}\n[activity]\n[activity.rest]\npath = \"/tasks\"\nbody = {{ a = \"{{/record_id}}\" }}\nid_pointer = \"id\"\n",
        std::fs::read_to_string("config/rest-hubspot.example.toml").unwrap()
    );
    let (code, out) = check(&rest);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("activity.rest.id_pointer") && out.contains("\"id\""),
        "{out}"
    );
    let lookup = format!(
        "{}\n[activity]\n[activity.rest]\npath = \"/tasks\"\nbody = {{}}\nid_pointer = \"/id\"\nlookup_path = \"/tasks/find\"\nlookup_id_pointer = \"/id\"\n",
        std::fs::read_to_string("config/rest-hubspot.example.toml").unwrap()
    );
    let (code, out) = check(&lookup);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("activity.rest.lookup_path") && out.contains("{activity_id}"),
        "{out}"
    );
}
