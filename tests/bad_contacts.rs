//! One bad contact is one bad record: a Quo contact that does not decode, or a persistent 5xx
//! on one contact, quarantines that record at stage `quo` while the rest of the cycle proceeds,
//! and the record is worked again (and leaves the quarantine) once Quo answers well.
//!
//! The sandbox answers by the contract, so these tests put a small proxy between quo-sync and
//! it that breaks the answers about one chosen contact: its JSON mangled (`defaultFields` a
//! string) wherever it appears, or a 500 to every request addressed to it.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::{TestApp, csv, row};
use quo_sync::sandbox::SandboxConfig;
use serde_json::{Value, json};

/// What the proxy breaks, by Quo contact id.
#[derive(Default)]
struct Breakage {
    /// Contacts whose JSON does not decode, in single answers and in lists.
    undecodable: HashSet<String>,
    /// Contacts every request to which (`/v1/contacts/{id}`) answers 500.
    failing: HashSet<String>,
}

struct Proxy {
    upstream: String,
    client: reqwest::Client,
    breakage: Mutex<Breakage>,
}

impl Proxy {
    /// Starts a proxy to `upstream`; returns it and its base URL.
    async fn start(upstream: String) -> (Arc<Proxy>, String) {
        let proxy = Arc::new(Proxy {
            upstream,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            breakage: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(proxy.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (proxy, url)
    }

    fn break_contact(&self, set: impl FnOnce(&mut Breakage)) {
        set(&mut self.breakage.lock().unwrap());
    }

    fn heal(&self) {
        *self.breakage.lock().unwrap() = Breakage::default();
    }
}

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, usize::MAX).await.unwrap();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let addressed = parts
        .uri
        .path()
        .strip_prefix("/v1/contacts/")
        .filter(|rest| !rest.contains('/'))
        .map(str::to_string);
    if addressed.is_some_and(|id| proxy.breakage.lock().unwrap().failing.contains(&id)) {
        let error = json!({"message": "Internal error", "code": "0500500", "status": 500});
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(error)).into_response();
    }
    let mut headers = parts.headers.clone();
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    let answer = proxy
        .client
        .request(
            parts.method.clone(),
            format!("{}{path_and_query}", proxy.upstream),
        )
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let mut out = Response::builder().status(status);
    for (name, value) in answer.headers() {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            out = out.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap();
    let undecodable = proxy.breakage.lock().unwrap().undecodable.clone();
    let bytes = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut v) if !undecodable.is_empty() && status.is_success() => {
            let mangle = |c: &mut Value| {
                if c["id"].as_str().is_some_and(|id| undecodable.contains(id)) {
                    c["defaultFields"] = json!("not an object");
                }
            };
            match &mut v["data"] {
                Value::Array(items) => items.iter_mut().for_each(mangle),
                one @ Value::Object(_) => mangle(one),
                _ => {}
            }
            serde_json::to_vec(&v).unwrap().into()
        }
        _ => bytes,
    };
    out.body(Body::from(bytes)).unwrap()
}

fn rows() -> Vec<String> {
    (1..=3).map(|i| row(&format!("c-{i}"), i)).collect()
}

/// Three records synced, then quo-sync pointed at a proxy in front of the sandbox.
async fn synced_behind_a_proxy() -> (TestApp, Arc<Proxy>) {
    let mut app = TestApp::spawn_with(
        &csv(&rows()),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"1ms\"\n",
    )
    .await;
    app.cycle().await;
    let (proxy, url) = Proxy::start(app.sandbox.base_url()).await;
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(
        &app.config_path,
        config.replace(&app.sandbox.base_url(), &url),
    )
    .unwrap();
    app.restart().await;
    (app, proxy)
}

/// Three records synced behind the proxy; `broken` picks how c-2's contact breaks; the CRM
/// renames every company and a cycle runs. Only c-2 is quarantined, at stage `quo`, and the
/// others are updated. Returns the app, the proxy and c-2's Quo id.
async fn rename_every_company_with_c2_broken(
    broken: fn(&mut Breakage) -> &mut HashSet<String>,
) -> (TestApp, Arc<Proxy>, String) {
    let (app, proxy) = synced_behind_a_proxy().await;
    let bad = app.quo_id("c-2");
    proxy.break_contact(|b| {
        broken(b).insert(bad.clone());
    });
    let edited: Vec<String> = (1..=3)
        .map(|i| {
            row(&format!("c-{i}"), i)
                .replace(&format!(",Acme {i},"), &format!(",Renamed {i},"))
                .replace("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
        })
        .collect();
    app.write_csv(&csv(&edited));
    let report = app.cycle().await;
    assert_eq!(report.counts.quarantined, 1, "{report:?}");
    assert_eq!(report.counts.updated, 2, "the rest proceeds: {report:?}");
    let quarantine = app.ledger().quarantined().await.unwrap();
    let keys: Vec<(&str, &str)> = quarantine
        .iter()
        .map(|q| (q.key.as_str(), q.stage.as_str()))
        .collect();
    assert_eq!(keys, vec![("c-2", "quo")], "{quarantine:#?}");
    for (id, company) in [("c-1", "Renamed 1"), ("c-3", "Renamed 3")] {
        assert_eq!(app.contact_for(id)["defaultFields"]["company"], company);
    }
    assert_eq!(app.contact_for("c-2")["defaultFields"]["company"], "Acme 2");
    (app, proxy, bad)
}

/// Quo answers well again: the next cycle works c-2 and takes it out of the quarantine.
async fn c2_recovers_once_healed(app: &TestApp, proxy: &Proxy) {
    proxy.heal();
    let report = app.cycle().await;
    assert_eq!(report.counts.quarantined, 0, "{report:?}");
    assert_eq!(
        app.contact_for("c-2")["defaultFields"]["company"],
        "Renamed 2"
    );
    assert!(app.ledger().quarantined().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_contact_that_does_not_decode_quarantines_its_record_and_the_rest_sync() {
    let (app, proxy, bad) = rename_every_company_with_c2_broken(|b| &mut b.undecodable).await;
    let entry = app.ledger().quarantined_one("c-2").await.unwrap().unwrap();
    assert!(
        entry.reason.contains(&bad) && entry.reason.contains("unexpected response body"),
        "the reason names the contact and what was wrong: {}",
        entry.reason
    );
    c2_recovers_once_healed(&app, &proxy).await;
}

#[tokio::test]
async fn a_persistent_5xx_on_one_contact_quarantines_its_record_and_the_rest_sync() {
    let (app, proxy, _) = rename_every_company_with_c2_broken(|b| &mut b.failing).await;
    c2_recovers_once_healed(&app, &proxy).await;
}
