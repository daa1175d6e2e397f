//! Deploying it (#22): the real binary started the ways operators start it, from a working
//! directory other than the repository: relative paths read beside the config file, the old
//! working-directory paths still found (with a warning), and the container's exact command line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use quo_sync::sandbox::SandboxHandle;

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
    let sandbox = common::unlimited_sandbox().await;
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
    let sandbox = common::unlimited_sandbox().await;
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

fn run_bin(args: &[&str], cwd: &Path) -> Output {
    bin().args(args).current_dir(cwd).output().unwrap()
}

#[test]
fn help_shows_examples_exit_codes_and_where_the_config_is_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bin(&["--help"], dir.path());
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    for needle in [
        "Examples:",
        "quo-sync once --with-sandbox",
        "Exit codes:",
        "4  another process holds the ledger's writer lease",
        "QUO_SYNC_CONFIG",
        "./quo-sync.toml",
        "/etc/quo-sync/quo-sync.toml",
        "RUST_LOG",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }
}

#[test]
fn version_names_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = text(&run_bin(&["--version"], dir.path()));
    assert!(
        stdout.starts_with(&format!("quo-sync {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(head) = head {
        assert!(stdout.contains(&head), "{stdout} (HEAD {head})");
    }
}

#[test]
fn a_limit_must_be_positive_and_closed_choices_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bin(&["runs", "--limit", "0"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("--limit"), "{:?}", text(&out));
    let out = run_bin(&["sandbox", "--patch-mode", "sideways"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("possible values: merge, replace"),
        "{:?}",
        text(&out)
    );
}

#[test]
fn completions_and_a_man_page_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bin(&["completions", "bash"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    let (script, _) = text(&out);
    assert!(
        script.contains("complete -F") && script.contains("check-config"),
        "{script}"
    );
    let out = run_bin(&["man"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    let (page, _) = text(&out);
    assert!(
        page.starts_with(".ie") || page.contains(".TH quo-sync"),
        "{page}"
    );
    assert!(page.contains("healthcheck"), "{page}");
}

#[test]
fn the_config_is_found_in_the_working_directory_then_etc() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bin(&["check-config"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    if !Path::new("/etc/quo-sync/quo-sync.toml").exists() {
        assert!(
            text(&out).1.contains("no configuration file found"),
            "{:?}",
            text(&out)
        );
    }
    std::fs::write(dir.path().join("contacts.csv"), sample_csv()).unwrap();
    std::fs::write(
        dir.path().join("quo-sync.toml"),
        format!(
            "[source]\nkind = \"csv\"\npath = \"contacts.csv\"\n{}",
            common::MAPPING
        ),
    )
    .unwrap();
    let out = run_bin(&["check-config"], dir.path());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with("quo-sync.toml: OK"), "{stdout}");
}

#[test]
fn check_config_print_shows_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("contacts.csv"), sample_csv()).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[quo]\napi_key = \"qk-live-secret-1\"\n[ledger]\nurl = \"postgres://quo:pg-pass-2@db.example.com:5432/quo?sslmode=verify-full\"\n[source]\nkind = \"csv\"\npath = \"contacts.csv\"\n{}\n[reverse]\nwebhook_secret = \"whsec_c2VjcmV0LTMtc2l4dGVlbi1ieXRlcw==\"\n",
            common::MAPPING
        ),
    )
    .unwrap();
    let out = bin()
        .args(["check-config", "--print", "--config"])
        .arg(&config)
        .env("QUO_SYNC__SCHEDULE__INTERVAL", "90s")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for secret in [
        "qk-live-secret-1",
        "pg-pass-2",
        "whsec_c2VjcmV0LTMtc2l4dGVlbi1ieXRlcw==",
    ] {
        assert!(!stdout.contains(secret), "{secret} shown:\n{stdout}");
    }
    let printed: toml::Table = stdout.parse().expect("the printout is TOML");
    assert_eq!(printed["quo"]["api_key"].as_str(), Some("[REDACTED]"));
    assert_eq!(printed["schedule"]["interval"].as_str(), Some("1m 30s"));
    assert_eq!(printed["quo"]["requests_per_second"].as_integer(), Some(10));
    let url = printed["ledger"]["url"].as_str().unwrap();
    assert!(
        url.contains("sslmode=verify-full") && url.contains("quo:"),
        "{url}"
    );
    assert_eq!(
        printed["source"]["path"].as_str(),
        Some(
            dir.path()
                .join("contacts.csv")
                .display()
                .to_string()
                .as_str()
        )
    );
}

#[tokio::test]
async fn a_single_failed_cycle_keeps_the_only_replica_ready_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = quo_sync::ledger::Ledger::open(&dir.path().join("l.db"))
        .await
        .unwrap();
    let serve = |rule: quo_sync::ops::http::ReadinessRule| {
        let ledger = ledger.clone();
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let cancel = tokio_util::sync::CancellationToken::new();
            tokio::spawn(quo_sync::app::serve(
                listener,
                quo_sync::ops::http::router_with(ledger, None, rule),
                cancel.clone(),
            ));
            (base, cancel)
        }
    };
    let (default_base, _a) = serve(quo_sync::ops::http::ReadinessRule::default()).await;
    let (cycles_base, _b) = serve(quo_sync::ops::http::ReadinessRule {
        readiness: quo_sync::config::Readiness::Cycles,
        failed_cycles: 2,
    })
    .await;
    let ready = |base: String| async move {
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let fail = |n: u32| {
        let ledger = ledger.clone();
        async move {
            let id = format!("failed-{n}");
            ledger.start_run(&id, "run").await.unwrap();
            ledger
                .finish_run(&id, "failed", &Default::default(), 1, Some("quo: 500"))
                .await
                .unwrap();
        }
    };
    fail(1).await;
    assert_eq!(ready(default_base.clone()).await, 200);
    assert_eq!(ready(cycles_base.clone()).await, 200, "one failure of two");
    fail(2).await;
    assert_eq!(
        ready(default_base.clone()).await,
        200,
        "cycles are for alerts"
    );
    assert_eq!(ready(cycles_base.clone()).await, 503, "two in a row");
}

