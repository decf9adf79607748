//! # upstream_guard_glue: everything that talks to the host, written once
//!
//! The policies (in `upstream_guard_stages`) decide nothing about the host and the core
//! (`upstream_guard`) knows nothing of it; this crate is the only place that does:
//!
//! - [`abi`]: the proxy-wasm ABI 0.2.1 imports, declared once;
//! - [`host`]: safe calls that return bytes and statuses, never panic, never convert to `String`
//!   (one request with a non-UTF-8 header must not trap the VM for a whole worker);
//! - [`pairs`]: the header-map encoding, parsed without trusting its lengths;
//! - [`stream`]: a stream's facts, each read from the host at most once and shared by stages;
//! - [`stage`]: the [`stage::Stage`] trait and pipelines of stages;
//! - [`dispatch`]: the exports, only those a module needs ([`export_filter!`]);
//! - [`shared`]: the compare-and-swap loop and version-checked snapshots of shared data;
//! - [`metrics`]: counters and gauges;
//! - `native` (off wasm): the same host calls as a [`native::Host`] trait, implemented by the
//!   Envoy dynamic module and by test fakes.
//!
//! The proxy-wasm Rust SDK is deliberately not used by the filters: its `String` getters unwrap
//! a UTF-8 conversion of bytes the client controls, several of its hostcalls panic on statuses
//! they do not expect, and its dispatcher exports every callback, each of which Envoy then
//! enters V8 for on every stream.

pub mod abi;
pub mod dispatch;
pub mod host;
pub mod metrics;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod pairs;
pub mod shared;
pub mod stage;
pub mod stream;

pub use abi::{BufferType, MapType, Status};
pub use host::Level;
pub use metrics::{Counter, Family, Gauge, Tally};
pub use stage::{BodyAction, Event, Flow, LocalReply, Pipeline, Stage, Step};
pub use stream::{Cx, Facts, Note, Phase, Replied};
