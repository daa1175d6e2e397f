//! The checks a loaded configuration must pass before any network call: each refusal names the
//! key and what was expected (exit 2).

use std::time::Duration;

use super::{Config, ConfigError, MIN_WRITE_TIMEOUT, OwnerChecks, lease_write_window};

impl Config {
    /// The console is safe by default: off unless asked for, and behind a token (at least 16
    /// characters) whenever it listens beyond loopback.
    pub(super) fn validate_console(&self, file: &str) -> Result<(), ConfigError> {
        use secrecy::ExposeSecret;
        let bad = |key: &str, reason: String| ConfigError::BadValue {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        if !self.service.console {
            return Ok(());
        }
        let Some(addr) = self.service.listen else {
            return Err(bad(
                "service.listen",
                "service.console = true needs an address to serve it on".into(),
            ));
        };
        match &self.service.console_token {
            Some(token) if token.expose_secret().trim().len() < 16 => Err(bad(
                "service.console_token",
                "expected at least 16 characters".into(),
            )),
            None if !addr.ip().is_loopback() => Err(bad(
                "service.console_token",
                format!(
                    "required when service.listen ({addr}) is not a loopback address; set it or service.console_token_file"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses an `ha.lease` whose write window ([`lease_write_window`]) cannot hold a write of
    /// the configured timeouts (`quo.timeout`, `source.rest.timeout`), or [`MIN_WRITE_TIMEOUT`]
    /// when they are longer.
    fn check_lease_fits_timeouts(
        &self,
        file: &str,
        checks: &OwnerChecks,
    ) -> Result<(), ConfigError> {
        let window = lease_write_window(self.ha.lease.0);
        let rest_timeout = self
            .source
            .rest
            .as_ref()
            .and_then(|t| (checks.source_rest)(t).ok())
            .map(|r| ("source.rest.timeout", r.timeout));
        let timeouts = std::iter::once(("quo.timeout", self.quo.timeout.0)).chain(rest_timeout);
        for (key, timeout) in timeouts {
            let needed = timeout.min(MIN_WRITE_TIMEOUT);
            if window < needed {
                return Err(ConfigError::BadValue {
                    file: file.to_string(),
                    key: "ha.lease".into(),
                    reason: format!(
                        "{} is too short for {key} = {}: between renewals a leader's writes get at most 17/30 of the lease ({}), and a write needs {}; use at least {}",
                        humantime::format_duration(self.ha.lease.0),
                        humantime::format_duration(timeout),
                        humantime::format_duration(window),
                        humantime::format_duration(needed),
                        humantime::format_duration(Duration::from_millis(
                            (needed.as_millis() as u64 * 30).div_ceil(17)
                        )),
                    ),
                });
            }
        }
        Ok(())
    }

    /// Every section's own checks, then the ones that need two sections (the lease against the
    /// timeouts, activity against the source's kind); `checks` are the owners' checks of the
    /// keys config carries for them.
    pub(super) fn validate(&self, file: &str, checks: &OwnerChecks) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::BadValue {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        self.source.validate_dialect(file)?;
        self.quo.validate(&bad)?;
        self.reverse.validate(&bad)?;
        self.sync.validate(&bad)?;
        self.ha.validate(&bad)?;
        self.service.validate(&bad)?;
        self.check_lease_fits_timeouts(file, checks)?;
        self.source.validate(&bad, checks.source_rest)?;
        self.mapping.validate(&bad)?;
        self.schedule.validate(&bad)?;
        self.log.validate(&bad)?;
        if let Some(activity) = &self.activity {
            activity
                .validate(self.source.kind)
                .map_err(|e| bad(&format!("activity.{}", e.key), e.reason))?;
        }
        Ok(())
    }
}
