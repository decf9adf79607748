//! One VM (one Envoy worker thread): starting it, calling its callbacks, and everything a test
//! does on the root context: ticks, answering HTTP and gRPC callouts, queue notifications,
//! foreign-function callbacks, logs and host-call accounting.
//!
//! Callouts are answered on the root context, as Envoy does (the SDK finds the stream that
//! made the call from the token). A VM that trapped stays failed, as Envoy marks it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{InstancePre, Store};

use crate::accounting::HostCalls;
use crate::exports::{Callback, Exports};
use crate::host::{LoadOptions, Shared};
use crate::state::{Kind, StreamData, VmState, ROOT_CONTEXT};
use crate::types::{grpc_status, level, GrpcKind, Headers, HostError, PendingCall, PendingGrpcCall};

/// One VM (one Envoy worker).
pub struct Worker {
    inner: RefCell<Inner>,
    index: usize,
}

struct Inner {
    store: Store<VmState>,
    exports: Exports,
    next_context: u32,
    /// The trap that failed this VM, if one did.
    failed: Option<String>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("index", &self.index).finish()
    }
}

/// Pairs a test hands in, names lowercased as Envoy's codecs deliver them.
fn owned<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Headers {
    pairs.iter().map(|(k, v)| (k.as_ref().to_ascii_lowercase(), v.as_ref().to_vec())).collect()
}

