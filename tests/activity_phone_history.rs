//! Linking by number uses the record that held the number when the call happened (the phone
//! history, migration 0013), end to end: the sandbox over real HTTP, contact cycles renumbering
//! records, the service's poller reading calls whose webhook delivery was lost (no subscription:
//! every delivery is lost), and the activity CSV and the ledger's rows checked.
//!
//! Shown failing: with linking by today's holders (`PhoneIndex::holders` asked with `at = None`
//! for every activity), the renumbered call lands on r-2 (the number's new owner) and the
//! shared-number call on r-1 (its only holder today).

mod common;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use common::{Backend, TestApp, csv, row};
use quo_sync::sandbox::SandboxConfig;
use quo_sync::sandbox::activity::{CallOutcome, CallSpec, Direction};
use support::activity::{csv_rows, free_port, number_of, until};

/// r-`n`'s phone as the CSV writes it (the number [`number_of`] `n` in E.164).
fn csv_phone(n: u32) -> String {
    format!("(415) 555-{:04}", 1000 + n)
}

/// The app with records r-1..=r-`records`, synced, and no activity logging yet.
async fn synced(backend: Backend, records: u32) -> Option<TestApp> {
    let rows: Vec<String> = (1..=records).map(|n| row(&format!("r-{n}"), n)).collect();
    let app = TestApp::spawn_on(backend, &csv(&rows), SandboxConfig::default(), "").await?;
    app.cycle().await;
    Some(app)
}

/// Gives r-`id` the phone of record number `phone` (in the CSV), then runs a cycle.
async fn renumber(app: &TestApp, id: u32, phone: u32) {
    let text = app.csv_text();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("r-{id},")))
        .expect("the record's row")
        .to_string();
    let current = line
        .split(',')
        .find(|f| f.starts_with("(415) 555-"))
        .expect("a phone")
        .to_string();
    app.write_csv(&text.replace(&line, &line.replace(&current, &csv_phone(phone))));
    app.cycle().await;
}

/// An answered incoming call from `number`, starting now (its `createdAt`, which linking asks
/// the history about).
fn call_from(sandbox: &quo_sync::sandbox::SandboxHandle, number: &str) -> String {
    sandbox.activity_call(CallSpec {
        number: number.to_string(),
        direction: Direction::Incoming,
        outcome: CallOutcome::Answered,
        duration: 42,
        created_at: Some(chrono::Utc::now()),
        ..CallSpec::default()
    })
}

/// Lets more than the hand-over allowance pass after a call, so a change committed next is
/// clearly later than the call (a change within it would make the call ambiguous).
async fn past_the_handover_allowance() {
    let wait = quo_sync::activity::linking::HANDOVER_SKEW
        .to_std()
        .unwrap()
        .mul_f64(1.2);
    tokio::time::sleep(wait).await;
}

/// Turns activity logging on (backfilling the last hour on this first start, so the poller
/// reads the calls made before) and starts the service.
async fn start_logging(app: &mut TestApp, unmatched: &str) -> (common::RunningService, PathBuf) {
    let activity_csv = app.dir.path().join("activity.csv");
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(
        &app.config_path,
        format!(
            "{config}\n[reverse]\nlisten = \"127.0.0.1:{}\"\npoll_interval = \"0s\"\n\
             [activity]\npoll_interval = \"300ms\"\nbackfill = \"1h\"\nunmatched = \"{unmatched}\"\n\
             [activity.csv]\npath = \"{}\"\n",
            free_port(),
            activity_csv.display()
        ),
    )
    .unwrap();
    app.restart().await;
    (app.start_service(), activity_csv)
}

async fn activity_state(app: &TestApp, id: &str, state: &str) -> bool {
    app.ledger()
        .debug_query_i64(
            "SELECT COUNT(*) FROM activities WHERE activity_id = $1 AND state = $2",
            &[id, state],
        )
        .await
        .unwrap()
        == 1
}

