//! `[reverse]`: the Quo → CRM path: webhooks and their signing key, the scan, and who wins a
//! field changed on both sides.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{HumanDuration, print};

/// Which side wins a field changed on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    /// The side modified last (CRM last-modified vs Quo `updatedAt`), else the CRM.
    Newest,
    /// The CRM.
    Crm,
    /// Quo.
    Quo,
}

/// Which way a field may flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldDirection {
    /// Both ways.
    Both,
    /// CRM → Quo only.
    ToQuo,
    /// Quo → CRM only.
    ToCrm,
}

/// What to do when a managed contact is deleted in Quo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnQuoDelete {
    /// Create it again from the CRM.
    Recreate,
    /// Forget the Quo id, keep the CRM record (default).
    Unlink,
    /// Delete the CRM record.
    DeleteInCrm,
}

/// Per-field reverse-path settings, keyed by diff name (`firstName`, `custom:vip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldPolicy {
    /// Overrides `reverse.conflict` for this field.
    #[serde(default)]
    pub conflict: Option<ConflictPolicy>,
    /// Which way this field flows, default `both`.
    #[serde(default)]
    pub direction: Option<FieldDirection>,
}

/// `[reverse]`: Quo → CRM.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReverseConfig {
    /// Run the reverse path at all.
    pub enabled: bool,
    /// Webhook receiver address (`/webhooks/quo`, `/healthz`).
    pub listen: Option<SocketAddr>,
    /// Webhook signing secret (legacy base64 key or `whsec_…`); it must decode to at least
    /// [`MIN_WEBHOOK_KEY_BYTES`].
    #[serde(serialize_with = "print::secret")]
    pub webhook_secret: Option<SecretString>,
    /// A file holding the webhook signing secret (Docker/Kubernetes secrets).
    pub webhook_secret_file: Option<PathBuf>,
    /// Scan interval; default `1m` without a webhook secret, `1h` with one (a slow fallback
    /// that pulls what a missed delivery left behind); `0s` disables.
    pub poll_interval: Option<HumanDuration>,
    /// Conflict policy, default `newest`.
    pub conflict: ConflictPolicy,
    /// Per-field overrides.
    pub fields: BTreeMap<String, FieldPolicy>,
    /// Quo-side delete policy, default `unlink`.
    pub on_quo_delete: OnQuoDelete,
    /// Largest webhook body accepted, bytes.
    pub max_body_bytes: usize,
    /// How long applied webhook events are kept (for redelivery dedupe and audit), default `7d`.
    pub inbox_retention: HumanDuration,
    /// Share of the request rate the service's scan may use while writes wait, default `0.3`
    /// (all of it otherwise).
    pub scan_share: f64,
    /// Longest a webhook delivery may take to arrive in full, default `10s` (slow clients get
    /// 408 instead of holding a connection).
    pub read_timeout: HumanDuration,
    /// Contacts made in the Quo app after the first cycle become CRM records, default false.
    pub create_in_crm: bool,
    /// The CRM id of such a record (CSV), `{quo_id}` replaced: default `quo-{quo_id}`.
    pub new_record_id: String,
    /// A CRM field that carries the Quo contact id of a record made from a Quo contact, so an
    /// interrupted create is found in the CRM instead of made twice.
    pub quo_id_field: Option<String>,
    /// The URL at which Quo reaches `reverse.listen` (`https://sync.example.com`): with it,
    /// quo-sync registers its own webhooks (`quo-sync webhooks ensure`).
    pub public_url: Option<String>,
}

impl Default for ReverseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            webhook_secret: None,
            webhook_secret_file: None,
            poll_interval: None,
            conflict: ConflictPolicy::Newest,
            fields: BTreeMap::new(),
            on_quo_delete: OnQuoDelete::Unlink,
            max_body_bytes: 256 * 1024,
            inbox_retention: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            scan_share: 0.3,
            read_timeout: HumanDuration(Duration::from_secs(10)),
            create_in_crm: false,
            new_record_id: "quo-{quo_id}".into(),
            quo_id_field: None,
            public_url: None,
        }
    }
}

/// The shortest Quo webhook signing key accepted, in decoded bytes: anyone can forge a
/// signature with an empty or near-empty key.
pub const MIN_WEBHOOK_KEY_BYTES: usize = 16;

/// The signing key bytes of a Quo webhook secret: `whsec_<base64>` (Standard Webhooks) or plain
/// base64 (legacy). `None` when it does not decode.
pub fn webhook_signing_key(secret: &SecretString) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = secret.expose_secret().trim();
    let encoded = text.strip_prefix("whsec_").unwrap_or(text);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
}

impl ReverseConfig {
    /// The effective scan interval: explicit, else 1 minute without webhooks and 1 hour with
    /// them (deliveries can be missed; the slow scan pulls what they left behind).
    pub fn effective_poll_interval(&self) -> Option<Duration> {
        match (&self.poll_interval, &self.webhook_secret) {
            (Some(interval), _) => Some(interval.0).filter(|d| !d.is_zero()),
            (None, None) => Some(Duration::from_secs(60)),
            (None, Some(_)) => Some(Duration::from_secs(3600)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_keep_a_slow_fallback_scan() {
        let mut reverse = ReverseConfig::default();
        assert_eq!(
            reverse.effective_poll_interval(),
            Some(Duration::from_secs(60))
        );
        reverse.webhook_secret = Some(SecretString::from("whsec_c2VjcmV0"));
        assert_eq!(
            reverse.effective_poll_interval(),
            Some(Duration::from_secs(3600)),
            "a missed delivery is pulled within the hour"
        );
        reverse.poll_interval = Some(HumanDuration(Duration::ZERO));
        assert_eq!(reverse.effective_poll_interval(), None, "0s disables");
    }
}
