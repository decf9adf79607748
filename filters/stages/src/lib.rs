//! # upstream_guard_stages: the policies, written once
//!
//! Each policy is a [`Stage`](upstream_guard_glue::Stage) over the glue: [`Diagnostics`],
//! [`RateLimiter`], [`Llm`], [`HealthRouter`], [`Concurrency`], [`CircuitBreaker`]. They compose into
//! `upstream_guard.wasm` ([`Suite`], all in one stream context, configured by one JSON object
//! with a section per policy); all but the LLM and concurrency stages also ship alone (a one-element pipeline
//! configured by the policy's own JSON). The filter crates under `filters/` are one
//! `export_filter!` line each.
//!
//! Order is the order of the chain this replaces: diagnostics first (it explains every later
//! stage's refusal as well as Envoy's), then the rate limiter (refuse before any work), the LLM
//! stage (route an LLM request by the model in its body), the health router (choose the upstream
//! of every other request), the concurrency stage (shed what the chosen cluster cannot take
//! quickly), and the circuit breaker last, guarding the cluster the LLM stage or the router
//! chose. For a request the LLM stage claims, every stage decides once the body is
//! in (see [`upstream_guard_glue::stage`]); the health router leaves a routed request alone.

pub mod circuit_breaker;
pub mod concurrency;
pub mod diagnostics;
pub mod health_router;
pub mod llm;
pub mod rate_limiter;

pub use circuit_breaker::CircuitBreaker;
pub use concurrency::Concurrency;
pub use diagnostics::Diagnostics;
pub use health_router::HealthRouter;
pub use llm::Llm;
pub use rate_limiter::RateLimiter;

use upstream_guard::breaker::BreakerConfig;
use upstream_guard::config::ConfigError;
use upstream_guard::diagnose::DiagnosticsConfig;
use upstream_guard::health::HealthConfig;
use upstream_guard::ratelimit::RateLimitConfig;
use upstream_guard::suite::SuiteConfig;
use upstream_guard_glue::{host, Level};

/// Every stage, each on when its section is present, in pipeline order.
pub type Suite = (
    Option<Diagnostics>,
    Option<RateLimiter>,
    Option<Llm>,
    Option<HealthRouter>,
    Option<Concurrency>,
    Option<CircuitBreaker>,
);

/// `upstream_guard.wasm`'s configuration.
pub fn suite(raw: &[u8]) -> Result<Suite, ConfigError> {
    let c = SuiteConfig::from_json(raw)?;
    let on = c.stages();
    if on.is_empty() {
        host::log(Level::Warn, "upstream_guard: no stage is configured: every request passes untouched");
    } else {
        host::log_with(Level::Info, || format!("upstream_guard: stages {}", on.join(" -> ")));
    }
    Ok((
        c.diagnostics.map(Diagnostics::new),
        c.rate_limiter.map(RateLimiter::new),
        c.llm.map(Llm::new),
        c.health_router.map(HealthRouter::new),
        c.concurrency.map(Concurrency::new),
        c.circuit_breaker.map(CircuitBreaker::new),
    ))
}

/// `diagnostics.wasm`'s configuration.
pub fn diagnostics(raw: &[u8]) -> Result<(Diagnostics,), ConfigError> {
    Ok((Diagnostics::new(DiagnosticsConfig::from_json(raw)?),))
}

/// `rate_limiter.wasm`'s configuration.
pub fn rate_limiter(raw: &[u8]) -> Result<(RateLimiter,), ConfigError> {
    Ok((RateLimiter::new(RateLimitConfig::from_json(raw)?),))
}

/// `health_router.wasm`'s configuration.
pub fn health_router(raw: &[u8]) -> Result<(HealthRouter,), ConfigError> {
    Ok((HealthRouter::new(HealthConfig::from_json(raw)?),))
}

/// `circuit_breaker.wasm`'s configuration.
pub fn circuit_breaker(raw: &[u8]) -> Result<(CircuitBreaker,), ConfigError> {
    Ok((CircuitBreaker::new(BreakerConfig::from_json(raw)?),))
}
