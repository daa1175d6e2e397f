//! Activity logging into the activity CSV file, end to end: the service (`run`) with the
//! sandbox delivering signed webhooks to it, the poller reading behind, and the file checked
//! byte by byte. The scenario of issue #23: 500 calls and texts with duplicated, reordered and
//! lost deliveries land on the right records exactly once; late summaries and transcripts
//! rewrite their own row; the poller fills every lost delivery.

mod common;
mod support;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use common::{Backend, TestApp, csv, row};
use quo_sync::sandbox::SandboxConfig;
use quo_sync::sandbox::activity::{ActivityFaults, CallOutcome, CallSpec, Direction, MessageSpec};
use support::activity::{csv_rows, free_port, number_of, subscribe, until};

/// The app with `records` contacts synced, its activity file, and the service running with
/// `activity` (extra `[activity]` keys) and a subscription delivering to it.
struct Scene {
    app: TestApp,
    service: common::RunningService,
    activity_csv: PathBuf,
}

async fn scene(backend: Backend, records: u32, activity: &str, extra: &str) -> Option<Scene> {
    let rows: Vec<String> = (1..=records).map(|n| row(&format!("r-{n}"), n)).collect();
    let port = free_port();
    let mut app = TestApp::spawn_on(
        backend,
        &csv(&rows),
        SandboxConfig::default(),
        &format!("[reverse]\nlisten = \"127.0.0.1:{port}\"\npoll_interval = \"0s\"\n{extra}\n"),
    )
    .await?;
    app.cycle().await;
    let key = subscribe(
        &app.sandbox,
        &format!("http://127.0.0.1:{port}/webhooks/quo/activity"),
    )
    .await;
    let activity_csv = app.dir.path().join("activity.csv");
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(
        &app.config_path,
        format!(
            "{config}\n[activity]\nwebhook_secrets = [\"{key}\"]\n{activity}\n[activity.csv]\npath = \"{}\"\n",
            activity_csv.display()
        ),
    )
    .unwrap();
    app.restart().await;
    let service = app.start_service();
    Some(Scene {
        app,
        service,
        activity_csv,
    })
}

impl Scene {
    fn rows(&self) -> Vec<HashMap<String, String>> {
        csv_rows(&self.activity_csv)
    }

    async fn count(&self, state: &str) -> i64 {
        self.app
            .ledger()
            .debug_query_i64("SELECT COUNT(*) FROM activities WHERE state = $1", &[state])
            .await
            .unwrap()
    }
}

