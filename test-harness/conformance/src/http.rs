//! The HTTP side: one operation per request, chosen by `x-op`.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, GrpcStatusCode, MetricType};

/// `GrpcService { envoy_grpc { cluster_name: "authz" } }`, serialized.
const AUTHZ_PROTO: &[u8] = &[0x0a, 0x07, 0x0a, 0x05, b'a', b'u', b't', b'h', b'z'];

pub struct Stream {
    id: u32,
    uppercase: bool,
    /// The operation, for what the response reports (`grpc-*`, `phases`).
    op: String,
    /// The outcome of a gRPC exchange, repeated in the response so a client sees it.
    grpc: Option<String>,
    /// `names`: how the request's `x-mixed-case` header arrived, repeated in the response.
    names: Option<String>,
}

impl Stream {
    pub fn new(id: u32) -> Stream {
        Stream { id, uppercase: false, op: String::new(), grpc: None, names: None }
    }

    /// Reports the outcome of a gRPC exchange in a request header (and later in the response)
    /// and resumes the request.
    fn grpc_done(&mut self, what: &str) {
        self.set_http_request_header("x-conf-grpc", Some(what));
        self.grpc = Some(what.to_string());
        self.resume_http_request();
    }

    fn grpc_ops(&mut self, op: &str) -> Option<Action> {
        let metadata: Vec<(&str, &[u8])> = vec![("x-md", b"v"), ("x-md-bin", &[0, 1, 255])];
        let timeout = Duration::from_millis(500);
        let r = match op {
            "grpc-call" => self.dispatch_grpc_call("authz", "pkg.Auth", "Check", metadata, Some(b"req"), timeout),
            "grpc-call-proto" => {
                let service = std::str::from_utf8(AUTHZ_PROTO).unwrap();
                self.dispatch_grpc_call(service, "pkg.Auth", "Check", metadata, Some(b"req"), timeout)
            }
            "grpc-call-unknown" => self.dispatch_grpc_call("nope", "pkg.Auth", "Check", metadata, None, timeout),
            "grpc-cancel" => {
                let token = self.dispatch_grpc_call("authz", "pkg.Auth", "Check", metadata, None, timeout).unwrap();
                self.cancel_grpc_call(token);
                self.set_http_request_header("x-conf-grpc", Some("cancelled"));
                return Some(Action::Continue);
            }
            "grpc-stream" => {
                let r = self.open_grpc_stream("authz", "pkg.Watch", "Watch", metadata);
                if let Ok(token) = r {
                    self.send_grpc_stream_message(token, Some(b"first"), false);
                }
                r
            }
            "grpc-reply" => {
                hostcalls::send_grpc_response(GrpcStatusCode::PermissionDenied, Some("denied"), vec![("x-a", b"1")])
                    .unwrap();
                return Some(Action::Pause);
            }
            _ => return None,
        };
        Some(match r {
            Ok(_) => Action::Pause,
            Err(e) => {
                self.set_http_request_header("x-conf-grpc", Some(&format!("dispatch failed: {e:?}")));
                Action::Continue
            }
        })
    }
}

