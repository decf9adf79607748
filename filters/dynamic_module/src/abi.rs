//! Envoy 1.40's dynamic-module C ABI: the declarations this module uses, and safe wrappers.
//!
//! Written from the ABI's documented names and signatures (`abi.h`, types
//! `envoy_dynamic_module_type_*`, callbacks `envoy_dynamic_module_callback_*`); every callback
//! declared here is checked against the symbols the tested Envoy binary exports
//! (`nm -D`, `test-harness/tests/native_module.rs`). This file and [`crate::hooks`] are the only
//! places with `unsafe`; every block says why it is sound.
//!
//! Ownership rules the wrappers rely on (from the ABI's documentation):
//! - buffers Envoy returns (header values, body chunks, attributes) stay valid until the end of
//!   the current hook or the next setter: every wrapper copies them out before returning;
//! - buffers the module passes are only read during the call.

#![allow(non_camel_case_types)]

use std::ffi::c_void;

/// `envoy_dynamic_module_type_envoy_buffer` and `_module_buffer`: a pointer and a length.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Buffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl Buffer {
    /// A buffer describing `b` (alive for the call it is passed to).
    fn of(b: &[u8]) -> Buffer {
        Buffer { ptr: b.as_ptr(), length: b.len() }
    }

    const NULL: Buffer = Buffer { ptr: std::ptr::null(), length: 0 };

    /// Copies the bytes out.
    ///
    /// # Safety
    /// `ptr` must be null or point to `length` readable bytes.
    unsafe fn to_vec(self) -> Vec<u8> {
        if self.ptr.is_null() || self.length == 0 {
            return Vec::new();
        }
        // SAFETY: the caller guarantees `length` readable bytes at `ptr`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.length) }.to_vec()
    }
}

/// `envoy_dynamic_module_type_module_http_header` / `_envoy_http_header`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

impl Header {
    fn of(k: &[u8], v: &[u8]) -> Header {
        Header { key_ptr: k.as_ptr(), key_length: k.len(), value_ptr: v.as_ptr(), value_length: v.len() }
    }

    /// Copies a header Envoy owns.
    ///
    /// # Safety
    /// Both pointers must be null or point to their lengths of readable bytes.
    pub unsafe fn to_pair(self) -> (Vec<u8>, Vec<u8>) {
        // SAFETY: forwarded from the caller.
        unsafe {
            (
                Buffer { ptr: self.key_ptr, length: self.key_length }.to_vec(),
                Buffer { ptr: self.value_ptr, length: self.value_length }.to_vec(),
            )
        }
    }
}

/// `envoy_dynamic_module_type_http_filter_envoy_ptr`.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterPtr(pub *mut c_void);

/// `envoy_dynamic_module_type_http_filter_config_envoy_ptr`.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigPtr(pub *mut c_void);

// SAFETY: these are opaque handles; Envoy documents which threads may use them (the config
// pointer's metrics and scheduler calls are thread-safe); the module only passes them back.
unsafe impl Send for ConfigPtr {}
// SAFETY: as above.
unsafe impl Sync for ConfigPtr {}

impl ConfigPtr {
    /// The pointer as a number (a map key).
    pub fn addr(self) -> usize {
        self.0 as usize
    }
}

/// `envoy_dynamic_module_type_http_filter_config_scheduler_module_ptr`.
#[repr(transparent)]
#[derive(Debug, Clone, Copy)]
pub struct SchedulerPtr(pub *mut c_void);

// SAFETY: the ABI documents the scheduler as made to be committed from any thread.
unsafe impl Send for SchedulerPtr {}
// SAFETY: as above.
unsafe impl Sync for SchedulerPtr {}

/// `envoy_dynamic_module_type_http_header_type`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    Request = 0,
    RequestTrailers = 1,
    Response = 2,
    ResponseTrailers = 3,
}

/// `envoy_dynamic_module_type_http_body_type`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    ReceivedRequest = 0,
    BufferedRequest = 1,
    ReceivedResponse = 2,
    BufferedResponse = 3,
}

/// `envoy_dynamic_module_type_attribute_id`: the ones the stages read, by their position in
/// the ABI's enumeration.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    ResponseCode = 15,
    ResponseCodeDetails = 16,
    ResponseFlags = 17,
    SourceAddress = 24,
    UpstreamAddress = 41,
    UpstreamTransportFailureReason = 52,
    UpstreamRequestAttemptCount = 53,
    XdsClusterName = 57,
    XdsRouteName = 61,
}

