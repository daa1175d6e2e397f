//! `cargo bench --bench sync`: figures, not assertions. Runs against the in-process sandbox over
//! real HTTP and prints (and writes to `target/bench/sync.json`):
//! - initial load with 300 ms added latency: requests per second achieved ÷ the limit, 429s,
//!   requests sent ÷ minimum needed;
//! - one changed field on every record: requests ÷ minimum;
//! - a no-change cycle over 100,000 and 1,000,000 CSV rows, run by the real binary: wall time and
//!   peak RSS; the same over a Windows-1252 export with a non-ASCII character in every row
//!   (`no_change.rows_<n>_cp1252`, with `over_utf8`: its time ÷ the UTF-8 file's, same run), and
//!   with a `sync.filter` admitting half of them (`no_change.rows_<n>_filtered`, with
//!   `over_unfiltered`);
//! - reverse path: delay from an in-app edit to the CRM write, by webhook and by polling;
//! - failover (`ha`, `sync/ha.rs`): time for a standby to take over from a killed or paused leader;
//! - reverse scans (`scan`, `sync/scan.rs`): one pass over 10,000 and 100,000 contacts at 10/s,
//!   and the delay of CRM edits made meanwhile (`reverse.scan_<n>`);
//! - day one (`day_one`, `sync/day_one.rs`): the first cycle in a workspace of 10,000 contacts
//!   that already holds 3,000 of the CRM's 5,000 people (requests against the minimum), and the
//!   peak RSS with a 100,000-contact workspace index.
//! - soak (`soak`, `sync/soak.rs`): two `run` replicas for `QUO_SYNC_BENCH_SOAK_SECS` (600) under
//!   random Quo 5xx bursts, the CRM down for 60 s and the leader SIGSTOPped past its lease: peak
//!   RSS, RSS growth, convergence and duplicates.
//!
//! Environment: `QUO_SYNC_BENCH_RATE` (limit used for the load, default 20/s to keep it short),
//! `QUO_SYNC_BENCH_RECORDS` (default 400), `QUO_SYNC_BENCH_ROWS` (comma list, default
//! `100000,1000000`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quo_sync::config::Config;
use quo_sync::domain::QuoContactId;
use quo_sync::ledger::{Ledger, SyncedRecord};
use quo_sync::mapping::Mapper;
use quo_sync::quo::types::Contact;
use quo_sync::sandbox::{SandboxConfig, SandboxHandle, WebhookScheme, WebhookTarget};
use quo_sync::source::{ReadRequest, Source, SourceItem};
use quo_sync::sync::{Mode, run_cycle};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[path = "sync/crm.rs"]
mod crm;
#[path = "sync/day_one.rs"]
mod day_one;
#[path = "sync/ha.rs"]
mod ha;
#[path = "sync/scan.rs"]
mod scan;
#[path = "sync/service.rs"]
mod service;
// The soak's PostgreSQL server: the tests' helper, which it restarts.
#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;
#[path = "sync/soak.rs"]
mod soak;

/// What `tests/common/pg.rs` calls when PostgreSQL is missing: the bench says so and goes on.
#[allow(dead_code)]
fn skip(reason: &str) {
    eprintln!("bench: {reason}");
}

const HEADER: &str = "crm_id,first_name,last_name,company,role,email,work_email,phone,mobile,lead_score,vip,renewal_date,tags,website,updated_at";

const MAPPING: &str = include_str!("../tests/fixtures/mapping.toml");

fn row(i: u64, company: &str) -> String {
    format!(
        "b-{i},First{i},Last{i},{company} {i},Buyer,p{i}@example.com,w{i}@example.com,+1415{:03}{:04},,{},yes,2026-03-01,a;b,https://e{i}.example.com,2026-01-01T00:00:00Z",
        200 + (i / 10_000) % 300,
        i % 10_000,
        i % 100
    )
}

fn write_csv(path: &Path, rows: u64, company: &str) {
    write_csv_as(path, rows, company, Encoding::Utf8);
}

/// The text encoding a bench CSV is written in.
#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    Utf8,
    Windows1252,
}

