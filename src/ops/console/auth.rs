//! Who may use the console: the token (bearer header or login cookie) and the CSRF token every
//! action must carry. The cookie holds an HMAC derived from the token, so neither the cookie nor
//! the page ever carries the token itself.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::Console;

/// The header an API client sends the CSRF token in (form posts send a `csrf` field).
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The login cookie's name.
const COOKIE: &str = "quo_console";

/// The console's credentials for this process.
pub(super) struct Auth {
    token: Option<SecretString>,
    /// The cookie value a successful login sets: HMAC(token, "session").
    session: Option<String>,
    csrf: String,
}

fn derive(token: &SecretString, purpose: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(token.expose_secret().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(purpose.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equal without leaking where they differ through timing (`subtle`; only the length shows).
fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

impl Auth {
    pub(super) fn new(token: Option<SecretString>) -> Self {
        let session = token
            .as_ref()
            .map(|t| derive(t, "quo-sync console session"));
        // Fresh per process: a page from before a restart must be reloaded before it can act.
        let csrf = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        Self {
            token,
            session,
            csrf,
        }
    }

    /// Whether a console token is configured.
    pub(super) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The CSRF token printed in the page.
    pub(super) fn csrf(&self) -> &str {
        &self.csrf
    }

    fn token_matches(&self, offered: &str) -> bool {
        match &self.token {
            Some(token) => same(
                token.expose_secret().trim().as_bytes(),
                offered.trim().as_bytes(),
            ),
            None => true,
        }
    }

    fn allowed(&self, headers: &HeaderMap) -> bool {
        let Some(session) = &self.session else {
            return true;
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some_and(|offered| self.token_matches(offered)) {
            return true;
        }
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| name == COOKIE && same(value.as_bytes(), session.as_bytes()))
    }

    /// Whether a POST carries the CSRF token (header, or `csrf` field of a form body).
    pub(super) fn csrf_ok(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        let offered = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| form_urlencoded_field(body, "csrf"));
        offered.is_some_and(|offered| same(offered.as_bytes(), self.csrf.as_bytes()))
    }
}

/// The answer to a POST without the right CSRF token.
pub(super) fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({
            "error": "missing or wrong CSRF token; reload the page and try again"
        })),
    )
        .into_response()
}

/// One field of an `application/x-www-form-urlencoded` body.
fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Lets a request through when no token is configured, or it carries the token or login cookie.
pub(super) async fn require(
    State(console): State<Console>,
    request: Request,
    next: Next,
) -> Response {
    if console.auth.allowed(request.headers()) {
        return next.run(request).await;
    }
    if request.uri().path() == "/" {
        return Redirect::to("/login").into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(serde_json::json!({ "error": "console token required" })),
    )
        .into_response()
}

/// `GET /login`.
pub(super) async fn login_form(State(console): State<Console>) -> Response {
    if console.auth.session.is_none() {
        return Redirect::to("/").into_response();
    }
    Html(super::page::login(None)).into_response()
}

/// `POST /login` with a `token` field: sets the session cookie and goes to the page.
pub(super) async fn login(State(console): State<Console>, body: axum::body::Bytes) -> Response {
    let Some(session) = &console.auth.session else {
        return Redirect::to("/").into_response();
    };
    let offered = form_urlencoded_field(&body, "token").unwrap_or_default();
    if offered.is_empty() || !console.auth.token_matches(&offered) {
        tracing::warn!(
            event = "console_login_refused",
            "console login with a wrong token"
        );
        return (
            StatusCode::UNAUTHORIZED,
            Html(super::page::login(Some(
                "That token is not the console token.",
            ))),
        )
            .into_response();
    }
    let cookie = format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}
