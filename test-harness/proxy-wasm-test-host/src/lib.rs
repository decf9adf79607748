//! # proxy-wasm-test-host
//!
//! A deterministic [proxy-wasm](https://github.com/proxy-wasm/spec) host on wasmtime, for
//! testing filters built for Envoy (or any ABI 0.2.1 host) without Envoy: it drives a
//! `wasm32-wasip1` filter the way Envoy would, with a fake clock, ticks on demand, HTTP and
//! gRPC callouts the test answers, L4 connections, metrics, properties, foreign functions,
//! and several workers sharing one shared-data store, and it counts every host call.
//!
//! Nothing is global but compiled code: a [`Host`] owns the clock, shared data, metrics and
//! queues; each loaded [`Plugin`] has one wasmtime store (one VM) per [`Worker`]. Tests run in
//! parallel. Each module is compiled once per process (and, with a cache directory, once per
//! build), so loading a filter again costs about a millisecond.
//!
//! ```no_run
//! use std::time::Duration;
//! use proxy_wasm_test_host::{Action, Host, HostError};
//!
//! # fn main() -> Result<(), HostError> {
//! let host = Host::new().workers(2);
//! let plugin = host.load("target/wasm32-wasip1/release/my_filter.wasm", r#"{"limit": 1}"#)?;
//! let mut s = plugin.worker(0).http_stream().property("source.address", "10.0.0.1:5555");
//! assert_eq!(s.request_headers(&[(":path", "/a"), (":method", "GET")], true)?, Action::Continue);
//! host.clock().advance(Duration::from_secs(1));
//! plugin.tick_all()?;
//! # Ok(()) }
//! ```
//!
//! The crate's README lists every host function and how it behaves compared with Envoy.
#![warn(missing_docs)]

pub mod abi;
pub mod accounting;
mod clock;
mod engine;
mod exports;
mod host;
mod http_stream;
pub mod pairs;
mod state;
mod stream;
mod tcp_stream;
mod types;
pub mod wasi;
pub mod wasi_run;
mod worker;

pub use accounting::{HostCalls, Import};
pub use clock::{Clock, DEFAULT_START_NANOS};
pub use engine::shared_engine;
pub use host::{Host, LoadOptions, Plugin};
pub use http_stream::HttpStream;
pub use state::VmState;
pub use tcp_stream::TcpStream;
pub use types::{
    grpc_status, level, status, Action, BufferType, GrpcKind, Headers, HostError, LocalResponse, MapType, MetricType,
    PeerType, PendingCall, PendingGrpcCall, Status, StreamType,
};
pub use worker::{Worker, GRPC_TIMEOUT_MESSAGE};
