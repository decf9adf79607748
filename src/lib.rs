//! # upstream_guard — the pure core
//!
//! Everything the upstream-guard filters *decide* lives here; everything they *do* (read a
//! property, send a local reply, touch shared data) lives in the thin adapters under
//! `filters/`. The split keeps policy testable natively and on wasm32 alike:
//!
//! - no `proxy_wasm`, no I/O, no clock reads: callers pass `now` in and get decisions back;
//! - configuration arrives as JSON, is parsed with `deny_unknown_fields`, and is validated once
//!   into the typed values the data path uses; every rejection names the field and the fix.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod breaker;
pub mod cidr;
pub mod concurrency;
pub mod config;
pub mod diagnose;
pub mod hash;
pub mod health;
pub mod llm;
pub mod peer;
pub mod ratelimit;
#[cfg(feature = "schema")]
pub mod schema;
pub mod sfv;
pub mod slots;
pub mod stages;
pub mod suite;

/// `response.code_details` strings that upstream-guard's own filters pass with their local replies,
/// so that the diagnostics filter (placed first in the chain) can tell them from Envoy's.
pub mod details {
    /// The adaptive concurrency stage refused the request: its class's share of the cluster's
    /// limit on requests in flight is taken.
    pub const CONCURRENCY_LIMITED: &str = "upstream_guard.concurrency_limited";
    /// The circuit breaker rejected the request because the upstream's circuit is open.
    pub const CIRCUIT_OPEN: &str = "upstream_guard.circuit_open";
    /// The circuit breaker rejected the request because the upstream's circuit opened on slow
    /// calls (`failure.slow`): it answers, but too late.
    pub const UPSTREAM_SLOW: &str = "upstream_guard.upstream_slow";
    /// The rate limiter rejected the request.
    pub const RATE_LIMITED: &str = "upstream_guard.rate_limited";
    /// A global rate limit rule with `on_service_error: deny` refused the request because its
    /// rate limit service could not be asked (unreachable, timed out, failed): not a limit.
    pub const RATE_LIMIT_SERVICE_UNAVAILABLE: &str = "upstream_guard.rate_limit_service_unavailable";
    /// The health router found no healthy upstream and failed fast.
    pub const NO_HEALTHY_UPSTREAM: &str = "upstream_guard.no_healthy_upstream";
    /// The health router answered its status endpoint (not an error).
    pub const HEALTH_STATUS: &str = "upstream_guard.health_status";
    /// The LLM stage found every provider of the requested model out.
    pub const MODEL_UNAVAILABLE: &str = "upstream_guard.model_unavailable";
    /// The LLM stage does not route the requested model.
    pub const UNKNOWN_MODEL: &str = "upstream_guard.unknown_model";
    /// The LLM stage could not read a model from the request body (or it was too large).
    pub const INVALID_REQUEST: &str = "upstream_guard.invalid_request";
    /// The LLM stage refused the request: the key's token budget is spent.
    pub const TOKEN_BUDGET: &str = "upstream_guard.token_budget_exhausted";
    /// Prefix shared by every details string above.
    pub const PREFIX: &str = "upstream_guard.";
}
