//! The hooks Envoy calls (`envoy_dynamic_module_on_*`), each a thin step into the glue's
//! dispatcher: the same per-worker pipeline a `.wasm` runs, over [`crate::envoy::Envoy`].
//!
//! Threads and state, as in a `.wasm`:
//! - each Envoy thread holds its own dispatcher state (thread-local): a worker configures its
//!   copy of a filter configuration on its first stream, as each worker VM does;
//! - `on_http_filter_config_new` runs on the main thread: it validates the configuration (a
//!   refusal there makes Envoy reject it, with the field and the fix in the log) and keeps the
//!   main thread's copy for the timer. Ticks (health checks) run there, once per configuration:
//!   a thread of the module sleeps the tick period and posts an event to the main thread
//!   through the configuration's scheduler;
//! - cross-worker state is the process-wide store behind the same compare-and-swap contract.
//!
//! No panic crosses into Envoy: every hook runs under [`guard`], which catches it, logs it,
//! counts it (`upstream_guard.module_panics`) and answers "continue" (the stream goes on as if
//! the module were not there, which is what `FAIL_OPEN` means for a `.wasm`).

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use upstream_guard_glue::dispatch::{self, Vm};
use upstream_guard_glue::host::Level;
use upstream_guard_glue::{host, Counter, Event};
use upstream_guard_stages::Suite;

use crate::abi::{self, Buffer, ConfigPtr, FilterPtr, Header, SchedulerPtr};
use crate::envoy::{self, Answer, Current, Envoy};

thread_local! {
    static UG_VM: RefCell<Vm<Suite>> = RefCell::new(Vm::new("upstream_guard", upstream_guard_stages::suite));
    static NEXT_STREAM: Cell<u32> = const { Cell::new(0) };
}

/// Configuration ids share one space with stream ids in the dispatcher: configurations take the
/// upper half.
static NEXT_ROOT: AtomicU32 = AtomicU32::new(0x8000_0000);

fn next_stream() -> u32 {
    NEXT_STREAM.with(|n| {
        let id = n.get() % 0x7fff_ffff + 1;
        n.set(id);
        id
    })
}

/// The ABI version this module was written for (Envoy 1.40's).
static ABI_VERSION: &[u8] = b"v0.2.0\0";

/// A filter configuration.
pub struct Config {
    root: u32,
    raw: Vec<u8>,
    envoy: ConfigPtr,
    panics: Counter,
    ticker: Mutex<Option<Ticker>>,
}

struct Ticker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    scheduler: SchedulerPtr,
}

/// One stream.
pub struct Filter {
    config: *const Config,
    envoy: FilterPtr,
    id: u32,
}

/// Runs `f`, turning a panic into `fallback` (logged and counted).
fn guard<R>(panics: Option<Counter>, fallback: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            // The panic hook already logged the message and place.
            if let Some(c) = panics {
                c.inc();
            }
            fallback
        }
    }
}

fn stream_context(config: &Config, filter: FilterPtr, id: u32) -> Current {
    Current { filter: Some(filter), config: Some(config.envoy), stream: id, ..Current::default() }
}

/// Configures this thread's copy of `config` if it has none yet.
fn ensure_root(config: &Config, filter: FilterPtr) {
    if UG_VM.with(|v| v.borrow().has_root(config.root)) {
        return;
    }
    envoy::within(stream_context(config, filter, 0), || {
        envoy::set_config_bytes(&config.raw);
        dispatch::configure(&UG_VM, config.root, config.raw.len());
    });
}

/// # Safety
/// `buffer` must describe bytes Envoy keeps alive for the running hook.
unsafe fn bytes(buffer: Buffer) -> Vec<u8> {
    if buffer.ptr.is_null() || buffer.length == 0 {
        return Vec::new();
    }
    // SAFETY: forwarded from the caller.
    unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.length) }.to_vec()
}

/// # Safety
/// `ptr` must be null or point to `n` headers Envoy keeps alive for the running hook.
unsafe fn headers(ptr: *const Header, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    if ptr.is_null() || n == 0 {
        return Vec::new();
    }
    // SAFETY: forwarded from the caller; each header's buffers likewise.
    unsafe { std::slice::from_raw_parts(ptr, n).iter().map(|h| h.to_pair()).collect() }
}

/// # Safety
/// `ptr` must be null or point to `n` buffers Envoy keeps alive for the running hook.
unsafe fn chunks(ptr: *const Buffer, n: usize) -> Vec<u8> {
    if ptr.is_null() || n == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    // SAFETY: forwarded from the caller.
    for c in unsafe { std::slice::from_raw_parts(ptr, n) } {
        // SAFETY: each chunk describes bytes alive for the hook.
        out.extend_from_slice(&unsafe { bytes(*c) });
    }
    out
}

