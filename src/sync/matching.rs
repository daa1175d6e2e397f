//! Match before create: a record about to be POSTed is first looked up among the contacts
//! already in the workspace (any phone equal in E.164, any email equal after trimming and
//! lower-casing, as `sync.match_existing` says), so day one adopts the people a team already has
//! in Quo instead of giving each of them a second contact.
//!
//! The decision needs the whole read: a contact two records match (a shared office line) is only
//! known once both were read. So a record with matches waits (`deferred`) until the read is
//! done; records with none are created at once. Then, per waiting record:
//!
//! - exactly one contact, adoptable (no `source`, or one listed in `sync.adopt_sources`), which
//!   no other record matches: **adopt** it by one PATCH (`adopt.rs`);
//! - two or more contacts (a person entered twice), a contact other records match too, or a
//!   contact of a source that is not adoptable (another integration's, or a native
//!   integration's, read-only in Quo): **held** in quarantine (stage `match`) with a reason that
//!   names the contact ids; nothing is created and nothing changed. An operator answers with
//!   `quo-sync link` (a [`MatchDecision`]), or fixes the data; every cycle evaluates it again.
//!
//! Contacts already held by a record (linked, or the target of a pending adoption) are not
//! candidates for another: a record that shares a line with a synced one gets its own contact.
//! The workspace index comes from the ledger; a cycle that needs it before the first listing
//! ever completed lists the workspace first (the scanner's pass, resumable; a dry run lists into
//! a throwaway ledger and writes nothing to the real one).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tracing::{info, warn};

use super::confirm::unconfirmed_hold;
use super::{Action, Cycle, Mode, PlannedOp, SyncError, Work};
use crate::domain::Snapshot;
use crate::ledger::workspace::{email_key, is_phone_key, key_value, phone_key};
use crate::ledger::{
    Ledger, MatchDecision, NewQuarantine, QuarantineStage, WORKSPACE_CONFIRMED, WORKSPACE_LISTED,
    WorkspaceContact,
};
use crate::reverse::scan::{Scope, scan_pass};
use crate::source::SourceRecord;

/// Who owns a contact the index holds, as far as adopting it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Owner {
    /// Made in the Quo app or by its import (no `source`): adoptable.
    App,
    /// Another API integration's (`source` set): adoptable when `sync.adopt_sources` lists it.
    Integration { source: String, adoptable: bool },
    /// A Quo native integration's: read-only in Quo, never written.
    Native(String),
}

impl Owner {
    pub(super) fn of(source: Option<&str>, adopt_sources: &[String]) -> Owner {
        match source {
            None => Owner::App,
            Some(s) if crate::config::NATIVE_SOURCES.contains(&s.to_ascii_lowercase().as_str()) => {
                Owner::Native(s.to_string())
            }
            Some(s) => Owner::Integration {
                source: s.to_string(),
                adoptable: adopt_sources.iter().any(|a| a == s),
            },
        }
    }
}

/// A contact a record matches, with the keys it matched on.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub contact: WorkspaceContact,
    pub by: Vec<String>,
    pub owner: Owner,
}

impl Candidate {
    /// `5f3a… (phone +14155550132, email ann@example.com)`.
    fn describe(&self) -> String {
        let by: Vec<String> = self
            .by
            .iter()
            .map(|k| {
                let kind = if is_phone_key(k) { "phone" } else { "email" };
                format!("{kind} {}", key_value(k))
            })
            .collect();
        format!("{} ({})", self.contact.quo_id, by.join(", "))
    }
}

/// An existing contact chosen for a record.
#[derive(Debug, Clone)]
pub(super) struct AdoptTarget {
    pub contact: WorkspaceContact,
    /// Chosen by an operator (`quo-sync link`) or by a contact made in Quo on its way to the CRM:
    /// `sync.adopt_sources` and key equality are not required.
    pub decided: bool,
}

/// Why no contact could be chosen for a record.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Held {
    /// The reason, naming the contact ids and what to do.
    pub reason: String,
    /// The contacts involved.
    pub contacts: Vec<String>,
    /// `phoneNumbers`, `emails` or both: what matched.
    pub field: Option<String>,
}

/// What matching decided for a record about to be created.
#[derive(Debug, Clone)]
pub(super) enum Matched {
    /// The record's own contact (our source and its `externalId`), not linked in the ledger (a
    /// ledger rebuilt or lost): linked as an interrupted create's contact is.
    Own(Box<WorkspaceContact>),
    /// An existing contact to adopt by one PATCH.
    Adopt(Box<AdoptTarget>),
    /// Held: nothing is created or changed.
    Hold(Held),
}

