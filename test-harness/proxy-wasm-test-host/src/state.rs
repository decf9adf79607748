//! What one VM (one Envoy worker) holds between callbacks: its contexts and their streams,
//! pending callouts, the data a callback in progress is allowed to read, logs and accounting.
//!
//! wasmtime hands this to every host function as the store's data. Host functions reach the
//! host-wide state (clock, shared data, metrics, queues) through `shared`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use wasmtime::{Memory, TypedFunc};

use crate::accounting::{CallCounts, Import};
use crate::host::Shared;
use crate::types::{level, Headers, LocalResponse, PendingCall, PendingGrpcCall};
use crate::wasi::{WasiCtx, WasiView};

/// The root context's id (Envoy gives the root context of each VM its own id; one plugin per
/// VM here, so it is always 1).
pub(crate) const ROOT_CONTEXT: u32 = 1;

/// Data flowing one way through a stream: what the filter holds back (`pending`, what it sees
/// in its buffer) and what it let through (`sent`).
#[derive(Debug, Default)]
pub(crate) struct Flow {
    pub pending: Vec<u8>,
    pub sent: Vec<u8>,
}

impl Flow {
    /// Everything so far, as the next hop sees it once the stream continues.
    pub fn view(&self) -> Vec<u8> {
        let mut all = self.sent.clone();
        all.extend_from_slice(&self.pending);
        all
    }

    /// The filter let the buffered data go.
    pub fn release(&mut self) {
        if self.sent.is_empty() {
            std::mem::swap(&mut self.sent, &mut self.pending);
        } else {
            self.sent.append(&mut self.pending);
        }
    }
}

/// HTTP or L4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Kind {
    #[default]
    Http,
    Tcp,
}

/// One stream context (HTTP stream or L4 connection).
#[derive(Debug, Default)]
pub(crate) struct StreamData {
    pub kind: Kind,
    /// Properties by normalized path (segments joined by NUL).
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    /// Header maps as the next hop sees them: `None` until the stream reached that point.
    pub request_headers: Option<Headers>,
    pub request_trailers: Option<Headers>,
    pub response_headers: Option<Headers>,
    pub response_trailers: Option<Headers>,
    pub request_body: Flow,
    pub response_body: Flow,
    pub downstream: Flow,
    pub upstream: Flow,
    pub local_response: Option<LocalResponse>,
    /// The local reply went through the filter's response callbacks already.
    pub local_response_delivered: bool,
    pub route_cache_cleared: bool,
    /// `proxy_continue_stream` calls per `StreamType`.
    pub continued: [u32; 4],
    /// `proxy_close_stream` calls per `StreamType`.
    pub closed: [u32; 4],
    /// Which of the four maps (by `MapType`) the filter may use now: during its own callback,
    /// and after it while the filter holds the stream there (it returned `Pause`), as in Envoy.
    pub available: [bool; 4],
    /// In `on_log` or later: every delivered map is readable (not writable), a missing one is
    /// `NotFound` (Envoy's access-log phase).
    pub log_phase: bool,
}

/// Maps and buffers that exist only while one callback runs (Envoy hands them to that
/// callback and drops them after).
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    pub http_headers: Option<Headers>,
    pub http_body: Option<Vec<u8>>,
    pub http_trailers: Option<Headers>,
    pub grpc_initial: Option<Headers>,
    pub grpc_trailing: Option<Headers>,
    pub grpc_message: Option<Vec<u8>>,
    pub call_data: Option<Vec<u8>>,
    /// In `proxy_on_configure`: the plugin configuration is readable.
    pub in_configure: bool,
}

/// The store data of one VM (one Envoy worker), which wasmtime hands to every host function.
/// Opaque: the host creates it; it is public so that the areas' `add_to_linker` functions can
/// name it.
pub struct VmState {
    pub(crate) shared: Arc<Shared>,
    pub(crate) wasi: WasiCtx,
    /// The guest's exported memory and allocator, looked up once after instantiation.
    pub(crate) memory: Option<Memory>,
    pub(crate) alloc: Option<TypedFunc<i32, i32>>,
    pub(crate) vm_id: Vec<u8>,
    pub(crate) logs: Vec<(u32, String)>,
    /// Incomplete stdout / stderr lines.
    pub(crate) partial_lines: [Vec<u8>; 2],
    pub(crate) tick_ms: u32,
    pub(crate) effective: u32,
    pub(crate) streams: HashMap<u32, StreamData>,
    pub(crate) root_properties: HashMap<Vec<u8>, Vec<u8>>,
    pub(crate) plugin_config: Vec<u8>,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) http_calls: BTreeMap<u32, PendingCall>,
    pub(crate) grpc_calls: BTreeMap<u32, PendingGrpcCall>,
    pub(crate) next_token: u32,
    pub(crate) delivery: Delivery,
    /// What `proxy_get_status` reports: the last gRPC close's status and message.
    pub(crate) grpc_status: (u32, Vec<u8>),
    pub(crate) clusters: Option<Arc<HashSet<Vec<u8>>>>,
    pub(crate) done: u32,
    pub(crate) calls: CallCounts,
    /// Reused for data on its way into the guest.
    pub(crate) scratch: Vec<u8>,
}

