//! The host interface over Envoy's dynamic-module ABI: what each stage call becomes in Envoy.
//!
//! The calls arrive without a handle: the stages ask "the current stream" as they do in a
//! `.wasm`. Every hook sets [`Current`] (the stream's Envoy pointer, its configuration) for the
//! time it runs, and puts back what was there before (a local reply re-enters the module's
//! hooks synchronously). Nothing here decides policy: each method maps one stage call onto the
//! [`crate::abi`] wrappers.
//!
//! Semantics kept from the `.wasm`:
//! - the cross-worker store is [`crate::store::Store`], one per process, with the same
//!   compare-and-swap contract as Envoy's shared data;
//! - filter state is written under `wasm.<key>`, so access-log formats and routes that match
//!   `wasm.upstream_guard.*` work with either shape;
//! - a request header set before routing clears the route cache (a `.wasm` filter gets this
//!   from Envoy itself), so the route is matched again;
//! - a local reply to a gRPC request is the trailers-only answer a gRPC client expects, with
//!   the stage's gRPC status (Envoy's dynamic-module reply would map the HTTP status instead);
//! - metric names are the same: the module's metrics namespace is `upstream_guard`, and each
//!   name drops that prefix when defined.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use upstream_guard_glue::host::{Level, MetricKind};
use upstream_guard_glue::metrics::FAMILY_SLOT;
use upstream_guard_glue::native::Host;
use upstream_guard_glue::{pairs, BufferType, MapType, Status};

use crate::abi::{self, Attribute, BodyKind, ConfigPtr, FilterPtr, HeaderKind};
use crate::store::Store;

/// Where a stage call lands: the stream (or configuration) whose hook is running.
#[derive(Debug, Clone, Copy, Default)]
pub struct Current {
    /// The stream's Envoy pointer (none in configuration-level hooks).
    pub filter: Option<FilterPtr>,
    /// The configuration's Envoy pointer.
    pub config: Option<ConfigPtr>,
    /// The stream's context id.
    pub stream: u32,
    /// The hook is `on_http_filter_config_new` on Envoy's main thread: the only place a tick
    /// period is taken (ticks run there, see [`crate::hooks`]).
    pub configuring: bool,
    /// The hook is a request body hook (bodies are read from the request side).
    pub in_request_body: bool,
}

/// An HTTP callout's answer, while the stage reads it.
#[derive(Debug, Default)]
pub struct Answer {
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

thread_local! {
    static CURRENT: Cell<Current> = Cell::new(Current::default());
    static CONFIG_BYTES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static ANSWER: RefCell<Answer> = RefCell::new(Answer::default());
    static TICK_MS: Cell<Option<u32>> = const { Cell::new(None) };
    static GRPC_STATUS: RefCell<(u32, Vec<u8>)> = const { RefCell::new((2, Vec::new())) };
}

/// Runs `f` with `cur` as the current context, restoring the previous one after.
pub fn within<R>(cur: Current, f: impl FnOnce() -> R) -> R {
    struct Restore(Current);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let prev = CURRENT.with(|c| c.replace(cur));
    let _restore = Restore(prev);
    f()
}

/// The current context.
pub fn current() -> Current {
    CURRENT.with(Cell::get)
}

/// Makes `raw` the plugin configuration the next configure reads.
pub fn set_config_bytes(raw: &[u8]) {
    CONFIG_BYTES.with(|c| {
        let mut c = c.borrow_mut();
        c.clear();
        c.extend_from_slice(raw);
    });
}

/// The tick period the last configure on this thread asked for.
pub fn take_tick_ms() -> Option<u32> {
    TICK_MS.with(|t| t.take())
}

/// Makes `answer` the callout answer stages read, for the duration of `f`.
pub fn with_answer<R>(answer: Answer, f: impl FnOnce() -> R) -> R {
    ANSWER.with(|a| *a.borrow_mut() = answer);
    let r = f();
    ANSWER.with(|a| *a.borrow_mut() = Answer::default());
    r
}

/// Sets what [`Host::grpc_status`] answers.
pub fn set_grpc_status(code: u32, message: Vec<u8>) {
    GRPC_STATUS.with(|g| *g.borrow_mut() = (code, message));
}

/// Callout tokens: one sequence for the process (stages keep token → stream maps, and Envoy's
/// callout ids are only unique per stream).
static NEXT_TOKEN: AtomicU32 = AtomicU32::new(1);

fn token() -> u32 {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed).max(1)
}

