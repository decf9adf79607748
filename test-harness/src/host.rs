//! A deterministic proxy-wasm host on wasmtime: drives any filter built for `wasm32-wasip1` with
//! the proxy-wasm ABI 0.2.1 (or 0.2.0) the way Envoy would, with a fake clock, ticks on demand,
//! callouts the test answers, metrics, properties, and several workers sharing one shared-data
//! store.
//!
//! Nothing is global: a [`Host`] owns the clock, shared data, metrics and queues; each loaded
//! [`Plugin`] has one wasmtime `Store` (one VM) per worker. Tests run in parallel.
//!
//! ```no_run
//! # use test_harness::host::*;
//! # use std::time::Duration;
//! # fn main() -> Result<(), HostError> {
//! let host = Host::new().workers(2);
//! let plugin = host.load(test_harness::paths::wasm_path("rate_limiter").unwrap(),
//!     serde_json::json!({"rules": [{"name": "all", "limit": {"requests": 1, "per": "1s"}}]}))?;
//! let mut s = plugin.worker(0).http_stream().property("source.address", "10.0.0.1:5555");
//! assert_eq!(s.request_headers(&[(":path", "/a"), (":method", "GET")], true)?, Action::Continue);
//! let mut t = plugin.worker(1).http_stream().property("source.address", "10.0.0.1:5556");
//! t.request_headers(&[(":path", "/a"), (":method", "GET")], true)?;
//! assert_eq!(t.local_response().unwrap().status, 429);
//! host.clock().advance(Duration::from_secs(1));
//! plugin.tick_all()?;
//! # Ok(()) }
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{Caller, Engine, Extern, Instance, Linker, Module, Store, Val};

/// proxy-wasm status codes.
pub mod status {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const BAD_ARGUMENT: i32 = 2;
    pub const SERIALIZATION_FAILURE: i32 = 3;
    pub const INVALID_MEMORY_ACCESS: i32 = 6;
    pub const EMPTY: i32 = 7;
    pub const CAS_MISMATCH: i32 = 8;
    pub const INTERNAL_FAILURE: i32 = 10;
    pub const UNIMPLEMENTED: i32 = 12;
}

/// WASI `ENOSYS`, for WASI functions a filter imports but this host does not model.
const WASI_ENOSYS: i32 = 52;

/// Log levels as proxy-wasm numbers them.
pub mod level {
    pub const TRACE: u32 = 0;
    pub const DEBUG: u32 = 1;
    pub const INFO: u32 = 2;
    pub const WARN: u32 = 3;
    pub const ERROR: u32 = 4;
    pub const CRITICAL: u32 = 5;
}

/// What a filter callback returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// Why a host operation failed.
#[derive(Debug)]
pub enum HostError {
    /// The `.wasm` is not there (says which command builds it).
    Missing(String),
    /// wasmtime refused the module or an import.
    Load(String),
    /// `proxy_on_vm_start` or `proxy_on_configure` returned false; carries the VM's log.
    Configure { log: Vec<(u32, String)> },
    /// The filter trapped (a Rust panic aborts): the last critical log line, and the whole log.
    Trap { message: String, log: Vec<(u32, String)> },
    /// The test asked for something that does not exist (an unknown callout token, say).
    Usage(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Missing(m) | HostError::Load(m) | HostError::Usage(m) => f.write_str(m),
            HostError::Configure { log } => write!(f, "the plugin refused its configuration; log: {log:?}"),
            HostError::Trap { message, log } => write!(f, "the filter trapped: {message}; log: {log:?}"),
        }
    }
}

impl std::error::Error for HostError {}

/// A local reply a filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `response.code_details`; `None` when the filter passed none (the SDK's `send_http_response`).
    pub details: Option<String>,
}

impl LocalResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// An HTTP callout waiting for the test to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCall {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
    /// Fake-clock time it was sent.
    pub sent_at: u64,
}

impl PendingCall {
    /// A header of the callout.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Metrics {
    by_name: HashMap<String, u32>,
    /// (name, type, value)
    values: Vec<(String, u32, i64)>,
}

/// Shared data: (vm_id, key) → (value, CAS number).
type SharedData = HashMap<(String, String), (Vec<u8>, u32)>;
/// Shared queues: (vm_id, name, items); a queue's id is its index + 1.
type Queues = Vec<(String, String, Vec<Vec<u8>>)>;

/// What all VMs of a host share: the clock, shared data, metrics and queues.
#[derive(Debug, Default)]
struct Shared {
    clock: AtomicU64,
    data: Mutex<SharedData>,
    cas: AtomicU32,
    metrics: Mutex<Metrics>,
    queues: Mutex<Queues>,
    /// Injected races: this many upcoming shared-data reads are followed, before the reader can
    /// write, by another worker's write to the same key.
    interference: AtomicU32,
    gets: AtomicU64,
    sets: AtomicU64,
    cas_mismatches: AtomicU64,
}

/// The fake clock (nanoseconds since the Unix epoch), shared by every VM of a host.
#[derive(Debug, Clone)]
pub struct Clock(Arc<Shared>);

impl Clock {
    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        self.0.clock.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }
    /// Sets the time (may go backwards: filters must cope).
    pub fn set_nanos(&self, ns: u64) {
        self.0.clock.store(ns, Ordering::SeqCst);
    }
    /// The time now.
    pub fn now_nanos(&self) -> u64 {
        self.0.clock.load(Ordering::SeqCst)
    }
}

/// The host: create it, choose the number of workers, load plugins.
pub struct Host {
    shared: Arc<Shared>,
    workers: usize,
    engine: Engine,
    clusters: Option<Vec<String>>,
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

impl Host {
    /// One worker, the clock at 2026-01-01T00:00:00Z.
    pub fn new() -> Host {
        let shared = Arc::new(Shared::default());
        shared.clock.store(1_767_225_600_000_000_000, Ordering::SeqCst);
        Host { shared, workers: 1, engine: Engine::default(), clusters: None }
    }

    /// Loads every plugin as `n` VMs (Envoy's worker threads) sharing this host's state.
    pub fn workers(mut self, n: usize) -> Host {
        self.workers = n.max(1);
        self
    }

    /// The clusters `dispatch_http_call` may name; others get `BAD_ARGUMENT`, as in Envoy.
    /// By default every name is accepted.
    pub fn clusters(mut self, names: &[&str]) -> Host {
        self.clusters = Some(names.iter().map(|s| s.to_string()).collect());
        self
    }

    /// The shared fake clock.
    pub fn clock(&self) -> Clock {
        Clock(self.shared.clone())
    }

