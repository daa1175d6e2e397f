//! `quo-sync reconcile`: compares every Quo contact with our `source` against the ledger and the
//! CRM, and with `--repair` rebuilds what the ledger lost.
//!
//! It finds orphans (our contacts the ledger does not link), ledger rows whose contact is gone,
//! several contacts for one external id, and field drift. Repair adopts orphans by external id
//! (the oldest when there are several) and relinks rows whose contact was replaced; it never
//! deletes a contact, since duplicates may hold data users typed in Quo. With an empty or lost
//! ledger, repair rebuilds every Quo id, so the next cycle creates nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use tracing::{info, warn};

use crate::domain::{ExternalId, QuoContactId};
use crate::ledger::{Ledger, LedgerError, SyncedRecord};
use crate::mapping::{Mapper, MappingConfigError};
use crate::quo::client::{QuoClient, QuoError};
use crate::quo::types::Contact;
use crate::source::{ReadRequest, Source, SourceError, SourceItem};

/// Why reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The ledger.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Quo.
    #[error(transparent)]
    Quo(#[from] QuoError),
    /// The CRM.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The mapping.
    #[error(transparent)]
    Mapping(#[from] MappingConfigError),
}

/// An orphan: our contact in Quo that no ledger row links.
#[derive(Debug, Clone, Serialize)]
pub struct Orphan {
    /// Its external id (empty when Quo has none).
    pub external_id: String,
    /// The contact.
    pub quo_id: String,
    /// Whether the CRM still has the record.
    pub in_source: bool,
}

/// What reconcile found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    /// Contacts with our source in Quo.
    pub contacts_in_quo: usize,
    /// Records in the CRM.
    pub records_in_source: usize,
    /// Ledger rows linked to an existing contact.
    pub linked: usize,
    /// Our contacts without a ledger link.
    pub orphans: Vec<Orphan>,
    /// Ledger rows whose contact is gone from Quo: (external id, quo id).
    pub missing_in_quo: Vec<(String, String)>,
    /// External ids held by several contacts, with their ids (oldest first).
    pub duplicates: BTreeMap<String, Vec<String>>,
    /// Linked contacts whose managed fields differ from the agreed snapshot.
    pub drift: BTreeMap<String, Vec<String>>,
    /// Orphans adopted by `--repair`.
    pub adopted: usize,
    /// Rows relinked to a replacement contact by `--repair`.
    pub relinked: usize,
    /// Whether repair ran.
    pub repaired: bool,
}

impl ReconcileReport {
    /// The human summary.
    pub fn render(&self) -> String {
        let mut out = format!(
            "contacts in Quo (our source) {}\nrecords in the CRM           {}\nlinked in the ledger         {}\norphans                      {}\nmissing in Quo               {}\nduplicated external ids      {}\ndrifted contacts             {}\n",
            self.contacts_in_quo,
            self.records_in_source,
            self.linked,
            self.orphans.len(),
            self.missing_in_quo.len(),
            self.duplicates.len(),
            self.drift.len()
        );
        for orphan in self.orphans.iter().take(20) {
            out.push_str(&format!(
                "  orphan     {} {} (in CRM: {})\n",
                orphan.external_id, orphan.quo_id, orphan.in_source
            ));
        }
        for (external_id, quo_id) in self.missing_in_quo.iter().take(20) {
            out.push_str(&format!("  missing    {external_id} {quo_id}\n"));
        }
        for (external_id, ids) in self.duplicates.iter().take(20) {
            out.push_str(&format!(
                "  duplicate  {external_id} {} (kept, not deleted)\n",
                ids.join(" ")
            ));
        }
        for (external_id, fields) in self.drift.iter().take(20) {
            out.push_str(&format!(
                "  drift      {external_id} {}\n",
                fields.join(", ")
            ));
        }
        if self.repaired {
            out.push_str(&format!(
                "repair: adopted {}, relinked {}\n",
                self.adopted, self.relinked
            ));
        } else {
            out.push_str("read-only: run with --repair to adopt orphans and relink\n");
        }
        out
    }
}