/// `envoy_dynamic_module_type_http_callout_init_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutInit {
    Success,
    MissingRequiredHeaders,
    ClusterNotFound,
    DuplicateCalloutId,
    CannotCreateRequest,
    Other(u32),
}

impl CalloutInit {
    fn from_raw(n: u32) -> CalloutInit {
        match n {
            0 => CalloutInit::Success,
            1 => CalloutInit::MissingRequiredHeaders,
            2 => CalloutInit::ClusterNotFound,
            3 => CalloutInit::DuplicateCalloutId,
            4 => CalloutInit::CannotCreateRequest,
            n => CalloutInit::Other(n),
        }
    }
}

/// Every callback this module imports, by its name without the `envoy_dynamic_module_callback_`
/// prefix (the test compares it with the symbols of the Envoy binary).
pub const IMPORTS: &[&str] = &[
    "log",
    "log_enabled",
    "http_get_header",
    "http_get_headers_size",
    "http_get_headers",
    "http_set_header",
    "http_send_response",
    "http_get_body_size",
    "http_get_body_chunks_size",
    "http_get_body_chunks",
    "http_append_body",
    "http_drain_body",
    "http_received_buffered_request_body",
    "http_received_buffered_response_body",
    "http_set_filter_state_bytes",
    "http_filter_get_attribute_string",
    "http_filter_get_attribute_int",
    "http_clear_route_cache",
    "http_filter_continue_decoding",
    "http_filter_http_callout",
    "http_filter_config_http_callout",
    "http_filter_config_define_counter",
    "http_filter_config_define_gauge",
    "http_filter_config_increment_counter",
    "http_filter_config_increment_gauge",
    "http_filter_config_set_gauge",
    "http_filter_config_scheduler_new",
    "http_filter_config_scheduler_commit",
    "http_filter_config_scheduler_delete",
];

#[cfg(not(test))]
mod imports {
    use super::*;