/// Metric ids, per configuration and name: a configuration is validated on the main thread and
/// configured again on each worker (as a `.wasm` is in each worker VM), and each defines the
/// same names; Envoy gets each name once.
type MetricKey = (usize, String);

fn metrics() -> &'static Mutex<HashMap<MetricKey, (MetricKind, u64)>> {
    static METRICS: OnceLock<Mutex<HashMap<MetricKey, (MetricKind, u64)>>> = OnceLock::new();
    METRICS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Metric ids as the stages hold them (an index) → the metric.
fn ids() -> &'static Mutex<Vec<Metric>> {
    static IDS: OnceLock<Mutex<Vec<Metric>>> = OnceLock::new();
    IDS.get_or_init(|| Mutex::new(Vec::new()))
}

/// The metrics namespace the module's filter configuration sets, and that each name drops.
pub const METRICS_PREFIX: &str = "upstream_guard.";

/// Envoy, as the stages' host.
pub struct Envoy {
    store: Store,
}

impl Envoy {
    /// The process's host.
    pub fn get() -> &'static Envoy {
        static ENVOY: OnceLock<Envoy> = OnceLock::new();
        ENVOY.get_or_init(|| Envoy { store: Store::new() })
    }

    /// The store (for the soak's key count and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

fn header_kind(map: MapType) -> Option<HeaderKind> {
    match map {
        MapType::RequestHeaders => Some(HeaderKind::Request),
        MapType::RequestTrailers => Some(HeaderKind::RequestTrailers),
        MapType::ResponseHeaders => Some(HeaderKind::Response),
        MapType::ResponseTrailers => Some(HeaderKind::ResponseTrailers),
        _ => None,
    }
}

fn attribute(path: &[u8]) -> Option<(Attribute, bool)> {
    // (attribute, is an integer)
    Some(match path {
        b"source\0address" => (Attribute::SourceAddress, false),
        b"response\0code" => (Attribute::ResponseCode, true),
        b"response\0flags" => (Attribute::ResponseFlags, true),
        b"response\0code_details" => (Attribute::ResponseCodeDetails, false),
        b"upstream\0transport_failure_reason" => (Attribute::UpstreamTransportFailureReason, false),
        b"xds\0cluster_name" => (Attribute::XdsClusterName, false),
        b"xds\0route_name" => (Attribute::XdsRouteName, false),
        b"upstream\0address" => (Attribute::UpstreamAddress, false),
        b"upstream\0request_attempt_count" => (Attribute::UpstreamRequestAttemptCount, true),
        _ => return None,
    })
}

fn body_view(filter: FilterPtr, request: bool) -> Vec<u8> {
    let (received, buffered) = if request {
        (BodyKind::ReceivedRequest, BodyKind::BufferedRequest)
    } else {
        (BodyKind::ReceivedResponse, BodyKind::BufferedResponse)
    };
    let mut out = Vec::new();
    if !abi::received_is_buffered(filter, request) {
        abi::body(filter, buffered, &mut out);
    }
    abi::body(filter, received, &mut out);
    out
}

/// How many bytes the body view of [`body_view`] holds, without copying it.
pub fn body_len(filter: FilterPtr, request: bool) -> usize {
    let (received, buffered) = if request {
        (BodyKind::ReceivedRequest, BodyKind::BufferedRequest)
    } else {
        (BodyKind::ReceivedResponse, BodyKind::BufferedResponse)
    };
    let held = if abi::received_is_buffered(filter, request) { 0 } else { abi::body_size(filter, buffered) };
    held.saturating_add(abi::body_size(filter, received))
}