/// Lists every contact with our source, oldest first per page order.
async fn list_ours(client: &QuoClient) -> Result<Vec<Contact>, QuoError> {
    let listing = client.list_all().await?;
    for odd in &listing.undecodable {
        tracing::warn!(event = "quo_contact_undecodable", quo_id = odd.quo_id.as_deref(), external_id = odd.external_id.as_deref(), reason = %odd.reason, "a Quo contact could not be read; left out of reconcile");
    }
    Ok(listing.contacts)
}

/// Runs reconcile; `repair` adopts and relinks.
pub async fn reconcile(
    ledger: &Ledger,
    client: &QuoClient,
    source: &Source,
    mapping: &crate::config::MappingConfig,
    repair: bool,
) -> Result<ReconcileReport, ReconcileError> {
    let defs = client.custom_fields().await?;
    let mapper = Mapper::new(mapping, &defs)?;
    let contacts = list_ours(client).await?;
    let in_source = source_ids(source).await?;
    let by_external = by_external_id(&contacts);
    let report = ReconcileReport {
        contacts_in_quo: contacts.len(),
        records_in_source: in_source.len(),
        repaired: repair,
        ..Default::default()
    };
    let rows = ledger.all_records().await?;
    let mut pass = Reconciling {
        ledger,
        mapper: &mapper,
        repair,
        report,
        linked_ids: HashSet::new(),
    };
    pass.check_rows(&rows, &contacts, &by_external).await?;
    pass.check_listed(&rows, &by_external, &in_source).await?;
    let mut report = pass.report;
    report
        .orphans
        .sort_by(|a, b| a.external_id.cmp(&b.external_id));
    report.missing_in_quo.sort();
    Ok(report)
}

/// The external ids the CRM holds (a bad record's too, when it has one).
async fn source_ids(source: &Source) -> Result<HashSet<String>, ReconcileError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let reader = source.read(ReadRequest::default(), tx);
    let collect = async {
        let mut ids = HashSet::new();
        while let Some(item) = rx.recv().await {
            match item {
                SourceItem::Record(r) => {
                    ids.insert(r.external_id.to_string());
                }
                SourceItem::Bad(b) => {
                    if let Some(id) = b.external_id {
                        ids.insert(id);
                    }
                }
            }
        }
        ids
    };
    let (read, in_source) = tokio::join!(reader, collect);
    read?;
    Ok(in_source)
}

/// Our contacts by external id (none: the empty string), oldest first.
fn by_external_id(contacts: &[Contact]) -> HashMap<String, Vec<Contact>> {
    let mut by_external: HashMap<String, Vec<Contact>> = HashMap::new();
    for contact in contacts.iter().cloned() {
        by_external
            .entry(contact.external_id.clone().unwrap_or_default())
            .or_default()
            .push(contact);
    }
    for list in by_external.values_mut() {
        list.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    }
    by_external
}

/// One reconcile run: what it found so far, and the contacts it knows linked.
struct Reconciling<'a> {
    ledger: &'a Ledger,
    mapper: &'a Mapper,
    repair: bool,
    report: ReconcileReport,
    /// Contacts a ledger row links (or that this run linked).
    linked_ids: HashSet<String>,
}

