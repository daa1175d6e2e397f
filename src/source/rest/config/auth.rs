//! `[source.rest.auth]`: how requests authenticate (none, bearer, header, basic, query, OAuth2)
//! and which keys each kind takes; apart from the rest of the table because credentials carry
//! their own rules: a `Debug` that shows no secret, and no credential sent in clear text beyond
//! this machine.

use std::fmt;
use std::path::PathBuf;

use reqwest::Url;
use secrecy::SecretString;
use serde::Deserialize;

/// How requests authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// No credentials.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `<header_name>: <token>`.
    Header,
    /// `Authorization: Basic base64(username:password)`.
    Basic,
    /// `?<param_name>=<token>` (redacted wherever a URL is shown).
    Query,
    /// OAuth2 access tokens from `token_url`, cached and refreshed (see `oauth`).
    #[serde(rename = "oauth2")]
    OAuth2,
}

/// The OAuth2 grant used at `token_url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    /// `grant_type=client_credentials` (server-to-server apps).
    ClientCredentials,
    /// `grant_type=refresh_token` with a refresh token from a one-time consent.
    RefreshToken,
}

/// Where the client credentials go in token requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OAuthStyle {
    /// `client_id` and `client_secret` as form fields (Salesforce, Zoho).
    #[default]
    Body,
    /// `Authorization: Basic base64(client_id:client_secret)` (RFC 6749 §2.3.1).
    Basic,
}

/// `[source.rest.auth]`. Its `Debug` shows `token_url` without its query (a vendor may put
/// the refresh token there) and no secret.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none`, `bearer`, `header`, `basic` or `query`.
    #[serde(default)]
    pub kind: AuthKind,
    /// The token itself (bearer, header, query).
    #[serde(default)]
    pub token: Option<SecretString>,
    /// An environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// A file holding the token (trimmed).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The header carrying the token (header).
    #[serde(default)]
    pub header_name: Option<String>,
    /// The query parameter carrying the token (query).
    #[serde(default)]
    pub param_name: Option<String>,
    /// The user name (basic).
    #[serde(default)]
    pub username: Option<String>,
    /// The password (basic).
    #[serde(default)]
    pub password: Option<SecretString>,
    /// An environment variable holding the password (basic).
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the password (basic, trimmed).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// OAuth2 grant: `client_credentials` or `refresh_token` (oauth2).
    #[serde(default)]
    pub grant: Option<OAuthGrant>,
    /// The token endpoint (oauth2).
    #[serde(default)]
    pub token_url: Option<String>,
    /// The OAuth2 client id (oauth2).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The OAuth2 client secret (oauth2).
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// An environment variable holding the client secret (oauth2).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// A file holding the client secret (oauth2, trimmed).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The refresh token (oauth2, grant = "refresh_token").
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    /// An environment variable holding the refresh token.
    #[serde(default)]
    pub refresh_token_env: Option<String>,
    /// A file holding the refresh token (trimmed).
    #[serde(default)]
    pub refresh_token_file: Option<PathBuf>,
    /// `scope` sent to the token endpoint (oauth2, optional).
    #[serde(default)]
    pub scope: Option<String>,
    /// `audience` sent to the token endpoint (oauth2, optional; Auth0-style APIs).
    #[serde(default)]
    pub audience: Option<String>,
    /// Client credentials as form fields (`body`, default) or HTTP Basic (`basic`).
    #[serde(default)]
    pub auth_style: Option<OAuthStyle>,
    /// JSON pointer into the token answer naming the API base URL (Salesforce
    /// `/instance_url`, Zoho `/api_domain`); replaces `base_url` once a token is fetched.
    #[serde(default)]
    pub base_url_pointer: Option<String>,
    /// The `Authorization` scheme sent with the access token, default `Bearer` (Zoho:
    /// `Zoho-oauthtoken`).
    #[serde(default)]
    pub header_scheme: Option<String>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token_url = self.token_url.as_deref().map(|url| match Url::parse(url) {
            Ok(url) => crate::source::rest::oauth::shown_token_url(&url),
            Err(_) => "[unreadable URL]".to_string(),
        });
        f.debug_struct("AuthConfig")
            .field("kind", &self.kind)
            .field("token", &self.token)
            .field("token_env", &self.token_env)
            .field("token_file", &self.token_file)
            .field("header_name", &self.header_name)
            .field("param_name", &self.param_name)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("grant", &self.grant)
            .field("token_url", &token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_secret_env", &self.client_secret_env)
            .field("client_secret_file", &self.client_secret_file)
            .field("refresh_token", &self.refresh_token)
            .field("refresh_token_env", &self.refresh_token_env)
            .field("refresh_token_file", &self.refresh_token_file)
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .field("auth_style", &self.auth_style)
            .field("base_url_pointer", &self.base_url_pointer)
            .field("header_scheme", &self.header_scheme)
            .finish()
    }
}

impl AuthConfig {
    /// The OAuth2-only keys that are set, for "not used with this kind" errors.
    pub(in crate::source::rest) fn oauth_keys_set(&self) -> Vec<&'static str> {
        [
            ("grant", self.grant.is_some()),
            ("token_url", self.token_url.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret", self.client_secret.is_some()),
            ("client_secret_env", self.client_secret_env.is_some()),
            ("client_secret_file", self.client_secret_file.is_some()),
            ("refresh_token", self.refresh_token.is_some()),
            ("refresh_token_env", self.refresh_token_env.is_some()),
            ("refresh_token_file", self.refresh_token_file.is_some()),
            ("scope", self.scope.is_some()),
            ("audience", self.audience.is_some()),
            ("auth_style", self.auth_style.is_some()),
            ("base_url_pointer", self.base_url_pointer.is_some()),
            ("header_scheme", self.header_scheme.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }
}

/// Whether `url` would carry credentials in clear text beyond this machine: plain `http://` to
/// a host that is not loopback (`localhost`, 127.0.0.0/8, `::1`).
pub(in crate::source::rest) fn insecure_transport(url: &Url) -> bool {
    if url.scheme() != "http" {
        return false;
    }
    let Some(host) = url.host_str() else {
        return true;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return !ip.is_loopback();
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name != "localhost" && !name.ends_with(".localhost")
}