fn write_csv_as(path: &Path, rows: u64, company: &str, encoding: Encoding) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut line = |text: &str| match encoding {
        Encoding::Utf8 => writeln!(out, "{text}").unwrap(),
        Encoding::Windows1252 => {
            let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(text);
            assert!(!unmappable);
            out.write_all(&bytes).unwrap();
            out.write_all(b"\n").unwrap();
        }
    };
    line(HEADER);
    for i in 0..rows {
        line(&row(i, company));
    }
}

fn write_config(dir: &Path, sandbox: &SandboxHandle, rps: u32, extra: &str) -> PathBuf {
    let path = dir.join("quo-sync.toml");
    std::fs::write(
        &path,
        format!(
            "[quo]\nbase_url = \"{}\"\napi_key = \"{}\"\nrequests_per_second = {rps}\nconcurrency = 16\n\n[ledger]\npath = \"{}\"\n\n[source]\nkind = \"csv\"\npath = \"{}\"\n{MAPPING}\n[log]\nlevel = \"warn\"\n{extra}\n",
            sandbox.base_url(),
            sandbox.api_key(),
            dir.join("ledger.db").display(),
            dir.join("contacts.csv").display()
        ),
    )
    .unwrap();
    path
}

async fn context(config_path: &Path) -> quo_sync::sync::SyncContext {
    let config = Config::load_with_env(config_path, std::iter::empty()).unwrap();
    quo_sync::app::build_context(&config, "bench", CancellationToken::new())
        .await
        .unwrap()
}

/// Initial load and a one-field update at `rps` with 300 ms latency.
async fn load_and_update(rps: u32, records: u64) -> (Value, Value) {
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: rps,
        latency: Duration::from_millis(300),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("contacts.csv"), records, "Acme");
    let config = write_config(dir.path(), &sandbox, rps, "[reverse]\nenabled = false\n");
    let ctx = context(&config).await;

    let started = Instant::now();
    let report = run_cycle(&ctx, Mode::Apply).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let stats = sandbox.stats();
    let requests = report.counts.requests as f64;
    // Rate as Quo sees it: requests between the first and the last arrival.
    let achieved = stats.achieved_rate().unwrap_or(0.0);
    let initial = json!({
        "records": records,
        "limit_per_second": rps,
        "added_latency_ms": 300,
        "seconds": seconds,
        "requests": report.counts.requests,
        "achieved_per_second": achieved,
        "utilization": achieved / f64::from(rps),
        "wall_utilization": requests / seconds / f64::from(rps),
        "rate_limited": stats.rate_limited,
        "peak_per_second": stats.peak_per_second,
        "creates": report.counts.created,
        // Minimum: one POST per record plus the cycle's custom-field lookup.
        "requests_per_record": requests / (records as f64 + 1.0),
    });

    write_csv(&dir.path().join("contacts.csv"), records, "Globex");
    sandbox.reset_stats();
    let started = Instant::now();
    let report = run_cycle(&ctx, Mode::Apply).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let requests = report.counts.requests as f64;
    let achieved = sandbox.stats().achieved_rate().unwrap_or(0.0);
    let update = json!({
        "records": records,
        "seconds": seconds,
        "requests": report.counts.requests,
        "updates": report.counts.updated,
        "achieved_per_second": achieved,
        "utilization": achieved / f64::from(rps),
        "wall_utilization": requests / seconds / f64::from(rps),
        "rate_limited": sandbox.stats().rate_limited,
        "requests_per_record": requests / (records as f64 + 1.0),
    });
    sandbox.shutdown().await;
    (initial, update)
}

/// An initial load at Quo's real limit (10/s) with 300 ms latency, against the physical limit:
/// every request spaced at the limit plus one round trip (`wall_over_limit`, ideal 1.0).
async fn initial_load_at_real_rate(records: u64) -> Value {
    let rps = 10;
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: rps,
        latency: Duration::from_millis(300),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("contacts.csv"), records, "Acme");
    // The reverse path on, as users run it: the first scan must not delay the creates.
    let config = write_config(dir.path(), &sandbox, rps, "");
    let ctx = context(&config).await;
    let started = Instant::now();
    let report = run_cycle(&ctx, Mode::Apply).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let limit = report.counts.requests as f64 / f64::from(rps) + 0.3;
    sandbox.shutdown().await;
    json!({
        "records": records,
        "limit_per_second": rps,
        "requests": report.counts.requests,
        "seconds": seconds,
        "physical_limit_seconds": limit,
        "wall_over_limit": seconds / limit,
        "rate_limited": report.counts.rate_limited,
    })
}

