//! Shared helpers for integration tests.

pub mod activity;
pub mod crm_objects;
pub mod fake_crm;
pub mod hubspot;
pub mod pipedrive;
pub mod salesforce;
pub mod salesforce_tasks;
pub mod token_crm;
pub mod token_desk;
pub mod vendor;
pub mod vendor_run;
pub mod zoho;
pub mod zoho_calls;
