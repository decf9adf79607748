//! Hostile bytes in everything a filter reads: for every module, every request header and
//! property it reads, and the answers of health checks, a value that is not UTF-8, one that is
//! empty, one of 64 KiB, and one full of control bytes. No trap, the documented behaviour, and the
//! next request on the same worker is served normally (a trap would disable the filter for the
//! whole worker in Envoy).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use test_harness::host::{level, Action, Host, Plugin};
use test_harness::{parse_diagnosis, paths::wasm_path};

fn hostile_values() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("not UTF-8", b"caf\xe9\xff".to_vec()),
        ("empty", Vec::new()),
        ("64 KiB", vec![b'a'; 64 * 1024]),
        ("control bytes", b"\x01\x02\x7f\t\"\\\x00x".to_vec()),
    ]
}

/// Where the hostile value goes.
#[derive(Clone, Copy)]
enum Input {
    Header(&'static str),
    Property(&'static str),
}

fn configs() -> Vec<(&'static str, Value)> {
    let diag = json!({"trusted_cidrs": ["10.0.0.0/8"], "json_body": true,
                      "debug_header": "x-upstream-debug", "debug_token": "s3cret"});
    let rl = json!({"rules": [
        {"name": "by-tenant", "match": {"path_regex": "^/api", "headers": [{"name": "x-plan", "exact": "gold"}]},
         "key": [{"header": "x-tenant"}, "path", "method"], "limit": {"requests": 1000, "per": "1s"}},
        {"name": "by-client", "key": ["client_ip"], "limit": {"requests": 1000, "per": "1s"}}],
        "apply": "all", "client_ip": {"trusted_hops": 1}});
    let cb = json!({"key_header": "x-tenant", "failure": {"consecutive": 1000}});
    let hr = json!({"upstreams": [{"cluster": "a", "health_check": {"path": "/healthz"}}, {"cluster": "b"}],
                    "routes": [{"path_prefix": "/b", "upstreams": ["b"]}], "status_path": "/status",
                    "trusted_cidrs": ["10.0.0.0/8"], "passive": {"consecutive_failures": 1000}});
    vec![
        ("diagnostics", diag.clone()),
        ("rate_limiter", rl.clone()),
        ("circuit_breaker", cb.clone()),
        ("health_router", hr.clone()),
        (
            "upstream_guard",
            json!({"diagnostics": diag, "rate_limiter": rl, "health_router": hr, "circuit_breaker": cb}),
        ),
    ]
}

/// Everything the modules read on a stream.
fn inputs() -> Vec<Input> {
    use Input::*;
    vec![
        Header(":path"),
        Header(":method"),
        Header("x-tenant"),
        Header("x-plan"),
        Header("x-forwarded-for"),
        Header("x-upstream-debug"),
        Header("accept"),
        Header("x-upstream-cluster"),
        Property("source.address"),
        Property("xds.cluster_name"),
        Property("xds.route_name"),
        Property("upstream.address"),
        Property("response.code_details"),
        Property("upstream.transport_failure_reason"),
        Property("response.flags"),
        Property("response.code"),
        Property("upstream.request_attempt_count"),
    ]
}

/// One stream through every callback, with `input` set to `value` (headers on the request, and
/// on the response for `:status`-like reads), a failing response so that the error paths read.
fn hostile_round(p: &Plugin, input: Input, value: &[u8]) -> Result<(), String> {
    let w = p.worker(0);
    let mut s = w
        .http_stream()
        .property("source.address", "10.1.2.3:4000")
        .property("xds.cluster_name", "a")
        .property("upstream.address", "127.0.0.1:9")
        .property("xds.route_name", "r");
    let mut headers: Vec<(&[u8], &[u8])> =
        vec![(b":path", b"/api/x"), (b":method", b"GET"), (b":authority", b"svc"), (b"x-plan", b"gold")];
    match input {
        Input::Header(name) => {
            headers.retain(|(k, _)| *k != name.as_bytes());
            headers.push((name.as_bytes(), value));
        }
        Input::Property(path) => s.set_property_bytes(path, value),
    }
    s.request_headers_bytes(&headers, true).map_err(|e| e.to_string())?;
    if s.local_response().is_none() {
        if !matches!(input, Input::Property(_)) {
            s.set_property_u64("response.flags", 0x20);
            s.set_property("response.code_details", "upstream_reset_before_response_started{\"x\"\\\n}");
        }
        s.response_headers(&[(":status", "503"), ("content-type", "text/plain")], false).map_err(|e| e.to_string())?;
        s.response_body(b"upstream connect error", true).map_err(|e| e.to_string())?;
        if let Some(d) = s.response_header("x-upstream-diagnosis") {
            parse_diagnosis(&d).ok_or_else(|| format!("malformed diagnosis: {d}"))?;
        }
    }
    s.log().map_err(|e| e.to_string())?;
    s.finish().map_err(|e| e.to_string())
}

/// A plain request afterwards: served (not refused, not trapped).
fn normal_round(p: &Plugin) -> Result<(), String> {
    let mut s = p.worker(0).http_stream().property("source.address", "10.9.9.9:1000").property("xds.cluster_name", "a");
    let action = s
        .request_headers(&[(":path", "/web"), (":method", "GET"), (":authority", "svc")], true)
        .map_err(|e| e.to_string())?;
    if action != Action::Continue || s.local_response().is_some() {
        return Err(format!("the next request was not served: {:?}", s.local_response()));
    }
    s.set_property_u64("response.code", 200);
    s.response_headers(&[(":status", "200")], false).map_err(|e| e.to_string())?;
    s.response_body(b"ok", true).map_err(|e| e.to_string())?;
    s.log().map_err(|e| e.to_string())?;
    s.finish().map_err(|e| e.to_string())
}

#[test]
fn every_module_survives_hostile_bytes_in_everything_it_reads() {
    let mut failures = Vec::new();
    let mut rounds = 0;
    for (module, config) in configs() {
        for input in inputs() {
            for (what, value) in hostile_values() {
                let host = Host::new();
                let p = host.load(wasm_path(module).unwrap(), &config).unwrap();
                let name = match input {
                    Input::Header(h) => format!("header {h}"),
                    Input::Property(pp) => format!("property {pp}"),
                };
                rounds += 1;
                if let Err(e) = hostile_round(&p, input, &value) {
                    failures.push(format!("{module}: {name} {what}: {e}"));
                    continue;
                }
                if let Err(e) = normal_round(&p) {
                    failures.push(format!("{module}: after {name} {what}: {e}"));
                }
                let panics: Vec<String> = p
                    .logs()
                    .into_iter()
                    .filter(|(l, m)| *l >= level::CRITICAL || m.contains("panicked"))
                    .map(|(_, m)| m)
                    .collect();
                if !panics.is_empty() {
                    failures.push(format!("{module}: {name} {what}: {panics:?}"));
                }
            }
        }
    }
    assert!(rounds >= 300, "{rounds} rounds");
    assert!(failures.is_empty(), "{} of {rounds} rounds failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_non_utf8_key_is_keyed_as_its_bytes_and_never_escapes_the_limit() {
    for module in ["rate_limiter", "upstream_guard"] {
        let rl =
            json!({"rules": [{"name": "t", "key": [{"header": "x-tenant"}], "limit": {"requests": 1, "per": "1h"}}]});
        let config = if module == "upstream_guard" { json!({"rate_limiter": rl}) } else { rl };
        let host = Host::new().workers(2);
        let p = host.load(wasm_path(module).unwrap(), &config).unwrap();
        let send = |worker: usize, tenant: &[u8]| {
            let mut s = p.worker(worker).http_stream().property("source.address", "10.0.0.1:1");
            s.request_headers_bytes(&[(b":path", b"/"), (b":method", b"GET"), (b"x-tenant", tenant)], true).unwrap();
            s.local_response().map(|r| r.status)
        };
        assert_eq!(send(0, b"caf\xe9\xff"), None, "{module}");
        assert_eq!(send(1, b"caf\xe9\xff"), Some(429), "{module}: the same bytes share one bucket across workers");
        assert_eq!(send(0, b"caf\xe9\xfe"), None, "{module}: other bytes are another key");
    }
}

#[test]
fn an_unparsable_forwarded_for_falls_back_to_the_peer() {
    let config = json!({"rules": [{"name": "c", "key": ["client_ip"], "limit": {"requests": 1, "per": "1h"}}],
                        "client_ip": {"trusted_hops": 1}});
    let host = Host::new();
    let p = host.load(wasm_path("rate_limiter").unwrap(), &config).unwrap();
    let send = |xff: &[u8]| {
        let mut s = p.worker(0).http_stream().property("source.address", "10.0.0.1:1");
        s.request_headers_bytes(&[(b":path", b"/"), (b":method", b"GET"), (b"x-forwarded-for", xff)], true).unwrap();
        s.local_response().map(|r| r.status)
    };
    assert_eq!(send(b"1.2.3.4\xff"), None);
    assert_eq!(send(b"5.6.7.8\xfe\x01"), Some(429), "both fell back to the same peer address");
    assert_eq!(send(b"9.9.9.9"), None, "a parsable entry is its own client");
}

#[test]
fn a_non_utf8_accept_is_simply_not_json() {
    let host = Host::new();
    let p = host.load(wasm_path("diagnostics").unwrap(), json!({"json_body": true})).unwrap();
    for (accept, json_expected) in [(&b"application/json"[..], true), (&b"application/json\xff"[..], false)] {
        let mut s = p.worker(0).http_stream();
        s.request_headers_bytes(&[(b":path", b"/"), (b":method", b"GET"), (b"accept", accept)], true).unwrap();
        s.set_property_u64("response.code", 503);
        s.set_property_u64("response.flags", 0x20);
        s.set_property("response.code_details", "upstream_reset_before_response_started{connection_failure}");
        s.response_headers(&[(":status", "503"), ("content-type", "text/plain"), ("content-length", "22")], false)
            .unwrap();
        s.response_body(b"upstream connect error", true).unwrap();
        let body = String::from_utf8_lossy(&s.response_body_now()).into_owned();
        assert_eq!(body.starts_with('{'), json_expected, "{accept:?}: {body}");
        s.log().unwrap();
    }
}

#[test]
fn health_check_answers_with_hostile_bytes_count_as_failures_not_traps() {
    let config = json!({"upstreams": [{"cluster": "a", "health_check": {"path": "/healthz", "unhealthy_threshold": 1}}, {"cluster": "b"}]});
    let host = Host::new();
    let p = host.load(wasm_path("health_router").unwrap(), config).unwrap();
    // (headers, body) of each check's answer.
    type Answer = (Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);
    let answers: Vec<Answer> = vec![
        (vec![(b":status".to_vec(), b"2\xff0".to_vec())], b"\xff\xfe".to_vec()),
        (vec![(b":status".to_vec(), b"503".to_vec())], vec![0xff; 64 * 1024]),
        (vec![(b":status".to_vec(), Vec::new())], Vec::new()),
        (vec![(b"\xff".to_vec(), b"\x01".to_vec())], b"\x00".to_vec()),
    ];
    for (headers, body) in answers {
        host.clock().advance(std::time::Duration::from_secs(2));
        p.tick_all().unwrap();
        let w = p.worker(0);
        for call in w.pending_http_calls() {
            let hs: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
            w.respond_http_call_bytes(call.token, &hs, &body, &[]).unwrap();
        }
        let mut s = w.http_stream();
        s.request_headers(&[(":path", "/"), (":method", "GET")], true).unwrap();
        assert_eq!(s.request_header("x-upstream-cluster").as_deref(), Some("b"), "a's check failed: routed to b");
    }
    assert!(host.counter("upstream_guard.health.a.checks_failed") >= 4);
}