/// The cluster a gRPC call goes to: `service` is a serialized `GrpcService` (field 1,
/// `envoy_grpc`, whose field 1 is `cluster_name`), as proxy-wasm hosts take it, or a plain name.
fn grpc_cluster(service: &[u8]) -> &[u8] {
    fn field1(b: &[u8]) -> Option<&[u8]> {
        if b.first() != Some(&0x0a) {
            return None;
        }
        let (mut len, mut i, mut shift) = (0usize, 1usize, 0u32);
        loop {
            let byte = *b.get(i)?;
            len |= usize::from(byte & 0x7f) << shift;
            i += 1;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return None;
            }
        }
        b.get(i..i.checked_add(len)?)
    }
    field1(service).and_then(field1).unwrap_or(service)
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside printable ASCII, and `%`.
fn grpc_message(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

impl Host for Envoy {
    fn log(&self, level: Level, message: &str) {
        abi::log(level as u32, message.as_bytes());
    }

    fn log_level(&self) -> Option<u32> {
        // The lowest level Envoy's logger would print (6: off).
        Some((0..6).find(|l| abi::log_enabled(*l)).unwrap_or(6))
    }

    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn set_tick_period(&self, ms: u32) -> Result<(), Status> {
        // Ticks run once per configuration on the main thread; a worker's configure asks too,
        // and is answered yes.
        if current().configuring {
            TICK_MS.with(|t| t.set(Some(ms)));
        }
        Ok(())
    }

    fn header(&self, map: MapType, name: &str) -> Option<Vec<u8>> {
        if map == MapType::HttpCallResponseHeaders {
            return ANSWER.with(|a| {
                a.borrow().headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v.clone())
            });
        }
        let filter = current().filter?;
        abi::get_header(filter, header_kind(map)?, name.as_bytes())
    }

    fn header_map(&self, map: MapType) -> Option<Vec<u8>> {
        let filter = current().filter?;
        let all = abi::get_headers(filter, header_kind(map)?)?;
        Some(pairs::encode(all.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))))
    }

    fn set_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        let cur = current();
        let filter = cur.filter.ok_or(Status::NotFound)?;
        let kind = header_kind(map).ok_or(Status::BadArgument)?;
        if !abi::set_header(filter, kind, name.as_bytes(), Some(value)) {
            return Err(Status::NotFound);
        }
        if kind == HeaderKind::Request {
            abi::clear_route_cache(filter);
        }
        Ok(())
    }

    fn remove_header(&self, map: MapType, name: &str) -> Result<(), Status> {
        let filter = current().filter.ok_or(Status::NotFound)?;
        let kind = header_kind(map).ok_or(Status::BadArgument)?;
        if abi::set_header(filter, kind, name.as_bytes(), None) {
            Ok(())
        } else {
            Err(Status::NotFound)
        }
    }

    fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        let filter = current().filter?;
        let (id, int) = attribute(path)?;
        if int {
            abi::attribute_int(filter, id).map(|n| n.to_le_bytes().to_vec())
        } else {
            abi::attribute_string(filter, id)
        }
    }

    fn set_property(&self, path: &[u8], value: &[u8]) -> Result<(), Status> {
        let filter = current().filter.ok_or(Status::NotFound)?;
        let mut key = b"wasm.".to_vec();
        key.extend_from_slice(path);
        if abi::set_filter_state(filter, &key, value) {
            Ok(())
        } else {
            Err(Status::NotFound)
        }
    }

    fn shared_get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, Status> {
        self.store.get(key)
    }

    fn shared_set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        self.store.set(key, value, cas)
    }

    fn buffer(&self, kind: BufferType, start: usize, max: usize) -> Option<Vec<u8>> {
        let whole = match kind {
            BufferType::PluginConfiguration => CONFIG_BYTES.with(|c| c.borrow().clone()),
            BufferType::HttpCallResponseBody | BufferType::GrpcReceiveBuffer => {
                ANSWER.with(|a| a.borrow().body.clone())
            }
            BufferType::HttpRequestBody => body_view(current().filter?, true),
            BufferType::HttpResponseBody => body_view(current().filter?, false),
            _ => return None,
        };
        let from = start.min(whole.len());
        let to = from.saturating_add(max).min(whole.len());
        Some(whole[from..to].to_vec())
    }

    fn buffer_len(&self, kind: BufferType) -> Option<usize> {
        self.buffer(kind, 0, usize::MAX).map(|b| b.len())
    }

    fn set_buffer(&self, kind: BufferType, start: usize, size: usize, data: &[u8]) -> Result<(), Status> {
        let request = match kind {
            BufferType::HttpRequestBody => true,
            BufferType::HttpResponseBody => false,
            _ => return Err(Status::BadArgument),
        };
        let filter = current().filter.ok_or(Status::NotFound)?;
        let mut whole = body_view(filter, request);
        let from = start.min(whole.len());
        let to = from.saturating_add(size).min(whole.len());
        whole.splice(from..to, data.iter().copied());
        // The new body goes on as this callback's data: what was held before is drained.
        let (received, buffered) = if request {
            (BodyKind::ReceivedRequest, BodyKind::BufferedRequest)
        } else {
            (BodyKind::ReceivedResponse, BodyKind::BufferedResponse)
        };
        if !abi::received_is_buffered(filter, request) {
            abi::drain_body(filter, buffered, usize::MAX);
        }
        abi::drain_body(filter, received, usize::MAX);
        if abi::append_body(filter, received, &whole) {
            Ok(())
        } else {
            Err(Status::BadArgument)
        }
    }

    fn send_local_response(
        &self,
        status: u16,
        details: &str,
        body: &[u8],
        headers: &[(&str, &[u8])],
        grpc_status: Option<u32>,
    ) -> Result<(), Status> {
        let filter = current().filter.ok_or(Status::NotFound)?;
        let grpc = grpc_status.filter(|_| {
            abi::get_header(filter, HeaderKind::Request, b"content-type")
                .is_some_and(|t| t.starts_with(b"application/grpc"))
        });
        match grpc {
            Some(code) => {
                // A trailers-only gRPC answer: HTTP 200, the status and message in the headers.
                let code = code.to_string();
                let message = grpc_message(body);
                let mut h: Vec<(&[u8], &[u8])> = vec![
                    (b"content-type", b"application/grpc"),
                    (b"grpc-status", code.as_bytes()),
                    (b"grpc-message", &message),
                ];
                h.extend(headers.iter().filter(|(k, _)| *k != "content-type").map(|(k, v)| (k.as_bytes(), *v)));
                abi::send_response(filter, 200, &h, b"", details.as_bytes());
            }
            None => {
                let h: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (k.as_bytes(), *v)).collect();
                abi::send_response(filter, u32::from(status), &h, body, details.as_bytes());
            }
        }
        Ok(())
    }

    fn continue_request(&self) -> Result<(), Status> {
        let filter = current().filter.ok_or(Status::NotFound)?;
        abi::continue_decoding(filter);
        Ok(())
    }

    fn set_effective_context(&self, context: u32) -> Result<(), Status> {
        // Answers arrive on the stream they belong to (per-stream callouts): nothing to switch.
        if current().stream == context {
            Ok(())
        } else {
            Err(Status::NotFound)
        }
    }

    fn http_call(
        &self,
        cluster: &str,
        headers: &[(&[u8], &[u8])],
        body: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, Status> {
        self.call(cluster, headers, body, timeout_ms, false)
    }

    fn grpc_call(
        &self,
        service: &[u8],
        service_name: &str,
        method: &str,
        metadata: &[(&[u8], &[u8])],
        message: &[u8],
        timeout_ms: u32,
    ) -> Result<u32, Status> {
        // A unary gRPC call is an HTTP/2 POST of one length-prefixed message.
        let cluster = std::str::from_utf8(grpc_cluster(service)).map_err(|_| Status::BadArgument)?;
        let path = format!("/{service_name}/{method}");
        let timeout = format!("{timeout_ms}m");
        let mut headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", path.as_bytes()),
            (b":authority", cluster.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-timeout", timeout.as_bytes()),
        ];
        headers.extend_from_slice(metadata);
        let mut framed = Vec::with_capacity(message.len() + 5);
        framed.push(0);
        framed.extend_from_slice(&u32::try_from(message.len()).map_err(|_| Status::BadArgument)?.to_be_bytes());
        framed.extend_from_slice(message);
        self.call(cluster, &headers, &framed, timeout_ms, true)
    }

    fn grpc_cancel(&self, _token: u32) -> Result<(), Status> {
        // A callout ends with its stream; its late answer finds no waiting stage.
        Ok(())
    }

    fn grpc_status(&self) -> (u32, Vec<u8>) {
        GRPC_STATUS.with(|g| g.borrow().clone())
    }

    fn foreign(&self, name: &str, _args: &[u8]) -> Result<Vec<u8>, Status> {
        match name {
            "clear_route_cache" => {
                let filter = current().filter.ok_or(Status::NotFound)?;
                abi::clear_route_cache(filter);
                Ok(Vec::new())
            }
            _ => Err(Status::NotFound),
        }
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Result<u32, Status> {
        let config = current().config.ok_or(Status::BadArgument)?;
        let short = name.strip_prefix(METRICS_PREFIX).unwrap_or(name);
        let key = (config.addr(), short.to_string());
        let known = metrics().lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied();
        let (envoy_id, label) = match known {
            Some((_, id)) => (id, None),
            None => match short.split_once(FAMILY_SLOT) {
                // A family's template (configure time): one metric with a cluster label.
                Some((before, after)) => {
                    let labeled = format!("{}{}", before.trim_end_matches('.'), after);
                    let id = match kind {
                        MetricKind::Counter => abi::define_counter(config, labeled.as_bytes(), Some(CLUSTER_LABEL)),
                        MetricKind::Gauge => abi::define_gauge(config, labeled.as_bytes(), Some(CLUSTER_LABEL)),
                    }
                    .ok_or_else(|| refused(name))?;
                    families().lock().unwrap_or_else(|p| p.into_inner()).push(Template {
                        config: config.addr(),
                        before: before.to_string(),
                        after: after.to_string(),
                        kind,
                        id,
                    });
                    // Each worker's configure names the template again: the same metric.
                    metrics().lock().unwrap_or_else(|p| p.into_inner()).insert(key, (kind, id));
                    (id, None)
                }
                None => match family_member(config.addr(), kind, short) {
                    // A family's member (any time): the template's metric, labelled.
                    Some((id, member)) => (id, Some(member)),
                    None => {
                        let id = match kind {
                            MetricKind::Counter => abi::define_counter(config, short.as_bytes(), None),
                            MetricKind::Gauge => abi::define_gauge(config, short.as_bytes(), None),
                        }
                        .ok_or_else(|| refused(name))?;
                        metrics().lock().unwrap_or_else(|p| p.into_inner()).insert(key, (kind, id));
                        (id, None)
                    }
                },
            },
        };
        let mut ids = ids().lock().unwrap_or_else(|p| p.into_inner());
        let entry = Metric { config, kind, id: envoy_id, label };
        if let Some(i) = ids.iter().position(|m| *m == entry) {
            return u32::try_from(i).map_err(|_| Status::InternalFailure);
        }
        ids.push(entry);
        u32::try_from(ids.len() - 1).map_err(|_| Status::InternalFailure)
    }

    fn increment_metric(&self, id: u32, by: i64) -> Result<(), Status> {
        let m = lookup(id)?;
        let by = u64::try_from(by).unwrap_or(0);
        let label = m.label.as_deref().map(str::as_bytes);
        match m.kind {
            MetricKind::Counter => abi::increment_counter(m.config, m.id, label, by),
            MetricKind::Gauge => abi::increment_gauge(m.config, m.id, label, by),
        };
        Ok(())
    }

    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        let m = lookup(id)?;
        abi::set_gauge(m.config, m.id, m.label.as_deref().map(str::as_bytes), value);
        Ok(())
    }
}