/// A record waiting for the whole read before its match is decided.
pub(super) struct Deferred {
    pub record: SourceRecord,
    pub snapshot: Snapshot,
    pub fingerprint: String,
    pub pending: bool,
    pub candidates: Vec<Candidate>,
    /// A contact chosen already (an operator's link, or the contact a CRM record was made from).
    pub decided: Option<WorkspaceContact>,
    /// The record's own contact, which a confirming listing showed (`Matched::Own`).
    pub own: Option<Box<WorkspaceContact>>,
    /// No candidate, but the listings never agreed: created by no cycle until two do.
    pub unconfirmed: bool,
}

impl Deferred {
    /// Waits only for the listing to be confirmed: with it, the record is created.
    pub(super) fn would_create(&self) -> bool {
        self.candidates.is_empty() && self.decided.is_none() && self.own.is_none()
    }
}

/// What the index shows a record about to be created.
pub(super) enum Found {
    /// Its own contact (our source and its id), which the ledger does not link.
    Own(Box<WorkspaceContact>),
    /// The contacts it may adopt (possibly none).
    Candidates(Vec<Candidate>),
}

/// The ledger that holds the workspace index this cycle: the real one, or (a dry run before the
/// first listing completed) a throwaway one the plan listed into.
pub(super) struct WorkspaceIndex {
    pub ledger: Ledger,
    /// Two listings agreed ([`crate::ledger::WORKSPACE_CONFIRMED`]), or a dry run (which never
    /// lists twice): a record with no candidate is created at once; otherwise it waits for
    /// `sync::confirm`.
    pub confirmed: bool,
    _scratch: Option<Scratch>,
}

