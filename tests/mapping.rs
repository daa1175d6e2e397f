//! The mapping's promises seen from outside: ids that would break the ledger are quarantined
//! with a readable reason while the rest of the file syncs.

mod common;

use common::{TestApp, csv, row};

/// An id with a control character (here U+0001 inside the id) is refused at read time: the row
/// lands in quarantine with the id escaped in its reason, and every other row is created.
#[tokio::test]
async fn an_id_with_a_control_character_is_quarantined_and_the_rest_sync() {
    let data = vec![row("c1", 1), row("c\u{1}2", 2), row("c3", 3)];
    let app = TestApp::spawn(&csv(&data)).await;
    let report = app.cycle().await;
    assert_eq!(report.counts.created, 2);
    assert_eq!(report.counts.quarantined, 1);
    app.assert_one_contact_per_record(&["c1".into(), "c3".into()])
        .await;
    assert_eq!(app.sandbox.contacts().len(), 2, "nothing else created");
    let quarantine = app.ledger().quarantined().await.unwrap();
    assert_eq!(quarantine.len(), 1, "{quarantine:#?}");
    let entry = &quarantine[0];
    assert!(entry.location.ends_with("line 3"), "{}", entry.location);
    assert!(
        entry.reason.contains("c\\u{1}2") && entry.reason.contains("control character"),
        "the reason names the escaped id: {}",
        entry.reason
    );
    assert!(
        !entry.reason.contains('\u{1}') && !entry.key.contains('\u{1}'),
        "no raw control character reaches the ledger: {entry:?}"
    );
}
