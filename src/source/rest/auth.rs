//! Credentials for the CRM: resolved once from config, environment or file, and kept out of
//! every `Debug`, log line and error message.

use std::fmt;
use std::path::PathBuf;

use reqwest::header::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use super::config::{AuthConfig, AuthKind, RestConfigError};
use super::oauth::OAuth;
use crate::quo::retry::RetryPolicy;

/// Credentials, resolved from config, environment or file.
pub(super) enum Auth {
    None,
    Bearer(SecretString),
    Header(HeaderName, SecretString),
    Basic(String, SecretString),
    Query(String, SecretString),
    OAuth2(Box<OAuth>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("none"),
            Auth::Bearer(_) => f.write_str("bearer([REDACTED])"),
            Auth::Header(name, _) => write!(f, "header({name}: [REDACTED])"),
            Auth::Basic(user, _) => write!(f, "basic({user}:[REDACTED])"),
            Auth::Query(name, _) => write!(f, "query({name}=[REDACTED])"),
            Auth::OAuth2(oauth) => oauth.fmt(f),
        }
    }
}

/// Reads a secret given as `<key>`, `<key>_env` or `<key>_file`; `what` is the key below
/// `source.rest.auth` (`token`) or a dotted key below `source.rest` (`webhook.secret`).
pub(super) fn resolve_secret(
    what: &str,
    direct: &Option<SecretString>,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<SecretString, RestConfigError> {
    let what = if what.contains('.') {
        what.to_string()
    } else {
        format!("auth.{what}")
    };
    let given =
        usize::from(direct.is_some()) + usize::from(env.is_some()) + usize::from(file.is_some());
    if given != 1 {
        return Err(RestConfigError::new(
            what.clone(),
            format!("set exactly one of {what}, {what}_env, {what}_file"),
        ));
    }
    let secret = if let Some(secret) = direct {
        secret.expose_secret().trim().to_string()
    } else if let Some(var) = env {
        std::env::var(var)
            .map_err(|_| {
                RestConfigError::new(
                    format!("{what}_env"),
                    format!("the environment variable {var} is not set"),
                )
            })?
            .trim()
            .to_string()
    } else {
        let path = file.as_ref().expect("counted above");
        std::fs::read_to_string(path)
            .map_err(|e| {
                RestConfigError::new(
                    format!("{what}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
            .trim()
            .to_string()
    };
    if secret.is_empty() {
        return Err(RestConfigError::new(what.clone(), "is empty"));
    }
    Ok(SecretString::from(secret))
}

impl Auth {
    pub(super) fn resolve(
        config: &AuthConfig,
        timeout: std::time::Duration,
        retry: RetryPolicy,
        allow_insecure_http: bool,
    ) -> Result<Self, RestConfigError> {
        let token = || {
            resolve_secret(
                "token",
                &config.token,
                &config.token_env,
                &config.token_file,
            )
        };
        let unused = |keys: &[(&str, bool)]| {
            for (key, set) in keys {
                if *set {
                    return Err(RestConfigError::new(
                        format!("auth.{key}"),
                        format!(
                            "not used with auth.kind = {:?}",
                            format!("{:?}", config.kind).to_lowercase()
                        ),
                    ));
                }
            }
            Ok(())
        };
        let token_set =
            config.token.is_some() || config.token_env.is_some() || config.token_file.is_some();
        let password_set = config.password.is_some()
            || config.password_env.is_some()
            || config.password_file.is_some();
        match config.kind {
            AuthKind::OAuth2 => Ok(Auth::OAuth2(Box::new(OAuth::resolve(
                config,
                timeout,
                retry,
                allow_insecure_http,
            )?))),
            AuthKind::None => {
                unused(&[
                    ("token", token_set),
                    ("password", password_set),
                    ("username", config.username.is_some()),
                    ("header_name", config.header_name.is_some()),
                    ("param_name", config.param_name.is_some()),
                ])?;
                Ok(Auth::None)
            }
            AuthKind::Bearer => {
                unused(&[
                    ("password", password_set),
                    ("username", config.username.is_some()),
                    ("header_name", config.header_name.is_some()),
                    ("param_name", config.param_name.is_some()),
                ])?;
                Ok(Auth::Bearer(token()?))
            }
            AuthKind::Header => {
                unused(&[
                    ("password", password_set),
                    ("username", config.username.is_some()),
                    ("param_name", config.param_name.is_some()),
                ])?;
                let name = config.header_name.as_deref().ok_or_else(|| {
                    RestConfigError::new("auth.header_name", "required when auth.kind = \"header\"")
                })?;
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    RestConfigError::new(
                        "auth.header_name",
                        format!("{name:?} is not a valid header name"),
                    )
                })?;
                let token = token()?;
                HeaderValue::from_str(token.expose_secret()).map_err(|_| {
                    RestConfigError::new(
                        "auth.token",
                        "contains characters not allowed in a header",
                    )
                })?;
                Ok(Auth::Header(name, token))
            }
            AuthKind::Basic => {
                unused(&[
                    ("token", token_set),
                    ("header_name", config.header_name.is_some()),
                    ("param_name", config.param_name.is_some()),
                ])?;
                let user = config.username.clone().ok_or_else(|| {
                    RestConfigError::new("auth.username", "required when auth.kind = \"basic\"")
                })?;
                let password = resolve_secret(
                    "password",
                    &config.password,
                    &config.password_env,
                    &config.password_file,
                )?;
                Ok(Auth::Basic(user, password))
            }
            AuthKind::Query => {
                unused(&[
                    ("password", password_set),
                    ("username", config.username.is_some()),
                    ("header_name", config.header_name.is_some()),
                ])?;
                let name = config
                    .param_name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        RestConfigError::new(
                            "auth.param_name",
                            "required when auth.kind = \"query\"",
                        )
                    })?;
                Ok(Auth::Query(name, token()?))
            }
        }
    }

    pub(super) fn query_param(&self) -> Option<&str> {
        match self {
            Auth::Query(name, _) => Some(name),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::rest::RestSource;
    use crate::source::rest::test_support::*;

    #[test]
    fn secrets_never_appear_in_debug() {
        let config = table(&format!(
            "{MINIMAL}\nauth = {{ kind = \"basic\", username = \"me\", password = \"hunter2-very-secret\" }}"
        ));
        let source = RestSource::from_table(&config).unwrap();
        let debug = format!("{source:?} {:?}", source.config());
        assert!(!debug.contains("hunter2-very-secret"), "{debug}");
        let config = table(&format!(
            "{MINIMAL}\nauth = {{ kind = \"query\", param_name = \"api_token\", token = \"tok-secret-123\" }}"
        ));
        let source = RestSource::from_table(&config).unwrap();
        assert!(!format!("{source:?}").contains("tok-secret-123"));
    }

    #[test]
    fn file_and_env_secrets_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "file-token\n").unwrap();
        let config = table(&format!(
            "{MINIMAL}\nauth = {{ kind = \"bearer\", token_file = {:?} }}",
            file.display().to_string()
        ));
        let source = RestSource::from_table(&config).unwrap();
        match &source.auth {
            Auth::Bearer(t) => assert_eq!(t.expose_secret(), "file-token"),
            other => panic!("{other:?}"),
        }
        let config = table(&format!(
            "{MINIMAL}\nauth = {{ kind = \"bearer\", token = \"a\", token_file = \"/x\" }}"
        ));
        assert_eq!(
            RestSource::from_table(&config).unwrap_err().key,
            "auth.token"
        );
    }
}
