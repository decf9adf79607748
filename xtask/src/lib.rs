//! Library side of `cargo xtask`: OCI packaging and pushing, so that tests can drive them
//! directly.

/// Every module that ships, each with its image and manifests: `upstream_guard` (every stage in
/// one module) and each single-policy stage alone, from the core's one list of stages
/// ([`upstream_guard::stages`]).
pub static FILTERS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(upstream_guard::stages::modules);

pub mod bench;
pub mod bench_cost;
pub mod bench_overload;
pub mod demo;
pub mod fuzz;
pub mod manifests;
pub mod oci;
pub mod soak;
