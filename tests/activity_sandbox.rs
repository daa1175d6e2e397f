//! The sandbox's dated activity surface against the 2026-03-30 contract
//! (`docs/quo-api-2026-03-30.md`), and the dated client against the sandbox, over real HTTP:
//! the version header checked before auth, cursor paging newest first, `createdAt` ranges under
//! both readings of the operators, users, webhook subscriptions whose key shows on create only,
//! and signed, retried, faulty deliveries in both schemes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use chrono::Utc;
use quo_sync::quo::client::{ClientSettings, QuoClient};
use quo_sync::quo::dated::{CreatedRange, DatedClient, Include, NewWebhook, WebhookPatch};
use quo_sync::quo::limiter::RateLimiter;
use quo_sync::quo::retry::RetryPolicy;
use quo_sync::reverse::signature;
use quo_sync::sandbox::activity::{ActivityFaults, CallOutcome, CallSpec, Direction, MessageSpec};
use quo_sync::sandbox::{SandboxConfig, SandboxHandle, WebhookScheme, WebhookTarget};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

async fn sandbox() -> SandboxHandle {
    SandboxHandle::start(SandboxConfig {
        requests_per_second: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap()
}

fn dated(sb: &SandboxHandle) -> DatedClient {
    let client = QuoClient::new(
        ClientSettings {
            base_url: sb.base_url(),
            api_key: SecretString::from(sb.api_key().to_string()),
            source: "quo-sync".into(),
            timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                max_retries: 3,
                base: Duration::from_millis(10),
                cap: Duration::from_millis(100),
            },
        },
        RateLimiter::per_second(1000),
    );
    DatedClient::new(&client)
}

fn call(number: &str, minutes_ago: i64) -> CallSpec {
    CallSpec {
        number: number.into(),
        direction: Direction::Incoming,
        outcome: CallOutcome::Answered,
        duration: 60,
        created_at: Some(Utc::now() - chrono::Duration::minutes(minutes_ago)),
        recorded: true,
        ..CallSpec::default()
    }
}

#[tokio::test]
async fn the_version_header_is_checked_before_the_key() {
    let sb = sandbox().await;
    let http = reqwest::Client::new();
    let url = format!("{}/calls", sb.base_url());
    let bare = http.get(&url).send().await.unwrap();
    assert_eq!(bare.status(), 400, "no version and no key: 400, not 401");
    let body: Value = bare.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Quo-Api-Version"),
        "{body}"
    );
    for key in ["title", "message", "docs", "trace"] {
        assert!(
            body.get(key).is_some(),
            "2026 error envelope has {key}: {body}"
        );
    }
    let versioned = http
        .get(&url)
        .header("Quo-Api-Version", "2026-03-30")
        .send()
        .await
        .unwrap();
    assert_eq!(versioned.status(), 401);
    let wrong = http
        .get(&url)
        .header("Quo-Api-Version", "2025-01-01")
        .header("Authorization", sb.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 400);
    let fine = http
        .get(&url)
        .header("Quo-Api-Version", "2026-03-30")
        .header("Authorization", sb.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
    // The contact routes stay as they were: no version header needed on /v1.
    let v1 = http
        .get(format!("{}/v1/contacts?maxResults=1", sb.base_url()))
        .header("Authorization", sb.api_key())
        .send()
        .await
        .unwrap();
    assert_eq!(v1.status(), 200);
}

#[tokio::test]
async fn lists_page_newest_first_within_created_at_ranges_under_both_readings() {
    let sb = sandbox().await;
    let calls: Vec<CallSpec> = (0..120).map(|i| call("+14155550100", 200 - i)).collect();
    let messages: Vec<MessageSpec> = (0..70)
        .map(|i| MessageSpec {
            number: "+14155550100".into(),
            direction: Direction::Incoming,
            text: format!("text {i}"),
            created_at: Some(Utc::now() - chrono::Duration::minutes(200 - i)),
            ..MessageSpec::default()
        })
        .collect();
    sb.seed_activity(&calls, &messages);
    let client = dated(&sb);
    for swapped in [false, true] {
        sb.set_activity_ranges_swapped(swapped);
        // Calls of the last 150 minutes (ages 81..=150): every page newest first, all within.
        let since = Utc::now() - chrono::Duration::minutes(150) - chrono::Duration::seconds(30);
        let range = CreatedRange {
            since: Some(since),
            until: None,
        };
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = client
                .list_calls(range, Include::ALL, after.as_deref())
                .await
                .unwrap();
            pages += 1;
            assert!(page.data.len() <= 50);
            for item in &page.data {
                assert!(item["summary"]["status"] == "completed", "{item}");
                seen.push(item["createdAt"].as_str().unwrap().to_string());
            }
            match page.next_cursor {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), 70, "ages 81..=150 minutes (swapped: {swapped})");
        assert_eq!(pages, 2);
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, sorted, "newest first");
        let page = client
            .list_messages(
                CreatedRange {
                    since: Some(Utc::now() - chrono::Duration::minutes(180)),
                    until: Some(Utc::now() - chrono::Duration::minutes(170)),
                },
                None,
            )
            .await
            .unwrap();
        assert!(
            (10..=12).contains(&page.data.len()),
            "about 11 messages in a 10-minute window: {}",
            page.data.len()
        );
    }
    // Operators outside the reading in force are refused, naming the parameter.
    sb.set_activity_ranges_swapped(false);
    let http = reqwest::Client::new();
    let refused: Value = http
        .get(format!(
            "{}/calls?createdAt[gt]=2026-01-01T00:00:00Z",
            sb.base_url()
        ))
        .header("Quo-Api-Version", "2026-03-30")
        .header("Authorization", sb.api_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        refused["errors"][0]["path"], "/query/createdAt[gt]",
        "{refused}"
    );
}

