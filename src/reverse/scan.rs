//! The reverse scan: lists every contact with our `source`, page by page, and turns what it
//! finds into notices in the inbox, the same way a webhook delivery does. The cycle then treats
//! both alike (the contact fetched by id is the truth), so the scan needs no path of its own.
//!
//! Why notices and not direct changes: a scan of a large workspace is long (100,000 contacts are
//! 2,000 requests, 200 s at Quo's 10/s). Written as notices, its work survives a restart (the
//! page token and a per-record `scan_seen` mark are in the ledger, so a pass resumes instead of
//! starting over), and in the service it runs beside the cycles, at a bounded share of the rate
//! limit while writes wait ([`crate::quo::limiter`]), instead of in front of every cycle.
//!
//! Absence is not deletion: a linked contact that a complete pass did not list becomes a
//! "missing" notice, and only the fetch by id that follows (a 404) can call it deleted. A contact
//! linked while the pass ran (an initial load racing it) waits for the next pass instead. A pass
//! that leaves more linked contacts unlisted than the deletion guard allows (a key for another
//! workspace lists nothing) notes none of them (`reverse::absence`).
//!
//! With `sync.match_existing` or `reverse.create_in_crm` on, a pass lists the whole workspace
//! ([`Scope::Workspace`]) instead of our `source` only: every page also goes into the ledger's
//! workspace index (`ledger::workspace`), which is how the index of existing contacts is built
//! the first time (before the first creates) and kept fresh after; our own contacts get their
//! notices exactly as before.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::absence::DeleteGuard;
use super::intake::IntakeError;
use crate::ledger::{Ledger, NewInboxEvent, WORKSPACE_LISTED};
use crate::quo::client::{ContactList, QuoClient, QuoError};
use crate::quo::grace::{AfterRefusal, AuthGrace};

/// Meta key: when the last complete pass ended.
pub const LAST_SCAN: &str = "reverse.last_scan_at";
/// Meta key: the running pass's id (marks `records.scan_seen`).
const SCAN_ID: &str = "reverse.scan_id";
/// Meta key: the running pass's next page token.
const SCAN_TOKEN: &str = "reverse.scan_token";
/// Meta key: when the running pass started. A contact created after it, or listed before the
/// ledger linked it (creates racing the pass), is not called missing until the next pass.
const SCAN_STARTED: &str = "reverse.scan_started_at";
/// Meta key: the scope of the running pass (a pass started in one scope is not resumed in the
/// other: its page token belongs to another listing).
const SCAN_SCOPE: &str = "reverse.scan_scope";
/// Event type of a "listed nowhere in a complete pass" notice.
pub const MISSING: &str = "contact.missing_from_scan";
/// Event type of an "unlinked contact carrying the externalId of an unconfirmed create" notice
/// (payload `{"externalId": …}`): most likely the contact a POST whose answer we lost made.
pub const UNLINKED_COPY: &str = "contact.unlinked_copy";

/// What a pass lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The contacts with our `source`.
    Ours,
    /// Every contact of the workspace, each into the workspace index; ours as in [`Scope::Ours`].
    Workspace,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Ours => "ours",
            Scope::Workspace => "workspace",
        }
    }

    async fn page(self, client: &QuoClient, token: Option<&str>) -> Result<ContactList, QuoError> {
        match self {
            Scope::Ours => client.list_page(token).await,
            Scope::Workspace => client.list_workspace_page(token).await,
        }
    }
}

/// What one call to [`scan`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanProgress {
    /// Pages listed.
    pub pages: u32,
    /// Contacts listed.
    pub contacts: u64,
    /// Notices written to the inbox (changed, unreadable or missing contacts).
    pub notices: u64,
    /// Our contacts the ledger does not know (see `reconcile`).
    pub orphans: u64,
    /// Whether the pass completed.
    pub complete: bool,
    /// The pass left more linked contacts unlisted than the deletion guard allows, and noted
    /// none of them missing (`mass_delete_refused`).
    pub missing_refused: bool,
}

