//! # libupstream_guard.so: every upstream-guard stage as an Envoy dynamic module
//!
//! The native shape of the same stages `upstream_guard.wasm` carries, with the same JSON
//! configuration (in the dynamic-module filter's `filter_config`), metric names, access-log
//! filter state and local replies. The stages and the dispatcher are the glue's, unchanged; this
//! crate is the host side only:
//!
//! - [`abi`]: Envoy 1.40's C ABI, the declarations used and safe wrappers (all `unsafe` here
//!   and in [`hooks`], each block with its reason);
//! - [`envoy`]: the stages' host interface ([`upstream_guard_glue::native::Host`]) over that ABI;
//! - [`store`]: the cross-worker store in process memory, with shared data's contract;
//! - [`hooks`]: the `envoy_dynamic_module_on_*` exports, each caught against panics.
//!
//! The module is pinned to one Envoy minor version (1.40): a dynamic module runs unsandboxed in
//! Envoy's process and its ABI changes between minor versions. The `.wasm` is the portable shape.

pub mod abi;
pub mod envoy;
pub mod hooks;
pub mod store;
