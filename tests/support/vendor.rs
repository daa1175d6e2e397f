//! What the OAuth2 vendor fakes (`salesforce`, `zoho`) share, so each keeps only what makes it
//! that vendor: a server on port 0, the contacts keyed by id with the vendor's last-modified
//! stamp (moved on every edit), the token endpoint answering from the `TokenDesk`, and the
//! access-token check in front of every API call (counting the 401s it answers).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::token_desk::{Before, Grant, TokenDesk, parse_form};

/// How a vendor names, stamps and authenticates.
pub struct Dialect {
    /// The record key holding the id (`Id`, `id`).
    pub id_key: &'static str,
    /// The record key holding the last-modified time (`SystemModstamp`, `Modified_Time`).
    pub stamp_key: &'static str,
    /// The vendor's time format for `stamp_key`.
    pub stamp: fn(DateTime<Utc>) -> String,
    /// `POST` here is the token endpoint.
    pub token_path: &'static str,
    /// The `Authorization` prefix API calls must carry (`Bearer `, `Zoho-oauthtoken `).
    pub scheme: &'static str,
    /// The token answer for a fresh access token, given the org's URL and token lifetime
    /// (without `refresh_token`, added when the desk rotates it).
    pub token_answer: fn(&str, std::time::Duration, &str) -> Value,
    /// The answer to a refused grant, by RFC 6749 error code.
    pub refused: fn(&str) -> Response,
    /// The answer to an API call without a live access token.
    pub unauthorized: fn() -> Response,
}

/// One API call that passed the gate.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A vendor's API: answers a call with its books locked.
pub type Route<X> = fn(&Org<X>, &mut Books<X>, Call) -> Response;

/// The records and counters every vendor fake keeps, plus its own (`X`).
#[derive(Default)]
pub struct Books<X> {
    /// Contacts by id.
    pub contacts: BTreeMap<String, Value>,
    /// API requests answered 401.
    pub unauthorized: u64,
    /// Statuses the next API calls (past the token check) are answered with, unprocessed.
    pub failures: std::collections::VecDeque<u16>,
    /// API calls answered from `failures`.
    pub failed: u64,
    /// The vendor's own bookkeeping.
    pub own: X,
}

/// A vendor fake as tests hold it: its URL, and through `Deref` the shared calls (`desk()`,
/// `contact()`, `edit()`, `unauthorized()`); each vendor adds its own in an `impl Fake<Own>`.
pub struct Fake<X> {
    pub base_url: String,
    org: Arc<Org<X>>,
}

impl<X> Clone for Fake<X> {
    fn clone(&self) -> Self {
        Self {
            base_url: self.base_url.clone(),
            org: self.org.clone(),
        }
    }
}

impl<X> std::ops::Deref for Fake<X> {
    type Target = Org<X>;

    fn deref(&self) -> &Org<X> {
        &self.org
    }
}

/// A running vendor fake: its URL, token desk, dialect and books.
pub struct Org<X> {
    pub base_url: String,
    pub desk: TokenDesk,
    pub dialect: Dialect,
    route: Route<X>,
    books: Mutex<Books<X>>,
}

impl<X: Default + Send + 'static> Org<X> {
    /// Binds port 0, stamps `contacts` ten minutes ago, and serves: the token endpoint and the
    /// token check (`Org::gate`), then `route` for the calls that pass.
    pub async fn start(
        dialect: Dialect,
        contacts: Vec<Value>,
        desk: TokenDesk,
        route: Route<X>,
    ) -> Fake<X> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let stamp = (dialect.stamp)(Utc::now() - chrono::Duration::minutes(10));
        let contacts = contacts
            .into_iter()
            .map(|mut c| {
                c[dialect.stamp_key] = json!(stamp);
                (c[dialect.id_key].as_str().unwrap().to_string(), c)
            })
            .collect();
        let org = Arc::new(Self {
            base_url,
            desk,
            dialect,
            route,
            books: Mutex::new(Books {
                contacts,
                ..Books::default()
            }),
        });
        let app = Router::new()
            .fallback(serve_call::<X>)
            .with_state(org.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Fake {
            base_url: org.base_url.clone(),
            org,
        }
    }
}

