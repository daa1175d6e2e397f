//! The OAuth2 token endpoint shared by the vendor fakes: checks the client, the grant and the
//! refresh token, hands out access tokens that expire after `lifetime`, optionally rotates the
//! refresh token (the old one stops working), and counts what it served.
//!
//! Like vendors that detect refresh-token reuse (RFC 9700 §4.14.2), it can revoke the whole
//! token family when a rotated-away refresh token comes back (`reuse_detection`). Tests can
//! slow every grant down (`set_delay`, so two clients' refreshes overlap), stall the next ones
//! past a client's timeout without processing them (`stall_next`), answer the next ones with
//! an error of their choice (`answer_next`), rotate the token as another client would
//! (`rotate_elsewhere`), expire every access token at once (`expire_all`), and hold every
//! grant until the test releases it (`hold`, `release`), so a test acts while a grant is
//! known to be in flight, without betting on a delay.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// A rotated-away refresh token presented again revokes the family: every refresh token
    /// of this client is refused from then on.
    pub reuse_detection: bool,
    inner: Mutex<DeskInner>,
    /// `true` while grants are held (`hold`): they wait, unprocessed, for `release`.
    held: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct DeskInner {
    refresh: String,
    access: HashMap<String, Instant>,
    issued: u64,
    /// When each access token was issued, in order.
    issued_at: Vec<Instant>,
    expired_uses: u64,
    /// Refresh tokens rotated away.
    retired: HashSet<String>,
    /// Grants that presented a retired refresh token.
    stale_presented: u64,
    /// Reuse was detected: the family is revoked.
    revoked: bool,
    /// Token requests received (stalled and injected ones included).
    received: u64,
    delay: Duration,
    /// Stalls and answers that fired.
    injected_fired: u64,
    stalls: VecDeque<Duration>,
    answers: VecDeque<(u16, serde_json::Value)>,
}

/// What the endpoint does with a request before looking at it.
pub enum Before {
    /// Wait this long, then process it.
    Delay(Duration),
    /// Wait this long, then answer 503 without processing it (the client has timed out).
    Stall(Duration),
    /// Answer this without processing it.
    Answer(u16, serde_json::Value),
}

impl TokenDesk {
    pub fn new(client_id: &str, client_secret: &str, refresh: &str, lifetime: Duration) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            lifetime,
            rotate: false,
            reuse_detection: false,
            inner: Mutex::new(DeskInner {
                refresh: refresh.into(),
                ..DeskInner::default()
            }),
            held: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Called by the fakes when a token request arrives, before [`TokenDesk::grant`].
    pub fn before(&self) -> Before {
        let mut inner = self.inner.lock().unwrap();
        inner.received += 1;
        if let Some(stall) = inner.stalls.pop_front() {
            inner.injected_fired += 1;
            return Before::Stall(stall);
        }
        if let Some((status, body)) = inner.answers.pop_front() {
            inner.injected_fired += 1;
            return Before::Answer(status, body);
        }
        Before::Delay(inner.delay)
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
        let presented = get("refresh_token");
        if presented != inner.refresh {
            if inner.retired.contains(presented) {
                inner.stale_presented += 1;
                if self.reuse_detection {
                    inner.revoked = true;
                }
            }
            return Grant::Refused("invalid_grant");
        }
        if inner.revoked {
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
            let old = std::mem::replace(&mut inner.refresh, next.clone());
            inner.retired.insert(old);
            Some(next)
        } else {
            None
        };
        Grant::Token { access, refresh }
    }

    /// Rotates the refresh token as a grant to another client would; returns the new one.
    pub fn rotate_elsewhere(&self) -> String {
        let mut inner = self.inner.lock().unwrap();
        inner.issued += 1;
        let next = format!("rt-elsewhere-{}", inner.issued);
        let old = std::mem::replace(&mut inner.refresh, next.clone());
        inner.retired.insert(old);
        next
    }

    /// Every access token issued so far expires now (as its lifetime running out would), so a
    /// test exercises expiry without racing a short lifetime against the machine's speed.
    pub fn expire_all(&self) {
        let now = Instant::now();
        for until in self.inner.lock().unwrap().access.values_mut() {
            *until = now;
        }
    }

    /// Every later grant waits `delay` before it is processed.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.lock().unwrap().delay = delay;
    }

    /// Every later grant (after its delay) waits, unprocessed, until [`TokenDesk::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Lets held grants (and later ones) be processed.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Returns once grants are not held (at once unless [`TokenDesk::hold`] is in force).
    pub async fn released(&self) {
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|held| !held).await;
    }

    /// The next `count` token requests wait `stall`, then get 503 without being processed.
    pub fn stall_next(&self, count: usize, stall: Duration) {
        let mut inner = self.inner.lock().unwrap();
        inner.stalls.extend(std::iter::repeat_n(stall, count));
    }

    /// The next token request is answered `status` with `body`, without being processed.
    pub fn answer_next(&self, status: u16, body: serde_json::Value) {
        self.inner.lock().unwrap().answers.push_back((status, body));
    }

    /// Stalls and answers (`stall_next`, `answer_next`) that fired so far.
    pub fn injected_fired(&self) -> u64 {
        self.inner.lock().unwrap().injected_fired
    }

    /// Disarms the stalls and answers not yet fired, and the delay.
    pub fn calm(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.stalls.clear();
        inner.answers.clear();
        inner.delay = Duration::ZERO;
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

    /// Token requests received so far.
    pub fn received(&self) -> u64 {
        self.inner.lock().unwrap().received
    }

    /// When the latest access token was issued.
    pub fn last_issued_at(&self) -> Option<Instant> {
        self.inner.lock().unwrap().issued_at.last().copied()
    }

    /// Requests refused because their token had expired.
    pub fn expired_uses(&self) -> u64 {
        self.inner.lock().unwrap().expired_uses
    }

    /// Grants that presented a refresh token already rotated away.
    pub fn stale_presented(&self) -> u64 {
        self.inner.lock().unwrap().stale_presented
    }

    /// Whether reuse detection revoked the token family.
    pub fn revoked(&self) -> bool {
        self.inner.lock().unwrap().revoked
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
