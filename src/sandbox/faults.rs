//! Injected faults: the failures a real Quo produces only now and then, on demand.
//!
//! A test queues a [`Fault`]; the next matching API requests consume it. Status faults answer with
//! Quo's error body without touching state (a 500 that did nothing), `DropAfterWrite` applies the
//! write and then kills the TCP connection (the ambiguous failure that tempts a client into a
//! duplicate create), and `Latency` slows requests down. Admin routes never consume faults.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A fault to inject into the next API requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The next `count` API requests answer `status` with Quo's error body, applying nothing.
    Status {
        /// HTTP status, e.g. 429, 500, 503.
        status: u16,
        /// How many requests get it.
        count: u32,
        /// Whole seconds for a `Retry-After` header, if any.
        retry_after: Option<u64>,
    },
    /// The next `count` successful write requests (POST/PATCH/DELETE) are applied, then their
    /// connection is closed without any response (rejected writes answer normally).
    DropAfterWrite {
        /// How many writes get it.
        count: u32,
    },
    /// The next `count` API requests are delayed by `extra` on top of the configured latency.
    Latency {
        /// Extra delay.
        extra: Duration,
        /// How many requests get it.
        count: u32,
    },
}

/// The JSON form of a [`Fault`] for `POST /_sandbox/faults`, e.g.
/// `{"kind":"status","status":500,"count":3}`, `{"kind":"drop_after_write","count":1}`,
/// `{"kind":"latency","extra_ms":200,"count":2}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultSpec {
    /// See [`Fault::Status`].
    Status {
        /// HTTP status.
        status: u16,
        /// How many requests.
        #[serde(default = "one")]
        count: u32,
        /// `Retry-After` seconds.
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// See [`Fault::DropAfterWrite`].
    DropAfterWrite {
        /// How many writes.
        #[serde(default = "one")]
        count: u32,
    },
    /// See [`Fault::Latency`].
    Latency {
        /// Extra delay in milliseconds.
        extra_ms: u64,
        /// How many requests.
        #[serde(default = "one")]
        count: u32,
    },
}

fn one() -> u32 {
    1
}

impl From<FaultSpec> for Fault {
    fn from(s: FaultSpec) -> Fault {
        match s {
            FaultSpec::Status {
                status,
                count,
                retry_after,
            } => Fault::Status {
                status,
                count,
                retry_after,
            },
            FaultSpec::DropAfterWrite { count } => Fault::DropAfterWrite { count },
            FaultSpec::Latency { extra_ms, count } => Fault::Latency {
                extra: Duration::from_millis(extra_ms),
                count,
            },
        }
    }
}

/// Queued faults, consumed front to back per kind.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    queue: VecDeque<Fault>,
}

impl FaultQueue {
    /// Queues a fault (a zero count is ignored).
    pub(crate) fn push(&mut self, fault: Fault) {
        let count = match &fault {
            Fault::Status { count, .. }
            | Fault::DropAfterWrite { count }
            | Fault::Latency { count, .. } => *count,
        };
        if count > 0 {
            self.queue.push_back(fault);
        }
    }

    /// Drops every queued fault.
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }

    /// Takes one unit of the first fault matching `pick`, removing it when exhausted.
    fn take<T>(&mut self, pick: impl Fn(&mut Fault) -> Option<(T, &mut u32)>) -> Option<T> {
        let mut found = None;
        for (i, f) in self.queue.iter_mut().enumerate() {
            if let Some((t, count)) = pick(f) {
                *count -= 1;
                found = Some((i, t, *count == 0));
                break;
            }
        }
        let (i, t, exhausted) = found?;
        if exhausted {
            self.queue.remove(i);
        }
        Some(t)
    }

    /// Consumes one injected status answer, if queued.
    pub(crate) fn take_status(&mut self) -> Option<(u16, Option<u64>)> {
        self.take(|f| match f {
            Fault::Status {
                status,
                count,
                retry_after,
            } => Some(((*status, *retry_after), count)),
            _ => None,
        })
    }

    /// Consumes one connection drop, if queued.
    pub(crate) fn take_drop(&mut self) -> bool {
        self.take(|f| match f {
            Fault::DropAfterWrite { count } => Some(((), count)),
            _ => None,
        })
        .is_some()
    }

    /// Consumes one extra latency, if queued.
    pub(crate) fn take_latency(&mut self) -> Option<Duration> {
        self.take(|f| match f {
            Fault::Latency { extra, count } => Some((*extra, count)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_consumed_per_kind() {
        let mut q = FaultQueue::default();
        q.push(Fault::Status {
            status: 500,
            count: 2,
            retry_after: None,
        });
        q.push(Fault::DropAfterWrite { count: 1 });
        assert!(q.take_drop());
        assert!(!q.take_drop());
        assert_eq!(q.take_status(), Some((500, None)));
        assert_eq!(q.take_status(), Some((500, None)));
        assert_eq!(q.take_status(), None);
        assert_eq!(q.take_latency(), None);
    }
}
