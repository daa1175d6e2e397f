//! The sandbox against the Quo contract (`docs/quo-api.md`), over real HTTP with reqwest.
//!
//! These tests pin the sandbox's behaviour so that quo-sync's own tests, which run against it,
//! test the client against Quo's contract rather than against the sandbox's accidents.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use quo_sync::sandbox::{
    Fault, PatchMode, SandboxConfig, SandboxHandle, WebhookScheme, WebhookTarget,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

/// A sandbox without a rate limit (tests that need one set it) and a client for it.
struct Env {
    sb: SandboxHandle,
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Env {
    async fn start(mut cfg: SandboxConfig) -> Env {
        if cfg.requests_per_second == 10 {
            cfg.requests_per_second = 0;
        }
        let sb = SandboxHandle::start(cfg).await.expect("sandbox starts");
        Env::with(sb)
    }

    fn with(sb: SandboxHandle) -> Env {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Env {
            base: sb.base_url(),
            key: sb.api_key().to_string(),
            sb,
            http,
        }
    }

    async fn default() -> Env {
        Env::start(SandboxConfig::default()).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("Authorization", &self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request succeeds");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Creates a contact and returns it (asserting 201).
    async fn create(&self, body: Value) -> Value {
        let (st, v) = self.post("/v1/contacts", body).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        v["data"].clone()
    }
}

fn basic(ext: &str) -> Value {
    json!({
        "defaultFields": {"firstName": "Ada", "lastName": "Lovelace"},
        "externalId": ext,
        "source": "quo-sync",
    })
}

/// Polls `f` every 10 ms until it holds or 5 s pass.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_error(v: &Value, status: u16, code: &str) {
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["docs"], "https://quo.com/docs", "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["title"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["trace"].is_string(), "{v}");
}

/// The `errors` entry at `path`, asserting it exists.
fn error_at<'a>(v: &'a Value, path: &str) -> &'a Value {
    v["errors"]
        .as_array()
        .and_then(|errs| errs.iter().find(|e| e["path"] == path))
        .unwrap_or_else(|| panic!("no error at {path}: {v}"))
}

