//! `scan` section: one reverse scan pass over a workspace of 10,000 and 100,000 managed contacts,
//! run by the real binary (`quo-sync run`), and the delay of CRM edits made while it runs.
//!
//! Setup: the sandbox is seeded directly with every CSV row's create body and the ledger with
//! the matching synced rows (100,000 creates over HTTP would take hours at 10/s), so the
//! service starts with everything linked, its first cycle changes nothing, and the scanner lists
//! the whole workspace once. Figures, per size (`reverse.scan_<n>`):
//! - `requests`: list pages the pass took (the scanner's own count in its `quo_scanned` line),
//!   against `min_requests` = ⌈n ÷ 50⌉ (Quo's largest page);
//! - `seconds`: the pass's wall time, and `seconds_over_limit` = seconds × rate ÷ requests
//!   (1.0: the scan had every permit; the edits' requests push it up), `limit_used` = all
//!   requests the service sent ÷ (seconds × rate);
//! - `write_delay_ms`: the median (and max) time from a CSV edit to its PATCH in the sandbox,
//!   for `EDITS` edits spread evenly over the pass's expected length.
//!
//! Rate: Quo's real 10/s (`rate_per_s`), on both the sandbox and the limiter, so the write delay
//! is what a user would see: a write waits behind the scan's permits exactly as it would in
//! production. `QUO_SYNC_BENCH_SCAN_RATE` scales the rate for a quick run; the write delay is
//! then *not* comparable (the permits a write waits for get shorter with the rate while the
//! CSV read and the watcher's debounce do not), so the README quotes only 10/s runs. Every
//! request takes `LATENCY_MS` (a fast HTTPS round trip): below the 102 ms permit spacing, so
//! the scanner still asks for every permit and writes meet the strongest competition.

use std::path::Path;

use std::time::{Duration, Instant};

use super::service::Service;
use quo_sync::config::Config;
use quo_sync::domain::QuoContactId;
use quo_sync::ledger::{Ledger, SyncedRecord};
use quo_sync::mapping::Mapper;
use quo_sync::quo::types::Contact;
use quo_sync::sandbox::{SandboxConfig, SandboxHandle};
use quo_sync::source::{ReadRequest, Source, SourceItem};
use serde_json::{Value, json};

/// CSV edits made during each pass.
const EDITS: usize = 5;
/// Added to every sandbox request.
const LATENCY_MS: u64 = 100;
/// Quo's largest page (`maxResults`).
const PAGE: u64 = 50;

