//! The module's entry points: proxy-wasm callbacks in, pipeline calls out.
//!
//! [`export_filter!`](crate::export_filter) writes the `proxy_on_*` exports of one `.wasm`, and
//! only those its stages need: Envoy skips a callback a module does not export (the stream goes
//! on as if it answered "continue") without entering the VM, and every entry into V8 costs about
//! 2,000 instructions per stream. The SDK's dispatcher exports every callback; a module built
//! here exports `context_create`, `request_headers`, `response_headers` and `delete`, plus
//! `request_body` (with request trailers), `response_body`, `log`, `tick`, HTTP-callout and gRPC
//! callbacks on request.
//!
//! State: one [`Vm`] per VM (per Envoy worker), holding a [`Root`] per plugin configuration
//! (root context) and a [`Slot`] per live stream. Callbacks clone the slot's `Rc` and release the
//! VM table before running stages, so nothing a stage does can re-enter a borrowed table; a
//! callback that arrives for a stream that is already busy (which Envoy does not do) is answered
//! "continue" instead of trapping.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::thread::LocalKey;

use upstream_guard::config::ConfigError;

use crate::abi::BufferType;
use crate::host::{self, Level};
use crate::metrics::Counter;
use crate::stage::{BodyAction, Event, LocalReply, Pipeline, Step};
use crate::stream::{Cx, Facts, Phase, ReadPlan, Replied};

/// `FilterHeadersStatus::Continue`.
const CONTINUE: u32 = 0;
/// `FilterHeadersStatus::StopIteration`: after a local reply.
const STOP: u32 = 1;
/// `FilterHeadersStatus::StopAllIterationAndWatermark`: while waiting for an answer, so that no
/// body or trailer callback lets the request through early.
const STOP_ALL: u32 = 4;
/// `FilterDataStatus::StopIterationAndBuffer`.
const BUFFER: u32 = 1;
/// `FilterDataStatus::StopIterationNoBuffer`: after a local reply sent from a body callback.
const STOP_NO_BUFFER: u32 = 3;

/// Which callback a decision is settled in: the stop codes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Callback {
    /// Request headers (`FilterHeadersStatus`), or an asynchronous answer.
    Headers,
    /// A request body chunk (`FilterDataStatus`).
    Body,
    /// Request trailers (`FilterTrailersStatus`).
    Trailers,
}

/// Context ids are small integers the host hands out: a multiplicative hash spreads them well
/// enough, for a fraction of SipHash's cost on every callback.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Builds a pipeline from the plugin configuration.
pub type Configure<P> = fn(&[u8]) -> Result<P, ConfigError>;

/// One plugin configuration (root context): its pipeline and what every stream of it shares.
pub struct Root<P: Pipeline> {
    /// The module's name, for logs.
    pub name: &'static str,
    /// The stages.
    pub pipeline: P,
    /// How request headers are read.
    pub plan: ReadPlan,
    /// Local replies the host refused (the request went on instead).
    failed_replies: Counter,
}

/// One live stream.
pub struct Slot<P: Pipeline> {
    root: Rc<Root<P>>,
    facts: Facts,
    st: P::Streams,
}

/// Everything one VM holds.
pub struct Vm<P: Pipeline> {
    name: &'static str,
    configure: Configure<P>,
    roots: IdMap<Rc<Root<P>>>,
    streams: IdMap<Rc<RefCell<Slot<P>>>>,
}

impl<P: Pipeline> Vm<P> {
    /// An empty VM for the module `name`.
    pub fn new(name: &'static str, configure: Configure<P>) -> Vm<P> {
        Vm { name, configure, roots: IdMap::default(), streams: IdMap::default() }
    }
}

impl<P: Pipeline> Vm<P> {
    /// True when root context `id` is configured in this VM.
    pub fn has_root(&self, id: u32) -> bool {
        self.roots.contains_key(&id)
    }
}