/// # Safety
/// `filter` must be a pointer this module returned from `on_http_filter_new` and not destroyed.
unsafe fn filter_ref<'a>(filter: *const Filter) -> Option<(&'a Filter, &'a Config)> {
    // SAFETY: forwarded from the caller; a filter's configuration outlives it (Envoy destroys a
    // configuration only after its streams).
    unsafe {
        let f = filter.as_ref()?;
        let c = f.config.as_ref()?;
        Some((f, c))
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    guard(None, std::ptr::null(), || {
        upstream_guard_glue::native::install(Envoy::get());
        std::panic::set_hook(Box::new(|info| {
            host::log(Level::Critical, &format!("upstream-guard panicked (the stream goes on without it): {info}"));
        }));
        ABI_VERSION.as_ptr()
    })
}

/// # Safety
/// Envoy passes its configuration pointer and two buffers alive for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy_ptr: ConfigPtr,
    _name: Buffer,
    config: Buffer,
) -> *const Config {
    guard(None, std::ptr::null(), || {
        // SAFETY: Envoy keeps the configuration bytes alive for this hook.
        let raw = unsafe { bytes(config) };
        let root = NEXT_ROOT.fetch_add(1, Ordering::Relaxed);
        let cur = Current { config: Some(envoy_ptr), configuring: true, ..Current::default() };
        let (ok, tick, panics) = envoy::within(cur, || {
            envoy::set_config_bytes(&raw);
            let ok = dispatch::configure(&UG_VM, root, raw.len()) == 1;
            // Metrics the glue defines on first use: Envoy takes definitions only now.
            let _ = Counter::define(upstream_guard_glue::shared::KEYS_CREATED);
            let _ = upstream_guard_glue::Gauge::define(upstream_guard_glue::metrics::VM_MEMORY);
            (ok, envoy::take_tick_ms(), Counter::define("upstream_guard.module_panics"))
        });
        if !ok {
            return std::ptr::null();
        }
        let config = Box::new(Config { root, raw, envoy: envoy_ptr, panics, ticker: Mutex::new(None) });
        if let Some(ms) = tick {
            let scheduler = abi::scheduler_new(envoy_ptr);
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let period = Duration::from_millis(u64::from(ms.max(1)));
            let spawned = std::thread::Builder::new().name("ug-tick".into()).spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    std::thread::park_timeout(period);
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    abi::scheduler_commit(scheduler, 0);
                }
            });
            match spawned {
                Ok(thread) => {
                    if let Ok(mut t) = config.ticker.lock() {
                        *t = Some(Ticker { stop, thread, scheduler });
                    }
                }
                Err(e) => {
                    abi::scheduler_delete(scheduler);
                    host::log(
                        Level::Error,
                        &format!("upstream_guard: no timer thread ({e}): health checks will not run"),
                    );
                }
            }
        }
        Box::into_raw(config) as *const Config
    })
}

/// # Safety
/// `config` is a pointer `config_new` returned, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const Config) {
    guard(None, (), || {
        if config.is_null() {
            return;
        }
        // SAFETY: `config` came from `Box::into_raw` in `config_new`, and Envoy destroys it once.
        let config = unsafe { Box::from_raw(config as *mut Config) };
        let ticker = config.ticker.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = ticker {
            t.stop.store(true, Ordering::Release);
            t.thread.thread().unpark();
            let _ = t.thread.join();
            abi::scheduler_delete(t.scheduler);
        }
        dispatch::delete(&UG_VM, config.root);
    })
}

/// # Safety
/// `config` is a live pointer `config_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    envoy_ptr: ConfigPtr,
    config: *const Config,
    _event: u64,
) {
    // SAFETY: Envoy passes a configuration it has not destroyed.
    let Some(config) = (unsafe { config.as_ref() }) else { return };
    guard(Some(config.panics), (), || {
        let cur = Current { config: Some(envoy_ptr), ..Current::default() };
        envoy::within(cur, || dispatch::tick(&UG_VM, config.root));
    })
}

/// # Safety
/// `config` is a live pointer `config_new` returned; headers and chunks are alive for the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    envoy_ptr: ConfigPtr,
    config: *const Config,
    callout: u64,
    _result: u32,
    hdrs: *const Header,
    hdrs_size: usize,
    body: *const Buffer,
    body_size: usize,
) {
    // SAFETY: Envoy passes a configuration it has not destroyed.
    let Some(config) = (unsafe { config.as_ref() }) else { return };
    guard(Some(config.panics), (), || {
        let Some((token, _)) = envoy::take_callout(envoy_ptr.addr(), callout) else { return };
        // SAFETY: Envoy keeps both arrays alive for this hook.
        let answer = unsafe { Answer { headers: headers(hdrs, hdrs_size), body: chunks(body, body_size) } };
        let (n, len) = (answer.headers.len(), answer.body.len());
        let cur = Current { config: Some(envoy_ptr), ..Current::default() };
        envoy::within(cur, || {
            envoy::with_answer(answer, || dispatch::http_call_response(&UG_VM, config.root, token, n, len))
        });
    })
}

