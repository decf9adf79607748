//! The diagnostics filter under the deterministic host: properties in, header and body out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use test_harness::host::{Host, HostError};
use test_harness::{parse_diagnosis, paths};

#[test]
fn properties_in_header_out() {
    let host = Host::new();
    let p = host.load(paths::wasm_path("diagnostics").unwrap(), json!({"trusted_cidrs": ["10.0.0.0/8"]})).unwrap();
    let mut s = p.worker(0).http_stream().property("source.address", "10.1.2.3:5555");
    s.request_headers(&[(":path", "/"), (":method", "GET")], true).unwrap();
    s.set_property_u64("response.code", 503);
    s.set_property_u64("response.flags", 0x20 | 0x8000);
    s.set_property("xds.cluster_name", "payments");
    s.response_headers(&[(":status", "503")], false).unwrap();
    let d = parse_diagnosis(&s.response_header("x-upstream-diagnosis").unwrap()).unwrap();
    assert_eq!(
        (d["cause"].as_str(), d["flags"].as_str(), d["cluster"].as_str()),
        ("retry_limit_exceeded", "UF,URX", "payments")
    );
    s.log().unwrap();
    assert_eq!(host.counter("upstream_guard.diagnosis.retry_limit_exceeded"), 1);
}

#[test]
fn missing_properties_never_panic_and_success_is_left_alone() {
    let host = Host::new();
    let p = host.load(paths::wasm_path("diagnostics").unwrap(), json!({})).unwrap();
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[], true).unwrap();
    s.response_headers(&[(":status", "200")], true).unwrap();
    assert!(s.response_header("x-upstream-diagnosis").is_none());
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[], true).unwrap();
    s.response_headers(&[(":status", "502")], true).unwrap();
    let d = parse_diagnosis(&s.response_header("x-upstream-diagnosis").unwrap()).unwrap();
    assert_eq!(d["cause"], "upstream_error_response", "status from :status when response.code is missing");
}

#[test]
fn json_body_replaces_a_local_reply_body_and_fixes_content_length() {
    let host = Host::new();
    let p = host
        .load(paths::wasm_path("diagnostics").unwrap(), json!({"json_body": true, "expose_upstream": "never"}))
        .unwrap();
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[(":path", "/"), ("accept", "application/json")], true).unwrap();
    s.set_property_u64("response.code", 503);
    s.set_property_u64("response.flags", 0x2);
    s.set_property("response.code_details", "no_healthy_upstream");
    s.response_headers(&[(":status", "503"), ("content-length", "19"), ("content-type", "text/plain")], false).unwrap();
    s.response_body(b"no healthy upstream", true).unwrap();
    let body: Value = serde_json::from_slice(&s.response_body_now()).unwrap();
    assert_eq!(body["cause"], "no_healthy_upstream");
    assert_eq!(s.response_header("content-length").unwrap(), s.response_body_now().len().to_string());
    assert_eq!(s.response_header("content-type").as_deref(), Some("application/json"));
}

#[test]
fn bad_config_is_refused_with_the_field_named() {
    let host = Host::new();
    let Err(HostError::Configure { log, .. }) =
        host.load(paths::wasm_path("diagnostics").unwrap(), json!({"trusted_cidrs": ["nope"]}))
    else {
        panic!("accepted a bad CIDR")
    };
    assert!(log.iter().any(|(l, m)| *l == 4 && m.contains("trusted_cidrs[0]")), "{log:?}");
}

#[test]
fn a_missing_wasm_says_how_to_build_it() {
    let Err(HostError::Missing(m)) = Host::new().load("/nonexistent/x.wasm", json!({})) else { panic!() };
    assert!(m.contains("cargo xtask build"), "{m}");
}