/// The VM of a module, as `export_filter!` declares it.
pub type VmKey<P> = &'static LocalKey<RefCell<Vm<P>>>;

fn slot<P: Pipeline>(vm: VmKey<P>, id: u32) -> Option<Rc<RefCell<Slot<P>>>> {
    vm.with(|v| v.try_borrow().ok().and_then(|v| v.streams.get(&id).cloned()))
}

fn root<P: Pipeline>(vm: VmKey<P>, id: u32) -> Option<Rc<Root<P>>> {
    vm.with(|v| v.try_borrow().ok().and_then(|v| v.roots.get(&id).cloned()))
}

/// `proxy_on_vm_start`: installs the panic hook (a panic still aborts, but says why first).
pub fn vm_start() -> u32 {
    std::panic::set_hook(Box::new(|info| {
        host::log(Level::Critical, &format!("upstream-guard panicked: {info}"));
    }));
    1
}

/// `proxy_on_configure`: validates the configuration into a pipeline, or logs the field and the
/// fix and refuses it (Envoy then rejects the configuration instead of running without it).
pub fn configure<P: Pipeline>(vm: VmKey<P>, root_id: u32, size: usize) -> u32 {
    host::refresh_log_level();
    let raw = host::buffer(BufferType::PluginConfiguration, 0, size).unwrap_or_default();
    let Some((name, configure)) = vm.with(|v| v.try_borrow().ok().map(|v| (v.name, v.configure))) else {
        return 0;
    };
    let pipeline = match configure(&raw) {
        Ok(p) => p,
        Err(e) => {
            host::log(Level::Error, &format!("{name}: {e}"));
            return 0;
        }
    };
    let mut reads = Vec::new();
    pipeline.request_headers_read(&mut reads);
    reads.sort_unstable();
    reads.dedup();
    if let Some(ms) = crate::metrics::tick_period(pipeline.tick_ms()) {
        let _ = host::set_tick_period(ms);
    }
    // Defined now: the dynamic module can define metrics only while a configuration is created.
    crate::shared::define_metrics();
    let root = Root {
        name,
        plan: ReadPlan::for_headers(&reads),
        pipeline,
        failed_replies: Counter::define("upstream_guard.local_reply_failed"),
    };
    vm.with(|v| {
        if let Ok(mut v) = v.try_borrow_mut() {
            v.roots.insert(root_id, Rc::new(root));
        }
    });
    1
}

/// `proxy_on_context_create`: a stream of a configured root gets a slot; anything else (the root
/// itself, a root whose configuration failed) gets none and passes through.
pub fn context_create<P: Pipeline>(vm: VmKey<P>, id: u32, parent: u32) {
    if parent == 0 {
        return;
    }
    vm.with(|v| {
        if let Ok(mut v) = v.try_borrow_mut() {
            if let Some(root) = v.roots.get(&parent).cloned() {
                let slot = Slot { root, facts: Facts::default(), st: P::Streams::default() };
                v.streams.insert(id, Rc::new(RefCell::new(slot)));
            }
        }
    });
}

/// `proxy_on_delete`: forgets a stream, or a root whose configuration was replaced.
pub fn delete<P: Pipeline>(vm: VmKey<P>, id: u32) {
    vm.with(|v| {
        if let Ok(mut v) = v.try_borrow_mut() {
            if v.streams.remove(&id).is_none() {
                v.roots.remove(&id);
            }
        }
    });
}

