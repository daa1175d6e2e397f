//! `activity` section: calls and texts to the CRM.
//!
//! - `activity.delay_ms.{p50,p99}`: from a webhook delivery's arrival to its CRM write (the
//!   activity CSV file), for 200 calls and texts while the contact sync is busy creating 600
//!   contacts at Quo's 10 requests a second (`contact_writes_during` says how busy).
//! - `activity.backfill_10000.{requests,seconds}`: a first start with `activity.backfill = 30d`
//!   over 10,000 calls into the HubSpot example's fake (call engagements); `requests` counts Quo's
//!   requests and the CRM's, against `minimum_requests` (one list page per 50 activities plus
//!   one write each).

use std::time::{Duration, Instant};

use quo_sync::config::Config;
use quo_sync::ledger::Ledger;
use quo_sync::sandbox::activity::{CallOutcome, CallSpec, Direction, MessageSpec};
use quo_sync::sandbox::{SandboxConfig, SandboxHandle};
use serde_json::{Value, json};
use support::{free_port, subscribe, until};
use tokio_util::sync::CancellationToken;

#[path = "../../tests/support/crm_objects.rs"]
mod crm_objects;
#[path = "../../tests/support/hubspot.rs"]
mod hubspot;
#[path = "../../tests/support/activity.rs"]
mod support;
#[path = "../../tests/support/token_crm.rs"]
mod token_crm;
#[path = "../../tests/support/token_desk.rs"]
mod token_desk;
#[path = "../../tests/support/vendor.rs"]
mod vendor;

