//! The stages on the native fake host: the same dispatcher the `.wasm` and the dynamic module
//! run, over a [`Host`] that keeps everything in memory, with time passed in. No Envoy, no VM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use upstream_guard_glue::dispatch::{self, Vm};
use upstream_guard_glue::host::{Level, MetricKind};
use upstream_guard_glue::native::{self, Host};
use upstream_guard_glue::{pairs, BufferType, MapType, Status};
use upstream_guard_stages::Suite;

/// A reply the fake recorded.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    details: String,
    headers: Vec<(String, Vec<u8>)>,
}

/// The cross-worker store: a value and its version per key.
type Shared = HashMap<Vec<u8>, (Vec<u8>, u32)>;

/// Everything a host holds, in memory.
#[derive(Default)]
struct Fake {
    now: Cell<u64>,
    config: RefCell<Vec<u8>>,
    request: RefCell<Vec<(String, Vec<u8>)>>,
    response: RefCell<Vec<(String, Vec<u8>)>>,
    properties: RefCell<HashMap<Vec<u8>, Vec<u8>>>,
    filter_state: RefCell<HashMap<Vec<u8>, Vec<u8>>>,
    shared: RefCell<Shared>,
    replies: RefCell<Vec<Reply>>,
    metrics: RefCell<Vec<(String, i64)>>,
    request_body: RefCell<Vec<u8>>,
    response_body: RefCell<Vec<u8>>,
    /// Calls sent (HTTP and gRPC): the token of the last one.
    calls: Cell<u32>,
}

impl Fake {
    fn map(&self, map: MapType) -> &RefCell<Vec<(String, Vec<u8>)>> {
        if map == MapType::ResponseHeaders {
            &self.response
        } else {
            &self.request
        }
    }

