//! TLS to the PostgreSQL ledger (#22), against the throwaway test cluster started with
//! `ssl = on` and a certificate signed by a throwaway CA (`tests/common/pg.rs`, made with
//! Debian's `openssl`). The real binary runs `once` with the ledger URL a user would write.

mod common;

use std::path::Path;
use std::process::Output;

use quo_sync::sandbox::SandboxHandle;

/// Runs `quo-sync once` on a two-row CSV against `sandbox`, with `ledger_url` as `ledger.url`.
async fn once_with_ledger(dir: &Path, sandbox: &SandboxHandle, ledger_url: &str) -> Output {
    let csv = dir.join("contacts.csv");
    std::fs::write(
        &csv,
        common::csv(&[common::row("tls-1", 1), common::row("tls-2", 2)]),
    )
    .unwrap();
    let config = dir.join("quo-sync.toml");
    std::fs::write(
        &config,
        format!(
            "[quo]\nbase_url = \"{}\"\nrequests_per_second = 1000\n\n[ledger]\nurl = \"{ledger_url}\"\n\n[source]\nkind = \"csv\"\npath = \"{}\"\n{}\n[log]\nformat = \"json\"\n",
            sandbox.base_url(),
            csv.display(),
            common::MAPPING
        ),
    )
    .unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["once", "--config"])
        .arg(&config)
        .env("QUO_API_KEY", sandbox.api_key())
        .env("PGPASSWORD", "tls-test-password")
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run quo-sync")
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_with_the_servers_ca_syncs_over_tls() {
    let (Some(url), Some(tls)) = (common::pg::database().await, common::pg::tls().await) else {
        return;
    };
    let sandbox = common::unlimited_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{url}?sslmode=verify-full&sslrootcert={}", tls.ca.display());
    let out = once_with_ledger(dir.path(), &sandbox, &url).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let connected = stderr
        .lines()
        .find(|l| l.contains("\"event\":\"ledger_connected\""))
        .unwrap_or_else(|| panic!("no ledger_connected line: {stderr}"));
    assert!(connected.contains("\"tls\":true"), "{connected}");
    // The rows are in the ledger, and the server itself saw our session encrypted.
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let linked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE quo_id IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(linked, 2);
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(ssl);
    assert_eq!(common::sandbox_truth(&sandbox.base_url()).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_fails_with_a_clear_error_and_exit_2() {
    let (Some(url), Some(tls)) = (common::pg::database().await, common::pg::tls().await) else {
        return;
    };
    let sandbox = common::unlimited_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    for mode in ["verify-full", "verify-ca"] {
        let url = format!(
            "{url}?sslmode={mode}&sslrootcert={}",
            tls.wrong_ca.display()
        );
        let out = once_with_ledger(dir.path(), &sandbox, &url).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{mode}: {stderr}");
        assert!(stderr.contains("TLS failed"), "{mode}: {stderr}");
        assert!(stderr.contains("certificate"), "{mode}: {stderr}");
        assert!(stderr.contains("sslrootcert"), "{mode}: {stderr}");
        assert!(!stderr.contains("tls-test-password"), "{stderr}");
    }
    assert!(
        common::sandbox_truth(&sandbox.base_url()).await.is_empty(),
        "nothing was sent to Quo"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sslmode_require_encrypts_without_a_ca() {
    let Some(url) = common::pg::database().await else {
        return;
    };
    let sandbox = common::unlimited_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let out = once_with_ledger(dir.path(), &sandbox, &format!("{url}?sslmode=require")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("\"event\":\"ledger_connected\"") && l.contains("\"tls\":true")),
        "{stderr}"
    );
}
