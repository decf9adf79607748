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
        (kind == BufferType::PluginConfiguration).then(|| {
            let c = self.config.borrow();
            c[start.min(c.len())..start.saturating_add(max).min(c.len())].to_vec()
        })
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