    extern "C" {
        pub fn envoy_dynamic_module_callback_log(level: u32, message: Buffer);
        pub fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;
        pub fn envoy_dynamic_module_callback_http_get_header(
            filter: FilterPtr,
            kind: u32,
            key: Buffer,
            result: *mut Buffer,
            index: usize,
            optional_size: *mut usize,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_get_headers_size(filter: FilterPtr, kind: u32) -> usize;
        pub fn envoy_dynamic_module_callback_http_get_headers(
            filter: FilterPtr,
            kind: u32,
            result: *mut Header,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_set_header(
            filter: FilterPtr,
            kind: u32,
            key: Buffer,
            value: Buffer,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_send_response(
            filter: FilterPtr,
            status: u32,
            headers: *mut Header,
            headers_size: usize,
            body: Buffer,
            details: Buffer,
        );
        pub fn envoy_dynamic_module_callback_http_get_body_size(filter: FilterPtr, kind: u32) -> usize;
        pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(filter: FilterPtr, kind: u32) -> usize;
        pub fn envoy_dynamic_module_callback_http_get_body_chunks(
            filter: FilterPtr,
            kind: u32,
            result: *mut Buffer,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_append_body(filter: FilterPtr, kind: u32, data: Buffer) -> bool;
        pub fn envoy_dynamic_module_callback_http_drain_body(filter: FilterPtr, kind: u32, bytes: usize) -> bool;
        pub fn envoy_dynamic_module_callback_http_received_buffered_request_body(filter: FilterPtr) -> bool;
        pub fn envoy_dynamic_module_callback_http_received_buffered_response_body(filter: FilterPtr) -> bool;
        pub fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
            filter: FilterPtr,
            key: Buffer,
            value: Buffer,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
            filter: FilterPtr,
            id: u32,
            result: *mut Buffer,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
            filter: FilterPtr,
            id: u32,
            result: *mut u64,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter: FilterPtr);
        pub fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterPtr);
        pub fn envoy_dynamic_module_callback_http_filter_http_callout(
            filter: FilterPtr,
            callout_id_out: *mut u64,
            cluster: Buffer,
            headers: *mut Header,
            headers_size: usize,
            body: Buffer,
            timeout_ms: u64,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
            config: ConfigPtr,
            callout_id_out: *mut u64,
            cluster: Buffer,
            headers: *mut Header,
            headers_size: usize,
            body: Buffer,
            timeout_ms: u64,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
            config: ConfigPtr,
            name: Buffer,
            label_names: *mut Buffer,
            label_names_length: usize,
            id: *mut usize,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
            config: ConfigPtr,
            name: Buffer,
            label_names: *mut Buffer,
            label_names_length: usize,
            id: *mut usize,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
            config: ConfigPtr,
            id: usize,
            label_values: *mut Buffer,
            label_values_length: usize,
            value: u64,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_increment_gauge(
            config: ConfigPtr,
            id: usize,
            label_values: *mut Buffer,
            label_values_length: usize,
            value: u64,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
            config: ConfigPtr,
            id: usize,
            label_values: *mut Buffer,
            label_values_length: usize,
            value: u64,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: ConfigPtr) -> SchedulerPtr;
        pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
            scheduler: SchedulerPtr,
            event_id: u64,
        );
        pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: SchedulerPtr);
    }
}

use imports::*;

// Every wrapper below passes Envoy pointers it was handed by a hook that is still running (or
// the configuration pointer, valid until `config_destroy`), and buffers that live for the call.

/// Logs a message.
pub fn log(level: u32, message: &[u8]) {
    // SAFETY: `message` is alive for the call; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level, Buffer::of(message)) }
}

/// True when Envoy would print a message at `level`.
pub fn log_enabled(level: u32) -> bool {
    // SAFETY: no pointers.
    unsafe { envoy_dynamic_module_callback_log_enabled(level) }
}

/// A header's first value.
pub fn get_header(filter: FilterPtr, kind: HeaderKind, name: &[u8]) -> Option<Vec<u8>> {
    let mut out = Buffer::NULL;
    let mut count = 0usize;
    // SAFETY: `filter` is the running hook's stream; `name` is alive; `out`/`count` are live
    // locals Envoy writes.
    let ok = unsafe {
        envoy_dynamic_module_callback_http_get_header(filter, kind as u32, Buffer::of(name), &mut out, 0, &mut count)
    };
    if !ok || count == 0 {
        return None;
    }
    // SAFETY: Envoy set `out` to a value it owns, valid until the hook ends; copied now.
    Some(unsafe { out.to_vec() })
}

/// Every header of a map, in order.
pub fn get_headers(filter: FilterPtr, kind: HeaderKind) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    // SAFETY: `filter` is the running hook's stream.
    let n = unsafe { envoy_dynamic_module_callback_http_get_headers_size(filter, kind as u32) };
    let empty = Header { key_ptr: std::ptr::null(), key_length: 0, value_ptr: std::ptr::null(), value_length: 0 };
    let mut all = vec![empty; n];
    if n > 0 {
        // SAFETY: `all` has room for the `n` headers Envoy just counted, in this same hook
        // (nothing changed the map in between).
        let ok = unsafe { envoy_dynamic_module_callback_http_get_headers(filter, kind as u32, all.as_mut_ptr()) };
        if !ok {
            return None;
        }
    }
    // SAFETY: each header points into Envoy's map, valid until the hook ends; copied now.
    Some(all.into_iter().map(|h| unsafe { h.to_pair() }).collect())
}

/// Sets a header (`None`: removes it).
pub fn set_header(filter: FilterPtr, kind: HeaderKind, name: &[u8], value: Option<&[u8]>) -> bool {
    let value = value.map_or(Buffer::NULL, Buffer::of);
    // SAFETY: `filter` is the running hook's stream; both buffers are alive for the call.
    unsafe { envoy_dynamic_module_callback_http_set_header(filter, kind as u32, Buffer::of(name), value) }
}

/// Sends a local reply.
pub fn send_response(filter: FilterPtr, status: u32, headers: &[(&[u8], &[u8])], body: &[u8], details: &[u8]) {
    let mut h: Vec<Header> = headers.iter().map(|(k, v)| Header::of(k, v)).collect();
    // SAFETY: `filter` is the running hook's stream; `h` and the slices it points into, `body`
    // and `details` are alive for the call; Envoy copies them.
    unsafe {
        envoy_dynamic_module_callback_http_send_response(
            filter,
            status,
            h.as_mut_ptr(),
            h.len(),
            Buffer::of(body),
            Buffer::of(details),
        )
    }
}

