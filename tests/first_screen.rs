//! The first screen: the quick start (`quo-sync once --with-sandbox` with the shipped config)
//! as a new user sees it on a terminal, and the same run piped.
//!
//! The terminal is a real pseudo-terminal (`portable-pty`, wezterm's: it sets the window size,
//! which a program reads to fit its lines, and hands back the raw byte stream), rendered by a
//! terminal emulator (`vt100`) so the test counts the lines a person sees after every redraw
//! and clear, not the escape codes in between. Debian's `script` would give neither a window
//! size nor a byte stream to read while the program runs.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use portable_pty::{CommandBuilder, PtySize, native_pty_system};

const ROWS: u16 = 40;
/// Wider than the view may use, so a line past 120 columns would show as one.
const COLS: u16 = 200;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Variables that would change what the quick start prints.
const CLEARED: &[&str] = &[
    "NO_COLOR",
    "RUST_LOG",
    "QUO_SYNC_CONFIG",
    "QUO_API_KEY",
    "CLICOLOR",
    "CLICOLOR_FORCE",
];

fn quo_sync_overrides() -> Vec<String> {
    std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("QUO_SYNC__"))
        .collect()
}

/// Contacts the sandbox at `base` holds (its admin route: no auth, no rate limit); `None` when
/// it no longer answers.
async fn sandbox_contacts(client: &reqwest::Client, base: &str) -> Option<usize> {
    let body: serde_json::Value = client
        .get(format!("{base}/_sandbox/contacts"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(body["data"].as_array().map_or(0, Vec::len))
}

/// Every `pos/len contacts` frame of the write bar in `text`, in order.
fn bar_frames(text: &str) -> Vec<(u64, u64)> {
    let mut frames = Vec::new();
    for (at, _) in text.match_indices(" contacts") {
        let head = &text[..at];
        let start = head
            .rfind(|c: char| !(c.is_ascii_digit() || c == '/'))
            .map_or(0, |i| i + 1);
        if let Some((pos, len)) = head[start..].split_once('/')
            && let (Ok(pos), Ok(len)) = (pos.parse(), len.parse())
        {
            frames.push((pos, len));
        }
    }
    frames
}

/// The sandbox's address in the first line (`… the Quo sandbox at http://127.0.0.1:PORT`).
fn sandbox_url(text: &str) -> Option<String> {
    let at = text.find("http://127.0.0.1:")?;
    let end = text[at..]
        .find(|c: char| c.is_whitespace())
        .map_or(text.len(), |e| at + e);
    Some(text[at..end].to_string())
}

/// quo-sync running in a pseudo-terminal: its exit, its output as it comes, and its keyboard.
struct OnTerminal {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    output: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    keys: Box<dyn Write + Send>,
    /// The screen as a person sees it.
    screen: vt100::Parser,
}

/// Starts `quo-sync args…` from the repository (so the shipped config is used) in a
/// pseudo-terminal `COLS` wide, with `env` set and what would change its output cleared.
fn on_terminal(args: &[&str], env: &[(&str, &str)]) -> OnTerminal {
    let pty = native_pty_system()
        .openpty(PtySize {
            rows: ROWS,
            cols: COLS,
            pixel_width: 0,
            pixel_height: 0,
        })
        .expect("a pseudo-terminal");
    let mut command = CommandBuilder::new(env!("CARGO_BIN_EXE_quo-sync"));
    command.args(args);
    command.cwd(repo());
    command.env("TERM", "xterm-256color");
    for name in CLEARED
        .iter()
        .map(|s| s.to_string())
        .chain(quo_sync_overrides())
    {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let child = pty.slave.spawn_command(command).expect("spawn quo-sync");
    drop(pty.slave);
    let mut reader = pty.master.try_clone_reader().expect("pty reader");
    let keys = pty.master.take_writer().expect("pty writer");
    let (tx, output) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EOF or EIO once the child has exited.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let size = |n: u16| std::num::NonZeroU16::new(n).expect("not zero");
    OnTerminal {
        child,
        output,
        keys,
        screen: vt100::Parser::new(size(ROWS), size(COLS), 0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_on_a_terminal_reads_like_a_well_made_cli() {
    let OnTerminal {
        mut child,
        output: mut rx,
        mut screen,
        ..
    } = on_terminal(&["once", "--with-sandbox"], &[]);
    let client = reqwest::Client::new();
    let mut stream = String::new();
    let mut frames_checked = 0usize;
    // (bar position, contacts the sandbox held when that frame was read)
    let mut seen: Vec<(u64, u64, usize)> = Vec::new();
    // Frames that arrived after quo-sync (and the sandbox in it) had exited.
    let mut after_exit: Vec<(u64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .expect("quo-sync finishes within a minute");
        let Some(chunk) = chunk else { break };
        screen.process(&chunk);
        stream.push_str(&String::from_utf8_lossy(&chunk));
        let frames = bar_frames(&stream);
        if frames.len() > frames_checked {
            let base = sandbox_url(&stream).expect("the first line names the sandbox");
            // Read after the frame arrived: a true bar can never be ahead of the sandbox.
            match sandbox_contacts(&client, &base).await {
                Some(held) => {
                    for &(pos, len) in &frames[frames_checked..] {
                        seen.push((pos, len, held));
                    }
                }
                // The sandbox lives in quo-sync's process: on a loaded machine the last frames
                // can be read after it shut down, when there is no sandbox left to ask. Only
                // then: the process must be exiting.
                None => {
                    common::poll("quo-sync exits once its sandbox is gone", async || {
                        child.try_wait().expect("exit status").is_some()
                    })
                    .await;
                    after_exit.extend_from_slice(&frames[frames_checked..]);
                }
            }
            frames_checked = frames.len();
        }
    }
    let status = child.wait().expect("exit status");
    assert_eq!(status.exit_code(), 3, "the sample quarantines rows: exit 3");

    // The bar counts contacts Quo confirmed: never more than the sandbox holds.
    assert!(
        !seen.is_empty(),
        "23 creates at 10/s last over a second: a bar is shown while quo-sync runs"
    );
    // Frames read once quo-sync had exited are held to the 23 contacts it created (the summary
    // below says so; the sandbox cannot be asked any more).
    seen.extend(after_exit.iter().map(|&(pos, len)| (pos, len, 23)));
    for &(pos, len, held) in &seen {
        assert!(
            pos as usize <= held,
            "the bar showed {pos}/{len} while the sandbox held {held} contacts: {seen:?}"
        );
        assert!(
            len <= 23,
            "only the 23 creates are counted, not rows read: {seen:?}"
        );
    }
    assert_eq!(
        seen.iter().map(|s| s.0).max(),
        Some(23),
        "the bar reaches 23: {seen:?}"
    );

    let text = screen.screen().contents();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let shown = lines.join("\n");
    assert!(
        lines.len() <= 15,
        "at most about 15 lines, got {}:\n{shown}",
        lines.len()
    );
    for line in &lines {
        assert!(
            line.trim_end().chars().count() <= 120,
            "a line wider than 120 columns:\n{line}"
        );
        assert!(!line.contains("quo_sync::"), "no module paths:\n{line}");
    }
    for needle in [
        // The CSV as the user can type its path, not the absolute path it resolved to.
        "Syncing csv config/contacts.example.csv → the Quo sandbox at http://127.0.0.1:",
        "Read 27 rows in ",
        ": 23 to create, 4 held back\n",
        "Created 23 contacts",
        "Held back 4 rows",
        "line 18  C-1017  phone \"555-CALL-NOW\"",
        "line 19  C-1018  lead_score \"high\"",
        "line 27  crm_id \"\": the id column \"crm_id\" is empty",
        "line 28  C-1002  crm_id \"C-1002\": duplicate id",
        "line 26  updated_at \"last tuesday\"",
        // 23 creates, the custom field definitions, one page listing the (empty) workspace and
        // one page of the listing that confirms it.
        "26 requests (minimum 26)",
        "quo-sync run --with-sandbox",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
    assert!(
        !shown.contains("contact created"),
        "no per-record lines without -v:\n{shown}"
    );

    // The README's transcript is what a fresh clone prints today (times, ports and counts of
    // milliseconds aside).
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let block = readme
        .split_once("`cargo run -- once --with-sandbox` does a single cycle")
        .and_then(|(_, rest)| rest.split_once("```text\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("the README's quick start transcript");
    let words = |line: &str| -> Vec<String> {
        // The pace the writes reached depends on the machine's load: `(at Quo's limit of 10/s)`
        // or `(9.1/s; Quo allows 10/s)`.
        let line = match line.trim_start().starts_with("Created") {
            true => line.split(" (").next().unwrap_or(line),
            false => line,
        };
        line.split_whitespace()
            .filter(|w| !w.contains(|c: char| c.is_ascii_digit()))
            .map(String::from)
            .collect()
    };
    let readme_lines: Vec<Vec<String>> = block.lines().map(words).collect();
    let screen_lines: Vec<Vec<String>> = lines.iter().map(|l| words(l)).collect();
    assert_eq!(
        readme_lines, screen_lines,
        "the README's transcript differs from the screen:\n{block}\n---\n{shown}"
    );
}

/// A JSON line with what changes from run to run (times, ids, ports, temp paths, counts that
/// depend on timing) replaced, so two runs compare equal when their events and fields do.
fn normalised(line: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    let object = value.as_object_mut().expect("an object");
    for key in [
        "timestamp",
        "addr",
        "base_url",
        "ledger",
        "quo_id",
        "pid",
        "host",
        "ms",
        "duration_ms",
        "lease_ms",
        "requests",
        "rate_limited",
    ] {
        if let Some(v) = object.get_mut(key) {
            *v = serde_json::Value::String("<varies>".into());
        }
    }
    if let Some(serde_json::Value::String(location)) = object.get_mut("location") {
        // `/tmp/quo-sync-sandbox-<uuid>/contacts.example.csv line 18` -> `contacts.example.csv line 18`
        *location = location.rsplit('/').next().unwrap_or_default().to_string();
    }
    if let Some(serde_json::Value::Array(spans)) = object.get_mut("spans") {
        for span in spans {
            if let Some(run_id) = span.get_mut("run_id") {
                *run_id = serde_json::Value::String("<run>".into());
            }
        }
    }
    serde_json::to_string(&value).expect("json")
}

fn normalised_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(normalised)
        .collect();
    // Workers finish in any order.
    lines.sort();
    lines
}

#[test]
fn the_quick_start_piped_gives_the_json_lines_it_gave_before_the_human_view() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quo-sync"));
    command.args(["once", "--with-sandbox"]).current_dir(repo());
    for name in CLEARED
        .iter()
        .map(|s| s.to_string())
        .chain(quo_sync_overrides())
    {
        command.env_remove(name);
    }
    let output = command.output().expect("run quo-sync");
    assert_eq!(output.status.code(), Some(3));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout
            .starts_with("created 23  updated 0  unchanged 0  deleted 0  quarantined 4  requests "),
        "stdout keeps its summary line: {stdout:?}"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!stderr.contains('\u{1b}'), "no escape codes when piped");
    // Captured from the release before the human view (commit 9225a1a), unedited.
    let before = std::fs::read_to_string(repo().join("tests/fixtures/quickstart_once.jsonl"))
        .expect("fixture");
    // Events added since the fixture was captured: the resolved config paths (#22), day one's
    // listing of the workspace before the first creates (#20: a scan pass of one page here).
    let added = [
        "\"event\":\"config_path\"",
        "\"event\":\"workspace_listing\"",
        "\"event\":\"workspace_listed\"",
        "\"event\":\"quo_scanned\"",
        "\"event\":\"workspace_listing_confirming\"",
        "\"event\":\"workspace_listing_confirmed\"",
    ];
    // sqlx warns of a statement slower than a second: on a loaded machine (a SQLite commit
    // waiting for the CPU or the disk) that line comes and goes with the load, not the release.
    let slow_statement = |l: &str| {
        l.contains("\"message\":\"slow statement: execution time exceeded alert threshold\"")
            && l.contains("\"target\":\"sqlx::query\"")
    };
    let stderr: String = stderr
        .lines()
        .filter(|l| !added.iter().any(|event| l.contains(event)) && !slow_statement(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let (before, now) = (normalised_lines(&before), normalised_lines(&stderr));
    assert_eq!(before.len(), 35, "the fixture holds the whole run");
    assert_eq!(now, before, "the JSON lines changed:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_a_terminal_keeps_one_status_line_and_nothing_scrolls_while_idle() {
    let OnTerminal {
        mut child,
        output: mut rx,
        mut keys,
        mut screen,
    } = on_terminal(
        &["run", "--with-sandbox"],
        &[("QUO_SYNC__SCHEDULE__INTERVAL", "1s")],
    );
    let lines = |screen: &vt100::Parser| -> Vec<String> {
        screen
            .screen()
            .contents()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim_end().to_string())
            .collect()
    };
    assert!(
        screen_shows(&mut rx, &mut screen, Duration::from_secs(30), |s| {
            s.contains("Finished") && s.contains("last cycle")
        })
        .await,
        "the first cycle's lines and the status line:\n{}",
        lines(&screen).join("\n")
    );
    let first = lines(&screen);
    let status = first.last().cloned().unwrap_or_default();
    for needle in ["leader", "last cycle", "4 held back", "webhooks received"] {
        assert!(status.contains(needle), "status line: {status:?}");
    }
    // Later cycles (one a second) find nothing new: only the status line changes.
    let stamp = |s: &str| {
        s.lines()
            .rev()
            .find_map(|l| l.split("last cycle ").nth(1))
            .map(|rest| rest.chars().take(8).collect::<String>())
    };
    let seen_at = stamp(&screen.screen().contents());
    assert!(
        screen_shows(&mut rx, &mut screen, Duration::from_secs(15), |s| {
            stamp(s).is_some_and(|t| Some(&t) != seen_at.as_ref())
        })
        .await,
        "later cycles report on the status line:\n{}",
        lines(&screen).join("\n")
    );
    screen_shows(&mut rx, &mut screen, Duration::from_secs(2), |_| false).await;
    let later = lines(&screen);
    assert_eq!(
        later[..later.len() - 1],
        first[..first.len() - 1],
        "nothing scrolls while idle"
    );
    assert_eq!(later.len(), first.len());
    let status = later.last().unwrap();
    assert!(
        status.contains("leader") && status.contains("webhooks received"),
        "the status line is last: {later:?}"
    );

    // Ctrl-C: the service stops cleanly and takes its status line with it.
    keys.write_all(b"\x03").expect("send Ctrl-C");
    keys.flush().unwrap();
    screen_shows(&mut rx, &mut screen, Duration::from_secs(15), |s| {
        s.contains("stopped cleanly")
    })
    .await;
    let status = child.wait().expect("exit status");
    assert_eq!(status.exit_code(), 0, "{}", lines(&screen).join("\n"));
}

/// Runs `quo-sync args…` on the terminal to its end; (exit code, the screen's non-empty lines).
async fn screen_after(args: &[&str], env: &[(&str, &str)]) -> (u32, Vec<String>) {
    let OnTerminal {
        mut child,
        output: mut rx,
        mut screen,
        ..
    } = on_terminal(args, env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(chunk) = tokio::time::timeout_at(deadline.into(), rx.recv())
        .await
        .expect("quo-sync finishes within a minute")
    {
        screen.process(&chunk);
    }
    let code = child.wait().expect("exit status").exit_code();
    let lines = screen
        .screen()
        .contents()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim_end().to_string())
        .collect();
    (code, lines)
}

/// Day one on the first screen (#20's sample workspace of nine people): the read says what
/// will be adopted and held, not "unchanged"; the adoptions and the held records with the
/// contacts they match are named; the result counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_one_on_a_terminal_names_adoptions_and_held_records() {
    let (code, lines) = screen_after(
        &[
            "once",
            "--with-sandbox",
            "--seed-existing",
            "config/existing-contacts.example.csv",
        ],
        &[],
    )
    .await;
    let shown = lines.join("\n");
    assert_eq!(code, 3, "records are held: exit 3\n{shown}");
    for line in &lines {
        assert!(
            line.chars().count() <= 120,
            "a line wider than 120 columns:\n{line}"
        );
    }
    let read = lines
        .iter()
        .find(|l| l.trim_start().starts_with("Read 27 rows"))
        .unwrap_or_else(|| panic!("a read line:\n{shown}"));
    assert!(
        read.ends_with(
            ": 17 to create, 3 to adopt (already in Quo), 3 held (they match contacts in Quo), 4 held back"
        ),
        "the read says what the cycle will do: {read}\n{shown}"
    );
    for needle in [
        "Wrote 17 created, 3 adopted",
        "Held 3 records: they match contacts already in Quo (quo-sync link decides):",
        "line 5  C-1004  matches 2 contacts already in Quo: ",
        "… and 2 more: -v shows each as it happens",
        ": 17 created, 3 adopted, 3 held, 4 held back · ",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
    assert!(
        !shown.contains("unchanged") && !shown.contains("record held: no contact"),
        "no record is unchanged on day one, and the held are listed once:\n{shown}"
    );
    // plan's preview on the terminal: the same read line, the table, the CSV as configured
    // (not the sandbox's throwaway copy), no held record twice.
    let (code, lines) = screen_after(
        &[
            "plan",
            "--with-sandbox",
            "--seed-existing",
            "config/existing-contacts.example.csv",
        ],
        &[],
    )
    .await;
    let shown = lines.join("\n");
    assert_eq!(code, 0, "{shown}");
    for needle in [
        ": 17 to create, 3 to adopt (already in Quo), 3 held (they match contacts in Quo), 4 held back",
        "source: csv config/contacts.example.csv read as utf-8",
        "plan: 17 create, 3 adopt, 4 quarantine, 3 held (27 records)",
        "held        C-1004",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
    assert!(
        !shown.contains("quo-sync-sandbox-") && !shown.contains("record held: no contact"),
        "{shown}"
    );
}

/// A filter on the first screen: records outside it are counted out of scope, not unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_on_a_terminal_counts_records_out_of_scope() {
    let (code, lines) = screen_after(
        &["once", "--with-sandbox"],
        &[("QUO_SYNC__SYNC__FILTER", "record.vip == \"yes\"")],
    )
    .await;
    let shown = lines.join("\n");
    assert_eq!(code, 3, "{shown}");
    for needle in [
        ": 4 to create, 20 out of scope, 3 held back",
        "Created 4 contacts",
        ": 4 created, 20 out of scope, 3 held back · ",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
    assert!(!shown.contains("unchanged"), "{shown}");
}

/// `NO_COLOR` turns colour off on a terminal: no SGR sequence reaches the screen (the bar
/// still redraws in place); `-v` shows every record's line, without module paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_color_is_respected_and_verbose_shows_every_record() {
    let OnTerminal {
        mut child,
        output: mut rx,
        ..
    } = on_terminal(&["once", "--with-sandbox"], &[("NO_COLOR", "1")]);
    let mut stream = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(chunk) = tokio::time::timeout_at(deadline.into(), rx.recv())
        .await
        .expect("quo-sync finishes within a minute")
    {
        stream.extend(chunk);
    }
    assert_eq!(child.wait().unwrap().exit_code(), 3);
    let text = String::from_utf8_lossy(&stream);
    let sgr = text
        .match_indices("\u{1b}[")
        .map(|(at, _)| &text[at + 2..])
        .filter(|rest| {
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == ';'));
            end.is_some_and(|e| rest[e..].starts_with('m'))
        })
        .count();
    assert_eq!(sgr, 0, "colour under NO_COLOR: {text:?}");
    assert!(text.contains("Created 23 contacts"), "{text}");

    let (code, lines) = screen_after(&["once", "--with-sandbox", "-v"], &[]).await;
    let shown = lines.join("\n");
    assert_eq!(code, 3, "{shown}");
    let created = lines
        .iter()
        .filter(|l| l.contains("contact created"))
        .count();
    // The screen keeps its last 40 rows; every one of them that names a record is a line of
    // its own, and there are more of them than the whole view without -v would show.
    assert!(created >= 15, "per-record lines with -v:\n{shown}");
    assert!(!shown.contains("quo_sync::"), "no module paths:\n{shown}");
}

/// The outcomes a new user must not misread: a cycle whose deletions the mass-deletion guard
/// refused says so and names the flag that lifts it; a paused cycle says who paused it and
/// until when, that nothing was sent, and how to resume, with no result line counting nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_deletion_and_a_pause_read_clearly_on_a_terminal() {
    let rows: Vec<String> = (1..=10)
        .map(|n| common::row(&format!("r-{n}"), n))
        .collect();
    let app = common::TestApp::spawn_with(
        &common::csv(&rows),
        Default::default(),
        "[sync]\non_source_delete = \"delete\"\n",
    )
    .await;
    assert_eq!(app.cycle().await.counts.created, 10);
    // 8 of 10 rows leave the CSV; a first read of the short file deletes nothing yet.
    app.write_csv(&common::csv(&rows[..2]));
    app.cycle().await;
    let config = app.config_path.to_str().unwrap().to_string();
    let (code, lines) = screen_after(&["once", "--config", &config], &[]).await;
    let shown = lines.join("\n");
    assert_eq!(code, 3, "a refused deletion exits 3:\n{shown}");
    for needle in [
        "Refused 8 of 10 linked contacts: sync.max_delete_fraction allows 1 a cycle (nothing deleted)",
        "Next quo-sync once --allow-mass-delete  if those deletions are intended",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
    assert_eq!(app.sandbox.contacts().len(), 10, "nothing deleted");

    quo_sync::ops::control::pause(app.ledger(), "ops@desk", None)
        .await
        .unwrap();
    let (code, lines) = screen_after(&["once", "--config", &config], &[]).await;
    let shown = lines.join("\n");
    assert_eq!(code, 0, "{shown}");
    for needle in [
        "Paused by ops@desk since ",
        ", until resumed: nothing was sent to Quo or the CRM",
        "Next quo-sync resume  ends the pause for every replica",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
    assert!(
        !shown.contains("Finished")
            && !shown.contains("keeps them in sync")
            && !shown.contains("Read 0 rows")
            && !shown.contains("syncing is paused"),
        "a paused cycle has no result to count:\n{shown}"
    );
}

/// A key for another workspace (#21): every contact seems gone; the first screen says the
/// refusal is about the workspace, not about a number of deletions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_for_another_workspace_is_named_on_a_terminal() {
    let rows: Vec<String> = (1..=20)
        .map(|n| common::row(&format!("c-{n}"), n))
        .collect();
    let app = common::TestApp::spawn_with(
        &common::csv(&rows),
        Default::default(),
        "[sync]\nmax_delete_fraction = 1.0\n[reverse]\npoll_interval = \"1ms\"\non_quo_delete = \"unlink\"\n",
    )
    .await;
    assert_eq!(app.cycle().await.counts.created, 20);
    app.sandbox.set_foreign_workspace(true);
    let config = app.config_path.to_str().unwrap().to_string();
    let (code, lines) = screen_after(&["once", "--config", &config], &[]).await;
    let shown = lines.join("\n");
    assert_eq!(code, 3, "{shown}");
    assert!(
        shown.contains(
            "Refused to act on 20 contacts Quo says are gone: the API key is not shown to answer \
             for the synced workspace"
        ),
        "{shown}"
    );
    assert_eq!(app.ledger().linked_count().await.unwrap(), 20, "{shown}");
}

/// Reads quo-sync's output into `screen` until `done` holds for what it shows, or `limit`
/// passes; whether it held.
async fn screen_shows(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    screen: &mut vt100::Parser,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done(&screen.screen().contents()) {
            return true;
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(chunk)) => screen.process(&chunk),
            _ => return done(&screen.screen().contents()),
        }
    }
}

/// The status line: the last line on the screen that names the replica's role.
fn status_line(screen: &vt100::Parser) -> String {
    screen
        .screen()
        .contents()
        .lines()
        .rev()
        .find(|l| l.contains("webhooks received") || l.contains("webhook received"))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// The time to the next cycle the status line shows (`next in 59m 58s`).
fn next_in(status: &str) -> Option<Duration> {
    let rest = status.split("next in ").nth(1)?;
    humantime::parse_duration(rest.split(" · ").next()?.trim()).ok()
}

/// `quo-sync run` between cycles on a terminal (#24 item 7) says when the next cycle starts
/// (an hour's interval: a little under an hour), and counts the webhooks it received: one
/// signed webhook from Quo (an edit made in the app) takes the count from 0 to 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_a_terminal_shows_the_next_cycle_and_counts_a_webhook() {
    let app = common::TestApp::spawn(&common::csv(&[
        common::row("r-1", 1),
        common::row("r-2", 2),
    ]))
    .await;
    let listen = common::free_addr();
    let config = app.config_path.to_str().unwrap().to_string();
    let secret = common::whsec();
    let OnTerminal {
        mut child,
        output: mut rx,
        mut keys,
        mut screen,
    } = on_terminal(
        &["run", "--config", &config],
        &[
            ("QUO_SYNC__SCHEDULE__INTERVAL", "1h"),
            ("QUO_SYNC__REVERSE__LISTEN", &listen.to_string()),
            ("QUO_SYNC__REVERSE__WEBHOOK_SECRET", &secret),
        ],
    );
    let shown = |screen: &vt100::Parser| screen.screen().contents();
    assert!(
        screen_shows(&mut rx, &mut screen, Duration::from_secs(30), |s| {
            s.contains("last cycle") && s.contains("0 webhooks received")
        })
        .await,
        "the first cycle and the status line:\n{}",
        shown(&screen)
    );
    assert_eq!(app.sandbox.contacts().len(), 2);
    let status = status_line(&screen);
    let next = next_in(&status).unwrap_or_else(|| panic!("no time to the next cycle: {status:?}"));
    assert!(
        next > Duration::from_secs(50 * 60) && next <= Duration::from_secs(60 * 60),
        "the next cycle is an hour after the first: {status:?}"
    );

    // Quo delivers one signed webhook: an edit made in the app (no echo of an API write can
    // add a second before the line shows the first).
    app.sandbox.set_webhooks_on_api_writes(false);
    app.sandbox
        .set_webhook(Some(quo_sync::sandbox::WebhookTarget {
            url: format!("http://{listen}/webhooks/quo"),
            secret_key: common::WEBHOOK_KEY.to_vec(),
            scheme: quo_sync::sandbox::WebhookScheme::Standard,
        }));
    app.sandbox
        .app_edit(
            &app.quo_id("r-2"),
            serde_json::json!({"defaultFields": {"role": "Edited in Quo"}}),
        )
        .expect("app edit");
    assert!(
        screen_shows(&mut rx, &mut screen, Duration::from_secs(30), |s| {
            s.contains("1 webhook received")
        })
        .await,
        "the webhook is counted on the status line:\n{}",
        shown(&screen)
    );
    let status = status_line(&screen);
    assert!(status.contains("leader · "), "{status:?}");

    keys.write_all(b"\x03").expect("send Ctrl-C");
    keys.flush().unwrap();
    screen_shows(&mut rx, &mut screen, Duration::from_secs(15), |s| {
        s.contains("stopped cleanly")
    })
    .await;
    let status = child.wait().expect("exit status");
    assert_eq!(status.exit_code(), 0, "{}", shown(&screen));
}

/// More rows held back than the first screen lists, outside the sandbox (whose ledger is thrown
/// away): the rest are named by the command that lists them, `quo-sync quarantine list`, and
/// the next steps offer it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_held_back_past_the_cap_point_to_quarantine_list() {
    let rows: Vec<String> = (1..=10)
        .map(|n| {
            let row = common::row(&format!("r-{n}"), n);
            if n > 2 {
                row.replacen(&format!(",,{n},yes,"), ",,high,yes,", 1)
            } else {
                row
            }
        })
        .collect();
    let app = common::TestApp::spawn(&common::csv(&rows)).await;
    let config = app.config_path.to_str().unwrap().to_string();
    let (code, lines) = screen_after(&["once", "--config", &config], &[]).await;
    let shown = lines.join("\n");
    assert_eq!(code, 3, "rows are held back: exit 3\n{shown}");
    let listed = lines
        .iter()
        .filter(|l| l.contains("lead_score \"high\""))
        .count();
    assert_eq!(
        listed,
        quo_sync::ops::summary::MAX_ROWS,
        "the cap's worth of rows:\n{shown}"
    );
    let hidden = 8 - quo_sync::ops::summary::MAX_ROWS;
    for needle in [
        "Held back 8 rows".to_string(),
        format!("… and {hidden} more: quo-sync quarantine list"),
        "quo-sync quarantine list  shows the 8 held back, with their raw rows".to_string(),
    ] {
        assert!(shown.contains(&needle), "missing {needle:?} in:\n{shown}");
    }
    assert!(!shown.contains("-v shows each"), "{shown}");
    assert_eq!(app.sandbox.contacts().len(), 2);
}