/// The label a family's members carry: the name the `.wasm` puts inside the metric name, and
/// that the examples' `stats_tags` extract as the same tag.
pub const CLUSTER_LABEL: &[u8] = b"envoy_cluster_name";

fn refused(name: &str) -> Status {
    abi::log(Level::Warn as u32, format!("upstream_guard: Envoy refused to define metric {name}").as_bytes());
    Status::InternalFailure
}

/// A metric as the stages hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Metric {
    config: ConfigPtr,
    kind: MetricKind,
    id: u64,
    label: Option<String>,
}

/// A family's template: `<before><member><after>`.
struct Template {
    config: usize,
    before: String,
    after: String,
    kind: MetricKind,
    id: u64,
}

fn families() -> &'static Mutex<Vec<Template>> {
    static FAMILIES: OnceLock<Mutex<Vec<Template>>> = OnceLock::new();
    FAMILIES.get_or_init(|| Mutex::new(Vec::new()))
}

/// The template metric and member name `short` belongs to, if it is a family member.
fn family_member(config: usize, kind: MetricKind, short: &str) -> Option<(u64, String)> {
    let families = families().lock().unwrap_or_else(|p| p.into_inner());
    families.iter().filter(|t| t.config == config && t.kind == kind).find_map(|t| {
        let member = short.strip_prefix(t.before.as_str())?.strip_suffix(t.after.as_str())?;
        (!member.is_empty() && !member.contains('.')).then(|| (t.id, member.to_string()))
    })
}