/// What Envoy 1.40 reports when a unary gRPC call times out (status `UNAVAILABLE`: the
/// router's 504 mapped to gRPC).
pub const GRPC_TIMEOUT_MESSAGE: &[u8] = b"upstream request timeout{response_timeout}";

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Worker {
    pub(crate) fn start(
        pre: &InstancePre<VmState>,
        shared: &Arc<Shared>,
        opts: &LoadOptions,
        index: usize,
        clusters: Option<Arc<HashSet<Vec<u8>>>>,
        unimplemented: &[String],
    ) -> Result<Worker, HostError> {
        let mut state = VmState::new(shared.clone());
        if !unimplemented.is_empty() {
            state.host_log(
                3,
                format_args!("the module imports what this host does not implement: {}", unimplemented.join(", ")),
            );
        }
        for (k, v) in [("plugin_name", &opts.root_id), ("plugin_root_id", &opts.root_id), ("plugin_vm_id", &opts.vm_id)]
        {
            state.root_properties.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        state.vm_id = opts.vm_id.as_bytes().to_vec();
        state.plugin_config = opts.plugin_config.clone();
        state.vm_config = opts.vm_config.clone();
        state.next_token = 1 + (index as u32) * 1_000_000;
        state.clusters = clusters;
        state.wasi = std::mem::take(&mut state.wasi).seed(0x9E37_79B9_7F4A_7C15 ^ index as u64);
        let mut store = Store::new(pre.module().engine(), state);
        let instance = pre.instantiate(&mut store).map_err(|e| HostError::Load(format!("instantiate: {e:#}")))?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = ["proxy_on_memory_allocate", "malloc"]
            .iter()
            .find_map(|name| instance.get_typed_func::<i32, i32>(&mut store, name).ok());
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        let exports = Exports::lookup(&instance, &mut store);
        let w = Worker {
            inner: RefCell::new(Inner { store, exports, next_context: ROOT_CONTEXT + 1, failed: None }),
            index,
        };
        if w.inner.borrow().exports.initialize.exists() {
            w.call(|e| &e.initialize, &[])?;
        } else if w.inner.borrow().exports.start.exists() {
            w.call(|e| &e.start, &[])?;
        }
        let root = ROOT_CONTEXT as i32;
        w.call(|e| &e.on_context_create, &[root, 0])?;
        let vm_len = opts.vm_config.len() as i32;
        let cfg_len = opts.plugin_config.len() as i32;
        // A missing `proxy_on_vm_start` / `proxy_on_configure` accepts, as in Envoy; the plugin
        // configuration is readable only during `proxy_on_configure`.
        if w.call(|e| &e.on_vm_start, &[root, vm_len])?.unwrap_or(1) == 0 {
            return Err(HostError::Configure { callback: "proxy_on_vm_start", log: w.logs() });
        }
        w.with_state(|s| s.delivery.in_configure = true);
        let configured = w.call(|e| &e.on_configure, &[root, cfg_len])?.unwrap_or(1) != 0;
        w.with_state(|s| s.delivery.in_configure = false);
        if !configured {
            return Err(HostError::Configure { callback: "proxy_on_configure", log: w.logs() });
        }
        Ok(w)
    }

    /// Calls a callback; `Ok(None)` when the module does not export it.
    pub(crate) fn call(&self, pick: impl Fn(&Exports) -> &Callback, args: &[i32]) -> Result<Option<i32>, HostError> {
        let mut inner = self.inner.borrow_mut();
        let Inner { store, exports, failed, .. } = &mut *inner;
        if let Some(first) = failed {
            let message = format!("the VM failed earlier and is no longer called: {first}");
            return Err(HostError::Trap { message, log: store.data().logs.clone() });
        }
        match pick(exports).call(store, args) {
            Ok(r) => Ok(r),
            Err(e) => {
                let log = store.data().logs.clone();
                let message = log
                    .iter()
                    .rev()
                    .find(|(l, _)| *l == level::CRITICAL)
                    .map(|(_, m)| m.clone())
                    .unwrap_or_else(|| format!("{e:#}"));
                *failed = Some(message.clone());
                Err(HostError::Trap { message, log })
            }
        }
    }

    /// Calls a callback on the root context.
    fn call_root(&self, pick: impl Fn(&Exports) -> &Callback, args: &[i32]) -> Result<Option<i32>, HostError> {
        self.with_state(|s| s.effective = ROOT_CONTEXT);
        let r = self.call(pick, args)?;
        self.deliver_local_replies()?;
        Ok(r)
    }

    /// A local reply a stream's filter sent while answering a call (or on a tick, a queue, a
    /// foreign callback) goes through that filter's response callbacks, as Envoy sends it.
    fn deliver_local_replies(&self) -> Result<(), HostError> {
        let waiting: Vec<u32> = self.with_state(|s| {
            s.streams
                .iter()
                .filter(|(_, d)| d.kind == Kind::Http && d.local_response.is_some() && !d.local_response_delivered)
                .map(|(id, _)| *id)
                .collect()
        });
        for id in waiting {
            crate::http_stream::HttpStream::existing(self, id).deliver_local_reply()?;
        }
        Ok(())
    }

    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut VmState) -> R) -> R {
        f(self.inner.borrow_mut().store.data_mut())
    }

    /// Creates a stream context of `kind`; its id and the error `proxy_on_context_create` gave.
    pub(crate) fn new_context(&self, kind: Kind) -> (u32, Option<HostError>) {
        let id = {
            let mut inner = self.inner.borrow_mut();
            let id = inner.next_context;
            inner.next_context += 1;
            inner.store.data_mut().streams.insert(id, StreamData { kind, ..StreamData::default() });
            id
        };
        self.with_state(|s| s.effective = id);
        let created = self.call(|e| &e.on_context_create, &[id as i32, ROOT_CONTEXT as i32]);
        (id, created.err())
    }

    /// This worker's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Delivers callouts whose timeout has passed (0 means none), as Envoy 1.40 reports them:
    /// HTTP with no headers, gRPC with status `UNAVAILABLE` and [`GRPC_TIMEOUT_MESSAGE`]; then
    /// `on_tick` if the filter set a tick period.
    pub fn tick(&self) -> Result<(), HostError> {
        let (http, grpc) = self.with_state(|s| {
            let now = s.shared.clock.now_nanos();
            let due = |sent: u64, t: Duration| !t.is_zero() && now >= sent.saturating_add(nanos(t));
            let http: Vec<u32> = s.http_calls.values().filter(|c| due(c.sent_at, c.timeout)).map(|c| c.token).collect();
            let grpc: Vec<u32> = s
                .grpc_calls
                .values()
                .filter(|c| c.timeout.is_some_and(|t| due(c.sent_at, t)))
                .map(|c| c.token)
                .collect();
            (http, grpc)
        });
        for token in http {
            self.fail_http_call(token)?;
        }
        for token in grpc {
            self.close_grpc(token, grpc_status::UNAVAILABLE, GRPC_TIMEOUT_MESSAGE)?;
        }
        if self.with_state(|s| s.tick_ms) > 0 {
            self.call_root(|e| &e.on_tick, &[ROOT_CONTEXT as i32])?;
        }
        Ok(())
    }

    /// The tick period the filter asked for (0 = none).
    pub fn tick_period(&self) -> Duration {
        Duration::from_millis(u64::from(self.with_state(|s| s.tick_ms)))
    }

    /// HTTP callouts waiting for an answer, oldest first.
    pub fn pending_http_calls(&self) -> Vec<PendingCall> {
        self.with_state(|s| s.http_calls.values().cloned().collect())
    }

    /// Answers HTTP callout `token` with a status, headers and body.
    pub fn respond_http_call(
        &self,
        token: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        let mut all = vec![(b":status".to_vec(), status.to_string().into_bytes())];
        all.extend(owned(headers));
        self.deliver_http(token, all, body.to_vec(), Vec::new())
    }

    /// Answers HTTP callout `token` with headers (include `:status`), body and trailers, all as
    /// bytes.
    pub fn respond_http_call_bytes(
        &self,
        token: u32,
        headers: &[(&[u8], &[u8])],
        body: &[u8],
        trailers: &[(&[u8], &[u8])],
    ) -> Result<(), HostError> {
        self.deliver_http(token, owned(headers), body.to_vec(), owned(trailers))
    }

    /// Fails HTTP callout `token` the way Envoy reports a reset or timeout: no headers, no body.
    pub fn fail_http_call(&self, token: u32) -> Result<(), HostError> {
        self.deliver_http(token, Vec::new(), Vec::new(), Vec::new())
    }

    fn deliver_http(&self, token: u32, headers: Headers, body: Vec<u8>, trailers: Headers) -> Result<(), HostError> {
        let args = [ROOT_CONTEXT as i32, token as i32, headers.len() as i32, body.len() as i32, trailers.len() as i32];
        let known = self.with_state(|s| {
            let known = s.http_calls.remove(&token).is_some();
            s.delivery.http_headers = Some(headers);
            s.delivery.http_body = Some(body);
            s.delivery.http_trailers = Some(trailers);
            known
        });
        let r = if known {
            self.call_root(|e| &e.on_http_call_response, &args).map(drop)
        } else {
            Err(HostError::Usage(format!("no pending HTTP callout with token {token}")))
        };
        self.with_state(|s| {
            s.delivery.http_headers = None;
            s.delivery.http_body = None;
            s.delivery.http_trailers = None;
        });
        r
    }

    /// gRPC calls and streams waiting for an answer, oldest first.
    pub fn pending_grpc_calls(&self) -> Vec<PendingGrpcCall> {
        self.with_state(|s| s.grpc_calls.values().cloned().collect())
    }

    fn grpc_pending(&self, token: u32, kind: GrpcKind) -> Result<(), HostError> {
        match self.with_state(|s| s.grpc_calls.get(&token).map(|c| c.kind)) {
            Some(k) if k == kind => Ok(()),
            Some(k) => Err(HostError::Usage(format!("gRPC token {token} is a {k:?} exchange, not {kind:?}"))),
            None => Err(HostError::Usage(format!("no pending gRPC call or stream with token {token}"))),
        }
    }

    /// Answers unary gRPC call `token` with a response message: as in Envoy, the filter gets
    /// only `proxy_on_grpc_receive` (buffer `GrpcReceiveBuffer`), no metadata and no close.
    pub fn respond_grpc_call(&self, token: u32, message: &[u8]) -> Result<(), HostError> {
        self.grpc_pending(token, GrpcKind::Unary)?;
        self.with_state(|s| s.grpc_calls.remove(&token));
        self.grpc_message(token, message)
    }

    /// Fails gRPC call or stream `token` with `status` (see [`grpc_status`]) and a message:
    /// the filter gets only `proxy_on_grpc_close`, and reads the message with
    /// `proxy_get_status`.
    pub fn fail_grpc_call(&self, token: u32, status: u32, message: &str) -> Result<(), HostError> {
        if self.with_state(|s| !s.grpc_calls.contains_key(&token)) {
            return Err(HostError::Usage(format!("no pending gRPC call or stream with token {token}")));
        }
        self.close_grpc(token, status, message.as_bytes())
    }

    /// Delivers initial metadata on gRPC stream `token`.
    pub fn grpc_stream_initial_metadata(&self, token: u32, metadata: &[(&str, &str)]) -> Result<(), HostError> {
        self.grpc_stream_initial_metadata_bytes(token, &owned_refs(metadata))
    }

    /// Same as [`Worker::grpc_stream_initial_metadata`], with bytes (`-bin` values).
    pub fn grpc_stream_initial_metadata_bytes(&self, token: u32, metadata: &[(&[u8], &[u8])]) -> Result<(), HostError> {
        self.grpc_pending(token, GrpcKind::Stream)?;
        let args = [ROOT_CONTEXT as i32, token as i32, metadata.len() as i32];
        self.with_state(|s| s.delivery.grpc_initial = Some(owned(metadata)));
        let r = self.call_root(|e| &e.on_grpc_receive_initial_metadata, &args).map(drop);
        self.with_state(|s| s.delivery.grpc_initial = None);
        r
    }

    /// Delivers a message on gRPC stream `token`.
    pub fn grpc_stream_message(&self, token: u32, message: &[u8]) -> Result<(), HostError> {
        self.grpc_pending(token, GrpcKind::Stream)?;
        self.grpc_message(token, message)
    }

    fn grpc_message(&self, token: u32, message: &[u8]) -> Result<(), HostError> {
        let args = [ROOT_CONTEXT as i32, token as i32, message.len() as i32];
        self.with_state(|s| s.delivery.grpc_message = Some(message.to_vec()));
        let r = self.call_root(|e| &e.on_grpc_receive, &args).map(drop);
        self.with_state(|s| s.delivery.grpc_message = None);
        r
    }

    /// Delivers trailing metadata on gRPC stream `token`.
    pub fn grpc_stream_trailing_metadata(&self, token: u32, metadata: &[(&str, &str)]) -> Result<(), HostError> {
        self.grpc_stream_trailing_metadata_bytes(token, &owned_refs(metadata))
    }

    /// Same as [`Worker::grpc_stream_trailing_metadata`], with bytes.
    pub fn grpc_stream_trailing_metadata_bytes(
        &self,
        token: u32,
        metadata: &[(&[u8], &[u8])],
    ) -> Result<(), HostError> {
        self.grpc_pending(token, GrpcKind::Stream)?;
        let args = [ROOT_CONTEXT as i32, token as i32, metadata.len() as i32];
        self.with_state(|s| s.delivery.grpc_trailing = Some(owned(metadata)));
        let r = self.call_root(|e| &e.on_grpc_receive_trailing_metadata, &args).map(drop);
        self.with_state(|s| s.delivery.grpc_trailing = None);
        r
    }

    /// Closes gRPC stream `token` from the remote side with `status` and a message.
    pub fn close_grpc_stream(&self, token: u32, status: u32, message: &str) -> Result<(), HostError> {
        self.grpc_pending(token, GrpcKind::Stream)?;
        self.close_grpc(token, status, message.as_bytes())
    }

    fn close_grpc(&self, token: u32, status: u32, message: &[u8]) -> Result<(), HostError> {
        self.with_state(|s| {
            s.grpc_calls.remove(&token);
            s.grpc_status = (status, message.to_vec());
        });
        let r = self.call_root(|e| &e.on_grpc_close, &[ROOT_CONTEXT as i32, token as i32, status as i32]).map(drop);
        self.with_state(|s| s.grpc_status = (0, Vec::new()));
        r
    }

    /// Calls `proxy_on_queue_ready` for queue `id`.
    pub fn queue_ready(&self, id: u32) -> Result<(), HostError> {
        self.call_root(|e| &e.on_queue_ready, &[ROOT_CONTEXT as i32, id as i32]).map(drop)
    }

    /// Calls `proxy_on_foreign_function` on the root context with `function_id` and `args`
    /// (readable as buffer `CallData`), as Envoy does for host extensions that call back.
    pub fn foreign_function_callback(&self, function_id: u32, args: &[u8]) -> Result<(), HostError> {
        self.with_state(|s| s.delivery.call_data = Some(args.to_vec()));
        let call = [ROOT_CONTEXT as i32, function_id as i32, args.len() as i32];
        let r = self.call_root(|e| &e.on_foreign_function, &call).map(drop);
        self.with_state(|s| s.delivery.call_data = None);
        r
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

    /// Host calls since the VM started (or since [`Worker::reset_host_calls`]), guest
    /// allocations made to return data, and the guest's memory size now.
    pub fn host_calls(&self) -> HostCalls {
        let inner = self.inner.borrow();
        let memory = inner.store.data().memory.map_or(0, |m| m.data_size(&inner.store) as u64);
        inner.store.data().calls.snapshot(memory)
    }

    /// Starts counting host calls and allocations from zero.
    pub fn reset_host_calls(&self) {
        self.with_state(|s| s.calls = Default::default());
    }
}

fn owned_refs<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
    pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect()
}
