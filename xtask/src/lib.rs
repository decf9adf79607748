//! Library side of `cargo xtask`: OCI packaging and pushing, so that tests can drive them
//! directly.

/// Every module that ships, each with its image and manifests: `upstream_guard` (every stage in
/// one module) and each single-policy stage alone, from the core's one list of stages
/// ([`upstream_guard::stages`]).
pub static FILTERS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(upstream_guard::stages::modules);

/// A task that failed, with what failed already explained to the user: the one error of every
/// xtask task (the modules name it for their task: `BenchError`, `SoakError`, `FuzzError`).
#[derive(Debug)]
pub struct TaskError(pub String);

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TaskError {}

pub mod bench;
pub mod bench_cost;
pub mod bench_overload;
pub mod demo;
pub mod fuzz;
pub mod manifests;
pub mod oci;
pub mod soak;