impl Envoy {
    /// Sends a callout for the current stream (or, in a configuration hook, for the
    /// configuration) and hands out the stage's token for it.
    fn call(
        &self,
        cluster: &str,
        headers: &[(&[u8], &[u8])],
        body: &[u8],
        timeout_ms: u32,
        grpc: bool,
    ) -> Result<u32, Status> {
        let cur = current();
        let (init, envoy_id, owner) = match (cur.filter, cur.config) {
            (Some(filter), _) => {
                let (r, id) = abi::filter_http_callout(filter, cluster.as_bytes(), headers, body, timeout_ms);
                (r, id, filter.0 as usize)
            }
            (None, Some(config)) => {
                let (r, id) = abi::config_http_callout(config, cluster.as_bytes(), headers, body, timeout_ms);
                (r, id, config.addr())
            }
            (None, None) => return Err(Status::BadArgument),
        };
        match init {
            abi::CalloutInit::Success => {
                let t = token();
                callouts().lock().unwrap_or_else(|p| p.into_inner()).insert((owner, envoy_id), (t, grpc));
                Ok(t)
            }
            abi::CalloutInit::ClusterNotFound => Err(Status::NotFound),
            _ => Err(Status::InternalFailure),
        }
    }
}

/// Callouts in flight: (owner's Envoy pointer, Envoy's callout id) → (the stage's token, gRPC).
/// Entries leave when answered, or with their stream ([`forget_callouts`]).
type Callouts = HashMap<(usize, u64), (u32, bool)>;