impl VmState {
    pub(crate) fn new(shared: Arc<Shared>) -> VmState {
        let wasi = WasiCtx::new().clock(shared.clock.clone());
        VmState {
            shared,
            wasi,
            memory: None,
            alloc: None,
            vm_id: Vec::new(),
            logs: Vec::new(),
            partial_lines: [Vec::new(), Vec::new()],
            tick_ms: 0,
            effective: ROOT_CONTEXT,
            streams: HashMap::new(),
            root_properties: HashMap::new(),
            plugin_config: Vec::new(),
            vm_config: Vec::new(),
            http_calls: BTreeMap::new(),
            grpc_calls: BTreeMap::new(),
            next_token: 1,
            delivery: Delivery::default(),
            grpc_status: (0, Vec::new()),
            clusters: None,
            done: 0,
            calls: CallCounts::default(),
            scratch: Vec::new(),
        }
    }

    /// The stream the effective context belongs to, if it is a stream.
    pub(crate) fn stream(&mut self) -> Option<&mut StreamData> {
        self.streams.get_mut(&self.effective)
    }

    /// Whether `cluster` may be named by a callout.
    /// A line the host itself adds to the VM's log (prefixed, so a test tells it from the
    /// filter's own): why a call failed where the filter may only see a status.
    pub(crate) fn host_log(&mut self, level: u32, message: impl std::fmt::Display) {
        self.logs.push((level, format!("proxy-wasm-test-host: {message}")));
    }

    pub(crate) fn knows_cluster(&self, cluster: &[u8]) -> bool {
        self.clusters.as_ref().is_none_or(|known| known.contains(cluster))
    }

    /// A fresh callout token (unique across workers, as each worker starts its own range).
    pub(crate) fn token(&mut self) -> u32 {
        let t = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(1);
        t
    }

    /// A fresh gRPC token: even for streams, odd for unary calls, as Envoy numbers them.
    pub(crate) fn grpc_token(&mut self, stream: bool) -> u32 {
        let mut t = self.token();
        if t.is_multiple_of(2) != stream {
            t = self.token();
        }
        t
    }
}

impl WasiView for VmState {
    fn wasi(&mut self) -> &mut WasiCtx {
        &mut self.wasi
    }

    fn memory(&self) -> Option<Memory> {
        self.memory
    }

    /// Complete lines go to the log: stdout at info, stderr at error.
    fn write_output(&mut self, fd: u32, bytes: &[u8]) -> i32 {
        let (slot, lvl) = match fd {
            1 => (0, level::INFO),
            2 => (1, level::ERROR),
            _ => return crate::wasi::errno::BADF,
        };
        self.partial_lines[slot].extend_from_slice(bytes);
        while let Some(nl) = self.partial_lines[slot].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial_lines[slot].drain(..=nl).collect();
            self.logs.push((lvl, String::from_utf8_lossy(&line[..line.len() - 1]).into_owned()));
        }
        crate::wasi::errno::SUCCESS
    }

    fn record_call(&mut self, import: Import) {
        self.calls.hit(import);
    }

    fn record_unknown(&mut self, name: &str) {
        self.calls.hit_other(name);
        self.host_log(
            3,
            format_args!("{name} is not implemented by this host: answered Unimplemented (ENOSYS for WASI)"),
        );
    }
}

/// Normalizes a property path as a guest passes it (segments separated by NUL, possibly with a
/// trailing NUL) to the key properties are stored under.
pub(crate) fn property_key(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let clean = !raw.is_empty() && raw[0] != 0 && raw[raw.len() - 1] != 0 && !raw.windows(2).any(|w| w == [0, 0]);
    if clean || raw.is_empty() {
        return std::borrow::Cow::Borrowed(raw);
    }
    let parts: Vec<&[u8]> = raw.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
    std::borrow::Cow::Owned(parts.join(&0u8))
}

/// The key of a dotted path a test writes (`"source.address"`).
pub(crate) fn dotted_key(path: &str) -> Vec<u8> {
    path.bytes().map(|b| if b == b'.' { 0 } else { b }).collect()
}

/// The key of a path given as segments (for segments that contain dots).
pub(crate) fn segments_key(path: &[&[u8]]) -> Vec<u8> {
    path.join(&0u8)
}