/// The runtime stage of the Dockerfile, as the container runs it.
struct Image {
    env: Vec<(String, String)>,
    user: Option<(u32, u32)>,
    workdir: String,
    command: Vec<String>,
    healthcheck: Vec<String>,
    /// `COPY <repo file> <absolute path>` of the runtime stage (from the build context).
    copies: Vec<(String, String)>,
}

/// A JSON array directive (`["quo-sync", "run"]`).
fn exec_form(text: &str) -> Vec<String> {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not exec form: {text}: {e}"))
}

fn read_dockerfile() -> Image {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let runtime = &text[text.rfind("\nFROM ").expect("a runtime stage")..];
    let mut image = Image {
        env: Vec::new(),
        user: None,
        workdir: "/".into(),
        command: Vec::new(),
        healthcheck: Vec::new(),
        copies: Vec::new(),
    };
    let mut entrypoint = Vec::new();
    let mut cmd = Vec::new();
    for line in runtime.lines() {
        let (directive, rest) = line.split_once(' ').unwrap_or((line, ""));
        match directive {
            "ENV" => {
                let (key, value) = rest.split_once('=').expect("ENV KEY=VALUE");
                image.env.push((key.trim().into(), value.trim().into()));
            }
            "USER" => {
                let (uid, gid) = rest.trim().split_once(':').expect("USER uid:gid");
                image.user = Some((uid.parse().unwrap(), gid.parse().unwrap()));
            }
            "WORKDIR" => image.workdir = rest.trim().into(),
            "ENTRYPOINT" => entrypoint = exec_form(rest),
            "CMD" => cmd = exec_form(rest),
            "HEALTHCHECK" => {
                image.healthcheck = exec_form(rest.split_once("CMD ").expect("HEALTHCHECK CMD").1)
            }
            "COPY" if !rest.starts_with("--from") => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                image.copies.push((parts[0].into(), parts[1].into()));
            }
            _ => {}
        }
    }
    image.command = entrypoint.into_iter().chain(cmd).collect();
    image
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The container's filesystem under `root`: its absolute paths mapped below it.
struct Container {
    root: tempfile::TempDir,
    image: Image,
    extra_env: Vec<(String, String)>,
}

impl Container {
    fn map(&self, text: &str) -> String {
        let root = self.root.path().display().to_string();
        text.replace("/etc/quo-sync", &format!("{root}/etc/quo-sync"))
            .replace("/var/lib/quo-sync", &format!("{root}/var/lib/quo-sync"))
    }

