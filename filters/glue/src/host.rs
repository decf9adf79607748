//! Safe host calls: every value comes back as **bytes**, every status is a value.
//!
//! Header values, bodies, properties and callout answers may hold any bytes; converting them to
//! `String` on the way in (as the proxy-wasm SDK's getters do, with an `unwrap`) lets one request
//! with a byte ≥ 0x80 trap the VM and take the filter down for the whole worker. Here nothing is
//! converted: callers decide what a value means. No function panics, whatever the host answers.
//!
//! Cost matters: in Envoy every call that returns data re-enters the VM once to allocate the
//! result (measured at about 8,000 instructions, against about 2,000 for a call that returns
//! nothing), so callers read each value at most once per stream (see [`crate::stream`]).

use std::cell::Cell;

use crate::abi::{self, BufferType, MapType, Status};
use crate::pairs;

/// Off wasm, answers from the installed [`crate::native::Host`] when there is one (and falls
/// through to the native stand-ins otherwise); in a `.wasm`, nothing.
macro_rules! native {
    (|$h:ident| $call:expr) => {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(r) = crate::native::with(|$h| $call) {
            return r;
        }
    };
}

/// Takes ownership of a buffer the host filled through `proxy_on_memory_allocate`.
fn take(ptr: *mut u8, len: usize) -> Vec<u8> {
    if ptr.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: the host returns a buffer it obtained from `proxy_on_memory_allocate(len)`, which
    // allocated exactly `len` bytes with `Vec::with_capacity(len)` and forgot it; the host wrote
    // all `len` bytes before returning.
    unsafe { Vec::from_raw_parts(ptr, len, len) }
}

/// The allocator the host calls to return data: a `Vec` of exactly `size` bytes, handed over.
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut v: Vec<u8> = Vec::with_capacity(size);
    let ptr = v.as_mut_ptr();
    std::mem::forget(v);
    ptr
}

/// Marks the module as speaking ABI 0.2.1.
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Log levels, as the ABI numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

thread_local! {
    /// The host's log level, read at configure time and on ticks; messages below it are never
    /// formatted. Until read, everything is logged.
    static LOG_LEVEL: Cell<u32> = const { Cell::new(0) };
}

/// Reads the host's log level (Envoy's `wasm` logger) so that [`enabled`] can skip formatting.
/// A host without the call keeps the previous level.
pub fn refresh_log_level() {
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(level) = crate::native::with(|h| h.log_level()) {
        if let Some(level) = level {
            LOG_LEVEL.with(|l| l.set(level));
        }
        return;
    }
    let mut level = 0u32;
    // SAFETY: `level` is a live u32 the host writes.
    if Status::check(unsafe { abi::proxy_get_log_level(&mut level) }).is_ok() {
        // Envoy answers 6 for "off": keep it as a number, never as an enum value.
        LOG_LEVEL.with(|l| l.set(level));
    }
}

/// True when a message at `level` would be logged.
pub fn enabled(level: Level) -> bool {
    LOG_LEVEL.with(|l| level as u32 >= l.get())
}

/// Logs `message` at `level` (dropped when the host's level is higher, or the call fails).
pub fn log(level: Level, message: &str) {
    if enabled(level) {
        native!(|h| h.log(level, message));
        // SAFETY: the pointer and length describe `message`, alive for the call.
        let _ = unsafe { abi::proxy_log(level as u32, message.as_ptr(), message.len()) };
    }
}

/// Logs the message `f` builds, formatting it only when `level` is enabled.
pub fn log_with(level: Level, f: impl FnOnce() -> String) {
    if enabled(level) {
        log(level, &f());
    }
}

/// The host's wall clock in nanoseconds since the Unix epoch; 0 on a host that cannot tell (every
/// limit then behaves as if no time passed, which errs on the strict side).
pub fn now() -> u64 {
    native!(|h| h.now());
    let mut t = 0u64;
    // SAFETY: `t` is a live u64 the host writes.
    match Status::check(unsafe { abi::proxy_get_current_time_nanoseconds(&mut t) }) {
        Ok(()) => t,
        Err(_) => 0,
    }
}

/// Asks for `on_tick` every `ms` milliseconds (0 stops it).
pub fn set_tick_period(ms: u32) -> Result<(), Status> {
    native!(|h| h.set_tick_period(ms));
    // SAFETY: no pointers.
    Status::check(unsafe { abi::proxy_set_tick_period_milliseconds(ms) })
}

/// One header's value (the first, if repeated), as bytes.
pub fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    native!(|h| h.header(map, name));
    let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
    // SAFETY: `name` is alive for the call; the return slots are live locals.
    let r = unsafe { abi::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut ptr, &mut len) };
    Status::check(r).ok()?;
    Some(take(ptr, len))
}