    /// Loads `wasm` with the JSON plugin configuration; `vm_id` and `root_id` are the file stem.
    pub fn load(&self, wasm: impl AsRef<Path>, config: serde_json::Value) -> Result<Plugin, HostError> {
        let name = wasm.as_ref().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        self.load_with(
            wasm,
            LoadOptions {
                plugin_config: config.to_string().into_bytes(),
                vm_id: name.clone(),
                root_id: name,
                vm_config: Vec::new(),
            },
        )
    }

    /// Loads with explicit options (raw configuration bytes, vm id, root id, vm configuration).
    pub fn load_with(&self, wasm: impl AsRef<Path>, opts: LoadOptions) -> Result<Plugin, HostError> {
        let path = wasm.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| {
            HostError::Missing(format!("{}: {e}; build the filters with `cargo xtask build`", path.display()))
        })?;
        let module =
            Module::new(&self.engine, &bytes).map_err(|e| HostError::Load(format!("{}: {e:#}", path.display())))?;
        let mut workers = Vec::with_capacity(self.workers);
        for index in 0..self.workers {
            workers.push(Worker::start(&self.engine, &module, &self.shared, &opts, index, self.clusters.clone())?);
        }
        Ok(Plugin { workers, path })
    }

    /// A counter's or gauge's value, by the name the filter defined.
    pub fn metric(&self, name: &str) -> Option<i64> {
        let m = self.shared.metrics.lock().ok()?;
        m.by_name.get(name).and_then(|id| m.values.get(*id as usize)).map(|(_, _, v)| *v)
    }

    /// Same as [`Host::metric`], `0` when undefined (convenient for counters).
    pub fn counter(&self, name: &str) -> i64 {
        self.metric(name).unwrap_or(0)
    }

    /// Every metric, sorted by name.
    pub fn metrics(&self) -> Vec<(String, i64)> {
        let Ok(m) = self.shared.metrics.lock() else { return Vec::new() };
        let mut out: Vec<_> = m.values.iter().map(|(n, _, v)| (n.clone(), *v)).collect();
        out.sort();
        out
    }

    /// A shared-data value and its CAS number.
    pub fn shared_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.data.lock().ok()?.get(&(vm_id.to_string(), key.to_string())).cloned()
    }

    /// Makes the next `n` shared-data reads race: right after each read, "another worker" writes
    /// the same key (creating it empty if missing), so the reader's compare-and-swap fails.
    pub fn interfere_with_shared_data(&self, n: u32) {
        self.shared.interference.store(n, Ordering::SeqCst);
    }

    /// (reads, writes, writes refused for a stale CAS) on shared data so far.
    pub fn shared_data_ops(&self) -> (u64, u64, u64) {
        (
            self.shared.gets.load(Ordering::SeqCst),
            self.shared.sets.load(Ordering::SeqCst),
            self.shared.cas_mismatches.load(Ordering::SeqCst),
        )
    }

    /// How many shared-data keys exist for `vm_id` (keys are never deleted, as in Envoy).
    pub fn shared_data_keys(&self, vm_id: &str) -> usize {
        self.shared.data.lock().map(|d| d.keys().filter(|(v, _)| v == vm_id).count()).unwrap_or(0)
    }
}

/// How a plugin is loaded.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    pub vm_id: String,
    pub root_id: String,
}

/// A loaded plugin: one VM per worker.
pub struct Plugin {
    workers: Vec<Worker>,
    path: PathBuf,
}

impl Plugin {
    /// Worker `i` (panics on a bad index: a test bug).
    pub fn worker(&self, i: usize) -> &Worker {
        &self.workers[i]
    }

    /// Every worker.
    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// Delivers timed-out callouts, then `on_tick`, on every worker (Envoy ticks every VM).
    pub fn tick_all(&self) -> Result<(), HostError> {
        self.workers.iter().try_for_each(Worker::tick)
    }

    /// Every worker's log, in worker order.
    pub fn logs(&self) -> Vec<(u32, String)> {
        self.workers.iter().flat_map(|w| w.logs()).collect()
    }

    /// Where the module came from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[derive(Debug, Default)]
struct StreamData {
    request_headers: Vec<(String, String)>,
    request_trailers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
    response_trailers: Vec<(String, String)>,
    request_body: Vec<u8>,
    response_body: Vec<u8>,
    properties: HashMap<String, Vec<u8>>,
    local_response: Option<LocalResponse>,
    route_cache_cleared: bool,
    continued: u32,
}

#[derive(Debug, Default)]
struct CallResponse {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

/// The per-VM state wasmtime hands to host functions.
struct VmState {
    shared: Arc<Shared>,
    vm_id: String,
    logs: Vec<(u32, String)>,
    stdio: Vec<u8>,
    tick_ms: u32,
    effective: u32,
    streams: HashMap<u32, StreamData>,
    root_properties: HashMap<String, Vec<u8>>,
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    calls: BTreeMap<u32, PendingCall>,
    next_token: u32,
    call_response: Option<CallResponse>,
    clusters: Option<Vec<String>>,
    rng: u64,
    done: u32,
}

/// One VM (one Envoy worker).
pub struct Worker {
    inner: RefCell<WorkerInner>,
    index: usize,
}

struct WorkerInner {
    store: Store<VmState>,
    instance: Instance,
    next_context: u32,
}

const ROOT_CONTEXT: u32 = 1;

impl Worker {
    fn start(
        engine: &Engine,
        module: &Module,
        shared: &Arc<Shared>,
        opts: &LoadOptions,
        index: usize,
        clusters: Option<Vec<String>>,
    ) -> Result<Worker, HostError> {
        let mut root_properties = HashMap::new();
        root_properties.insert("plugin_name".to_string(), opts.root_id.clone().into_bytes());
        root_properties.insert("plugin_root_id".to_string(), opts.root_id.clone().into_bytes());
        root_properties.insert("plugin_vm_id".to_string(), opts.vm_id.clone().into_bytes());
        let state = VmState {
            shared: shared.clone(),
            vm_id: opts.vm_id.clone(),
            logs: Vec::new(),
            stdio: Vec::new(),
            tick_ms: 0,
            effective: ROOT_CONTEXT,
            streams: HashMap::new(),
            root_properties,
            plugin_config: opts.plugin_config.clone(),
            vm_config: opts.vm_config.clone(),
            calls: BTreeMap::new(),
            next_token: 1 + (index as u32) * 1_000_000,
            call_response: None,
            clusters,
            rng: 0x9E37_79B9_7F4A_7C15 ^ index as u64,
            done: 0,
        };
        let mut store = Store::new(engine, state);
        let mut linker: Linker<VmState> = Linker::new(engine);
        linker.allow_shadowing(true);
        imports::stub_all(&mut linker, module).map_err(|e| HostError::Load(format!("{e:#}")))?;
        imports::define(&mut linker).map_err(|e| HostError::Load(format!("{e:#}")))?;
        let instance =
            linker.instantiate(&mut store, module).map_err(|e| HostError::Load(format!("instantiate: {e:#}")))?;
        let w = Worker { inner: RefCell::new(WorkerInner { store, instance, next_context: ROOT_CONTEXT + 1 }), index };
        if w.has_export("_initialize") {
            w.call("_initialize", &[], 0)?;
        }
        w.call("proxy_on_context_create", &[Val::I32(ROOT_CONTEXT as i32), Val::I32(0)], 0)?;
        let vm_len = w.inner.borrow().store.data().vm_config.len() as i32;
        let started = w.call("proxy_on_vm_start", &[Val::I32(ROOT_CONTEXT as i32), Val::I32(vm_len)], 1)?;
        let cfg_len = w.inner.borrow().store.data().plugin_config.len() as i32;
        let configured =
            started != 0 && w.call("proxy_on_configure", &[Val::I32(ROOT_CONTEXT as i32), Val::I32(cfg_len)], 1)? != 0;
        if !configured {
            return Err(HostError::Configure { log: w.logs() });
        }
        Ok(w)
    }

