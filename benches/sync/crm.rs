//! `crm_to_quo.delay_ms`: how long a CRM-side change takes to show in Quo when the service's
//! `schedule.interval` is an hour, so only the change signals can explain a short delay:
//! - `csv`: an edit to the CSV file (file watcher, 200 ms debounce, then a cycle);
//! - `webhook`: a REST CRM record edited, then a signed `POST /webhooks/crm` (incremental read);
//! - `webhook_ids`: the same with `source.rest.webhook.ids_pointer`, so the cycle GETs only the
//!   named record instead of listing (the CRM's list calls during the rounds are counted: 0).
//!
//! Each path is measured `ROUNDS` times in one running service; median and max are reported.

use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use quo_sync::config::Config;
use quo_sync::sandbox::{SandboxConfig, SandboxHandle};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

#[path = "../../tests/support/fake_crm.rs"]
mod fake_crm;

const ROUNDS: usize = 5;
const SECRET: &str = "bench-crm-webhook-secret";

/// Both paths' delays.
pub async fn crm_to_quo() -> Value {
    let csv = csv_delays().await;
    let (webhook, _) = webhook_delays(false).await;
    let (webhook_ids, list_reads) = webhook_delays(true).await;
    json!({
        "delay_ms": { "csv": summary(&csv), "webhook": summary(&webhook), "webhook_ids": summary(&webhook_ids) },
        "webhook_ids_list_reads": list_reads,
        "rounds": ROUNDS,
        "interval_s": 3600,
    })
}

fn summary(samples: &[f64]) -> Value {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    json!({ "median": sorted[sorted.len() / 2], "max": sorted[sorted.len() - 1] })
}

fn first_name(sandbox: &SandboxHandle, id: &str) -> Option<String> {
    sandbox
        .contacts()
        .into_iter()
        .find(|c| c["externalId"] == id)
        .and_then(|c| c["defaultFields"]["firstName"].as_str().map(str::to_string))
}

async fn until(what: &str, mut check: impl FnMut() -> bool) -> f64 {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed().as_secs_f64() * 1000.0
}

async fn sandbox() -> SandboxHandle {
    SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap()
}

async fn csv_delays() -> Vec<f64> {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("contacts.csv");
    super::write_csv(&csv_path, 20, "Acme");
    let config_path = super::write_config(
        dir.path(),
        &sandbox,
        1000,
        "[schedule]\ninterval = \"1h\"\n[reverse]\npoll_interval = \"0s\"\n",
    );
    let config = Config::load_with_env(&config_path, std::iter::empty()).unwrap();
    let ctx = quo_sync::app::build_context(&config, "run", CancellationToken::new())
        .await
        .unwrap();
    let cancel = ctx.cancel.clone();
    let service =
        tokio::spawn(async move { quo_sync::app::run_service(&ctx, &config, None).await });
    until("initial load", || sandbox.contacts().len() == 20).await;
    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = std::fs::read_to_string(&csv_path).unwrap();
        let name = format!("Csv{round}");
        let edited = text.replacen(",First7,", &format!(",{name},"), 1).replacen(
            &format!(",Csv{},", round.wrapping_sub(1)),
            &format!(",{name},"),
            1,
        );
        std::fs::write(&csv_path, edited).unwrap();
        delays.push(
            until("CSV edit in Quo", || {
                first_name(&sandbox, "b-7").as_deref() == Some(name.as_str())
            })
            .await,
        );
    }
    cancel.cancel();
    let _ = service.await;
    sandbox.shutdown().await;
    delays
}

fn sign(body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Delays of the webhook path, with the ids fetched alone when `named`; also the CRM list
/// calls made during the rounds.
async fn webhook_delays(named: bool) -> (Vec<f64>, usize) {
    let sandbox = sandbox().await;
    let contacts: Vec<Value> = (1..=20)
        .map(|i| {
            json!({
                "id": format!("r{i}"),
                "firstName": format!("Rest{i}"),
                "phone": format!("+1415555{:04}", 5000 + i),
                "updated_at": "2026-01-01T00:00:00Z",
            })
        })
        .collect();
    let crm = fake_crm::FakeCrm::start(fake_crm::Auth::None, contacts).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = format!(
        "[quo]\nbase_url = \"{}\"\napi_key = \"{}\"\nrequests_per_second = 1000\n\n[ledger]\npath = \"{}\"\n\n[source]\nkind = \"rest\"\n\n[source.rest]\nbase_url = \"{}\"\nlist_path = \"/offset/contacts\"\nrecords_pointer = \"/results\"\nid_pointer = \"/id\"\nupdated_at_pointer = \"/updated_at\"\nupdated_since_param = \"updated_since\"\nfields = {{ first_name = \"/firstName\", phone = \"/phone\" }}\nwebhook = {{ secret = \"{SECRET}\"{named} }}\n\n[mapping]\ndefault_region = \"US\"\nfirst_name = \"first_name\"\nphones = [{{ field = \"phone\", label = \"mobile\" }}]\n\n[schedule]\ninterval = \"1h\"\n\n[service]\nlisten = \"{addr}\"\n\n[log]\nlevel = \"warn\"\n",
        sandbox.base_url(),
        sandbox.api_key(),
        dir.path().join("ledger.db").display(),
        crm.base_url,
        named = if named {
            ", ids_pointer = \"/ids\", get_path = \"/contacts/{id}\""
        } else {
            ""
        },
    );
    let path = dir.path().join("rest.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load_with_env(&path, std::iter::empty()).unwrap();
    let ctx = quo_sync::app::build_context(&config, "run", CancellationToken::new())
        .await
        .unwrap();
    let cancel = ctx.cancel.clone();
    let service =
        tokio::spawn(async move { quo_sync::app::run_service(&ctx, &config, None).await });
    until("initial load", || sandbox.contacts().len() == 20).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/webhooks/crm");
    let mut delays = Vec::new();
    let lists_before = crm.count("GET", "/offset/");
    for round in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let name = format!("Hook{round}");
        let mut record = crm.contact("r7").unwrap();
        record["firstName"] = json!(name);
        record["updated_at"] = json!(chrono::Utc::now().to_rfc3339());
        crm.replace("r7", record);
        let body = format!(r#"{{"ids":["r7"],"round":{round}}}"#).into_bytes();
        let started = Instant::now();
        let status = http
            .post(&url)
            .header("X-Signature", sign(&body))
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 202);
        until("webhook edit in Quo", || {
            first_name(&sandbox, "r7").as_deref() == Some(name.as_str())
        })
        .await;
        delays.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let list_reads = crm.count("GET", "/offset/") - lists_before;
    cancel.cancel();
    let _ = service.await;
    sandbox.shutdown().await;
    (delays, list_reads)
}