impl<X> Org<X> {
    /// The books, locked.
    pub fn books(&self) -> MutexGuard<'_, Books<X>> {
        self.books.lock().unwrap()
    }

    /// The token endpoint's bookkeeping.
    pub fn desk(&self) -> &TokenDesk {
        &self.desk
    }

    /// A contact as stored.
    pub fn contact(&self, id: &str) -> Option<Value> {
        self.books().contacts.get(id).cloned()
    }

    /// Edits a contact as a user of the vendor's app would (the last-modified stamp moves).
    pub fn edit(&self, id: &str, field: &str, value: Value) {
        let mut books = self.books();
        let record = books.contacts.get_mut(id).expect("contact exists");
        record[field] = value;
        self.touch(record);
    }

    /// Moves a record's last-modified stamp to now; returns the stamp.
    pub fn touch(&self, record: &mut Value) -> String {
        let stamp = (self.dialect.stamp)(Utc::now());
        record[self.dialect.stamp_key] = json!(stamp);
        stamp
    }

    /// API requests answered 401.
    pub fn unauthorized(&self) -> u64 {
        self.books().unauthorized
    }

    /// The next `count` API calls that pass the token check are answered `status` (a 5xx:
    /// the vendor's outage) without being processed.
    pub fn fail_next(&self, count: usize, status: u16) {
        self.books()
            .failures
            .extend(std::iter::repeat_n(status, count));
    }

    /// API calls answered by [`Org::fail_next`] so far; clears those still armed.
    pub fn failed_calls(&self, clear: bool) -> u64 {
        let mut books = self.books();
        if clear {
            books.failures.clear();
        }
        books.failed
    }

    /// Answers the token endpoint and API calls without a live access token; `None` lets the
    /// vendor's own routes answer.
    pub fn gate(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Option<Response> {
        if uri.path() == self.dialect.token_path && method == Method::POST {
            return Some(match self.desk.grant(&parse_form(body)) {
                Grant::Token { access, refresh } => {
                    let mut answer =
                        (self.dialect.token_answer)(&self.base_url, self.desk.lifetime, &access);
                    if let Some(refresh) = refresh {
                        answer["refresh_token"] = json!(refresh);
                    }
                    axum::Json(answer).into_response()
                }
                Grant::Refused(code) => (self.dialect.refused)(code),
            });
        }
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix(self.dialect.scheme))
            .unwrap_or_default();
        if self.desk.check(token) {
            return None;
        }
        self.books().unauthorized += 1;
        Some((self.dialect.unauthorized)())
    }
}

async fn serve_call<X: Send + 'static>(
    State(org): State<Arc<Org<X>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path() == org.dialect.token_path && method == Method::POST {
        match org.desk.before() {
            Before::Delay(delay) => {
                tokio::time::sleep(delay).await;
                org.desk.released().await;
            }
            Before::Stall(stall) => {
                tokio::time::sleep(stall).await;
                return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            Before::Answer(status, body) => {
                let status = axum::http::StatusCode::from_u16(status).unwrap();
                return (status, axum::Json(body)).into_response();
            }
        }
    }
    if let Some(answer) = org.gate(&method, &uri, &headers, &body) {
        return answer;
    }
    let call = Call {
        method,
        path: uri.path().to_string(),
        query: form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect(),
        headers,
        body,
    };
    let mut books = org.books();
    if let Some(status) = books.failures.pop_front() {
        books.failed += 1;
        let status = axum::http::StatusCode::from_u16(status).unwrap();
        return (status, axum::Json(json!({ "message": "injected failure" }))).into_response();
    }
    (org.route)(&org, &mut books, call)
}