/// A throwaway SQLite ledger, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The match keys of a snapshot, as `sync.match_existing` allows.
pub(super) fn record_keys(snapshot: &Snapshot, mode: crate::config::MatchExisting) -> Vec<String> {
    let mut keys = Vec::new();
    if mode.phones() {
        keys.extend(
            snapshot
                .phone_numbers
                .iter()
                .filter_map(|p| phone_key(&p.value)),
        );
    }
    if mode.emails() {
        keys.extend(snapshot.emails.iter().filter_map(|e| email_key(&e.value)));
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Why a record whose link an operator undid is held, and the way out.
fn held_by_operator(external_id: &str) -> Held {
    Held {
        reason: format!(
            "held by an operator (its link was undone); resolve with `quo-sync link {external_id} <contact-id>` or `quo-sync link {external_id} --create`"
        ),
        contacts: Vec::new(),
        field: None,
    }
}

impl Cycle {
    /// A record the read wants created: created now (no match), or left for [`decide_matches`]
    /// (matches to weigh), or linked to its own lost contact. `None` when nothing is dispatched
    /// now.
    pub(super) async fn match_or_create(
        &self,
        record: SourceRecord,
        snapshot: Snapshot,
        fingerprint: String,
        pending: bool,
    ) -> Result<Option<Work>, SyncError> {
        let day_one = &self.ctx.settings.day_one;
        let create = |record, snapshot, fingerprint, matched| {
            Ok(Some(Work::Create {
                record,
                snapshot,
                fingerprint,
                pending,
                matched,
            }))
        };
        if !day_one.match_existing.is_on() {
            return create(record, snapshot, fingerprint, None);
        }
        let external_id = record.external_id.as_str().to_string();
        let decided = match self.decisions.get(&external_id) {
            Some(MatchDecision::Create) => {
                return create(record, snapshot, fingerprint, None);
            }
            Some(MatchDecision::Hold) => {
                let held = held_by_operator(&external_id);
                return self
                    .hold_or_resolve(record, snapshot, fingerprint, pending, held)
                    .await;
            }
            Some(MatchDecision::Link(quo_id)) => Some(quo_id.clone()),
            None => self.export_of(&record).await,
        };
        let keys = record_keys(&snapshot, day_one.match_existing);
        if keys.is_empty() && decided.is_none() {
            return create(record, snapshot, fingerprint, None);
        }
        let Some(index) = self.workspace_index().await? else {
            return Ok(None);
        };
        let decided = match decided {
            Some(quo_id) => self.indexed_contact(&index.ledger, &quo_id).await?,
            None => None,
        };
        let Some((found, unconfirmed)) = self
            .look_up(index, &external_id, &keys, decided.is_some())
            .await?
        else {
            return Ok(None);
        };
        let candidates = match found {
            Found::Own(contact) => {
                return create(record, snapshot, fingerprint, Some(Matched::Own(contact)));
            }
            Found::Candidates(candidates) => candidates,
        };
        if candidates.is_empty() && decided.is_none() && !unconfirmed {
            return create(record, snapshot, fingerprint, None);
        }
        let unconfirmed = unconfirmed && candidates.is_empty();
        self.defer(Deferred {
            record,
            snapshot,
            fingerprint,
            pending,
            candidates,
            decided,
            own: None,
            unconfirmed,
        })
        .await;
        Ok(None)
    }

    /// What the workspace index holds for a record (`decided`: a contact was chosen already):
    /// its candidates or its own lost contact, and whether an empty answer is not confirmed
    /// yet. The first create of an unconfirmed index waits until a second listing agrees
    /// (`confirm.rs`): `None` while it waits.
    async fn look_up(
        &self,
        index: &WorkspaceIndex,
        external_id: &str,
        keys: &[String],
        decided: bool,
    ) -> Result<Option<(Found, bool)>, SyncError> {
        let found = self
            .find_candidates(&index.ledger, external_id, keys, decided)
            .await?;
        match found {
            Found::Candidates(c)
                if c.is_empty()
                    && !decided
                    && !index.confirmed
                    && self.confirmation.get() != Some(&true) =>
            {
                self.look_up_confirmed(&index.ledger, external_id, keys)
                    .await
            }
            found => Ok(Some((found, false))),
        }
    }

    /// Leaves a record for [`decide_matches`], once the whole read tells which contacts more
    /// than one record matches.
    async fn defer(&self, deferred: Deferred) {
        self.matched_contacts.lock().await.extend(
            deferred
                .decided
                .iter()
                .map(|c| c.quo_id.clone())
                .chain(deferred.candidates.iter().map(|c| c.contact.quo_id.clone())),
        );
        self.deferred.lock().await.push(deferred);
    }

    /// The contact `quo_id` as the workspace index holds it, read into the index by id when it
    /// is not there (`None`: gone from Quo).
    async fn indexed_contact(
        &self,
        index: &Ledger,
        quo_id: &str,
    ) -> Result<Option<WorkspaceContact>, SyncError> {
        match index.workspace_contact(quo_id).await? {
            Some(contact) => Ok(Some(contact)),
            None => self.read_into_index(index, quo_id).await,
        }
    }

    /// The contacts in `index` a record about to be created may adopt (by `keys`), leaving out
    /// those another record holds and ours; or its own contact, lost from the ledger (not when
    /// an operator or an export `decided` already).
    pub(super) async fn find_candidates(
        &self,
        index: &Ledger,
        external_id: &str,
        keys: &[String],
        decided: bool,
    ) -> Result<Found, SyncError> {
        let mut candidates = Vec::new();
        for (contact, by) in index.workspace_matches(keys).await? {
            let ours = contact.source.as_deref() == Some(self.ctx.client.source());
            let holder = match self.claimed.get(&contact.quo_id) {
                Some(decided_for) => Some(decided_for.clone()),
                None => self.ctx.ledger.record_holding(&contact.quo_id).await?,
            };
            if holder.as_deref().is_some_and(|h| h != external_id) {
                continue; // another record's contact (linked, being adopted, or decided)
            }
            if ours {
                if contact.external_id.as_deref() == Some(external_id) && !decided {
                    // Its own contact, which the ledger does not link: no one else can claim it.
                    return Ok(Found::Own(Box::new(contact)));
                }
                continue; // ours for another record, or a stray of a lost create (copies/)
            }
            let owner = Owner::of(
                contact.source.as_deref(),
                &self.ctx.settings.day_one.adopt_sources,
            );
            candidates.push(Candidate { contact, by, owner });
        }
        Ok(Found::Candidates(candidates))
    }

    /// The contact a record was made from (`reverse.create_in_crm`): by the id its export was
    /// given, or by the Quo id it carries in `reverse.quo_id_field`. Noted as found: its create
    /// landed.
    async fn export_of(&self, record: &SourceRecord) -> Option<String> {
        let by_id = self
            .exports_by_record
            .get(record.external_id.as_str())
            .cloned();
        let carried = self
            .ctx
            .settings
            .day_one
            .quo_id_field
            .as_ref()
            .and_then(|field| record.fields.get(field))
            .map(|v| v.trim().to_string())
            .filter(|q| self.exports.contains_key(q));
        let quo_id = by_id.or(carried)?;
        self.exports_found.lock().await.insert(quo_id.clone());
        Some(quo_id)
    }

    /// After the read: decides every waiting record, dispatching adoptions (and pending creates'
    /// lookups) and holding the rest. `complete`: the read returned every record (else records
    /// held earlier and not read now still count as matching their contacts).
    pub(super) async fn decide_matches(
        self: &Arc<Self>,
        pool: &mut super::execute::Pool,
        complete: bool,
    ) -> Result<(), SyncError> {
        let mut deferred = std::mem::take(&mut *self.deferred.lock().await);
        if deferred.is_empty() {
            return Ok(());
        }
        if self.confirmation.initialized() {
            self.refresh_candidates(&mut deferred).await?;
        }
        let matched_by = self.matched_by(&deferred, complete).await?;
        for waiting in deferred {
            if self.stop.is_cancelled() {
                break;
            }
            let matched = match &waiting.own {
                Some(own) => Some(Matched::Own(own.clone())),
                None if waiting.unconfirmed => Some(Matched::Hold(unconfirmed_hold(&waiting))),
                None if waiting.would_create() => None,
                None => Some(self.decide(&waiting, &matched_by)),
            };
            self.dispatch_decided(pool, waiting, matched).await?;
        }
        Ok(())
    }

    /// Which records match each contact: this read's waiting records, and (after a partial
    /// read) those held before that this read did not return.
    async fn matched_by(
        &self,
        deferred: &[Deferred],
        complete: bool,
    ) -> Result<HashMap<String, Vec<String>>, SyncError> {
        let mut matched_by: HashMap<String, Vec<String>> = HashMap::new();
        for waiting in deferred {
            let id = waiting.record.external_id.to_string();
            let contacts = waiting
                .decided
                .iter()
                .map(|c| &c.quo_id)
                .chain(waiting.candidates.iter().map(|c| &c.contact.quo_id));
            for quo_id in contacts {
                matched_by
                    .entry(quo_id.clone())
                    .or_default()
                    .push(id.clone());
            }
        }
        if !complete {
            let read: HashSet<String> = deferred
                .iter()
                .map(|d| d.record.external_id.to_string())
                .collect();
            for (external_id, contacts) in self.ctx.ledger.held_matches().await? {
                if read.contains(&external_id) {
                    continue;
                }
                for quo_id in contacts {
                    matched_by
                        .entry(quo_id)
                        .or_default()
                        .push(external_id.clone());
                }
            }
        }
        Ok(matched_by)
    }

    /// Sends a waiting record on as decided: created (`None`: no match, the listing
    /// confirmed), adopted or linked, or held.
    async fn dispatch_decided(
        self: &Arc<Self>,
        pool: &mut super::execute::Pool,
        waiting: Deferred,
        matched: Option<Matched>,
    ) -> Result<(), SyncError> {
        let Deferred {
            record,
            snapshot,
            fingerprint,
            pending,
            ..
        } = waiting;
        let Some(matched) = matched else {
            let work = Work::Create {
                record,
                snapshot,
                fingerprint,
                pending,
                matched: None,
            };
            return pool.dispatch(self, work).await;
        };
        match matched {
            Matched::Hold(held) => {
                if let Some(work) = self
                    .hold_or_resolve(record, snapshot, fingerprint, pending, held)
                    .await?
                {
                    pool.dispatch(self, work).await?;
                }
            }
            matched => {
                let work = Work::Create {
                    record,
                    snapshot,
                    fingerprint,
                    pending,
                    matched: Some(matched),
                };
                pool.dispatch(self, work).await?;
            }
        }
        Ok(())
    }

    /// The decision for one waiting record.
    fn decide(&self, waiting: &Deferred, matched_by: &HashMap<String, Vec<String>>) -> Matched {
        let id = waiting.record.external_id.as_str();
        if let Some(contact) = &waiting.decided {
            return Matched::Adopt(Box::new(AdoptTarget {
                contact: contact.clone(),
                decided: true,
            }));
        }
        let field = matched_fields(&waiting.candidates);
        let ids: Vec<String> = waiting
            .candidates
            .iter()
            .map(|c| c.contact.quo_id.clone())
            .collect();
        let resolve = format!(
            "resolve with `quo-sync link {id} <contact-id>` or `quo-sync link {id} --create`, or fix the data"
        );
        let held = |reason: String| {
            Matched::Hold(Held {
                reason,
                contacts: ids.clone(),
                field: field.clone(),
            })
        };
        if waiting.candidates.len() > 1 {
            let described: Vec<String> =
                waiting.candidates.iter().map(Candidate::describe).collect();
            return held(format!(
                "matches {} contacts already in Quo: {} (a person entered twice?); {resolve}",
                waiting.candidates.len(),
                described.join(", ")
            ));
        }
        let candidate = &waiting.candidates[0];
        let others: Vec<&String> = matched_by
            .get(&candidate.contact.quo_id)
            .into_iter()
            .flatten()
            .filter(|other| other.as_str() != id)
            .collect();
        match &candidate.owner {
            Owner::Native(source) => held(format!(
                "matches contact {}, which Quo's native {source} integration owns (read-only in Quo, never written); {resolve}",
                candidate.describe()
            )),
            Owner::Integration {
                source,
                adoptable: false,
            } => held(format!(
                "matches contact {} of source {source:?}, which sync.adopt_sources does not list; add it there to adopt such contacts, or {resolve}",
                candidate.describe()
            )),
            _ if !others.is_empty() => {
                let mut records: Vec<&str> = others.iter().map(|s| s.as_str()).collect();
                records.push(id);
                records.sort_unstable();
                records.dedup();
                held(format!(
                    "contact {} is matched by {} records: {} (a shared line?); {resolve}",
                    candidate.describe(),
                    records.len(),
                    records.join(", ")
                ))
            }
            _ => Matched::Adopt(Box::new(AdoptTarget {
                contact: candidate.contact.clone(),
                decided: false,
            })),
        }
    }

    /// Holds a record; one whose earlier create is still pending goes to a worker first, whose
    /// lookup may find the contact that create made (then it is linked, not held).
    async fn hold_or_resolve(
        &self,
        record: SourceRecord,
        snapshot: Snapshot,
        fingerprint: String,
        pending: bool,
        held: Held,
    ) -> Result<Option<Work>, SyncError> {
        let pending = pending
            || !self
                .ctx
                .ledger
                .unconfirmed_for(record.external_id.as_str())
                .await?
                .is_empty();
        if pending {
            return Ok(Some(Work::Create {
                record,
                snapshot,
                fingerprint,
                pending,
                matched: Some(Matched::Hold(held)),
            }));
        }
        self.hold(&record, &held).await?;
        Ok(None)
    }

    /// Quarantines a record held before create (stage `match`), naming its contacts.
    pub(super) async fn hold(
        &self,
        record: &SourceRecord,
        held: &Held,
    ) -> Result<(), crate::ledger::LedgerError> {
        let external_id = record.external_id.as_str();
        warn!(event = "record_held", external_id, contacts = ?held.contacts, reason = %held.reason, "record held: no contact can be chosen without guessing; nothing created or changed");
        metrics::counter!("quo_sync_records_total", "outcome" => "held").increment(1);
        self.ctx.progress.held_match(super::HeldBack {
            location: record.location.clone(),
            external_id: Some(external_id.to_string()),
            field: None,
            value: None,
            reason: held.reason.clone(),
        });
        if self.mode == Mode::Apply {
            let value = held.contacts.join(" ");
            self.ctx
                .ledger
                .quarantine(
                    NewQuarantine {
                        external_id: Some(external_id),
                        location: &record.location,
                        stage: QuarantineStage::Match,
                        field: held.field.as_deref(),
                        value: (!value.is_empty()).then_some(value.as_str()),
                        reason: &held.reason,
                        raw: Some(&serde_json::to_string(&record.fields).unwrap_or_default()),
                    },
                    &self.run_id,
                )
                .await?;
        }
        self.counts.lock().await.held += 1;
        let mut op = PlannedOp::new(external_id, Action::Held).with_reason(&held.reason);
        if let [only] = held.contacts.as_slice() {
            op = op.with_quo_id(only);
        }
        self.operations.lock().await.push(op);
        Ok(())
    }

    /// The workspace index, listing the workspace first when no listing ever completed (once
    /// per cycle; `None` when shutdown cut the listing short).
    pub(super) async fn workspace_index(&self) -> Result<Option<&WorkspaceIndex>, SyncError> {
        let index = self
            .workspace
            .get_or_try_init(|| async {
                // A dry run never lists twice: it plans on the listing it has.
                let confirmed = self.mode == Mode::DryRun
                    || self.ctx.ledger.meta(WORKSPACE_CONFIRMED).await?.is_some();
                if self.ctx.ledger.meta(WORKSPACE_LISTED).await?.is_some() {
                    return Ok::<_, SyncError>(WorkspaceIndex {
                        ledger: self.ctx.ledger.clone(),
                        confirmed,
                        _scratch: None,
                    });
                }
                match self.mode {
                    Mode::Apply => {
                        let _pass = self.ctx.scan_gate.lock().await;
                        self.list_workspace(&self.ctx.ledger).await?;
                        Ok(WorkspaceIndex {
                            ledger: self.ctx.ledger.clone(),
                            confirmed,
                            _scratch: None,
                        })
                    }
                    Mode::DryRun => {
                        let path = std::env::temp_dir()
                            .join(format!("quo-sync-plan-{}.db", uuid::Uuid::new_v4()));
                        let scratch = Scratch(path.clone());
                        let ledger = Ledger::open(&path).await?;
                        self.list_workspace(&ledger).await?;
                        Ok(WorkspaceIndex {
                            ledger,
                            confirmed,
                            _scratch: Some(scratch),
                        })
                    }
                }
            })
            .await?;
        Ok((!self.stop.is_cancelled()).then_some(index))
    }

    /// Lists the workspace into `ledger`'s index to the end (resuming a pass cut short), then
    /// reads the contacts webhooks announced meanwhile: a contact made in the app while the
    /// listing ran may sit on a page already listed.
    async fn list_workspace(&self, ledger: &Ledger) -> Result<(), SyncError> {
        if ledger.meta(WORKSPACE_LISTED).await?.is_some() {
            return Ok(()); // the scanner finished a pass while this cycle waited for it
        }
        info!(
            event = "workspace_listing",
            "listing every contact already in Quo before the first creates (50 a page, resumable)"
        );
        self.listing_pass(ledger).await?;
        if self.mode == Mode::Apply {
            for event in ledger.inbox_pending(10_000).await? {
                let Some(quo_id) = event.quo_id else { continue };
                if ledger.record_by_quo_id(&quo_id).await?.is_none() {
                    crate::reverse::intake::index_contact(ledger, &self.ctx.client, &quo_id)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// One complete pass over the workspace into `ledger`'s index (resuming one cut short;
    /// restarted up to three times when Quo refuses its page tokens). The displays show it as
    /// what it is: a pass over Quo, before the read goes on.
    pub(super) async fn listing_pass(&self, ledger: &Ledger) -> Result<(), SyncError> {
        let shown = &self.ctx.progress;
        shown.enter(super::CyclePhase::Intake);
        let mut restarts = 0;
        loop {
            let progress = scan_pass(
                ledger,
                &self.ctx.client,
                Scope::Workspace,
                None,
                &self.stop,
                self.ctx.settings.delete_guard(),
                |_| shown.page_scanned(),
            )
            .await;
            let progress = match progress {
                Ok(progress) => {
                    self.counts.lock().await.listing_pages += u64::from(progress.pages);
                    progress
                }
                Err(e) => {
                    shown.enter(super::CyclePhase::Reading);
                    return Err(e.into());
                }
            };
            if progress.complete || self.stop.is_cancelled() {
                break;
            }
            restarts += 1;
            if restarts > 3 {
                shown.enter(super::CyclePhase::Reading);
                return Err(SyncError::Intake(crate::reverse::intake::IntakeError::Quo(
                    crate::quo::client::QuoError::Paging {
                        route: "GET /v1/contacts",
                        token: "(refused repeatedly)".into(),
                    },
                )));
            }
        }
        shown.enter(super::CyclePhase::Reading);
        Ok(())
    }

    /// Reads a contact an operator named into the index (it may have been made since).
    async fn read_into_index(
        &self,
        index: &Ledger,
        quo_id: &str,
    ) -> Result<Option<WorkspaceContact>, SyncError> {
        crate::reverse::intake::index_contact(index, &self.ctx.client, quo_id).await?;
        Ok(index.workspace_contact(quo_id).await?)
    }
}

/// `phoneNumbers`, `emails` or `phoneNumbers,emails`: what the candidates matched on.
fn matched_fields(candidates: &[Candidate]) -> Option<String> {
    let mut fields: BTreeMap<&str, ()> = BTreeMap::new();
    for key in candidates.iter().flat_map(|c| &c.by) {
        fields.insert(
            if is_phone_key(key) {
                crate::domain::field::PHONE_NUMBERS
            } else {
                crate::domain::field::EMAILS
            },
            (),
        );
    }
    (!fields.is_empty()).then(|| fields.into_keys().collect::<Vec<_>>().join(","))
}