/// Appends the chunks of a body to `out`.
pub fn body(filter: FilterPtr, kind: BodyKind, out: &mut Vec<u8>) {
    // SAFETY: `filter` is the running hook's stream.
    let n = unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(filter, kind as u32) };
    if n == 0 {
        return;
    }
    let mut chunks = vec![Buffer::NULL; n];
    // SAFETY: `chunks` has room for the `n` chunks counted in this same hook.
    if !unsafe { envoy_dynamic_module_callback_http_get_body_chunks(filter, kind as u32, chunks.as_mut_ptr()) } {
        return;
    }
    for c in chunks {
        if !c.ptr.is_null() && c.length > 0 {
            // SAFETY: each chunk points into Envoy's buffer, valid until the hook ends.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(c.ptr, c.length) });
        }
    }
}

/// A body's size in bytes.
pub fn body_size(filter: FilterPtr, kind: BodyKind) -> usize {
    // SAFETY: `filter` is the running hook's stream.
    unsafe { envoy_dynamic_module_callback_http_get_body_size(filter, kind as u32) }
}

/// Appends to a body.
pub fn append_body(filter: FilterPtr, kind: BodyKind, data: &[u8]) -> bool {
    // SAFETY: `filter` is the running hook's stream; `data` is alive; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_http_append_body(filter, kind as u32, Buffer::of(data)) }
}

/// Drains up to `n` bytes from the start of a body.
pub fn drain_body(filter: FilterPtr, kind: BodyKind, n: usize) -> bool {
    // SAFETY: `filter` is the running hook's stream.
    unsafe { envoy_dynamic_module_callback_http_drain_body(filter, kind as u32, n) }
}

/// The body this hook received is the one buffered before (an earlier filter held it).
pub fn received_is_buffered(filter: FilterPtr, request: bool) -> bool {
    // SAFETY: `filter` is the running hook's stream.
    unsafe {
        if request {
            envoy_dynamic_module_callback_http_received_buffered_request_body(filter)
        } else {
            envoy_dynamic_module_callback_http_received_buffered_response_body(filter)
        }
    }
}

/// Filter state `key` (bytes; the access log and route matchers read it as a string).
pub fn set_filter_state(filter: FilterPtr, key: &[u8], value: &[u8]) -> bool {
    // SAFETY: `filter` is the running hook's stream; both buffers are alive; Envoy copies them.
    unsafe { envoy_dynamic_module_callback_http_set_filter_state_bytes(filter, Buffer::of(key), Buffer::of(value)) }
}

/// A string attribute.
pub fn attribute_string(filter: FilterPtr, id: Attribute) -> Option<Vec<u8>> {
    let mut out = Buffer::NULL;
    // SAFETY: `filter` is the running hook's stream; `out` is a live local.
    if !unsafe { envoy_dynamic_module_callback_http_filter_get_attribute_string(filter, id as u32, &mut out) } {
        return None;
    }
    // SAFETY: Envoy set `out` to bytes valid until the hook ends; copied now.
    Some(unsafe { out.to_vec() })
}

/// An integer attribute.
pub fn attribute_int(filter: FilterPtr, id: Attribute) -> Option<u64> {
    let mut out = 0u64;
    // SAFETY: `filter` is the running hook's stream; `out` is a live local.
    unsafe { envoy_dynamic_module_callback_http_filter_get_attribute_int(filter, id as u32, &mut out) }.then_some(out)
}

/// Matches the route again (after a request header or the routing filter state changed).
pub fn clear_route_cache(filter: FilterPtr) {
    // SAFETY: `filter` is the running hook's stream.
    unsafe { envoy_dynamic_module_callback_http_clear_route_cache(filter) }
}

/// Resumes a request a hook stopped.
pub fn continue_decoding(filter: FilterPtr) {
    // SAFETY: `filter` is the running hook's stream.
    unsafe { envoy_dynamic_module_callback_http_filter_continue_decoding(filter) }
}

fn headers_of(headers: &[(&[u8], &[u8])]) -> Vec<Header> {
    headers.iter().map(|(k, v)| Header::of(k, v)).collect()
}

/// An HTTP callout from a stream; Envoy's callout id.
pub fn filter_http_callout(
    filter: FilterPtr,
    cluster: &[u8],
    headers: &[(&[u8], &[u8])],
    body: &[u8],
    timeout_ms: u32,
) -> (CalloutInit, u64) {
    let mut h = headers_of(headers);
    let mut id = 0u64;
    // SAFETY: `filter` is the running hook's stream; every buffer is alive for the call (Envoy
    // copies the request); `id` is a live local.
    let r = unsafe {
        envoy_dynamic_module_callback_http_filter_http_callout(
            filter,
            &mut id,
            Buffer::of(cluster),
            h.as_mut_ptr(),
            h.len(),
            Buffer::of(body),
            u64::from(timeout_ms),
        )
    };
    (CalloutInit::from_raw(r), id)
}