/// Whether a scan is due: never ran, or the last complete pass is older than `interval`, or a
/// pass is in progress.
pub async fn due(ledger: &Ledger, interval: Duration) -> Result<bool, IntakeError> {
    if ledger.meta(SCAN_TOKEN).await?.is_some() {
        return Ok(true);
    }
    Ok(match ledger.meta_time(LAST_SCAN).await? {
        None => true,
        Some(last) => {
            chrono::Utc::now()
                .signed_duration_since(last)
                .to_std()
                .unwrap_or_default()
                >= interval
        }
    })
}

/// Lists pages (all of them, or at most `max_pages`) from where the pass stands, writing
/// notices; a pass that leaves more linked contacts unlisted than `guard` allows notes none of
/// them missing.
pub async fn scan(
    ledger: &Ledger,
    client: &QuoClient,
    max_pages: Option<u32>,
    stop: &CancellationToken,
    guard: DeleteGuard,
) -> Result<ScanProgress, IntakeError> {
    scan_with(ledger, client, max_pages, stop, guard, |_| {}).await
}

/// [`scan`], calling `on_page` with each page's own counts once its notices are stored.
pub async fn scan_with(
    ledger: &Ledger,
    client: &QuoClient,
    max_pages: Option<u32>,
    stop: &CancellationToken,
    guard: DeleteGuard,
    on_page: impl FnMut(&ScanProgress),
) -> Result<ScanProgress, IntakeError> {
    scan_pass(ledger, client, Scope::Ours, max_pages, stop, guard, on_page).await
}

/// Lists pages of `scope` (all of them, or at most `max_pages`) from where the pass stands,
/// writing notices (and, for [`Scope::Workspace`], every contact into the workspace index), and
/// calling `on_page` with each page's own counts once they are stored.
///
/// The next page is requested while this one's notices are written (its token is in the
/// answer), so the ledger's time hides behind Quo's round trip instead of adding to it; the
/// token is stored only after the notices, so a restart never skips a page.
pub async fn scan_pass(
    ledger: &Ledger,
    client: &QuoClient,
    scope: Scope,
    max_pages: Option<u32>,
    stop: &CancellationToken,
    guard: DeleteGuard,
    mut on_page: impl FnMut(&ScanProgress),
) -> Result<ScanProgress, IntakeError> {
    let started = std::time::Instant::now();
    let mut progress = ScanProgress::default();
    let linked = ledger.linked_count().await?;
    if scope == Scope::Ours && linked == 0 {
        // Nothing linked yet (a first load): a pass could only count orphans, and in a cycle it
        // would delay the first create by a whole listing.
        finish_pass(ledger, client, scope).await?;
        progress.complete = true;
        return Ok(progress);
    }
    let mut pass = RunningPass::begin(ledger, scope, guard, linked.max(0) as usize).await?;
    let ours = client.source().to_string();
    let more_allowed = |pages: u32| !stop.is_cancelled() && max_pages.is_none_or(|m| pages < m);
    let mut token = ledger.meta(SCAN_TOKEN).await?;
    let mut tokens = crate::quo::client::PageTokens::default();
    if !more_allowed(0) {
        return Ok(progress);
    }
    let mut answer = scope.page(client, token.as_deref()).await;
    loop {
        let Some(mut page) = page_or_restart(ledger, answer, token.is_some()).await? else {
            return Ok(progress);
        };
        if scope == Scope::Workspace {
            ledger.workspace_put(&page.contacts).await?;
        }
        let next_page_token = page.next_page_token.take();
        let listed = ListedPage::of(&page, &ours);
        let Some(next) = next_page_token else {
            let slice = pass.last_page(ledger, client, &listed).await?;
            on_page(&slice);
            progress.add(&slice);
            progress.complete = true;
            log_pass(&progress, started.elapsed().as_secs_f64());
            return Ok(progress);
        };
        if let Err(e) = tokens.next("GET /v1/contacts", &next) {
            restart_pass(ledger).await?;
            return Err(e.into());
        }
        let store = async {
            let noted = listed.note(ledger, &pass.scan_id).await?;
            ledger.set_meta(SCAN_TOKEN, &next).await?;
            Ok::<_, IntakeError>(noted)
        };
        let prefetch = more_allowed(progress.pages + 1);
        let (noted, next_answer) = if prefetch {
            let (noted, next_answer) = tokio::join!(store, scope.page(client, Some(&next)));
            (noted, Some(next_answer))
        } else {
            (store.await, None)
        };
        let (notices, orphans) = noted?;
        let slice = ScanProgress::page(listed.listed.len(), notices, orphans.len());
        pass.unlinked_when_listed.extend(orphans);
        on_page(&slice);
        progress.add(&slice);
        token = Some(next);
        match next_answer {
            Some(next_answer) if !stop.is_cancelled() => answer = next_answer,
            // Stopped or out of pages: the next call starts from the stored token.
            _ => return Ok(progress),
        }
    }
}

