//! A filter for the harness's own tests: it calls every host function the proxy-wasm Rust SDK
//! wraps, driven by the request header `x-op`, and reports what it saw in headers, logs and
//! metrics, so that tests can check the host's answers.
// This test filter calls the SDK's String getters on purpose (it exercises every host function
// the way SDK-built filters do); the shipped filters may not (see .clippy.toml).
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { queue: 0, ticks: 0 }) });
}}

struct Root {
    queue: u32,
    ticks: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let vm = self.get_vm_configuration().unwrap_or_default();
        log::info!("vm config: {}", String::from_utf8_lossy(&vm));
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let cfg = self.get_plugin_configuration().unwrap_or_default();
        if cfg == b"\"refuse\"" {
            log::error!("refusing configuration");
            return false;
        }
        hostcalls::define_metric(MetricType::Counter, "conf.ticks").unwrap();
        hostcalls::define_metric(MetricType::Gauge, "conf.gauge").unwrap();
        hostcalls::define_metric(MetricType::Histogram, "conf.hist").unwrap();
        self.queue = self.register_shared_queue("conf.q");
        self.set_tick_period(Duration::from_millis(100));
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let id = hostcalls::define_metric(MetricType::Counter, "conf.ticks").unwrap();
        hostcalls::increment_metric(id, 1).unwrap();
        self.enqueue_shared_queue(self.queue, Some(format!("tick {}", self.ticks).as_bytes())).unwrap();
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            log::info!("dequeued {}", String::from_utf8_lossy(&item));
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { id: context_id, uppercase: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    id: u32,
    uppercase: bool,
}

impl Context for Stream {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let status = self.get_http_call_response_header(":status").unwrap_or_else(|| "none".into());
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        self.set_http_request_header("x-conf-call", Some(&format!("{status} {}", String::from_utf8_lossy(&body))));
        self.resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, num_headers: usize, _eos: bool) -> Action {
        let count = self.get_http_request_headers().len();
        self.add_http_request_header("x-conf-count", &format!("{num_headers}/{count}"));
        self.set_http_request_header("x-conf-replace", Some("replaced"));
        self.set_http_request_header("x-conf-remove", None);
        let source = self.get_property(vec!["source", "address"]).map(|b| String::from_utf8_lossy(&b).into_owned());
        self.set_http_request_header("x-conf-source", Some(&source.unwrap_or_else(|| "none".into())));
        let code = self.get_property(vec!["response", "code"]).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
        self.set_http_request_header("x-conf-code", Some(&format!("{code:?}")));
        let now = self.get_current_time().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        self.set_http_request_header("x-conf-time", Some(&now.to_string()));
        self.set_property(vec!["conf", "set"], Some(b"stored"));
        let back = self.get_property(vec!["conf", "set"]).unwrap_or_default();
        self.set_http_request_header("x-conf-property", Some(&String::from_utf8_lossy(&back)));
        match self.get_http_request_header("x-op").as_deref() {
            Some("panic") => panic!("conformance panic requested by stream {}", self.id),
            Some("reply") => {
                self.send_http_response(429, vec![("x-conf", "local")], Some(b"slow down"));
                return Action::Pause;
            }
            Some("call") => {
                let headers = vec![(":method", "GET"), (":path", "/check"), (":authority", "upstream")];
                match self.dispatch_http_call("upstream", headers, Some(b"ping"), vec![], Duration::from_millis(500)) {
                    Ok(_) => return Action::Pause,
                    Err(e) => self.set_http_request_header("x-conf-call", Some(&format!("dispatch failed: {e:?}"))),
                }
            }
            Some("call-bad") => {
                let r = self.dispatch_http_call("upstream", vec![(":path", "/")], None, vec![], Duration::from_secs(1));
                self.set_http_request_header("x-conf-call", Some(&format!("{:?}", r.err())));
            }
            Some("shared") => {
                for _ in 0..2 {
                    let (value, cas) = self.get_shared_data("conf.counter");
                    let n = value.map(|v| u64::from_le_bytes(v.try_into().unwrap())).unwrap_or(0) + 1;
                    let r = self.set_shared_data("conf.counter", Some(&n.to_le_bytes()), cas.or(Some(u32::MAX)));
                    self.set_http_request_header("x-conf-shared", Some(&format!("{n} {r:?}")));
                    if r.is_ok() {
                        break;
                    }
                }
            }
            Some("foreign") => {
                let r = hostcalls::call_foreign_function("clear_route_cache", None);
                let unknown = hostcalls::call_foreign_function("no_such_function", None);
                self.set_http_request_header("x-conf-foreign", Some(&format!("{:?} {:?}", r.is_ok(), unknown.err())));
            }
            Some("metrics") => {
                let g = hostcalls::define_metric(MetricType::Gauge, "conf.gauge").unwrap();
                hostcalls::record_metric(g, 42).unwrap();
                let h = hostcalls::define_metric(MetricType::Histogram, "conf.hist").unwrap();
                hostcalls::record_metric(h, 7).unwrap();
                let v = hostcalls::get_metric(g).unwrap();
                self.set_http_request_header("x-conf-gauge", Some(&v.to_string()));
            }
            Some("log") => {
                log::trace!("t");
                log::debug!("d");
                log::warn!("w");
                log::error!("e");
                println!("to stdout");
            }
            Some("done") => {
                let _ = hostcalls::done();
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if !eos {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        self.set_http_request_body(0, size, &body.iter().rev().copied().collect::<Vec<u8>>());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.uppercase = self.get_http_response_header("x-uppercase").is_some();
        let pairs = self.get_http_response_headers();
        let kept: Vec<(&str, &str)> =
            pairs.iter().filter(|(k, _)| k != "server").map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.set_http_response_headers(kept);
        self.add_http_response_header("x-conf-response", "seen");
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if !self.uppercase {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, size).unwrap_or_default();
        self.set_http_response_body(0, size, &body.to_ascii_uppercase());
        Action::Continue
    }
}