/// An HTTP callout that belongs to a configuration (main thread); Envoy's callout id.
pub fn config_http_callout(
    config: ConfigPtr,
    cluster: &[u8],
    headers: &[(&[u8], &[u8])],
    body: &[u8],
    timeout_ms: u32,
) -> (CalloutInit, u64) {
    let mut h = headers_of(headers);
    let mut id = 0u64;
    // SAFETY: `config` is alive until its destroy hook; every buffer is alive for the call;
    // `id` is a live local.
    let r = unsafe {
        envoy_dynamic_module_callback_http_filter_config_http_callout(
            config,
            &mut id,
            Buffer::of(cluster),
            h.as_mut_ptr(),
            h.len(),
            Buffer::of(body),
            u64::from(timeout_ms),
        )
    };
    (CalloutInit::from_raw(r), id)
}

fn label_names(label: Option<&[u8]>) -> (Option<Buffer>, usize) {
    match label {
        Some(l) => (Some(Buffer::of(l)), 1),
        None => (None, 0),
    }
}

fn labels_ptr(b: &mut Option<Buffer>) -> *mut Buffer {
    b.as_mut().map_or(std::ptr::null_mut(), |b| b as *mut Buffer)
}

/// Defines a counter, with one label name or none; its id.
pub fn define_counter(config: ConfigPtr, name: &[u8], label: Option<&[u8]>) -> Option<u64> {
    let (mut l, n) = label_names(label);
    let mut id = 0usize;
    // SAFETY: `config` is alive; `name` and the label buffer (or null with 0) are alive for the
    // call; `id` is a live local.
    let r = unsafe {
        envoy_dynamic_module_callback_http_filter_config_define_counter(
            config,
            Buffer::of(name),
            labels_ptr(&mut l),
            n,
            &mut id,
        )
    };
    (r == 0).then_some(id as u64)
}

/// Defines a gauge, with one label name or none; its id.
pub fn define_gauge(config: ConfigPtr, name: &[u8], label: Option<&[u8]>) -> Option<u64> {
    let (mut l, n) = label_names(label);
    let mut id = 0usize;
    // SAFETY: as for counters.
    let r = unsafe {
        envoy_dynamic_module_callback_http_filter_config_define_gauge(
            config,
            Buffer::of(name),
            labels_ptr(&mut l),
            n,
            &mut id,
        )
    };
    (r == 0).then_some(id as u64)
}

/// Adds to a counter (with its label's value, if it was defined with one).
pub fn increment_counter(config: ConfigPtr, id: u64, label: Option<&[u8]>, by: u64) {
    let (mut l, n) = label_names(label);
    // SAFETY: `config` is alive; the label value (or null with 0) is alive for the call.
    let _ = unsafe {
        envoy_dynamic_module_callback_http_filter_config_increment_counter(
            config,
            id as usize,
            labels_ptr(&mut l),
            n,
            by,
        )
    };
}

/// Adds to a gauge.
pub fn increment_gauge(config: ConfigPtr, id: u64, label: Option<&[u8]>, by: u64) {
    let (mut l, n) = label_names(label);
    // SAFETY: as for counters.
    let _ = unsafe {
        envoy_dynamic_module_callback_http_filter_config_increment_gauge(config, id as usize, labels_ptr(&mut l), n, by)
    };
}

/// Sets a gauge.
pub fn set_gauge(config: ConfigPtr, id: u64, label: Option<&[u8]>, value: u64) {
    let (mut l, n) = label_names(label);
    // SAFETY: as for counters.
    let _ = unsafe {
        envoy_dynamic_module_callback_http_filter_config_set_gauge(config, id as usize, labels_ptr(&mut l), n, value)
    };
}

/// A scheduler that runs `on_http_filter_config_scheduled` on the main thread.
pub fn scheduler_new(config: ConfigPtr) -> SchedulerPtr {
    // SAFETY: `config` is alive (called from its `config_new`).
    unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config) }
}

/// Posts event `id` to the main thread (from any thread).
pub fn scheduler_commit(scheduler: SchedulerPtr, id: u64) {
    // SAFETY: the scheduler is alive until `scheduler_delete`, which runs only after the thread
    // that commits has been stopped and joined.
    unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler, id) }
}

