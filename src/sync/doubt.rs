//! The workspace doubt across cycles and processes (`reverse::doubt`): a doubt on record, this
//! process's or another's (a replica that led before, a `once` run), is each cycle's until a
//! read-back finds the linked contacts again, and each cycle that ends in doubt records what it
//! held back, so the operator sees it in `status`, `/readyz`, `/metrics` and the console.

use super::{Cycle, Mode, SyncError};
use crate::reverse::doubt::{self, HeldWork};

impl Cycle {
    /// Before anything else in an applying cycle: a doubt on record makes this process doubt the
    /// workspace too (a new leader must not create into the wrong one before its first absence),
    /// and a doubting process reads a sample of linked contacts back at once, so a key that
    /// points home again clears the doubt for everyone within one cycle, whatever the cycle
    /// then has to do.
    pub(super) async fn recheck_doubted_workspace(&self) -> Result<(), SyncError> {
        if self.mode != Mode::Apply {
            return Ok(());
        }
        if !self.ctx.client.workspace_doubted() {
            if doubt::load(&self.ctx.ledger).await?.is_none() {
                return Ok(());
            }
            self.ctx.client.workspace_unconfirmed();
        }
        self.workspace_checked_this_cycle().await?;
        Ok(())
    }

    /// Whether the key answers for our workspace, read back at most once per cycle (for the
    /// cycle's start and `workspace_gate`).
    pub(super) async fn workspace_checked_this_cycle(&self) -> Result<bool, SyncError> {
        let ours = self
            .workspace_rechecked
            .get_or_try_init(|| async {
                crate::reverse::absence::absences_trusted(
                    &self.ctx.ledger,
                    &self.ctx.client,
                    &Default::default(),
                )
                .await
                .map_err(SyncError::from)
            })
            .await?;
        Ok(*ours)
    }

    /// Counts work held back because the workspace is in doubt.
    pub(super) fn held_by_doubt(&self, count: impl FnOnce(&mut HeldWork)) {
        count(
            &mut self
                .held_by_doubt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    /// After the settle phase: a cycle that ends in doubt records what it held back. Under
    /// `--allow-mass-delete` (the operator vouched, nothing was held) the linked contacts are
    /// read back once more: those it re-created or unlinked clear the doubt now rather than at
    /// the next cycle.
    pub(super) async fn record_doubt(&self) -> Result<(), SyncError> {
        if self.mode != Mode::Apply || !self.ctx.client.workspace_doubted() {
            return Ok(());
        }
        if self.ctx.settings.allow_mass_delete
            && crate::reverse::absence::absences_trusted(
                &self.ctx.ledger,
                &self.ctx.client,
                &Default::default(),
            )
            .await?
        {
            return Ok(());
        }
        let held = *self
            .held_by_doubt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        doubt::held(&self.ctx.ledger, held).await?;
        Ok(())
    }
}
