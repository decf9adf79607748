//! Circuit breaking: classify each response, count failures, and run the closed / open /
//! half-open state machine, with time passed in.
//!
//! The state of one breaker is a small value ([`Breaker`]) that the filter keeps in shared data and
//! updates with compare-and-swap, so every worker sees the same circuit. Events go in
//! ([`Breaker::admit`] at request time, [`Breaker::record`] when the response is known) and come out
//! as values: an admission verdict and, when the circuit changes state, a [`Transition`] to log
//! and count once.

pub(crate) mod config;
mod machine;
mod policy;

pub use config::{BreakerConfig, BreakerJson};
pub use machine::{Admission, Breaker, Outcome, Phase, Transition, TripCause};
pub use policy::{FailurePolicy, Policy, RatioPolicy, SlowPolicy, MAX_PROBES};
