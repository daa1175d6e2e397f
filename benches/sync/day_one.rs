//! `day_one` section: the first cycle in a workspace that already holds people, run by the real
//! binary (`quo-sync once --json`).
//!
//! - `day_one.rows_5000`: a workspace of 10,000 contacts and a CRM of 5,000 records, 3,000 of
//!   them already in Quo (2,000 by phone, 1,000 by email), 70 held (10 matching two contacts,
//!   50 Zapier's, 10 HubSpot's): `requests` against `min_requests` (one custom-field read, one
//!   listing page per 50 contacts, one PATCH per adoption, one POST per create), and
//!   `listed_pages`: the pages the cycle listed, two listings' worth since creates wait until a
//!   second listing agrees with the first (`sync::confirm`), `seconds` at
//!   `rate_per_s` (both the sandbox's limit and the client's) and `seconds_over_limit` =
//!   seconds × rate ÷ requests (1.0: every permit used), `adopted`, `created`, `held`.
//! - `day_one.index_100000`: a workspace of 100,000 contacts and a CRM of 1,000 records (500 of
//!   them in Quo): the peak RSS of `once` (which lists the workspace into the ledger's index
//!   before its first creates) and of `plan` (which lists it into a throwaway ledger), with the
//!   rate lifted so the listing takes seconds; goal under 64 MiB. `baseline_peak_rss_mib` is the
//!   same `once` against a workspace of only the CRM's 500 people, and `index_mib` the
//!   difference: what the 100,000-contact index costs over the process itself.
//!
//! Knobs: `QUO_SYNC_BENCH_DAY_ONE_RATE` (default 20/s, as the load section: the 5,000-record
//! cycle takes about four minutes; 10/s doubles it).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use quo_sync::sandbox::{SandboxConfig, SandboxHandle};
use serde_json::{Value, json};

/// The CRM: `records` rows, record `n` with phone `phone(n)` and email `email(n)`.
fn crm_csv(path: &Path, records: usize) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "{}", super::HEADER).unwrap();
    for n in 0..records {
        writeln!(
            out,
            "r-{n},First{n},Last{n},Acme {n},Buyer,{},,{},,{},yes,2026-03-01,vip,https://e{n}.example.com,2026-01-01T00:00:00Z",
            email(n),
            phone(n),
            n % 100
        )
        .unwrap();
    }
}

fn phone(n: usize) -> String {
    format!("+1415{:07}", 2_000_000 + n)
}

fn email(n: usize) -> String {
    format!("person{n}@example.com")
}

/// The workspace as a seed CSV: `existing` records' people (two thirds by phone, a third by
/// email, each with a note), then (for the 5,000-record run) the held ones, then strangers up
/// to `contacts`.
fn workspace_csv(contacts: usize, existing: usize, held: bool) -> String {
    let mut lines = vec!["first_name,last_name,email,phone,notes,source".to_string()];
    let by_phone = existing * 2 / 3;
    for n in 0..existing {
        lines.push(if n < by_phone {
            format!("App{n},Typed,,{},typed in the app,", phone(n))
        } else {
            format!("App{n},Typed,{},,typed in the app,", email(n))
        });
    }
    if held {
        for n in existing..existing + 10 {
            lines.push(format!("Twice{n},ByPhone,,{},,", phone(n)));
            lines.push(format!("Twice{n},ByEmail,{},,,", email(n)));
        }
        for n in existing + 10..existing + 60 {
            lines.push(format!("Zap{n},Zapped,,{},,zapier", phone(n)));
        }
        for n in existing + 60..existing + 70 {
            lines.push(format!("Hub{n},Spotted,{},,,hubspot", email(n)));
        }
    }
    let mut i = 0;
    while lines.len() <= contacts {
        lines.push(format!("Stranger{i},Else,stranger{i}@elsewhere.example,,,"));
        i += 1;
    }
    lines.join("\n") + "\n"
}

