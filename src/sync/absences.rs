//! Absence is not deletion: a record a complete read did not return is deleted only when the
//! next complete read agrees. A CSV file read while it was being rewritten in place (a pause in
//! an `scp`, a streaming export) returns a prefix; a REST list can skip a page while records
//! move. One such read must not delete, and re-create later under a new id, every record past
//! the cut. The first read notes what it missed (`source_absences`); a record is deleted when
//! the following complete read misses it too, and forgotten as soon as a read returns it.

use tracing::info;

use super::{Cycle, Mode, SyncError};
use crate::domain::ExternalId;

impl Cycle {
    /// Of the records this complete read did not return, those the previous complete read did
    /// not return either: only they may be deleted. The rest are noted for the next read (a
    /// dry run notes nothing).
    pub(super) async fn confirmed_absences(
        &self,
        gone: Vec<ExternalId>,
    ) -> Result<Vec<ExternalId>, SyncError> {
        let before = self.ctx.ledger.absences().await?;
        if self.mode == Mode::Apply {
            let missing: Vec<String> = gone.iter().map(ToString::to_string).collect();
            self.ctx.ledger.set_absences(&missing, &self.run_id).await?;
        }
        let (confirmed, first): (Vec<ExternalId>, Vec<ExternalId>) = gone
            .into_iter()
            .partition(|id| before.contains(id.as_str()));
        if !first.is_empty() {
            info!(
                event = "source_absence_noted",
                records = first.len(),
                sample = ?first.iter().take(5).map(ExternalId::as_str).collect::<Vec<_>>(),
                "records missing from this complete read; deleted only if the next complete read agrees"
            );
        }
        Ok(confirmed)
    }
}
