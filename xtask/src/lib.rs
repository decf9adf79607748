//! Library side of `cargo xtask`: OCI packaging and pushing, so that tests can drive them
//! directly.

/// Every module that ships, each with its image and manifests: `upstream_guard` (all four
/// stages in one module) and each policy alone.
pub const FILTERS: &[&str] = &["upstream_guard", "diagnostics", "rate_limiter", "circuit_breaker", "health_router"];

pub mod bench;
pub mod bench_cost;
pub mod demo;
pub mod fuzz;
pub mod manifests;
pub mod oci;
pub mod soak;
