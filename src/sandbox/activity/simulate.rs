//! `quo-sync sandbox --simulate-calls N/min`: calls and texts against the seeded contacts, so a
//! new user can watch activity land in the CRM without a phone.
//!
//! Roughly two thirds are calls (mostly answered, some missed, a few with a voicemail), one
//! third texts, in both directions; one in ten comes from a number no contact holds, which
//! shows how unmatched activity is counted.

use std::sync::Weak;
use std::time::Duration;

use rand::Rng;

use super::store::{CallOutcome, CallSpec, Direction, MessageSpec};
use crate::sandbox::Shared;
use crate::sandbox::webhooks::lock;

/// Texts the simulator sends.
const TEXTS: &[&str] = &[
    "Hi, just following up on the quote.",
    "Can we move our call to Thursday?",
    "Thanks, received the documents.",
    "Running 5 minutes late.",
];

/// Starts the generator; it stops when the sandbox does.
pub(super) fn start(shared: Weak<Shared>, per_minute: u32) {
    if per_minute == 0 {
        return;
    }
    let period = Duration::from_secs_f64(60.0 / f64::from(per_minute));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            one(&shared);
        }
    });
}

fn one(shared: &Shared) {
    let numbers: Vec<String> = lock(&shared.store)
        .all()
        .filter_map(|c| c.phones.first().map(|p| p.value.clone()))
        .collect();
    let mut rng = rand::rng();
    let number = match numbers.len() {
        0 => format!("+1415555{:04}", rng.random_range(0..10_000)),
        n if rng.random_range(0..10) == 0 => {
            let _ = n;
            format!("+1212555{:04}", rng.random_range(0..10_000))
        }
        n => numbers[rng.random_range(0..n)].clone(),
    };
    let direction = if rng.random_bool(0.5) {
        Direction::Incoming
    } else {
        Direction::Outgoing
    };
    let users: Vec<String> = lock(&shared.activity.store)
        .users
        .iter()
        .map(|u| u.id.clone())
        .collect();
    let user_id = Some(users[rng.random_range(0..users.len())].clone());
    if rng.random_range(0..3) == 0 {
        let text = TEXTS[rng.random_range(0..TEXTS.len())].to_string();
        shared.activity_message(&MessageSpec {
            number,
            direction,
            text,
            user_id,
            created_at: None,
        });
        return;
    }
    let outcome = match rng.random_range(0..10) {
        0..7 => CallOutcome::Answered,
        7..9 => CallOutcome::Missed,
        _ if direction == Direction::Incoming => CallOutcome::Voicemail,
        _ => CallOutcome::Missed,
    };
    let duration = match outcome {
        CallOutcome::Answered => rng.random_range(20..900),
        CallOutcome::Missed => 0,
        CallOutcome::Voicemail => rng.random_range(5..60),
    };
    shared.activity_call(&CallSpec {
        number,
        direction,
        outcome,
        duration,
        user_id,
        created_at: None,
        recorded: true,
    });
}
