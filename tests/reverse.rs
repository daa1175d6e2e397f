//! Quo → CRM: signed webhooks, polling, three-way merge and conflict policies, write-back to the
//! CSV, and no echo loops, all against the sandbox over real HTTP.

mod common;

use std::time::Duration;

use common::{Backend, TestApp, WEBHOOK_KEY, csv, row, whsec};
use quo_sync::sandbox::{SandboxConfig, WebhookScheme, WebhookTarget};
use serde_json::json;

fn rows(n: u32) -> Vec<String> {
    (1..=n).map(|i| row(&format!("r-{i}"), i)).collect()
}

/// Reverse config for webhook tests: no scan, so only webhooks bring changes.
fn webhook_only() -> String {
    format!(
        "[reverse]\nwebhook_secret = \"{}\"\npoll_interval = \"0s\"\n",
        whsec()
    )
}

async fn app_with_webhooks(n: u32, extra: &str, scheme: WebhookScheme) -> TestApp {
    app_with_webhooks_on(Backend::Sqlite, n, extra, scheme)
        .await
        .expect("SQLite is always there")
}

async fn app_with_webhooks_on(
    backend: Backend,
    n: u32,
    extra: &str,
    scheme: WebhookScheme,
) -> Option<TestApp> {
    let app = TestApp::spawn_on(
        backend,
        &csv(&rows(n)),
        SandboxConfig::default(),
        &format!("{}{extra}", webhook_only()),
    )
    .await?;
    let url = app.start_receiver().await;
    app.sandbox.set_webhook(Some(WebhookTarget {
        url,
        secret_key: WEBHOOK_KEY.to_vec(),
        scheme,
    }));
    Some(app)
}