/// Deletes a scheduler.
pub fn scheduler_delete(scheduler: SchedulerPtr) {
    // SAFETY: called once, after the committing thread was joined.
    unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler) }
}

/// Unit tests of this crate link no Envoy: every callback is a stand-in that answers "no".
#[cfg(test)]
mod imports {
    use super::*;

    macro_rules! stand_ins {
        ($($name:ident($($ty:ty),*) -> $ret:ty = $value:expr;)*) => {
            $(
                /// A stand-in: answers "no".
                ///
                /// # Safety
                /// Never dereferences its arguments.
                pub unsafe fn $name($(_: $ty),*) -> $ret {
                    $value
                }
            )*
        };
    }

    stand_ins! {
        envoy_dynamic_module_callback_log(u32, Buffer) -> () = ();
        envoy_dynamic_module_callback_log_enabled(u32) -> bool = false;
        envoy_dynamic_module_callback_http_get_header(FilterPtr, u32, Buffer, *mut Buffer, usize, *mut usize) -> bool = false;
        envoy_dynamic_module_callback_http_get_headers_size(FilterPtr, u32) -> usize = 0;
        envoy_dynamic_module_callback_http_get_headers(FilterPtr, u32, *mut Header) -> bool = false;
        envoy_dynamic_module_callback_http_set_header(FilterPtr, u32, Buffer, Buffer) -> bool = false;
        envoy_dynamic_module_callback_http_send_response(FilterPtr, u32, *mut Header, usize, Buffer, Buffer) -> () = ();
        envoy_dynamic_module_callback_http_get_body_size(FilterPtr, u32) -> usize = 0;
        envoy_dynamic_module_callback_http_get_body_chunks_size(FilterPtr, u32) -> usize = 0;
        envoy_dynamic_module_callback_http_get_body_chunks(FilterPtr, u32, *mut Buffer) -> bool = false;
        envoy_dynamic_module_callback_http_append_body(FilterPtr, u32, Buffer) -> bool = false;
        envoy_dynamic_module_callback_http_drain_body(FilterPtr, u32, usize) -> bool = false;
        envoy_dynamic_module_callback_http_received_buffered_request_body(FilterPtr) -> bool = false;
        envoy_dynamic_module_callback_http_received_buffered_response_body(FilterPtr) -> bool = false;
        envoy_dynamic_module_callback_http_set_filter_state_bytes(FilterPtr, Buffer, Buffer) -> bool = false;
        envoy_dynamic_module_callback_http_filter_get_attribute_string(FilterPtr, u32, *mut Buffer) -> bool = false;
        envoy_dynamic_module_callback_http_filter_get_attribute_int(FilterPtr, u32, *mut u64) -> bool = false;
        envoy_dynamic_module_callback_http_clear_route_cache(FilterPtr) -> () = ();
        envoy_dynamic_module_callback_http_filter_continue_decoding(FilterPtr) -> () = ();
        envoy_dynamic_module_callback_http_filter_http_callout(FilterPtr, *mut u64, Buffer, *mut Header, usize, Buffer, u64) -> u32 = 4;
        envoy_dynamic_module_callback_http_filter_config_http_callout(ConfigPtr, *mut u64, Buffer, *mut Header, usize, Buffer, u64) -> u32 = 4;
        envoy_dynamic_module_callback_http_filter_config_define_counter(ConfigPtr, Buffer, *mut Buffer, usize, *mut usize) -> u32 = 1;
        envoy_dynamic_module_callback_http_filter_config_define_gauge(ConfigPtr, Buffer, *mut Buffer, usize, *mut usize) -> u32 = 1;
        envoy_dynamic_module_callback_http_filter_config_increment_counter(ConfigPtr, usize, *mut Buffer, usize, u64) -> u32 = 1;
        envoy_dynamic_module_callback_http_filter_config_increment_gauge(ConfigPtr, usize, *mut Buffer, usize, u64) -> u32 = 1;
        envoy_dynamic_module_callback_http_filter_config_set_gauge(ConfigPtr, usize, *mut Buffer, usize, u64) -> u32 = 1;
        envoy_dynamic_module_callback_http_filter_config_scheduler_new(ConfigPtr) -> SchedulerPtr = SchedulerPtr(std::ptr::null_mut());
        envoy_dynamic_module_callback_http_filter_config_scheduler_commit(SchedulerPtr, u64) -> () = ();
        envoy_dynamic_module_callback_http_filter_config_scheduler_delete(SchedulerPtr) -> () = ();
    }
}
