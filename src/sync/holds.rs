//! Values the CRM cannot hold. An emoji typed in Quo cannot be written into a Windows-1252 CSV
//! file; writing `?` would corrupt the CRM, and writing nothing while agreeing on Quo's value
//! would make the CRM's untouched value look like an edit next cycle, reverting Quo. Instead the
//! rest of the record is written, the field is recorded as a conflict (`quo-sync conflicts`,
//! policy `crm_cannot_hold`), and a hold remembers both values: the agreed snapshot keeps Quo's
//! value, and while the CRM field still holds what it kept, the CRM's side of every comparison
//! reads it as Quo's. A CRM edit of that field (any other value) ends the hold and goes to Quo
//! as an edit; a new Quo edit is merged and written back as usual.

use std::collections::BTreeMap;

use tracing::warn;

use super::merge_step::apply_change;
use super::{Cycle, Mode, SyncError, WriteBack};
use crate::domain::{ExternalId, Snapshot};
use crate::ledger::CrmHold;
use crate::source::Unwritable;

/// The conflict policy recorded for a value the CRM cannot hold.
const POLICY: &str = "crm_cannot_hold";

impl Cycle {
    /// The CRM's side of a comparison: a held field still holding the value the CRM kept reads
    /// as the value Quo keeps (agreed); a held field the CRM has since changed ends its hold.
    pub(super) async fn crm_view(
        &self,
        external_id: &ExternalId,
        mut crm: Snapshot,
    ) -> Result<Snapshot, SyncError> {
        let held = self
            .held
            .get_or_try_init(|| self.ctx.ledger.held_records())
            .await?;
        if !held.contains(external_id.as_str()) {
            return Ok(crm);
        }
        let now = crm.fields();
        for hold in self.ctx.ledger.holds_for(external_id.as_str()).await? {
            let kept = now.get(&hold.field).unwrap_or(&serde_json::Value::Null);
            if *kept == hold.crm_value {
                crm.set_field(&hold.field, hold.quo_value);
            } else if self.mode == Mode::Apply {
                self.ctx
                    .ledger
                    .hold_remove(external_id.as_str(), &hold.field)
                    .await?;
            }
        }
        Ok(crm)
    }

    /// The CRM wrote `wb`'s record but left `left_out` values out: each field they belong to is
    /// recorded as a conflict and held (Quo keeps its value, the CRM its own), and leaves the
    /// fields written and the fields reported. Returns the values the CRM really holds now.
    pub(super) async fn hold_unwritable(
        &self,
        wb: &mut WriteBack,
        mut fields: BTreeMap<String, String>,
        left_out: &[&Unwritable],
    ) -> Result<BTreeMap<String, String>, SyncError> {
        for value in left_out {
            fields.remove(&value.field);
        }
        let merged = wb.outcome.merged.clone();
        let affected: Vec<String> = wb
            .outcome
            .to_crm
            .iter()
            .filter(|name| {
                self.mapper
                    .to_crm_fields(&merged, std::slice::from_ref(*name))
                    .is_ok_and(|columns| left_out.iter().any(|v| columns.contains_key(&v.field)))
            })
            .cloned()
            .collect();
        let crm_now = wb
            .record
            .as_ref()
            .and_then(|r| self.mapper.map(&apply_change(r, &fields)).ok())
            .unwrap_or_default()
            .fields();
        let quo = merged.fields();
        let base = match self.ctx.ledger.record(&wb.external_id).await? {
            Some(row) => row.snapshot.unwrap_or_default().fields(),
            None => BTreeMap::new(),
        };
        let null = serde_json::Value::Null;
        let reason = left_out
            .iter()
            .map(|v| format!("column {:?}: {}", v.field, v.reason))
            .collect::<Vec<_>>()
            .join("; ");
        for name in &affected {
            let hold = CrmHold {
                field: name.clone(),
                crm_value: crm_now.get(name).unwrap_or(&null).clone(),
                quo_value: quo.get(name).unwrap_or(&null).clone(),
            };
            warn!(event = "write_back_unwritable", external_id = %wb.external_id, quo_id = %wb.quo_id, field = %name,
                  crm_value = %hold.crm_value, quo_value = %hold.quo_value, reason = %reason,
                  "the CRM cannot hold the Quo value: the rest of the record was written, the value stays in Quo");
            metrics::counter!("quo_sync_conflicts_total").increment(1);
            self.ctx
                .ledger
                .record_conflict(
                    wb.external_id.as_str(),
                    name,
                    base.get(name).unwrap_or(&null),
                    &hold.crm_value,
                    &hold.quo_value,
                    "quo",
                    POLICY,
                    Some(&self.run_id),
                )
                .await?;
            self.ctx
                .ledger
                .hold_add(wb.external_id.as_str(), &hold, &reason)
                .await?;
        }
        wb.outcome.to_crm.retain(|name| !affected.contains(name));
        Ok(fields)
    }
}
