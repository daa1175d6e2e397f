//! Operator control every replica sees, kept in `meta`: the pause (`quo-sync pause [--for 1h]`,
//! `resume`, the console's buttons) and run-now requests (`quo-sync run-now`, the console's
//! Run now button). The leader polls both ([`Ledger::control`]); a one-row read four times a
//! second works the same across processes on SQLite and PostgreSQL.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::db::on_pool;
use super::{Ledger, LedgerError};

/// Meta key of the pause (JSON of [`Pause`]).
const PAUSE: &str = "control.pause";
/// Meta key of the run-now counter.
const RUN_NOW: &str = "control.run_now";

/// Who paused syncing, when, and until when (`None`: until resumed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// `user@host` of the command, or `console`.
    pub by: String,
    /// When (RFC 3339).
    pub since: String,
    /// When it ends by itself (RFC 3339), if it does.
    pub until: Option<String>,
}

impl Pause {
    /// Whether the pause holds at `now` (an `until` in the past ended it).
    pub fn holds_at(&self, now: DateTime<Utc>) -> bool {
        match self.until.as_deref().map(DateTime::parse_from_rfc3339) {
            Some(Ok(until)) => until > now,
            // An unreadable end is read as no end: pausing errs on the side of writing nothing.
            _ => true,
        }
    }

    /// `paused by alice@ops-1 since … until …` (or `until resumed`).
    pub fn describe(&self) -> String {
        format!(
            "paused by {} since {} {}",
            self.by,
            self.since,
            match &self.until {
                Some(until) => format!("until {until}"),
                None => "until resumed".to_string(),
            }
        )
    }
}

/// What the leader polls: the pause in force and the run-now counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    /// The pause in force now, if any.
    pub pause: Option<Pause>,
    /// Run-now requests so far (a change means "start a cycle").
    pub run_requests: i64,
}

impl Ledger {
    /// Pauses syncing for every replica (replacing an earlier pause).
    pub async fn pause(
        &self,
        by: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<Pause, LedgerError> {
        let pause = Pause {
            by: by.to_string(),
            since: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            until: until.map(|u| u.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        };
        self.set_meta(
            PAUSE,
            &serde_json::to_string(&pause).expect("pause serialises"),
        )
        .await?;
        Ok(pause)
    }

    /// Ends the pause; the pause that was in force, if any.
    pub async fn resume(&self) -> Result<Option<Pause>, LedgerError> {
        let was = self.pause_state().await?;
        self.delete_meta(&[PAUSE]).await?;
        Ok(was)
    }

    /// The pause in force now, if any.
    pub async fn pause_state(&self) -> Result<Option<Pause>, LedgerError> {
        Ok(self
            .meta(PAUSE)
            .await?
            .map(|text| {
                serde_json::from_str::<Pause>(&text).unwrap_or(Pause {
                    by: "unknown".into(),
                    since: String::new(),
                    until: None,
                })
            })
            .filter(|p| p.holds_at(Utc::now())))
    }

    /// Asks the leader, wherever it runs, to start a cycle now.
    pub async fn request_run(&self) -> Result<(), LedgerError> {
        on_pool!(&self.pool, |p| sqlx::query(
            "INSERT INTO meta (key, value) VALUES ($1, '1') ON CONFLICT(key)
             DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT)"
        )
        .bind(RUN_NOW)
        .execute(p)
        .await
        .map(drop))?;
        Ok(())
    }

    /// The pause and the run-now counter, in one look.
    pub async fn control(&self) -> Result<Control, LedgerError> {
        Ok(Control {
            pause: self.pause_state().await?,
            run_requests: self
                .meta(RUN_NOW)
                .await?
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
    }
}