/// Runs `f` on stream `id` in `phase`; `None` when the stream has no slot or is busy.
fn with_stream<P: Pipeline, R>(
    vm: VmKey<P>,
    id: u32,
    phase: Phase,
    f: impl FnOnce(&Root<P>, &mut P::Streams, &mut Cx<'_>) -> R,
) -> Option<R> {
    let slot = slot(vm, id)?;
    let mut slot = slot.try_borrow_mut().ok()?;
    let Slot { root, facts, st } = &mut *slot;
    let root = root.clone();
    let mut cx = Cx::new(id, phase, facts, &root.plan);
    Some(f(&root, st, &mut cx))
}

impl<P: Pipeline> Root<P> {
    /// Acts on where the request stands: go on, wait, read the body, or send the refusal
    /// (decorated by the stages before the one that refused). A reply the host refuses lets the
    /// request go on, is counted and logged: one way, for every stage.
    fn settle(&self, st: &mut P::Streams, cx: &mut Cx<'_>, step: Step, callback: Callback) -> u32 {
        match step {
            Step::Continue => {
                cx.facts().body_stage = None;
                CONTINUE
            }
            Step::Wait(_) => match callback {
                Callback::Headers => STOP_ALL,
                Callback::Body => BUFFER,
                Callback::Trailers => STOP,
            },
            Step::Body(stage) => {
                if cx.facts().body_stage.is_none() {
                    // The headers go on now (a native buffer filter holds them from the router):
                    // keep a copy for the stages that decide after the body.
                    cx.keep_request_headers();
                    cx.facts().body_stage = Some(stage);
                }
                match callback {
                    Callback::Headers => CONTINUE,
                    Callback::Body => BUFFER,
                    Callback::Trailers => STOP,
                }
            }
            Step::Reply(stage, mut reply) => {
                cx.facts().body_stage = None;
                cx.facts().replied = Some(Replied { status: reply.status, details: reply.details });
                self.pipeline.decorate_before(st, cx, stage, &mut reply);
                // To a gRPC request Envoy sends the body as grpc-message: a text reply's final
                // newline (there for curl) would end the client's message.
                let grpc = reply.grpc_status.is_some()
                    && cx.request_header("content-type").is_some_and(|t| t.starts_with(b"application/grpc"));
                if grpc {
                    let keep = reply.body.iter().rposition(|b| *b != b'\n').map_or(0, |i| i + 1);
                    reply.body.truncate(keep);
                }
                if self.send(&reply) {
                    if callback == Callback::Body {
                        STOP_NO_BUFFER
                    } else {
                        STOP
                    }
                } else {
                    cx.facts().replied = None;
                    CONTINUE
                }
            }
        }
    }

    fn send(&self, reply: &LocalReply) -> bool {
        let headers: Vec<(&str, &[u8])> = reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        match host::send_local_response(reply.status, reply.details, &reply.body, &headers, reply.grpc_status) {
            Ok(()) => true,
            Err(status) => {
                self.failed_replies.inc();
                host::log(
                    Level::Error,
                    &format!("{}: the host refused a local reply ({status:?}); the request goes on", self.name),
                );
                false
            }
        }
    }
}

/// `proxy_on_request_headers`.
pub fn request_headers<P: Pipeline>(vm: VmKey<P>, id: u32, end_of_stream: bool) -> u32 {
    with_stream(vm, id, Phase::Request, |root, st, cx| {
        cx.end_of_stream = end_of_stream;
        let step = root.pipeline.request_from(st, cx, 0);
        root.settle(st, cx, step, Callback::Headers)
    })
    .unwrap_or(CONTINUE)
}

/// `proxy_on_request_body`: the chunk goes to the stage that decides from the body (held until
/// the end); every other request passes at once.
pub fn request_body<P: Pipeline>(vm: VmKey<P>, id: u32, size: usize, end: bool) -> u32 {
    with_stream(vm, id, Phase::Request, |root, st, cx| {
        let Some(stage) = cx.facts().body_stage else { return CONTINUE };
        cx.end_of_stream = end;
        let step = root.pipeline.request_body_at(st, cx, stage, size, end);
        root.settle(st, cx, step, Callback::Body)
    })
    .unwrap_or(CONTINUE)
}

/// `proxy_on_request_trailers`: trailers end the body the stage is reading.
pub fn request_trailers<P: Pipeline>(vm: VmKey<P>, id: u32) -> u32 {
    with_stream(vm, id, Phase::Request, |root, st, cx| {
        let Some(stage) = cx.facts().body_stage else { return CONTINUE };
        cx.end_of_stream = true;
        let size = host::buffer_len(BufferType::HttpRequestBody).unwrap_or(0);
        let step = root.pipeline.request_body_at(st, cx, stage, size, true);
        root.settle(st, cx, step, Callback::Trailers)
    })
    .unwrap_or(CONTINUE)
}

/// `proxy_on_response_headers`.
pub fn response_headers<P: Pipeline>(vm: VmKey<P>, id: u32, end_of_stream: bool) -> u32 {
    with_stream(vm, id, Phase::Response, |root, st, cx| {
        cx.end_of_stream = end_of_stream;
        cx.facts().response_complete = end_of_stream;
        root.pipeline.response(st, cx)
    });
    CONTINUE
}

/// `proxy_on_response_body`.
pub fn response_body<P: Pipeline>(vm: VmKey<P>, id: u32, size: usize, end: bool) -> u32 {
    let action = with_stream(vm, id, Phase::Response, |root, st, cx| {
        let action = root.pipeline.response_body(st, cx, size, end);
        if end && action == BodyAction::Continue {
            cx.facts().response_complete = true;
        }
        // Held data comes back with the next chunk: stages that read chunks skip what they saw.
        cx.facts().response_seen = if action == BodyAction::Hold { size } else { 0 };
        action
    });
    match action {
        Some(BodyAction::Hold) => BUFFER,
        _ => CONTINUE,
    }
}

/// `proxy_on_response_trailers`: trailers end the response.
pub fn response_trailers<P: Pipeline>(vm: VmKey<P>, id: u32) -> u32 {
    with_stream(vm, id, Phase::Response, |_, _, cx| cx.facts().response_complete = true);
    CONTINUE
}

/// `proxy_on_log`.
pub fn log<P: Pipeline>(vm: VmKey<P>, id: u32) {
    with_stream(vm, id, Phase::Log, |root, st, cx| root.pipeline.log(st, cx));
}

/// `proxy_on_tick`.
pub fn tick<P: Pipeline>(vm: VmKey<P>, root_id: u32) {
    host::refresh_log_level();
    if let Some(root) = root(vm, root_id) {
        root.pipeline.tick(host::now());
    }
    crate::metrics::flush();
    crate::metrics::report_memory();
}

/// `proxy_on_http_call_response`.
pub fn http_call_response<P: Pipeline>(vm: VmKey<P>, root_id: u32, token: u32, headers: usize, body: usize) {
    if let Some(root) = root(vm, root_id) {
        root.pipeline.http_call_response(token, headers, body);
    }
}

/// `proxy_on_grpc_receive`: a unary call's answer.
pub fn grpc_receive<P: Pipeline>(vm: VmKey<P>, root_id: u32, token: u32, size: usize) {
    let message = host::buffer(BufferType::GrpcReceiveBuffer, 0, size).unwrap_or_default();
    deliver(vm, root_id, &Event::Grpc { token, status: 0, message: &message });
}

/// `proxy_on_grpc_close`: a call that failed (or a stream that ended).
pub fn grpc_close<P: Pipeline>(vm: VmKey<P>, root_id: u32, token: u32, status: u32) {
    let (_, message) = host::grpc_status();
    // A close with status 0 after a message was already delivered finds no waiting stream.
    let status = if status == 0 { 2 } else { status };
    deliver(vm, root_id, &Event::Grpc { token, status, message: &message });
}

/// Hands an answer to the stage (and stream) that waits for it, then moves the request on.
pub fn deliver<P: Pipeline>(vm: VmKey<P>, root_id: u32, event: &Event<'_>) {
    let Event::Grpc { token, .. } = *event;
    let Some(root) = root(vm, root_id) else { return };
    let Some((stage, stream)) = root.pipeline.grpc_owner(token) else { return };
    if host::set_effective_context(stream).is_err() {
        return;
    }
    let action = with_stream(vm, stream, Phase::Request, |root, st, cx| {
        let step = root.pipeline.resume_at(st, cx, stage, event);
        root.settle(st, cx, step, Callback::Headers)
    });
    if action == Some(CONTINUE) {
        let _ = host::continue_request();
    }
}

/// Writes the `proxy_on_*` exports of a module: `export_filter!(name, PipelineType, configure_fn,
/// [optional callbacks])`, where the optional callbacks are any of `request_body` (request body
/// and trailers: needed by stages that decide from the body), `response_body`,
/// `response_trailers`, `log`, `tick`, `http_calls`, `grpc`.
#[macro_export]
macro_rules! export_filter {
    ($name:expr, $pipeline:ty, $configure:expr, [$($opt:ident),*]) => {
        thread_local! {
            static UG_VM: ::std::cell::RefCell<$crate::dispatch::Vm<$pipeline>> =
                ::std::cell::RefCell::new($crate::dispatch::Vm::new($name, $configure));
        }
        #[no_mangle]
        pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
            $crate::dispatch::vm_start()
        }
        #[no_mangle]
        pub extern "C" fn proxy_on_configure(root: u32, size: usize) -> u32 {
            $crate::dispatch::configure(&UG_VM, root, size)
        }
        #[no_mangle]
        pub extern "C" fn proxy_on_context_create(id: u32, parent: u32) {
            $crate::dispatch::context_create(&UG_VM, id, parent)
        }
        #[no_mangle]
        pub extern "C" fn proxy_on_request_headers(id: u32, _headers: usize, end: u32) -> u32 {
            $crate::dispatch::request_headers(&UG_VM, id, end != 0)
        }
        #[no_mangle]
        pub extern "C" fn proxy_on_response_headers(id: u32, _headers: usize, end: u32) -> u32 {
            $crate::dispatch::response_headers(&UG_VM, id, end != 0)
        }
        #[no_mangle]
        pub extern "C" fn proxy_on_delete(id: u32) {
            $crate::dispatch::delete(&UG_VM, id)
        }
        $($crate::export_filter!(@optional $opt);)*
    };
    (@optional request_body) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_request_body(id: u32, size: usize, end: u32) -> u32 {
            $crate::dispatch::request_body(&UG_VM, id, size, end != 0)
        }
        #[no_mangle]
        pub extern "C" fn proxy_on_request_trailers(id: u32, _trailers: usize) -> u32 {
            $crate::dispatch::request_trailers(&UG_VM, id)
        }
    };
    (@optional response_body) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_response_body(id: u32, size: usize, end: u32) -> u32 {
            $crate::dispatch::response_body(&UG_VM, id, size, end != 0)
        }
    };
    (@optional response_trailers) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_response_trailers(id: u32, _trailers: usize) -> u32 {
            $crate::dispatch::response_trailers(&UG_VM, id)
        }
    };
    (@optional log) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_log(id: u32) {
            $crate::dispatch::log(&UG_VM, id)
        }
    };
    (@optional tick) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_tick(root: u32) {
            $crate::dispatch::tick(&UG_VM, root)
        }
    };
    (@optional http_calls) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_http_call_response(root: u32, token: u32, headers: usize, body: usize, _trailers: usize) {
            $crate::dispatch::http_call_response(&UG_VM, root, token, headers, body)
        }
    };
    (@optional grpc) => {
        #[no_mangle]
        pub extern "C" fn proxy_on_grpc_receive(root: u32, token: u32, size: usize) {
            $crate::dispatch::grpc_receive(&UG_VM, root, token, size)
        }
        #[no_mangle]
        pub extern "C" fn proxy_on_grpc_close(root: u32, token: u32, status: u32) {
            $crate::dispatch::grpc_close(&UG_VM, root, token, status)
        }
    };
}
