//! Configuration and CLI promises: exit codes, key names in errors, env overrides.

mod support;

use std::process::Command;

use quo_sync::config::Config;

fn quo_sync() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quo-sync"))
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const MINIMAL: &str = "[source]\nkind = \"csv\"\npath = \"contacts.csv\"\n";

#[test]
fn check_config_accepts_the_shipped_example() {
    let out = quo_sync()
        .args(["check-config", "--config", "config/quo-sync.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

/// Runs `check-config` on a config file holding `text`; returns the exit code and stderr.
fn check_config(name: &str, text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, name, text);
    let out = quo_sync()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check-config` must exit 2 with every `needles` in its message.
fn assert_refused(name: &str, text: &str, needles: &[&str]) {
    let (code, stderr) = check_config(name, text);
    assert_eq!(code, Some(2), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
}

#[test]
fn an_unknown_key_exits_2_naming_the_key_and_the_file() {
    assert_refused(
        "bad.toml",
        &format!("{MINIMAL}\n[quo]\nbase_ulr = \"https://api.quo.com\"\n"),
        &["base_ulr", "bad.toml"],
    );
}

#[test]
fn a_wrong_type_exits_2_naming_the_key() {
    assert_refused(
        "bad.toml",
        &format!("{MINIMAL}\n[quo]\nrequests_per_second = \"fast\"\n"),
        &["requests_per_second"],
    );
}

#[test]
fn a_missing_required_key_exits_2_naming_it() {
    assert_refused("bad.toml", "[source]\nkind = \"csv\"\n", &["source.path"]);
    assert_refused("none.toml", "[quo]\nsource = \"quo-sync\"\n", &["source"]);
}

#[test]
fn a_bad_duration_and_a_reserved_source_exit_2() {
    assert_refused(
        "d.toml",
        &format!("{MINIMAL}\n[schedule]\ninterval = \"soon\"\n"),
        &["interval"],
    );
    assert_refused(
        "s.toml",
        &format!("{MINIMAL}\n[quo]\nsource = \"csv-import\"\n"),
        &["quo.source"],
    );
}

#[test]
fn env_overrides_every_section_and_the_api_key_env_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.toml", MINIMAL);
    let env = [
        ("QUO_SYNC__QUO__BASE_URL", "http://127.0.0.1:9"),
        ("QUO_SYNC__QUO__REQUESTS_PER_SECOND", "4"),
        ("QUO_SYNC__LEDGER__PATH", "/tmp/x.db"),
        ("QUO_SYNC__SCHEDULE__INTERVAL", "90s"),
        ("QUO_SYNC__LOG__FORMAT", "pretty"),
        ("QUO_SYNC__SOURCE__PATH", "other.csv"),
        ("QUO_API_KEY", "k-from-env"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let config = Config::load_with_env(&path, env).unwrap();
    assert_eq!(config.quo.base_url, "http://127.0.0.1:9");
    assert_eq!(config.quo.requests_per_second, 4);
    assert_eq!(config.ledger.path, std::path::PathBuf::from("/tmp/x.db"));
    assert_eq!(
        config.schedule.interval.0,
        std::time::Duration::from_secs(90)
    );
    assert_eq!(config.log.format, quo_sync::config::LogFormat::Pretty);
    // Relative paths are read beside the config file (#22).
    assert_eq!(
        config.source.path.as_deref(),
        Some(dir.path().join("other.csv").as_path())
    );
    use secrecy::ExposeSecret;
    assert_eq!(
        config.quo.api_key.as_ref().unwrap().expose_secret(),
        "k-from-env"
    );
}

#[test]
fn the_api_key_never_shows_in_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "c.toml",
        &format!(
            "{MINIMAL}\n[quo]\napi_key = \"sk-very-secret-123\"\n[reverse]\nwebhook_secret = \"whsec_c2VjcmV0LXNpZ25pbmcta2V5LTAwMDE=\"\n"
        ),
    );
    let config = Config::load_with_env(&path, std::iter::empty()).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("sk-very-secret-123"), "{debug}");
    assert!(!debug.contains("c2VjcmV0LXNpZ25pbmc"), "{debug}");
}

#[test]
fn once_without_an_api_key_exits_2_before_any_network_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "c.toml",
        &format!("{MINIMAL}\n[quo]\nbase_url = \"http://127.0.0.1:9\"\n"),
    );
    let out = quo_sync()
        .args(["once", "--config"])
        .arg(&path)
        .env_remove("QUO_API_KEY")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("quo.api_key"));
}

#[test]
fn a_usage_error_exits_2() {
    let out = quo_sync().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

const REST: &str = r#"
[quo]
base_url = "http://127.0.0.1:9"

[source]
kind = "rest"

[source.rest]
base_url = "https://crm.example.com"
list_path = "/contacts"
id_pointer = "/id"

[source.rest.auth]
kind = "oauth2"
grant = "client_credentials"
token_url = "https://crm.example.com/oauth/token"
client_id = "abc"
client_secret = "s3cret-value"
"#;

#[test]
fn a_webhook_ids_pointer_is_checked_up_front() {
    let webhook = |keys: &str| format!("{REST}\n[source.rest.webhook]\nsecret = \"w\"\n{keys}");
    // Named ids are fetched with a record GET: without [source.rest.update] it must be given.
    assert_refused(
        "rest.toml",
        &webhook("ids_pointer = \"/ids\"\n"),
        &["source.rest.webhook.get_path", "rest.toml"],
    );
    assert_refused(
        "rest.toml",
        &webhook("ids_pointer = \"ids\"\nget_path = \"/contacts/{id}\"\n"),
        &["source.rest.webhook.ids_pointer", "JSON pointer"],
    );
    assert_refused(
        "rest.toml",
        &webhook("ids_pointer = \"/events/x*/id\"\nget_path = \"/contacts/{id}\"\n"),
        &["source.rest.webhook.ids_pointer"],
    );
    assert_refused(
        "rest.toml",
        &webhook("ids_pointer = \"/ids\"\nget_path = \"/contacts\"\n"),
        &["source.rest.webhook.get_path", "{id}"],
    );
    let (code, stderr) = check_config(
        "rest.toml",
        &webhook("ids_pointer = \"/events/*/id\"\nget_path = \"/contacts/{id}\"\n"),
    );
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_bad_rest_key_is_refused_by_check_config_and_once_with_exit_2() {
    assert_refused(
        "rest.toml",
        &format!("{REST}client_secrte = \"typo\"\n"),
        &["source.rest.auth", "client_secrte", "rest.toml"],
    );
    assert_refused(
        "rest.toml",
        &REST.replace("grant = \"client_credentials\"\n", ""),
        &["source.rest.auth.grant"],
    );
    assert_refused(
        "rest.toml",
        &REST.replace("kind = \"oauth2\"", "kind = \"bearer\"\ntoken = \"t\""),
        &["source.rest.auth.grant", "oauth2"],
    );
    // `once` validates the same way before any network call.
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.toml", &format!("{REST}client_secrte = \"typo\"\n"));
    let out = quo_sync()
        .args(["once", "--config"])
        .arg(&path)
        .env("QUO_API_KEY", "k")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("client_secrte"), "{stderr}");
    assert!(!stderr.contains("s3cret-value"), "{stderr}");
}

#[test]
fn check_config_names_the_rest_base_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "c.toml", REST);
    let out = quo_sync()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK (rest https://crm.example.com,"),
        "{stdout}"
    );
    for example in ["salesforce", "zoho"] {
        let out = quo_sync()
            .args(["check-config", "--config"])
            .arg(format!("config/rest-{example}.example.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn once_exits_2_when_the_token_endpoint_refuses_the_credentials() {
    use support::salesforce::FakeSalesforce;
    use support::token_desk::TokenDesk;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let crm = runtime.block_on(FakeSalesforce::start(
        Vec::new(),
        TokenDesk::new(
            "id",
            "right-secret",
            "rt",
            std::time::Duration::from_secs(60),
        ),
        10,
    ));
    let sandbox = runtime
        .block_on(quo_sync::sandbox::SandboxHandle::start(
            quo_sync::sandbox::SandboxConfig::default(),
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[ledger]\npath = {:?}\n{}",
        dir.path().join("l.db").display().to_string(),
        REST.replace("https://crm.example.com", &crm.base_url)
            .replace(
                "grant = \"client_credentials\"",
                "grant = \"refresh_token\"\nrefresh_token = \"rt\""
            )
            .replace("client_id = \"abc\"", "client_id = \"id\"")
            .replace("/oauth/token", "/services/oauth2/token")
            .replace("http://127.0.0.1:9", &sandbox.base_url()),
    );
    let path = write(&dir, "c.toml", &text);
    let out = quo_sync()
        .args(["once", "--config"])
        .arg(&path)
        .env("QUO_API_KEY", sandbox.api_key())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid_client"), "{stderr}");
    assert!(!stderr.contains("s3cret-value"), "{stderr}");
    drop(runtime);
}

/// Anyone can sign with an empty or near-empty key: a Quo webhook key that decodes to fewer
/// than 16 bytes (or does not decode) is refused at load, from the config or from
/// `reverse.webhook_secret_file`, and the message never shows it.
#[test]
fn a_quo_webhook_key_under_16_bytes_exits_2_at_load() {
    for secret in [
        "",
        "whsec_",
        "whsec_c2VjcmV0",
        // 15 bytes.
        "MDEyMzQ1Njc4OWFiY2Rl",
        "whsec_not base64 at all!",
    ] {
        let (code, stderr) = check_config(
            "c.toml",
            &format!("{MINIMAL}[reverse]\nwebhook_secret = \"{secret}\"\n"),
        );
        assert_eq!(code, Some(2), "{secret:?}: {stderr}");
        assert!(stderr.contains("reverse.webhook_secret"), "{stderr}");
        assert!(stderr.contains("16 bytes"), "{stderr}");
        if secret.len() > 6 {
            assert!(!stderr.contains(secret), "the key is shown: {stderr}");
        }
    }
    // 16 bytes, in both forms.
    for secret in ["MDEyMzQ1Njc4OWFiY2RlZg==", "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="] {
        let (code, stderr) = check_config(
            "c.toml",
            &format!("{MINIMAL}[reverse]\nwebhook_secret = \"{secret}\"\n"),
        );
        assert_eq!(code, Some(0), "{secret}: {stderr}");
    }

    // From a file (Docker secrets), trimmed.
    let dir = tempfile::tempdir().unwrap();
    let good = write(&dir, "good", "whsec_MDEyMzQ1Njc4OWFiY2RlZg==\n");
    let path = write(
        &dir,
        "c.toml",
        &format!(
            "{MINIMAL}[reverse]\nwebhook_secret_file = {:?}\n",
            good.display().to_string()
        ),
    );
    let config = Config::load_with_env(&path, std::iter::empty()).expect("a good key file");
    use secrecy::ExposeSecret;
    assert_eq!(
        config
            .reverse
            .webhook_secret
            .as_ref()
            .expect("read from the file")
            .expose_secret(),
        "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="
    );
    let short = write(&dir, "short", "whsec_c2VjcmV0\n");
    assert_refused(
        "c.toml",
        &format!(
            "{MINIMAL}[reverse]\nwebhook_secret_file = {:?}\n",
            short.display().to_string()
        ),
        &["reverse.webhook_secret_file", "16 bytes"],
    );
}