#[tokio::test]
async fn users_numbers_and_late_call_parts() {
    let sb = sandbox().await;
    sb.set_activity_enrichment_delay(Duration::from_secs(600), Duration::from_secs(600));
    let client = dated(&sb);
    let users = client.users().await.unwrap();
    assert!(users.len() >= 2);
    assert!(
        users
            .iter()
            .all(|u| u.id.starts_with("US") && u.email.is_some())
    );
    assert_eq!(client.phone_numbers().await.unwrap().len(), 2);
    let id = sb.activity_call(CallSpec {
        recorded: true,
        ..call("+14155550123", 0)
    });
    let before = client.get_call(&id, Include::ALL).await.unwrap().unwrap();
    assert_eq!(before["summary"]["status"], "in-progress");
    assert!(client.call_transcripts(&id).await.unwrap().is_empty());
    assert_eq!(
        sb.activity_flush(),
        3,
        "summary, transcript and recording land"
    );
    let after = client.get_call(&id, Include::ALL).await.unwrap().unwrap();
    assert_eq!(after["summary"]["status"], "completed");
    assert!(after["updatedAt"].as_str() > before["updatedAt"].as_str());
    assert_eq!(client.call_transcripts(&id).await.unwrap().len(), 1);
    assert!(
        client
            .get_call("ACnope", Include::ALL)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn subscriptions_show_their_key_on_create_and_rotate_only() {
    let sb = sandbox().await;
    let client = dated(&sb);
    let created = client
        .create_webhook(&NewWebhook {
            url: "http://127.0.0.1:9/hook".into(),
            events: vec!["call.completed".into(), "message.received".into()],
            resource_ids: Some(vec!["*".into()]),
            label: "quo-sync".into(),
        })
        .await
        .unwrap();
    assert!(created.key.expose_secret().starts_with("whsec_"));
    assert!(
        !format!("{created:?}").contains("whsec_"),
        "Debug hides the key"
    );
    let listed = client.webhooks().await.unwrap();
    assert_eq!(listed.len(), 1);
    let raw = serde_json::to_string(&sb.webhook_subscriptions()).unwrap();
    assert!(!raw.contains("whsec_") && !raw.contains("\"key\""), "{raw}");
    let id = created.subscription.id.clone();
    assert!(id.chars().all(|c| c.is_ascii_digit()), "numeric id {id}");
    let patched = client
        .update_webhook(
            &id,
            &WebhookPatch {
                events: Some(vec!["call.missed".into()]),
                status: Some("disabled".into()),
                ..WebhookPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        patched.events,
        vec!["call.missed"],
        "events replace the set"
    );
    assert!(!patched.is_enabled());
    let rotated = client.rotate_webhook(&id).await.unwrap();
    assert_ne!(rotated.expose_secret(), created.key.expose_secret());
    let refused = client
        .create_webhook(&NewWebhook {
            url: "http://127.0.0.1:9/hook".into(),
            events: vec!["call.exploded".into()],
            resource_ids: None,
            label: "x".into(),
        })
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("/body/events/0"), "{refused}");
    assert!(client.delete_webhook(&id).await.unwrap());
    assert!(!client.delete_webhook(&id).await.unwrap());
}

/// A receiver that records `(headers, body)` and answers from `answers` (then 200).
async fn receiver(answers: Vec<u16>) -> (String, Arc<Mutex<Vec<(HeaderMap, Bytes)>>>) {
    let got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let answers = Arc::new(Mutex::new(answers));
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            let answers = answers.clone();
            async move {
                seen.lock().unwrap().push((headers, body));
                let next = {
                    let mut a = answers.lock().unwrap();
                    if a.is_empty() { 200 } else { a.remove(0) }
                };
                AxStatus::from_u16(next).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn deliveries_are_signed_in_both_schemes_retried_and_faulty_on_demand() {
    let sb = sandbox().await;
    sb.set_activity_enrichment_delay(Duration::from_secs(600), Duration::from_secs(600));
    let client = dated(&sb);
    let (url, got) = receiver(vec![500]).await;
    let created = client
        .create_webhook(&NewWebhook {
            url: url.clone(),
            events: vec!["call.completed".into(), "call.missed".into()],
            resource_ids: Some(vec!["*".into()]),
            label: "t".into(),
        })
        .await
        .unwrap();
    let legacy_key = b"legacy-key-0123456789".to_vec();
    let (legacy_url, legacy_got) = receiver(vec![]).await;
    sb.set_legacy_activity_webhook(Some(WebhookTarget {
        url: legacy_url,
        secret_key: legacy_key.clone(),
        scheme: WebhookScheme::Legacy,
    }));
    let id = sb.activity_call(CallSpec {
        outcome: CallOutcome::Missed,
        duration: 0,
        ..call("+14155550199", 0)
    });
    // call.completed (refused once, retried) and call.missed; the legacy target gets only
    // call.completed (v1 has no call.missed).
    eventually("three standard posts", || got.lock().unwrap().len() == 3).await;
    eventually("one legacy post", || legacy_got.lock().unwrap().len() == 1).await;
    let secret = SecretString::from(created.key.expose_secret().to_string());
    let now = Utc::now().timestamp();
    let posts = got.lock().unwrap().clone();
    for (headers, body) in &posts {
        signature::verify(headers, body, &secret, now).expect("signed with the subscription key");
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["apiVersion"], "2026-03-30");
        assert!(event["data"]["resource"].is_object() && event["data"]["context"].is_object());
    }
    let deliveries = sb.activity_deliveries();
    let retried: Vec<_> = deliveries.iter().filter(|d| d.attempt == 2).collect();
    assert_eq!(retried.len(), 1, "{deliveries:#?}");
    let first = deliveries
        .iter()
        .find(|d| d.event_id == retried[0].event_id && d.attempt == 1)
        .unwrap();
    assert_eq!(
        first.delivery_id, retried[0].delivery_id,
        "webhook-id stable across retries"
    );
    let (headers, body) = legacy_got.lock().unwrap()[0].clone();
    let legacy_secret = SecretString::from(base64_key(&legacy_key));
    signature::verify(&headers, &body, &legacy_secret, now).expect("legacy signature");
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["object"], "event");
    assert_eq!(event["data"]["object"]["id"], id.as_str());

    // Faults: every event dropped; then every event duplicated.
    sb.set_legacy_activity_webhook(None);
    sb.set_activity_faults(ActivityFaults {
        drop_ratio: 1.0,
        ..ActivityFaults::default()
    });
    let before = got.lock().unwrap().len();
    sb.activity_call(CallSpec {
        outcome: CallOutcome::Missed,
        ..call("+14155550199", 0)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        got.lock().unwrap().len(),
        before,
        "dropped events are never sent"
    );
    assert_eq!(sb.activity_fault_counters().dropped, 2);
    sb.set_activity_faults(ActivityFaults {
        duplicate_ratio: 1.0,
        seed: 3,
        ..ActivityFaults::default()
    });
    sb.activity_call(CallSpec {
        outcome: CallOutcome::Missed,
        ..call("+14155550199", 0)
    });
    eventually("two events, each twice", || {
        got.lock().unwrap().len() == before + 4
    })
    .await;
    let ids: Vec<String> = got.lock().unwrap()[before..]
        .iter()
        .map(|(_, b)| {
            serde_json::from_slice::<Value>(b).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 2, "copies carry the same event id: {ids:?}");
}

fn base64_key(key: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Kills the child process when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `quo-sync sandbox --simulate-calls N/min`, started as a new user starts it: calls and texts
/// appear on their own, on the seeded contacts' numbers (one in ten from a stranger's), both
/// kinds, within a deadline.
#[tokio::test]
async fn the_simulator_makes_calls_and_texts_on_the_seeded_contacts() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("existing.csv");
    let seeded = ["+14155552001", "+14155552002", "+14155552003"];
    let mut csv = String::from("first_name,last_name,phone\n");
    for (i, number) in seeded.iter().enumerate() {
        csv.push_str(&format!("Person,{i},{number}\n"));
    }
    std::fs::write(&seed, csv).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _sandbox = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_quo-sync"))
            .args(["sandbox", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--requests-per-second", "0", "--simulate-calls", "1200/min"])
            .arg("--seed-existing")
            .arg(&seed)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn quo-sync sandbox"),
    );
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/_sandbox/activity");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let activity = loop {
        if let Ok(reply) = http.get(&url).send().await
            && let Ok(v) = reply.json::<Value>().await
        {
            let count = |k: &str| v[k].as_array().map_or(0, Vec::len);
            if count("calls") + count("messages") >= 40 {
                break v;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the simulator made no 40 calls and texts in 30 s at 20 a second"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let digits = |n: &str| n.chars().filter(char::is_ascii_digit).collect::<String>();
    let seeded: Vec<String> = seeded.iter().map(|n| digits(n)).collect();
    // The other party of each: a call's participant without a user, a text's from or to.
    let external = |a: &Value| -> Vec<String> {
        let mut numbers: Vec<String> = a["participants"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["actorId"].is_null())
            .filter_map(|p| p["phoneNumber"].as_str().map(digits))
            .collect();
        numbers.extend(a["from"].as_str().map(digits));
        numbers.extend(
            a["to"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(digits)),
        );
        numbers
    };
    let calls = activity["calls"].as_array().unwrap();
    let messages = activity["messages"].as_array().unwrap();
    assert!(
        !calls.is_empty() && !messages.is_empty(),
        "both calls and texts"
    );
    let mut on_seeded = 0;
    for a in calls.iter().chain(messages) {
        let numbers = external(a);
        let known = numbers.iter().any(|n| seeded.contains(n));
        let stranger = numbers.iter().any(|n| n.starts_with("1212555"));
        assert!(known || stranger, "a seeded contact's or a stranger's: {a}");
        on_seeded += usize::from(known);
    }
    let total = calls.len() + messages.len();
    assert!(
        on_seeded * 10 >= total * 6,
        "most land on seeded contacts: {on_seeded} of {total}"
    );
}
