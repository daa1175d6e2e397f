//! Deploying it (#22): the real binary started the ways operators start it, from a working
//! directory other than the repository: relative paths read beside the config file, the old
//! working-directory paths still found (with a warning), and the container's exact command line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use quo_sync::sandbox::{SandboxConfig, SandboxHandle};

fn bin() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"));
    command
        .env_remove("RUST_LOG")
        .env_remove("QUO_SYNC_CONFIG")
        .env_remove("QUO_API_KEY");
    command
}

/// The repository's `config/` copied into `into` (a fresh clone's files, elsewhere).
fn copy_config_folder(into: &Path) -> PathBuf {
    let config = into.join("config");
    std::fs::create_dir_all(&config).unwrap();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("config")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), config.join(entry.file_name())).unwrap();
    }
    config
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_clone_run_from_another_folder_syncs_the_sample_with_the_sandbox() {
    let clone = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let config = copy_config_folder(clone.path()).join("quo-sync.toml");
    let out = bin()
        .arg("--config")
        .arg(&config)
        .args(["once", "--with-sandbox"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("created 23"), "{stdout}");
    assert!(stdout.contains("quarantined 4"), "{stdout}");
    assert!(
        !stderr.contains("path_from_working_directory"),
        "the shipped config needs no fallback: {stderr}"
    );
    assert!(
        entries(elsewhere.path()).is_empty(),
        "{:?}",
        entries(elsewhere.path())
    );
}

/// A config in `dir` syncing `contacts.csv` (relative) into `sandbox`, with `ledger` as
/// `ledger.path`.
fn write_config(dir: &Path, sandbox: &SandboxHandle, ledger: &str) -> PathBuf {
    let path = dir.join("quo-sync.toml");
    std::fs::write(
        &path,
        format!(
            "[quo]\nbase_url = \"{}\"\nrequests_per_second = 1000\n\n[ledger]\npath = \"{ledger}\"\n\n[source]\nkind = \"csv\"\npath = \"contacts.csv\"\n{}\n[log]\nformat = \"json\"\n",
            sandbox.base_url(),
            common::MAPPING
        ),
    )
    .unwrap();
    path
}

fn sample_csv() -> String {
    common::csv(&[common::row("p-1", 1), common::row("p-2", 2)])
}

async fn sandbox() -> SandboxHandle {
    SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap()
}

async fn once(config: &Path, cwd: &Path, api_key: &str) -> Output {
    let mut command = tokio::process::Command::from(bin());
    command
        .arg("--config")
        .arg(config)
        .arg("once")
        .current_dir(cwd)
        .env("QUO_API_KEY", api_key)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn relative_ledger_and_csv_paths_are_read_beside_the_config_file() {
    let sandbox = sandbox().await;
    let config_dir = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(config_dir.path().join("contacts.csv"), sample_csv()).unwrap();
    let config = write_config(config_dir.path(), &sandbox, "state/ledger.db");
    let out = once(&config, cwd.path(), sandbox.api_key()).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(config_dir.path().join("state/ledger.db").exists());
    assert!(entries(cwd.path()).is_empty(), "{:?}", entries(cwd.path()));
    let ledger_line = stderr
        .lines()
        .find(|l| l.contains("\"event\":\"config_path\"") && l.contains("ledger.path"))
        .unwrap_or_else(|| panic!("resolved ledger path not logged: {stderr}"));
    assert!(
        ledger_line.contains(
            &config_dir
                .path()
                .join("state/ledger.db")
                .display()
                .to_string()
        ),
        "{ledger_line}"
    );
    assert_eq!(common::sandbox_truth(&sandbox.base_url()).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_only_the_working_directory_holds_is_still_used_with_a_warning() {
    let sandbox = sandbox().await;
    let config_dir = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    // Yesterday's layout: the CSV and the ledger beside the process, not beside the config.
    std::fs::write(cwd.path().join("contacts.csv"), sample_csv()).unwrap();
    let config = write_config(config_dir.path(), &sandbox, "ledger.db");
    std::fs::write(cwd.path().join("ledger.db"), "").unwrap();
    let out = once(&config, cwd.path(), sandbox.api_key()).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("\"event\":\"path_from_working_directory\""))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(warnings.iter().any(|l| l.contains("source.path")));
    assert!(warnings.iter().any(|l| l.contains("ledger.path")));
    assert!(
        std::fs::metadata(cwd.path().join("ledger.db"))
            .unwrap()
            .len()
            > 0,
        "the existing ledger in the working directory was used"
    );
    assert!(!config_dir.path().join("ledger.db").exists());
}
