//! The Quo side: typed API bodies, the shared rate limiter, the retry policy and the client.

pub mod client;
pub mod grace;
pub mod limiter;
pub mod listing;
pub mod retry;
pub mod types;