    fn has_export(&self, name: &str) -> bool {
        let mut inner = self.inner.borrow_mut();
        let WorkerInner { store, instance, .. } = &mut *inner;
        instance.get_func(&mut *store, name).is_some()
    }

    /// Calls an export; returns its i32 result (0 when it has none or does not exist).
    fn call(&self, name: &str, params: &[Val], results: usize) -> Result<i32, HostError> {
        let mut inner = self.inner.borrow_mut();
        let WorkerInner { store, instance, .. } = &mut *inner;
        let Some(func) = instance.get_func(&mut *store, name) else { return Ok(0) };
        // The export's own type says how many results it has (0.2.0 and 0.2.1 differ for some).
        let _ = results;
        let mut out = vec![Val::I32(0); func.ty(&*store).results().len()];
        if let Err(e) = func.call(&mut *store, params, &mut out) {
            let log = store.data().logs.clone();
            let message = log
                .iter()
                .rev()
                .find(|(l, _)| *l == level::CRITICAL)
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| format!("{e:#}"));
            return Err(HostError::Trap { message, log });
        }
        Ok(out.first().and_then(Val::i32).unwrap_or(0))
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut VmState) -> R) -> R {
        f(self.inner.borrow_mut().store.data_mut())
    }

    /// This worker's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Starts an HTTP stream (creates its context).
    pub fn http_stream(&self) -> HttpStream<'_> {
        let id = {
            let mut inner = self.inner.borrow_mut();
            let id = inner.next_context;
            inner.next_context += 1;
            inner.store.data_mut().streams.insert(id, StreamData::default());
            id
        };
        let created = self.call("proxy_on_context_create", &[Val::I32(id as i32), Val::I32(ROOT_CONTEXT as i32)], 0);
        HttpStream { worker: self, id, error: created.err(), finished: false }
    }

    /// Delivers callouts whose timeout has passed (as Envoy does: no headers), then `on_tick`.
    pub fn tick(&self) -> Result<(), HostError> {
        let now = self.with_state(|s| s.shared.clock.load(Ordering::SeqCst));
        let expired: Vec<u32> = self.with_state(|s| {
            s.calls
                .values()
                .filter(|c| now >= c.sent_at.saturating_add(u64::try_from(c.timeout.as_nanos()).unwrap_or(u64::MAX)))
                .map(|c| c.token)
                .collect()
        });
        for token in expired {
            self.fail_http_call(token)?;
        }
        self.with_state(|s| s.effective = ROOT_CONTEXT);
        self.call("proxy_on_tick", &[Val::I32(ROOT_CONTEXT as i32)], 0).map(drop)
    }

    /// The tick period the filter asked for (0 = none).
    pub fn tick_period(&self) -> Duration {
        Duration::from_millis(u64::from(self.with_state(|s| s.tick_ms)))
    }

    /// Callouts waiting for an answer, oldest first.
    pub fn pending_http_calls(&self) -> Vec<PendingCall> {
        self.with_state(|s| s.calls.values().cloned().collect())
    }

    /// Answers callout `token`.
    pub fn respond_http_call(
        &self,
        token: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        let mut all = vec![(":status".to_string(), status.to_string())];
        all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.deliver(token, CallResponse { headers: all, body: body.to_vec(), trailers: Vec::new() })
    }

    /// Fails callout `token` the way Envoy reports a reset or timeout: no headers, no body.
    pub fn fail_http_call(&self, token: u32) -> Result<(), HostError> {
        self.deliver(token, CallResponse::default())
    }

    fn deliver(&self, token: u32, response: CallResponse) -> Result<(), HostError> {
        let (nh, nb, nt) = (response.headers.len(), response.body.len(), response.trailers.len());
        let known = self.with_state(|s| {
            let known = s.calls.remove(&token).is_some();
            s.call_response = Some(response);
            s.effective = ROOT_CONTEXT;
            known
        });
        if !known {
            return Err(HostError::Usage(format!("no pending callout with token {token}")));
        }
        let r = self.call(
            "proxy_on_http_call_response",
            &[
                Val::I32(ROOT_CONTEXT as i32),
                Val::I32(token as i32),
                Val::I32(nh as i32),
                Val::I32(nb as i32),
                Val::I32(nt as i32),
            ],
            0,
        );
        self.with_state(|s| s.call_response = None);
        r.map(drop)
    }

    /// Calls `proxy_on_queue_ready` for queue `id`.
    pub fn queue_ready(&self, id: u32) -> Result<(), HostError> {
        self.call("proxy_on_queue_ready", &[Val::I32(ROOT_CONTEXT as i32), Val::I32(id as i32)], 0).map(drop)
    }

    /// This VM's log: (level, message), including what the filter wrote to stdout/stderr.
    pub fn logs(&self) -> Vec<(u32, String)> {
        self.with_state(|s| s.logs.clone())
    }

    /// Log lines at `level` or above.
    pub fn logs_at_least(&self, min: u32) -> Vec<String> {
        self.logs().into_iter().filter(|(l, _)| *l >= min).map(|(_, m)| m).collect()
    }

    /// How many times the filter called `proxy_done`.
    pub fn done_calls(&self) -> u32 {
        self.with_state(|s| s.done)
    }
}

