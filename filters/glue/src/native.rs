//! The host interface off wasm: what a stage may ask of a host, as one trait.
//!
//! In a `.wasm` every function of [`crate::host`] is a proxy-wasm import and nothing here is
//! compiled. Natively those same functions ask a [`Host`]:
//!
//! - the Envoy dynamic module (`filters/dynamic_module`) installs its implementation once per
//!   process with [`install`]: Envoy's C ABI behind the same calls, with process memory for the
//!   cross-worker store;
//! - a test installs a fake for one thread with [`scoped`] (no process-wide state, so tests
//!   running in parallel threads never see each other's host);
//! - with neither, every call answers [`Status::Unimplemented`] or nothing, as a host without
//!   the call would, and the code under it still runs.
//!
//! The vocabulary is the one the stages already speak ([`MapType`], [`BufferType`], property
//! paths with NUL-joined segments): each implementation maps it to its own ABI, so a stage
//! names no ABI. Every method has a default that answers "unimplemented", so a fake implements
//! only what its test needs.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;

use crate::abi::{BufferType, MapType, Status};
use crate::host::{Level, MetricKind};

/// What a stage may ask of a host. Values come back as bytes; statuses are values; no method
/// may panic on anything the host answers.
#[allow(unused_variables)]
pub trait Host {
    /// Logs a message (already filtered by [`Host::log_level`]).
    fn log(&self, level: Level, message: &str) {}
    /// The host's log level (ABI numbering, 6 = off); `None` when unknown.
    fn log_level(&self) -> Option<u32> {
        None
    }
    /// Wall clock, nanoseconds since the Unix epoch (0 when unknown).
    fn now(&self) -> u64 {
        0
    }
    /// Asks for [`Stage::tick`](crate::Stage::tick) every `ms` milliseconds.
    fn set_tick_period(&self, ms: u32) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
    /// One header's first value.
    fn header(&self, map: MapType, name: &str) -> Option<Vec<u8>> {
        None
    }
    /// A whole header map, in the [`crate::pairs`] encoding.
    fn header_map(&self, map: MapType) -> Option<Vec<u8>> {
        None
    }
    /// Sets (replaces) a header. A request header set before routing changes the route.
    fn set_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
    /// Removes a header.
    fn remove_header(&self, map: MapType, name: &str) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
    /// An attribute by its NUL-joined path (`b"response\0code"`); integers as 8 bytes LE.
    fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        None
    }
    /// Filter state `wasm.<path>` (what the access log prints and routes match).
    fn set_property(&self, path: &[u8], value: &[u8]) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
    /// The cross-worker store: a value and its version; `Ok(None)` for a missing key.
    fn shared_get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, Status> {
        Err(Status::Unimplemented)
    }
    /// Writes if the version is still `cas` (0, or a missing key: unconditionally); otherwise
    /// [`Status::CasMismatch`].
    fn shared_set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
    /// Up to `max` bytes of a buffer from `start`.
    fn buffer(&self, kind: BufferType, start: usize, max: usize) -> Option<Vec<u8>> {
        None
    }
    /// A buffer's length.
    fn buffer_len(&self, kind: BufferType) -> Option<usize> {
        None
    }
    /// Replaces `size` bytes at `start` with `data`.
    fn set_buffer(&self, kind: BufferType, start: usize, size: usize, data: &[u8]) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
    /// Sends a local reply on the current stream.
    fn send_local_response(
        &self,
        status: u16,
        details: &str,
        body: &[u8],
        headers: &[(&str, &[u8])],
        grpc_status: Option<u32>,
    ) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
    /// Resumes the current (paused) request.
    fn continue_request(&self) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
    /// Makes stream `context` the current one.
    fn set_effective_context(&self, context: u32) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
    /// An HTTP call to a cluster; its token.
    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&[u8], &[u8])],
        body: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, Status> {
        Err(Status::Unimplemented)
    }
    /// A unary gRPC call to a cluster; its token.
    fn grpc_call(
        &self,
        service: &[u8],
        service_name: &str,
        method: &str,
        metadata: &[(&[u8], &[u8])],
        message: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, Status> {
        Err(Status::Unimplemented)
    }
    /// Cancels a gRPC call.
    fn grpc_cancel(&self, token: u32) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
    /// The status and message of the gRPC call that just closed.
    fn grpc_status(&self) -> (u32, Vec<u8>) {
        (2, Vec::new())
    }
    /// A host function by name (`clear_route_cache`).
    fn foreign(&self, name: &str, args: &[u8]) -> Result<Vec<u8>, Status> {
        Err(Status::Unimplemented)
    }
    /// Defines a metric; its id.
    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, Status> {
        Err(Status::Unimplemented)
    }
    /// Adds to a counter or gauge.
    fn increment_metric(&self, id: u32, by: i64) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
    /// Sets a gauge.
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        Err(Status::Unimplemented)
    }
}

static PROCESS: OnceLock<&'static (dyn Host + Sync)> = OnceLock::new();

thread_local! {
    static THREAD: RefCell<Option<Rc<dyn Host>>> = const { RefCell::new(None) };
}

/// Makes `host` the host of every thread of this process (the dynamic module, at load). A second
/// call is refused: the first host stays.
pub fn install(host: &'static (dyn Host + Sync)) -> bool {
    PROCESS.set(host).is_ok()
}

/// Runs `f` with `host` as this thread's host (tests); the previous one comes back afterwards.
pub fn scoped<R>(host: Rc<dyn Host>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Rc<dyn Host>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            THREAD.with(|t| *t.borrow_mut() = prev);
        }
    }
    let prev = THREAD.with(|t| t.borrow_mut().replace(host));
    let _restore = Restore(prev);
    f()
}

/// Runs `f` on the current host, if there is one.
#[inline]
pub fn with<R>(f: impl FnOnce(&dyn Host) -> R) -> Option<R> {
    if let Some(h) = PROCESS.get() {
        return Some(f(*h));
    }
    let local = THREAD.with(|t| t.borrow().clone())?;
    Some(f(&*local))
}