/// # Safety
/// Never dereferences its arguments.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: Buffer,
    _config: Buffer,
) -> *const u8 {
    // Per-route configuration is not offered: routes select with headers and filter state.
    std::ptr::null()
}

/// # Safety
/// Never dereferences its argument.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_config: *const u8) {}

/// # Safety
/// `config` is a live pointer `config_new` returned; `filter` is the new stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const Config,
    filter: FilterPtr,
) -> *const Filter {
    // SAFETY: Envoy passes a configuration it has not destroyed.
    let Some(cfg) = (unsafe { config.as_ref() }) else { return std::ptr::null() };
    guard(Some(cfg.panics), std::ptr::null(), || {
        ensure_root(cfg, filter);
        let id = next_stream();
        dispatch::context_create(&UG_VM, id, cfg.root);
        Box::into_raw(Box::new(Filter { config, envoy: filter, id })) as *const Filter
    })
}

/// Runs a stream hook: the filter's context, the guard, the dispatcher.
///
/// # Safety
/// `filter` is a live pointer `on_http_filter_new` returned.
unsafe fn on_stream<R>(
    envoy_ptr: FilterPtr,
    filter: *const Filter,
    fallback: R,
    f: impl FnOnce(&Filter, &Config) -> R,
) -> R {
    // SAFETY: forwarded from the caller.
    let Some((fl, cfg)) = (unsafe { filter_ref(filter) }) else { return fallback };
    let cur = stream_context(cfg, envoy_ptr, fl.id);
    envoy::within(cur, || guard(Some(cfg.panics), fallback, || f(fl, cfg)))
}

/// # Safety
/// `filter` is a live pointer `on_http_filter_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy_ptr: FilterPtr,
    filter: *const Filter,
    end: bool,
) -> u32 {
    // The dispatcher answers in proxy-wasm's numbering, which is Envoy's FilterHeadersStatus,
    // as the dynamic-module enum is.
    // SAFETY: forwarded.
    unsafe { on_stream(envoy_ptr, filter, 0, |f, _| dispatch::request_headers(&UG_VM, f.id, end)) }
}

/// # Safety
/// `filter` is a live pointer `on_http_filter_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy_ptr: FilterPtr,
    filter: *const Filter,
    end: bool,
) -> u32 {
    // SAFETY: forwarded.
    unsafe {
        on_stream(envoy_ptr, filter, 0, |f, _| {
            let size = envoy::body_len(envoy_ptr, true);
            dispatch::request_body(&UG_VM, f.id, size, end)
        })
    }
}

/// # Safety
/// `filter` is a live pointer `on_http_filter_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy_ptr: FilterPtr,
    filter: *const Filter,
) -> u32 {
    // SAFETY: forwarded.
    unsafe { on_stream(envoy_ptr, filter, 0, |f, _| dispatch::request_trailers(&UG_VM, f.id)) }
}

/// # Safety
/// `filter` is a live pointer `on_http_filter_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy_ptr: FilterPtr,
    filter: *const Filter,
    end: bool,
) -> u32 {
    // SAFETY: forwarded.
    unsafe { on_stream(envoy_ptr, filter, 0, |f, _| dispatch::response_headers(&UG_VM, f.id, end)) }
}

/// # Safety
/// `filter` is a live pointer `on_http_filter_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy_ptr: FilterPtr,
    filter: *const Filter,
    end: bool,
) -> u32 {
    // SAFETY: forwarded.
    unsafe {
        on_stream(envoy_ptr, filter, 0, |f, _| {
            let size = envoy::body_len(envoy_ptr, false);
            dispatch::response_body(&UG_VM, f.id, size, end)
        })
    }
}

/// # Safety
/// `filter` is a live pointer `on_http_filter_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    envoy_ptr: FilterPtr,
    filter: *const Filter,
) -> u32 {
    // SAFETY: forwarded.
    unsafe { on_stream(envoy_ptr, filter, 0, |f, _| dispatch::response_trailers(&UG_VM, f.id)) }
}

/// # Safety
/// `filter` is a live pointer `on_http_filter_new` returned.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    envoy_ptr: FilterPtr,
    filter: *const Filter,
) {
    // Access-log time: the stages' `log` runs here (in 1.40 `destroy` comes after the stream).
    // SAFETY: forwarded.
    unsafe { on_stream(envoy_ptr, filter, (), |f, _| dispatch::log(&UG_VM, f.id)) }
}