    /// Lays out what the image holds: its COPYs from the build context, the data volume's
    /// first contents (the sample CSV, as the build stage prepares it) owned by USER.
    fn new(extra_env: Vec<(String, String)>) -> Container {
        let root = tempfile::tempdir().unwrap();
        let image = read_dockerfile();
        let container = Container {
            root,
            image,
            extra_env,
        };
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (from, to) in &container.image.copies {
            if !to.starts_with("/etc/") {
                continue;
            }
            let target = PathBuf::from(container.map(to));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            let text = std::fs::read_to_string(repo.join(from)).unwrap();
            std::fs::write(&target, container.map(&text)).unwrap();
        }
        let volume = PathBuf::from(container.map("/var/lib/quo-sync"));
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::copy(
            repo.join("config/contacts.example.csv"),
            volume.join("contacts.csv"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            container.root.path(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        if let (true, Some((uid, gid))) = (is_root(), container.image.user) {
            let status = std::process::Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(&volume)
                .status()
                .unwrap();
            assert!(status.success());
        }
        container
    }

    /// `args` run the way the container runs them: the image's environment only (plus what
    /// `docker run -e` adds), as its USER, in its WORKDIR.
    fn command(&self, args: &[String]) -> tokio::process::Command {
        assert_eq!(
            args[0], "quo-sync",
            "the image's binary is on PATH as quo-sync"
        );
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"));
        command
            .args(args[1..].iter().map(|a| self.map(a)))
            .env_clear();
        for (key, value) in self.image.env.iter().chain(&self.extra_env) {
            command.env(key, self.map(value));
        }
        command.current_dir(self.map(&self.image.workdir));
        if let (true, Some((uid, gid))) = (is_root(), self.image.user) {
            command.uid(uid).gid(gid);
        }
        command
    }
}

async fn wait_until<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_containers_command_line_syncs_answers_its_healthcheck_and_backs_up_while_running() {
    let sandbox = common::unlimited_sandbox().await;
    let port = common::free_port();
    // What `docker run -e` adds: the key, and (this test only) the sandbox instead of Quo and a
    // free port instead of 9464, since tests run side by side.
    let container = Container::new(vec![
        ("QUO_API_KEY".into(), sandbox.api_key().into()),
        ("QUO_SYNC__QUO__BASE_URL".into(), sandbox.base_url()),
        (
            "QUO_SYNC__SERVICE__LISTEN".into(),
            format!("0.0.0.0:{port}"),
        ),
    ]);
    assert_eq!(container.image.command, ["quo-sync", "run"]);
    assert_eq!(container.image.healthcheck, ["quo-sync", "healthcheck"]);
    let service = container
        .command(&container.image.command)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the container's command starts");
    let pid = service.id().unwrap().to_string();

    let healthcheck = || async {
        container
            .command(&container.image.healthcheck)
            .output()
            .await
            .unwrap()
    };
    wait_until("the HEALTHCHECK passes", 60, || async {
        healthcheck().await.status.success()
    })
    .await;
    wait_until(
        "the sample's 23 contacts are in the sandbox",
        60,
        || async { common::sandbox_truth(&sandbox.base_url()).await.len() == 23 },
    )
    .await;
    let volume = PathBuf::from(container.map("/var/lib/quo-sync"));
    assert!(
        volume.join("quo-sync.db").exists(),
        "{:?}",
        entries(&volume)
    );
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(volume.join("quo-sync.db")).unwrap().uid();
        assert_eq!(Some(owner), container.image.user.map(|u| u.0));
    }
    let metrics = || async {
        reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // The cycle's duration is recorded as it finishes, a moment after its last contact.
    wait_until(
        "the cycle's duration is a histogram in /metrics",
        30,
        || async {
            metrics()
                .await
                .contains("# TYPE quo_sync_cycle_duration_seconds histogram")
        },
    )
    .await;
    let metrics = metrics().await;
    assert!(
        metrics.contains("quo_sync_cycle_duration_seconds_bucket{le=\"0.5\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("quo_sync_build_info{"), "{metrics}");

    // A backup while the service runs, as the same user.
    let backup = container
        .command(&[
            "quo-sync".into(),
            "ledger".into(),
            "backup".into(),
            "--to".into(),
            "/var/lib/quo-sync/backup/ledger.db".into(),
        ])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = text(&backup);
    assert_eq!(backup.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("integrity ok"), "{stdout}");
    let copy = volume.join("backup/ledger.db");
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", copy.display()))
        .await
        .unwrap();
    let linked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE quo_id IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(linked, 23);
    conn.close().await.unwrap();

    // SIGHUP: a clean stop that hands the writer lease over.
    signal(&pid, "-HUP");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        service.wait_with_output(),
    )
    .await
    .expect("SIGHUP stops the service")
    .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("\"signal\":\"SIGHUP\"")
            && stderr.contains("\"event\":\"service_stopped\""),
        "{stderr}"
    );
    let status = container
        .command(&["quo-sync".into(), "status".into(), "--json".into()])
        .output()
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["writer"]["live"], false, "{status}");
    assert!(!healthcheck().await.status.success(), "nothing answers now");
}

/// Sends `signal` (`-INT`, `-TERM`) to `pid`.
fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_ctrl_c_exits_at_once_when_the_first_cannot_stop_the_wait() {
    let sandbox = common::unlimited_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("contacts.csv"), sample_csv()).unwrap();
    let config = write_config(dir.path(), &sandbox, "ledger.db");
    let spawn = |args: &[&str]| {
        tokio::process::Command::from(bin())
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("QUO_API_KEY", sandbox.api_key())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    // A service holds the writer lease.
    let service = spawn(&["run"]);
    wait_until("the service holds the lease", 30, || async {
        let status = tokio::process::Command::from(bin())
            .arg("--config")
            .arg(&config)
            .args(["status", "--json"])
            .output()
            .await
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&status.stdout)
            .is_ok_and(|v| v["writer"]["live"] == true)
    })
    .await;
    // A one-shot writer waits up to a minute for it; the operator presses Ctrl-C.
    let mut once = spawn(&["once", "--wait", "60s"]);
    let pid = once.id().unwrap().to_string();
    let waiting = tokio::time::timeout(std::time::Duration::from_secs(2), once.wait()).await;
    assert!(waiting.is_err(), "once waits for the lease: {waiting:?}");
    signal(&pid, "-INT");
    let after_first = tokio::time::timeout(std::time::Duration::from_secs(1), once.wait()).await;
    assert!(
        after_first.is_err(),
        "the first Ctrl-C does not end the wait"
    );
    signal(&pid, "-INT");
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), once.wait_with_output())
        .await
        .expect("the second Ctrl-C exits at once")
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\"event\":\"shutdown_forced\"")
            && stderr.contains("\"signal\":\"SIGINT\""),
        "{stderr}"
    );
    // The service is untouched and stops cleanly.
    let service_pid = service.id().unwrap().to_string();
    signal(&service_pid, "-TERM");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        service.wait_with_output(),
    )
    .await
    .expect("SIGTERM stops the service")
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
}

