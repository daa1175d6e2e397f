//! The checks a loaded configuration must pass before any network call: each refusal names the
//! key and what was expected (exit 2).

use std::time::Duration;

use secrecy::ExposeSecret;

use super::{
    Config, ConfigError, MIN_WEBHOOK_KEY_BYTES, MIN_WRITE_TIMEOUT, SourceKind, lease_write_window,
    webhook_signing_key,
};

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
    fn check_lease_fits_timeouts(&self, file: &str) -> Result<(), ConfigError> {
        let window = lease_write_window(self.ha.lease.0);
        let rest_timeout = self
            .source
            .rest
            .as_ref()
            .and_then(|t| crate::source::rest::RestSourceConfig::from_table(t).ok())
            .map(|r| ("source.rest.timeout", r.timeout.0));
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

    pub(super) fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::BadValue {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        self.source.validate_dialect(file)?;
        if !(self.quo.base_url.starts_with("http://") || self.quo.base_url.starts_with("https://"))
        {
            return Err(bad(
                "quo.base_url",
                format!("expected an http(s) URL, got {:?}", self.quo.base_url),
            ));
        }
        if self.quo.requests_per_second == 0 {
            return Err(bad(
                "quo.requests_per_second",
                "expected a whole number above 0".into(),
            ));
        }
        let share = self.reverse.scan_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(bad(
                "reverse.scan_share",
                format!("expected a share above 0 and at most 1, got {share}"),
            ));
        }
        let fraction = self.sync.max_delete_fraction;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(bad(
                "sync.max_delete_fraction",
                format!("expected a share between 0 and 1, got {fraction}"),
            ));
        }
        if self.ha.lease.0 < Duration::from_secs(1) || self.ha.lease.0 > Duration::from_secs(3600) {
            return Err(bad(
                "ha.lease",
                format!(
                    "expected between 1s and 1h, got {}",
                    humantime::format_duration(self.ha.lease.0)
                ),
            ));
        }
        if self.service.readiness_failed_cycles == 0 {
            return Err(bad(
                "service.readiness_failed_cycles",
                "expected a whole number above 0".into(),
            ));
        }
        for (key, timeout) in [
            ("service.header_timeout", self.service.header_timeout),
            ("service.request_timeout", self.service.request_timeout),
        ] {
            if timeout.0.is_zero() {
                return Err(bad(
                    key,
                    "expected a duration above zero, like `10s`".into(),
                ));
            }
        }
        self.check_lease_fits_timeouts(file)?;
        if self.quo.concurrency == 0 {
            return Err(bad(
                "quo.concurrency",
                "expected a whole number above 0".into(),
            ));
        }
        let source = &self.quo.source;
        let lower = source.to_ascii_lowercase();
        let reserved = [
            "openphone",
            "device",
            "csv",
            "zapier",
            "google-people",
            "other",
        ];
        if source.is_empty()
            || source.chars().count() > 72
            || reserved.contains(&lower.as_str())
            || lower.starts_with("openphone")
            || lower.starts_with("csv")
        {
            return Err(bad(
                "quo.source",
                format!(
                    "{source:?} is reserved by Quo or not 1–72 characters; expected a label such as \"quo-sync\""
                ),
            ));
        }
        if let Some(secret) = &self.reverse.webhook_secret
            && webhook_signing_key(secret).is_none_or(|key| key.len() < MIN_WEBHOOK_KEY_BYTES)
        {
            let key = if self.reverse.webhook_secret_file.is_some() {
                "reverse.webhook_secret_file"
            } else {
                "reverse.webhook_secret"
            };
            return Err(bad(
                key,
                format!(
                    "expected Quo's signing key, `whsec_<base64>` or base64, of at least {MIN_WEBHOOK_KEY_BYTES} bytes once decoded (the value is not shown)"
                ),
            ));
        }
        if matches!(&self.quo.api_key, Some(k) if k.expose_secret().trim().is_empty()) {
            return Err(bad("quo.api_key", "is empty".into()));
        }
        match self.source.kind {
            SourceKind::Csv if self.source.path.is_none() => {
                return Err(bad(
                    "source.path",
                    "required when source.kind = \"csv\": the CSV file to read".into(),
                ));
            }
            SourceKind::Rest if self.source.rest.is_none() => {
                return Err(bad(
                    "source.rest",
                    "required when source.kind = \"rest\": the [source.rest] table".into(),
                ));
            }
            _ => {}
        }
        if let Some(table) = &self.source.rest {
            // The whole REST table is checked here, so check-config and start-up catch an
            // unknown or bad key (secrets from env/files are resolved when the source is built).
            crate::source::rest::RestSourceConfig::from_table(table).map_err(|e| {
                let key = if e.key.is_empty() {
                    "source.rest".to_string()
                } else {
                    format!("source.rest.{}", e.key)
                };
                bad(&key, e.reason)
            })?;
        }
        if self.source.id_field.trim().is_empty() {
            return Err(bad(
                "source.id_field",
                "expected the name of the id column".into(),
            ));
        }
        if self.mapping.default_region.len() != 2 {
            return Err(bad(
                "mapping.default_region",
                format!(
                    "expected a two-letter region such as \"US\", got {:?}",
                    self.mapping.default_region
                ),
            ));
        }
        if self
            .mapping
            .timezone
            .trim()
            .parse::<chrono_tz::Tz>()
            .is_err()
        {
            return Err(bad(
                "mapping.timezone",
                format!(
                    "expected an IANA time zone name such as \"UTC\" or \"America/New_York\", got {:?}",
                    self.mapping.timezone
                ),
            ));
        }
        if self.schedule.interval.0.is_zero() {
            return Err(bad(
                "schedule.interval",
                "expected a duration above zero, like `5m`".into(),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(bad(
                "log.level",
                format!(
                    "expected a level such as \"info\" or a filter directive, got {:?}",
                    self.log.level
                ),
            ));
        }
        if let Some(url) = &self.reverse.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(bad(
                "reverse.public_url",
                format!("expected an http(s) URL, got {url:?}"),
            ));
        }
        if let Some(activity) = &self.activity {
            activity
                .validate(self.source.kind)
                .map_err(|e| bad(&format!("activity.{}", e.key), e.reason))?;
        }
        for name in self.reverse.fields.keys() {
            let known = [
                crate::domain::field::FIRST_NAME,
                crate::domain::field::LAST_NAME,
                crate::domain::field::COMPANY,
                crate::domain::field::ROLE,
                crate::domain::field::EMAILS,
                crate::domain::field::PHONE_NUMBERS,
            ];
            if !known.contains(&name.as_str())
                && !name.starts_with(crate::domain::field::CUSTOM_PREFIX)
            {
                return Err(bad(
                    &format!("reverse.fields.{name}"),
                    "expected firstName, lastName, company, role, emails, phoneNumbers or custom:<key>".into(),
                ));
            }
        }
        Ok(())
    }
}
