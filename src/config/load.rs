//! Reading the configuration: the TOML file, the `QUO_SYNC__SECTION__KEY` overrides, the
//! secrets kept in files, and relative paths made absolute beside the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::{API_KEY_ENV, Config, ConfigError, ENV_PREFIX, ENV_SEPARATOR, paths};

impl Config {
    /// Loads `file` with environment overrides and validates it; no network.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like `load`, with the environment given (tests).
    pub fn load_with_env(
        file: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file_name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Unreadable {
            file: file_name.clone(),
            reason: e.to_string(),
        })?;
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let overrides: std::collections::HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let built = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator(ENV_SEPARATOR)
                    .separator(ENV_SEPARATOR)
                    .try_parsing(true)
                    .source(Some(overrides)),
            )
            .build()
            .map_err(|e| ConfigError::Invalid {
                file: file_name.clone(),
                message: e.to_string(),
            })?;
        let mut config: Config = built.try_deserialize().map_err(|e| ConfigError::Invalid {
            file: file_name.clone(),
            message: e.to_string(),
        })?;
        config.resolve_paths(file);
        if config.quo.api_key.is_none() {
            if let Some(path) = &config.quo.api_key_file {
                let key = std::fs::read_to_string(path).map_err(|e| ConfigError::BadValue {
                    file: file_name.clone(),
                    key: "quo.api_key_file".into(),
                    reason: format!("cannot read {}: {e}", path.display()),
                })?;
                config.quo.api_key = Some(SecretString::from(key.trim().to_string()));
            } else if let Some(key) = env.get(API_KEY_ENV).filter(|k| !k.trim().is_empty()) {
                config.quo.api_key = Some(SecretString::from(key.trim().to_string()));
            }
        }
        if config.service.console_token.is_none()
            && let Some(path) = &config.service.console_token_file
        {
            let token = std::fs::read_to_string(path).map_err(|e| ConfigError::BadValue {
                file: file_name.clone(),
                key: "service.console_token_file".into(),
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            config.service.console_token = Some(SecretString::from(token.trim().to_string()));
        }
        if config.reverse.webhook_secret.is_none()
            && let Some(path) = &config.reverse.webhook_secret_file
        {
            let secret = std::fs::read_to_string(path).map_err(|e| ConfigError::BadValue {
                file: file_name.clone(),
                key: "reverse.webhook_secret_file".into(),
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            config.reverse.webhook_secret = Some(SecretString::from(secret.trim().to_string()));
        }
        if config.ledger.url.is_none()
            && let Some(path) = &config.ledger.url_file
        {
            let url = std::fs::read_to_string(path).map_err(|e| ConfigError::BadValue {
                file: file_name.clone(),
                key: "ledger.url_file".into(),
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            config.ledger.url = Some(SecretString::from(url.trim().to_string()));
        }
        if let Err(e) = config.ledger.target() {
            let key = if config.ledger.url_file.is_some() {
                "ledger.url_file"
            } else {
                "ledger.url"
            };
            return Err(ConfigError::BadValue {
                file: file_name.clone(),
                key: key.into(),
                reason: e.to_string(),
            });
        }
        config.validate(&file_name)?;
        config.validate_console(&file_name)?;
        config.validate_scope(&file_name)?;
        config.validate_day_one(&file_name)?;
        Ok(config)
    }

    /// Makes every relative path absolute against the configuration file's folder (falling
    /// back to the working directory where only it holds the file); see [`paths`].
    fn resolve_paths(&mut self, file: &Path) {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let base = paths::config_dir(file, &cwd);
        let mut found = Vec::new();
        let mut one = |key: &str, path: &mut PathBuf| {
            let resolved = paths::resolve(&base, &cwd, key, path);
            *path = resolved.path.clone();
            found.push(resolved);
        };
        if let Some(path) = self.source.path.as_mut() {
            one("source.path", path);
        }
        if self.ledger.url.is_none() && self.ledger.url_file.is_none() {
            one("ledger.path", &mut self.ledger.path);
        }
        for (key, path) in [
            ("quo.api_key_file", self.quo.api_key_file.as_mut()),
            ("ledger.url_file", self.ledger.url_file.as_mut()),
            (
                "service.console_token_file",
                self.service.console_token_file.as_mut(),
            ),
            (
                "reverse.webhook_secret_file",
                self.reverse.webhook_secret_file.as_mut(),
            ),
        ] {
            if let Some(path) = path {
                one(key, path);
            }
        }
        if let Some(table) = self.source.rest.as_mut() {
            paths::resolve_table(&base, &cwd, "source.rest", table, &mut found);
        }
        self.resolved_paths = found;
    }

    /// Logs where each configured path was found (call once logging is set up); a path found
    /// only in the working directory is a warning.
    pub fn log_resolved_paths(&self) {
        for resolved in &self.resolved_paths {
            if resolved.from_working_directory {
                tracing::warn!(event = "path_from_working_directory", key = %resolved.key, path = %resolved.path.display(), "found relative to the working directory, not beside the config file; relative paths are read beside the config file since 0.2: make it absolute or move the file");
            } else {
                tracing::info!(event = "config_path", key = %resolved.key, path = %resolved.path.display(), "configured path");
            }
        }
    }
}
