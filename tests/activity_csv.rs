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
use metrics_exporter_prometheus::PrometheusHandle;
use quo_sync::config::Config;
use quo_sync::sandbox::SandboxConfig;
use quo_sync::sandbox::activity::{ActivityFaults, CallOutcome, CallSpec, Direction, MessageSpec};
use support::activity::{csv_rows, free_port, number_of, subscribe, until};
use tokio_util::sync::CancellationToken;

/// The app with `records` contacts synced, its activity file, and the service running with
/// `activity` (extra `[activity]` keys) and a subscription delivering to it.
struct Scene {
    app: TestApp,
    service: Service,
    activity_csv: PathBuf,
}

/// The service (`quo-sync run`) in-process, as `TestApp::start_service` runs it, but with the
/// `/metrics` recorder when the test reads it.
struct Service {
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), quo_sync::app::AppError>>,
}

impl Service {
    fn start(app: &TestApp, metrics: Option<PrometheusHandle>) -> Self {
        let config = Config::load_with_env(&app.config_path, std::iter::empty()).unwrap();
        let cancel = CancellationToken::new();
        let mut ctx = app.ctx.clone();
        ctx.cancel = cancel.clone();
        let handle =
            tokio::spawn(async move { quo_sync::app::run_service(&ctx, &config, metrics).await });
        Self { cancel, handle }
    }

