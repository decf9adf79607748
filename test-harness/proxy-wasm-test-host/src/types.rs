//! The ABI's numbers as named types, and the values tests read back.
//!
//! proxy-wasm passes every enumeration as a bare integer; naming them here keeps the host
//! functions readable and lets tests say `Status::BadArgument` instead of `2`. The numbers are
//! the ABI's own (proxy-wasm ABI 0.2.1), so they can be compared with what a filter sees.

use std::fmt;
use std::time::Duration;

/// A proxy-wasm status code, as host functions return it (`WasmResult` in Envoy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Status {
    /// The call succeeded.
    Ok = 0,
    /// The key, token, queue, metric or context does not exist.
    NotFound = 1,
    /// An argument is invalid, or the map or buffer is not available in this callback.
    BadArgument = 2,
    /// A value could not be serialized.
    SerializationFailure = 3,
    /// A value could not be parsed.
    ParseFailure = 4,
    /// An expression is invalid.
    BadExpression = 5,
    /// A pointer or length points outside the guest's memory.
    InvalidMemoryAccess = 6,
    /// The queue is empty.
    Empty = 7,
    /// The compare-and-swap number is stale.
    CasMismatch = 8,
    /// A result does not match what was expected.
    ResultMismatch = 9,
    /// The host failed.
    InternalFailure = 10,
    /// The connection is broken.
    BrokenConnection = 11,
    /// The host does not implement this function.
    Unimplemented = 12,
}

impl Status {
    /// The ABI number.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The status with ABI number `code`, if there is one.
    pub const fn from_code(code: i32) -> Option<Status> {
        Some(match code {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::BadArgument,
            3 => Status::SerializationFailure,
            4 => Status::ParseFailure,
            5 => Status::BadExpression,
            6 => Status::InvalidMemoryAccess,
            7 => Status::Empty,
            8 => Status::CasMismatch,
            9 => Status::ResultMismatch,
            10 => Status::InternalFailure,
            11 => Status::BrokenConnection,
            12 => Status::Unimplemented,
            _ => return None,
        })
    }
}

/// proxy-wasm status codes as plain numbers (the same values as [`Status`]).
pub mod status {
    use super::Status;
    /// [`Status::Ok`].
    pub const OK: i32 = Status::Ok.code();
    /// [`Status::NotFound`].
    pub const NOT_FOUND: i32 = Status::NotFound.code();
    /// [`Status::BadArgument`].
    pub const BAD_ARGUMENT: i32 = Status::BadArgument.code();
    /// [`Status::SerializationFailure`].
    pub const SERIALIZATION_FAILURE: i32 = Status::SerializationFailure.code();
    /// [`Status::ParseFailure`].
    pub const PARSE_FAILURE: i32 = Status::ParseFailure.code();
    /// [`Status::InvalidMemoryAccess`].
    pub const INVALID_MEMORY_ACCESS: i32 = Status::InvalidMemoryAccess.code();
    /// [`Status::Empty`].
    pub const EMPTY: i32 = Status::Empty.code();
    /// [`Status::CasMismatch`].
    pub const CAS_MISMATCH: i32 = Status::CasMismatch.code();
    /// [`Status::InternalFailure`].
    pub const INTERNAL_FAILURE: i32 = Status::InternalFailure.code();
    /// [`Status::Unimplemented`].
    pub const UNIMPLEMENTED: i32 = Status::Unimplemented.code();
}

/// Log levels as proxy-wasm numbers them.
pub mod level {
    /// Trace.
    pub const TRACE: u32 = 0;
    /// Debug.
    pub const DEBUG: u32 = 1;
    /// Info (also what a filter writes to stdout).
    pub const INFO: u32 = 2;
    /// Warning.
    pub const WARN: u32 = 3;
    /// Error (also what a filter writes to stderr).
    pub const ERROR: u32 = 4;
    /// Critical (the Rust SDK logs panics at this level).
    pub const CRITICAL: u32 = 5;
}

