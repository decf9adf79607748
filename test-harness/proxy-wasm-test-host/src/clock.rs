//! The fake clock: every VM of a host reads the same time, and time moves only when the test
//! says so, so anything that depends on time (refills, timeouts, ticks) is deterministic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// 2026-01-01T00:00:00Z in nanoseconds since the Unix epoch: where a new host's clock starts.
pub const DEFAULT_START_NANOS: u64 = 1_767_225_600_000_000_000;

/// The fake clock (nanoseconds since the Unix epoch), shared by every VM of a host. Cloning it
/// gives another handle on the same time.
#[derive(Debug, Clone)]
pub struct Clock(Arc<AtomicU64>);

impl Default for Clock {
    fn default() -> Self {
        Clock::starting_at(DEFAULT_START_NANOS)
    }
}

impl Clock {
    /// A clock showing `nanos` since the Unix epoch.
    pub fn starting_at(nanos: u64) -> Clock {
        Clock(Arc::new(AtomicU64::new(nanos)))
    }

    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Sets the time (may go backwards: filters must cope).
    pub fn set_nanos(&self, ns: u64) {
        self.0.store(ns, Ordering::SeqCst);
    }

    /// The time now.
    pub fn now_nanos(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
