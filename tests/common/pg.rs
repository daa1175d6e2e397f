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
//!
//! A test that restarts the server gets one of its own ([`OwnServer`]): a restart of the shared
//! cluster would cut the connections of the binary's other tests.

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

/// `common::free_port`, kept here because the bench compiles this file without `common`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Why `pg_ctl start` failed.
#[derive(Debug)]
enum StartFailure {
    /// Something else took the port (the server log says `Address already in use`).
    PortTaken(String),
    /// Anything else, with pg_ctl's output and the server log.
    Other(String),
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PortTaken(why) | Self::Other(why) => f.write_str(why),
        }
    }
}

/// An initialised data directory and how to start the server on it.
#[derive(Clone)]
struct Server {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    options: String,
    log: PathBuf,
    port: u16,
}

impl Server {
    /// `initdb` in a new temp folder (as `postgres` when we are root), on a free loopback port;
    /// `tls` makes a throwaway CA and serves `ssl = on` with it.
    fn init(tls: bool) -> Option<(Server, Option<Tls>)> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("quo-sync-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let data = dir.join("data");
        let certificates = tls.then(|| make_certificates(&dir));
        if is_root() {
            let mut chown = Command::new("chown");
            chown.args(["postgres:postgres"]).arg(&dir);
            if tls {
                chown.arg(dir.join("server.key"));
            }
            let status = chown.status().expect("chown");
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
        let log = dir.join("postgres.log");
        // The port was free when asked for, but anything on the machine may bind it before the
        // server does (another test binary's cluster, a sandbox, an outgoing connection): then
        // the server cannot listen, and it starts again on another free port.
        let mut attempts = 0;
        let server = loop {
            attempts += 1;
            let port = free_port();
            let mut options = format!(
                "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
                dir = dir.display()
            );
            if tls {
                options.push_str(&format!(
                    " -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key",
                    dir = dir.display()
                ));
            }
            let server = Server {
                bin: bin.clone(),
                dir: dir.clone(),
                data: data.clone(),
                options,
                log: log.clone(),
                port,
            };
            match server.try_start() {
                Ok(()) => break server,
                Err(StartFailure::PortTaken(why)) if attempts < 5 => {
                    eprintln!("PostgreSQL could not listen on port {port}; another port: {why}");
                }
                Err(failure) => panic!("{failure}"),
            }
        };
        server.watchdog();
        Some((server, certificates))
    }

    /// `pg_ctl start`, waiting (`-w`, up to a minute) until the server accepts connections.
    fn try_start(&self) -> Result<(), StartFailure> {
        // Each start's log on its own: the port check below reads only this start's lines.
        let _ = std::fs::remove_file(&self.log);
        let out = run_as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                self.log.to_str().unwrap(),
                "-o",
                &self.options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let why = format!(
            "pg_ctl start failed: {}\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
        if log.contains("Address already in use") {
            Err(StartFailure::PortTaken(why))
        } else {
            Err(StartFailure::Other(why))
        }
    }

    /// `pg_ctl stop -m <mode>` (`fast`: sessions are ended, `immediate`: a crash).
    fn stop(&self, mode: &str) {
        let out = run_as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", self.data.to_str().unwrap(), "-m", mode, "-w", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Once this process is gone (however it exits), stops the server and removes its folder:
    /// a static's Drop never runs.
    fn watchdog(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = if is_root() {
            format!(
                "runuser -u postgres -- {} -D {} stop -m immediate",
                pg_ctl.display(),
                self.data.display()
            )
        } else {
            format!(
                "{} -D {} stop -m immediate",
                pg_ctl.display(),
                self.data.display()
            )
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        // Detached on purpose: it must outlive this process to stop the server after it.
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster watchdog");
    }
}

fn start() -> Option<Cluster> {
    // Without the binaries each test that asks for a database is skipped visibly (a failure
    // under CI): see `database`.
    let (server, tls) = Server::init(true)?;
    Some(Cluster {
        port: server.port,
        tls: tls.expect("made with the cluster"),
    })
}

/// A PostgreSQL server of one test's own, which it may stop and start again (the shared cluster
/// serves the binary's other tests, which a restart would disturb). Stopped and removed on drop.
pub struct OwnServer {
    server: Server,
}

impl OwnServer {
    /// A new server (no TLS) with an empty database `quo`, or `None` (the test is skipped
    /// visibly; under CI a failure) when PostgreSQL is not installed.
    pub async fn start() -> Option<OwnServer> {
        let Some((server, _)) = tokio::task::spawn_blocking(|| Server::init(false))
            .await
            .expect("server start")
        else {
            super::skip(
                "PostgreSQL is not installed (initdb and pg_ctl under /usr/lib/postgresql/*/bin or on PATH; apt-get install postgresql)",
            );
            return None;
        };
        use sqlx::Connection;
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to the server");
        sqlx::query("CREATE DATABASE quo")
            .execute(&mut conn)
            .await
            .expect("create the database");
        conn.close().await.ok();
        Some(OwnServer { server })
    }

    /// The URL of its database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/quo", self.server.port)
    }

    /// When the server (its postmaster) started, as it says.
    pub async fn started_at(&self) -> String {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url())
            .await
            .expect("connect to the server");
        let at: String = sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
            .fetch_one(&mut conn)
            .await
            .expect("ask the start time");
        conn.close().await.ok();
        at
    }

    /// Stops the server (`mode`: `fast` ends every session as a service restart does,
    /// `immediate` as a crash), leaves it down for `down_for`, starts it again on the same port
    /// and data, and returns once it accepts connections.
    pub async fn restart(&self, mode: &'static str, down_for: std::time::Duration) {
        let server = self.server.clone();
        tokio::task::spawn_blocking(move || server.stop(mode))
            .await
            .expect("stop");
        tokio::time::sleep(down_for).await;
        // The port is free while the server is down, so another process may bind it meanwhile;
        // the URL the test holds names it, so wait for it to be free again.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let server = self.server.clone();
            match tokio::task::spawn_blocking(move || server.try_start())
                .await
                .expect("start")
            {
                Ok(()) => return,
                Err(StartFailure::PortTaken(why)) if std::time::Instant::now() < deadline => {
                    eprintln!("PostgreSQL's port is taken; starting again shortly: {why}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(failure) => panic!("{failure}"),
            }
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = run_as_postgres(
            &self.server.bin.join("pg_ctl"),
            &[
                "-D",
                self.server.data.to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.server.dir);
    }
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