/// Every configuration the repository ships for a deployment passes `check-config`, its
/// absolute paths mapped to a folder holding the files they name.
#[test]
fn the_shipped_deployment_configs_pass_check_config() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = tempfile::tempdir().unwrap();
    let map = |text: &str| {
        text.replace(
            "/etc/quo-sync",
            &root.path().join("etc").display().to_string(),
        )
        .replace(
            "/var/lib/quo-sync",
            &root.path().join("var").display().to_string(),
        )
    };
    let secrets = root.path().join("etc/secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::create_dir_all(root.path().join("var")).unwrap();
    for (name, value) in [
        ("quo_api_key", "k".to_string()),
        ("crm_token", "t".to_string()),
        (
            "ledger_url",
            "postgres://quo@db.example.com:5432/quo?sslmode=verify-full".to_string(),
        ),
    ] {
        std::fs::write(secrets.join(name), value).unwrap();
    }
    std::fs::copy(
        repo.join("config/contacts.example.csv"),
        root.path().join("var/contacts.csv"),
    )
    .unwrap();
    // The ConfigMap's embedded quo-sync.toml.
    let configmap = std::fs::read_to_string(repo.join("docs/k8s/configmap.yaml")).unwrap();
    let embedded: String = configmap
        .split_once("quo-sync.toml: |\n")
        .expect("the ConfigMap holds quo-sync.toml")
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let container = std::fs::read_to_string(repo.join("config/container.toml")).unwrap();
    for (name, config) in [("configmap.toml", embedded), ("container.toml", container)] {
        let path = root.path().join(name);
        std::fs::write(&path, map(&config)).unwrap();
        let out = bin()
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{name}: {stdout}{stderr}");
    }
}

