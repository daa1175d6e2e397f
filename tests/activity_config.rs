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

/// `activity.rest.headers` often carries a credential (a CRM's API key in `X-Api-Key`, a token
/// in `Authorization`): it shows neither in the loaded configuration's Debug output nor in
/// `check-config --print`, while the headers that carry none are shown as configured.
#[test]
fn credential_headers_never_show_in_debug_or_print() {
    const BEARER: &str = "Bearer sk-live-HEADER-TOKEN-4242";
    const API_KEY: &str = "HEADER-API-KEY-8181";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quo-sync.toml");
    let text = format!(
        "{}\n{}\n[activity.rest.headers]\nAuthorization = \"{BEARER}\"\n\"X-Api-Key\" = \"{API_KEY}\"\nAccept = \"application/json\"\n",
        std::fs::read_to_string("config/rest-hubspot.example.toml")
            .unwrap()
            .replace(
                "headers = { Content-Type = \"application/json\" }",
                &format!(
                    "headers = {{ Content-Type = \"application/json\", X-Api-Key = \"{API_KEY}\" }}"
                ),
            ),
        std::fs::read_to_string("config/activity-hubspot.example.toml").unwrap()
    );
    std::fs::write(&path, text).unwrap();
    let config = quo_sync::config::Config::load_with_env(&path, std::iter::empty()).unwrap();
    let rest = config
        .activity
        .as_ref()
        .and_then(|a| a.rest.as_ref())
        .expect("[activity.rest] loaded");
    assert_eq!(
        rest.headers.len(),
        3,
        "every header is kept for the request"
    );
    let debug = format!("{config:?}");
    let write_headers = quo_sync::source::rest::RestSourceConfig::from_table(
        config.source.rest.as_ref().expect("[source.rest]"),
    )
    .unwrap()
    .update
    .expect("[source.rest.update]")
    .headers;
    assert_eq!(write_headers.len(), 2, "the write headers are kept");
    let write_debug = format!("{write_headers:?}");
    assert!(
        !write_debug.contains(API_KEY) && write_debug.contains("application/json"),
        "{write_debug}"
    );
    for secret in [BEARER, "sk-live-HEADER-TOKEN-4242", API_KEY] {
        assert!(!debug.contains(secret), "{secret:?} in the config's Debug");
    }
    assert!(
        debug.contains("\"Authorization\": \"[REDACTED]\"")
            && debug.contains("\"Accept\": \"application/json\""),
        "the names and the harmless values are shown: {debug}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["check-config", "--print", "--config"])
        .arg(&path)
        .env_remove("QUO_API_KEY")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{printed}");
    assert!(printed.contains("application/json"), "{printed}");
    assert!(
        !printed.contains("HEADER-TOKEN") && !printed.contains(API_KEY),
        "{printed}"
    );
}

/// Every `event` an activity log line carries is explained under docs/activity.md's "Log
/// events", so an operator can look up any line they see.
#[test]
fn every_activity_log_event_is_documented() {
    let docs = std::fs::read_to_string("docs/activity.md").unwrap();
    let section = docs
        .split("\n## Log events\n")
        .nth(1)
        .expect("docs/activity.md has a Log events section");
    let section = section.split("\n## ").next().unwrap();
    let mut files = vec![std::path::PathBuf::from("src/activity")];
    let mut events = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for piece in text.split("event = \"").skip(1) {
            let name = piece.split('"').next().unwrap().to_string();
            events.push((name, path.display().to_string()));
        }
    }
    assert!(events.len() >= 30, "the scan found the events: {events:?}");
    for (name, file) in events {
        assert!(
            section.contains(&format!("`{name}`")),
            "{name} (logged in {file}) is not under docs/activity.md's Log events"
        );
    }
}
