//! Shared helpers for integration tests.

pub mod activity;
pub mod fake_crm;
pub mod salesforce;
pub mod token_desk;
pub mod vendor;
pub mod vendor_run;
pub mod zoho;