/// One HTTP stream on a worker. Drive it with the callbacks in order; read what the filter did
/// after any step.
pub struct HttpStream<'w> {
    worker: &'w Worker,
    id: u32,
    error: Option<HostError>,
    finished: bool,
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl<'w> HttpStream<'w> {
    fn data<R>(&self, f: impl FnOnce(&mut StreamData) -> R) -> R {
        self.worker.with_state(|s| f(s.streams.entry(self.id).or_default()))
    }

    /// Sets a string property (`"source.address"`, `"xds.cluster_name"`, …).
    pub fn property(self, path: &str, value: &str) -> Self {
        self.data(|d| d.properties.insert(path.to_string(), value.as_bytes().to_vec()));
        self
    }

    /// Sets an integer property (8 bytes little-endian, as Envoy encodes them).
    pub fn property_u64(self, path: &str, value: u64) -> Self {
        self.data(|d| d.properties.insert(path.to_string(), value.to_le_bytes().to_vec()));
        self
    }

    /// Sets a string property on a stream already under way (e.g. `response.code_details`).
    pub fn set_property(&mut self, path: &str, value: &str) {
        self.data(|d| d.properties.insert(path.to_string(), value.as_bytes().to_vec()));
    }

    /// Sets an integer property on a stream already under way.
    pub fn set_property_u64(&mut self, path: &str, value: u64) {
        self.data(|d| d.properties.insert(path.to_string(), value.to_le_bytes().to_vec()));
    }

    fn callback(&mut self, name: &str, params: &[Val]) -> Result<Action, HostError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.worker.with_state(|s| s.effective = self.id);
        let r = self.worker.call(name, params, 1)?;
        Ok(if r == 0 { Action::Continue } else { Action::Pause })
    }

    /// `on_http_request_headers` with these headers.
    pub fn request_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Result<Action, HostError> {
        self.data(|d| d.request_headers = owned(headers));
        self.callback(
            "proxy_on_request_headers",
            &[Val::I32(self.id as i32), Val::I32(headers.len() as i32), Val::I32(end_of_stream.into())],
        )
    }

    /// `on_http_request_body` with this chunk appended.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, HostError> {
        let len = self.data(|d| {
            d.request_body.extend_from_slice(chunk);
            d.request_body.len()
        });
        self.callback(
            "proxy_on_request_body",
            &[Val::I32(self.id as i32), Val::I32(len as i32), Val::I32(end_of_stream.into())],
        )
    }

    /// `on_http_response_headers` with these headers.
    pub fn response_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> Result<Action, HostError> {
        self.data(|d| d.response_headers = owned(headers));
        self.callback(
            "proxy_on_response_headers",
            &[Val::I32(self.id as i32), Val::I32(headers.len() as i32), Val::I32(end_of_stream.into())],
        )
    }

    /// `on_http_response_body` with this chunk appended.
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, HostError> {
        let len = self.data(|d| {
            d.response_body.extend_from_slice(chunk);
            d.response_body.len()
        });
        self.callback(
            "proxy_on_response_body",
            &[Val::I32(self.id as i32), Val::I32(len as i32), Val::I32(end_of_stream.into())],
        )
    }

    /// `on_log`.
    pub fn log(&mut self) -> Result<(), HostError> {
        self.callback("proxy_on_log", &[Val::I32(self.id as i32)]).map(drop)
    }

    /// `on_done` then `on_delete`, as when Envoy destroys the stream.
    pub fn finish(mut self) -> Result<(), HostError> {
        self.finished = true;
        self.callback("proxy_on_done", &[Val::I32(self.id as i32)])?;
        self.callback("proxy_on_delete", &[Val::I32(self.id as i32)]).map(drop)
    }

    /// The local reply the filter sent, if any.
    pub fn local_response(&self) -> Option<LocalResponse> {
        self.data(|d| d.local_response.clone())
    }

    /// Request headers as the upstream would see them now.
    pub fn request_headers_now(&self) -> Vec<(String, String)> {
        self.data(|d| d.request_headers.clone())
    }

    /// One request header as the upstream would see it now.
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.data(|d| d.request_headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    /// Response headers as the client would see them now.
    pub fn response_headers_now(&self) -> Vec<(String, String)> {
        self.data(|d| d.response_headers.clone())
    }

    /// One response header as the client would see it now.
    pub fn response_header(&self, name: &str) -> Option<String> {
        self.data(|d| d.response_headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    /// The response body as the client would see it now.
    pub fn response_body_now(&self) -> Vec<u8> {
        self.data(|d| d.response_body.clone())
    }

    /// True once the filter cleared the route cache.
    pub fn route_cache_cleared(&self) -> bool {
        self.data(|d| d.route_cache_cleared)
    }

    /// How many times the filter resumed the stream (`proxy_continue_stream` and friends).
    pub fn continued(&self) -> u32 {
        self.data(|d| d.continued)
    }
}

impl Drop for HttpStream<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.worker.with_state(|s| s.effective = self.id);
            let _ = self.worker.call("proxy_on_done", &[Val::I32(self.id as i32)], 1);
            let _ = self.worker.call("proxy_on_delete", &[Val::I32(self.id as i32)], 0);
        }
    }
}

/// proxy-wasm's header-map encoding.
pub fn encode_pairs(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Parses proxy-wasm's header-map encoding; `None` if malformed.
pub fn decode_pairs(b: &[u8]) -> Option<Vec<(String, String)>> {
    let word = |i: usize| -> Option<usize> { Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as usize) };
    let n = word(0)?;
    let mut sizes = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        sizes.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(sizes.len());
    for (kl, vl) in sizes {
        let k = String::from_utf8_lossy(b.get(at..at + kl)?).into_owned();
        at += kl + 1;
        let v = String::from_utf8_lossy(b.get(at..at + vl)?).into_owned();
        at += vl + 1;
        out.push((k, v));
    }
    Some(out)
}

mod imports {
    //! The host functions: proxy-wasm in module `env`, WASI preview 1 in
    //! `wasi_snapshot_preview1`.

    use super::*;

    type C<'a> = Caller<'a, VmState>;

    fn memory(c: &mut C<'_>) -> Option<wasmtime::Memory> {
        match c.get_export("memory") {
            Some(Extern::Memory(m)) => Some(m),
            _ => None,
        }
    }

    fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, i32> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let mem = memory(c).ok_or(status::INVALID_MEMORY_ACCESS)?;
        let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
        mem.data(&*c)
            .get(ptr..ptr.checked_add(len).ok_or(status::INVALID_MEMORY_ACCESS)?)
            .map(<[u8]>::to_vec)
            .ok_or(status::INVALID_MEMORY_ACCESS)
    }

    fn read_str(c: &mut C<'_>, ptr: i32, len: i32) -> Result<String, i32> {
        Ok(String::from_utf8_lossy(&read(c, ptr, len)?).into_owned())
    }

    fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<(), i32> {
        let mem = memory(c).ok_or(status::INVALID_MEMORY_ACCESS)?;
        mem.write(&mut *c, ptr as u32 as usize, bytes).map_err(|_| status::INVALID_MEMORY_ACCESS)
    }

    fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> Result<(), i32> {
        write(c, ptr, &v.to_le_bytes())
    }

    /// Copies `bytes` into guest memory it allocates, and stores pointer and size in the return
    /// slots, as every "returns data" host call does.
    fn give(c: &mut C<'_>, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> Result<(), i32> {
        let alloc = c
            .get_export("proxy_on_memory_allocate")
            .or_else(|| c.get_export("malloc"))
            .and_then(Extern::into_func)
            .ok_or(status::INTERNAL_FAILURE)?;
        let alloc = alloc.typed::<i32, i32>(&*c).map_err(|_| status::INTERNAL_FAILURE)?;
        let ptr = alloc.call(&mut *c, bytes.len() as i32).map_err(|_| status::INTERNAL_FAILURE)?;
        write(c, ptr, bytes)?;
        write_u32(c, ret_ptr, ptr as u32)?;
        write_u32(c, ret_len, bytes.len() as u32)
    }

    fn code(r: Result<(), i32>) -> i32 {
        match r {
            Ok(()) => status::OK,
            Err(s) => s,
        }
    }

    fn property_path(raw: &[u8]) -> String {
        raw.split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .join(".")
    }

    fn map_of(s: &mut VmState, t: i32) -> Option<&mut Vec<(String, String)>> {
        let id = s.effective;
        match t {
            0..=3 => {
                let d = s.streams.entry(id).or_default();
                Some(match t {
                    0 => &mut d.request_headers,
                    1 => &mut d.request_trailers,
                    2 => &mut d.response_headers,
                    _ => &mut d.response_trailers,
                })
            }
            6 => s.call_response.as_mut().map(|r| &mut r.headers),
            7 => s.call_response.as_mut().map(|r| &mut r.trailers),
            _ => None,
        }
    }

    /// The request-header map, for a change: like Envoy with ABI 0.2.x modules, changing a request
    /// header clears the route cache, so the route is matched again with the new headers.
    fn request_map_changed(s: &mut VmState, t: i32) {
        if t == 0 {
            let id = s.effective;
            s.streams.entry(id).or_default().route_cache_cleared = true;
        }
    }

    fn buffer_of(s: &mut VmState, t: i32) -> Option<&mut Vec<u8>> {
        let id = s.effective;
        match t {
            0 => Some(&mut s.streams.entry(id).or_default().request_body),
            1 => Some(&mut s.streams.entry(id).or_default().response_body),
            4 => s.call_response.as_mut().map(|r| &mut r.body),
            6 => Some(&mut s.vm_config),
            7 => Some(&mut s.plugin_config),
            _ => None,
        }
    }

    pub(super) fn define(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
        let env = "env";
        l.func_wrap(env, "proxy_log", |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            match read_str(&mut c, ptr, len) {
                Ok(m) => {
                    c.data_mut().logs.push((level as u32, m));
                    status::OK
                }
                Err(s) => s,
            }
        })?;
        l.func_wrap(env, "proxy_get_log_level", |mut c: C<'_>, ret: i32| -> i32 {
            code(write_u32(&mut c, ret, level::TRACE))
        })?;
        l.func_wrap(env, "proxy_get_current_time_nanoseconds", |mut c: C<'_>, ret: i32| -> i32 {
            let now = c.data().shared.clock.load(Ordering::SeqCst);
            code(write(&mut c, ret, &now.to_le_bytes()))
        })?;
        l.func_wrap(env, "proxy_set_tick_period_milliseconds", |mut c: C<'_>, ms: i32| -> i32 {
            c.data_mut().tick_ms = ms as u32;
            status::OK
        })?;
        l.func_wrap(
            env,
            "proxy_get_buffer_bytes",
            |mut c: C<'_>, t: i32, start: i32, max: i32, rp: i32, rl: i32| -> i32 {
                let data = {
                    let Some(buf) = buffer_of(c.data_mut(), t) else { return status::NOT_FOUND };
                    let start = (start as u32 as usize).min(buf.len());
                    let end = start.saturating_add(max as u32 as usize).min(buf.len());
                    buf[start..end].to_vec()
                };
                if data.is_empty() {
                    return status::NOT_FOUND;
                }
                code(give(&mut c, &data, rp, rl))
            },
        )?;
        l.func_wrap(env, "proxy_get_buffer_status", |mut c: C<'_>, t: i32, len_ptr: i32, flags_ptr: i32| -> i32 {
            let Some(len) = buffer_of(c.data_mut(), t).map(|b| b.len()) else { return status::NOT_FOUND };
            code(write_u32(&mut c, len_ptr, len as u32).and_then(|()| write_u32(&mut c, flags_ptr, 0)))
        })?;
        l.func_wrap(
            env,
            "proxy_set_buffer_bytes",
            |mut c: C<'_>, t: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
                let data = match read(&mut c, ptr, len) {
                    Ok(d) => d,
                    Err(s) => return s,
                };
                let Some(buf) = buffer_of(c.data_mut(), t) else { return status::NOT_FOUND };
                let start = (start as u32 as usize).min(buf.len());
                let end = start.saturating_add(size as u32 as usize).min(buf.len());
                buf.splice(start..end, data);
                status::OK
            },
        )?;
        l.func_wrap(env, "proxy_get_header_map_pairs", |mut c: C<'_>, t: i32, rp: i32, rl: i32| -> i32 {
            let Some(bytes) = map_of(c.data_mut(), t).map(|m| encode_pairs(m)) else { return status::NOT_FOUND };
            code(give(&mut c, &bytes, rp, rl))
        })?;
        l.func_wrap(env, "proxy_set_header_map_pairs", |mut c: C<'_>, t: i32, ptr: i32, len: i32| -> i32 {
            let Some(pairs) = read(&mut c, ptr, len).ok().and_then(|b| decode_pairs(&b)) else {
                return status::BAD_ARGUMENT;
            };
            let Some(m) = map_of(c.data_mut(), t) else { return status::NOT_FOUND };
            *m = pairs;
            request_map_changed(c.data_mut(), t);
            status::OK
        })?;
        l.func_wrap(
            env,
            "proxy_get_header_map_value",
            |mut c: C<'_>, t: i32, kp: i32, kl: i32, rp: i32, rl: i32| -> i32 {
                let Ok(key) = read_str(&mut c, kp, kl) else { return status::INVALID_MEMORY_ACCESS };
                let key = key.to_ascii_lowercase();
                let Some(value) =
                    map_of(c.data_mut(), t).and_then(|m| m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()))
                else {
                    return status::NOT_FOUND;
                };
                code(give(&mut c, value.as_bytes(), rp, rl))
            },
        )?;
        l.func_wrap(
            env,
            "proxy_replace_header_map_value",
            |mut c: C<'_>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
                let (Ok(key), Ok(value)) = (read_str(&mut c, kp, kl), read_str(&mut c, vp, vl)) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                let key = key.to_ascii_lowercase();
                let Some(m) = map_of(c.data_mut(), t) else { return status::NOT_FOUND };
                m.retain(|(k, _)| *k != key);
                m.push((key, value));
                request_map_changed(c.data_mut(), t);
                status::OK
            },
        )?;
        l.func_wrap(env, "proxy_remove_header_map_value", |mut c: C<'_>, t: i32, kp: i32, kl: i32| -> i32 {
            let Ok(key) = read_str(&mut c, kp, kl) else { return status::INVALID_MEMORY_ACCESS };
            let key = key.to_ascii_lowercase();
            let Some(m) = map_of(c.data_mut(), t) else { return status::NOT_FOUND };
            m.retain(|(k, _)| *k != key);
            request_map_changed(c.data_mut(), t);
            status::OK
        })?;
        l.func_wrap(
            env,
            "proxy_add_header_map_value",
            |mut c: C<'_>, t: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
                let (Ok(key), Ok(value)) = (read_str(&mut c, kp, kl), read_str(&mut c, vp, vl)) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                let Some(m) = map_of(c.data_mut(), t) else { return status::NOT_FOUND };
                m.push((key.to_ascii_lowercase(), value));
                request_map_changed(c.data_mut(), t);
                status::OK
            },
        )?;
        l.func_wrap(env, "proxy_get_header_map_size", |mut c: C<'_>, t: i32, ret: i32| -> i32 {
            let Some(n) = map_of(c.data_mut(), t).map(|m| encode_pairs(m).len()) else { return status::NOT_FOUND };
            code(write_u32(&mut c, ret, n as u32))
        })?;
        l.func_wrap(env, "proxy_get_property", |mut c: C<'_>, pp: i32, pl: i32, rp: i32, rl: i32| -> i32 {
            let Ok(raw) = read(&mut c, pp, pl) else { return status::INVALID_MEMORY_ACCESS };
            let path = property_path(&raw);
            let s = c.data();
            let value = s
                .streams
                .get(&s.effective)
                .and_then(|d| d.properties.get(&path))
                .or_else(|| s.root_properties.get(&path))
                .cloned();
            match value {
                Some(v) => code(give(&mut c, &v, rp, rl)),
                None => status::NOT_FOUND,
            }
        })?;
        l.func_wrap(env, "proxy_set_property", |mut c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| -> i32 {
            let (Ok(raw), Ok(value)) = (read(&mut c, pp, pl), read(&mut c, vp, vl)) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let path = property_path(&raw);
            let s = c.data_mut();
            let id = s.effective;
            if id == ROOT_CONTEXT {
                s.root_properties.insert(path, value);
            } else {
                s.streams.entry(id).or_default().properties.insert(path, value);
            }
            status::OK
        })?;
        l.func_wrap(
            env,
            "proxy_get_shared_data",
            |mut c: C<'_>, kp: i32, kl: i32, rp: i32, rl: i32, rc: i32| -> i32 {
                let Ok(key) = read_str(&mut c, kp, kl) else { return status::INVALID_MEMORY_ACCESS };
                let vm = c.data().vm_id.clone();
                let shared = c.data().shared.clone();
                shared.gets.fetch_add(1, Ordering::SeqCst);
                let found = {
                    let Ok(mut d) = shared.data.lock() else { return status::INTERNAL_FAILURE };
                    let k = (vm, key);
                    let found = d.get(&k).cloned();
                    let interfere = shared
                        .interference
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if interfere {
                        let next = shared.cas.fetch_add(1, Ordering::SeqCst).wrapping_add(1).max(1);
                        let value = found.as_ref().map(|(v, _)| v.clone()).unwrap_or_default();
                        d.insert(k, (value, next));
                    }
                    found
                };
                let Some((value, cas)) = found else { return status::NOT_FOUND };
                let r = if value.is_empty() {
                    write_u32(&mut c, rp, 0).and_then(|()| write_u32(&mut c, rl, 0))
                } else {
                    give(&mut c, &value, rp, rl)
                };
                code(r.and_then(|()| write_u32(&mut c, rc, cas)))
            },
        )?;
        l.func_wrap(
            env,
            "proxy_set_shared_data",
            |mut c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> i32 {
                let (Ok(key), Ok(value)) = (read_str(&mut c, kp, kl), read(&mut c, vp, vl)) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                let s = c.data();
                let Ok(mut data) = s.shared.data.lock() else { return status::INTERNAL_FAILURE };
                let k = (s.vm_id.clone(), key);
                s.shared.sets.fetch_add(1, Ordering::SeqCst);
                // Envoy: CAS 0 writes unconditionally, and so does the first write of a missing key.
                if let Some((_, current)) = data.get(&k) {
                    if cas != 0 && cas as u32 != *current {
                        s.shared.cas_mismatches.fetch_add(1, Ordering::SeqCst);
                        return status::CAS_MISMATCH;
                    }
                }
                let next = s.shared.cas.fetch_add(1, Ordering::SeqCst).wrapping_add(1).max(1);
                data.insert(k, (value, next));
                status::OK
            },
        )?;
        l.func_wrap(env, "proxy_register_shared_queue", |mut c: C<'_>, np: i32, nl: i32, ret: i32| -> i32 {
            let Ok(name) = read_str(&mut c, np, nl) else { return status::INVALID_MEMORY_ACCESS };
            let vm = c.data().vm_id.clone();
            let id = {
                let Ok(mut q) = c.data().shared.queues.lock() else { return status::INTERNAL_FAILURE };
                match q.iter().position(|(v, n, _)| *v == vm && *n == name) {
                    Some(i) => i,
                    None => {
                        q.push((vm, name, Vec::new()));
                        q.len() - 1
                    }
                }
            };
            code(write_u32(&mut c, ret, id as u32 + 1))
        })?;
        l.func_wrap(
            env,
            "proxy_resolve_shared_queue",
            |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, ret: i32| -> i32 {
                let (Ok(vm), Ok(name)) = (read_str(&mut c, vp, vl), read_str(&mut c, np, nl)) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                let id = c
                    .data()
                    .shared
                    .queues
                    .lock()
                    .ok()
                    .and_then(|q| q.iter().position(|(v, n, _)| *v == vm && *n == name));
                match id {
                    Some(i) => code(write_u32(&mut c, ret, i as u32 + 1)),
                    None => status::NOT_FOUND,
                }
            },
        )?;
        l.func_wrap(env, "proxy_dequeue_shared_queue", |mut c: C<'_>, id: i32, rp: i32, rl: i32| -> i32 {
            let item = {
                let Ok(mut q) = c.data().shared.queues.lock() else { return status::INTERNAL_FAILURE };
                let Some((_, _, items)) = q.get_mut((id as usize).wrapping_sub(1)) else { return status::NOT_FOUND };
                if items.is_empty() {
                    return status::EMPTY;
                }
                items.remove(0)
            };
            code(give(&mut c, &item, rp, rl))
        })?;
        l.func_wrap(env, "proxy_enqueue_shared_queue", |mut c: C<'_>, id: i32, ptr: i32, len: i32| -> i32 {
            let Ok(item) = read(&mut c, ptr, len) else { return status::INVALID_MEMORY_ACCESS };
            let Ok(mut q) = c.data().shared.queues.lock() else { return status::INTERNAL_FAILURE };
            let Some((_, _, items)) = q.get_mut((id as usize).wrapping_sub(1)) else { return status::NOT_FOUND };
            items.push(item);
            status::OK
        })?;
        for name in ["proxy_continue_stream", "proxy_close_stream"] {
            l.func_wrap(env, name, |mut c: C<'_>, _t: i32| -> i32 {
                let s = c.data_mut();
                let id = s.effective;
                s.streams.entry(id).or_default().continued += 1;
                status::OK
            })?;
        }
        for name in ["proxy_continue_request", "proxy_continue_response"] {
            l.func_wrap(env, name, |mut c: C<'_>| -> i32 {
                let s = c.data_mut();
                let id = s.effective;
                s.streams.entry(id).or_default().continued += 1;
                status::OK
            })?;
        }
        l.func_wrap(
            env,
            "proxy_send_local_response",
            |mut c: C<'_>, st: i32, dp: i32, dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, _grpc: i32| -> i32 {
                let details = if dp == 0 { None } else { read_str(&mut c, dp, dl).ok() };
                let Ok(body) = read(&mut c, bp, bl) else { return status::INVALID_MEMORY_ACCESS };
                let headers =
                    read(&mut c, hp, hl)
                        .ok()
                        .and_then(|b| if b.is_empty() { Some(Vec::new()) } else { decode_pairs(&b) });
                let Some(headers) = headers else { return status::BAD_ARGUMENT };
                let s = c.data_mut();
                let id = s.effective;
                s.streams.entry(id).or_default().local_response =
                    Some(LocalResponse { status: st as u32, headers, body, details });
                status::OK
            },
        )?;
        l.func_wrap(env, "proxy_clear_route_cache", |mut c: C<'_>| -> i32 {
            let s = c.data_mut();
            let id = s.effective;
            s.streams.entry(id).or_default().route_cache_cleared = true;
            status::OK
        })?;
        l.func_wrap(
            env,
            "proxy_http_call",
            |mut c: C<'_>,
             up: i32,
             ul: i32,
             hp: i32,
             hl: i32,
             bp: i32,
             bl: i32,
             _tp: i32,
             _tl: i32,
             timeout: i32,
             ret: i32|
             -> i32 {
                let (Ok(cluster), Ok(hbytes), Ok(body)) =
                    (read_str(&mut c, up, ul), read(&mut c, hp, hl), read(&mut c, bp, bl))
                else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                let Some(headers) = decode_pairs(&hbytes) else { return status::BAD_ARGUMENT };
                let s = c.data_mut();
                if s.clusters.as_ref().is_some_and(|known| !known.contains(&cluster)) {
                    return status::BAD_ARGUMENT;
                }
                if [":method", ":path", ":authority"].iter().any(|h| !headers.iter().any(|(k, _)| k == h)) {
                    return status::BAD_ARGUMENT;
                }
                let token = s.next_token;
                s.next_token += 1;
                let sent_at = s.shared.clock.load(Ordering::SeqCst);
                let timeout = Duration::from_millis(u64::from(timeout as u32));
                s.calls.insert(token, PendingCall { token, cluster, headers, body, timeout, sent_at });
                code(write_u32(&mut c, ret, token))
            },
        )?;
        l.func_wrap(
            env,
            "proxy_grpc_call",
            |_c: C<'_>,
             _a: i32,
             _b: i32,
             _d: i32,
             _e: i32,
             _f: i32,
             _g: i32,
             _h: i32,
             _i: i32,
             _j: i32,
             _k: i32,
             _t: i32,
             _r: i32|
             -> i32 { status::UNIMPLEMENTED },
        )?;
        l.func_wrap(
            env,
            "proxy_grpc_stream",
            |_c: C<'_>, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32, _g: i32, _h: i32, _i: i32, _r: i32| -> i32 {
                status::UNIMPLEMENTED
            },
        )?;
        l.func_wrap(env, "proxy_grpc_send", |_c: C<'_>, _t: i32, _p: i32, _l: i32, _e: i32| -> i32 {
            status::NOT_FOUND
        })?;
        for name in ["proxy_grpc_cancel", "proxy_grpc_close"] {
            l.func_wrap(env, name, |_c: C<'_>, _t: i32| -> i32 { status::NOT_FOUND })?;
        }
        l.func_wrap(env, "proxy_get_status", |mut c: C<'_>, rc: i32, rp: i32, rl: i32| -> i32 {
            code(
                write_u32(&mut c, rc, 0)
                    .and_then(|()| write_u32(&mut c, rp, 0))
                    .and_then(|()| write_u32(&mut c, rl, 0)),
            )
        })?;
        l.func_wrap(env, "proxy_set_effective_context", |mut c: C<'_>, id: i32| -> i32 {
            let s = c.data_mut();
            let id = id as u32;
            if id != ROOT_CONTEXT && !s.streams.contains_key(&id) {
                return status::BAD_ARGUMENT;
            }
            s.effective = id;
            status::OK
        })?;
        l.func_wrap(env, "proxy_done", |mut c: C<'_>| -> i32 {
            c.data_mut().done += 1;
            status::OK
        })?;
        l.func_wrap(
            env,
            "proxy_call_foreign_function",
            |mut c: C<'_>, np: i32, nl: i32, _ap: i32, _al: i32, rp: i32, rl: i32| -> i32 {
                let Ok(name) = read_str(&mut c, np, nl) else { return status::INVALID_MEMORY_ACCESS };
                match name.as_str() {
                    "clear_route_cache" => {
                        let s = c.data_mut();
                        let id = s.effective;
                        s.streams.entry(id).or_default().route_cache_cleared = true;
                        code(write_u32(&mut c, rp, 0).and_then(|()| write_u32(&mut c, rl, 0)))
                    }
                    _ => status::NOT_FOUND,
                }
            },
        )?;
        l.func_wrap(env, "proxy_define_metric", |mut c: C<'_>, t: i32, np: i32, nl: i32, ret: i32| -> i32 {
            let Ok(name) = read_str(&mut c, np, nl) else { return status::INVALID_MEMORY_ACCESS };
            if !(0..=2).contains(&t) {
                return status::BAD_ARGUMENT;
            }
            let id = {
                let Ok(mut m) = c.data().shared.metrics.lock() else { return status::INTERNAL_FAILURE };
                match m.by_name.get(&name) {
                    Some(id) => *id,
                    None => {
                        let id = m.values.len() as u32;
                        m.values.push((name.clone(), t as u32, 0));
                        m.by_name.insert(name, id);
                        id
                    }
                }
            };
            code(write_u32(&mut c, ret, id))
        })?;
        l.func_wrap(env, "proxy_increment_metric", |c: C<'_>, id: i32, offset: i64| -> i32 {
            let Ok(mut m) = c.data().shared.metrics.lock() else { return status::INTERNAL_FAILURE };
            match m.values.get_mut(id as usize) {
                Some((_, 2, _)) => status::BAD_ARGUMENT,
                Some((_, _, v)) => {
                    *v += offset;
                    status::OK
                }
                None => status::NOT_FOUND,
            }
        })?;
        l.func_wrap(env, "proxy_record_metric", |c: C<'_>, id: i32, value: i64| -> i32 {
            let Ok(mut m) = c.data().shared.metrics.lock() else { return status::INTERNAL_FAILURE };
            match m.values.get_mut(id as usize) {
                Some((_, _, v)) => {
                    *v = value;
                    status::OK
                }
                None => status::NOT_FOUND,
            }
        })?;
        l.func_wrap(env, "proxy_get_metric", |mut c: C<'_>, id: i32, ret: i32| -> i32 {
            let value = c.data().shared.metrics.lock().ok().and_then(|m| m.values.get(id as usize).map(|(_, _, v)| *v));
            match value {
                Some(v) => code(write(&mut c, ret, &(v as u64).to_le_bytes())),
                None => status::NOT_FOUND,
            }
        })?;

        let wasi = "wasi_snapshot_preview1";
        l.func_wrap(wasi, "fd_write", |mut c: C<'_>, fd: i32, iovs: i32, n: i32, written: i32| -> i32 {
            let mut total = 0u32;
            for i in 0..n {
                let Ok(iov) = read(&mut c, iovs + i * 8, 8) else { return 21 };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Ok(bytes) = read(&mut c, ptr, len) else { return 21 };
                total += bytes.len() as u32;
                if fd == 1 || fd == 2 {
                    c.data_mut().stdio.extend_from_slice(&bytes);
                }
            }
            // Complete lines go to the log, at info (stdout) or error (stderr) level.
            let lvl = if fd == 2 { level::ERROR } else { level::INFO };
            while let Some(nl) = c.data().stdio.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = c.data_mut().stdio.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                c.data_mut().logs.push((lvl, text));
            }
            if write_u32(&mut c, written, total).is_err() {
                return 21;
            }
            0
        })?;
        l.func_wrap(wasi, "clock_time_get", |mut c: C<'_>, _id: i32, _precision: i64, ret: i32| -> i32 {
            let now = c.data().shared.clock.load(Ordering::SeqCst);
            if write(&mut c, ret, &now.to_le_bytes()).is_err() {
                return 21;
            }
            0
        })?;
        l.func_wrap(wasi, "random_get", |mut c: C<'_>, ptr: i32, len: i32| -> i32 {
            let mut bytes = Vec::with_capacity(len as u32 as usize);
            for _ in 0..len {
                let s = c.data_mut();
                s.rng ^= s.rng << 13;
                s.rng ^= s.rng >> 7;
                s.rng ^= s.rng << 17;
                bytes.push(s.rng as u8);
            }
            if write(&mut c, ptr, &bytes).is_err() {
                return 21;
            }
            0
        })?;
        l.func_wrap(wasi, "environ_sizes_get", |mut c: C<'_>, count: i32, size: i32| -> i32 {
            if write_u32(&mut c, count, 0).and_then(|()| write_u32(&mut c, size, 0)).is_err() {
                return 21;
            }
            0
        })?;
        l.func_wrap(wasi, "environ_get", |_c: C<'_>, _a: i32, _b: i32| -> i32 { 0 })?;
        l.func_wrap(wasi, "proc_exit", |_c: C<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!("proc_exit({code})")))
        })?;
        Ok(())
    }

    /// Every function the module imports first gets a stub (WASI returns `ENOSYS`, proxy-wasm
    /// `UNIMPLEMENTED`), which [`define`] then shadows with the real ones: any SDK-built filter
    /// loads, whatever else it imports.
    pub(super) fn stub_all(l: &mut Linker<VmState>, module: &Module) -> wasmtime::Result<()> {
        for i in module.imports() {
            let wasmtime::ExternType::Func(ft) = i.ty() else { continue };
            let fallback = if i.module() == "wasi_snapshot_preview1" { WASI_ENOSYS } else { status::UNIMPLEMENTED };
            l.func_new(i.module(), i.name(), ft, move |_c, _params, results| {
                for r in results.iter_mut() {
                    *r = Val::I32(fallback);
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}