/// # Safety
/// `filter` is a pointer `on_http_filter_new` returned, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const Filter) {
    if filter.is_null() {
        return;
    }
    // SAFETY: `filter` came from `Box::into_raw` in `on_http_filter_new`; Envoy destroys it once.
    let filter = unsafe { Box::from_raw(filter as *mut Filter) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        dispatch::delete(&UG_VM, filter.id);
        envoy::forget_callouts(filter.envoy.0 as usize);
    }));
}

/// # Safety
/// `filter` is a live pointer `on_http_filter_new` returned; headers and chunks are alive.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy_ptr: FilterPtr,
    filter: *const Filter,
    callout: u64,
    result: u32,
    hdrs: *const Header,
    hdrs_size: usize,
    body: *const Buffer,
    body_size: usize,
) {
    // SAFETY: forwarded; both arrays are alive for this hook.
    unsafe {
        on_stream(envoy_ptr, filter, (), |f, cfg| {
            let Some((token, grpc)) = envoy::take_callout(envoy_ptr.0 as usize, callout) else { return };
            let answer = Answer { headers: headers(hdrs, hdrs_size), body: chunks(body, body_size) };
            if !grpc {
                let (n, len) = (answer.headers.len(), answer.body.len());
                envoy::with_answer(answer, || dispatch::http_call_response(&UG_VM, cfg.root, token, n, len));
                return;
            }
            let (status, message) = grpc_answer(result, &answer);
            envoy::set_grpc_status(status, message.clone());
            let _ = f;
            dispatch::deliver(&UG_VM, cfg.root, &Event::Grpc { token, status, message: &message });
        })
    }
}

/// A unary gRPC answer from an HTTP/2 callout: the status from `grpc-status` (a trailers-only
/// answer carries it in the headers; an OK answer's trailers are not passed to callouts, so a
/// 200 with a framed message is OK), the message, or the status text.
fn grpc_answer(result: u32, answer: &Answer) -> (u32, Vec<u8>) {
    let header =
        |name: &[u8]| answer.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    if result != 0 {
        return (14, b"the call was reset".to_vec());
    }
    let http = header(b":status").and_then(|s| std::str::from_utf8(&s).ok().and_then(|s| s.parse::<u16>().ok()));
    let status =
        header(b"grpc-status").and_then(|s| std::str::from_utf8(&s).ok().and_then(|s| s.trim().parse::<u32>().ok()));
    match (http, status) {
        (Some(200), None | Some(0)) if answer.body.len() >= 5 => {
            let len = u32::from_be_bytes([answer.body[1], answer.body[2], answer.body[3], answer.body[4]]) as usize;
            let end = 5usize.saturating_add(len).min(answer.body.len());
            (0, answer.body[5..end].to_vec())
        }
        (_, Some(s)) if s != 0 => (s, header(b"grpc-message").unwrap_or_default()),
        (Some(200), _) => (13, b"no message in the answer".to_vec()),
        _ => (14, b"the service answered without gRPC".to_vec()),
    }
}

macro_rules! no_op_stream_hooks {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            /// Not used by the stages; Envoy requires it.
            #[no_mangle]
            pub extern "C" fn $name($($arg: $ty),*) {
                let _ = ($($arg),*);
            }
        )*
    };
}

no_op_stream_hooks! {
    envoy_dynamic_module_on_http_filter_scheduled(f: FilterPtr, m: *const Filter, e: u64);
    envoy_dynamic_module_on_http_filter_http_stream_headers(f: FilterPtr, m: *const Filter, s: u64, h: *const Header, n: usize, end: bool);
    envoy_dynamic_module_on_http_filter_http_stream_data(f: FilterPtr, m: *const Filter, s: u64, d: *const Buffer, n: usize, end: bool);
    envoy_dynamic_module_on_http_filter_http_stream_trailers(f: FilterPtr, m: *const Filter, s: u64, h: *const Header, n: usize);
    envoy_dynamic_module_on_http_filter_http_stream_complete(f: FilterPtr, m: *const Filter, s: u64);
    envoy_dynamic_module_on_http_filter_http_stream_reset(f: FilterPtr, m: *const Filter, s: u64, r: u32);
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(f: FilterPtr, m: *const Filter);
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(f: FilterPtr, m: *const Filter);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(headers: &[(&str, &str)], body: &[u8]) -> Answer {
        Answer {
            headers: headers.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn a_framed_200_is_ok_and_a_trailers_only_answer_keeps_its_status() {
        let ok = answer(&[(":status", "200")], &[0, 0, 0, 0, 2, 8, 1]);
        assert_eq!(grpc_answer(0, &ok), (0, vec![8, 1]));
        let refused = answer(&[(":status", "200"), ("grpc-status", "8"), ("grpc-message", "full")], b"");
        assert_eq!(grpc_answer(0, &refused), (8, b"full".to_vec()));
        assert_eq!(grpc_answer(1, &ok).0, 14);
        assert_eq!(grpc_answer(0, &answer(&[(":status", "503")], b"")).0, 14);
    }
}
