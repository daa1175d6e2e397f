//! What must hold once the faults stop and a quiet cycle wrote nothing: one function per
//! invariant, each failing with the record, the field and the values involved. To add one:
//! write it here and call it from [`check`].

use std::collections::BTreeMap;

use quo_sync::domain::ExternalId;
use quo_sync::ledger::ConflictRow;
use quo_sync::sync::{CyclePhase, CycleReport, SyncError};
use serde_json::Value;

use super::model::{APP_ONLY, Log};
use super::world::World;

/// Every invariant, in order.
pub async fn check(world: &World) {
    // Records held on day one are checked by `day_one::check`, those out of scope by
    // `scope::check`.
    let (rows, out): (Vec<Vec<String>>, Vec<Vec<String>>) = world
        .crm_rows()
        .into_iter()
        .filter(|r| !world.day_one.held_records.contains(&r[0]))
        .partition(|r| super::scope::in_scope(r));
    // Day one's first: a held record made a contact is its failure, not a stray's.
    super::day_one::check(world).await;
    let contacts = world.contacts_by_record();
    let conflicts = world.app.ledger().conflicts(100_000).await.unwrap();
    no_duplicate_contacts(&contacts);
    let every: Vec<Vec<String>> = rows.iter().chain(&out).cloned().collect();
    no_contact_without_a_crm_record(world, &every, &contacts).await;
    super::scope::check(world, &out).await;
    every_record_linked_to_its_one_contact(world, &rows).await;
    no_doubled_email_or_phone_items(&contacts);
    each_conflict_names_typed_values_and_the_policys_winner(&world.log, world.policy, &conflicts);
    for row in &rows {
        let contact = &contacts[&row[0]][0];
        both_sides_hold_the_same_managed_values(world, row, contact);
        each_value_is_the_last_typed_unless_a_conflict_names_both(
            world, &row[0], contact, &conflicts,
        );
    }
}

/// At most one contact per externalId (twins of lost creates included).
pub fn no_duplicate_contacts(contacts: &BTreeMap<String, Vec<Value>>) {
    for (id, list) in contacts {
        assert_eq!(list.len(), 1, "{id} has {} contacts: {list:#?}", list.len());
    }
}

/// Every contact of ours belongs to a record still in the CRM.
async fn no_contact_without_a_crm_record(
    world: &World,
    rows: &[Vec<String>],
    contacts: &BTreeMap<String, Vec<Value>>,
) {
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let mut strays = Vec::new();
    let handed_over = |id: &String| {
        world.scope.on_leave != "delete" && world.scope.deleted_out_of_scope.contains(id)
    };
    for id in without_a_record(&ids, contacts).filter(|id| !handed_over(id)) {
        let row = world
            .app
            .ledger()
            .record(&ExternalId::parse(id).unwrap())
            .await
            .unwrap();
        strays.push(format!(
            "{id}: {:?}",
            row.map(|r| (r.state, r.quo_id, r.attempts, r.last_error))
        ));
    }
    assert!(
        strays.is_empty(),
        "contacts without a CRM record (CRM has {ids:?}; deleted in the CRM: {:?}): {strays:?}",
        world.log.deleted_in_crm
    );
}

/// The externalIds of `contacts` that name none of the CRM's `ids`.
pub fn without_a_record<'a>(
    ids: &'a [&str],
    contacts: &'a BTreeMap<String, Vec<Value>>,
) -> impl Iterator<Item = &'a String> {
    contacts.keys().filter(|id| !ids.contains(&id.as_str()))
}

/// Every CRM record has its contact, and the ledger holds that contact's id.
async fn every_record_linked_to_its_one_contact(world: &World, rows: &[Vec<String>]) {
    let ids: Vec<String> = rows.iter().map(|r| r[0].clone()).collect();
    world.app.assert_one_contact_per_record(&ids).await;
}

/// No contact holds an email or a phone number twice, or two items under one label (a PATCH
/// resent blindly under merge semantics appends its items again).
pub fn no_doubled_email_or_phone_items(contacts: &BTreeMap<String, Vec<Value>>) {
    for contact in contacts.values().flatten() {
        for list in ["emails", "phoneNumbers"] {
            let items: Vec<(String, String)> = crate::common::items(contact, list)
                .into_iter()
                .map(|(label, value)| (label, value.to_lowercase()))
                .collect();
            for (k, (label, value)) in items.iter().enumerate() {
                let twice = items[k + 1..]
                    .iter()
                    .any(|(l, v)| v == value || (!label.is_empty() && l == label));
                assert!(
                    !twice,
                    "{}: doubled {list} item {label}={value}: {items:?}",
                    contact["externalId"]
                );
            }
        }
    }
}

