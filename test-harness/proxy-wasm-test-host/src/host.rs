//! The host a test creates: what every VM of it shares (fake clock, shared data, metrics,
//! queues, foreign functions, host-wide properties), how many workers each plugin gets, and
//! loading plugins.
//!
//! Nothing is global except compiled code: two hosts share nothing, so tests run in parallel.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use crate::abi::foreign::ForeignFunction;
use crate::abi::metrics::Metrics;
use crate::abi::queues::Queues;
use crate::abi::shared_data::SharedStore;
use crate::clock::Clock;
use crate::engine;
use crate::state::{dotted_key, segments_key};
use crate::types::{level, HostError, Status};
use crate::worker::Worker;

/// What all VMs of a host share.
#[derive(Default)]
pub(crate) struct Shared {
    pub clock: Clock,
    pub data: SharedStore,
    pub metrics: Metrics,
    pub queues: Queues,
    pub foreign: RwLock<HashMap<String, ForeignFunction>>,
    pub properties: RwLock<HashMap<Vec<u8>, Vec<u8>>>,
    pub log_level: AtomicU32,
    /// Local replies skip the sending filter's response callbacks ([`Host::local_replies_skip_filter`]).
    pub local_replies_skip_filter: AtomicBool,
}

/// Where serialized modules are cached between processes.
#[derive(Debug, Clone)]
enum DiskCache {
    /// `PROXY_WASM_TEST_HOST_CACHE`, else the `target/` directory above the `.wasm`.
    Auto,
    Dir(PathBuf),
    Off,
}

/// The host: create it, choose the number of workers, load plugins.
pub struct Host {
    shared: Arc<Shared>,
    workers: usize,
    clusters: Option<Arc<HashSet<Vec<u8>>>>,
    disk_cache: DiskCache,
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("workers", &self.workers)
            .field("now_nanos", &self.shared.clock.now_nanos())
            .finish()
    }
}

/// How a plugin is loaded.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The plugin configuration (`config.configuration`), as bytes.
    pub plugin_config: Vec<u8>,
    /// The VM configuration (`vm_config.configuration`), as bytes.
    pub vm_config: Vec<u8>,
    /// The VM id: shared data and queues are per VM id.
    pub vm_id: String,
    /// The root id (`plugin_root_id`).
    pub root_id: String,
}

impl Host {
    /// One worker, the clock at 2026-01-01T00:00:00Z, every cluster name accepted, the log
    /// level at trace.
    pub fn new() -> Host {
        Host { shared: Arc::new(Shared::default()), workers: 1, clusters: None, disk_cache: DiskCache::Auto }
    }

    /// Loads every plugin as `n` VMs (Envoy's worker threads) sharing this host's state.
    pub fn workers(mut self, n: usize) -> Host {
        self.workers = n.max(1);
        self
    }

    /// The clusters HTTP and gRPC callouts may name; others get `BadArgument`, as in Envoy.
    /// By default every name is accepted.
    pub fn clusters(mut self, names: &[&str]) -> Host {
        self.clusters = Some(Arc::new(names.iter().map(|s| s.as_bytes().to_vec()).collect()));
        self
    }