/// The filter of `no_change.rows_<n>_filtered`: half the rows in scope (`lead_score` is
/// `i % 100`), so the cycle both evaluates and remembers judgements.
const NO_CHANGE_FILTER: &str = "int(record.lead_score) < 50";

/// Seeds a ledger as if `rows` records had synced (under `filter`: the rows it admits synced,
/// the others judged out of scope), then times the real binary's no-change cycle.
/// `Windows1252`: the file is a Windows-1252 export whose every row holds a non-ASCII
/// character (a company named "Société …"), read with `source.encoding = "auto"`, so every row
/// takes the decoding path.
async fn no_change(rows: u64, encoding: Encoding, filter: Option<&str>) -> Value {
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("contacts.csv");
    let company = match encoding {
        Encoding::Utf8 => "Acme",
        Encoding::Windows1252 => "Société",
    };
    write_csv_as(&csv_path, rows, company, encoding);
    let mut extra = "[reverse]\nenabled = false\n".to_string();
    if let Some(filter) = filter {
        extra.push_str(&format!("[sync]\nfilter = '{filter}'\n"));
    }
    let config_path = write_config(dir.path(), &sandbox, 10, &extra);
    let config = Config::load_with_env(&config_path, std::iter::empty()).unwrap();
    let scope = quo_sync::sync::ScopeRules::from_config(&config.sync).unwrap();
    let (rules, filter_fields) = scope.fingerprint_inputs();

    // Seed: map every row exactly as a cycle would and commit it as synced.
    let seed_started = Instant::now();
    let defs = quo_sync::app::build_client(&config)
        .unwrap()
        .custom_fields()
        .await
        .unwrap();
    let mapper = Arc::new(
        Mapper::new(&config.mapping, &defs)
            .unwrap()
            .fingerprint_also(&rules, &filter_fields),
    );
    let ledger = Ledger::open(&config.ledger.path).await.unwrap();
    let source = Source::from_config(&config.source).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let reader = tokio::spawn(async move { source.read(ReadRequest::default(), tx).await });
    let contact: Contact = serde_json::from_value(json!({"id": "seed"})).unwrap();
    let mut batch = Vec::with_capacity(5000);
    let mut out_of_scope = Vec::with_capacity(5000);
    let mut seeded = 0u64;
    while let Some(item) = rx.recv().await {
        let SourceItem::Record(record) = item else {
            panic!("bench rows are valid")
        };
        let fingerprint = mapper.fingerprint(&record);
        if !scope.admits(&record).unwrap() {
            out_of_scope.push(quo_sync::ledger::ScopeMark {
                external_id: record.external_id,
                state: quo_sync::ledger::RecordState::OutOfScope,
                fingerprint,
                link: quo_sync::ledger::ScopeLink::Keep,
            });
            if out_of_scope.len() == 5000 {
                ledger.mark_scope(&out_of_scope).await.unwrap();
                out_of_scope.clear();
            }
            continue;
        }
        let snapshot = mapper.map(&record).unwrap();
        seeded += 1;
        batch.push((
            record.external_id,
            // Unique per row, as Quo's ids are (the batch position alone repeats every batch).
            QuoContactId(format!("q{seeded}")),
            fingerprint,
            snapshot,
        ));
        if batch.len() == 5000 {
            flush(&ledger, &mut batch, &contact).await;
        }
    }
    flush(&ledger, &mut batch, &contact).await;
    ledger.mark_scope(&out_of_scope).await.unwrap();
    reader.await.unwrap().unwrap();
    ledger.close().await;
    let seed_seconds = seed_started.elapsed().as_secs_f64();

    sandbox.reset_stats();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args(["once", "--json", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let stats = sandbox.stats();
    sandbox.shutdown().await;
    if std::env::var_os("QUO_SYNC_BENCH_KEEP").is_some() {
        eprintln!("kept {}", dir.keep().display());
    }
    json!({
        "rows": rows,
        "seconds": seconds,
        "peak_rss_mib": summary["peak_rss_mib"],
        "phases_ms": summary["phases_ms"],
        "unchanged": summary["counts"]["unchanged"],
        "out_of_scope": summary["counts"]["out_of_scope"],
        "requests": stats.requests_total,
        "writes": stats.writes_total(),
        "seed_seconds": seed_seconds,
    })
}

async fn flush(
    ledger: &Ledger,
    batch: &mut Vec<(
        quo_sync::domain::ExternalId,
        QuoContactId,
        String,
        quo_sync::domain::Snapshot,
    )>,
    contact: &Contact,
) {
    let records: Vec<SyncedRecord<'_>> = batch
        .iter()
        .map(
            |(external_id, quo_id, fingerprint, snapshot)| SyncedRecord {
                external_id,
                quo_id,
                source_fingerprint: Some(fingerprint),
                snapshot,
                contact,
                crm_updated_at: None,
            },
        )
        .collect();
    ledger.commit_synced_batch(&records).await.unwrap();
    batch.clear();
}

/// Delay from an in-app edit to the CSV write, with the service running, by webhook or by poll.
async fn propagation(webhook: bool) -> f64 {
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_csv(&dir.path().join("contacts.csv"), 20, "Acme");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = b"bench webhook signing key 32 byt".to_vec();
    let reverse = if webhook {
        use base64::Engine;
        format!(
            "[reverse]\nlisten = \"127.0.0.1:{port}\"\nwebhook_secret = \"whsec_{}\"\npoll_interval = \"0s\"\n[schedule]\ninterval = \"1h\"\n",
            base64::engine::general_purpose::STANDARD.encode(&key)
        )
    } else {
        "[reverse]\npoll_interval = \"1s\"\n[schedule]\ninterval = \"1h\"\n".to_string()
    };
    let config_path = write_config(dir.path(), &sandbox, 1000, &reverse);
    let config = Config::load_with_env(&config_path, std::iter::empty()).unwrap();
    if webhook {
        sandbox.set_webhook(Some(WebhookTarget {
            url: format!("http://127.0.0.1:{port}/webhooks/quo"),
            secret_key: key,
            scheme: WebhookScheme::Standard,
        }));
    }
    let ctx = quo_sync::app::build_context(&config, "run", CancellationToken::new())
        .await
        .unwrap();
    let cancel = ctx.cancel.clone();
    let service =
        tokio::spawn(async move { quo_sync::app::run_service(&ctx, &config, None).await });
    let csv_path = dir.path().join("contacts.csv");
    // Wait for the initial load.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sandbox.contacts().len() < 20 {
        assert!(Instant::now() < deadline, "initial load did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = sandbox
        .contacts()
        .into_iter()
        .find(|c| c["externalId"] == "b-7")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    sandbox
        .app_edit(&id, json!({"defaultFields": {"company": "Moved In App"}}))
        .unwrap();
    while !std::fs::read_to_string(&csv_path)
        .unwrap()
        .contains("Moved In App")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "edit never reached the CSV"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delay_ms = started.elapsed().as_secs_f64() * 1000.0;
    cancel.cancel();
    let _ = service.await;
    sandbox.shutdown().await;
    delay_ms
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    json!({ "cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "os": std::env::consts::OS })
}

/// Whether a bench section runs: `QUO_SYNC_BENCH_ONLY=load,no_change` picks sections (all when unset).
fn wanted(section: &str) -> bool {
    std::env::var("QUO_SYNC_BENCH_ONLY")
        .map(|only| only.split(',').any(|s| s.trim() == section))
        .unwrap_or(true)
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments are ignored.
    let rps: u32 = std::env::var("QUO_SYNC_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let records: u64 = std::env::var("QUO_SYNC_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let sizes: Vec<u64> = std::env::var("QUO_SYNC_BENCH_ROWS")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut figures = serde_json::Map::new();
        figures.insert("machine".into(), machine());
        if wanted("load") {
            let (mut initial, update) = load_and_update(rps, records).await;
            let real = initial_load_at_real_rate(60).await;
            eprintln!("initial load at 10/s: {real}");
            initial["wall_over_limit"] = real["wall_over_limit"].clone();
            initial["at_real_rate"] = real;
            eprintln!("initial load: {initial}");
            eprintln!("update: {update}");
            figures.insert("initial_load".into(), initial);
            figures.insert("update".into(), update);
        }
        if wanted("no_change") {
            let mut no_change_figures = serde_json::Map::new();
            for rows in sizes {
                let figures = no_change(rows, Encoding::Utf8, None).await;
                eprintln!("no change, {rows} rows: {figures}");
                let utf8_seconds = figures["seconds"].as_f64().unwrap_or(0.0);
                no_change_figures.insert(format!("rows_{rows}"), figures);
                // The same file as a Windows-1252 export, measured in the same run.
                let mut figures = no_change(rows, Encoding::Windows1252, None).await;
                let seconds = figures["seconds"].as_f64().unwrap_or(0.0);
                figures["over_utf8"] = json!(seconds / utf8_seconds);
                eprintln!("no change, {rows} rows, Windows-1252: {figures}");
                no_change_figures.insert(format!("rows_{rows}_cp1252"), figures);
                // Under a filter that admits half the rows, measured in the same run.
                let mut filtered = no_change(rows, Encoding::Utf8, Some(NO_CHANGE_FILTER)).await;
                filtered["filter"] = json!(NO_CHANGE_FILTER);
                filtered["over_unfiltered"] =
                    json!(filtered["seconds"].as_f64().unwrap_or(f64::NAN) / utf8_seconds);
                eprintln!("no change, {rows} rows, filtered: {filtered}");
                no_change_figures.insert(format!("rows_{rows}_filtered"), filtered);
            }
            figures.insert("no_change".into(), Value::Object(no_change_figures));
        }
        if wanted("reverse") {
            let webhook_ms = propagation(true).await;
            let poll_ms = propagation(false).await;
            eprintln!("reverse: webhook {webhook_ms:.0} ms, poll (1 s interval) {poll_ms:.0} ms");
            figures.insert(
                "reverse".into(),
                json!({ "webhook_delay_ms": webhook_ms, "poll_delay_ms": poll_ms, "poll_interval_ms": 1000 }),
            );
        }
        if wanted("ha") {
            let ha = ha::takeover().await;
            eprintln!("ha: {ha}");
            figures.insert("ha".into(), ha);
        }
        if wanted("crm") {
            let crm = crm::crm_to_quo().await;
            eprintln!("crm_to_quo: {crm}");
            figures.insert("crm_to_quo".into(), crm);
        }
        if wanted("scan") {
            // Beside the `reverse` section's figures, in the same object.
            let reverse = figures.entry("reverse").or_insert_with(|| json!({}));
            for (key, value) in scan::scans().await {
                reverse[key] = value;
            }
        }
        if wanted("day_one") {
            figures.insert("day_one".into(), day_one::day_one().await);
        }
        if wanted("soak") {
            let soak = soak::soak().await;
            eprintln!("soak: {soak}");
            figures.insert("soak".into(), soak);
        }
        // New sections: `#[path = "sync/<name>.rs"] mod <name>;` plus one `if wanted(..)` here.
        let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        // A partial run (QUO_SYNC_BENCH_ONLY) keeps the other sections of the last full run.
        if std::env::var_os("QUO_SYNC_BENCH_ONLY").is_some()
            && let Ok(Value::Object(previous)) = std::fs::read(out.join("sync.json"))
                .map_err(|_| ())
                .and_then(|b| serde_json::from_slice(&b).map_err(|_| ()))
        {
            // One level deep: a section that shares an object (`reverse`) keeps the others' keys.
            for (key, value) in previous {
                match (figures.get_mut(&key), value) {
                    (None, value) => {
                        figures.insert(key, value);
                    }
                    (Some(Value::Object(now)), Value::Object(before)) => {
                        for (k, v) in before {
                            now.entry(k).or_insert(v);
                        }
                    }
                    _ => {}
                }
            }
        }
        let figures = Value::Object(figures);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("sync.json"), serde_json::to_string_pretty(&figures).unwrap()).unwrap();
        println!("{}", serde_json::to_string_pretty(&figures).unwrap());
    });
}
