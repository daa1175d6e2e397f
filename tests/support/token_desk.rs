//! The OAuth2 token endpoint shared by the vendor fakes: checks the client, the grant and the
//! refresh token, hands out access tokens that expire after `lifetime`, optionally rotates the
//! refresh token (the old one stops working), and counts what it served.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the token endpoint answers.
pub enum Grant {
    /// A fresh access token.
    Token {
        access: String,
        refresh: Option<String>,
    },
    /// An RFC 6749 error code (`invalid_client`, `invalid_grant`, …).
    Refused(&'static str),
}

/// Token issuing and checking.
pub struct TokenDesk {
    pub client_id: String,
    pub client_secret: String,
    pub lifetime: Duration,
    pub rotate: bool,
    inner: Mutex<DeskInner>,
}

#[derive(Default)]
struct DeskInner {
    refresh: String,
    access: HashMap<String, Instant>,
    issued: u64,
    /// When each access token was issued, in order.
    issued_at: Vec<Instant>,
    expired_uses: u64,
}

impl TokenDesk {
    pub fn new(client_id: &str, client_secret: &str, refresh: &str, lifetime: Duration) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            lifetime,
            rotate: false,
            inner: Mutex::new(DeskInner {
                refresh: refresh.into(),
                ..DeskInner::default()
            }),
        }
    }

    /// Handles a `grant_type=refresh_token` form (client credentials in the form).
    pub fn grant(&self, form: &HashMap<String, String>) -> Grant {
        let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
        if get("client_id") != self.client_id || get("client_secret") != self.client_secret {
            return Grant::Refused("invalid_client");
        }
        if get("grant_type") != "refresh_token" {
            return Grant::Refused("unsupported_grant_type");
        }
        let mut inner = self.inner.lock().unwrap();
        if get("refresh_token") != inner.refresh {
            return Grant::Refused("invalid_grant");
        }
        inner.issued += 1;
        inner.issued_at.push(Instant::now());
        let access = format!("acc-{}-{:08x}", inner.issued, rand_suffix(inner.issued));
        inner
            .access
            .insert(access.clone(), Instant::now() + self.lifetime);
        let refresh = if self.rotate {
            let next = format!("rt-rotated-{}", inner.issued);
            inner.refresh = next.clone();
            Some(next)
        } else {
            None
        };
        Grant::Token { access, refresh }
    }

    /// Whether `token` is a live access token; an expired one is counted.
    pub fn check(&self, token: &str) -> bool {
        let mut inner = self.inner.lock().unwrap();
        match inner.access.get(token) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                inner.expired_uses += 1;
                false
            }
            None => false,
        }
    }

    /// Access tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.inner.lock().unwrap().issued
    }

    /// When the latest access token was issued.
    pub fn last_issued_at(&self) -> Option<Instant> {
        self.inner.lock().unwrap().issued_at.last().copied()
    }

    /// Requests refused because their token had expired.
    pub fn expired_uses(&self) -> u64 {
        self.inner.lock().unwrap().expired_uses
    }

    /// The refresh token currently accepted.
    pub fn current_refresh(&self) -> String {
        self.inner.lock().unwrap().refresh.clone()
    }

    /// Every access token issued (to search logs for them).
    pub fn all_access_tokens(&self) -> Vec<String> {
        self.inner.lock().unwrap().access.keys().cloned().collect()
    }
}

fn rand_suffix(n: u64) -> u32 {
    (n.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995) as u32
}

/// Parses an `application/x-www-form-urlencoded` body.
pub fn parse_form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}
