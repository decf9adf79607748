//! gRPC through the host, with the SDK-built conformance filter: unary calls answered, failed
//! and timed out on the fake clock, streams with metadata, messages, trailers and close,
//! cancellation, the service argument in both forms, and gRPC local replies. The outcomes
//! follow Envoy 1.40 as measured (callbacks on the root context; a unary success delivers only
//! the message, a failure only the close).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use test_harness::host::{grpc_status, Action, GrpcKind, Host, HostError, Plugin, GRPC_TIMEOUT_MESSAGE};
use test_harness::paths::wasm_path;

fn load(host: &Host) -> Plugin {
    host.load(wasm_path("conformance").unwrap(), json!({})).unwrap()
}

#[test]
fn a_unary_call_is_visible_and_its_answer_resumes_the_request() {
    let host = Host::new().clusters(&["authz"]);
    let p = load(&host);
    let w = p.worker(0);
    let mut s = w.http_stream();
    assert_eq!(s.request_headers(&[(":path", "/"), ("x-op", "grpc-call")], true).unwrap(), Action::Pause);
    let calls = w.pending_grpc_calls();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(
        (c.kind, c.service.as_slice(), c.cluster.as_str(), c.service_name.as_str(), c.method.as_str(), c.message()),
        (GrpcKind::Unary, &b"authz"[..], "authz", "pkg.Auth", "Check", &b"req"[..])
    );
    assert_eq!((c.metadata("x-md"), c.metadata("x-md-bin")), (Some(&b"v"[..]), Some(&[0u8, 1, 255][..])));
    assert_eq!((c.timeout, c.token % 2), (Some(Duration::from_millis(500)), 1), "unary tokens are odd, as in Envoy");
    w.reset_host_calls();
    w.respond_grpc_call(c.token, b"allowed").unwrap();
    assert_eq!(s.request_header("x-conf-grpc").as_deref(), Some("ok allowed"));
    assert_eq!(s.continued(), 1);
    assert!(w.pending_grpc_calls().is_empty());
    assert_eq!(w.host_calls().calls("proxy_get_status"), 0, "a success delivers no close");
}

#[test]
fn a_failed_call_reports_its_status_and_message() {
    let host = Host::new();
    let p = load(&host);
    let w = p.worker(0);
    let mut s = w.http_stream();
    s.request_headers(&[(":path", "/"), ("x-op", "grpc-call")], true).unwrap();
    let token = w.pending_grpc_calls()[0].token;
    w.fail_grpc_call(token, grpc_status::PERMISSION_DENIED, "not you").unwrap();
    assert_eq!(s.request_header("x-conf-grpc").as_deref(), Some("status 7 7 not you"));
    assert!(w.respond_grpc_call(token, b"late").is_err(), "the call is over");
}

#[test]
fn a_call_times_out_on_the_fake_clock_as_envoy_reports_it() {
    let host = Host::new();
    let p = load(&host);
    let w = p.worker(0);
    let mut s = w.http_stream();
    s.request_headers(&[(":path", "/"), ("x-op", "grpc-call")], true).unwrap();
    host.clock().advance(Duration::from_millis(499));
    w.tick().unwrap();
    assert_eq!(w.pending_grpc_calls().len(), 1, "not yet");
    host.clock().advance(Duration::from_millis(1));
    w.tick().unwrap();
    let expected = format!("status 14 14 {}", String::from_utf8_lossy(GRPC_TIMEOUT_MESSAGE));
    assert_eq!(s.request_header("x-conf-grpc"), Some(expected));
}

#[test]
fn the_service_may_be_a_grpc_service_proto_and_unknown_clusters_fail_as_in_envoy() {
    let host = Host::new().clusters(&["authz"]);
    let p = load(&host);
    let w = p.worker(0);
    let mut s = w.http_stream();
    s.request_headers(&[(":path", "/"), ("x-op", "grpc-call-proto")], true).unwrap();
    let c = w.pending_grpc_calls().remove(0);
    assert_eq!((c.cluster.as_str(), c.service.len()), ("authz", 9), "the proto is kept as bytes");
    let mut t = w.http_stream();
    assert_eq!(t.request_headers(&[(":path", "/"), ("x-op", "grpc-call-unknown")], true).unwrap(), Action::Continue);
    assert_eq!(t.request_header("x-conf-grpc").as_deref(), Some("dispatch failed: ParseFailure"));
    let open = Host::new();
    let q = load(&open);
    q.worker(0).http_stream().request_headers(&[(":path", "/"), ("x-op", "grpc-call-unknown")], true).unwrap();
    assert_eq!(q.worker(0).pending_grpc_calls()[0].cluster, "nope", "without a cluster list every name is accepted");
}

