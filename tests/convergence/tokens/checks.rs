//! The faults on both wires, the quiet cycles after them, and what must hold then.

use super::*;

/// The CRM-side faults the Salesforce fake supports, one drawn per step.
#[derive(Debug, Clone, Copy)]
pub(super) enum CrmFault {
    None,
    /// 1–3 API calls answered 500 or 503 (within the source's 5 retries).
    ApiErrors,
    /// 1–2 token requests answered 503 `temporarily_unavailable`, unprocessed.
    TokenUnavailable,
    /// The next token request stalls 30–80 ms, then 503, unprocessed.
    TokenStall,
    /// Every grant this step waits 20–150 ms.
    SlowGrants,
}

pub(super) const CRM_FAULTS: [CrmFault; 5] = [
    CrmFault::None,
    CrmFault::ApiErrors,
    CrmFault::TokenUnavailable,
    CrmFault::TokenStall,
    CrmFault::SlowGrants,
];

impl World {
    // ---- faults ----

    /// One of the CSV world's wire faults on the sandbox (not the webhook ones: no webhooks
    /// here; no lagging list before a cycle completed, as there).
    pub(super) async fn wire_fault(&mut self) {
        let fault = loop {
            let fault = FaultKind::draw(&mut self.rng);
            let webhooks = matches!(
                fault,
                FaultKind::WebhooksOff | FaultKind::DuplicateWebhooks | FaultKind::DroppedWebhooks
            );
            let lagging = matches!(
                fault,
                FaultKind::LaggingList | FaultKind::LostCreateBehindLaggingList
            );
            if !webhooks && (!lagging || self.cycled) {
                break fault;
            }
        };
        trace(|| format!("quo fault {fault:?}"));
        fault.inject_into(&self.sandbox, &mut self.rng).await;
    }

    /// The step's CRM fault; what the last one armed and nothing used is disarmed first, so
    /// failures never pile up past the source's 5 retries (a cycle failing on the CRM side
    /// would be no fault of the token handling).
    pub(super) fn crm_fault(&mut self) {
        let desk = self.crm.desk();
        desk.calm();
        self.crm.failed_calls(true);
        let fault = CRM_FAULTS[self.rng.random_range(0..CRM_FAULTS.len())];
        match fault {
            CrmFault::None => {}
            CrmFault::ApiErrors => {
                let status = [500, 503][self.rng.random_range(0..2)];
                self.crm.fail_next(self.rng.random_range(1..=3), status);
            }
            CrmFault::TokenUnavailable => {
                for _ in 0..self.rng.random_range(1..=2) {
                    desk.answer_next(
                        503,
                        json!({ "error": "temporarily_unavailable", "error_description": "try again" }),
                    );
                }
            }
            CrmFault::TokenStall => {
                desk.stall_next(1, Duration::from_millis(self.rng.random_range(30..=80)))
            }
            CrmFault::SlowGrants => {
                desk.set_delay(Duration::from_millis(self.rng.random_range(20..=150)))
            }
        }
        trace(|| format!("crm fault {fault:?}"));
    }

    /// The faults stop: the sandbox's, the org's API failures and the token desk's.
    pub(super) async fn calm(&mut self) {
        self.tally.quo_faults = fired(&self.sandbox.fault_counters());
        crate::common::sandbox_clear_faults(&self.sandbox.base_url()).await;
        self.crm.desk().calm();
        self.tally.crm_faults = self.crm.failed_calls(true) + self.crm.desk().injected_fired();
    }

    /// Main cycles with no faults until one writes nothing to either side; fails after `cap`.
    pub(super) async fn quiet(&mut self, cap: usize) {
        let mut reports = Vec::new();
        for _ in 0..cap {
            self.sandbox.reset_stats();
            let patches = self.crm.patches().len();
            let report = run_cycle(self.main().await, Mode::Apply)
                .await
                .unwrap_or_else(|e| panic!("a quiet cycle failed: {e}"));
            let writes = self.sandbox.stats().writes_total();
            let crm_writes = self.crm.patches().len() - patches;
            reports.push(format!(
                "{} (Quo writes {writes}, CRM writes {crm_writes})",
                crate::world::summary(&report)
            ));
            if writes == 0 && crm_writes == 0 {
                return;
            }
        }
        panic!(
            "still writing after {cap} quiet cycles:\n  {}",
            reports.join("\n  ")
        );
    }

    /// The convergence invariants that apply to a REST world, and the tokens'.
    pub(super) async fn check(&mut self) {
        let contacts = self.contacts_by_record();
        let ids: Vec<String> = (0..self.records).map(crm_id).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        invariants::no_duplicate_contacts(&contacts);
        let strays: Vec<&String> = invariants::without_a_record(&id_refs, &contacts).collect();
        assert!(
            strays.is_empty(),
            "contacts without a CRM record: {strays:?}"
        );
        let ctx = self.main().await;
        let ledger = ctx.ledger.clone();
        crate::common::assert_one_contact_per_record(&self.sandbox, &ledger, &ids).await;
        invariants::no_doubled_email_or_phone_items(&contacts);
        let conflicts = ledger.conflicts(100_000).await.unwrap();
        self.tally.conflicts = conflicts.len() as u64;
        invariants::each_conflict_names_typed_values_and_the_policys_winner(
            &self.log,
            self.policy,
            &conflicts,
        );
        for id in &ids {
            let crm = self.crm_fields(&self.crm.contact(id).unwrap());
            let quo = self.quo_fields(&contacts[id][0]);
            invariants::sides_agree(id, &crm, &quo);
            invariants::holds_the_last_typed_unless_a_conflict_names_both(
                &self.log,
                id,
                quo.into_iter().collect(),
                &conflicts,
            );
        }

        let desk = self.crm.desk();
        assert_eq!(
            desk.stale_presented(),
            0,
            "a rotated-away token was presented"
        );
        assert!(!desk.revoked(), "the token family was revoked");
        // Every process start was granted a token of its own, and expired tokens were
        // refused and replaced.
        assert!(
            desk.issued() >= self.starts,
            "{} grants for {} process starts",
            desk.issued(),
            self.starts
        );
        assert!(desk.expired_uses() >= 1, "no expired token was refused");
        assert!(self.crm.unauthorized() >= 1, "the CRM never answered 401");
        let stored = ledger.crm_token(TOKEN_ROW).await.unwrap();
        assert!(
            stored.is_some_and(|row| row.generation > 0 && row.token.is_some()),
            "no rotated refresh token was kept in the ledger"
        );
        let (_, installed) = logs();
        let captured = drain_logs();
        if !installed {
            trace(|| "another log subscriber came first: in-process logs not scanned".into());
        }
        for (what, text) in [
            ("the in-process logs", &captured),
            ("the binaries' output", &self.binary_logs),
        ] {
            assert!(!text.contains("invalid_grant"), "invalid_grant in {what}");
            assert!(
                !text.contains(REFRESH) && !text.contains(SECRET),
                "a secret in {what}"
            );
        }
        self.tally.refreshes = desk.issued();
        self.tally.rotations_by_others = desk.issued() - self.main_grants();
    }
}