    /// Stops it the way SIGTERM does and checks it ended without error.
    async fn stop(self) {
        self.cancel.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

/// The exact header of the activity file: the columns issue #23 promises, in its order.
const METADATA_HEADER: &str = "activity_id,record_id,kind,direction,status,from,to,started_at,duration_s,user_email,summary,quo_url";

/// The activity file's first line.
fn header_line(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().next().unwrap_or_default().to_string()
}

async fn scene(backend: Backend, records: u32, activity: &str, extra: &str) -> Option<Scene> {
    scene_with(backend, records, activity, extra, None).await
}

async fn scene_with(
    backend: Backend,
    records: u32,
    activity: &str,
    extra: &str,
    metrics: Option<PrometheusHandle>,
) -> Option<Scene> {
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
    let service = Service::start(&app, metrics);
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

    assert_eq!(
        header_line(&s.activity_csv),
        METADATA_HEADER,
        "the promised columns, in their order, and no text column with metadata only"
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

/// What the console and `/metrics` on `base` show of the activities: `/api/activities`, the
/// page, and the `quo_sync_activities` gauges by state.
struct Shown {
    api: String,
    page: String,
    metrics: String,
}

impl Shown {
    async fn read(base: &str) -> Self {
        let http = reqwest::Client::new();
        let get = |path: &str| {
            let request = http.get(format!("{base}{path}"));
            let path = path.to_string();
            async move {
                let reply = request.send().await.expect("the service answers");
                assert!(reply.status().is_success(), "{path}: {}", reply.status());
                reply.text().await.unwrap()
            }
        };
        Self {
            api: get("/api/activities?limit=50").await,
            page: get("/").await,
            metrics: get("/metrics").await,
        }
    }

    /// The value of the series `name{labels}` in the Prometheus text.
    fn metric(&self, series: &str) -> Option<f64> {
        self.metrics.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// The activity `id` as `/api/activities` gives it.
    fn activity(&self, id: &str) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = serde_json::from_str(&self.api).unwrap();
        rows.into_iter()
            .find(|r| r["activity_id"] == id)
            .unwrap_or_else(|| panic!("{id} in /api/activities: {}", self.api))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_summaries_and_transcripts_rewrite_their_own_row_and_unmatched_calls_are_held() {
    let console = free_port();
    // The one test of this binary that reads `/metrics`: the recorder is the process's.
    let metrics = quo_sync::ops::http::install_metrics().expect("the first recorder");
    let s = scene_with(
        Backend::Sqlite,
        3,
        "content = \"full\"\nunmatched = \"hold\"\npoll_interval = \"0s\"",
        &format!("[service]\nlisten = \"127.0.0.1:{console}\"\nconsole = true\n"),
        Some(metrics),
    )
    .await
    .expect("SQLite is always there");
    let base = format!("http://127.0.0.1:{console}");
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
    assert_eq!(
        header_line(&s.activity_csv),
        format!("{METADATA_HEADER},text"),
        "full content adds the text column last"
    );

    // The console and /metrics show both written rows on their records and the held call,
    // never the text of a message or a transcript.
    let shown = Shown::read(&base).await;
    for (id, record) in [(&first, "r-1"), (&text, "r-2")] {
        let row = shown.activity(id);
        assert_eq!(row["record_id"], record, "{row}");
        assert_eq!(row["state"], "written", "{row}");
        assert!(
            shown.page.contains(&format!("<td>{id}</td>")) && shown.page.contains(record),
            "{id} on the console page"
        );
    }
    let held = shown.activity(&stranger);
    assert_eq!(held["state"], "held", "{held}");
    assert_eq!(
        held["record_id"],
        serde_json::Value::Null,
        "not attached to a guess"
    );
    assert!(shown.page.contains(&format!("<td>{stranger}</td>")));
    for content in ["Can we talk", "today", "Thanks"] {
        assert!(
            !shown.api.contains(content),
            "{content:?} in /api/activities"
        );
        assert!(
            !shown.page.contains(content),
            "{content:?} on the console page"
        );
    }
    assert_eq!(
        shown.metric("quo_sync_activities{state=\"written\"}"),
        Some(2.0),
        "{}",
        shown.metrics
    );
    assert_eq!(
        shown.metric("quo_sync_activities{state=\"held\"}"),
        Some(1.0),
        "{}",
        shown.metrics
    );

    // The time from the event to the CRM: in `status` (text and JSON) and on the page.
    let status = quo_sync::ops::status(s.app.ledger()).await.unwrap();
    let delay = status
        .activity
        .delay_ms
        .expect("a delay once delivered calls are written");
    assert_eq!(delay.activities, 2, "both delivered activities: {delay:?}");
    assert!(
        0 <= delay.p50 && delay.p50 <= delay.p99 && delay.p99 <= delay.max && delay.max < 10_000,
        "within the wait for the rows: {delay:?}"
    );
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["activity"]["delay_ms"]["activities"], 2, "{json}");
    assert_eq!(json["activity"]["delay_ms"]["p99"], delay.p99, "{json}");
    assert!(
        status.render().contains("to the CRM  p50 "),
        "{}",
        status.render()
    );
    assert!(
        shown.page.contains("To the CRM: <b>"),
        "the delay on the page"
    );
    let ledger = s.app.ledger();
    let written_at = |id: String| async move {
        ledger.activity_rows(&[id]).await.unwrap()[0]
            .written_at
            .clone()
    };
    let first_written = written_at(first.clone()).await;

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
    assert_eq!(
        written_at(first.clone()).await,
        first_written,
        "the delay ends at the first write: a late enrichment does not move it"
    );
    assert_eq!(
        quo_sync::ops::status(s.app.ledger())
            .await
            .unwrap()
            .activity
            .delay_ms,
        Some(delay)
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
    // Calls made while paused, one after another: each is received, merged and linked by a
    // pass of its own (the next is made once the one before is stored), so the three after the
    // first prove that at least three whole passes looked at the pause, and none wrote.
    let mut during = Vec::new();
    for n in [2, 1, 2, 1] {
        let id = sb.activity_call(call(n, Direction::Outgoing, CallOutcome::Answered));
        until(
            "the paused call stored and linked",
            Duration::from_secs(10),
            || async {
                s.app
                    .ledger()
                    .debug_query_i64(
                        "SELECT COUNT(*) FROM activities WHERE activity_id = $1 AND state = 'pending' AND record_id = $2",
                        &[id.as_str(), &format!("r-{n}")],
                    )
                    .await
                    .unwrap()
                    == 1
            },
        )
        .await;
        during.push((id, format!("r-{n}")));
    }
    let rows = s.rows();
    assert_eq!(rows.len(), 1, "nothing written while paused: {rows:?}");
    assert_eq!(rows[0]["activity_id"], before);
    quo_sync::ops::control::resume(s.app.ledger(), "test@desk")
        .await
        .unwrap();
    until(
        "the paused calls written after resume",
        Duration::from_secs(10),
        || async {
            let rows = s.rows();
            during.iter().all(|(id, record)| {
                rows.iter()
                    .any(|r| &r["activity_id"] == id && &r["record_id"] == record)
            })
        },
    )
    .await;
    assert_eq!(s.rows().len(), 5, "each written once");
    s.service.stop().await;
}