/// gRPC status codes, for answering gRPC calls and reading local replies.
pub mod grpc_status {
    /// Success.
    pub const OK: u32 = 0;
    /// Cancelled by the caller.
    pub const CANCELLED: u32 = 1;
    /// Unknown error.
    pub const UNKNOWN: u32 = 2;
    /// Invalid argument.
    pub const INVALID_ARGUMENT: u32 = 3;
    /// The deadline passed.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// Not found.
    pub const NOT_FOUND: u32 = 5;
    /// Already exists.
    pub const ALREADY_EXISTS: u32 = 6;
    /// Permission denied.
    pub const PERMISSION_DENIED: u32 = 7;
    /// Resource exhausted.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// Failed precondition.
    pub const FAILED_PRECONDITION: u32 = 9;
    /// Aborted.
    pub const ABORTED: u32 = 10;
    /// Out of range.
    pub const OUT_OF_RANGE: u32 = 11;
    /// Unimplemented.
    pub const UNIMPLEMENTED: u32 = 12;
    /// Internal error.
    pub const INTERNAL: u32 = 13;
    /// The service is unavailable (Envoy's answer when it cannot connect, and when a call
    /// times out).
    pub const UNAVAILABLE: u32 = 14;
    /// Data loss.
    pub const DATA_LOSS: u32 = 15;
    /// Unauthenticated (the largest well-known code).
    pub const UNAUTHENTICATED: u32 = 16;
}

macro_rules! abi_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $n:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $n,)*
        }

        impl $name {
            /// The value with ABI number `raw`, if there is one.
            pub const fn from_raw(raw: u32) -> Option<$name> {
                match raw {
                    $($n => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// The ABI number.
            pub const fn raw(self) -> u32 {
                self as u32
            }
        }
    };
}

abi_enum! {
    /// Which header map a header-map host function works on.
    MapType {
        /// The request headers of the current HTTP stream.
        HttpRequestHeaders = 0,
        /// The request trailers of the current HTTP stream.
        HttpRequestTrailers = 1,
        /// The response headers of the current HTTP stream.
        HttpResponseHeaders = 2,
        /// The response trailers of the current HTTP stream.
        HttpResponseTrailers = 3,
        /// A gRPC stream's initial metadata (during `proxy_on_grpc_receive_initial_metadata`).
        GrpcReceiveInitialMetadata = 4,
        /// A gRPC stream's trailing metadata (during `proxy_on_grpc_receive_trailing_metadata`).
        GrpcReceiveTrailingMetadata = 5,
        /// An HTTP callout's response headers (during `proxy_on_http_call_response`).
        HttpCallResponseHeaders = 6,
        /// An HTTP callout's response trailers (during `proxy_on_http_call_response`).
        HttpCallResponseTrailers = 7,
    }
}

abi_enum! {
    /// Which buffer a buffer host function works on.
    BufferType {
        /// The request body of the current HTTP stream.
        HttpRequestBody = 0,
        /// The response body of the current HTTP stream.
        HttpResponseBody = 1,
        /// Data from the client on the current L4 stream.
        DownstreamData = 2,
        /// Data from the upstream on the current L4 stream.
        UpstreamData = 3,
        /// An HTTP callout's response body (during `proxy_on_http_call_response`).
        HttpCallResponseBody = 4,
        /// A gRPC message received (during `proxy_on_grpc_receive`).
        GrpcReceiveBuffer = 5,
        /// The VM configuration (`vm_config.configuration`).
        VmConfiguration = 6,
        /// The plugin configuration (`config.configuration`).
        PluginConfiguration = 7,
        /// A foreign function's arguments (during `proxy_on_foreign_function`).
        CallData = 8,
    }
}

abi_enum! {
    /// A direction of a stream, for `proxy_continue_stream` and `proxy_close_stream`.
    StreamType {
        /// The HTTP request.
        HttpRequest = 0,
        /// The HTTP response.
        HttpResponse = 1,
        /// The L4 connection's downstream (client) side.
        Downstream = 2,
        /// The L4 connection's upstream side.
        Upstream = 3,
    }
}

abi_enum! {
    /// Who closed an L4 connection.
    PeerType {
        /// Not known.
        Unknown = 0,
        /// This proxy closed it.
        Local = 1,
        /// The peer closed it.
        Remote = 2,
    }
}

abi_enum! {
    /// The kind of a metric a filter defines.
    MetricType {
        /// Only goes up.
        Counter = 0,
        /// Goes up and down, or is set.
        Gauge = 1,
        /// Records values (this host keeps the last one).
        Histogram = 2,
    }
}

/// What a filter callback returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Processing goes on (the ABI's 0).
    Continue,
    /// Processing stops until the filter resumes it (any other value).
    Pause,
}

