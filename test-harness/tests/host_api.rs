//! The host's test-facing extras with the SDK-built conformance filter: header bytes carried
//! exactly, foreign functions registered by the test, and host-call accounting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use test_harness::host::{Host, HostError, Plugin, Status};
use test_harness::paths::wasm_path;

fn load(host: &Host) -> Plugin {
    host.load(wasm_path("conformance").unwrap(), json!({})).unwrap()
}

#[test]
fn header_bytes_travel_exactly() {
    let host = Host::new();
    let p = load(&host);
    let mut s = p.worker(0).http_stream();
    let latin1: &[u8] = b"caf\xe9 \x80";
    s.request_headers_bytes(&[(b":path", b"/"), (b"x-op", b"bytes"), (b"x-bin", latin1)], true).unwrap();
    assert_eq!(s.request_header_bytes(b"x-conf-bin").as_deref(), Some(latin1));
    assert_eq!(s.request_header("x-conf-bin-len").as_deref(), Some("6"));
    assert_eq!(s.request_headers_now_bytes()[2], (b"x-bin".to_vec(), latin1.to_vec()));
}

#[test]
fn a_header_that_is_not_utf8_breaks_the_sdk_string_getters_as_in_envoy() {
    let host = Host::new();
    let p = load(&host);
    let mut s = p.worker(0).http_stream();
    let r = s.request_headers_bytes(&[(b":path", b"/"), (b"x-bin", b"\xff")], true);
    let Err(HostError::Trap { message, .. }) = r else { panic!("the SDK's String conversion did not fail: {r:?}") };
    assert!(message.contains("Utf8"), "{message}");
}

#[test]
fn foreign_functions_come_from_the_test() {
    let host = Host::new();
    host.foreign_function("echo", |args| Ok(args.iter().rev().copied().collect()));
    let p = load(&host);
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[(":path", "/"), ("x-op", "foreign-echo"), ("x-arg", "abc")], true).unwrap();
    assert_eq!(s.request_header("x-conf-foreign").as_deref(), Some("cba"));

    let refusing = Host::new();
    refusing.foreign_function("echo", |_| Err(Status::BadArgument));
    let q = load(&refusing);
    let mut t = q.worker(0).http_stream();
    t.request_headers(&[(":path", "/"), ("x-op", "foreign-echo")], true).unwrap();
    assert_eq!(t.request_header("x-conf-foreign").as_deref(), Some("BadArgument"));

    let unregistered = Host::new();
    let r = load(&unregistered);
    let mut u = r.worker(0).http_stream();
    u.request_headers(&[(":path", "/"), ("x-op", "foreign-echo")], true).unwrap();
    assert_eq!(u.request_header("x-conf-foreign").as_deref(), Some("NotFound"));
}

#[test]
fn host_calls_and_allocations_are_counted_per_worker() {
    let host = Host::new().workers(2);
    let p = load(&host);
    let (w0, w1) = (p.worker(0), p.worker(1));
    w0.reset_host_calls();
    w1.reset_host_calls();
    let mut s = w0.http_stream();
    s.request_headers(&[(":path", "/"), ("x-op", "shared")], true).unwrap();
    let calls = w0.host_calls();
    assert_eq!(
        (
            calls.calls("proxy_get_shared_data"),
            calls.calls("proxy_set_shared_data"),
            calls.calls("proxy_get_header_map_pairs")
        ),
        (1, 1, 1)
    );
    // Copied into the guest: the value of x-op twice ("shared", read as bytes then as text),
    // the header pairs (40 bytes) and the property "stored"; the missing properties and the
    // missing key allocate nothing.
    assert_eq!((calls.allocations, calls.allocated_bytes), (4, 6 + 40 + 6 + 6));
    assert!(calls.memory_bytes >= 65536 && calls.memory_bytes % 65536 == 0, "{}", calls.memory_bytes);
    assert_eq!(w1.host_calls().total(), 0, "the other worker made none");
    w0.reset_host_calls();
    assert_eq!((w0.host_calls().total(), w0.host_calls().allocations), (0, 0));
}

#[test]
fn host_wide_properties_are_seen_unless_the_stream_has_its_own() {
    let host = Host::new();
    host.property("source.address", "10.9.9.9:1");
    let p = load(&host);
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[(":path", "/")], true).unwrap();
    assert_eq!(s.request_header("x-conf-source").as_deref(), Some("10.9.9.9:1"));
    let mut t = p.worker(0).http_stream().property_bytes("source.address", b"10.0.0.1:2");
    t.request_headers(&[(":path", "/")], true).unwrap();
    assert_eq!(t.request_header("x-conf-source").as_deref(), Some("10.0.0.1:2"));
    assert_eq!(t.property_value("conf.set").as_deref(), Some(&b"stored"[..]), "what the filter set, as bytes");
}