/// The number `super::row(i, …)` gives record `b-i`.
fn number(i: u64) -> String {
    format!("+1415{:03}{:04}", 200 + (i / 10_000) % 300, i % 10_000)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// Delivery-to-CRM delays (ms) of every activity written, from the ledger.
async fn delays(ledger: &Ledger) -> Vec<f64> {
    let rows = ledger
        .debug_query_strings(
            "SELECT delivered_at || '|' || written_at FROM activities WHERE delivered_at IS NOT NULL AND written_at IS NOT NULL",
        )
        .await
        .unwrap();
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    let mut out: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.split_once('|'))
        .map(|(d, w)| (parse(w) - parse(d)).num_microseconds().unwrap_or(0) as f64 / 1000.0)
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

/// 200 activities delivered while 600 contacts are created at 10 requests a second.
async fn delay_under_load() -> Value {
    const LINKED: u64 = 50;
    const BUSY: u64 = 600;
    const ACTIVITIES: u64 = 200;
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: 10,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("contacts.csv");
    super::write_csv(&csv, LINKED, "Acme");
    let port = free_port();
    let key = subscribe(
        &sandbox,
        &format!("http://127.0.0.1:{port}/webhooks/quo/activity"),
    )
    .await;
    let config_path = super::write_config(
        dir.path(),
        &sandbox,
        10,
        &format!(
            "[reverse]\nlisten = \"127.0.0.1:{port}\"\npoll_interval = \"0s\"\n[schedule]\ninterval = \"1h\"\n\
             [activity]\nwebhook_secrets = [\"{key}\"]\n[activity.csv]\npath = \"{}\"\n",
            dir.path().join("activity.csv").display()
        ),
    );
    let config = Config::load_with_env(&config_path, std::iter::empty()).unwrap();
    let cancel = CancellationToken::new();
    let ctx = quo_sync::app::build_context(&config, "bench", cancel.clone())
        .await
        .unwrap();
    quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply)
        .await
        .unwrap();
    let ledger = ctx.ledger.clone();
    let service =
        tokio::spawn(async move { quo_sync::app::run_service(&ctx, &config, None).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The contact sync gets busy: 600 new rows (the file watcher starts the cycle).
    super::write_csv(&csv, LINKED + BUSY, "Acme");
    until(
        "the contact cycle underway",
        Duration::from_secs(30),
        || async { sandbox.contacts().len() as u64 > LINKED + 5 },
    )
    .await;
    sandbox.set_activity_enrichment_delay(Duration::from_millis(100), Duration::from_millis(800));
    let writes_before = sandbox.stats().writes.creates;
    for i in 0..ACTIVITIES {
        let n = i % LINKED;
        let direction = if i % 2 == 0 {
            Direction::Incoming
        } else {
            Direction::Outgoing
        };
        if i % 3 == 2 {
            sandbox.activity_message(MessageSpec {
                number: number(n),
                direction,
                text: "bench".into(),
                ..MessageSpec::default()
            });
        } else {
            sandbox.activity_call(CallSpec {
                number: number(n),
                direction,
                outcome: if i % 5 == 0 {
                    CallOutcome::Missed
                } else {
                    CallOutcome::Answered
                },
                duration: 60,
                recorded: true,
                ..CallSpec::default()
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until(
        "every activity written",
        Duration::from_secs(60),
        || async {
            ledger
                .debug_query_i64(
                    "SELECT COUNT(*) FROM activities WHERE state = 'written'",
                    &[],
                )
                .await
                .unwrap()
                == ACTIVITIES as i64
        },
    )
    .await;
    let contact_writes = sandbox.stats().writes.creates - writes_before;
    let samples = delays(&ledger).await;
    cancel.cancel();
    let _ = service.await;
    json!({
        "p50": percentile(&samples, 0.5),
        "p99": percentile(&samples, 0.99),
        "max": samples.last().copied().unwrap_or(0.0),
        "samples": samples.len(),
        "contact_writes_during": contact_writes,
        "quo_limit_per_second": 10,
    })
}

/// A first start that backfills 10,000 calls into HubSpot.
async fn backfill() -> Value {
    const CALLS: u64 = 10_000;
    const CONTACTS: u64 = 100;
    let sandbox = SandboxHandle::start(SandboxConfig {
        requests_per_second: 10,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let contacts: Vec<(String, Value)> = (0..CONTACTS)
        .map(|i| {
            (
                format!("{}", 5000 + i),
                json!({"firstname": format!("B{i}"), "lastname": "Fill", "phone": number(i)}),
            )
        })
        .collect();
    let crm = hubspot::start(contacts).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), hubspot::TOKEN).unwrap();
    let mut text = std::fs::read_to_string(format!(
        "{}/config/rest-hubspot.example.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    text.push('\n');
    text.push_str(
        &std::fs::read_to_string(format!(
            "{}/config/activity-hubspot.example.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    );
    let text = text
        .replace("https://api.hubapi.com", &crm.base_url)
        .replace(
            "token_env = \"HUBSPOT_TOKEN\"",
            &format!("token_file = {:?}", dir.path().join("token")),
        )
        .replace(
            "[activity]\n",
            "[activity]\nbackfill = \"30d\"\npoll_interval = \"2s\"\n",
        )
        .replace("requests_per_second = 9", "requests_per_second = 200");
    // The examples' own tables take the sandbox, the ledger and the bench's settings.
    let mut table: toml::Table = text.parse().expect("the examples are valid TOML together");
    let mut set = |section: &str, key: &str, value: toml::Value| {
        table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a table")
            .insert(key.into(), value);
    };
    let text_value = |v: String| toml::Value::String(v);
    set("quo", "base_url", text_value(sandbox.base_url()));
    set("quo", "api_key", text_value(sandbox.api_key().to_string()));
    set("quo", "requests_per_second", toml::Value::Integer(10));
    let ledger = dir.path().join("ledger.db").display().to_string();
    set("ledger", "path", text_value(ledger));
    set("reverse", "poll_interval", text_value("0s".into()));
    set("log", "level", text_value("warn".into()));
    let path = dir.path().join("quo-sync.toml");
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    let config = Config::load_with_env(&path, std::iter::empty()).unwrap();
    let cancel = CancellationToken::new();
    let ctx = quo_sync::app::build_context(&config, "bench", cancel.clone())
        .await
        .unwrap();
    quo_sync::sync::run_cycle(&ctx, quo_sync::sync::Mode::Apply)
        .await
        .unwrap();
    let calls: Vec<CallSpec> = (0..CALLS)
        .map(|i| CallSpec {
            number: number(i % CONTACTS),
            direction: if i % 2 == 0 {
                Direction::Incoming
            } else {
                Direction::Outgoing
            },
            outcome: if i % 7 == 0 {
                CallOutcome::Missed
            } else {
                CallOutcome::Answered
            },
            duration: 30 + i % 600,
            recorded: true,
            created_at: Some(chrono::Utc::now() - chrono::Duration::minutes(10 + (i as i64) * 4)),
            ..CallSpec::default()
        })
        .collect();
    sandbox.seed_activity(&calls, &[]);
    sandbox.reset_stats();
    let (creates_before, _, lookups_before) = {
        let b = crm.books();
        (b.objects.creates, b.objects.updates, b.objects.lookups)
    };
    let ledger = ctx.ledger.clone();
    let started = Instant::now();
    let service =
        tokio::spawn(async move { quo_sync::app::run_service(&ctx, &config, None).await });
    until(
        "10,000 calls in the CRM",
        Duration::from_secs(900),
        || async { crm.objects().len() as u64 == CALLS },
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    until(
        "their ledger rows written",
        Duration::from_secs(60),
        || async {
            ledger
                .debug_query_i64(
                    "SELECT COUNT(*) FROM activities WHERE state = 'written'",
                    &[],
                )
                .await
                .unwrap()
                == CALLS as i64
        },
    )
    .await;
    let quo_requests = sandbox.stats().requests_total;
    let (crm_creates, crm_updates, crm_lookups) = {
        let b = crm.books();
        (
            b.objects.creates - creates_before,
            b.objects.updates,
            b.objects.lookups - lookups_before,
        )
    };
    cancel.cancel();
    let _ = service.await;
    let pages_min = CALLS.div_ceil(50);
    let requests = quo_requests + crm_creates + crm_updates + crm_lookups;
    json!({
        "activities": CALLS,
        "seconds": seconds,
        "requests": requests,
        "quo_requests": quo_requests,
        "crm_writes": crm_creates + crm_updates,
        "crm_lookups": crm_lookups,
        "minimum_requests": pages_min + CALLS,
        "requests_over_minimum": requests as f64 / (pages_min + CALLS) as f64,
        "quo_limit_per_second": 10,
    })
}

/// The `activity` section.
pub async fn activity() -> Value {
    let delay_ms = delay_under_load().await;
    eprintln!("activity delay: {delay_ms}");
    let backfill = backfill().await;
    eprintln!("activity backfill: {backfill}");
    json!({ "delay_ms": delay_ms, "backfill_10000": backfill })
}