/// Why a host operation failed.
#[derive(Debug)]
pub enum HostError {
    /// The `.wasm` is not there (the message says how to build it).
    Missing(String),
    /// wasmtime refused the module or an import.
    Load(String),
    /// `proxy_on_vm_start` or `proxy_on_configure` returned false; carries the VM's log.
    Configure {
        /// The callback that refused: `proxy_on_vm_start` or `proxy_on_configure`.
        callback: &'static str,
        /// The VM's log: (level, message).
        log: Vec<(u32, String)>,
    },
    /// The filter trapped (a Rust panic aborts): the last critical log line, and the whole log.
    /// A VM that trapped stays failed, as in Envoy: every later callback reports this again.
    Trap {
        /// The panic message, or wasmtime's description of the trap.
        message: String,
        /// The VM's log: (level, message).
        log: Vec<(u32, String)>,
    },
    /// The test asked for something that does not exist (an unknown callout token, say).
    Usage(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Missing(m) | HostError::Load(m) | HostError::Usage(m) => f.write_str(m),
            HostError::Configure { callback, log } => {
                write!(f, "the plugin refused its configuration ({callback} returned false); log: {log:?}")
            }
            HostError::Trap { message, log } => write!(f, "the filter trapped: {message}; log: {log:?}"),
        }
    }
}

impl std::error::Error for HostError {}

/// Header pairs exactly as bytes.
pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// Lossy text view of byte pairs, for assertions.
pub(crate) fn text_pairs(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect()
}

/// A local reply a filter sent with `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// The HTTP status.
    pub status: u32,
    /// The headers, as text (lossy for bytes that are not UTF-8; see `raw_headers`).
    pub headers: Vec<(String, String)>,
    /// The headers exactly as the filter passed them.
    pub raw_headers: Headers,
    /// The body.
    pub body: Vec<u8>,
    /// `response.code_details`; `None` when the filter passed none (the SDK's `send_http_response`).
    pub details: Option<String>,
    /// The gRPC status, when the filter passed one (0–16); `None` for -1 or anything above 16.
    pub grpc_status: Option<u32>,
}

impl LocalResponse {
    /// The first value of header `name` (compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// An HTTP callout waiting for the test to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCall {
    /// The token the filter got back.
    pub token: u32,
    /// The cluster it names.
    pub cluster: String,
    /// Its headers as text (lossy; see `raw_headers`).
    pub headers: Vec<(String, String)>,
    /// Its headers exactly as sent.
    pub raw_headers: Headers,
    /// Its body.
    pub body: Vec<u8>,
    /// Its trailers exactly as sent.
    pub trailers: Headers,
    /// Its timeout.
    pub timeout: Duration,
    /// Fake-clock time it was sent (nanoseconds).
    pub sent_at: u64,
}

impl PendingCall {
    /// A header of the callout.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Whether a pending gRPC exchange is one request/one response, or a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcKind {
    /// `proxy_grpc_call`: one request message, answered by one message or a failure.
    Unary,
    /// `proxy_grpc_stream`: messages both ways until either side closes.
    Stream,
}

/// A gRPC call or stream waiting for the test to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingGrpcCall {
    /// The token the filter got back.
    pub token: u32,
    /// Call or stream.
    pub kind: GrpcKind,
    /// The service argument exactly as passed: a serialized `GrpcService` proto or a plain
    /// cluster name (Envoy accepts both).
    pub service: Vec<u8>,
    /// The cluster: the plain name, or `envoy_grpc.cluster_name` from the proto.
    pub cluster: String,
    /// The gRPC service name (`package.Service`).
    pub service_name: String,
    /// The method name.
    pub method: String,
    /// Initial metadata exactly as sent.
    pub initial_metadata: Headers,
    /// Messages sent: a unary call's one request, or each message sent on a stream, in order.
    pub messages: Vec<Vec<u8>>,
    /// True once the filter half-closed a stream (`end_stream` on a send, or `proxy_grpc_close`).
    pub local_closed: bool,
    /// A unary call's timeout (streams have none).
    pub timeout: Option<Duration>,
    /// Fake-clock time it was sent (nanoseconds).
    pub sent_at: u64,
}

impl PendingGrpcCall {
    /// The first message sent (a unary call's request), empty if none.
    pub fn message(&self) -> &[u8] {
        self.messages.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// The first value of initial-metadata key `name`.
    pub fn metadata(&self, name: &str) -> Option<&[u8]> {
        self.initial_metadata.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.as_slice())
    }
}