    fn metric(&self, name: &str) -> Option<i64> {
        self.metrics.borrow().iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

impl Host for Fake {
    fn log(&self, _level: Level, _message: &str) {}
    fn now(&self) -> u64 {
        self.now.get()
    }
    fn set_tick_period(&self, _ms: u32) -> Result<(), Status> {
        Ok(())
    }
    fn header(&self, map: MapType, name: &str) -> Option<Vec<u8>> {
        self.map(map).borrow().iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
    fn header_map(&self, map: MapType) -> Option<Vec<u8>> {
        let m = self.map(map).borrow();
        Some(pairs::encode(m.iter().map(|(k, v)| (k.as_bytes(), v.as_slice()))))
    }
    fn set_header(&self, map: MapType, name: &str, value: &[u8]) -> Result<(), Status> {
        let mut m = self.map(map).borrow_mut();
        m.retain(|(k, _)| k != name);
        m.push((name.to_string(), value.to_vec()));
        Ok(())
    }
    fn remove_header(&self, map: MapType, name: &str) -> Result<(), Status> {
        self.map(map).borrow_mut().retain(|(k, _)| k != name);
        Ok(())
    }
    fn property(&self, path: &[u8]) -> Option<Vec<u8>> {
        self.properties.borrow().get(path).cloned()
    }
    fn set_property(&self, path: &[u8], value: &[u8]) -> Result<(), Status> {
        self.filter_state.borrow_mut().insert(path.to_vec(), value.to_vec());
        Ok(())
    }
    fn shared_get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, Status> {
        Ok(self.shared.borrow().get(key).cloned())
    }
    fn shared_set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        let mut s = self.shared.borrow_mut();
        match s.get_mut(key) {
            Some((_, v)) if cas != 0 && cas != *v => Err(Status::CasMismatch),
            Some((old, v)) => {
                *old = value.to_vec();
                *v += 1;
                Ok(())
            }
            None => {
                s.insert(key.to_vec(), (value.to_vec(), 1));
                Ok(())
            }
        }
    }
    fn buffer(&self, kind: BufferType, start: usize, max: usize) -> Option<Vec<u8>> {
        let b = match kind {
            BufferType::PluginConfiguration => self.config.borrow(),
            BufferType::HttpRequestBody => self.request_body.borrow(),
            BufferType::HttpResponseBody => self.response_body.borrow(),
            _ => return None,
        };
        Some(b[start.min(b.len())..start.saturating_add(max).min(b.len())].to_vec())
    }
    fn buffer_len(&self, kind: BufferType) -> Option<usize> {
        match kind {
            BufferType::HttpRequestBody => Some(self.request_body.borrow().len()),
            BufferType::HttpResponseBody => Some(self.response_body.borrow().len()),
            _ => None,
        }
    }
    fn set_buffer(&self, kind: BufferType, start: usize, size: usize, data: &[u8]) -> Result<(), Status> {
        let mut b = match kind {
            BufferType::HttpRequestBody => self.request_body.borrow_mut(),
            BufferType::HttpResponseBody => self.response_body.borrow_mut(),
            _ => return Err(Status::BadArgument),
        };
        let start = start.min(b.len());
        let end = start.saturating_add(size).min(b.len());
        b.splice(start..end, data.iter().copied());
        Ok(())
    }
    fn continue_request(&self) -> Result<(), Status> {
        Ok(())
    }
    fn http_call(
        &self,
        _cluster: &str,
        _headers: &[(&[u8], &[u8])],
        _body: &[u8],
        _timeout_ms: u32,
    ) -> Result<u32, Status> {
        self.calls.set(self.calls.get() + 1);
        Ok(self.calls.get())
    }
    fn send_local_response(
        &self,
        status: u16,
        details: &str,
        _body: &[u8],
        headers: &[(&str, &[u8])],
        _grpc: Option<u32>,
    ) -> Result<(), Status> {
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect();
        self.replies.borrow_mut().push(Reply { status, details: details.to_string(), headers });
        Ok(())
    }
    fn define_metric(&self, _kind: MetricKind, name: &str) -> Result<u32, Status> {
        let mut m = self.metrics.borrow_mut();
        if let Some(i) = m.iter().position(|(n, _)| n == name) {
            return Ok(i as u32);
        }
        m.push((name.to_string(), 0));
        Ok(m.len() as u32 - 1)
    }
    fn increment_metric(&self, id: u32, by: i64) -> Result<(), Status> {
        self.metrics.borrow_mut().get_mut(id as usize).ok_or(Status::NotFound)?.1 += by;
        Ok(())
    }
    fn record_metric(&self, id: u32, value: u64) -> Result<(), Status> {
        self.metrics.borrow_mut().get_mut(id as usize).ok_or(Status::NotFound)?.1 = value as i64;
        Ok(())
    }
}

thread_local! {
    static VM: RefCell<Vm<Suite>> = RefCell::new(Vm::new("upstream_guard", upstream_guard_stages::suite));
}

const ROOT: u32 = 1;

/// Configures the suite on `fake`; true when the configuration was taken.
fn configure(fake: &Rc<Fake>, config: &str) -> bool {
    *fake.config.borrow_mut() = config.as_bytes().to_vec();
    native::scoped(fake.clone(), || dispatch::configure(&VM, ROOT, config.len()) == 1)
}

/// One request from `client` through the pipeline, answered 200 by the upstream: the local
/// reply the stages sent, if any.
fn request(fake: &Rc<Fake>, id: u32, client: &str, path: &str) -> Option<Reply> {
    native::scoped(fake.clone(), || {
        *fake.request.borrow_mut() =
            vec![(":path".into(), path.as_bytes().to_vec()), (":method".into(), b"GET".to_vec())];
        fake.response.borrow_mut().clear();
        fake.properties.borrow_mut().insert(b"source\0address".to_vec(), client.as_bytes().to_vec());
        let before = fake.replies.borrow().len();
        dispatch::context_create(&VM, id, ROOT);
        let status = dispatch::request_headers(&VM, id, true);
        let reply = fake.replies.borrow().get(before).cloned();
        if reply.is_none() {
            assert_eq!(status, 0, "a request without a reply goes on");
            *fake.response.borrow_mut() = vec![(":status".into(), b"200".to_vec())];
            dispatch::response_headers(&VM, id, true);
        }
        dispatch::log(&VM, id);
        dispatch::delete(&VM, id);
        reply
    })
}

#[test]
fn a_client_over_its_limit_is_refused_with_retry_after_until_time_refills_it() {
    let fake = Rc::new(Fake::default());
    fake.now.set(1_000_000_000_000);
    let config = r#"{"diagnostics": {}, "rate_limiter": {"rules": [{"name": "per-client", "limit": {"requests": 2, "per": "10s"}}]}}"#;
    assert!(configure(&fake, config));
    assert!(request(&fake, 2, "10.0.0.1:5000", "/").is_none());
    assert!(request(&fake, 3, "10.0.0.1:5000", "/").is_none());
    let refused = request(&fake, 4, "10.0.0.1:5000", "/").expect("the third request is refused");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.details, "upstream_guard.rate_limited");
    let header = |name: &str| {
        refused.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("retry-after").as_deref(), Some("5"));
    assert!(header("x-upstream-diagnosis").is_some_and(|d| d.contains("rate_limited")), "{refused:?}");
    assert!(request(&fake, 5, "10.0.0.2:5000", "/").is_none(), "another client has its own bucket");
    assert_eq!(fake.metric("upstream_guard.ratelimit.per-client.limited"), Some(1));
    // Five seconds later one token is back: time is the host's, passed into the core.
    fake.now.set(1_000_000_000_000 + 5_000_000_000);
    assert!(request(&fake, 6, "10.0.0.1:5000", "/").is_none());
    assert!(request(&fake, 7, "10.0.0.1:5000", "/").is_some());
}

#[test]
fn a_refused_configuration_is_not_taken_and_requests_pass_untouched() {
    let fake = Rc::new(Fake::default());
    assert!(!configure(
        &fake,
        r#"{"rate_limiter": {"rules": [{"name": "x", "limit": {"requests": 0, "per": "1s"}}]}}"#
    ));
    assert!(request(&fake, 2, "10.0.0.1:5000", "/").is_none());
}

#[test]
fn the_breaker_opens_after_consecutive_failures_and_refuses_fast() {
    let fake = Rc::new(Fake::default());
    fake.now.set(1_000_000_000_000);
    assert!(configure(&fake, r#"{"circuit_breaker": {"failure": {"consecutive": 2}}}"#));
    fake.properties.borrow_mut().insert(b"xds\0cluster_name".to_vec(), b"backend".to_vec());
    for id in 2..4 {
        native::scoped(fake.clone(), || {
            *fake.request.borrow_mut() = vec![(":path".into(), b"/".to_vec())];
            dispatch::context_create(&VM, id, ROOT);
            assert_eq!(dispatch::request_headers(&VM, id, true), 0);
            *fake.response.borrow_mut() = vec![(":status".into(), b"503".to_vec())];
            dispatch::response_headers(&VM, id, true);
            dispatch::log(&VM, id);
            dispatch::delete(&VM, id);
        });
    }
    let refused = request(&fake, 9, "10.0.0.1:5000", "/").expect("the circuit is open");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.details, "upstream_guard.circuit_open");
}

/// A small deterministic generator (xorshift): the same seed drives the same streams.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, from: &[&'a [u8]]) -> &'a [u8] {
        from[self.below(from.len() as u64) as usize]
    }
    /// Any bytes: NUL, high bytes, separators, long runs.
    fn bytes(&mut self) -> Vec<u8> {
        let len = match self.below(10) {
            0 => 0,
            1 => 4096 + self.below(4096) as usize,
            _ => self.below(40) as usize,
        };
        (0..len).map(|_| self.next() as u8).collect()
    }
}