/// `scan_<n>` figures for each size in `QUO_SYNC_BENCH_SCAN_SIZES` (default `10000,100000`).
pub async fn scans() -> serde_json::Map<String, Value> {
    let rate: u32 = std::env::var("QUO_SYNC_BENCH_SCAN_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let sizes: Vec<u64> = std::env::var("QUO_SYNC_BENCH_SCAN_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut out = serde_json::Map::new();
    for n in sizes {
        let figures = scan_with_edits(n, rate).await;
        eprintln!("scan of {n} contacts at {rate}/s: {figures}");
        out.insert(format!("scan_{n}"), figures);
    }
    out
}

/// Seeds the sandbox and the ledger as if every CSV row had been created and synced; returns the
/// Quo ids in row order.
async fn seed(config_path: &Path, sandbox: &SandboxHandle) -> Vec<String> {
    let config = Config::load_with_env(config_path, std::iter::empty()).unwrap();
    let defs = quo_sync::app::build_client(&config)
        .unwrap()
        .custom_fields()
        .await
        .unwrap();
    let mapper = Mapper::new(&config.mapping, &defs).unwrap();
    let ledger = Ledger::open(&config.ledger.path).await.unwrap();
    let source = Source::from_config(&config.source).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let reader = tokio::spawn(async move { source.read(ReadRequest::default(), tx).await });
    let mut ids = Vec::new();
    let mut batch = Vec::with_capacity(5000);
    loop {
        let item = rx.recv().await;
        let done = item.is_none();
        if let Some(item) = item {
            let SourceItem::Record(record) = item else {
                panic!("bench rows are valid")
            };
            let snapshot = mapper.map(&record).unwrap();
            let fingerprint = mapper.fingerprint(&record);
            batch.push((record.external_id, fingerprint, snapshot));
        }
        if batch.len() == 5000 || (done && !batch.is_empty()) {
            // The body a cycle's create would send, stored by the sandbox as its POST would.
            let bodies: Vec<Value> = batch
                .iter()
                .map(|(external_id, _, snapshot)| {
                    serde_json::to_value(quo_sync::sync::payload::create_body(
                        snapshot,
                        external_id.as_str(),
                        &config.quo.source,
                        None,
                    ))
                    .unwrap()
                })
                .collect();
            let created = sandbox.seed_contacts(&bodies).unwrap();
            let contacts: Vec<(QuoContactId, Contact)> = created
                .into_iter()
                .map(|c| {
                    let contact: Contact = serde_json::from_value(c).unwrap();
                    (QuoContactId(contact.id.clone()), contact)
                })
                .collect();
            let records: Vec<SyncedRecord<'_>> = batch
                .iter()
                .zip(&contacts)
                .map(
                    |((external_id, fingerprint, snapshot), (quo_id, contact))| SyncedRecord {
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
            ids.extend(contacts.into_iter().map(|(id, _)| id.0));
            batch.clear();
        }
        if done {
            break;
        }
    }
    reader.await.unwrap().unwrap();
    ledger.close().await;
    ids
}

fn first_name(sandbox: &SandboxHandle, quo_id: &str) -> Option<String> {
    sandbox
        .contact(quo_id)
        .and_then(|c| c["defaultFields"]["firstName"].as_str().map(str::to_string))
}

/// One service over `n` seeded contacts: its scan pass, and `EDITS` CSV edits spread over it.
async fn scan_with_edits(n: u64, rate: u32) -> Value {
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: rate,
        latency: Duration::from_millis(LATENCY_MS),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("contacts.csv");
    super::write_csv(&csv_path, n, "Acme");
    // The hourly interval and poll: only the watcher's signal explains a short write delay, and
    // the scanner runs one pass (the first is due at once: none ran yet).
    let config_path = super::write_config(
        dir.path(),
        &sandbox,
        rate,
        "[schedule]\ninterval = \"1h\"\n[reverse]\npoll_interval = \"1h\"\n",
    );
    let seed_started = Instant::now();
    let ids = seed(&config_path, &sandbox).await;
    let seed_seconds = seed_started.elapsed().as_secs_f64();
    sandbox.reset_stats();

    let service = Service::start(&config_path, &[]);
    service
        .wait_for("cycles_started", Duration::from_secs(60))
        .await;
    let pass_started = Instant::now();
    let min_requests = n.div_ceil(PAGE);
    let expected = Duration::from_secs_f64(min_requests as f64 / f64::from(rate));
    let mut csv = std::fs::read_to_string(&csv_path).unwrap();
    let mut delays = Vec::new();
    for edit in 0..EDITS {
        let at = expected.mul_f64((edit as f64 + 0.5) / EDITS as f64);
        tokio::time::sleep_until((pass_started + at).into()).await;
        if service.event("quo_scanned").is_some() {
            break;
        }
        // Rows spread over the file (never row 0: each edited line starts after a newline).
        let k = (edit as u64 + 1) * n / (EDITS as u64 + 1);
        let name = format!("Edited{edit}x{k}");
        let before = format!("\nb-{k},First{k},");
        assert!(csv.contains(&before), "row b-{k} in the CSV");
        csv = csv.replacen(&before, &format!("\nb-{k},{name},"), 1);
        let started = Instant::now();
        std::fs::write(&csv_path, &csv).unwrap();
        let quo_id = &ids[k as usize];
        while first_name(&sandbox, quo_id).as_deref() != Some(name.as_str()) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "scan bench: edit of b-{k} never reached Quo"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        delays.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let scanned = service
        .wait_for("quo_scanned", expected * 3 + Duration::from_secs(120))
        .await;
    let stats = sandbox.stats();
    let mut child = service.child;
    let _ = child.kill().await;
    sandbox.shutdown().await;

    let requests = scanned["pages"].as_u64().unwrap_or(0);
    let seconds = scanned["seconds"].as_f64().unwrap_or(0.0);
    let mut sorted = delays.clone();
    sorted.sort_by(f64::total_cmp);
    json!({
        "contacts": n,
        "rate_per_s": rate,
        "latency_ms": LATENCY_MS,
        "requests": requests,
        "min_requests": min_requests,
        "requests_over_min": requests as f64 / min_requests as f64,
        "seconds": seconds,
        "seconds_over_limit": seconds * f64::from(rate) / requests.max(1) as f64,
        // Every request the service sent (the edits' reads and PATCHes, the first cycle's field
        // read) against the permits of the pass: how much of the limit was used in all.
        "requests_all": stats.requests_total,
        "limit_used": stats.requests_total as f64 / (seconds * f64::from(rate)).max(f64::EPSILON),
        "contacts_listed": scanned["contacts"],
        "notices": scanned["notices"],
        "write_delay_ms": sorted.get(sorted.len() / 2),
        "write_delay_max_ms": sorted.last(),
        "write_delays_ms": delays,
        "patches": stats.writes.updates,
        "rate_limited": stats.rate_limited,
        "seed_seconds": seed_seconds,
    })
}
