//! Library side of `cargo xtask`: OCI packaging and pushing, so that tests can drive them
//! directly.

pub mod bench;
pub mod bench_cost;
pub mod demo;
pub mod fuzz;
pub mod manifests;
pub mod oci;
