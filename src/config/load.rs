//! Reading the configuration: the TOML file, the `QUO_SYNC__SECTION__KEY` overrides, the
//! secrets kept in files, and relative paths made absolute beside the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::{API_KEY_ENV, Config, ConfigError, ENV_PREFIX, ENV_SEPARATOR, OwnerChecks, paths};

impl Config {
    /// Loads `file` with the environment given and validates it, the keys config carries for
    /// other modules checked by those modules (`checks`); no network. The application calls it
    /// through `Config::load` (`src/app/load_config.rs`), which hands in the owners' checks.
    pub fn load_checked(
        file: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        checks: &OwnerChecks,
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
        config.read_secret_files(&file_name, &env)?;
        if let Err(reason) = (checks.ledger)(&config.ledger) {
            let key = if config.ledger.url_file.is_some() {
                "ledger.url_file"
            } else {
                "ledger.url"
            };
            return Err(ConfigError::BadValue {
                file: file_name.clone(),
                key: key.into(),
                reason,
            });
        }
        config.validate(&file_name, checks)?;
        config.validate_console(&file_name)?;
        config.validate_scope(&file_name)?;
        config.validate_day_one(&file_name)?;
        Ok(config)
    }

    /// Fills each secret not set in the file or an override from its `*_file` key (the API key
    /// also from `QUO_API_KEY`), trimmed.
    fn read_secret_files(
        &mut self,
        file_name: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        let read = |key: &str, path: &Path| -> Result<SecretString, ConfigError> {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::BadValue {
                file: file_name.to_string(),
                key: key.into(),
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            Ok(SecretString::from(text.trim().to_string()))
        };
        if self.quo.api_key.is_none() {
            if let Some(path) = &self.quo.api_key_file {
                self.quo.api_key = Some(read("quo.api_key_file", path)?);
            } else if let Some(key) = env.get(API_KEY_ENV).filter(|k| !k.trim().is_empty()) {
                self.quo.api_key = Some(SecretString::from(key.trim().to_string()));
            }
        }
        if self.service.console_token.is_none()
            && let Some(path) = &self.service.console_token_file
        {
            self.service.console_token = Some(read("service.console_token_file", path)?);
        }
        if self.reverse.webhook_secret.is_none()
            && let Some(path) = &self.reverse.webhook_secret_file
        {
            self.reverse.webhook_secret = Some(read("reverse.webhook_secret_file", path)?);
        }
        if self.ledger.url.is_none()
            && let Some(path) = &self.ledger.url_file
        {
            self.ledger.url = Some(read("ledger.url_file", path)?);
        }
        Ok(())
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
