//! Diagnosis: from what Envoy knows about a response to a sentence an on-call engineer can act on.
//!
//! The pipeline is *observe → classify → report*: the adapter reads properties into an
//! [`Observation`], [`classify`] picks one [`Cause`] (each with a hint), and [`Report`] renders it
//! as a structured-field header or a JSON body, hiding addresses from untrusted clients.

mod cause;
mod config;
mod flags;
mod report;

pub use cause::{classify, is_error, judge, upstream_failed, Cause, Judgement, Observation};
pub use config::{DiagnosticsConfig, DiagnosticsJson, Expose, When};
pub use flags::{Flag, ResponseFlags};
pub use report::Report;