const ALL_STAGES: &str = r#"{
    "diagnostics": {"trusted_cidrs": ["10.0.0.0/8"], "json_body": true},
    "rate_limiter": {"max_keys": 64, "rules": [
        {"name": "per-client", "key": ["client_ip"], "limit": {"requests": 3, "per": "10s"}},
        {"name": "by-header", "key": [{"header": "x-tenant"}], "limit": {"requests": 5, "per": "1m"}}]},
    "llm": {"providers": [{"cluster": "p1"}, {"cluster": "p2"}],
            "models": [{"name": "m", "providers": ["p1", "p2"]}],
            "budgets": [{"name": "tenant", "key": [{"header": "x-tenant"}], "tokens": 100, "per": "1m"}]},
    "health_router": {"upstreams": [{"cluster": "primary", "health_check": {"path": "/healthz", "interval": "1s"}},
                                    {"cluster": "secondary"}],
                      "passive": {"consecutive_failures": 2, "ejection": "5s"}},
    "circuit_breaker": {"failure": {"consecutive": 3}, "open": {"base": "2s"}}
}"#;

/// Hostile streams through every stage on the native fake: any bytes in headers, properties,
/// bodies and upstream answers; phases skipped or cut short; time jumping; ticks and stray call
/// answers in between. Nothing panics, every refusal is one of the stages' own replies, and the
/// cross-worker store stays bounded however many distinct clients come.
#[test]
fn hostile_callbacks_through_every_stage_never_panic_and_keep_the_store_bounded() {
    for seed in [0x9E37_79B9_7F4A_7C15_u64, 7, 0xDEAD_BEEF] {
        let fake = Rc::new(Fake::default());
        let mut now = 1_000_000_000_000u64;
        fake.now.set(now);
        let config = ALL_STAGES;
        assert!(configure(&fake, config), "the configuration is taken");
        let mut rng = Rng(seed);
        let mut refused = 0;
        for id in 100..2100u32 {
            native::scoped(fake.clone(), || {
                let path: &[u8] = rng.pick(&[b"/", b"/v1/chat/completions", b"/upstream-guard/health", b"/a?b=c"]);
                let mut headers: Vec<(String, Vec<u8>)> =
                    vec![(":path".into(), path.to_vec()), (":method".into(), b"POST".to_vec())];
                for name in ["x-tenant", "x-forwarded-for", "content-type", "x-upstream-guard-route", "grpc-timeout"] {
                    if rng.below(3) == 0 {
                        headers.push((name.into(), rng.bytes()));
                    }
                }
                *fake.request.borrow_mut() = headers;
                fake.response.borrow_mut().clear();
                let client = match rng.below(4) {
                    0 => rng.bytes(),
                    1 => format!("[2001:db8::{:x}]:443", rng.below(4000)).into_bytes(),
                    _ => format!("10.{}.{}.{}:0", rng.below(8), rng.below(250), rng.below(250)).into_bytes(),
                };
                {
                    let mut p = fake.properties.borrow_mut();
                    p.insert(b"source\0address".to_vec(), client);
                    let cluster: &[u8] = rng.pick(&[b"primary", b"secondary", b"p1", b"p2", b"\xff\x00", b""]);
                    p.insert(b"xds\0cluster_name".to_vec(), cluster.to_vec());
                    p.insert(b"response\0code_details".to_vec(), rng.bytes());
                    p.insert(b"response\0flags".to_vec(), (rng.below(1 << 20)).to_le_bytes().to_vec());
                }
                let before = fake.replies.borrow().len();
                dispatch::context_create(&VM, id, ROOT);
                let has_body = rng.below(2) == 0;
                let action = dispatch::request_headers(&VM, id, !has_body);
                assert!(action <= 1, "a filter status Envoy knows: {action}");
                if has_body && fake.replies.borrow().len() == before {
                    *fake.request_body.borrow_mut() = match rng.below(3) {
                        0 => br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}"#
                            .to_vec(),
                        1 => br#"{"model": "m", "stream": true, "messages": []}"#.to_vec(),
                        _ => rng.bytes(),
                    };
                    let len = fake.request_body.borrow().len();
                    dispatch::request_body(&VM, id, len, true);
                }
                if fake.replies.borrow().len() == before && rng.below(6) != 0 {
                    let status: &[u8] = rng.pick(&[b"200", b"200", b"429", b"503", b"500", b"abc", b"", b"99999"]);
                    let mut response = vec![(":status".to_string(), status.to_vec())];
                    if rng.below(3) == 0 {
                        response.push(("retry-after".into(), rng.bytes()));
                    }
                    *fake.response.borrow_mut() = response;
                    let with_body = rng.below(2) == 0;
                    dispatch::response_headers(&VM, id, !with_body);
                    if with_body {
                        *fake.response_body.borrow_mut() = match rng.below(2) {
                            0 => br#"{"usage": {"prompt_tokens": 3, "completion_tokens": 40, "total_tokens": 43}}"#
                                .to_vec(),
                            _ => rng.bytes(),
                        };
                        let len = fake.response_body.borrow().len();
                        dispatch::response_body(&VM, id, len, true);
                    }
                }
                if rng.below(8) != 0 {
                    dispatch::log(&VM, id);
                }
                dispatch::delete(&VM, id);
                for reply in fake.replies.borrow().iter().skip(before) {
                    assert!((200..=599).contains(&reply.status), "{reply:?}");
                    assert!(reply.details.starts_with("upstream_guard."), "a stage's own reply: {reply:?}");
                    refused += 1;
                }
                if rng.below(10) == 0 {
                    now += rng.below(3_000_000_000);
                    fake.now.set(now);
                    dispatch::tick(&VM, ROOT);
                }
                if rng.below(20) == 0 {
                    // An answer to a call, or to none: the stages read what it holds, or nothing.
                    let token = rng.below(u64::from(fake.calls.get()) + 2) as u32;
                    dispatch::http_call_response(&VM, ROOT, token, 0, 0);
                }
            });
        }
        assert!(refused > 0, "seed {seed:#x}: some requests were refused");
        let keys = fake.shared.borrow().len();
        // Two thousand streams from over a thousand distinct clients and tenants: the store holds
        // the rate limiter's 64 slots and a bounded number of circuit, health, budget and
        // bookkeeping keys, never one per client.
        let mut why: Vec<(String, usize)> = Vec::new();
        for r in fake.replies.borrow().iter() {
            match why.iter_mut().find(|(d, _)| *d == r.details) {
                Some((_, n)) => *n += 1,
                None => why.push((r.details.clone(), 1)),
            }
        }
        eprintln!("seed {seed:#x}: {refused} of 2000 refused {why:?}; {keys} keys in the store");
        assert!(why.len() >= 3, "seed {seed:#x}: the streams reach several stages' refusals: {why:?}");
        assert!(keys <= 64 + 128, "seed {seed:#x}: {keys} keys in the store");
    }
}