/// Markdown files a reader opens: the README, the top-level notes and everything under docs/.
fn markdown_files(repo: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "CHANGELOG.md", "SECURITY.md"]
        .iter()
        .map(|f| repo.join(f))
        .filter(|p| p.exists())
        .collect();
    let mut folders = vec![repo.join("docs")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files
}

#[test]
fn every_link_in_the_readme_and_docs_resolves_inside_the_repository() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut broken = Vec::new();
    for file in markdown_files(repo) {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let end = tail.find(')').unwrap_or(tail.len());
            let target = &tail[..end];
            rest = &tail[end..];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            let resolved = file.parent().unwrap().join(path);
            let inside = resolved
                .canonicalize()
                .is_ok_and(|p| p.starts_with(repo.canonicalize().unwrap()));
            if !inside {
                broken.push(format!("{}: {target}", file.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links that do not resolve inside the repository:\n{}",
        broken.join("\n")
    );
}

#[test]
fn nothing_points_at_the_contract_outside_the_repository() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Spelled in two halves so this file does not match itself.
    let needle = format!("{}/quo-", "shared");
    let mut found = Vec::new();
    let mut folders = vec![
        repo.join("src"),
        repo.join("tests"),
        repo.join("benches"),
        repo.join("docs"),
    ];
    let mut files = vec![repo.join("README.md")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.push(path);
            }
        }
    }
    for file in files {
        if let Ok(text) = std::fs::read_to_string(&file)
            && text.contains(&needle)
        {
            found.push(file.display().to_string());
        }
    }
    assert!(
        found.is_empty(),
        "point at docs/quo-api.md instead: {found:?}"
    );
}

/// #22: the README is read in five minutes: under 220 lines, with a table of contents whose every
/// anchor names one of its headings, and a documentation index that reaches every page in docs/.
#[test]
fn the_readme_is_short_and_its_contents_and_index_reach_everything() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines < 220,
        "README.md has {lines} lines; keep it under 220"
    );
    // GitHub's anchor for a heading: lower case, spaces to '-', punctuation other than '-' dropped.
    let anchors: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| {
            h.to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let mut rest = readme.as_str();
    let mut missing = Vec::new();
    while let Some(at) = rest.find("](#") {
        let tail = &rest[at + 3..];
        let end = tail.find(')').unwrap_or(tail.len());
        if !anchors.iter().any(|a| a == &tail[..end]) {
            missing.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    assert!(
        missing.is_empty(),
        "contents entries with no heading: {missing:?}"
    );
    let unlisted: Vec<String> = std::fs::read_dir(repo.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .filter(|name| !readme.contains(&format!("(docs/{name})")))
        .collect();
    assert!(
        unlisted.is_empty(),
        "pages in docs/ the README never links to: {unlisted:?}"
    );
}

/// Every `event = "…"` a line of the service logs is named somewhere in `docs/`: the event names
/// are promised stable for alerting (`docs/logs.md`), so an operator must be able to look each
/// one up.
#[test]
fn every_log_event_is_documented() {
    fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, into);
            } else if path.extension().is_some_and(|e| e == "rs") {
                into.push(path);
            }
        }
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&repo.join("src"), &mut files);
    let mut events = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (at, _) in text.match_indices("event = \"") {
            let name: String = text[at + 9..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            events.insert(name);
        }
    }
    assert!(events.len() > 100, "found only {} events", events.len());
    let docs: String = std::fs::read_dir(repo.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let named = |event: &str| {
        docs.match_indices(event).any(|(at, _)| {
            let before = docs[..at].chars().next_back();
            let after = docs[at + event.len()..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            !word(before) && !word(after)
        })
    };
    let missing: Vec<&String> = events.iter().filter(|e| !named(e)).collect();
    assert!(
        missing.is_empty(),
        "log events named nowhere in docs/: {missing:?}"
    );
}