/// Both sides of a conflict's values as JSON, and the winner's and loser's.
struct Decided {
    winner: Value,
    loser: Value,
}

fn decided(conflict: &ConflictRow) -> Decided {
    let parse = |v: &Option<String>| {
        v.as_deref()
            .map(|t| serde_json::from_str(t).expect("a conflict value is JSON"))
            .unwrap_or(Value::Null)
    };
    let (crm, quo) = (parse(&conflict.crm_value), parse(&conflict.quo_value));
    match conflict.winner.as_str() {
        "crm" => Decided {
            winner: crm,
            loser: quo,
        },
        "quo" => Decided {
            winner: quo,
            loser: crm,
        },
        other => panic!("conflict {conflict:?}: winner {other:?} is neither crm nor quo"),
    }
}

/// Each conflict row names two different values someone typed into that very field of that
/// record (compared exactly, not as substrings), and the winner the seed's policy picks:
/// `crm` and `quo` always their side, `newest` either; a twin of a lost create
/// (`twin_later_edit`) either.
pub fn each_conflict_names_typed_values_and_the_policys_winner(
    log: &Log,
    policy: &str,
    conflicts: &[ConflictRow],
) {
    for c in conflicts {
        let Decided { winner, loser } = decided(c);
        assert_ne!(winner, loser, "a conflict between equal values: {c:?}");
        for value in [&winner, &loser] {
            assert!(
                log.was_typed(&c.external_id, &c.field, value),
                "conflict {c:?} names {value}, which nobody typed into {}.{}: {:?}",
                c.external_id,
                c.field,
                log.edits(&c.external_id, &c.field)
            );
        }
        match c.policy.as_str() {
            "twin_later_edit" => {}
            "newest" | "crm" | "quo" if c.policy == policy => {
                if c.policy != "newest" {
                    assert_eq!(c.winner, c.policy, "policy {} decided {c:?}", c.policy);
                }
            }
            other => panic!("conflict {c:?} decided by {other:?}, not the seed's {policy}"),
        }
    }
}

/// The CRM row and the contact agree on every managed field, in the sync's comparison form.
fn both_sides_hold_the_same_managed_values(world: &World, row: &[String], contact: &Value) {
    sides_agree(&row[0], &world.crm_fields(row), &world.quo_fields(contact));
}

/// `id`'s managed values on the CRM side (`crm`) and the Quo side (`quo`), in the sync's
/// comparison form, are the same.
pub fn sides_agree(id: &str, crm: &BTreeMap<String, Value>, quo: &BTreeMap<String, Value>) {
    let differ: Vec<String> = crm
        .keys()
        .filter(|k| crm.get(*k) != quo.get(*k))
        .map(|k| {
            format!(
                "{k}: CRM {} vs Quo {}",
                crm[k],
                quo.get(k).unwrap_or(&Value::Null)
            )
        })
        .collect();
    assert!(differ.is_empty(), "{id}: sides differ: {differ:?}");
}

/// Every managed field, and every value kept only in Quo (notes, including one typed and then
/// cleared; a home email), holds the last value anyone put there; otherwise a conflict on that
/// field names what it holds as the winner and that last value as the loser.
fn each_value_is_the_last_typed_unless_a_conflict_names_both(
    world: &World,
    id: &str,
    contact: &Value,
    conflicts: &[ConflictRow],
) {
    let mut held: Vec<(String, Value)> = world.quo_fields(contact).into_iter().collect();
    held.extend(
        APP_ONLY
            .iter()
            .map(|k| (k.name().to_string(), k.value(contact))),
    );
    holds_the_last_typed_unless_a_conflict_names_both(&world.log, id, held, conflicts);
}

/// Each of `id`'s `held` values (field name, value) is the last one `log` saw put there, or a
/// conflict on that field names it as the winner and that last value as the loser.
pub fn holds_the_last_typed_unless_a_conflict_names_both(
    log: &Log,
    id: &str,
    held: Vec<(String, Value)>,
    conflicts: &[ConflictRow],
) {
    for (field, value) in held {
        let last = log.last(id, &field);
        if value == last {
            continue;
        }
        let explained = conflicts.iter().any(|c| {
            let d = decided(c);
            c.external_id == id && c.field == field && d.winner == value && d.loser == last
        });
        assert!(
            explained,
            "{id}.{field} holds {value}, but the last value put there was {last} and no conflict names both (all: {:?}; conflicts: {:?})",
            log.edits(id, &field),
            conflicts
                .iter()
                .filter(|c| c.external_id == id && c.field == field)
                .collect::<Vec<_>>()
        );
    }
}

