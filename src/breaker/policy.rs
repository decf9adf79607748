//! One breaker's policy: what counts as a failure, when failures trip the circuit, how long it
//! stays open and how it probes. Resolved from the configuration (with per-cluster overrides);
//! the state machine only reads it.

use super::machine::Outcome;
use crate::diagnose::{judge, Judgement, Observation};

/// Most probes a breaker tracks at once (bounds the stored value).
pub const MAX_PROBES: usize = 64;

/// Failure-rate tripping.
#[derive(Debug, Clone, PartialEq)]
pub struct RatioPolicy {
    pub threshold: f64,
    pub min_requests: u32,
    pub window_ns: u64,
}

/// Slow-call tripping: calls answered later than `after_ns` (to the response headers) are slow;
/// the circuit trips when their share of the window reaches `threshold`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlowPolicy {
    pub after_ns: u64,
    pub threshold: f64,
    pub min_requests: u32,
    /// The breaker's one sliding window (the failure ratio's when both are set).
    pub window_ns: u64,
}

/// What counts as a failure, and when failures trip the circuit.
#[derive(Debug, Clone, PartialEq)]
pub struct FailurePolicy {
    pub statuses: Vec<u16>,
    pub consecutive: Option<u32>,
    pub ratio: Option<RatioPolicy>,
    pub slow: Option<SlowPolicy>,
}

impl FailurePolicy {
    /// The sliding window, when a ratio or the slow-call share is counted over one.
    pub fn window_ns(&self) -> Option<u64> {
        self.ratio.as_ref().map(|r| r.window_ns).or(self.slow.as_ref().map(|s| s.window_ns))
    }
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
        crate::diagnose::upstream_failed(observation, &self.failure.statuses)
    }

    /// How a response went ([`crate::diagnose::judge`]): failed, slow (with `elapsed_ns` from the
    /// request to the response headers, when slow calls are counted), or fine.
    pub fn outcome(&self, observation: &Observation<'_>, elapsed_ns: Option<u64>) -> Outcome {
        let slow_after = self.failure.slow.as_ref().map(|s| s.after_ns);
        match judge(observation, &self.failure.statuses, elapsed_ns, slow_after) {
            Judgement::Failed => Outcome::Failure,
            Judgement::Slow => Outcome::Slow,
            Judgement::Fine => Outcome::Success,
        }
    }
}