#[test]
fn a_stream_carries_metadata_messages_both_ways_trailers_and_close() {
    let host = Host::new();
    let p = load(&host);
    let w = p.worker(0);
    let mut s = w.http_stream();
    assert_eq!(s.request_headers(&[(":path", "/"), ("x-op", "grpc-stream")], true).unwrap(), Action::Pause);
    let c = w.pending_grpc_calls().remove(0);
    assert_eq!((c.kind, c.token % 2, c.messages.clone()), (GrpcKind::Stream, 0, vec![b"first".to_vec()]));
    assert_eq!((c.service_name.as_str(), c.method.as_str(), c.timeout), ("pkg.Watch", "Watch", None));
    w.grpc_stream_initial_metadata(c.token, &[("x-init", "1")]).unwrap();
    w.grpc_stream_message(c.token, b"hello").unwrap();
    assert_eq!(w.pending_grpc_calls()[0].messages, [b"first".to_vec(), b"ack hello".to_vec()]);
    w.grpc_stream_message(c.token, b"bye").unwrap();
    assert!(w.pending_grpc_calls()[0].local_closed, "the filter half-closed");
    w.grpc_stream_trailing_metadata(c.token, &[("grpc-status", "0"), ("x-t", "1")]).unwrap();
    w.close_grpc_stream(c.token, grpc_status::OK, "").unwrap();
    assert_eq!(s.request_header("x-conf-grpc").as_deref(), Some("closed 0 "));
    let logs = w.logs_at_least(test_harness::host::level::INFO);
    for line in
        ["stream initial 1 x-init=1", "stream message hello", "stream message bye", "stream trailing 2 grpc-status,x-t"]
    {
        assert!(logs.iter().any(|l| l == line), "{line}: {logs:?}");
    }
    assert!(w.pending_grpc_calls().is_empty());
    assert!(matches!(w.grpc_stream_message(c.token, b"x"), Err(HostError::Usage(_))));
}

#[test]
fn a_cancelled_call_gets_no_callback() {
    let host = Host::new();
    let p = load(&host);
    let w = p.worker(0);
    let mut s = w.http_stream();
    assert_eq!(s.request_headers(&[(":path", "/"), ("x-op", "grpc-cancel")], true).unwrap(), Action::Continue);
    assert_eq!(s.request_header("x-conf-grpc").as_deref(), Some("cancelled"));
    assert!(w.pending_grpc_calls().is_empty());
}

#[test]
fn the_wrong_kind_of_answer_is_a_test_error() {
    let host = Host::new();
    let p = load(&host);
    let w = p.worker(0);
    let mut s = w.http_stream();
    s.request_headers(&[(":path", "/"), ("x-op", "grpc-stream")], true).unwrap();
    let token = w.pending_grpc_calls()[0].token;
    assert!(matches!(w.respond_grpc_call(token, b"x"), Err(HostError::Usage(_))), "a stream is not a unary call");
}

#[test]
fn a_grpc_local_reply_keeps_its_grpc_status() {
    let host = Host::new();
    let p = load(&host);
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[(":path", "/"), ("x-op", "grpc-reply")], true).unwrap();
    let r = s.local_response().unwrap();
    assert_eq!((r.status, r.grpc_status, r.body.as_slice()), (200, Some(7), &b"denied"[..]));
    let mut t = p.worker(0).http_stream();
    t.request_headers(&[(":path", "/"), ("x-op", "reply")], true).unwrap();
    assert_eq!(t.local_response().unwrap().grpc_status, None, "the SDK passes -1 for plain HTTP replies");
}
