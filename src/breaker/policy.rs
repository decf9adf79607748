//! One breaker's policy: what counts as a failure, when failures trip the circuit, how long it
//! stays open and how it probes. Resolved from the configuration (with per-cluster overrides);
//! the state machine only reads it.

use crate::diagnose::{upstream_failed, Observation};

/// Most probes a breaker tracks at once (bounds the stored value).
pub const MAX_PROBES: usize = 64;

/// Failure-rate tripping.
#[derive(Debug, Clone, PartialEq)]
pub struct RatioPolicy {
    pub threshold: f64,
    pub min_requests: u32,
    pub window_ns: u64,
}

/// What counts as a failure, and when failures trip the circuit.
#[derive(Debug, Clone, PartialEq)]
pub struct FailurePolicy {
    pub statuses: Vec<u16>,
    pub consecutive: Option<u32>,
    pub ratio: Option<RatioPolicy>,
}

/// Everything one breaker needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub failure: FailurePolicy,
    pub open_base_ns: u64,
    pub open_max_ns: u64,
    pub multiplier: f64,
    pub max_probes: u32,
    pub successes_to_close: u32,
    pub probe_timeout_ns: u64,
}

impl Policy {
    /// Open time after `trips` earlier trips: `base * multiplier^trips`, at most `max`.
    pub fn open_time_ns(&self, trips: u32) -> u64 {
        let grown = self.open_base_ns as f64 * self.multiplier.powi(trips.min(64) as i32);
        if grown.is_finite() && grown < self.open_max_ns as f64 {
            grown as u64
        } else {
            self.open_max_ns
        }
    }

    /// Classification, by the one classifier the diagnosis and passive health detection use too
    /// ([`crate::diagnose::upstream_failed`]) with this policy's failure statuses.
    pub fn is_failure(&self, observation: &Observation<'_>) -> bool {
        upstream_failed(observation, &self.failure.statuses)
    }
}