/// What the world saw of one cycle from outside: the CRM rows it could read and the sandbox's
/// own count of the requests and 429s it answered while the cycle ran.
#[derive(Debug, Clone, Copy)]
pub struct CycleSeen {
    /// Rows in the CSV when the cycle started.
    pub rows: u64,
    /// API requests the sandbox received during the cycle.
    pub requests: u64,
    /// 429s the sandbox answered during the cycle.
    pub rate_limited: u64,
    /// A writer of the file was still for longer than the quiet period during the cycle (a
    /// loaded machine): the read may have taken the file half-written, fewer rows.
    pub file_may_be_cut: bool,
}

/// After every cycle that finished (not only at the end of a seed): what a progress display
/// shows (`SyncContext.progress`), the cycle's report, the run row `quo-sync status` reads and
/// what the sandbox answered agree. Confirmed writes per kind are the report's created, updated
/// and deleted, and never more than were planned; rows held back are the quarantined records;
/// every CSV row was read; the cycle is back to idle; requests and 429s are the sandbox's.
pub async fn cycle_counts_agree(world: &World, report: &CycleReport, seen: CycleSeen) {
    let c = &report.counts;
    let progress = world.app.ctx.progress.snapshot();
    let context = || format!("report {c:?}, progress {progress:?}, sandbox {seen:?}");
    assert_eq!(
        progress.confirmed,
        [c.created + c.adopted, c.updated, c.deleted],
        "confirmed writes (create or adopt, update, delete) a display shows differ from the report: {}",
        context()
    );
    for (kind, (planned, confirmed)) in ["creates", "updates", "deletes"]
        .iter()
        .zip(progress.planned.iter().zip(progress.confirmed))
    {
        assert!(
            confirmed <= *planned,
            "{confirmed} {kind} confirmed but {planned} planned (a bar past its end): {}",
            context()
        );
    }
    assert_eq!(
        progress.held_back,
        c.quarantined,
        "rows held back a display shows differ from the quarantined count: {}",
        context()
    );
    assert_eq!(
        progress.held_back,
        world.app.ctx.progress.held_back().len() as u64,
        "every held-back row is listed with its details (fewer than 100 here): {}",
        context()
    );
    if seen.file_may_be_cut {
        assert!(
            progress.records_read <= seen.rows,
            "a cycle over a half-written file read more rows than it has: {}",
            context()
        );
    } else if !report.interrupted {
        assert_eq!(
            progress.records_read,
            seen.rows,
            "a finished cycle read every CSV row: {}",
            context()
        );
    }
    assert_eq!(
        progress.phase,
        Some(CyclePhase::Idle),
        "a finished cycle is idle: {}",
        context()
    );
    assert_eq!(
        (c.requests, c.rate_limited),
        (seen.requests, seen.rate_limited),
        "requests and 429s the report counts are not the ones the sandbox answered: {}",
        context()
    );
    let run = world
        .app
        .ledger()
        .last_finished_run()
        .await
        .unwrap()
        .expect("a finished cycle has its run row");
    assert_eq!(run.id, report.run_id, "the last run row is this cycle's");
    let row = [
        run.created,
        run.updated,
        run.unchanged,
        run.deleted,
        run.quarantined,
        run.written_to_crm,
        run.requests,
        run.rate_limited,
    ];
    let counted = [
        c.created,
        c.updated,
        c.unchanged,
        c.deleted,
        c.quarantined,
        c.written_to_crm,
        c.requests,
        c.rate_limited,
    ]
    .map(|n| n as i64);
    assert_eq!(
        row,
        counted,
        "the run row `status` shows differs from the report: {run:?}, {}",
        context()
    );
}

/// After a cycle that failed: its run row says so, with the error, and the requests and 429s
/// it spent are the ones the sandbox answered (an operator reads them to see what a failure
/// cost).
pub async fn failed_run_counts_agree(world: &World, error: &SyncError, seen: CycleSeen) {
    let run = world
        .app
        .ledger()
        .last_finished_run()
        .await
        .unwrap()
        .expect("a failed cycle has its run row");
    assert_eq!(run.status, "failed", "{run:?} after {error}");
    assert_eq!(run.error.as_deref(), Some(error.to_string().as_str()));
    assert_eq!(
        (run.requests, run.rate_limited),
        (seen.requests as i64, seen.rate_limited as i64),
        "requests and 429s of a failed run are not the ones the sandbox answered: {run:?}, {seen:?}"
    );
}