/// The (record, open) holdings of `number` in the ledger's phone history, as text.
async fn holdings(app: &TestApp, number: &str) -> Vec<String> {
    app.ledger()
        .debug_query_strings(&format!(
            "SELECT external_id || CASE WHEN closed_at IS NULL THEN ' open' ELSE ' closed' END
               FROM phone_history WHERE phone = '{number}' ORDER BY opened_at, external_id"
        ))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_call_lands_on_the_record_that_had_the_number_not_its_new_owner() {
    renumbered_call(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_lost_call_lands_on_the_record_that_had_the_number_and_a_shared_one_is_skipped()
 {
    renumbered_call(Backend::Postgres).await;
}

/// r-1 holds X; a call from X is made and its delivery lost; r-1 is renumbered and X given to
/// r-2 before the poller runs. The call is on r-1. On PostgreSQL also the shared number (r-3
/// and r-4 both had Z when it was called; r-4 has let go since) with `unmatched = "skip"`.
async fn renumbered_call(backend: Backend) {
    let Some(mut app) = synced(backend, 4).await else {
        return;
    };
    let x = number_of(1);
    let z = number_of(3);
    let shared = backend == Backend::Postgres;
    if shared {
        renumber(&app, 4, 3).await;
        assert_eq!(holdings(&app, &z).await, ["r-3 open", "r-4 open"]);
    }
    let call = call_from(&app.sandbox, &x);
    let shared_call = shared.then(|| call_from(&app.sandbox, &z));
    past_the_handover_allowance().await;
    renumber(&app, 1, 9).await;
    renumber(&app, 2, 1).await;
    if shared {
        renumber(&app, 4, 4).await;
    }
    assert_eq!(
        holdings(&app, &x).await,
        ["r-1 closed", "r-2 open"],
        "the history: r-1 let go of the number, r-2 holds it"
    );

    let (service, activity_csv) = start_logging(&mut app, "skip").await;
    until(
        "the lost call read by the poller and written",
        Duration::from_secs(20),
        || async {
            csv_rows(&activity_csv)
                .iter()
                .any(|r| r["activity_id"] == call)
        },
    )
    .await;
    if let Some(shared_call) = &shared_call {
        until(
            "the shared number's call skipped",
            Duration::from_secs(20),
            || async { activity_state(&app, shared_call, "skipped").await },
        )
        .await;
    }
    let rows = csv_rows(&activity_csv);
    let on: Vec<&str> = rows
        .iter()
        .filter(|r| r["activity_id"] == call)
        .map(|r| r["record_id"].as_str())
        .collect();
    assert_eq!(
        on,
        ["r-1"],
        "the call is on the record that had the number when it was made, once"
    );
    until(
        "the call committed as written",
        Duration::from_secs(10),
        || async { activity_state(&app, &call, "written").await },
    )
    .await;
    if let Some(shared_call) = &shared_call {
        assert!(
            !rows.iter().any(|r| &r["activity_id"] == shared_call),
            "two records had the number then: not written to either: {rows:?}"
        );
        let reason = app
            .ledger()
            .debug_query_strings(&format!(
                "SELECT reason FROM activities WHERE activity_id = '{shared_call}'"
            ))
            .await
            .unwrap();
        assert_eq!(reason, ["2 records match: r-3, r-4"]);
    }
    service.stop().await;
}

/// r-1 and r-2 both had X when a call from X was made (its delivery lost); r-2 has let go of it
/// since, so r-1 alone has it today. The call is ambiguous, held (`unmatched = "hold"`), and
/// stays held through later passes: never attached to r-1 because r-1 is who is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_number_two_records_had_then_is_held_though_one_has_it_now() {
    let mut app = synced(Backend::Sqlite, 2)
        .await
        .expect("SQLite is always there");
    let x = number_of(1);
    renumber(&app, 2, 1).await;
    let call = call_from(&app.sandbox, &x);
    past_the_handover_allowance().await;
    renumber(&app, 2, 2).await;
    assert_eq!(holdings(&app, &x).await, ["r-1 open", "r-2 closed"]);
    // A call made now, with r-1 alone holding the number, is r-1's: the control.
    past_the_handover_allowance().await;
    let later = call_from(&app.sandbox, &x);

    let (service, activity_csv) = start_logging(&mut app, "hold").await;
    until(
        "the later call written and the earlier held",
        Duration::from_secs(20),
        || async {
            csv_rows(&activity_csv)
                .iter()
                .any(|r| r["activity_id"] == later)
                && activity_state(&app, &call, "held").await
        },
    )
    .await;
    // A few more passes and polls: it stays held.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let rows = csv_rows(&activity_csv);
    assert_eq!(rows.len(), 1, "only the later call is written: {rows:?}");
    assert_eq!(rows[0]["record_id"], "r-1");
    assert!(activity_state(&app, &call, "held").await);
    let reason = app
        .ledger()
        .debug_query_strings(&format!(
            "SELECT reason FROM activities WHERE activity_id = '{call}'"
        ))
        .await
        .unwrap();
    assert_eq!(reason, ["2 records match: r-1, r-2"]);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruned_history_links_nothing_rather_than_a_later_holder() {
    pruned_history(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_pruned_history_links_nothing_rather_than_a_later_holder() {
    pruned_history(Backend::Postgres).await;
}

/// r-2 had Y and let go of it; the history forgets that (pruned, as it is past the horizon); a
/// new record r-3 comes with Y. A lost call from Y made while r-2 had it is not given to r-3
/// (whose stretch would otherwise reach back over the forgotten one): skipped, saying why.
async fn pruned_history(backend: Backend) {
    let Some(mut app) = synced(backend, 2).await else {
        return;
    };
    let y = number_of(2);
    let call = app.sandbox.activity_call(CallSpec {
        number: y.clone(),
        direction: Direction::Outgoing,
        outcome: CallOutcome::Answered,
        duration: 30,
        created_at: Some(chrono::Utc::now()),
        ..CallSpec::default()
    });
    past_the_handover_allowance().await;
    renumber(&app, 2, 8).await;
    let horizon = chrono::Utc::now() + chrono::Duration::minutes(1);
    let pruned = app
        .ledger()
        .phone_history_prune(&horizon.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .await
        .unwrap();
    assert_eq!(pruned, 1, "r-2's ended stretch of Y");
    assert_eq!(
        holdings(&app, &y).await,
        [" closed"],
        "one row without a record: before its end, Y's holders are forgotten"
    );
    let mut text = app.csv_text();
    text.push_str(&row("r-3", 3).replace(&csv_phone(3), &csv_phone(2)));
    text.push('\n');
    app.write_csv(&text);
    app.cycle().await;
    assert_eq!(holdings(&app, &y).await, [" closed", "r-3 open"]);

    let (service, activity_csv) = start_logging(&mut app, "skip").await;
    until("the call skipped", Duration::from_secs(20), || async {
        activity_state(&app, &call, "skipped").await
    })
    .await;
    let reason = app
        .ledger()
        .debug_query_strings(&format!(
            "SELECT reason FROM activities WHERE activity_id = '{call}'"
        ))
        .await
        .unwrap();
    assert!(
        reason[0].starts_with(&format!("who had {y} then is no longer known")),
        "{reason:?}"
    );
    assert!(
        csv_rows(&activity_csv).is_empty(),
        "not written to r-3, who came later"
    );
    service.stop().await;
}
