//! The Quo side: typed API bodies, the shared rate limiter, the retry policy, the contact client
//! and the dated (2026-03-30) client for calls, messages, users and webhooks.

pub mod client;
pub mod dated;
pub mod limiter;
pub mod listing;
pub mod retry;
pub mod types;