/// The CSV with one cell of one row replaced (and that row's updated_at left to the caller).
fn cells(text: &str, line: usize) -> Vec<String> {
    text.lines()
        .nth(line)
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_signed_in_app_edit_updates_that_csv_cell_and_nothing_else() {
    for scheme in [WebhookScheme::Standard, WebhookScheme::Legacy] {
        in_app_edit_scenario(Backend::Sqlite, scheme).await;
    }
}

#[tokio::test]
async fn a_signed_in_app_edit_updates_that_csv_cell_and_nothing_else_on_postgres() {
    in_app_edit_scenario(Backend::Postgres, WebhookScheme::Standard).await;
}

async fn in_app_edit_scenario(backend: Backend, scheme: WebhookScheme) {
    {
        let Some(app) = app_with_webhooks_on(backend, 4, "", scheme).await else {
            return;
        };
        app.cycle().await;
        // Our own creates echo back as webhooks: applying them must change nothing.
        let before = app.csv_text();
        app.cycle().await;
        assert_eq!(
            app.csv_text(),
            before,
            "echoes of our own creates wrote to the CSV"
        );

        let events_before = app.inbox_count().await;
        app.sandbox
            .app_edit(
                &app.quo_id("r-2"),
                json!({"defaultFields": {"company": "Edited In App"}}),
            )
            .unwrap();
        app.wait_for_inbox(events_before + 1).await;
        app.wait_for_inbox_containing("Edited In App").await;
        app.sandbox.reset_stats();
        let report = app.cycle().await;
        assert_eq!(report.counts.written_to_crm, 1, "{scheme:?} {report:?}");
        assert_eq!(
            app.sandbox.stats().writes_total(),
            0,
            "nothing is pushed back to Quo"
        );

        let after = app.csv_text();
        let (old_lines, new_lines): (Vec<_>, Vec<_>) =
            (before.lines().collect(), after.lines().collect());
        assert_eq!(old_lines.len(), new_lines.len());
        for (i, (old, new)) in old_lines.iter().zip(&new_lines).enumerate() {
            if i != 2 {
                assert_eq!(old, new, "line {} must not change", i + 1);
            }
        }
        let (old, new) = (cells(&before, 2), cells(&after, 2));
        for (c, (o, n)) in old.iter().zip(&new).enumerate() {
            match c {
                3 => assert_eq!(n, "Edited In App"),
                14 => assert_ne!(o, n, "updated_at moves"),
                _ => assert_eq!(o, n, "column {c} must not change"),
            }
        }
        // And the next cycle sees agreement: no writes either way.
        app.sandbox.reset_stats();
        let report = app.cycle().await;
        assert_eq!(
            (report.counts.written_to_crm, report.counts.updated),
            (0, 0)
        );
        assert_eq!(app.csv_text(), after);
    }
}

#[tokio::test]
async fn forged_stale_oversized_malformed_and_replayed_deliveries_change_nothing() {
    let app = app_with_webhooks(2, "", WebhookScheme::Standard).await;
    app.cycle().await;
    let url = app.start_receiver().await;
    let http = reqwest::Client::new();
    let quo_id = app.quo_id("r-1");
    let body = json!({"id": "EVforged", "type": "contact.updated", "apiVersion": "v4", "data": {"resource": {"id": quo_id}}}).to_string();
    let now = chrono::Utc::now().timestamp();
    let sign = |ts: i64, body: &str| {
        quo_sync::sandbox::webhooks::sign_standard(WEBHOOK_KEY, "EVforged", ts, body.as_bytes())
            .trim_start_matches("v1,")
            .to_string()
    };
    let send = |headers: Vec<(&'static str, String)>, body: String| {
        let mut request = http.post(&url).body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.send()
    };
    let forged = send(
        vec![
            ("webhook-id", "EVforged".into()),
            ("webhook-timestamp", now.to_string()),
            (
                "webhook-signature",
                quo_sync::sandbox::webhooks::sign_standard(
                    b"wrong key",
                    "EVforged",
                    now,
                    body.as_bytes(),
                ),
            ),
        ],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(forged.status(), 401);
    let stale = send(
        vec![
            ("webhook-id", "EVforged".into()),
            ("webhook-timestamp", (now - 600).to_string()),
            (
                "webhook-signature",
                format!("v1,{}", sign(now - 600, &body)),
            ),
        ],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(stale.status(), 401);
    let huge = "x".repeat(70 * 1024);
    let oversized = send(
        vec![
            ("webhook-id", "EVforged".into()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", format!("v1,{}", sign(now, &huge))),
        ],
        huge.clone(),
    )
    .await
    .unwrap();
    assert_eq!(oversized.status(), 413);
    let junk = "{not json";
    let malformed = send(
        vec![
            ("webhook-id", "EVforged".into()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", format!("v1,{}", sign(now, junk))),
        ],
        junk.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(malformed.status(), 400);
    let inbox = app
        .ledger()
        .debug_query_i64(
            "SELECT COUNT(*) FROM inbox WHERE event_id = 'EVforged'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(inbox, 0, "nothing refused reaches the inbox");

    // A valid event replayed: stored once, acknowledged every time.
    for _ in 0..3 {
        let ok = send(
            vec![
                ("webhook-id", "EVforged".into()),
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", format!("v1,{}", sign(now, &body))),
            ],
            body.clone(),
        )
        .await
        .unwrap();
        assert_eq!(ok.status(), 200);
    }
    let inbox = app
        .ledger()
        .debug_query_i64(
            "SELECT COUNT(*) FROM inbox WHERE event_id = 'EVforged'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(inbox, 1);
    let before = app.csv_text();
    let report = app.cycle().await;
    assert_eq!(
        report.counts.written_to_crm, 0,
        "the contact did not change, so nothing is written"
    );
    assert_eq!(app.csv_text(), before);
}

/// Quo redelivers an event it already delivered (its retry after a lost acknowledgement): the
/// receiver acknowledges it but keeps the one stored copy, already applied, so nothing is pending
/// again and the next cycle neither reads the contact nor writes anything. (Redelivered before the cycle, the copies would be
/// collapsed by intake's one read per contact anyway, which proves nothing about the inbox.)
#[tokio::test]
async fn the_same_edit_delivered_three_times_is_applied_once() {
    let app = app_with_webhooks(3, "", WebhookScheme::Standard).await;
    app.cycle().await;
    app.cycle().await;
    app.sandbox
        .app_edit(
            &app.quo_id("r-3"),
            json!({"defaultFields": {"role": "Director"}}),
        )
        .unwrap();
    // This edit's event, not a late echo of the cycles' writes.
    app.wait_for_inbox_containing("Director").await;
    let event_id = app
        .ledger()
        .debug_query_strings("SELECT event_id FROM inbox WHERE payload LIKE '%Director%'")
        .await
        .unwrap()
        .remove(0);
    let report = app.cycle().await;
    assert_eq!(report.counts.written_to_crm, 1);
    assert_eq!(cells(&app.csv_text(), 3)[4], "Director");

    assert!(app.sandbox.redeliver(&event_id).await);
    assert!(app.sandbox.redeliver(&event_id).await);
    let acknowledged = app
        .sandbox
        .webhook_deliveries()
        .iter()
        .filter(|d| d.event_id == event_id && d.acknowledged())
        .count();
    assert_eq!(
        acknowledged, 3,
        "delivered three times, acknowledged each time"
    );
    let stored = app
        .ledger()
        .debug_query_i64(
            "SELECT COUNT(*) FROM inbox WHERE event_id = $1",
            &[event_id.as_str()],
        )
        .await
        .unwrap();
    assert_eq!(stored, 1, "stored once");
    let status = quo_sync::ops::status(app.ledger()).await.unwrap();
    assert_eq!(
        status.pending_reverse_events, 0,
        "an applied event delivered again is not pending again"
    );
    app.sandbox.reset_stats();
    let report = app.cycle().await;
    assert_eq!(report.counts.written_to_crm, 0);
    let stats = app.sandbox.stats();
    assert_eq!(
        stats.requests_total, 1,
        "only the cycle's custom-field read; the redeliveries read nothing: {stats:?}"
    );
}

#[tokio::test]
async fn an_acknowledged_event_survives_a_crash_before_it_is_applied() {
    let mut app = app_with_webhooks(2, "", WebhookScheme::Legacy).await;
    app.cycle().await;
    app.cycle().await;
    app.sandbox
        .app_edit(
            &app.quo_id("r-1"),
            json!({"defaultFields": {"lastName": "Lovelace"}}),
        )
        .unwrap();
    // This edit's event, not a late echo of the cycles' writes.
    app.wait_for_inbox_containing("Lovelace").await;
    // The process dies here: acknowledged, not applied. A new process opens the same ledger.
    app.restart().await;
    let report = app.cycle().await;
    assert_eq!(report.counts.written_to_crm, 1);
    assert_eq!(cells(&app.csv_text(), 1)[2], "Lovelace");
    assert_eq!(app.ledger().inbox_depth().await.unwrap(), 0);
}

async fn conflict_winner(policy: &str, crm_newer: bool) -> (String, String) {
    // The CRM edit is stamped either later or earlier than the Quo edit (now).
    let stamp = if crm_newer {
        "2099-01-01T00:00:00Z"
    } else {
        "2001-01-01T00:00:00Z"
    };
    let app = TestApp::spawn_conflict(policy, stamp).await;
    let report = app.cycle().await;
    let conflicts = app.ledger().conflicts(10).await.unwrap();
    assert_eq!(conflicts.len(), 1, "{report:?}");
    assert_eq!(conflicts[0].field, "company");
    assert_eq!(conflicts[0].crm_value.as_deref(), Some("\"CRM Co\""));
    assert_eq!(conflicts[0].quo_value.as_deref(), Some("\"Quo Co\""));
    let quo = app.contact_for("r-1")["defaultFields"]["company"]
        .as_str()
        .unwrap()
        .to_string();
    let crm = cells(&app.csv_text(), 1)[3].clone();
    assert_eq!(quo, crm, "both sides converge");
    (conflicts[0].winner.clone(), quo)
}

#[tokio::test]
async fn a_conflict_is_decided_by_each_policy_and_recorded() {
    assert_eq!(
        conflict_winner("crm", false).await,
        ("crm".into(), "CRM Co".into())
    );
    assert_eq!(
        conflict_winner("quo", true).await,
        ("quo".into(), "Quo Co".into())
    );
    assert_eq!(
        conflict_winner("newest", true).await,
        ("crm".into(), "CRM Co".into())
    );
    assert_eq!(
        conflict_winner("newest", false).await,
        ("quo".into(), "Quo Co".into())
    );
}

#[tokio::test]
async fn polling_alone_finds_and_applies_an_in_app_edit() {
    polling_scenario(Backend::Sqlite).await;
}

#[tokio::test]
async fn polling_alone_finds_and_applies_an_in_app_edit_on_postgres() {
    polling_scenario(Backend::Postgres).await;
}

async fn polling_scenario(backend: Backend) {
    let Some(app) = TestApp::spawn_on(
        backend,
        &csv(&rows(3)),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"1ms\"\n",
    )
    .await
    else {
        return;
    };
    app.cycle().await;
    app.sandbox
        .app_edit(
            &app.quo_id("r-2"),
            json!({"defaultFields": {"firstName": "Polled"}}),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let report = app.cycle().await;
    assert_eq!(report.counts.written_to_crm, 1, "{report:?}");
    assert_eq!(cells(&app.csv_text(), 2)[1], "Polled");
}

#[tokio::test]
async fn deleted_in_quo_is_unlinked_by_default_never_silently() {
    let app = TestApp::spawn_with(
        &csv(&rows(2)),
        SandboxConfig::default(),
        "[reverse]\npoll_interval = \"1ms\"\n",
    )
    .await;
    app.cycle().await;
    assert!(app.sandbox.app_delete(&app.quo_id("r-1")));
    tokio::time::sleep(Duration::from_millis(2)).await;
    let report = app.cycle().await;
    assert!(
        report
            .operations
            .iter()
            .any(|o| o.external_id == "r-1" && o.action == quo_sync::sync::Action::Unlink)
    );
    let row = app
        .ledger()
        .record(&quo_sync::domain::ExternalId::parse("r-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, quo_sync::ledger::RecordState::Unlinked);
    assert_eq!(
        app.sandbox.count_by_external_id("r-1"),
        0,
        "unlink does not recreate"
    );
    assert!(app.csv_text().contains("r-1,"), "the CRM record is kept");
}

#[tokio::test]
async fn a_long_run_with_edits_on_both_sides_converges_with_zero_echo_writes() {
    let app = app_with_webhooks(6, "", WebhookScheme::Standard).await;
    app.cycle().await;
    for round in 0..4u32 {
        // One CRM edit and one Quo edit per round, on different records.
        let text = app.csv_text();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let target = 1 + (round % 3) as usize;
        let mut columns: Vec<String> = lines[target].split(',').map(str::to_string).collect();
        columns[4] = format!("Role{round}");
        lines[target] = columns.join(",");
        app.write_csv(&(lines.join("\n") + "\n"));
        let quo_target = format!("r-{}", 4 + round % 3);
        app.sandbox
            .app_edit(
                &app.quo_id(&quo_target),
                json!({"defaultFields": {"lastName": format!("Q{round}")}}),
            )
            .unwrap();
        app.wait_for_inbox_containing(&format!("\"Q{round}\""))
            .await;
        app.cycle().await;
        app.cycle().await;
    }
    // Settled: three more cycles send nothing anywhere, whenever the echoes of the last
    // writes arrive.
    app.cycle().await;
    let settled = app.csv_text();
    app.sandbox.reset_stats();
    for _ in 0..3 {
        let report = app.cycle().await;
        assert_eq!(
            (
                report.counts.created,
                report.counts.updated,
                report.counts.written_to_crm
            ),
            (0, 0, 0),
            "{report:?}"
        );
    }
    assert_eq!(app.sandbox.stats().writes_total(), 0);
    assert_eq!(app.csv_text(), settled, "no echo writes to the CSV");
    // And both sides hold the same values.
    for i in 1..=6 {
        let id = format!("r-{i}");
        let contact = app.contact_for(&id);
        let line = cells(&settled, i);
        assert_eq!(
            contact["defaultFields"]["lastName"],
            line[2].as_str(),
            "{id}"
        );
        assert_eq!(contact["defaultFields"]["role"], line[4].as_str(), "{id}");
    }
}

/// A Quo edit to a record whose CSV row cannot be read this cycle stays pending, and reaches the
/// CRM once the row reads again (it was once marked applied and lost).
#[tokio::test]
async fn a_quo_edit_to_an_unreadable_row_waits_for_the_row_to_be_fixed() {
    let app = app_with_webhooks(3, "", WebhookScheme::Standard).await;
    app.cycle().await;
    app.cycle().await;
    let good = app.csv_text();
    // The row for r-2 loses a column (an export bug).
    let broken = good.replace(",Acme 2,", ",");
    app.write_csv(&broken);
    let events_before = app.inbox_count().await;
    app.sandbox
        .app_edit(
            &app.quo_id("r-2"),
            json!({"defaultFields": {"role": "Edited While Broken"}}),
        )
        .unwrap();
    app.wait_for_inbox(events_before + 1).await;
    app.wait_for_inbox_containing("Edited While Broken").await;
    let report = app.cycle().await;
    assert!(report.counts.quarantined >= 1, "{report:?}");
    let pending = app
        .ledger()
        .debug_query_i64(
            "SELECT COUNT(*) FROM inbox WHERE processed_at IS NULL AND quo_id = $1",
            &[&app.quo_id("r-2")],
        )
        .await
        .unwrap();
    assert!(
        pending >= 1,
        "the event stays pending while its row is unreadable"
    );

    app.write_csv(&good);
    app.cycle().await;
    let text = app.csv_text();
    assert!(
        text.lines().nth(2).unwrap().contains("Edited While Broken"),
        "{text}"
    );
}

/// Applied webhook events older than `reverse.inbox_retention` are pruned; pending ones stay
/// whatever their age.
#[tokio::test]
async fn applied_inbox_events_past_retention_are_pruned() {
    let app = TestApp::spawn_with(
        &csv(&rows(1)),
        SandboxConfig::default(),
        &format!("{}inbox_retention = \"1d\"\n", webhook_only()),
    )
    .await;
    for (id, done) in [("EVold", true), ("EVpending", false), ("EVrecent", true)] {
        app.ledger()
            .inbox_put(quo_sync::ledger::NewInboxEvent {
                event_id: id,
                event_type: "contact.updated",
                quo_id: Some("not-ours"),
                payload: "{}",
            })
            .await
            .unwrap();
        if done {
            app.ledger().inbox_done(id, "applied").await.unwrap();
        }
    }
    app.ledger()
        .debug_execute("UPDATE inbox SET received_at = '2020-01-01T00:00:00.000Z', processed_at = CASE WHEN event_id = 'EVold' THEN '2020-01-01T00:00:00.000Z' ELSE processed_at END WHERE event_id IN ('EVold', 'EVpending')")
        .await
        .unwrap();
    app.cycle().await;
    let left = app
        .ledger()
        .debug_query_strings("SELECT event_id FROM inbox ORDER BY event_id")
        .await
        .unwrap();
    assert_eq!(left, vec!["EVpending".to_string(), "EVrecent".to_string()]);
}

/// A webhook client that sends its headers and then stalls gets 408 after
/// `reverse.read_timeout` instead of holding the connection.
#[tokio::test]
async fn a_stalled_webhook_body_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = app_with_webhooks(1, "", WebhookScheme::Standard).await;
    let url = app.start_receiver().await;
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/webhooks/quo")
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Signature headers (checked once the body is in); an unsigned request is refused at once.
    let now = chrono::Utc::now().timestamp();
    stream
        .write_all(format!("POST /webhooks/quo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nwebhook-id: EVslow\r\nwebhook-timestamp: {now}\r\nwebhook-signature: v1,c2lnbmF0dXJl\r\nContent-Length: 100\r\n\r\n{{\"id\":").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "the receiver answers by itself");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // Unsigned: refused before the body is read, without waiting for it.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"POST /webhooks/quo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "answered at once");
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
}