/// A backend that still answers 200, only late: the module times each call with the host's clock
/// (passed into the core), and once slow calls are the configured share of the window the circuit
/// opens and the refusal says the upstream is slow.
#[test]
fn late_200s_open_the_circuit_and_the_refusal_says_the_upstream_is_slow() {
    let fake = Rc::new(Fake::default());
    let mut now = 1_000_000_000_000u64;
    fake.now.set(now);
    let config = r#"{"diagnostics": {}, "circuit_breaker": {"failure": {"consecutive": 100,
        "slow": {"after": "1s", "threshold": 0.5, "min_requests": 4}}}}"#;
    assert!(configure(&fake, config));
    fake.properties.borrow_mut().insert(b"xds\0cluster_name".to_vec(), b"backend".to_vec());
    let mut call = |id: u32, takes_ns: u64| {
        native::scoped(fake.clone(), || {
            *fake.request.borrow_mut() = vec![(":path".into(), b"/".to_vec())];
            fake.response.borrow_mut().clear();
            let before = fake.replies.borrow().len();
            dispatch::context_create(&VM, id, ROOT);
            dispatch::request_headers(&VM, id, true);
            let reply = fake.replies.borrow().get(before).cloned();
            if reply.is_none() {
                now += takes_ns;
                fake.now.set(now);
                *fake.response.borrow_mut() = vec![(":status".into(), b"200".to_vec())];
                dispatch::response_headers(&VM, id, true);
            }
            dispatch::log(&VM, id);
            dispatch::delete(&VM, id);
            reply
        })
    };
    // Fast answers, then late ones: 2 of 4 late trips it (0.5), not 1 of 3.
    assert!(call(2, 100_000_000).is_none());
    assert!(call(3, 1_500_000_000).is_none());
    assert!(call(4, 999_000_000).is_none(), "just under `after` is not slow");
    assert!(call(5, 2_000_000_000).is_none(), "the call that trips it was answered");
    let refused = call(6, 0).expect("the circuit is open");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.details, "upstream_guard.upstream_slow");
    let header = |name: &str| {
        refused.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert!(header("x-upstream-diagnosis").is_some_and(|d| d.starts_with("cause=upstream_slow")), "{refused:?}");
    assert_eq!(header("x-upstream-guard-circuit").as_deref(), Some("open"));
    assert_eq!(fake.metric("upstream_guard.breaker.backend.slow"), Some(2));
    assert_eq!(fake.metric("upstream_guard.breaker.backend.failures"), Some(0));
    assert_eq!(fake.metric("upstream_guard.diagnosis.upstream_slow"), Some(1));
}