#[tokio::test]
async fn auth_requires_the_raw_key() {
    let env = Env::default().await;
    let url = format!("{}/v1/contacts?maxResults=5", env.base);
    for auth in [
        None,
        Some(format!("Bearer {}", env.key)),
        Some("wrong".to_string()),
    ] {
        let mut req = env.http.get(&url);
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        let v: Value = resp.json().await.expect("json");
        assert_error(&v, 401, "0800401");
        assert_eq!(v["title"], "Unauthorized");
    }
    let resp = env
        .http
        .get(format!("{}/v1/contact-custom-fields", env.base))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let v: Value = resp.json().await.expect("json");
    assert_error(&v, 401, "0700401");
    let (st, _) = env.get("/v1/contacts?maxResults=5").await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn custom_field_definitions() {
    let env = Env::default().await;
    let (st, v) = env.get("/v1/contact-custom-fields").await;
    assert_eq!(st, StatusCode::OK);
    let data = v["data"].as_array().expect("array");
    assert_eq!(data.len(), 7);
    assert!(data.contains(&json!({"name": "Lead Score", "key": "lead-score", "type": "number"})));
    assert!(data.contains(&json!({"name": "Tags", "key": "tags", "type": "multi-select"})));
}

#[tokio::test]
async fn create_get_list_round_trip() {
    let env = Env::default().await;
    let created = env
        .create(json!({
            "defaultFields": {
                "firstName": "Ada",
                "emails": [{"name": "work", "value": "ada@example.com"}],
                "phoneNumbers": [{"name": "mobile", "value": "+15555550100"}],
            },
            "customFields": [
                {"key": "lead-score", "value": 42},
                {"key": "vip", "value": true},
                {"key": "renewal-date", "value": "2024-09-11T04:00:00Z"},
                {"key": "tags", "value": ["a", "b"]},
                {"key": "website", "value": "https://example.com"},
            ],
            "externalId": "crm-1",
            "source": "quo-sync",
            "sourceUrl": "https://crm.example.com/contacts/1",
        }))
        .await;
    let id = created["id"].as_str().expect("id");
    assert_eq!(id.len(), 24);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    let df = &created["defaultFields"];
    assert_eq!(df["firstName"], "Ada");
    assert_eq!(df["lastName"], Value::Null);
    assert_eq!(df["company"], Value::Null);
    assert_eq!(df["role"], Value::Null);
    assert_eq!(df["emails"][0]["value"], "ada@example.com");
    assert!(df["emails"][0]["id"].is_string());
    assert_eq!(df["phoneNumbers"][0]["name"], "mobile");
    assert_eq!(created["externalId"], "crm-1");
    assert_eq!(created["source"], "quo-sync");
    assert_eq!(created["sourceUrl"], "https://crm.example.com/contacts/1");
    assert!(
        created["createdByUserId"]
            .as_str()
            .is_some_and(|u| u.starts_with("US"))
    );
    assert_eq!(created["createdAt"], created["updatedAt"]);
    let created_at = created["createdAt"].as_str().expect("createdAt");
    assert_eq!(created_at.len(), "2024-09-11T04:00:00.000Z".len());
    let cfs = created["customFields"].as_array().expect("customFields");
    assert_eq!(cfs.len(), 5);
    let date = cfs
        .iter()
        .find(|c| c["key"] == "renewal-date")
        .expect("date");
    assert_eq!(
        date["value"], "2024-09-11T04:00:00.000Z",
        "dates are normalised"
    );
    assert_eq!(date["type"], "date");
    assert_eq!(date["name"], "Renewal Date");
    assert!(date["id"].is_string());

    let (st, got) = env.get(&format!("/v1/contacts/{id}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(got["data"], created);

    let (st, list) = env.get("/v1/contacts?maxResults=10").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["data"], json!([created]));
    assert_eq!(list["totalItems"], 1);
    assert_eq!(list["nextPageToken"], Value::Null);

    // Default source.
    let c2 = env
        .create(json!({"defaultFields": {"firstName": null}}))
        .await;
    assert_eq!(c2["source"], "public-api");
    assert_eq!(c2["externalId"], Value::Null);
    assert_eq!(env.sb.contacts().len(), 2);
    assert_eq!(env.sb.count_by_external_id("crm-1"), 1);
    assert_eq!(env.sb.contact(id).expect("contact"), created);
}

#[tokio::test]
async fn list_filters_and_paging() {
    let env = Env::default().await;
    for i in 0..7 {
        env.create(basic(&format!("e{i}"))).await;
    }
    env.create(
        json!({"defaultFields": {"firstName": "X"}, "externalId": "e1", "source": "other-tool"}),
    )
    .await;
    env.create(json!({"defaultFields": {"firstName": "Y"}}))
        .await;

    // Paging through sources=quo-sync, 3 at a time, in creation order.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/v1/contacts?sources=quo-sync&maxResults=3".to_string();
        if let Some(t) = &token {
            path.push_str(&format!("&pageToken={t}"));
        }
        let (st, v) = env.get(&path).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        pages += 1;
        for c in v["data"].as_array().expect("data") {
            seen.push(c["externalId"].as_str().expect("ext").to_string());
        }
        match v["nextPageToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, (0..7).map(|i| format!("e{i}")).collect::<Vec<_>>());

    // Repeated-key externalIds, both forms, combined with sources.
    let (_, v) = env
        .get("/v1/contacts?maxResults=50&externalIds=e1&externalIds=e3")
        .await;
    assert_eq!(
        v["data"].as_array().expect("data").len(),
        3,
        "e1 exists under two sources"
    );
    let (_, v) = env
        .get("/v1/contacts?maxResults=50&externalIds[]=e1&externalIds[]=e3&sources=quo-sync")
        .await;
    let ids: Vec<&str> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|c| c["externalId"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids, vec!["e1", "e3"]);
    let (_, v) = env.get("/v1/contacts?maxResults=50").await;
    assert_eq!(v["data"].as_array().expect("data").len(), 9);

    // reqwest's own query encoding of repeated keys works too.
    let resp = env
        .http
        .get(format!("{}/v1/contacts", env.base))
        .header("Authorization", &env.key)
        .query(&[
            ("externalIds", "e2"),
            ("externalIds", "e4"),
            ("maxResults", "5"),
        ])
        .send()
        .await
        .expect("send");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["data"].as_array().expect("data").len(), 2);

    // maxResults bounds and bad parameters.
    for q in [
        "maxResults=0",
        "maxResults=51",
        "",
        "maxResults=abc",
        "maxResults=5&pageToken=%%%",
        "maxResults=5&bogus=1",
    ] {
        let (st, v) = env.get(&format!("/v1/contacts?{q}")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert_error(&v, 400, "0800400");
    }
    let (_, v) = env.get("/v1/contacts?maxResults=51").await;
    assert_eq!(error_at(&v, "/query/maxResults")["value"], "51");
}

#[tokio::test]
async fn validation_errors_name_path_and_value() {
    let env = Env::default().await;
    let long = "x".repeat(76);
    let cases: Vec<(Value, &str, &str, Value)> = vec![
        (
            json!({"defaultFields": {"firstName": "A", "phoneNumbers": [{"name": "m", "value": "555-0100"}]}}),
            "0801400",
            "/defaultFields/phoneNumbers/0/value",
            json!("555-0100"),
        ),
        (
            json!({"defaultFields": {"firstName": "A", "emails": [{"name": "w", "value": "not-an-email"}]}}),
            "0801400",
            "/defaultFields/emails/0/value",
            json!("not-an-email"),
        ),
        (
            json!({"defaultFields": {"firstName": "A"}, "customFields": [{"key": "nope", "value": 1}]}),
            "0801400",
            "/customFields/0/key",
            json!("nope"),
        ),
        (
            json!({"defaultFields": {"firstName": "A"}, "customFields": [{"key": "vip", "value": true}, {"key": "lead-score", "value": "high"}]}),
            "0801400",
            "/customFields/1/value",
            json!("high"),
        ),
        (
            json!({"defaultFields": {"firstName": "A"}, "customFields": [{"key": "renewal-date", "value": "next tuesday"}]}),
            "0801400",
            "/customFields/0/value",
            json!("next tuesday"),
        ),
        (
            json!({"defaultFields": {"firstName": "A"}, "customFields": [{"key": "tags", "value": ["a", 1]}]}),
            "0801400",
            "/customFields/0/value",
            json!(["a", 1]),
        ),
        (
            json!({"defaultFields": {"firstName": "A"}, "source": "csv-import"}),
            "0801400",
            "/source",
            json!("csv-import"),
        ),
        (
            json!({"defaultFields": {"firstName": "A"}, "source": "google-people"}),
            "0801400",
            "/source",
            json!("google-people"),
        ),
        (
            json!({"defaultFields": {"firstName": "A"}, "externalId": long}),
            "0801400",
            "/externalId",
            json!(long),
        ),
        (
            json!({"defaultFields": {"firstName": "A"}, "nickname": "Addy"}),
            "0800400",
            "/nickname",
            json!("Addy"),
        ),
        (
            json!({"defaultFields": {"firstName": "A", "middleName": "B"}}),
            "0800400",
            "/defaultFields/middleName",
            json!("B"),
        ),
    ];
    for (body, code, path, value) in cases {
        let (st, v) = env.post("/v1/contacts", body.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_error(&v, 400, code);
        assert_eq!(error_at(&v, path)["value"], value, "{v}");
        assert!(error_at(&v, path)["schema"]["type"].is_string(), "{v}");
        if code == "0801400" {
            assert_eq!(v["title"], "Invalid Custom Field Item");
            assert_eq!(v["description"], "Invalid Custom Field Item");
        }
    }
    // Missing defaultFields / firstName, not JSON at all.
    let (st, v) = env.post("/v1/contacts", json!({"externalId": "x"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    error_at(&v, "/defaultFields");
    let (_, v) = env.post("/v1/contacts", json!({"defaultFields": {}})).await;
    error_at(&v, "/defaultFields/firstName");
    let resp = env
        .http
        .post(format!("{}/v1/contacts", env.base))
        .header("Authorization", &env.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.expect("json");
    assert_error(&v, 400, "0800400");
    assert!(env.sb.contacts().is_empty(), "nothing invalid was stored");

    // PATCH validates the same way.
    let c = env.create(basic("v1")).await;
    let (st, v) = env
        .patch(
            &format!("/v1/contacts/{}", c["id"].as_str().expect("id")),
            json!({"defaultFields": {"phoneNumbers": [{"name": "m", "value": "12345"}]}}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    error_at(&v, "/defaultFields/phoneNumbers/0/value");
}

#[tokio::test]
async fn duplicate_create_conflicts_unless_switched_off() {
    let env = Env::default().await;
    env.create(basic("dup")).await;
    let (st, v) = env.post("/v1/contacts", basic("dup")).await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_error(&v, 409, "0800409");
    // Same externalId under another source is not a duplicate.
    let mut other = basic("dup");
    other["source"] = json!("another-sync");
    env.create(other).await;
    assert_eq!(env.sb.count_by_external_id("dup"), 2);

    env.sb.set_conflict_on_duplicate(false);
    env.create(basic("dup")).await;
    assert_eq!(env.sb.count_by_external_id("dup"), 3);
}

/// A contact with two emails, one phone and two custom fields.
async fn rich_contact(env: &Env) -> Value {
    env.create(json!({
        "defaultFields": {
            "firstName": "Ada",
            "lastName": "Lovelace",
            "emails": [{"name": "work", "value": "ada@work.com"}, {"name": "home", "value": "ada@home.com"}],
            "phoneNumbers": [{"name": "mobile", "value": "+15555550100"}],
        },
        "customFields": [{"key": "lead-score", "value": 10}, {"key": "vip", "value": false}],
        "externalId": "rich",
        "source": "quo-sync",
    }))
    .await
}

fn values(items: &Value) -> Vec<String> {
    items
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i["value"].to_string())
        .collect()
}

fn custom(c: &Value, key: &str) -> Option<Value> {
    c["customFields"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["key"] == key))
        .map(|f| f["value"].clone())
        .filter(|v| !v.is_null())
}

#[tokio::test]
async fn patch_merge_semantics() {
    let env = Env::default().await;
    let c = rich_contact(&env).await;
    let id = c["id"].as_str().expect("id");
    let work_id = c["defaultFields"]["emails"][0]["id"].clone();
    let home_id = c["defaultFields"]["emails"][1]["id"].clone();
    let (st, v) = env
        .patch(
            &format!("/v1/contacts/{id}"),
            json!({
                "defaultFields": {
                    "company": "Analytical Engines",
                    "emails": [
                        {"id": work_id, "name": "work", "value": null},
                        {"name": "new", "value": "ada@new.com"},
                    ],
                },
                "customFields": [{"key": "lead-score", "value": 99}],
            }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let u = &v["data"];
    assert_eq!(u["defaultFields"]["company"], "Analytical Engines");
    assert_eq!(
        u["defaultFields"]["lastName"], "Lovelace",
        "absent scalar untouched"
    );
    let emails = &u["defaultFields"]["emails"];
    assert_eq!(values(emails), vec!["\"ada@home.com\"", "\"ada@new.com\""]);
    assert_eq!(
        emails[0]["id"], home_id,
        "unmentioned item kept with its id"
    );
    assert_eq!(
        u["defaultFields"]["phoneNumbers"], c["defaultFields"]["phoneNumbers"],
        "array not sent untouched"
    );
    assert_eq!(custom(u, "lead-score"), Some(json!(99)));
    assert_eq!(
        custom(u, "vip"),
        Some(json!(false)),
        "custom field not sent kept"
    );
    assert!(u["updatedAt"].as_str() > c["updatedAt"].as_str());
    assert_eq!(u["createdAt"], c["createdAt"]);

    // Update an item by id, clear a custom field with null.
    let (_, v2) = env
        .patch(
            &format!("/v1/contacts/{id}"),
            json!({
                "defaultFields": {"emails": [{"id": home_id, "name": "personal", "value": "ada@personal.com"}]},
                "customFields": [{"key": "vip", "value": null}],
            }),
        )
        .await;
    let u2 = &v2["data"];
    assert_eq!(u2["defaultFields"]["emails"][0]["id"], home_id);
    assert_eq!(u2["defaultFields"]["emails"][0]["name"], "personal");
    assert_eq!(
        u2["defaultFields"]["emails"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(custom(u2, "vip"), None);
    assert_eq!(custom(u2, "lead-score"), Some(json!(99)));
    assert!(
        u2["updatedAt"].as_str() > u["updatedAt"].as_str(),
        "updatedAt strictly increases"
    );
}

#[tokio::test]
async fn patch_replace_semantics() {
    let env = Env::start(SandboxConfig {
        patch_mode: PatchMode::Replace,
        ..SandboxConfig::default()
    })
    .await;
    let c = rich_contact(&env).await;
    let id = c["id"].as_str().expect("id");
    let home_id = c["defaultFields"]["emails"][1]["id"].clone();
    let phone_id = c["defaultFields"]["phoneNumbers"][0]["id"].clone();
    let (st, v) = env
        .patch(
            &format!("/v1/contacts/{id}"),
            json!({
                "defaultFields": {
                    "emails": [{"id": home_id, "name": "home", "value": "ada@home.com"}, {"name": "x", "value": null}],
                },
                "customFields": [{"key": "notes", "value": "met at expo"}],
            }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let u = &v["data"];
    let emails = u["defaultFields"]["emails"].as_array().expect("emails");
    assert_eq!(emails.len(), 1, "the sent array replaces the stored one");
    assert_eq!(emails[0]["id"], home_id, "ids sent are kept");
    assert_eq!(
        u["defaultFields"]["phoneNumbers"][0]["id"], phone_id,
        "array not sent untouched"
    );
    assert_eq!(u["defaultFields"]["lastName"], "Lovelace");
    assert_eq!(custom(u, "notes"), Some(json!("met at expo")));
    assert_eq!(
        custom(u, "lead-score"),
        None,
        "custom fields not sent are gone"
    );
    assert_eq!(custom(u, "vip"), None);

    // A phone sent with value null is dropped: the array becomes empty.
    let (_, v) = env
        .patch(
            &format!("/v1/contacts/{id}"),
            json!({"defaultFields": {"phoneNumbers": [{"id": phone_id, "name": "mobile", "value": null}]}}),
        )
        .await;
    assert_eq!(v["data"]["defaultFields"]["phoneNumbers"], json!([]));
    assert_eq!(
        v["data"]["defaultFields"]["emails"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Switching at run time.
    env.sb.set_patch_mode(PatchMode::Merge);
    let (_, v) = env
        .patch(
            &format!("/v1/contacts/{id}"),
            json!({"customFields": [{"key": "vip", "value": true}]}),
        )
        .await;
    assert_eq!(custom(&v["data"], "notes"), Some(json!("met at expo")));
    assert_eq!(custom(&v["data"], "vip"), Some(json!(true)));
}

#[tokio::test]
async fn delete_then_not_found() {
    let env = Env::default().await;
    let c = env.create(basic("gone")).await;
    let path = format!("/v1/contacts/{}", c["id"].as_str().expect("id"));
    let (st, body) = env.delete(&path).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null, "204 has no body");
    for (st, v) in [
        env.get(&path).await,
        env.delete(&path).await,
        env.patch(&path, json!({"defaultFields": {"firstName": "B"}}))
            .await,
    ] {
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_error(&v, 404, "0800404");
    }
    assert_eq!(env.sb.count_by_external_id("gone"), 0);
}

#[tokio::test]
async fn integration_contacts_are_read_only() {
    let env = Env::default().await;
    let hub = env.sb.app_create(
        json!({"defaultFields": {"firstName": "Hub"}, "externalId": "h1"}),
        "hubspot",
    );
    assert_eq!(hub["source"], "hubspot");
    let path = format!("/v1/contacts/{}", hub["id"].as_str().expect("id"));
    let (st, v) = env
        .patch(&path, json!({"defaultFields": {"firstName": "X"}}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_error(&v, 403, "0801403");
    let (st, _) = env.delete(&path).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, v) = env.get(&path).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["data"]["defaultFields"]["firstName"], "Hub");

    // A contact made in the app's UI (no source) is writable.
    let ui = env
        .sb
        .app_create(json!({"defaultFields": {"firstName": "Ui"}}), "");
    assert_eq!(ui["source"], Value::Null);
    let (st, _) = env
        .patch(
            &format!("/v1/contacts/{}", ui["id"].as_str().expect("id")),
            json!({"defaultFields": {"firstName": "Ui2"}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
}

/// A workspace seeded from a CSV, as a team has it before quo-sync: the app's contacts carry no
/// source, another integration's keep theirs and stay writable, a native integration's refuse
/// PATCH and DELETE with 403 `0801403`; seeding sends no webhook and counts no request.
#[tokio::test]
async fn a_seeded_workspace_holds_app_integration_and_native_contacts() {
    let env = Env::default().await;
    let seeded = env
        .sb
        .seed_existing_csv(
            "first_name,last_name,email,phone,notes,source,external_id\n\
             Ada,Lovelace,ada@example.com,(415) 555-0132,met at the fair,,\n\
             Zed,Zapped,zed@example.com,,,zapier,zap-7\n\
             Hub,Spotted,hub@example.com,,,hubspot,\n",
        )
        .expect("seeds");
    assert_eq!(seeded, 3);
    // Over the admin route too (a curl user's way).
    let resp = env
        .http
        .post(format!("{}/_sandbox/app/seed", env.base))
        .body("first_name,mobile\nMo,+14155550100\n")
        .send()
        .await
        .expect("admin seed");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["seeded"], 1);
    let refused = env
        .http
        .post(format!("{}/_sandbox/app/seed", env.base))
        .body("first_name,phone\nBad,555-CALL-NOW\n")
        .send()
        .await
        .expect("admin seed");
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let text = refused.text().await.unwrap_or_default();
    assert!(
        text.contains("line 2") && text.contains("555-CALL-NOW"),
        "{text}"
    );

    let contacts = env.sb.contacts();
    assert_eq!(contacts.len(), 4, "the refused CSV stored nothing");
    let by_name = |name: &str| {
        contacts
            .iter()
            .find(|c| c["defaultFields"]["firstName"] == name)
            .cloned()
            .expect(name)
    };
    let ada = by_name("Ada");
    assert_eq!(ada["source"], Value::Null, "made in the Quo app");
    assert_eq!(
        ada["defaultFields"]["phoneNumbers"][0]["value"],
        "+14155550132"
    );
    assert_eq!(common::custom_value(&ada, "notes"), "met at the fair");
    let zed = by_name("Zed");
    assert_eq!(zed["source"], "zapier");
    assert_eq!(zed["externalId"], "zap-7");
    let hub = by_name("Hub");
    assert_eq!(hub["source"], "hubspot");

    let stats = env.sb.stats();
    assert_eq!(stats.requests_total, 0, "seeding is not API traffic");
    assert!(env.sb.webhook_deliveries().is_empty());

    let hub_path = format!("/v1/contacts/{}", hub["id"].as_str().expect("id"));
    let (st, v) = env
        .patch(&hub_path, json!({"defaultFields": {"firstName": "X"}}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_error(&v, 403, "0801403");
    let (st, v) = env.delete(&hub_path).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_error(&v, 403, "0801403");
    let zed_path = format!("/v1/contacts/{}", zed["id"].as_str().expect("id"));
    let (st, v) = env
        .patch(
            &zed_path,
            json!({"source": "quo-sync", "externalId": "c-9"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["source"], "quo-sync");
    assert_eq!(v["data"]["externalId"], "c-9");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let sb = SandboxHandle::start(SandboxConfig {
        requests_per_second: 5,
        ..SandboxConfig::default()
    })
    .await
    .expect("start");
    let env = Env::with(sb);
    let env = Arc::new(env);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            let resp = env
                .http
                .get(format!("{}/v1/contacts?maxResults=1", env.base))
                .header("Authorization", &env.key)
                .send()
                .await
                .expect("send");
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body: Value = resp.json().await.expect("json");
            (status, retry_after, body)
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        let (status, retry_after, body) = t.await.expect("task");
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert!(
                    retry_after.is_some_and(|s| s >= 1),
                    "Retry-After present: {retry_after:?}"
                );
                assert_error(&body, 429, "0800429");
                assert_eq!(body["title"], "Too Many Requests");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(ok <= 5, "at most the limit accepted: {ok}");
    assert!(limited >= 3, "the rest refused: {limited}");
    let stats = env.sb.stats();
    assert!(stats.peak_per_second <= 5, "{stats:?}");
    assert_eq!(stats.rate_limited, limited);
    assert_eq!(
        stats.by_route_status.get("GET /v1/contacts 429"),
        Some(&limited)
    );
}

#[tokio::test]
async fn retry_after_can_be_switched_off() {
    let sb = SandboxHandle::start(SandboxConfig {
        requests_per_second: 1,
        send_retry_after: false,
        ..SandboxConfig::default()
    })
    .await
    .expect("start");
    let env = Env::with(sb);
    let first = env
        .http
        .get(format!("{}/v1/contacts?maxResults=1", env.base))
        .header("Authorization", &env.key)
        .send()
        .await
        .expect("send");
    assert_eq!(first.status(), StatusCode::OK);
    // Unauthorised requests are refused before the limiter: they do not consume the window.
    let unauth = env
        .http
        .get(format!("{}/v1/contacts?maxResults=1", env.base))
        .send()
        .await
        .expect("send");
    assert_eq!(unauth.status(), StatusCode::UNAUTHORIZED);
    let second = env
        .http
        .get(format!("{}/v1/contacts?maxResults=1", env.base))
        .header("Authorization", &env.key)
        .send()
        .await
        .expect("send");
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().get("retry-after").is_none());
    // Unauthorised requests do not consume the window, and admin routes are exempt.
    let stats: Value = env
        .http
        .get(format!("{}/_sandbox/stats", env.base))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["peak_per_second"], 1);
}

#[tokio::test]
async fn injected_status_faults_apply_nothing() {
    let env = Env::default().await;
    env.sb.inject(Fault::Status {
        status: 500,
        count: 2,
        retry_after: None,
    });
    for _ in 0..2 {
        let (st, v) = env.post("/v1/contacts", basic("f1")).await;
        assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
        assert_error(&v, 500, "0801500");
    }
    assert_eq!(
        env.sb.count_by_external_id("f1"),
        0,
        "a 500 fault applies nothing"
    );
    env.create(basic("f1")).await;

    env.sb.inject(Fault::Status {
        status: 503,
        count: 1,
        retry_after: Some(2),
    });
    let resp = env
        .http
        .get(format!("{}/v1/contacts?maxResults=1", env.base))
        .header("Authorization", &env.key)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    env.sb.inject(Fault::Status {
        status: 429,
        count: 1,
        retry_after: Some(1),
    });
    let (st, v) = env.get("/v1/contacts?maxResults=1").await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    assert_error(&v, 429, "0800429");
    let stats = env.sb.stats();
    assert_eq!(stats.injected_faults, 4);
    assert_eq!(stats.rate_limited, 1);
}

#[tokio::test]
async fn drop_after_write_applies_then_kills_the_connection() {
    let env = Env::default().await;
    env.sb.inject(Fault::DropAfterWrite { count: 1 });
    // Neither a read nor a rejected write consumes the fault.
    let (st, _) = env.get("/v1/contacts?maxResults=1").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = env.post("/v1/contacts", json!({"defaultFields": {}})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let started = Instant::now();
    let err = env
        .http
        .post(format!("{}/v1/contacts", env.base))
        .header("Authorization", &env.key)
        .json(&basic("dropped"))
        .send()
        .await
        .expect_err("the connection is dropped");
    eprintln!("dropped write error: {err:?}");
    assert!(!err.is_timeout(), "{err:?}");
    assert!(err.is_request() || err.is_connect(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        env.sb.count_by_external_id("dropped"),
        1,
        "the write was applied"
    );
    assert_eq!(env.sb.stats().dropped_connections, 1);
    assert_eq!(env.sb.stats().writes.creates, 1);
    // The fault is used up: the retry meets the 409 a real client must handle.
    let (st, _) = env.post("/v1/contacts", basic("dropped")).await;
    assert_eq!(st, StatusCode::CONFLICT);

    // PATCH and DELETE are applied before the drop too.
    let id = env.sb.contacts()[0]["id"].as_str().expect("id").to_string();
    env.sb.inject(Fault::DropAfterWrite { count: 2 });
    let err = env
        .http
        .patch(format!("{}/v1/contacts/{id}", env.base))
        .header("Authorization", &env.key)
        .json(&json!({"defaultFields": {"role": "Countess"}}))
        .send()
        .await
        .expect_err("dropped");
    assert!(!err.is_timeout());
    assert_eq!(
        env.sb.contact(&id).expect("contact")["defaultFields"]["role"],
        "Countess"
    );
    let err = env
        .http
        .delete(format!("{}/v1/contacts/{id}", env.base))
        .header("Authorization", &env.key)
        .send()
        .await
        .expect_err("dropped");
    assert!(!err.is_timeout());
    assert!(env.sb.contact(&id).is_none());
    assert_eq!(env.sb.stats().dropped_connections, 3);
}

#[tokio::test]
async fn latency_is_added() {
    let env = Env::default().await;
    env.sb.set_latency(Duration::from_millis(120));
    let t = Instant::now();
    env.get("/v1/contacts?maxResults=1").await;
    assert!(t.elapsed() >= Duration::from_millis(120));
    env.sb.set_latency(Duration::ZERO);
    env.sb.inject(Fault::Latency {
        extra: Duration::from_millis(150),
        count: 1,
    });
    let t = Instant::now();
    env.get("/v1/contacts?maxResults=1").await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    // The fault was for one request: the next is not delayed (counted, not timed, so a loaded
    // machine cannot fail it).
    env.get("/v1/contacts?maxResults=1").await;
    assert_eq!(env.sb.fault_counters().delayed_requests, 1);
}

// ---- webhooks ----

#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A webhook receiver answering 500 to its first `fail_first` requests, then 200.
async fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let mut g = sink.lock().expect("lock");
                g.push(Received { headers, body });
                if g.len() <= fail_first {
                    AxStatus::INTERNAL_SERVER_ERROR
                } else {
                    AxStatus::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), got)
}

fn hmac_b64(key: &[u8], msg: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("key");
    mac.update(msg);
    B64.encode(mac.finalize().into_bytes())
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("missing header {name}"))
}

/// Verifies a legacy delivery with an independent HMAC; returns the parsed body.
fn verify_legacy(r: &Received, configured_secret: &str) -> Value {
    let key = B64.decode(configured_secret).expect("secret is base64");
    let sig = header(r, "openphone-signature");
    let parts: Vec<&str> = sig.split(';').collect();
    assert_eq!(parts.len(), 4, "{sig}");
    assert_eq!(&parts[..2], &["hmac", "1"]);
    assert_eq!(parts[1], "1");
    let ts: i64 = parts[2].parse().expect("ts");
    assert!(
        (ts - chrono::Utc::now().timestamp_millis()).abs() < 60_000,
        "timestamp in ms"
    );
    let mut msg = format!("{ts}.").into_bytes();
    msg.extend_from_slice(&r.body);
    assert_eq!(parts[3], hmac_b64(&key, &msg), "legacy signature verifies");
    serde_json::from_slice(&r.body).expect("json body")
}

/// Verifies a Standard Webhooks delivery with an independent HMAC; returns the parsed body.
fn verify_standard(r: &Received, configured_secret: &str) -> Value {
    let key = B64
        .decode(
            configured_secret
                .strip_prefix("whsec_")
                .expect("whsec_ prefix"),
        )
        .expect("base64");
    let id = header(r, "webhook-id");
    let ts: i64 = header(r, "webhook-timestamp").parse().expect("ts");
    assert!(
        (ts - chrono::Utc::now().timestamp()).abs() < 60,
        "timestamp in seconds"
    );
    let mut msg = format!("{id}.{ts}.").into_bytes();
    msg.extend_from_slice(&r.body);
    let expected = format!("v1,{}", hmac_b64(&key, &msg));
    assert!(
        header(r, "webhook-signature")
            .split(' ')
            .any(|s| s == expected),
        "standard signature verifies"
    );
    let v: Value = serde_json::from_slice(&r.body).expect("json body");
    assert_eq!(v["id"], id);
    v
}

#[tokio::test]
async fn legacy_webhooks_are_signed_and_redelivered_with_the_same_id() {
    let (url, got) = receiver(0).await;
    let target = WebhookTarget {
        url,
        secret_key: b"legacy-secret-bytes".to_vec(),
        scheme: WebhookScheme::Legacy,
    };
    let secret = B64.encode(&target.secret_key);
    let env = Env::start(SandboxConfig {
        webhook: Some(target),
        ..SandboxConfig::default()
    })
    .await;
    let c = env.create(basic("w1")).await;
    let id = c["id"].as_str().expect("id").to_string();
    eventually("create event", || got.lock().expect("lock").len() == 1).await;
    let first = got.lock().expect("lock")[0].clone();
    let ev = verify_legacy(&first, &secret);
    assert!(
        ev["id"].as_str().is_some_and(|i| i.starts_with("EV")),
        "{ev}"
    );
    assert_eq!(ev["object"], "event");
    assert_eq!(ev["apiVersion"], "v4");
    assert_eq!(ev["type"], "contact.updated");
    assert!(ev["createdAt"].is_string());
    assert_eq!(ev["data"]["object"]["id"], id.as_str());
    assert_eq!(ev["data"]["object"]["externalId"], "w1");

    // App edit and app delete emit too.
    let edited = env
        .sb
        .app_edit(&id, json!({"defaultFields": {"company": "Quo"}}))
        .expect("edited");
    assert!(edited["updatedAt"].as_str() > c["updatedAt"].as_str());
    assert!(env.sb.app_delete(&id));
    eventually("three events", || got.lock().expect("lock").len() == 3).await;
    let evs: Vec<Value> = got
        .lock()
        .expect("lock")
        .iter()
        .map(|r| verify_legacy(r, &secret))
        .collect();
    assert_eq!(evs[1]["type"], "contact.updated");
    assert_eq!(evs[1]["data"]["object"]["defaultFields"]["company"], "Quo");
    assert_eq!(evs[2]["type"], "contact.deleted");
    assert_eq!(evs[2]["data"]["object"]["id"], id.as_str());

    // Redelivery: same id, same body, fresh valid signature.
    let event_id = ev["id"].as_str().expect("event id");
    assert!(env.sb.redeliver(event_id).await);
    let again = got.lock().expect("lock")[3].clone();
    let ev_again = verify_legacy(&again, &secret);
    assert_eq!(ev_again["id"], event_id);
    assert_eq!(again.body, first.body, "same bytes");
    assert!(!env.sb.redeliver("EVunknown").await);
    let deliveries = env.sb.webhook_deliveries();
    assert_eq!(deliveries.len(), 4);
    let re = deliveries.last().expect("last");
    assert_eq!(re.event_id, event_id);
    assert!(re.redelivery);
    assert_eq!(re.attempt, 2);
    assert_eq!(re.status, Some(200));
}

#[tokio::test]
async fn standard_webhooks_are_signed_and_retried() {
    let (url, got) = receiver(2).await;
    let target = WebhookTarget {
        url,
        secret_key: vec![7u8; 32],
        scheme: WebhookScheme::Standard,
    };
    let secret = target.configured_secret();
    assert!(secret.starts_with("whsec_"));
    let env = Env::start(SandboxConfig {
        webhook: Some(target),
        ..SandboxConfig::default()
    })
    .await;
    let c = env.create(basic("s1")).await;
    eventually("acknowledged after retries", || {
        env.sb.webhook_deliveries().iter().any(|d| d.acknowledged())
    })
    .await;
    let deliveries = env.sb.webhook_deliveries();
    assert_eq!(
        deliveries
            .iter()
            .map(|d| (d.attempt, d.status))
            .collect::<Vec<_>>(),
        vec![(1, Some(500)), (2, Some(500)), (3, Some(200))]
    );
    let received = got.lock().expect("lock").clone();
    assert_eq!(received.len(), 3);
    let evs: Vec<Value> = received
        .iter()
        .map(|r| verify_standard(r, &secret))
        .collect();
    assert!(
        evs.iter().all(|e| e["id"] == evs[0]["id"]),
        "retries keep the event id"
    );
    let ev = &evs[0];
    assert_eq!(ev["type"], "contact.updated");
    assert_eq!(ev["apiVersion"], "v4");
    assert_eq!(ev["data"]["resource"]["id"], c["id"]);
    assert_eq!(ev["data"]["context"], json!({}));

    // API deletes emit contact.deleted; switching API webhooks off stops them.
    let (st, _) = env
        .delete(&format!("/v1/contacts/{}", c["id"].as_str().expect("id")))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    eventually("delete event", || got.lock().expect("lock").len() == 4).await;
    let del = verify_standard(&got.lock().expect("lock")[3], &secret);
    assert_eq!(del["type"], "contact.deleted");
    env.sb.set_webhooks_on_api_writes(false);
    env.create(basic("quiet")).await;
    let app = env
        .sb
        .app_create(json!({"defaultFields": {"firstName": "App"}}), "");
    eventually("app event", || got.lock().expect("lock").len() == 5).await;
    let last = verify_standard(&got.lock().expect("lock")[4], &secret);
    assert_eq!(
        last["data"]["resource"]["id"], app["id"],
        "only the app write emitted"
    );
}

#[tokio::test]
async fn sign_helpers_match_independent_hmac() {
    let body = br#"{"id":"EV1"}"#;
    let key = b"k3y";
    assert_eq!(
        quo_sync::sandbox::sign_legacy(key, 1_700_000_000_123, body),
        format!(
            "hmac;1;1700000000123;{}",
            hmac_b64(key, b"1700000000123.{\"id\":\"EV1\"}")
        )
    );
    assert_eq!(
        quo_sync::sandbox::sign_standard(key, "EV1", 1_700_000_000, body),
        format!("v1,{}", hmac_b64(key, b"EV1.1700000000.{\"id\":\"EV1\"}"))
    );
}

// ---- stats and admin API ----

#[tokio::test]
async fn stats_count_api_requests_only() {
    let env = Env::default().await;
    let c = env.create(basic("st")).await;
    let id = c["id"].as_str().expect("id");
    env.get(&format!("/v1/contacts/{id}")).await;
    env.get("/v1/contacts/000000000000000000000000").await;
    env.patch(
        &format!("/v1/contacts/{id}"),
        json!({"defaultFields": {"role": "CTO"}}),
    )
    .await;
    env.delete(&format!("/v1/contacts/{id}")).await;
    let _ = env
        .http
        .get(format!("{}/v1/contacts?maxResults=1", env.base))
        .send()
        .await;
    // Admin calls are not counted.
    let _ = env
        .http
        .get(format!("{}/_sandbox/stats", env.base))
        .send()
        .await;
    let s = env.sb.stats();
    assert_eq!(s.requests_total, 6, "{s:?}");
    let expect = [
        ("POST /v1/contacts 201", 1),
        ("GET /v1/contacts/{id} 200", 1),
        ("GET /v1/contacts/{id} 404", 1),
        ("PATCH /v1/contacts/{id} 200", 1),
        ("DELETE /v1/contacts/{id} 204", 1),
        ("GET /v1/contacts 401", 1),
    ];
    for (k, n) in expect {
        assert_eq!(s.by_route_status.get(k), Some(&n), "{k}: {s:?}");
    }
    assert_eq!(
        (s.writes.creates, s.writes.updates, s.writes.deletes),
        (1, 1, 1)
    );
    assert!(s.first_request_at.is_some() && s.last_request_at >= s.first_request_at);
    assert!(s.peak_per_second >= 1);
    env.sb.reset_stats();
    assert_eq!(env.sb.stats().requests_total, 0);
    assert!(env.sb.stats().by_route_status.is_empty());
}

#[tokio::test]
async fn admin_http_api_drives_the_sandbox() {
    let env = Env::default().await;
    let admin = |p: &str| format!("{}/_sandbox{p}", env.base);
    // Settings.
    let v: Value = env
        .http
        .post(admin("/settings"))
        .json(&json!({"patch_mode": "replace", "conflict_on_duplicate": false, "latency_ms": 0, "requests_per_second": 100}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(v["patch_mode"], "replace");
    assert_eq!(v["requests_per_second"], 100);
    env.create(basic("a1")).await;
    env.create(basic("a1")).await;
    assert_eq!(
        env.sb.count_by_external_id("a1"),
        2,
        "conflicts switched off over HTTP"
    );

    // App create / edit / delete.
    let resp = env
        .http
        .post(admin("/app/contacts?source=salesforce"))
        .json(&json!({"defaultFields": {"firstName": "Sf"}}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let sf: Value = resp.json().await.expect("json");
    let sf_id = sf["data"]["id"].as_str().expect("id").to_string();
    assert_eq!(sf["data"]["source"], "salesforce");
    let (st, _) = env.delete(&format!("/v1/contacts/{sf_id}")).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let edited: Value = env
        .http
        .post(admin(&format!("/app/contacts/{sf_id}")))
        .json(&json!({"defaultFields": {"lastName": "Force"}}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(edited["data"]["defaultFields"]["lastName"], "Force");
    assert_eq!(edited["data"]["defaultFields"]["firstName"], "Sf");
    let resp = env
        .http
        .delete(admin(&format!("/app/contacts/{sf_id}")))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = env
        .http
        .delete(admin(&format!("/app/contacts/{sf_id}")))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Faults as JSON.
    let resp = env
        .http
        .post(admin("/faults"))
        .json(&json!({"kind": "status", "status": 500, "count": 1}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (st, _) = env.get("/v1/contacts?maxResults=1").await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
    let resp = env
        .http
        .post(admin("/faults"))
        .json(&json!({"kind": "explode"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Contacts and stats.
    let all: Value = env
        .http
        .get(admin("/contacts"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(all["data"].as_array().map(Vec::len), Some(2));
    let stats: quo_sync::sandbox::SandboxStats = env
        .http
        .get(admin("/stats"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(stats.writes.creates, 2);
    assert_eq!(stats, env.sb.stats());
    let resp = env
        .http
        .post(admin("/reset-stats"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(env.sb.stats().requests_total, 0);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let env = Env::default().await;
    let base = env.base.clone();
    let http = env.http.clone();
    env.sb.shutdown().await;
    let r = http
        .get(format!("{base}/v1/contacts?maxResults=1"))
        .send()
        .await;
    assert!(r.is_err(), "no longer listening");
}

#[tokio::test]
async fn concurrent_duplicate_creates_yield_one_contact() {
    let env = Arc::new(Env::default().await);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            env.post("/v1/contacts", basic("race")).await.0
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(env.sb.count_by_external_id("race"), 1);
}

#[tokio::test]
async fn custom_fields_can_be_addressed_by_item_id() {
    let env = Env::default().await;
    let c = rich_contact(&env).await;
    let id = c["id"].as_str().expect("id");
    let score = c["customFields"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["key"] == "lead-score"))
        .expect("lead-score")
        .clone();
    let (st, v) = env
        .patch(
            &format!("/v1/contacts/{id}"),
            json!({"customFields": [{"id": score["id"], "value": 7}]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(custom(&v["data"], "lead-score"), Some(json!(7)));
    let after = v["data"]["customFields"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["key"] == "lead-score"))
        .expect("lead-score")
        .clone();
    assert_eq!(after["id"], score["id"], "item id is stable across updates");
    let (st, v) = env
        .patch(
            &format!("/v1/contacts/{id}"),
            json!({"customFields": [{"id": "nope", "value": 7}]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    error_at(&v, "/customFields/0/id");
}

#[tokio::test]
async fn paging_is_stable_across_deletes() {
    let env = Env::default().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            env.create(basic(&format!("p{i}"))).await["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    let (_, v) = env.get("/v1/contacts?maxResults=2").await;
    let token = v["nextPageToken"].as_str().expect("token").to_string();
    // Delete a contact already seen and one not yet seen.
    env.delete(&format!("/v1/contacts/{}", ids[0])).await;
    env.delete(&format!("/v1/contacts/{}", ids[3])).await;
    let (_, v) = env
        .get(&format!("/v1/contacts?maxResults=2&pageToken={token}"))
        .await;
    let got: Vec<&str> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|c| c["externalId"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(got, vec!["p2", "p4"]);
    assert_eq!(v["nextPageToken"], Value::Null);
}

#[tokio::test]
async fn unknown_api_routes_answer_quo_404() {
    let env = Env::default().await;
    let (st, v) = env.get("/v1/conversations").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_error(&v, 404, "0800404");
    assert_eq!(
        env.sb
            .stats()
            .by_route_status
            .get("GET /v1/conversations 404"),
        Some(&1)
    );
}

#[tokio::test]
async fn handle_is_shareable_and_app_helpers_validate() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SandboxHandle>();
    assert_send_sync::<quo_sync::sandbox::SandboxStats>();
    let env = Env::default().await;
    let err = env
        .sb
        .try_app_create(json!({"defaultFields": {"firstName": "A", "phoneNumbers": [{"name": "m", "value": "bad"}]}}), "")
        .expect_err("invalid phone");
    assert_error(&err, 400, "0801400");
    assert!(
        env.sb
            .app_edit("000000000000000000000000", json!({}))
            .is_none()
    );
    assert!(!env.sb.app_delete("000000000000000000000000"));
    // Apps may use sources the API reserves.
    let g = env.sb.app_create(
        json!({"defaultFields": {"firstName": "G"}}),
        "google-people",
    );
    assert_eq!(g["source"], "google-people");
    // Achieved rate is computed from the first and last arrivals.
    env.get("/v1/contacts?maxResults=1").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    env.get("/v1/contacts?maxResults=1").await;
    let rate = env.sb.stats().achieved_rate().expect("two requests");
    assert!(rate > 0.0 && rate < 100.0, "{rate}");
}

// ---- faults for the two-way integrity work (issue 9), driven over the admin HTTP API ----

impl Env {
    /// `POST /_sandbox{path}` with a JSON body; the status and the JSON answer (if any).
    async fn admin_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}/_sandbox{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("admin request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET /_sandbox{path}` as JSON.
    async fn admin_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/_sandbox{path}", self.base))
            .send()
            .await
            .expect("admin request")
            .json()
            .await
            .expect("json")
    }

    /// Arms a fault through `POST /_sandbox/faults`, asserting 204.
    async fn fault(&self, spec: Value) {
        let (st, v) = self.admin_post("/faults", spec.clone()).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{spec}: {v}");
    }

    /// `DELETE /_sandbox/faults`.
    async fn clear_faults(&self) {
        let resp = self
            .http
            .delete(format!("{}/_sandbox/faults", self.base))
            .send()
            .await
            .expect("admin request");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }

    /// `GET /_sandbox/faults` → `fired`, the fault counters.
    async fn fired(&self) -> Value {
        self.admin_get("/faults").await["fired"].clone()
    }

    /// Quo ids in one `GET /v1/contacts` answer for `query`, and the answer.
    async fn list_ids(&self, query: &str) -> (Vec<String>, Value) {
        let (st, v) = self.get(&format!("/v1/contacts?{query}")).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let ids = v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|c| c["id"].as_str().expect("id").to_string())
            .collect();
        (ids, v)
    }

    /// Sends a PATCH; `None` when the connection was dropped instead of answered.
    async fn try_patch(&self, id: &str, body: Value) -> Option<StatusCode> {
        match self
            .http
            .patch(format!("{}/v1/contacts/{id}", self.base))
            .header("Authorization", &self.key)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => Some(r.status()),
            Err(e) => {
                assert!(!e.is_timeout(), "a drop is not a timeout: {e:?}");
                None
            }
        }
    }
}

/// Twenty PATCHes under `drop_after_write_ratio` with `seed`: which lost their response.
async fn dropped_pattern(seed: u64) -> (Vec<bool>, Value) {
    let env = Env::default().await;
    let id = env.create(basic("ratio")).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    env.fault(
        json!({"kind": "drop_after_write_ratio", "ratio": 0.5, "seed": seed, "methods": ["PATCH"]}),
    )
    .await;
    // Creates are not covered by the methods given: none is dropped, no draw is spent.
    for n in 0..3 {
        env.create(basic(&format!("other-{n}"))).await;
    }
    let mut pattern = Vec::new();
    for n in 0..20 {
        let role = format!("role-{n}");
        let answered = env
            .try_patch(&id, json!({"defaultFields": {"role": role}}))
            .await;
        assert!(
            matches!(answered, None | Some(StatusCode::OK)),
            "{answered:?}"
        );
        assert_eq!(
            env.sb.contact(&id).expect("contact")["defaultFields"]["role"],
            role,
            "applied whether answered or not"
        );
        pattern.push(answered.is_none());
    }
    let fired = env.fired().await;
    assert_eq!(
        fired["dropped_after_write_ratio"],
        pattern.iter().filter(|d| **d).count() as u64
    );
    // Until cleared: after clearing, every write is answered.
    env.clear_faults().await;
    for _ in 0..5 {
        assert_eq!(
            env.try_patch(&id, json!({"defaultFields": {"role": "calm"}}))
                .await,
            Some(StatusCode::OK)
        );
    }
    (pattern, fired)
}

#[tokio::test]
async fn drop_after_write_ratio_is_seeded_applies_and_lasts_until_cleared() {
    let (a, fired) = dropped_pattern(42).await;
    let (b, _) = dropped_pattern(42).await;
    let (c, _) = dropped_pattern(43).await;
    let dropped = a.iter().filter(|d| **d).count();
    assert!((3..=17).contains(&dropped), "about half dropped: {a:?}");
    assert_eq!(a, b, "same seed, same victims");
    assert_ne!(a, c, "another seed, other victims");
    assert_eq!(
        fired["dropped_after_write"], 0,
        "the count form did not fire"
    );

    // The count form still works beside it and is used first.
    let env = Env::default().await;
    let id = env.create(basic("both")).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    env.fault(json!({"kind": "drop_after_write_ratio", "ratio": 0.0, "seed": 1}))
        .await;
    env.fault(json!({"kind": "drop_after_write", "count": 1}))
        .await;
    assert_eq!(
        env.try_patch(&id, json!({"defaultFields": {"role": "x"}}))
            .await,
        None
    );
    assert_eq!(
        env.try_patch(&id, json!({"defaultFields": {"role": "y"}}))
            .await,
        Some(StatusCode::OK)
    );
    let fired = env.fired().await;
    assert_eq!(fired["dropped_after_write"], 1);
    assert_eq!(fired["dropped_after_write_ratio"], 0);
    assert_eq!(env.sb.stats().dropped_connections, 1);
}

#[tokio::test]
async fn lagging_list_hides_chosen_contacts_from_lists_only_for_k_requests() {
    let env = Env::default().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            env.create(basic(&format!("e{n}"))).await["id"]
                .as_str()
                .expect("id")
                .to_string(),
        );
    }
    env.fault(
        json!({"kind": "lagging_list", "external_ids": ["e1"], "next_created": 1, "lists": 3}),
    )
    .await;
    let late = env.create(basic("e5")).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let also = env.create(basic("e6")).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let hidden = [ids[1].clone(), late.clone()];
    let mut sorted = hidden.to_vec();
    sorted.sort();
    assert_eq!(env.sb.hidden_from_lists(), sorted);

    // 1: the unfiltered scan misses both.
    let (seen, v) = env.list_ids("maxResults=50").await;
    assert_eq!(seen.len(), 5, "{v}");
    assert!(!seen.contains(&ids[1]) && !seen.contains(&late) && seen.contains(&also));
    assert_eq!(v["totalItems"], 5);
    // 2: so does a lookup by externalIds (scope "all" covers both kinds).
    let (seen, _) = env
        .list_ids("maxResults=50&externalIds=e1&externalIds=e5&externalIds=e6")
        .await;
    assert_eq!(seen, vec![also.clone()]);
    // GET by id, and the admin truth, still see them.
    for id in &hidden {
        let (st, _) = env.get(&format!("/v1/contacts/{id}")).await;
        assert_eq!(st, StatusCode::OK);
    }
    let truth = env.admin_get("/contacts").await;
    assert_eq!(truth["data"].as_array().map(Vec::len), Some(7));
    // 3: paging (each page counts as one list request) skips over them, nothing twice.
    let (page, v) = env.list_ids("maxResults=3").await;
    assert_eq!(page.len(), 3);
    let token = v["nextPageToken"].as_str().expect("more").to_string();
    // 4: the budget of three list requests is spent: everything is back.
    let (rest, v) = env
        .list_ids(&format!("maxResults=50&pageToken={token}"))
        .await;
    assert_eq!(v["nextPageToken"], Value::Null);
    let mut all: Vec<String> = page.into_iter().chain(rest).collect();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        6,
        "page 2 after the lag ended shows the late contact"
    );
    let (seen, _) = env.list_ids("maxResults=50").await;
    assert_eq!(seen.len(), 7);
    assert!(env.sb.hidden_from_lists().is_empty());
    let fired = env.fired().await;
    assert_eq!(fired["lagging_list_answers"], 3);
    assert_eq!(fired["contacts_left_out"], 2 + 2 + 1);
}

#[tokio::test]
async fn lagging_list_by_seeded_ratio_and_scope_until_cleared() {
    let env = Env::default().await;
    for n in 0..20 {
        env.create(basic(&format!("r{n}"))).await;
    }
    async fn hidden_with(env: &Env, seed: u64) -> Vec<String> {
        env.clear_faults().await;
        env.fault(
            json!({"kind": "lagging_list", "ratio": 0.3, "seed": seed, "scope": "unfiltered"}),
        )
        .await;
        env.sb.hidden_from_lists()
    }
    let first = hidden_with(&env, 5).await;
    let again = hidden_with(&env, 5).await;
    assert_ne!(
        first,
        hidden_with(&env, 6).await,
        "another seed, other contacts"
    );
    let first = hidden_with(&env, 5).await;
    assert_eq!(first, again, "the same seed picks the same contacts");
    assert!((1..=12).contains(&first.len()), "{first:?}");
    let view = env.admin_get("/faults").await;
    assert_eq!(view["lagging_list"]["scope"], "unfiltered");

    // The scan, paged, misses exactly the hidden ones, every time (no budget: until cleared).
    for _ in 0..2 {
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let q = match &token {
                Some(t) => format!("maxResults=4&pageToken={t}"),
                None => "maxResults=4".to_string(),
            };
            let (ids, v) = env.list_ids(&q).await;
            seen.extend(ids);
            match v["nextPageToken"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 20 - first.len());
        assert!(seen.iter().all(|id| !first.contains(id)));
    }
    // Lookups by externalIds are out of scope: they find everyone.
    let q: Vec<String> = (0..20).map(|n| format!("externalIds=r{n}")).collect();
    let (ids, _) = env
        .list_ids(&format!("maxResults=50&{}", q.join("&")))
        .await;
    assert_eq!(ids.len(), 20);
    env.clear_faults().await;
    let (ids, _) = env.list_ids("maxResults=50").await;
    assert_eq!(ids.len(), 20);
}

#[tokio::test]
async fn repeated_page_token_answers_the_sent_token_again() {
    let env = Env::default().await;
    for n in 0..5 {
        env.create(basic(&format!("p{n}"))).await;
    }
    env.fault(json!({"kind": "repeat_page_token", "count": 1}))
        .await;
    // A first page (no token) does not consume it.
    let (page1, v) = env.list_ids("maxResults=2").await;
    let t1 = v["nextPageToken"].as_str().expect("token").to_string();
    let (page2, v) = env.list_ids(&format!("maxResults=2&pageToken={t1}")).await;
    assert_eq!(
        v["nextPageToken"],
        t1.as_str(),
        "the same token twice in a row"
    );
    assert_eq!(page2.len(), 2);
    assert!(page2.iter().all(|id| !page1.contains(id)));
    // Used up: the same request now answers the real next token.
    let (again, v) = env.list_ids(&format!("maxResults=2&pageToken={t1}")).await;
    assert_eq!(again, page2);
    let t2 = v["nextPageToken"].as_str().expect("token");
    assert_ne!(t2, t1);
    assert_eq!(env.fired().await["repeated_page_tokens"], 1);
}

#[tokio::test]
async fn tolerant_reader_shapes_in_responses() {
    let env = Env::default().await;
    let created = env
        .create(json!({
            "defaultFields": {
                "firstName": "Ada",
                "emails": [{"name": "work", "value": "ada@example.com"}],
                "phoneNumbers": [{"name": "mobile", "value": "+15555550100"}],
            },
            "customFields": [
                {"key": "lead-score", "value": 424242},
                {"key": "vip", "value": false},
                {"key": "tags", "value": ["a"]},
            ],
            "externalId": "shapes",
            "source": "quo-sync",
        }))
        .await;
    let id = created["id"].as_str().expect("id").to_string();
    let (st, app) = env
        .admin_post(
            "/app/contacts",
            json!({"defaultFields": {"firstName": "App", "emails": [{"name": null, "value": "app@example.com"}]}}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{app}");
    let app_id = app["data"]["id"].as_str().expect("id").to_string();

    let (st, v) = env
        .admin_post(
            "/settings",
            json!({"response_shapes": {"string_values": true, "keyless_custom_fields": true, "null_entries": true, "unknown_field_type": true}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["response_shapes"]["null_entries"], true);

    let (_, v) = env.get(&format!("/v1/contacts/{id}")).await;
    let c = &v["data"];
    let cf = c["customFields"].as_array().expect("array");
    assert_eq!(cf[0], Value::Null, "a null entry: {c}");
    let by_name = |name: &str| {
        cf.iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {c}"))
            .clone()
    };
    assert_eq!(by_name("Lead Score")["value"], "424242");
    assert_eq!(by_name("VIP")["value"], "false");
    assert_eq!(by_name("Tags")["value"], json!(["a"]));
    assert_eq!(by_name("Rating")["type"], "rating");
    assert_eq!(by_name("Rating")["value"], 4);
    assert!(
        cf.iter()
            .skip(1)
            .all(|f| f.get("key").is_none() && f["id"].is_string())
    );
    assert_eq!(c["defaultFields"]["emails"][0], Value::Null);
    assert_eq!(c["defaultFields"]["emails"][1]["name"], "work");
    assert_eq!(c["defaultFields"]["phoneNumbers"][0], Value::Null);
    // Lists and the app contact's empty label.
    let (_, v) = env.list_ids("maxResults=50").await;
    let listed = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|c| c["id"] == app_id.as_str())
        .expect("app contact listed")
        .clone();
    assert_eq!(listed["defaultFields"]["emails"][1]["name"], Value::Null);
    assert_eq!(
        listed["defaultFields"]["emails"][1]["value"],
        "app@example.com"
    );
    // Definitions show the unknown type; the API refuses to write it; PATCH answers are shaped.
    let (_, defs) = env.get("/v1/contact-custom-fields").await;
    assert!(
        defs["data"]
            .as_array()
            .expect("data")
            .contains(&json!({"name": "Rating", "key": "rating", "type": "rating"}))
    );
    let (st, v) = env
        .patch(
            &format!("/v1/contacts/{id}"),
            json!({"customFields": [{"key": "rating", "value": 5}]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v, 400, "0801400");
    error_at(&v, "/customFields/0/key");
    let (st, v) = env
        .patch(
            &format!("/v1/contacts/{id}"),
            json!({"defaultFields": {"role": "x"}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["data"]["customFields"][0], Value::Null);
    // The app can set it; the internal truth is plain.
    assert!(
        env.sb
            .app_edit(
                &id,
                json!({"customFields": [{"key": "rating", "value": 5}]})
            )
            .is_some()
    );
    let truth = env.admin_get("/contacts").await;
    let plain = truth["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|c| c["id"] == id.as_str())
        .expect("contact")
        .clone();
    assert!(
        plain["customFields"]
            .as_array()
            .expect("array")
            .iter()
            .all(|f| f["key"].is_string())
    );
    assert!(plain["customFields"].as_array().expect("array").contains(&json!({"name": "Lead Score", "key": "lead-score", "id": by_name("Lead Score")["id"], "type": "number", "value": 424242})));
    // Off again: plain answers, the rating field stays (workspace data).
    let (st, _) = env
        .admin_post("/settings", json!({"response_shapes": {}}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, v) = env.get(&format!("/v1/contacts/{id}")).await;
    assert!(
        v["data"]["customFields"]
            .as_array()
            .expect("array")
            .iter()
            .all(|f| f["key"].is_string())
    );
    assert_eq!(common_custom(&v["data"], "lead-score"), json!(424242));
    assert_eq!(common_custom(&v["data"], "rating"), json!(5));
}

fn common_custom(contact: &Value, key: &str) -> Value {
    contact["customFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["key"] == key)
        .map(|f| f["value"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn stale_item_ids_are_refused_by_default_and_switchable() {
    let env = Env::default().await;
    let created = env.create(rich_body("stale")).await;
    let id = created["id"].as_str().expect("id").to_string();
    let email_id = created["defaultFields"]["emails"][0]["id"]
        .as_str()
        .expect("email id")
        .to_string();
    let before = env.sb.contact(&id).expect("contact");
    let (st, v) = env
        .patch(
            &format!("/v1/contacts/{id}"),
            json!({"defaultFields": {
                "emails": [
                    {"id": email_id, "name": "work", "value": "kept@example.com"},
                    {"id": "ffffffffffffffffffffffff", "name": "home", "value": "ghost@example.com"},
                ],
                "phoneNumbers": [{"id": "eeeeeeeeeeeeeeeeeeeeeeee", "name": "old", "value": null}],
            }}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_error(&v, 400, "0800400");
    let e = error_at(&v, "/defaultFields/emails/1/id");
    assert_eq!(e["value"], "ffffffffffffffffffffffff");
    let e = error_at(&v, "/defaultFields/phoneNumbers/0/id");
    assert_eq!(e["value"], "eeeeeeeeeeeeeeeeeeeeeeee");
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(env.sb.contact(&id), Some(before), "nothing applied");
    assert_eq!(env.fired().await["stale_item_ids_refused"], 1);
    let settings = env.admin_get("/settings").await;
    assert_eq!(settings["refuse_stale_item_ids"], true);

    // Switched off: merge adds the item as new (with a new id).
    let (st, _) = env
        .admin_post("/settings", json!({"refuse_stale_item_ids": false}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = env
        .patch(
            &format!("/v1/contacts/{id}"),
            json!({"defaultFields": {"emails": [{"id": "ffffffffffffffffffffffff", "name": "home", "value": "ghost@example.com"}]}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let emails = v["data"]["defaultFields"]["emails"]
        .as_array()
        .expect("emails");
    assert!(
        emails
            .iter()
            .any(|e| e["value"] == "ghost@example.com" && e["id"] != "ffffffffffffffffffffffff")
    );
}

fn rich_body(ext: &str) -> Value {
    json!({
        "defaultFields": {
            "firstName": "Ada",
            "emails": [{"name": "work", "value": "ada@example.com"}],
            "phoneNumbers": [{"name": "mobile", "value": "+15555550100"}],
        },
        "externalId": ext,
        "source": "quo-sync",
    })
}

#[tokio::test]
async fn multi_select_options_refuse_other_values() {
    let env = Env::default().await;
    let (st, v) = env
        .admin_post(
            "/custom-fields",
            json!({"name": "Tags", "key": "tags", "type": "multi-select", "options": ["vip", "enterprise"]}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["data"].as_array().expect("data").contains(
        &json!({"name": "Tags", "key": "tags", "type": "multi-select", "options": ["vip", "enterprise"]})
    ));
    // The public definitions keep the spec's shape.
    let (_, defs) = env.get("/v1/contact-custom-fields").await;
    assert!(
        defs["data"]
            .as_array()
            .expect("data")
            .contains(&json!({"name": "Tags", "key": "tags", "type": "multi-select"}))
    );

    let mut body = basic("opts");
    body["customFields"] =
        json!([{"key": "lead-score", "value": 1}, {"key": "tags", "value": ["vip", "gold"]}]);
    let (st, v) = env.post("/v1/contacts", body.clone()).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_error(&v, 400, "0801400");
    let e = error_at(&v, "/customFields/1/value/1");
    assert_eq!(e["value"], "gold");
    assert!(e["message"].as_str().expect("message").contains("gold"));
    assert_eq!(env.sb.count_by_external_id("opts"), 0, "nothing created");

    body["customFields"] = json!([{"key": "tags", "value": ["vip", "enterprise"]}]);
    let id = env.create(body).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (st, v) = env
        .patch(
            &format!("/v1/contacts/{id}"),
            json!({"customFields": [{"key": "tags", "value": ["platinum"]}]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(error_at(&v, "/customFields/0/value/0")["value"], "platinum");
    // The app refuses too; an empty selection or null is fine.
    let (st, _) = env
        .admin_post(
            &format!("/app/contacts/{id}"),
            json!({"customFields": [{"key": "tags", "value": ["nope"]}]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    for value in [json!([]), Value::Null] {
        let (st, _) = env
            .patch(
                &format!("/v1/contacts/{id}"),
                json!({"customFields": [{"key": "tags", "value": value}]}),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
    }
    assert_eq!(env.fired().await["multi_select_refused"], 3);
    // Options belong to multi-select fields only.
    let (st, _) = env
        .admin_post(
            "/custom-fields",
            json!({"name": "Lead Score", "key": "lead-score", "type": "number", "options": ["1"]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

/// The resource ids of the Standard Webhooks deliveries received so far, in arrival order,
/// with their webhook ids.
fn received(got: &Arc<Mutex<Vec<Received>>>) -> Vec<(String, String)> {
    got.lock()
        .expect("lock")
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.body).expect("json");
            (
                header(r, "webhook-id").to_string(),
                v["data"]["resource"]["id"]
                    .as_str()
                    .expect("id")
                    .to_string(),
            )
        })
        .collect()
}

async fn webhook_env() -> (Env, Arc<Mutex<Vec<Received>>>) {
    let (url, got) = receiver(0).await;
    let env = Env::start(SandboxConfig {
        webhook: Some(WebhookTarget {
            url,
            secret_key: b"faulty-hooks".to_vec(),
            scheme: WebhookScheme::Standard,
        }),
        ..SandboxConfig::default()
    })
    .await;
    (env, got)
}

fn app_new(env: &Env, n: u32) -> String {
    env.sb
        .app_create(json!({"defaultFields": {"firstName": format!("W{n}")}}), "")["id"]
        .as_str()
        .expect("id")
        .to_string()
}

#[tokio::test]
async fn webhook_drops_are_never_sent_but_can_be_redelivered() {
    let (env, got) = webhook_env().await;
    env.fault(json!({"kind": "webhook_drop", "count": 2})).await;
    let ids: Vec<String> = (0..3).map(|n| app_new(&env, n)).collect();
    // One task delivers in emission order: once the third arrived, the first two would have too.
    eventually("third event delivered", || !received(&got).is_empty()).await;
    assert_eq!(received(&got).len(), 1, "the first two were never sent");
    assert_eq!(received(&got)[0].1, ids[2]);
    let dropped = env.sb.dropped_webhook_events();
    assert_eq!(dropped.len(), 2);
    let view = env.admin_get("/faults").await;
    assert_eq!(view["webhooks"]["dropped_event_ids"], json!(dropped));
    assert_eq!(view["fired"]["webhooks_dropped"], 2);
    assert!(
        env.sb.redeliver(&dropped[0]).await,
        "a dropped event is still known"
    );
    assert_eq!(received(&got)[1], (dropped[0].clone(), ids[0].clone()));

    // A seeded fraction, until cleared.
    env.fault(json!({"kind": "webhook_drop", "ratio": 0.5, "seed": 11}))
        .await;
    for n in 0..10 {
        app_new(&env, 10 + n);
    }
    // The delivery task decides each event's fate after the write answered: wait until all
    // ten are delivered or dropped before counting.
    let dropped_since = || env.sb.fault_counters().webhooks_dropped - 2;
    eventually("each event delivered or dropped", || {
        received(&got).len() as u64 + dropped_since() == 12
    })
    .await;
    let dropped = dropped_since();
    assert!((1..=9).contains(&dropped), "{dropped}");
    let expected = 2 + 10 - dropped as usize;
    assert_eq!(received(&got).len(), expected);
    env.clear_faults().await;
    app_new(&env, 99);
    eventually("delivered after clearing", || {
        received(&got).len() == expected + 1
    })
    .await;
}

#[tokio::test]
async fn webhook_duplicates_and_reordering() {
    let (env, got) = webhook_env().await;
    env.fault(json!({"kind": "webhook_duplicate", "count": 1}))
        .await;
    let a = app_new(&env, 1);
    eventually("two deliveries", || received(&got).len() == 2).await;
    let r = received(&got);
    assert_eq!(r[0], r[1], "same event id, same contact, twice");
    assert_eq!(r[0].1, a);
    let log = env.sb.webhook_deliveries();
    assert_eq!(log.iter().filter(|d| d.redelivery).count(), 1);

    env.fault(json!({"kind": "webhook_reorder", "count": 3}))
        .await;
    let batch: Vec<String> = (0..3).map(|n| app_new(&env, 10 + n)).collect();
    eventually("three more", || received(&got).len() == 5).await;
    let order: Vec<String> = received(&got)[2..].iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(
        order,
        vec![batch[2].clone(), batch[1].clone(), batch[0].clone()]
    );
    // A partial batch is released by clearing.
    env.fault(json!({"kind": "webhook_reorder", "count": 5}))
        .await;
    let partial: Vec<String> = (0..2).map(|n| app_new(&env, 20 + n)).collect();
    assert_eq!(
        env.admin_get("/faults").await["webhooks"]["reorder"],
        json!({"count": 5, "held": 2})
    );
    assert_eq!(received(&got).len(), 5, "held");
    env.clear_faults().await;
    eventually("released", || received(&got).len() == 7).await;
    assert_eq!(received(&got)[5].1, partial[1]);
    let fired = env.fired().await;
    assert_eq!(fired["webhooks_duplicated"], 1);
    assert_eq!(fired["webhooks_reordered"], 5);
}

#[tokio::test]
async fn fault_specs_are_validated_and_listed() {
    let env = Env::default().await;
    for bad in [
        json!({"kind": "drop_after_write_ratio"}),
        json!({"kind": "lagging_list", "scope": "sideways"}),
        json!({"kind": "repeat_page_token", "bogus": 1}),
    ] {
        let (st, _) = env.admin_post("/faults", bad.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}");
    }
    env.fault(json!({"kind": "status", "status": 503, "count": 2}))
        .await;
    env.fault(
        json!({"kind": "drop_after_write_ratio", "ratio": 0.25, "seed": 3, "methods": ["patch"]}),
    )
    .await;
    env.fault(json!({"kind": "repeat_page_token", "count": 2}))
        .await;
    env.fault(json!({"kind": "webhook_duplicate", "ratio": 0.5, "seed": 1}))
        .await;
    let v = env.admin_get("/faults").await;
    assert_eq!(
        v["queued"][0],
        json!({"kind": "status", "status": 503, "count": 2, "retry_after": null})
    );
    assert_eq!(
        v["drop_after_write_ratio"],
        json!({"ratio": 0.25, "seed": 3, "methods": ["PATCH"]})
    );
    assert_eq!(v["repeat_page_token"], 2);
    assert_eq!(v["webhooks"]["duplicate"], json!({"ratio": 0.5, "seed": 1}));
    let (st, _) = env.get("/v1/contacts?maxResults=1").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(env.fired().await["status_answers"], 1);
    env.clear_faults().await;
    let v = env.admin_get("/faults").await;
    assert_eq!(v["queued"], json!([]));
    assert_eq!(v["drop_after_write_ratio"], Value::Null);
    assert_eq!(v["webhooks"]["duplicate"], Value::Null);
    let (st, _) = env.get("/v1/contacts?maxResults=1").await;
    assert_eq!(st, StatusCode::OK);
    let resp = env
        .http
        .post(format!("{}/_sandbox/reset-stats", env.base))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(env.fired().await["status_answers"], 0);
}

#[tokio::test]
async fn shared_test_helpers_drive_faults_over_http() {
    let env = Env::default().await;
    let a = env.create(basic("h1")).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    common::sandbox_fault(
        &env.base,
        json!({"kind": "lagging_list", "ids": [a], "lists": 1}),
    )
    .await;
    let (seen, _) = env.list_ids("maxResults=50").await;
    assert!(seen.is_empty());
    let truth = common::sandbox_truth(&env.base).await;
    assert_eq!(truth.len(), 1);
    assert_eq!(truth[0]["id"], a.as_str());
    let fired = common::sandbox_fault_counters(&env.base).await;
    assert_eq!(fired.contacts_left_out, 1);
    assert_eq!(fired, env.sb.fault_counters());
    let settings = common::sandbox_settings(
        &env.base,
        json!({"response_shapes": {"string_values": true}, "refuse_stale_item_ids": false}),
    )
    .await;
    assert_eq!(settings["response_shapes"]["string_values"], true);
    assert_eq!(settings["refuse_stale_item_ids"], false);
    common::sandbox_fault(&env.base, json!({"kind": "lagging_list", "ids": [a]})).await;
    assert_eq!(env.sb.hidden_from_lists(), vec![a.clone()]);
    common::sandbox_fault(&env.base, json!({"kind": "lagging_list", "lists": 0})).await;
    assert!(
        env.sb.hidden_from_lists().is_empty(),
        "lists: 0 ends the lag"
    );
    common::sandbox_fault(&env.base, json!({"kind": "status", "status": 500})).await;
    common::sandbox_clear_faults(&env.base).await;
    let (st, _) = env.get("/v1/contacts?maxResults=1").await;
    assert_eq!(st, StatusCode::OK);
}

/// PATCHes to `crm-a` and `crm-b` in `order` under one seeded drop ratio: per contact, which
/// of its PATCHes lost their response.
async fn drops_per_contact(order: &[&str]) -> (Vec<bool>, Vec<bool>) {
    let env = Env::default().await;
    let a = env.create(basic("crm-a")).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let b = env.create(basic("crm-b")).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    env.fault(json!({"kind": "drop_after_write_ratio", "ratio": 0.5, "seed": 2024}))
        .await;
    let (mut da, mut db) = (Vec::new(), Vec::new());
    for ext in order {
        let (id, out) = if *ext == "crm-a" {
            (&a, &mut da)
        } else {
            (&b, &mut db)
        };
        let answered = env
            .try_patch(id, json!({"defaultFields": {"role": "r"}}))
            .await;
        out.push(answered.is_none());
    }
    (da, db)
}

#[tokio::test]
async fn drop_ratio_victims_do_not_depend_on_interleaving() {
    let first: Vec<&str> = ["crm-a", "crm-b"].repeat(8);
    let mut second: Vec<&str> = vec!["crm-b"; 8];
    second.extend(vec!["crm-a"; 8]);
    let (a1, b1) = drops_per_contact(&first).await;
    let (a2, b2) = drops_per_contact(&second).await;
    assert_eq!(a1, a2, "crm-a meets the same drops whatever the order");
    assert_eq!(b1, b2, "crm-b too");
    assert!(a1.iter().chain(&b1).any(|d| *d) && a1.iter().chain(&b1).any(|d| !*d));
}

#[tokio::test]
async fn webhook_payloads_carry_the_response_shapes() {
    let (env, got) = webhook_env().await;
    env.sb
        .set_response_shapes(quo_sync::sandbox::ResponseShapes {
            string_values: true,
            keyless_custom_fields: true,
            ..Default::default()
        });
    env.sb.app_create(
        json!({"defaultFields": {"firstName": "S"}, "customFields": [{"key": "vip", "value": true}]}),
        "",
    );
    eventually("delivered", || received(&got).len() == 1).await;
    let body: Value = serde_json::from_slice(&got.lock().expect("lock")[0].body).expect("json");
    let item = &body["data"]["resource"]["customFields"][0];
    assert_eq!(item["value"], "true", "{body}");
    assert!(item.get("key").is_none(), "{body}");
    assert_eq!(item["name"], "VIP");
}