fn call(n: u32, direction: Direction, outcome: CallOutcome) -> CallSpec {
    CallSpec {
        number: number_of(n),
        direction,
        outcome,
        duration: if outcome == CallOutcome::Missed {
            0
        } else {
            30 + n as u64
        },
        recorded: true,
        ..CallSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_calls_and_texts_land_once_despite_lost_duplicated_and_reordered_deliveries() {
    five_hundred(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_five_hundred_calls_and_texts_land_once_despite_faulty_deliveries() {
    five_hundred(Backend::Postgres).await;
}

async fn five_hundred(backend: Backend) {
    let Some(s) = scene(
        backend,
        25,
        "poll_interval = \"400ms\"\nenrichment_window = \"1h\"",
        "",
    )
    .await
    else {
        return;
    };
    let sb = &s.app.sandbox;
    sb.set_activity_enrichment_delay(Duration::from_millis(10), Duration::from_millis(400));
    sb.set_activity_faults(ActivityFaults {
        drop_ratio: 0.2,
        duplicate_ratio: 0.2,
        reorder_batch: 7,
        seed: 23,
    });
    // Which record each activity belongs to (its number), by activity id.
    let mut owner: HashMap<String, String> = HashMap::new();
    for i in 0..500u32 {
        let n = i % 25 + 1;
        let direction = if i % 2 == 0 {
            Direction::Incoming
        } else {
            Direction::Outgoing
        };
        let id = if i % 5 < 3 {
            let outcome = match i % 10 {
                0 | 1 | 2 | 5 | 6 | 7 => CallOutcome::Answered,
                3 | 8 => CallOutcome::Missed,
                _ if direction == Direction::Incoming => CallOutcome::Voicemail,
                _ => CallOutcome::Missed,
            };
            sb.activity_call(call(n, direction, outcome))
        } else {
            sb.activity_message(MessageSpec {
                number: number_of(n),
                direction,
                text: format!("message {i}"),
                ..MessageSpec::default()
            })
        };
        owner.insert(id, format!("r-{n}"));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    until(
        "every enrichment landed",
        Duration::from_secs(20),
        || async { sb.activity_pending() == 0 },
    )
    .await;
    sb.set_activity_faults(ActivityFaults::default()); // releases a held reorder batch
    // One statement, so one snapshot: counted as two, a late summary absorbed between them
    // (its row final, and pending again until rewritten) read as written and final.
    until(
        "500 activities written and final",
        Duration::from_secs(60),
        || async {
            s.app
                .ledger()
                .debug_query_i64(
                    "SELECT COUNT(*) FROM activities WHERE state = 'written' AND final = 1",
                    &[],
                )
                .await
                .unwrap()
                == 500
        },
    )
    .await;
    let counters = sb.activity_fault_counters();
    assert!(counters.dropped >= 50, "deliveries were lost: {counters:?}");
    assert!(
        counters.duplicated >= 50 && counters.reordered > 0,
        "{counters:?}"
    );

    let rows = s.rows();
    assert_eq!(rows.len(), 500, "one row per activity, no more");
    let ids: HashSet<&str> = rows.iter().map(|r| r["activity_id"].as_str()).collect();
    assert_eq!(ids.len(), 500, "no activity twice");
    let calls: HashMap<String, serde_json::Value> = sb
        .activity_calls()
        .into_iter()
        .map(|c| (c["id"].as_str().unwrap().to_string(), c))
        .collect();
    for r in &rows {
        let id = &r["activity_id"];
        assert_eq!(&r["record_id"], &owner[id], "{id} on the right record");
        if let Some(c) = calls.get(id) {
            if c["status"] == "completed" {
                assert!(
                    !r["summary"].is_empty(),
                    "{id}: the late summary landed in place: {r:?}"
                );
                assert_eq!(r["duration_s"], c["duration"].to_string());
            }
            let kind = if c["voicemail"].is_object() {
                "voicemail"
            } else {
                "call"
            };
            assert_eq!(r["kind"], kind, "{id}");
        } else {
            assert_eq!(r["kind"], "message");
            if r["direction"] == "outgoing" {
                assert_eq!(
                    r["status"], "delivered",
                    "{id}: the delivery receipt landed"
                );
            }
        }
        assert!(r.get("text").is_none(), "metadata only: no text column");
    }
    // Activities whose every delivery was lost are in the file: the poller filled them.
    let delivered: HashSet<String> = sb
        .activity_deliveries()
        .into_iter()
        .filter(|d| d.acknowledged())
        .map(|d| d.activity_id)
        .collect();
    let only_polled = owner.keys().filter(|id| !delivered.contains(*id)).count();
    assert!(
        only_polled >= 5,
        "some activities reached quo-sync only through the poller: {only_polled}"
    );
    s.service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_summaries_and_transcripts_rewrite_their_own_row_and_unmatched_calls_are_held() {
    let console = free_port();
    let s = scene(
        Backend::Sqlite,
        3,
        "content = \"full\"\nunmatched = \"hold\"\npoll_interval = \"0s\"",
        &format!("[service]\nlisten = \"127.0.0.1:{console}\"\nconsole = true\n"),
    )
    .await
    .expect("SQLite is always there");
    let sb = &s.app.sandbox;
    sb.set_activity_enrichment_delay(Duration::from_secs(3600), Duration::from_secs(3600));
    let first = sb.activity_call(call(1, Direction::Incoming, CallOutcome::Answered));
    let text = sb.activity_message(MessageSpec {
        number: number_of(2),
        direction: Direction::Incoming,
        text: "Can we talk, \"today\"?\nThanks".into(),
        ..MessageSpec::default()
    });
    let stranger = sb.activity_call(CallSpec {
        number: "+12125550000".into(),
        ..call(1, Direction::Incoming, CallOutcome::Missed)
    });
    until("two rows", Duration::from_secs(10), || async {
        s.rows().len() == 2
    })
    .await;
    let before = std::fs::read(&s.activity_csv).unwrap();
    let rows = s.rows();
    let call_row = rows.iter().find(|r| r["activity_id"] == first).unwrap();
    assert_eq!(call_row["summary"], "", "no summary yet");
    assert_eq!(call_row["text"], "");
    let text_row = rows.iter().find(|r| r["activity_id"] == text).unwrap();
    assert_eq!(
        text_row["text"], "Can we talk, \"today\"?\nThanks",
        "full content keeps the text"
    );
    until(
        "the stranger's call held, not guessed",
        Duration::from_secs(10),
        || async { s.count("held").await == 1 },
    )
    .await;

    // Recording, summary and transcript land, in whatever order.
    assert_eq!(sb.activity_flush(), 3);
    until(
        "the summary in the call's row",
        Duration::from_secs(10),
        || async {
            s.rows().iter().any(|r| {
                r["activity_id"] == first && !r["summary"].is_empty() && !r["text"].is_empty()
            })
        },
    )
    .await;
    let rows = s.rows();
    assert_eq!(rows.len(), 2, "enrichment rewrote the row; it added none");
    let call_row = rows.iter().find(|r| r["activity_id"] == first).unwrap();
    assert!(call_row["summary"].contains("renewal"), "{call_row:?}");
    assert!(
        call_row["text"].contains("Hello, thanks for calling."),
        "transcript in the text column"
    );
    let after = std::fs::read(&s.activity_csv).unwrap();
    let untouched = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .filter(|l| l.contains(&text))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        untouched(&before),
        untouched(&after),
        "other rows keep their bytes"
    );

    // The stranger becomes a record: the held call is linked and written.
    let mut csv_text = s.app.csv_text();
    csv_text.push_str(&row("r-9", 9).replace("(415) 555-1009", "(212) 555-0000"));
    csv_text.push('\n');
    s.app.write_csv(&csv_text);
    until(
        "the held call written to r-9",
        Duration::from_secs(20),
        || async {
            s.rows()
                .iter()
                .any(|r| r["activity_id"] == stranger && r["record_id"] == "r-9")
        },
    )
    .await;
    s.service.stop().await;
}

/// `quo-sync pause` holds activity writes like contact writes: a call made while paused is
/// received, stored and merged, but its row reaches the file only after `resume`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_activity_writes_until_resume() {
    let s = scene(Backend::Sqlite, 2, "poll_interval = \"0s\"", "")
        .await
        .expect("SQLite is always there");
    let sb = &s.app.sandbox;
    let before = sb.activity_call(call(1, Direction::Incoming, CallOutcome::Answered));
    until(
        "the first call written",
        Duration::from_secs(10),
        || async { s.rows().len() == 1 },
    )
    .await;
    quo_sync::ops::control::pause(s.app.ledger(), "test@desk", None)
        .await
        .unwrap();
    let during = sb.activity_call(call(2, Direction::Outgoing, CallOutcome::Answered));
    until(
        "the paused call stored and linked",
        Duration::from_secs(10),
        || async {
            s.app
                .ledger()
                .debug_query_i64(
                    "SELECT COUNT(*) FROM activities WHERE activity_id = $1 AND state = 'pending' AND record_id = 'r-2'",
                    &[during.as_str()],
                )
                .await
                .unwrap()
                == 1
        },
    )
    .await;
    // Several of the pipeline's quarter-second passes: none may write while paused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rows = s.rows();
    assert_eq!(rows.len(), 1, "nothing written while paused: {rows:?}");
    assert_eq!(rows[0]["activity_id"], before);
    quo_sync::ops::control::resume(s.app.ledger(), "test@desk")
        .await
        .unwrap();
    until(
        "the paused call written after resume",
        Duration::from_secs(10),
        || async {
            s.rows()
                .iter()
                .any(|r| r["activity_id"] == during && r["record_id"] == "r-2")
        },
    )
    .await;
    assert_eq!(s.rows().len(), 2, "written once");
    s.service.stop().await;
}
