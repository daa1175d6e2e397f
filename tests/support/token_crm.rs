//! What the static-token vendor fakes (`hubspot`, `pipedrive`) share: a server on port 0, a
//! credential check in front of every call (counting refusals), contacts keyed by id, activity
//! objects, and a switch that holds the answer to the next creates after storing them, so a
//! test can kill the caller between the CRM's write and the caller's commit.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use serde_json::Value;

use super::crm_objects::Objects;
use super::vendor::Call;

/// The books of a static-token fake.
#[derive(Default)]
pub struct Books {
    /// Contacts (persons) by id.
    pub contacts: BTreeMap<String, Value>,
    /// Activity objects.
    pub objects: Objects,
    /// Calls refused for bad credentials.
    pub unauthorized: u64,
}

/// Checks a call's credentials.
pub type Gate = fn(&HeaderMap, &HashMap<String, String>) -> bool;
/// Answers a call that passed the gate; `true` in the second place when it created an object.
pub type Route = fn(&mut Books, &Call) -> (Response, bool);

struct Inner {
    gate: Gate,
    route: Route,
    refused: fn() -> Response,
    books: Mutex<Books>,
    hold: Mutex<Option<Duration>>,
}

/// A running fake.
#[derive(Clone)]
pub struct TokenCrm {
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    inner: Arc<Inner>,
}

impl TokenCrm {
    /// Binds port 0 and serves `route` behind `gate`.
    pub async fn start(
        contacts: Vec<(String, Value)>,
        gate: Gate,
        route: Route,
        refused: fn() -> Response,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Inner {
            gate,
            route,
            refused,
            books: Mutex::new(Books {
                contacts: contacts.into_iter().collect(),
                ..Books::default()
            }),
            hold: Mutex::new(None),
        });
        let app = Router::new().fallback(serve).with_state(inner.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base_url, inner }
    }

    /// The books, locked.
    pub fn books(&self) -> MutexGuard<'_, Books> {
        self.inner.books.lock().unwrap()
    }

    /// From now on, every create is stored and then answered only after `hold` (`None`: at once).
    pub fn hold_creates(&self, hold: Option<Duration>) {
        *self.inner.hold.lock().unwrap() = hold;
    }

    /// Every activity object, in creation order.
    pub fn objects(&self) -> Vec<Value> {
        self.books().objects.all()
    }
}

async fn serve(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if !(inner.gate)(&headers, &query) {
        inner.books.lock().unwrap().unauthorized += 1;
        return (inner.refused)();
    }
    let call = Call {
        method,
        path: uri.path().to_string(),
        query,
        headers,
        body,
    };
    let (answer, created) = {
        let mut books = inner.books.lock().unwrap();
        (inner.route)(&mut books, &call)
    };
    let hold = *inner.hold.lock().unwrap();
    if let (true, Some(hold)) = (created, hold) {
        tokio::time::sleep(hold).await;
    }
    answer
}