impl Reconciling<'_> {
    /// Checks each ledger row against Quo: linked (and drifted?), or missing (relinked to the
    /// oldest contact with its external id under `repair`).
    async fn check_rows(
        &mut self,
        rows: &[crate::ledger::RecordRow],
        contacts: &[Contact],
        by_external: &HashMap<String, Vec<Contact>>,
    ) -> Result<(), ReconcileError> {
        let by_id: HashMap<&str, &Contact> = contacts.iter().map(|c| (c.id.as_str(), c)).collect();
        for row in rows {
            let Some(quo_id) = &row.quo_id else { continue };
            match by_id.get(quo_id.as_str()) {
                Some(contact) => {
                    self.report.linked += 1;
                    self.linked_ids.insert(quo_id.to_string());
                    if let Some(agreed) = &row.snapshot {
                        let fields = self.mapper.from_contact(contact).changed_fields(agreed);
                        if !fields.is_empty() {
                            self.report
                                .drift
                                .insert(row.external_id.to_string(), fields);
                        }
                    }
                }
                None => {
                    let replacement = by_external
                        .get(row.external_id.as_str())
                        .and_then(|list| list.first());
                    match (self.repair, replacement) {
                        (true, Some(contact)) => {
                            adopt(self.ledger, self.mapper, &row.external_id, contact).await?;
                            self.linked_ids.insert(contact.id.clone());
                            self.report.relinked += 1;
                            info!(event = "relinked", external_id = %row.external_id, old_quo_id = %quo_id, quo_id = %contact.id, "ledger row relinked to the contact Quo has");
                        }
                        _ => self
                            .report
                            .missing_in_quo
                            .push((row.external_id.to_string(), quo_id.to_string())),
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks each external id Quo lists: duplicated (kept), or an orphan no row links
    /// (adopted under `repair` when the CRM still has the record).
    async fn check_listed(
        &mut self,
        rows: &[crate::ledger::RecordRow],
        by_external: &HashMap<String, Vec<Contact>>,
        in_source: &HashSet<String>,
    ) -> Result<(), ReconcileError> {
        let rows_by_external: HashMap<String, &crate::ledger::RecordRow> = rows
            .iter()
            .map(|row| (row.external_id.to_string(), row))
            .collect();
        for (external_id, list) in by_external {
            if list.len() > 1 && !external_id.is_empty() {
                warn!(
                    event = "duplicate_contacts",
                    external_id,
                    count = list.len(),
                    "several Quo contacts share this externalId; none is deleted"
                );
                self.report.duplicates.insert(
                    external_id.clone(),
                    list.iter().map(|c| c.id.clone()).collect(),
                );
            }
            let Some(first) = list.first() else { continue };
            if list.iter().any(|c| self.linked_ids.contains(&c.id)) {
                continue;
            }
            let row_linked = rows_by_external.get(external_id).is_some_and(|r| {
                r.quo_id
                    .as_ref()
                    .is_some_and(|q| self.linked_ids.contains(q.as_str()))
            });
            if row_linked {
                continue;
            }
            let orphan = Orphan {
                external_id: external_id.clone(),
                quo_id: first.id.clone(),
                in_source: in_source.contains(external_id),
            };
            // Only records the CRM still has: adopting one it lacks would let
            // `sync.on_source_delete = "delete"` remove a contact users may rely on.
            if self.repair
                && orphan.in_source
                && let Ok(id) = ExternalId::parse(external_id)
            {
                adopt(self.ledger, self.mapper, &id, first).await?;
                self.linked_ids.insert(first.id.clone());
                self.report.adopted += 1;
                info!(event = "adopted", external_id, quo_id = %first.id, "orphan adopted into the ledger");
                continue;
            }
            self.report.orphans.push(orphan);
        }
        Ok(())
    }
}

/// Links `external_id` to `contact`, taking Quo's copy as the agreed snapshot. The source
/// fingerprint is left empty so the next cycle compares the CRM record field by field: equal
/// costs nothing, different costs one PATCH.
async fn adopt(
    ledger: &Ledger,
    mapper: &Mapper,
    external_id: &ExternalId,
    contact: &Contact,
) -> Result<(), LedgerError> {
    let snapshot = mapper.from_contact(contact);
    let existing = ledger.record(external_id).await?;
    ledger
        .commit_synced(SyncedRecord {
            external_id,
            quo_id: &QuoContactId(contact.id.clone()),
            source_fingerprint: None,
            snapshot: &snapshot,
            contact,
            crm_updated_at: None,
        })
        .await?;
    if existing.is_some_and(|r| r.source_fingerprint.is_some()) {
        // A kept fingerprint would let the next cycle skip the comparison.
        ledger.clear_fingerprint(external_id).await?;
    }
    Ok(())
}