/// Runs `quo-sync <command> --json` on `config`; its JSON output.
fn run_json(command: &str, config: &Path) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_quo-sync"))
        .args([command, "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        output.status.code().is_some_and(|c| c == 0 || c == 3),
        "{command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The 5,000-record first cycle at `rate` requests per second.
async fn rows_5000(rate: u32) -> Value {
    let (contacts, records, existing) = (10_000usize, 5_000usize, 3_000usize);
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: rate,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    sandbox
        .seed_existing_csv(&workspace_csv(contacts, existing, true))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    crm_csv(&dir.path().join("contacts.csv"), records);
    let config = super::write_config(dir.path(), &sandbox, rate, "[reverse]\nenabled = true\n");
    let started = Instant::now();
    let summary = run_json("once", &config);
    let seconds = started.elapsed().as_secs_f64();
    let stats = sandbox.stats();
    sandbox.shutdown().await;
    let counts = &summary["counts"];
    let requests = counts["requests"].as_u64().unwrap_or(0);
    let adopted = counts["adopted"].as_u64().unwrap_or(0);
    let created = counts["created"].as_u64().unwrap_or(0);
    let pages = (contacts as u64).div_ceil(50);
    json!({
        "contacts": contacts,
        "records": records,
        "rate_per_s": rate,
        "requests": requests,
        "min_requests": 1 + pages + adopted + created,
        "listing_pages": pages,
        "listed_pages": counts["listing_pages"],
        "requests_over_min": requests as f64 / (1 + pages + adopted + created) as f64,
        "seconds": seconds,
        "seconds_over_limit": seconds * f64::from(rate) / requests.max(1) as f64,
        "adopted": adopted,
        "created": created,
        "held": counts["held"],
        "rate_limited": stats.rate_limited,
        "writes": stats.writes_total(),
    })
}

/// Peak RSS of `once` and `plan` over a 100,000-contact workspace.
async fn index_100000() -> Value {
    let (contacts, records, existing) = (100_000usize, 1_000usize, 500usize);
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    sandbox
        .seed_existing_csv(&workspace_csv(contacts, existing, false))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    crm_csv(&dir.path().join("contacts.csv"), records);
    let config = super::write_config(dir.path(), &sandbox, 100_000, "");
    let started = Instant::now();
    let plan = run_json("plan", &config);
    let plan_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let once = run_json("once", &config);
    let once_seconds = started.elapsed().as_secs_f64();
    sandbox.shutdown().await;
    // The same CRM against a workspace of only its 500 people: what the process costs without
    // the 100,000-contact index (binary, runtime, SQLite, HTTP).
    let baseline = SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    baseline
        .seed_existing_csv(&workspace_csv(existing, existing, false))
        .unwrap();
    let small = tempfile::tempdir().unwrap();
    crm_csv(&small.path().join("contacts.csv"), records);
    let small_config = super::write_config(small.path(), &baseline, 100_000, "");
    let base = run_json("once", &small_config);
    baseline.shutdown().await;
    let mib = |v: &Value| v["peak_rss_mib"].as_f64();
    json!({
        "contacts": contacts,
        "records": records,
        "peak_rss_mib": once["peak_rss_mib"],
        "plan_peak_rss_mib": plan["peak_rss_mib"],
        "baseline_peak_rss_mib": base["peak_rss_mib"],
        "index_mib": mib(&once).zip(mib(&base)).map(|(a, b)| a - b),
        "once_seconds": once_seconds,
        "plan_seconds": plan_seconds,
        "adopted": once["counts"]["adopted"],
        "created": once["counts"]["created"],
        "requests": once["counts"]["requests"],
        "listed_pages": once["counts"]["listing_pages"],
    })
}

/// The `day_one` figures.
pub async fn day_one() -> Value {
    let rate: u32 = std::env::var("QUO_SYNC_BENCH_DAY_ONE_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let index = index_100000().await;
    eprintln!("day one, 100,000-contact index: {index}");
    let rows = rows_5000(rate).await;
    eprintln!("day one, 5,000 records at {rate}/s: {rows}");
    json!({ "rows_5000": rows, "index_100000": index })
}
