//! quo-sync keeps a CRM's contacts and a Quo workspace's contacts in agreement, both ways.
//!
//! The pieces, in the order a record travels: a [`source`] adapter reads CRM records, the
//! [`mapping`] turns each into a canonical [`domain::Snapshot`], the [`sync`] planner compares it
//! with the [`ledger`] (the product's memory of Quo ids and agreed snapshots), and the [`quo`]
//! client pushes the difference through one shared rate limiter. The [`reverse`] path brings
//! edits made in Quo back. The [`sandbox`] is a faithful local Quo for tests and demos.

/// The git commit this binary was built from (`unknown` outside a checkout).
pub const GIT_COMMIT: &str = env!("QUO_SYNC_GIT_COMMIT");

/// `--version`: the package version and the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("QUO_SYNC_GIT_COMMIT"),
    ")"
);

pub mod activity;
pub mod app;
pub mod config;
pub mod domain;
pub mod expr;
pub mod ledger;
pub mod mapping;
pub mod ops;
pub mod quo;
pub mod reverse;
pub mod sandbox;
pub mod secret_headers;
pub mod source;
pub mod sync;
pub mod telemetry;