impl Context for Stream {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let status = self.get_http_call_response_header(":status").unwrap_or_else(|| "none".into());
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        self.set_http_request_header("x-conf-call", Some(&format!("{status} {}", String::from_utf8_lossy(&body))));
        self.resume_http_request();
    }

    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        if status_code == 0 {
            let body = self.get_grpc_call_response_body(0, response_size).unwrap_or_default();
            self.grpc_done(&format!("ok {}", String::from_utf8_lossy(&body)));
        } else {
            let (code, message) = self.get_grpc_status();
            self.grpc_done(&format!("status {status_code} {code} {}", message.unwrap_or_default()));
        }
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token: u32, n: u32) {
        let v = self.get_grpc_stream_initial_metadata_value("x-init").unwrap_or_default();
        log::info!("stream initial {n} x-init={}", String::from_utf8_lossy(&v));
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let msg = self.get_grpc_stream_message(0, size).unwrap_or_default();
        log::info!("stream message {}", String::from_utf8_lossy(&msg));
        if msg == b"bye" {
            self.close_grpc_stream(token);
        } else {
            let mut ack = b"ack ".to_vec();
            ack.extend_from_slice(&msg);
            self.send_grpc_stream_message(token, Some(&ack), false);
        }
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token: u32, n: u32) {
        let pairs = self.get_grpc_stream_trailing_metadata();
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        log::info!("stream trailing {n} {}", keys.join(","));
    }

    fn on_grpc_stream_close(&mut self, _token: u32, status_code: u32) {
        let (_, message) = self.get_grpc_status();
        self.grpc_done(&format!("closed {status_code} {}", message.unwrap_or_default()));
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, num_headers: usize, _eos: bool) -> Action {
        // Header values that are not UTF-8 would make the SDK's string getters panic: this
        // operation uses only the byte getters.
        if self.get_http_request_header_bytes("x-op").as_deref() == Some(b"bytes") {
            let value = self.get_http_request_header_bytes("x-bin").unwrap_or_default();
            self.set_http_request_header_bytes("x-conf-bin", Some(&value));
            self.add_http_request_header_bytes("x-conf-bin-len", value.len().to_string().as_bytes());
            return Action::Continue;
        }
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
        let op = self.get_http_request_header("x-op").unwrap_or_default();
        self.op = op.clone();
        if let Some(action) = self.grpc_ops(&op) {
            return action;
        }
        if op == "names" {
            // The name as the filter sees it in the map, and a lookup spelled in another case.
            let seen: Vec<String> = self
                .get_http_request_headers()
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| k.eq_ignore_ascii_case("x-mixed-case"))
                .collect();
            let found = self.get_http_request_header("X-MIXED-CASE").is_some();
            self.names = Some(format!("{};lookup={found}", seen.join(",")));
        }
        match op.as_str() {
            "panic" => panic!("conformance panic requested by stream {}", self.id),
            "reply" => {
                self.send_http_response(429, vec![("x-conf", "local")], Some(b"slow down"));
                return Action::Pause;
            }
            "call" => {
                let headers = vec![(":method", "GET"), (":path", "/check"), (":authority", "upstream")];
                match self.dispatch_http_call("upstream", headers, Some(b"ping"), vec![], Duration::from_millis(500)) {
                    Ok(_) => return Action::Pause,
                    Err(e) => self.set_http_request_header("x-conf-call", Some(&format!("dispatch failed: {e:?}"))),
                }
            }
            "call-bad" => {
                let r = self.dispatch_http_call("upstream", vec![(":path", "/")], None, vec![], Duration::from_secs(1));
                self.set_http_request_header("x-conf-call", Some(&format!("{:?}", r.err())));
            }
            "shared" => {
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
            "foreign" => {
                let r = hostcalls::call_foreign_function("clear_route_cache", None);
                let unknown = hostcalls::call_foreign_function("no_such_function", None);
                self.set_http_request_header("x-conf-foreign", Some(&format!("{:?} {:?}", r.is_ok(), unknown.err())));
            }
            "foreign-echo" => {
                let arg = self.get_http_request_header("x-arg").unwrap_or_default();
                let r = hostcalls::call_foreign_function("echo", Some(arg.as_bytes()));
                let shown = match r {
                    Ok(v) => String::from_utf8_lossy(&v.unwrap_or_default()).into_owned(),
                    Err(e) => format!("{e:?}"),
                };
                self.set_http_request_header("x-conf-foreign", Some(&shown));
            }
            "metrics" => {
                let g = hostcalls::define_metric(MetricType::Gauge, "conf.gauge").unwrap();
                hostcalls::record_metric(g, 42).unwrap();
                let h = hostcalls::define_metric(MetricType::Histogram, "conf.hist").unwrap();
                hostcalls::record_metric(h, 7).unwrap();
                let v = hostcalls::get_metric(g).unwrap();
                self.set_http_request_header("x-conf-gauge", Some(&v.to_string()));
            }
            "log" => {
                log::trace!("t");
                log::debug!("d");
                log::warn!("w");
                log::error!("e");
                println!("to stdout");
            }
            "done" => {
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
        if let Some(outcome) = self.grpc.take() {
            self.add_http_response_header("x-conf-grpc", &outcome);
        }
        if let Some(names) = self.names.take() {
            self.add_http_response_header("x-conf-names", &names);
        }
        if self.op == "phases" {
            // The request's headers were passed on: their map is gone (all pairs read as empty).
            let seen = self.get_http_request_headers().len();
            self.add_http_response_header("x-conf-request-headers-in-response", &seen.to_string());
        }
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