fn callouts() -> &'static Mutex<Callouts> {
    static CALLOUTS: OnceLock<Mutex<Callouts>> = OnceLock::new();
    CALLOUTS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The token (and whether it was a gRPC call) of callout `id` of `owner`, forgotten.
pub fn take_callout(owner: usize, id: u64) -> Option<(u32, bool)> {
    callouts().lock().unwrap_or_else(|p| p.into_inner()).remove(&(owner, id))
}

/// Forgets the callouts of a stream that ended.
pub fn forget_callouts(owner: usize) {
    let mut c = callouts().lock().unwrap_or_else(|p| p.into_inner());
    if !c.is_empty() {
        c.retain(|(o, _), _| *o != owner);
    }
}

fn lookup(id: u32) -> Result<Metric, Status> {
    let ids = ids().lock().unwrap_or_else(|p| p.into_inner());
    ids.get(id as usize).cloned().ok_or(Status::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_service_names_its_cluster() {
        assert_eq!(grpc_cluster(b"\x0a\x05\x0a\x03rls"), b"rls");
        assert_eq!(grpc_cluster(b"rls"), b"rls");
        assert_eq!(grpc_cluster(b"\x0a\x09\x0a"), b"\x0a\x09\x0a");
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message(b"rate limited: 5%\n"), b"rate limited: 5%25%0A".to_vec());
        assert_eq!(grpc_message("é".as_bytes()), b"%C3%A9".to_vec());
    }
}
