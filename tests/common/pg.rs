//! A throwaway PostgreSQL cluster for the tests: started once per test binary (initdb and
//! pg_ctl as the `postgres` user, a free loopback port, sockets and data in a temp folder), with
//! a fresh database per test.
//!
//! A static's Drop never runs, so a watchdog shell started with the cluster waits for this test
//! process to exit (however it exits) and then stops the cluster (`pg_ctl stop -m immediate`)
//! and removes the folder. The cluster serves TLS (`ssl = on`) with a throwaway CA and server
//! certificate made by Debian's `openssl` command (`tls()` hands the CA and an unrelated CA to
//! the TLS tests). Without PostgreSQL binaries each test says `SKIPPED` in the `cargo test`
//! output, except under `CI`, where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

struct Cluster {
    port: u16,
    tls: Tls,
}

/// The cluster's throwaway certificates.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA that signed the server's certificate (`sslrootcert` for `verify-full`).
    pub ca: PathBuf,
    /// A CA that signed nothing the server holds (a wrong `sslrootcert`).
    pub wrong_ca: PathBuf,
}

/// Runs `openssl` with `args` in `dir`, panicking with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl (Debian package `openssl`) is needed for the PostgreSQL TLS tests");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate it signs for `localhost` and `127.0.0.1`, and an unrelated CA,
/// all EC P-256 and valid for two days, in `dir`.
fn make_certificates(dir: &Path) -> Tls {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [("ca", "quo-sync test CA"), ("wrong-ca", "unrelated CA")] {
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        let subject = format!("/CN={cn}");
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt]);
        openssl(dir, &args);
    }
    let mut args = vec!["req", "-subj", "/CN=localhost"];
    args.extend(ec);
    args.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    // PostgreSQL refuses a key others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod server.key");
    Tls {
        ca: dir.join("ca.crt"),
        wrong_ca: dir.join("wrong-ca.crt"),
    }
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    if let Some(dir) = found.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (initdb refuses root).
fn run_as_postgres(bin: &Path, args: &[&str]) -> std::process::Output {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

fn start() -> Option<Cluster> {
    // Without the binaries each test that asks for a database is skipped visibly (a failure
    // under CI): see `database`.
    let bin = bin_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("quo-sync-pg-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let data = dir.join("data");
    let tls = make_certificates(&dir);
    if is_root() {
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .arg(dir.join("server.key"))
            .status()
            .expect("chown");
        assert!(status.success(), "chown postgres {}", dir.display());
    }
    let out = run_as_postgres(
        &bin.join("initdb"),
        &[
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
    );
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let options = format!(
        "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key",
        dir = dir.display()
    );
    let pg_ctl = bin.join("pg_ctl");
    let log = dir.join("postgres.log");
    let out = run_as_postgres(
        &pg_ctl,
        &[
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &options,
            "-w",
            "-t",
            "60",
            "start",
        ],
    );
    assert!(
        out.status.success(),
        "pg_ctl start failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The watchdog: once this process is gone, stop the cluster and remove its folder.
    let stop = if is_root() {
        format!(
            "runuser -u postgres -- {} -D {} stop -m immediate",
            pg_ctl.display(),
            data.display()
        )
    } else {
        format!(
            "{} -D {} stop -m immediate",
            pg_ctl.display(),
            data.display()
        )
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    // Detached on purpose: it must outlive this process to stop the cluster after it.
    #[allow(clippy::zombie_processes)]
    let _watchdog = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the cluster watchdog");
    Some(Cluster { port, tls })
}

/// The cluster's CA and an unrelated CA (starting the cluster if needed), or `None` when
/// PostgreSQL is not installed outside CI.
pub async fn tls() -> Option<Tls> {
    tokio::task::spawn_blocking(|| CLUSTER.get_or_init(start).as_ref().map(|c| c.tls.clone()))
        .await
        .expect("cluster start")
}

/// A URL to a fresh, empty database of the shared test cluster, or `None` (the test is skipped
/// visibly, see `common::skip`; under CI a failure) when PostgreSQL is not installed.
pub async fn database() -> Option<String> {
    let cluster =
        tokio::task::spawn_blocking(|| CLUSTER.get_or_init(start).as_ref().map(|c| c.port))
            .await
            .expect("cluster start");
    let Some(port) = cluster else {
        super::skip(
            "PostgreSQL is not installed (initdb and pg_ctl under /usr/lib/postgresql/*/bin or on PATH; apt-get install postgresql)",
        );
        return None;
    };
    let name = format!(
        "t{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    use sqlx::Connection;
    let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the test cluster");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    Some(format!("postgres://postgres@127.0.0.1:{port}/{name}"))
}
