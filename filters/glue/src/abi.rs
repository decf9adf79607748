//! The proxy-wasm ABI 0.2.1 imports this project uses, declared once.
//!
//! Everything else in the glue goes through [`crate::host`], which wraps these in safe functions
//! that read and return **bytes** and never panic on a status the host was not expected to
//! return. Off wasm32 (native unit tests of the glue) every import is a stub that answers
//! `Unimplemented`, so host-independent code can be tested natively.

#![allow(clippy::too_many_arguments)]

/// A host status code (ABI 0.2.1 numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    NotFound,
    BadArgument,
    SerializationFailure,
    ParseFailure,
    InvalidMemoryAccess,
    Empty,
    CasMismatch,
    InternalFailure,
    Unimplemented,
    /// A number this project does not know: kept, never a panic.
    Other(u32),
}

impl Status {
    /// From the raw number.
    pub fn from_raw(raw: u32) -> Status {
        match raw {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::BadArgument,
            3 => Status::SerializationFailure,
            4 => Status::ParseFailure,
            6 => Status::InvalidMemoryAccess,
            7 => Status::Empty,
            8 => Status::CasMismatch,
            10 => Status::InternalFailure,
            12 => Status::Unimplemented,
            n => Status::Other(n),
        }
    }

    /// `Ok(())` for [`Status::Ok`], the status otherwise.
    pub fn check(raw: u32) -> Result<(), Status> {
        match Status::from_raw(raw) {
            Status::Ok => Ok(()),
            s => Err(s),
        }
    }
}

/// Header map types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MapType {
    RequestHeaders = 0,
    RequestTrailers = 1,
    ResponseHeaders = 2,
    ResponseTrailers = 3,
    GrpcInitialMetadata = 4,
    GrpcTrailingMetadata = 5,
    HttpCallResponseHeaders = 6,
    HttpCallResponseTrailers = 7,
}

/// Buffer types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BufferType {
    HttpRequestBody = 0,
    HttpResponseBody = 1,
    DownstreamData = 2,
    UpstreamData = 3,
    HttpCallResponseBody = 4,
    GrpcReceiveBuffer = 5,
    VmConfiguration = 6,
    PluginConfiguration = 7,
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "env")]
extern "C" {
    pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    pub fn proxy_get_log_level(return_level: *mut u32) -> u32;
    pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    pub fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    pub fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    pub fn proxy_get_buffer_status(buffer_type: u32, return_buffer_size: *mut usize, return_flags: *mut u32) -> u32;
    pub fn proxy_get_header_map_pairs(map_type: u32, return_map_data: *mut *mut u8, return_map_size: *mut usize)
        -> u32;
    pub fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    pub fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    pub fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    pub fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    pub fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;
    pub fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    pub fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    pub fn proxy_continue_stream(stream_type: u32) -> u32;
    pub fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    pub fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout: u32,
        return_token: *mut u32,
    ) -> u32;
    pub fn proxy_grpc_call(
        upstream_data: *const u8,
        upstream_size: usize,
        service_name_data: *const u8,
        service_name_size: usize,
        method_name_data: *const u8,
        method_name_size: usize,
        initial_metadata_data: *const u8,
        initial_metadata_size: usize,
        message_data: *const u8,
        message_size: usize,
        timeout: u32,
        return_token: *mut u32,
    ) -> u32;
    pub fn proxy_grpc_cancel(token: u32) -> u32;
    pub fn proxy_get_status(
        return_code: *mut u32,
        return_message_data: *mut *mut u8,
        return_message_size: *mut usize,
    ) -> u32;
    pub fn proxy_set_effective_context(context_id: u32) -> u32;
    pub fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
    pub fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    pub fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
}

/// Native stand-ins: no host, so every call is `Unimplemented` (12).
#[cfg(not(target_arch = "wasm32"))]
mod native {
    macro_rules! stub {
        ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
            $(
                /// Native stand-in: always `Unimplemented`.
                ///
                /// # Safety
                /// Never dereferences its arguments.
                pub unsafe fn $name($($arg: $ty),*) -> u32 { let _ = ($($arg),*); 12 }
            )*
        };
    }
    stub! {
        proxy_log(level: u32, d: *const u8, s: usize);
        proxy_get_log_level(r: *mut u32);
        proxy_get_current_time_nanoseconds(r: *mut u64);
        proxy_set_tick_period_milliseconds(p: u32);
        proxy_get_buffer_bytes(t: u32, a: usize, m: usize, rd: *mut *mut u8, rs: *mut usize);
        proxy_set_buffer_bytes(t: u32, a: usize, s: usize, d: *const u8, l: usize);
        proxy_get_buffer_status(t: u32, s: *mut usize, f: *mut u32);
        proxy_get_header_map_pairs(t: u32, rd: *mut *mut u8, rs: *mut usize);
        proxy_get_header_map_value(t: u32, k: *const u8, kl: usize, rd: *mut *mut u8, rs: *mut usize);
        proxy_replace_header_map_value(t: u32, k: *const u8, kl: usize, v: *const u8, vl: usize);
        proxy_remove_header_map_value(t: u32, k: *const u8, kl: usize);
        proxy_get_property(p: *const u8, pl: usize, rd: *mut *mut u8, rs: *mut usize);
        proxy_set_property(p: *const u8, pl: usize, v: *const u8, vl: usize);
        proxy_get_shared_data(k: *const u8, kl: usize, rd: *mut *mut u8, rs: *mut usize, c: *mut u32);
        proxy_set_shared_data(k: *const u8, kl: usize, v: *const u8, vl: usize, c: u32);
        proxy_continue_stream(t: u32);
        proxy_send_local_response(s: u32, dd: *const u8, ds: usize, bd: *const u8, bs: usize, hd: *const u8, hs: usize, g: i32);
        proxy_http_call(u: *const u8, ul: usize, h: *const u8, hl: usize, b: *const u8, bl: usize, t: *const u8, tl: usize, to: u32, r: *mut u32);
        proxy_grpc_call(u: *const u8, ul: usize, s: *const u8, sl: usize, m: *const u8, ml: usize, md: *const u8, mdl: usize, d: *const u8, dl: usize, to: u32, r: *mut u32);
        proxy_grpc_cancel(t: u32);
        proxy_get_status(c: *mut u32, d: *mut *mut u8, s: *mut usize);
        proxy_set_effective_context(c: u32);
        proxy_call_foreign_function(n: *const u8, nl: usize, a: *const u8, al: usize, rd: *mut *mut u8, rs: *mut usize);
        proxy_define_metric(t: u32, n: *const u8, nl: usize, r: *mut u32);
        proxy_increment_metric(id: u32, o: i64);
        proxy_record_metric(id: u32, v: u64);
    }
}
#[cfg(not(target_arch = "wasm32"))]
pub use native::*;