/// The concurrency stage counts requests in flight per cluster until their streams end: a low
/// class is refused once its share is taken, critical requests take the last slot, and an ended
/// stream frees its slot.
#[test]
fn lower_classes_are_shed_first_and_an_ended_stream_frees_its_slot() {
    let fake = Rc::new(Fake::default());
    fake.now.set(1_000_000_000_000);
    let config = r#"{"diagnostics": {}, "concurrency": {"limit": {"initial": 2, "min": 2, "max": 2},
        "classes": [{"class": "critical", "match": {"path_prefix": "/checkout"}},
                    {"class": "low", "match": {"path_prefix": "/batch"}}]}}"#;
    assert!(configure(&fake, config));
    fake.properties.borrow_mut().insert(b"xds\0cluster_name".to_vec(), b"backend".to_vec());
    // Opens a stream (request headers only): the reply if refused.
    let open = |id: u32, path: &str| {
        native::scoped(fake.clone(), || {
            *fake.request.borrow_mut() = vec![(":path".into(), path.as_bytes().to_vec())];
            let before = fake.replies.borrow().len();
            dispatch::context_create(&VM, id, ROOT);
            dispatch::request_headers(&VM, id, true);
            fake.replies.borrow().get(before).cloned()
        })
    };
    let end = |id: u32| {
        native::scoped(fake.clone(), || {
            *fake.response.borrow_mut() = vec![(":status".into(), b"200".to_vec())];
            dispatch::response_headers(&VM, id, true);
            dispatch::log(&VM, id);
            dispatch::delete(&VM, id);
        })
    };
    assert!(open(2, "/batch/1").is_none());
    let shed = open(3, "/batch/2").expect("low: its half of 2 is taken");
    assert_eq!((shed.status, shed.details.as_str()), (503, "upstream_guard.concurrency_limited"));
    let header = |r: &Reply, name: &str| {
        r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header(&shed, "retry-after").as_deref(), Some("1"));
    assert!(header(&shed, "x-upstream-diagnosis").is_some_and(|d| d.starts_with("cause=concurrency_limited")));
    let close = |id: u32| {
        native::scoped(fake.clone(), || {
            dispatch::log(&VM, id);
            dispatch::delete(&VM, id);
        })
    };
    close(3);
    assert!(open(4, "/checkout").is_none(), "critical takes the last slot");
    assert!(open(5, "/checkout").is_some(), "the limit is 2");
    close(5);
    end(2);
    assert!(open(6, "/checkout").is_none(), "the ended stream's slot is free");
    assert_eq!(fake.metric("upstream_guard.concurrency.backend.refused"), Some(2));
    assert_eq!(fake.metric("upstream_guard.concurrency.backend.limit"), Some(2));
    assert_eq!(fake.metric("upstream_guard.diagnosis.concurrency_limited"), Some(2));
}
