//! The reverse path, Quo → CRM: edits made in the Quo app reach the CRM.
//!
//! Webhooks ([`receiver`]) and a periodic scan are only notices: the contact fetched from Quo is
//! the truth. Each notice becomes a three-way merge ([`merge`]) against the ledger's agreed
//! snapshot inside the next cycle, so one code path decides what goes where, echoes of our own
//! writes compare equal and cost nothing, and a conflict is decided once, by policy, and recorded.

pub mod absence;
pub mod doubt;
pub mod intake;
pub mod merge;
pub mod receiver;
pub mod scan;
pub mod signature;
