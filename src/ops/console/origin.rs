//! Which browsers may reach a console that has no token: those that call it by a loopback name.
//!
//! Without a token, the console trusts whoever can connect, which `validate_console` limits to
//! loopback. DNS rebinding defeats that: a page on another site whose name is made to resolve to
//! 127.0.0.1 talks to the console as its own origin, with its own name in `Host`, and can read
//! the CSRF token from the page like any same-origin script. A reverse proxy in front of
//! 127.0.0.1 does the same for a whole network. So without a token only `Host` values that name
//! this machine are served (`localhost`, `127.0.0.1`, `[::1]`, or the configured listen
//! address): 421 otherwise. A POST's `Origin`, when the client sends one (browsers do), must
//! name one of them too: 403 otherwise. With a token, the token (and the SameSite cookie bound
//! to the name it was set for) decides, whatever the name.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Console;

/// The names a console without a token answers to.
#[derive(Debug, Clone)]
pub(super) struct LocalNames {
    listen: Option<IpAddr>,
}

impl LocalNames {
    pub(super) fn new(listen: Option<SocketAddr>) -> Self {
        Self {
            listen: listen.map(|a| a.ip()),
        }
    }

    /// Whether `host` (a `Host` value or an origin's host, with or without a port) names this
    /// machine.
    fn allows(&self, host: &str) -> bool {
        let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" {
            return true;
        }
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => {
                ip == IpAddr::from([127, 0, 0, 1])
                    || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                    || Some(ip) == self.listen
            }
            Err(_) => false,
        }
    }

    /// Whether an `Origin` value is an http(s) origin on one of these names.
    fn allows_origin(&self, origin: &str) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false; // "null" (sandboxed frames, file: pages) and garbage
        };
        matches!(scheme, "http" | "https") && !rest.contains('/') && self.allows(rest)
    }
}

/// `name` of `name:port`, `[v6]` of `[v6]:port`.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The check in front of every console route (see the module comment).
pub(super) async fn same_machine(
    State(console): State<Console>,
    request: Request,
    next: Next,
) -> Response {
    if console.auth.has_token() {
        return next.run(request).await;
    }
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    if !console.names.allows(&host) {
        let shown: String = host.chars().take(100).collect();
        tracing::warn!(event = "console_host_refused", host = %shown, "console request for a name that is not this machine (DNS rebinding or a proxy?); refused");
        return refusal(
            StatusCode::MISDIRECTED_REQUEST,
            "without service.console_token this console only answers to localhost, 127.0.0.1, [::1] or its listen address",
        );
    }
    if request.method() == Method::POST
        && let Some(origin) = headers.get(header::ORIGIN)
        && !origin
            .to_str()
            .is_ok_and(|o| console.names.allows_origin(o))
    {
        let shown: String = String::from_utf8_lossy(origin.as_bytes())
            .chars()
            .take(100)
            .collect();
        tracing::warn!(event = "console_origin_refused", origin = %shown, "console action posted from another site; refused");
        return refusal(
            StatusCode::FORBIDDEN,
            "actions are only taken from pages this console served",
        );
    }
    next.run(request).await
}

fn refusal(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_this_machine_pass() {
        let names = LocalNames::new(Some("127.0.0.2:8080".parse().unwrap()));
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:9",
            "[::1]:8080",
            "[::1]",
            "127.0.0.2:8080",
            "localhost.",
        ] {
            assert!(names.allows(host), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:8080",
            "127.0.0.3",
            "localhost.attacker.example",
            "",
            "[::2]",
        ] {
            assert!(!names.allows(host), "{host}");
        }
        assert!(names.allows_origin("http://localhost:8080"));
        assert!(names.allows_origin("https://[::1]"));
        assert!(!names.allows_origin("null"));
        assert!(!names.allows_origin("http://attacker.example"));
        assert!(!names.allows_origin("ftp://localhost"));
        assert!(!names.allows_origin("http://localhost/path"));
    }
}
