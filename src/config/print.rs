//! `check-config --print`: the effective configuration as TOML, with every secret replaced by
//! `[REDACTED]` (and a database URL shown without its password), so it can be pasted into a
//! ticket.

use secrecy::{ExposeSecret, SecretString};
use serde::Serializer;

use super::Config;

/// What a secret prints as.
pub const REDACTED: &str = "[REDACTED]";

/// A secret: `[REDACTED]` when set.
pub fn secret<S: Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str(REDACTED),
        None => s.serialize_none(),
    }
}

/// A database URL: its password replaced, its parameters (`sslmode`) kept.
pub fn database_url<S: Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    let Some(url) = value else {
        return s.serialize_none();
    };
    match reqwest::Url::parse(url.expose_secret()) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some(REDACTED));
            }
            s.serialize_str(parsed.as_str())
        }
        Err(_) => s.serialize_str(REDACTED),
    }
}

/// Whether a key of the REST table holds a secret's value (not the name of a file, variable,
/// URL, field or header that leads to one).
fn secret_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    let names_a_place = [
        "_file", "_env", "_url", "_field", "_pointer", "_param", "_header",
    ]
    .iter()
    .any(|suffix| lower.ends_with(suffix));
    !names_a_place
        && [
            "token",
            "secret",
            "password",
            "api_key",
            "apikey",
            "signing_key",
        ]
        .iter()
        .any(|word| lower.contains(word))
}

pub(super) fn redact_table(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        match value {
            // Extra request headers (`update.headers`, `create.headers`): a credential is named
            // by the header (`Authorization`, `X-Api-Key`), not by a secret-like key.
            toml::Value::Table(inner) if key == "headers" => {
                for (name, value) in inner.iter_mut() {
                    if let toml::Value::String(text) = value
                        && crate::secret_headers::is_credential_header(name)
                    {
                        *text = REDACTED.into();
                    }
                }
            }
            toml::Value::Table(inner) => redact_table(inner),
            toml::Value::String(text) if secret_key(key) => *text = REDACTED.into(),
            _ => {}
        }
    }
}

/// The REST source's table with secret values redacted.
pub fn rest_table<S: Serializer>(value: &Option<toml::Table>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(table) => {
            let mut shown = table.clone();
            redact_table(&mut shown);
            serde::Serialize::serialize(&shown, s)
        }
        None => s.serialize_none(),
    }
}

impl Config {
    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_secrets_are_redacted_but_places_are_kept() {
        let mut table: toml::Table = toml::from_str(
            "token_url = \"https://crm/oauth\"\n[auth]\nkind = \"oauth2\"\nclient_secret = \"s3cr3t\"\nrefresh_token = \"rt-value\"\nclient_secret_file = \"/run/secrets/x\"\ntoken_env = \"CRM_TOKEN\"\n",
        )
        .unwrap();
        redact_table(&mut table);
        let text = toml::to_string(&table).unwrap();
        assert!(
            !text.contains("s3cr3t") && !text.contains("rt-value"),
            "{text}"
        );
        assert!(text.contains("https://crm/oauth"), "{text}");
        assert!(
            text.contains("/run/secrets/x") && text.contains("CRM_TOKEN"),
            "{text}"
        );
    }
}