/// The whole header map, serialized (parse with [`pairs::Pairs`]): one host call for any number
/// of headers.
pub fn header_map(map: MapType) -> Option<Vec<u8>> {
    native!(|h| h.header_map(map));
    let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
    // SAFETY: the return slots are live locals.
    let r = unsafe { abi::proxy_get_header_map_pairs(map as u32, &mut ptr, &mut len) };
    Status::check(r).ok()?;
    Some(take(ptr, len))
}

/// Sets (replaces) a header.
pub fn set_header(map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
    native!(|h| h.set_header(map, name, value));
    // SAFETY: both slices are alive for the call.
    Status::check(unsafe {
        abi::proxy_replace_header_map_value(map as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Removes a header.
pub fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    native!(|h| h.remove_header(map, name));
    // SAFETY: `name` is alive for the call.
    Status::check(unsafe { abi::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// A property, by its path with segments joined by NUL (`b"response\0code"`).
pub fn property(path: &[u8]) -> Option<Vec<u8>> {
    native!(|h| h.property(path));
    let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
    // SAFETY: `path` is alive for the call; the return slots are live locals.
    let r = unsafe { abi::proxy_get_property(path.as_ptr(), path.len(), &mut ptr, &mut len) };
    Status::check(r).ok()?;
    Some(take(ptr, len))
}

/// Sets a property (Envoy: filter state `wasm.<path>`, readable by the access log).
pub fn set_property(path: &[u8], value: &[u8]) -> Result<(), Status> {
    native!(|h| h.set_property(path, value));
    // SAFETY: both slices are alive for the call.
    Status::check(unsafe { abi::proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// A shared-data value and its CAS number; `Ok(None)` when the key does not exist. An empty
/// value costs no allocation (the host returns no data), which [`crate::shared::Epoch`] uses.
pub fn shared_get(key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, Status> {
    native!(|h| h.shared_get(key));
    let (mut ptr, mut len, mut cas) = (std::ptr::null_mut(), 0usize, 0u32);
    // SAFETY: `key` is alive for the call; the return slots are live locals.
    let r = unsafe { abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut len, &mut cas) };
    match Status::from_raw(r) {
        Status::Ok => Ok(Some((take(ptr, len), cas))),
        Status::NotFound => Ok(None),
        s => Err(s),
    }
}

/// Writes a shared-data value if its CAS number is still `cas` (0: unconditionally).
pub fn shared_set(key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
    native!(|h| h.shared_set(key, value, cas));
    // SAFETY: both slices are alive for the call.
    Status::check(unsafe { abi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) })
}

/// Up to `max` bytes of a buffer from `start`.
pub fn buffer(kind: BufferType, start: usize, max: usize) -> Option<Vec<u8>> {
    native!(|h| h.buffer(kind, start, max));
    let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
    // SAFETY: the return slots are live locals.
    let r = unsafe { abi::proxy_get_buffer_bytes(kind as u32, start, max, &mut ptr, &mut len) };
    Status::check(r).ok()?;
    Some(take(ptr, len))
}

/// How many bytes a buffer holds now (`None` when the host cannot tell).
pub fn buffer_len(kind: BufferType) -> Option<usize> {
    native!(|h| h.buffer_len(kind));
    let (mut len, mut flags) = (0usize, 0u32);
    // SAFETY: the return slots are live locals.
    Status::check(unsafe { abi::proxy_get_buffer_status(kind as u32, &mut len, &mut flags) }).ok()?;
    Some(len)
}

/// Replaces `size` bytes of a buffer at `start` with `data`.
pub fn set_buffer(kind: BufferType, start: usize, size: usize, data: &[u8]) -> Result<(), Status> {
    native!(|h| h.set_buffer(kind, start, size, data));
    // SAFETY: `data` is alive for the call.
    Status::check(unsafe { abi::proxy_set_buffer_bytes(kind as u32, start, size, data.as_ptr(), data.len()) })
}

/// Sends a local reply. `details` becomes `response.code_details` (the SDK passes none, so a
/// diagnostics filter earlier in the chain could not tell our replies from Envoy's); a gRPC
/// request gets `grpc_status` (0–16) instead of Envoy's mapping of the HTTP status.
pub fn send_local_response(
    status: u16,
    details: &str,
    body: &[u8],
    headers: &[(&str, &[u8])],
    grpc_status: Option<u32>,
) -> Result<(), Status> {
    native!(|h| h.send_local_response(status, details, body, headers, grpc_status));
    let headers = pairs::encode(headers.iter().map(|(k, v)| (k.as_bytes(), *v)));
    let grpc = grpc_status.and_then(|g| i32::try_from(g).ok()).unwrap_or(-1);
    // SAFETY: every pointer/length pair points into a slice alive for the call; the host copies.
    Status::check(unsafe {
        abi::proxy_send_local_response(
            u32::from(status),
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            grpc,
        )
    })
}

/// Resumes the paused request (after an asynchronous decision).
pub fn continue_request() -> Result<(), Status> {
    native!(|h| h.continue_request());
    // SAFETY: no pointers.
    Status::check(unsafe { abi::proxy_continue_stream(0) })
}

/// Makes `context` the one later calls act on (after a root-level callback about a stream).
pub fn set_effective_context(context: u32) -> Result<(), Status> {
    native!(|h| h.set_effective_context(context));
    // SAFETY: no pointers.
    Status::check(unsafe { abi::proxy_set_effective_context(context) })
}

/// An HTTP callout to an Envoy cluster; returns its token.
pub fn http_call(cluster: &str, headers: &[(&[u8], &[u8])], body: &[u8], timeout_ms: u32) -> Result<u32, Status> {
    native!(|h| h.http_call(cluster, headers, body, timeout_ms));
    let headers = pairs::encode(headers.iter().copied());
    let trailers = pairs::encode(std::iter::empty());
    let mut token = 0u32;
    // SAFETY: every pointer/length pair points into a live slice; `token` is a live local.
    Status::check(unsafe {
        abi::proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// A unary gRPC call; `service` is an Envoy cluster name (or a serialized GrpcService).
pub fn grpc_call(
    service: &[u8],
    service_name: &str,
    method: &str,
    metadata: &[(&[u8], &[u8])],
    message: &[u8],
    timeout_ms: u32,
) -> Result<u32, Status> {
    native!(|h| h.grpc_call(service, service_name, method, metadata, message, timeout_ms));
    let metadata = pairs::encode(metadata.iter().copied());
    let mut token = 0u32;
    // SAFETY: every pointer/length pair points into a live slice; `token` is a live local.
    Status::check(unsafe {
        abi::proxy_grpc_call(
            service.as_ptr(),
            service.len(),
            service_name.as_ptr(),
            service_name.len(),
            method.as_ptr(),
            method.len(),
            metadata.as_ptr(),
            metadata.len(),
            message.as_ptr(),
            message.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}

/// Cancels a gRPC call.
pub fn grpc_cancel(token: u32) -> Result<(), Status> {
    native!(|h| h.grpc_cancel(token));
    // SAFETY: no pointers.
    Status::check(unsafe { abi::proxy_grpc_cancel(token) })
}

/// The status code and message of the last gRPC call that closed.
pub fn grpc_status() -> (u32, Vec<u8>) {
    native!(|h| h.grpc_status());
    let (mut code, mut ptr, mut len) = (0u32, std::ptr::null_mut(), 0usize);
    // SAFETY: the return slots are live locals.
    match Status::check(unsafe { abi::proxy_get_status(&mut code, &mut ptr, &mut len) }) {
        Ok(()) => (code, take(ptr, len)),
        Err(_) => (2, Vec::new()),
    }
}

/// Calls a host foreign function; its result bytes (empty when it returns none).
pub fn foreign(name: &str, args: &[u8]) -> Result<Vec<u8>, Status> {
    native!(|h| h.foreign(name, args));
    let (mut ptr, mut len) = (std::ptr::null_mut(), 0usize);
    // SAFETY: both slices are alive for the call; the return slots are live locals.
    Status::check(unsafe {
        abi::proxy_call_foreign_function(name.as_ptr(), name.len(), args.as_ptr(), args.len(), &mut ptr, &mut len)
    })?;
    Ok(take(ptr, len))
}

/// Metric kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter = 0,
    Gauge = 1,
}

/// Defines a metric; its id.
pub fn define_metric(kind: MetricKind, name: &str) -> Result<u32, Status> {
    native!(|h| h.define_metric(kind, name));
    let mut id = 0u32;
    // SAFETY: `name` is alive; `id` is a live local.
    Status::check(unsafe { abi::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds to a counter.
pub fn increment_metric(id: u32, by: i64) -> Result<(), Status> {
    native!(|h| h.increment_metric(id, by));
    // SAFETY: no pointers.
    Status::check(unsafe { abi::proxy_increment_metric(id, by) })
}

/// Sets a gauge.
pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    native!(|h| h.record_metric(id, value));
    // SAFETY: no pointers.
    Status::check(unsafe { abi::proxy_record_metric(id, value) })
}