    /// Caches compiled modules in `dir` between processes (the default is
    /// `PROXY_WASM_TEST_HOST_CACHE`, else `proxy-wasm-test-host/` in the `target` directory
    /// above the `.wasm`, else in `CARGO_TARGET_DIR`, else in the user's cache directory).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Host {
        self.disk_cache = DiskCache::Dir(dir.into());
        self
    }

    /// Compiles in this process only (modules are still compiled once per process).
    pub fn no_disk_cache(mut self) -> Host {
        self.disk_cache = DiskCache::Off;
        self
    }

    /// Delivers a filter's local reply to the client as the filter sent it, without running it
    /// through the filter's own response callbacks. By default the host does what Envoy does: a
    /// local reply sent during a request callback goes, once that callback returns, to the same
    /// filter's `on_http_response_headers` (the reply's `:status`, its headers, and
    /// `content-length` and `content-type: text/plain` for a body) and `on_http_response_body`,
    /// and what the filter makes of it is what [`crate::HttpStream::response_headers_now`] shows.
    pub fn local_replies_skip_filter(self) -> Host {
        self.shared.local_replies_skip_filter.store(true, Ordering::Relaxed);
        self
    }

    /// The level `proxy_get_log_level` reports (one of [`level`]); the log keeps every line.
    pub fn log_level(self, lvl: u32) -> Host {
        self.shared.log_level.store(lvl.min(level::CRITICAL), Ordering::Relaxed);
        self
    }

    /// The shared fake clock.
    pub fn clock(&self) -> Clock {
        self.shared.clock.clone()
    }

    /// Registers foreign function `name` for every plugin of this host (it wins over a
    /// built-in of the same name).
    pub fn foreign_function(
        &self,
        name: &str,
        f: impl Fn(&[u8]) -> Result<Vec<u8>, Status> + Send + Sync + 'static,
    ) -> &Host {
        if let Ok(mut table) = self.shared.foreign.write() {
            table.insert(name.to_string(), Arc::new(f));
        }
        self
    }

    /// Sets a host-wide property (`"node.id"`, `"listener_direction"`…), seen by every context
    /// that has no property of that path itself. Dots separate segments.
    pub fn property(&self, path: &str, value: impl AsRef<[u8]>) -> &Host {
        self.set_property_key(dotted_key(path), value.as_ref())
    }

    /// Same as [`Host::property`], with the path as segments (for segments holding dots).
    pub fn property_path(&self, path: &[&[u8]], value: impl AsRef<[u8]>) -> &Host {
        self.set_property_key(segments_key(path), value.as_ref())
    }

    fn set_property_key(&self, key: Vec<u8>, value: &[u8]) -> &Host {
        if let Ok(mut p) = self.shared.properties.write() {
            p.insert(key, value.to_vec());
        }
        self
    }

    /// Loads `wasm` with a plugin configuration (anything that displays as it: a
    /// `serde_json::Value`, a `&str`…); `vm_id` and `root_id` are the file stem.
    pub fn load(&self, wasm: impl AsRef<Path>, config: impl fmt::Display) -> Result<Plugin, HostError> {
        let name = wasm.as_ref().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let opts = LoadOptions {
            plugin_config: config.to_string().into_bytes(),
            vm_id: name.clone(),
            root_id: name,
            vm_config: Vec::new(),
        };
        self.load_with(wasm, opts)
    }

    /// Loads with explicit options (raw configuration bytes, vm id, root id, vm configuration).
    pub fn load_with(&self, wasm: impl AsRef<Path>, opts: LoadOptions) -> Result<Plugin, HostError> {
        let path = wasm.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| {
            HostError::Missing(format!(
                "{}: {e}; build the filter first (`cargo build --release --target wasm32-wasip1`, or the \
                 project's own command such as `cargo xtask build`)",
                path.display()
            ))
        })?;
        let disk = match &self.disk_cache {
            DiskCache::Auto => engine::default_cache_dir(&path),
            DiskCache::Dir(d) => Some(d.clone()),
            DiskCache::Off => None,
        };
        self.start(&bytes, disk.as_deref(), opts, path)
    }

    /// Loads a module from its bytes (`.wasm`, or `.wat` text when the embedding enables
    /// wasmtime's `wat` feature); `name` is what [`Plugin::path`] reports.
    pub fn load_bytes(&self, name: &str, bytes: &[u8], opts: LoadOptions) -> Result<Plugin, HostError> {
        let disk = match &self.disk_cache {
            DiskCache::Dir(d) => Some(d.clone()),
            DiskCache::Auto | DiskCache::Off => None,
        };
        self.start(bytes, disk.as_deref(), opts, PathBuf::from(name))
    }

    fn start(&self, bytes: &[u8], disk: Option<&Path>, opts: LoadOptions, path: PathBuf) -> Result<Plugin, HostError> {
        let shown = path.display().to_string();
        let compiled = engine::compile(bytes, disk).map_err(|e| HostError::Load(format!("{shown}: {e}")))?;
        let (pre, unimplemented) = compiled.proxy().map_err(|e| HostError::Load(format!("{shown}: {e}")))?;
        let workers = (0..self.workers)
            .map(|index| Worker::start(&pre, &self.shared, &opts, index, self.clusters.clone(), &unimplemented))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Plugin { workers, path, unimplemented })
    }

    /// A counter's or gauge's value (a histogram's last value), by the name the filter defined.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.shared.metrics.get(name)
    }

    /// Same as [`Host::metric`], `0` when undefined (convenient for counters).
    pub fn counter(&self, name: &str) -> i64 {
        self.metric(name).unwrap_or(0)
    }

    /// Every metric, sorted by name.
    pub fn metrics(&self) -> Vec<(String, i64)> {
        self.shared.metrics.all()
    }

    /// A shared-data value and its CAS number.
    pub fn shared_data(&self, vm_id: &str, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared_data_bytes(vm_id, key.as_bytes())
    }

    /// Same as [`Host::shared_data`], with the key as bytes.
    pub fn shared_data_bytes(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.shared.data.get(vm_id.as_bytes(), key)
    }

    /// Writes a shared-data value as another process would (new CAS number, not counted).
    pub fn set_shared_data(&self, vm_id: &str, key: &[u8], value: &[u8]) {
        self.shared.data.set(vm_id.as_bytes(), key, value);
    }

    /// Makes the next `n` shared-data reads race: right after each read, "another worker" writes
    /// the same key (creating it empty if missing), so the reader's compare-and-swap fails.
    pub fn interfere_with_shared_data(&self, n: u32) {
        self.shared.data.interference.store(n, Ordering::SeqCst);
    }

    /// (reads, writes, writes refused for a stale CAS) on shared data so far.
    pub fn shared_data_ops(&self) -> (u64, u64, u64) {
        let d = &self.shared.data;
        (d.gets.load(Ordering::SeqCst), d.sets.load(Ordering::SeqCst), d.cas_mismatches.load(Ordering::SeqCst))
    }

    /// How many shared-data keys exist for `vm_id` (keys are never deleted, as in Envoy).
    pub fn shared_data_keys(&self, vm_id: &str) -> usize {
        self.shared.data.keys(vm_id.as_bytes())
    }

    /// Every shared-data key of `vm_id` with its value, sorted by key: for invariants over the
    /// whole store (every key decodes, no key outside the expected set).
    pub fn shared_data_entries(&self, vm_id: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.shared.data.entries(vm_id.as_bytes())
    }

    /// The items waiting in shared queue `name` of `vm_id`, oldest first; `None` if it was
    /// never registered.
    pub fn queue_items(&self, vm_id: &str, name: &str) -> Option<Vec<Vec<u8>>> {
        self.shared.queues.items(vm_id.as_bytes(), name.as_bytes())
    }
}

/// A loaded plugin: one VM per worker.
pub struct Plugin {
    workers: Vec<Worker>,
    path: PathBuf,
    unimplemented: Arc<Vec<String>>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").field("path", &self.path).field("workers", &self.workers.len()).finish()
    }
}

impl Plugin {
    /// The module's imports this host does not implement (`module.name`): each call to one
    /// answers `Unimplemented` (`ENOSYS` for WASI) and is logged. Also the first line of every
    /// worker's log when not empty.
    pub fn unimplemented_imports(&self) -> &[String] {
        &self.unimplemented
    }

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