/// The listed page, or `None` when Quo refused the saved page token (`resumed`: the page was
/// asked with one): it expired or was refused, and the pass starts over rather than stall.
async fn page_or_restart(
    ledger: &Ledger,
    answer: Result<ContactList, QuoError>,
    resumed: bool,
) -> Result<Option<ContactList>, IntakeError> {
    match answer {
        Ok(page) => Ok(Some(page)),
        Err(QuoError::Rejected { status: 400, .. }) if resumed => {
            warn!(
                event = "scan_restarted",
                "Quo refused the saved page token; the scan starts over"
            );
            restart_pass(ledger).await?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The pass one call to [`scan_pass`] continues (or starts).
struct RunningPass {
    scope: Scope,
    /// The pass's id (marks `records.scan_seen`).
    scan_id: String,
    guard: DeleteGuard,
    /// Linked contacts when the call began (what the deletion guard weighs the unlisted against).
    linked: usize,
    /// Listed before the ledger linked them (a create racing the pass): not missing at the end.
    unlinked_when_listed: HashSet<String>,
}

impl RunningPass {
    /// Resumes the stored pass of `scope`, or starts one (a pass of the other scope cut short
    /// is dropped: its page token belongs to another listing).
    async fn begin(
        ledger: &Ledger,
        scope: Scope,
        guard: DeleteGuard,
        linked: usize,
    ) -> Result<Self, IntakeError> {
        if ledger
            .meta(SCAN_SCOPE)
            .await?
            .is_some_and(|stored| stored != scope.as_str())
        {
            restart_pass(ledger).await?;
        }
        let scan_id = match ledger.meta(SCAN_ID).await? {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                ledger
                    .set_meta(SCAN_STARTED, &chrono::Utc::now().to_rfc3339())
                    .await?;
                ledger.set_meta(SCAN_SCOPE, scope.as_str()).await?;
                ledger.set_meta(SCAN_ID, &id).await?;
                id
            }
        };
        Ok(RunningPass {
            scope,
            scan_id,
            guard,
            linked,
            unlinked_when_listed: HashSet::new(),
        })
    }

    /// Notes the last page of a complete pass, then what the whole pass tells: the linked
    /// contacts it did not list, the unconfirmed creates it found nothing of; and ends it.
    /// Returns the page's slice of the pass.
    async fn last_page(
        &mut self,
        ledger: &Ledger,
        client: &QuoClient,
        page: &ListedPage<'_>,
    ) -> Result<ScanProgress, IntakeError> {
        let (notices, orphans) = page.note(ledger, &self.scan_id).await?;
        let mut slice = ScanProgress::page(page.listed.len(), notices, orphans.len());
        self.unlinked_when_listed.extend(orphans);
        let (missing, refused) = note_missing(
            ledger,
            &self.scan_id,
            &self.unlinked_when_listed,
            self.guard,
            self.linked,
        )
        .await?;
        slice.notices += missing;
        slice.missing_refused = refused;
        count_unconfirmed_misses(ledger).await?;
        finish_pass(ledger, client, self.scope).await?;
        Ok(slice)
    }
}

/// One listed page, sorted for the notices it yields.
struct ListedPage<'a> {
    /// Every listed contact with its `updatedAt`; an undecodable contact is listed too (with
    /// none: the fetch by id sets it apart).
    listed: Vec<(String, Option<String>)>,
    /// Contacts carrying our source (unlinked ones may be ours): each one's externalId and
    /// creation time (a copy made after every unconfirmed create of its record is not theirs).
    external_ids: HashMap<String, (String, Option<String>)>,
    /// Contacts carrying another source: the workspace's, never orphans of ours.
    not_ours: HashSet<&'a str>,
}

impl<'a> ListedPage<'a> {
    fn of(page: &'a ContactList, ours: &str) -> Self {
        let external_ids = page
            .contacts
            .iter()
            .filter(|c| c.source.as_deref() == Some(ours))
            .filter_map(|c| Some((c.id.clone(), (c.external_id.clone()?, c.created_at.clone()))))
            .collect();
        let not_ours = page
            .contacts
            .iter()
            .filter(|c| c.source.as_deref() != Some(ours))
            .map(|c| c.id.as_str())
            .collect();
        let mut listed: Vec<(String, Option<String>)> = page
            .contacts
            .iter()
            .map(|c| (c.id.clone(), c.updated_at.clone()))
            .collect();
        listed.extend(
            page.undecodable
                .iter()
                .filter_map(|u| u.quo_id.clone().map(|id| (id, None))),
        );
        ListedPage {
            listed,
            external_ids,
            not_ours,
        }
    }

    /// Marks the page's linked contacts listed and writes its notices (changed contacts, and
    /// copies an unconfirmed create may have made). Returns the notices stored and our listed
    /// contacts the ledger does not link.
    async fn note(
        &self,
        ledger: &Ledger,
        scan_id: &str,
    ) -> Result<(u64, Vec<String>), IntakeError> {
        let (notices, orphans) = note_page(ledger, scan_id, &self.listed).await?;
        let orphans = only_ours(orphans, &self.not_ours);
        let copies = note_copies(ledger, scan_id, &orphans, &self.external_ids).await?;
        Ok((notices + copies, orphans))
    }
}

/// Marks one page's linked contacts as listed and writes a notice for each whose `updatedAt`
/// moved (or is unknown). Returns the notices and the listed contacts the ledger does not link.
async fn note_page(
    ledger: &Ledger,
    scan_id: &str,
    listed: &[(String, Option<String>)],
) -> Result<(u64, Vec<String>), IntakeError> {
    if listed.is_empty() {
        return Ok((0, Vec::new()));
    }
    let ids: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    let known: std::collections::HashMap<String, Option<String>> = ledger
        .scan_mark_seen(scan_id, &ids)
        .await?
        .into_iter()
        .collect();
    let (mut notices, mut orphans) = (0, Vec::new());
    for (quo_id, updated_at) in listed {
        let Some(stored) = known.get(quo_id) else {
            orphans.push(quo_id.clone());
            continue;
        };
        if updated_at.is_some() && updated_at == stored {
            continue;
        }
        let stamp = updated_at.as_deref().unwrap_or("unknown");
        let event_id = format!("scan:{quo_id}:{stamp}");
        let payload = serde_json::json!({"data": {"object": {"id": quo_id, "updatedAt": updated_at}}, "source": "scan"});
        let stored_new = ledger
            .inbox_put(NewInboxEvent {
                event_id: &event_id,
                event_type: "contact.updated",
                quo_id: Some(quo_id),
                payload: &payload.to_string(),
            })
            .await?;
        notices += u64::from(stored_new);
    }
    Ok((notices, orphans))
}

/// A notice for each unlinked contact carrying the externalId of an unconfirmed create (see
/// `ledger::unconfirmed`), marking those entries seen. A contact created after every entry of
/// its record was written was not made by their POSTs (a second deployment sharing our
/// `source`, say): it is left alone and does not count as seen, so the entries are still ruled
/// out by passes that list nothing of theirs. Returns the notices stored.
async fn note_copies(
    ledger: &Ledger,
    scan_id: &str,
    orphans: &[String],
    external_ids: &std::collections::HashMap<String, (String, Option<String>)>,
) -> Result<u64, IntakeError> {
    let candidates: Vec<(&String, &String, Option<&str>)> = orphans
        .iter()
        .filter_map(|quo_id| {
            let (external_id, created_at) = external_ids.get(quo_id)?;
            Some((quo_id, external_id, created_at.as_deref()))
        })
        .collect();
    if candidates.is_empty() {
        return Ok(0);
    }
    let unconfirmed = ledger.unconfirmed_external_ids().await?;
    let (mut notices, mut found) = (0, Vec::new());
    for (quo_id, external_id, created_at) in candidates {
        if !unconfirmed.contains(external_id) {
            continue;
        }
        let entries = ledger.unconfirmed_for(external_id).await?;
        if !crate::ledger::made_in_time(&entries, created_at) {
            info!(
                event = "copy_not_ours",
                external_id,
                quo_id,
                created_at,
                "an unlinked contact with our source and this externalId was made after every unconfirmed create of the record; left alone, and it does not keep them from being ruled out"
            );
            continue;
        }
        // One notice per pass: a copy left alone this pass (its record still pending) is
        // noticed again by the next.
        let event_id = format!("scan:{scan_id}:copy:{quo_id}");
        let payload = serde_json::json!({"externalId": external_id, "source": "scan"});
        let stored = ledger
            .inbox_put(NewInboxEvent {
                event_id: &event_id,
                event_type: UNLINKED_COPY,
                quo_id: Some(quo_id),
                payload: &payload.to_string(),
            })
            .await?;
        notices += u64::from(stored);
        ledger.unconfirmed_seen(external_id).await?;
        found.push(external_id.clone());
    }
    if !found.is_empty() {
        info!(
            event = "scan_unlinked_copies",
            contacts = found.len(),
            "contacts an unconfirmed create may have made are listed; each is resolved against what that POST sent"
        );
    }
    Ok(notices)
}

/// At the end of a complete pass: counts it against the unconfirmed creates it found no
/// contact for, and says which it rules out.
async fn count_unconfirmed_misses(ledger: &Ledger) -> Result<(), IntakeError> {
    let Some(started) = ledger.meta_time(SCAN_STARTED).await? else {
        return Ok(());
    };
    for external_id in ledger.unconfirmed_pass_finished(started).await? {
        info!(
            event = "unconfirmed_create_ruled_out",
            external_id,
            passes = crate::ledger::PASSES_TO_RULE_OUT,
            "no contact for this record's unconfirmed create was listed in the scans since; it is ruled out"
        );
    }
    Ok(())
}

/// At the end of a complete pass: a notice for every linked contact it did not list, or none
/// when they are more than `guard` allows out of `linked` (a key for another workspace lists
/// nothing). Returns the notices stored and whether the guard refused.
async fn note_missing(
    ledger: &Ledger,
    scan_id: &str,
    unlinked_when_listed: &std::collections::HashSet<String>,
    guard: DeleteGuard,
    linked: usize,
) -> Result<(u64, bool), IntakeError> {
    let unseen = ledger.scan_unseen(scan_id).await?;
    let started = ledger.meta_time(SCAN_STARTED).await?;
    let mut missing = Vec::with_capacity(unseen.len());
    let mut deferred = 0u64;
    for quo_id in unseen {
        let late = match started {
            _ if unlinked_when_listed.contains(&quo_id) => true,
            Some(started) => created_after(ledger, &quo_id, started).await?,
            None => false,
        };
        if late {
            deferred += 1;
        } else {
            missing.push(quo_id);
        }
    }
    if deferred > 0 {
        info!(
            event = "scan_missing_deferred",
            contacts = deferred,
            "contacts linked while the pass ran are not called missing until the next pass"
        );
    }
    if !missing.is_empty() && !guard.permits("quo_contacts_unlisted", missing.len(), linked) {
        return Ok((0, true));
    }
    let mut notices = 0;
    for quo_id in &missing {
        let event_id = format!("scan:{scan_id}:missing:{quo_id}");
        let stored = ledger
            .inbox_put(NewInboxEvent {
                event_id: &event_id,
                event_type: MISSING,
                quo_id: Some(quo_id),
                payload: "{\"source\":\"scan\"}",
            })
            .await?;
        notices += u64::from(stored);
    }
    if !missing.is_empty() {
        info!(
            event = "scan_missing",
            contacts = missing.len(),
            "linked contacts not listed by a complete scan; each is confirmed by id before anything is concluded"
        );
    }
    Ok((notices, false))
}

/// The `quo_scanned` line for a complete pass (`pages`, `seconds`: those of the call that
/// finished it; a pass resumed after a restart counts from the restart).
fn log_pass(pass: &ScanProgress, seconds: f64) {
    info!(
        event = "quo_scanned",
        pages = pass.pages,
        contacts = pass.contacts,
        notices = pass.notices,
        orphans = pass.orphans,
        seconds,
        "scan pass complete"
    );
}

impl ScanProgress {
    /// One listed page's slice of a pass.
    fn page(contacts: usize, notices: u64, orphans: usize) -> Self {
        ScanProgress {
            pages: 1,
            contacts: contacts as u64,
            notices,
            orphans: orphans as u64,
            complete: false,
            missing_refused: false,
        }
    }

    /// Adds one slice of a pass to the pass's totals.
    fn add(&mut self, slice: &ScanProgress) {
        self.pages += slice.pages;
        self.contacts += slice.contacts;
        self.notices += slice.notices;
        self.orphans += slice.orphans;
        self.complete = slice.complete;
        self.missing_refused |= slice.missing_refused;
    }
}

/// Whether the linked contact `quo_id` was created in Quo after `since` (by its stored copy;
/// unknown: no).
async fn created_after(
    ledger: &Ledger,
    quo_id: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<bool, IntakeError> {
    let created = ledger
        .record_by_quo_id(quo_id)
        .await?
        .and_then(|row| row.quo_contact)
        .and_then(|contact| contact.created_at)
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok());
    Ok(created.is_some_and(|at| at > since))
}

/// The listed contacts the ledger does not link that carry our source (the others are the
/// workspace's, not orphans of ours).
fn only_ours(orphans: Vec<String>, not_ours: &std::collections::HashSet<&str>) -> Vec<String> {
    orphans
        .into_iter()
        .filter(|id| !not_ours.contains(id.as_str()))
        .collect()
}

async fn finish_pass(ledger: &Ledger, client: &QuoClient, scope: Scope) -> Result<(), IntakeError> {
    if scope == Scope::Workspace
        && let Some(started) = ledger.meta(SCAN_STARTED).await?
    {
        // Absence is not deletion: a contact the pass did not list is read by id, and only a
        // 404 takes it out of the index (a stale one would hold records back for ever).
        if let Some(since) = chrono::DateTime::parse_from_rfc3339(&started)
            .ok()
            .map(|t| {
                t.with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            })
        {
            prune_unseen(ledger, client, &since).await?;
        }
        // Every contact that existed when the pass started is in the index now.
        ledger.set_meta(WORKSPACE_LISTED, &started).await?;
        let contacts = ledger.workspace_count().await?;
        info!(
            event = "workspace_listed",
            contacts, "the workspace index holds every contact in Quo"
        );
    }
    restart_pass(ledger).await?;
    ledger
        .set_meta(LAST_SCAN, &chrono::Utc::now().to_rfc3339())
        .await?;
    Ok(())
}

/// Reads by id each contact of the workspace index that a complete pass since `since` did not
/// list, and takes out of the index only those answering 404, and only once the key is shown
/// to answer for our workspace (`absence::check_workspace`, run whenever any is gone): a key for
/// another workspace lists none of them and answers 404 for each, and an index emptied by it
/// would release the records held on day one, to be created as new people.
async fn prune_unseen(ledger: &Ledger, client: &QuoClient, since: &str) -> Result<(), IntakeError> {
    let mut gone = std::collections::HashSet::new();
    for quo_id in ledger.workspace_unseen_since(since).await? {
        match client.get_contact(&quo_id).await {
            Ok(Some(contact)) => ledger.workspace_put(std::slice::from_ref(&contact)).await?,
            Ok(None) => {
                gone.insert(quo_id);
            }
            Err(e) if e.is_fatal() => return Err(e.into()),
            Err(e) => {
                warn!(event = "workspace_index_stale", quo_id, error = %e, "could not read a contact the scan did not list; the next scan reads it")
            }
        }
    }
    if gone.is_empty() {
        return Ok(());
    }
    let check = super::absence::check_workspace(ledger, client, &gone)
        .await
        .map_err(|e| match e {
            super::absence::CheckError::Ledger(e) => IntakeError::Ledger(e),
            super::absence::CheckError::Quo(e) => IntakeError::Quo(e),
        })?;
    if !check.holds_ours() {
        warn!(
            event = "workspace_unconfirmed",
            sampled = check.sampled,
            found = check.found,
            missing = check.missing,
            unlisted = gone.len(),
            "contacts the workspace index holds are not listed and answer 404, and most linked contacts read back are not there: the key may point at another workspace; the index keeps them"
        );
        super::absence::doubted(ledger, client, &check).await?;
        return Ok(());
    }
    super::absence::confirmed(ledger, client).await?;
    for quo_id in &gone {
        ledger.workspace_remove(quo_id).await?;
    }
    Ok(())
}

async fn restart_pass(ledger: &Ledger) -> Result<(), IntakeError> {
    ledger
        .delete_meta(&[SCAN_ID, SCAN_TOKEN, SCAN_STARTED, SCAN_SCOPE])
        .await?;
    Ok(())
}

/// One whole pass under `gate`.
async fn pass(
    ledger: &Ledger,
    client: &QuoClient,
    (scope, guard): (Scope, DeleteGuard),
    gate: &tokio::sync::Mutex<()>,
    cancel: &CancellationToken,
    on_page: impl FnMut(&ScanProgress),
) -> Result<ScanProgress, IntakeError> {
    let _pass = gate.lock().await;
    scan_pass(ledger, client, scope, None, cancel, guard, on_page).await
}

/// The service's scanner: whenever a pass is due, lists page by page through `client` (a
/// background client: its requests yield to writes), waking the service after each page that
/// left notices. Failures are logged and retried after a pause. A refused key pauses it on
/// `auth`'s clock (the service reports not ready meanwhile); once `quo.auth_grace` has run out
/// it stops, and `auth.exhausted()` stops the service. A pass holds `gate`, which a cycle that
/// must list the workspace before its first creates takes too.
pub async fn run_scanner(
    ledger: Ledger,
    client: QuoClient,
    scope: Scope,
    interval: Duration,
    guard: DeleteGuard,
    (wake, auth, gate): (Arc<Notify>, Arc<AuthGrace>, Arc<tokio::sync::Mutex<()>>),
    cancel: CancellationToken,
) {
    let idle = interval.clamp(Duration::from_millis(50), Duration::from_secs(30));
    loop {
        let wake_on_notices = |page: &ScanProgress| {
            if page.notices > 0 {
                wake.notify_one();
            }
        };
        let wait = match due(&ledger, interval).await {
            // A whole pass per call: the ledger's pass state is read once, not once a page.
            Ok(true) => {
                match pass(
                    &ledger,
                    &client,
                    (scope, guard),
                    &gate,
                    &cancel,
                    wake_on_notices,
                )
                .await
                {
                    // The client tells `auth` of each accepted page.
                    Ok(_) => idle,
                    Err(IntakeError::Quo(e @ QuoError::Unauthorized { .. })) => {
                        match auth.refused() {
                            AfterRefusal::RetryIn(pause) => {
                                warn!(event = "scan_auth_refused", error = %e, retry_in_ms = pause.as_millis() as u64, grace_s = auth.grace().as_secs(), "Quo refused the API key on a scan page; the scanner pauses and tries again (not ready meanwhile)");
                                pause
                            }
                            AfterRefusal::GiveUp => {
                                warn!(event = "scan_stopped", error = %e, "Quo refused the API key for longer than quo.auth_grace; the scanner stops");
                                return;
                            }
                            AfterRefusal::NeverAccepted => {
                                warn!(event = "scan_stopped", error = %e, "Quo refused the API key, which it never accepted since this process started; the scanner stops");
                                return;
                            }
                        }
                    }
                    Err(IntakeError::Quo(e)) if e.is_fatal() => {
                        warn!(event = "scan_stopped", error = %e, "the scanner stops");
                        return;
                    }
                    Err(e) => {
                        warn!(event = "scan_failed", error = %e, "scan page failed; retrying shortly");
                        metrics::counter!("quo_sync_scans_failed_total").increment(1);
                        idle
                    }
                }
            }
            Ok(false) => idle,
            Err(e) => {
                warn!(event = "scan_failed", error = %e, "scan could not read the ledger");
                idle
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
