//! The host, checked with a filter that calls every host function (`test-harness/conformance`),
//! built with the proxy-wasm Rust SDK and run unmodified.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use test_harness::host::{level, Action, Host, HostError, LoadOptions, Plugin};
use test_harness::paths::wasm_path;

fn load(host: &Host) -> Plugin {
    host.load(wasm_path("conformance").unwrap(), json!({"any": "config"})).unwrap()
}

#[test]
fn headers_properties_and_time() {
    let host = Host::new();
    host.clock().set_nanos(1_000_000_123);
    let p = load(&host);
    let mut s =
        p.worker(0).http_stream().property("source.address", "10.0.0.1:5555").property_u64("response.code", 418);
    let a = s
        .request_headers(
            &[(":path", "/"), ("x-conf-replace", "old"), ("x-conf-remove", "gone"), ("X-Mixed", "v")],
            false,
        )
        .unwrap();
    assert_eq!(a, Action::Continue);
    let h = |k: &str| s.request_header(k);
    assert_eq!(h("x-conf-count").as_deref(), Some("4/4"));
    assert_eq!(h("x-conf-replace").as_deref(), Some("replaced"));
    assert_eq!(h("x-conf-remove"), None);
    assert_eq!(h("x-conf-source").as_deref(), Some("10.0.0.1:5555"));
    assert_eq!(h("x-conf-code").as_deref(), Some("Some(418)"), "integers are 8-byte little-endian");
    assert_eq!(h("x-conf-time").as_deref(), Some("1000000123"), "the fake clock");
    assert_eq!(h("x-conf-property").as_deref(), Some("stored"), "set_property then get_property");
}

#[test]
fn bodies_and_response_headers() {
    let host = Host::new();
    let p = load(&host);
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[(":path", "/")], false).unwrap();
    assert_eq!(s.request_body(b"abc", false).unwrap(), Action::Pause);
    assert_eq!(s.request_body(b"def", true).unwrap(), Action::Continue);
    s.response_headers(&[(":status", "200"), ("server", "x"), ("x-uppercase", "1")], false).unwrap();
    assert_eq!(
        s.response_headers_now(),
        vec![
            (":status".to_string(), "200".to_string()),
            ("x-uppercase".into(), "1".into()),
            ("x-conf-response".into(), "seen".into())
        ]
    );
    assert_eq!(s.response_body(b"hello ", false).unwrap(), Action::Pause);
    assert_eq!(s.response_body(b"world", true).unwrap(), Action::Continue);
    assert_eq!(s.response_body_now(), b"HELLO WORLD");
}

#[test]
fn local_response_without_details() {
    let host = Host::new();
    let p = load(&host);
    let mut s = p.worker(0).http_stream();
    assert_eq!(s.request_headers(&[(":path", "/"), ("x-op", "reply")], true).unwrap(), Action::Pause);
    let r = s.local_response().unwrap();
    assert_eq!(
        (r.status, r.body.as_slice(), r.header("x-conf"), r.details.as_deref()),
        (429, &b"slow down"[..], Some("local"), None)
    );
}

#[test]
fn http_callouts_answered_failed_and_refused() {
    let host = Host::new().clusters(&["upstream"]);
    let p = load(&host);
    let w = p.worker(0);
    let mut s = w.http_stream();
    assert_eq!(s.request_headers(&[(":path", "/"), ("x-op", "call")], true).unwrap(), Action::Pause);
    let calls = w.pending_http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].cluster.as_str(), calls[0].body.as_slice(), calls[0].timeout),
        ("upstream", &b"ping"[..], Duration::from_millis(500))
    );
    w.respond_http_call(calls[0].token, 200, &[("x-a", "b")], b"pong").unwrap();
    assert_eq!(s.request_header("x-conf-call").as_deref(), Some("200 pong"));
    assert_eq!(s.continued(), 1, "the filter resumed the request");

    let mut t = w.http_stream();
    t.request_headers(&[(":path", "/"), ("x-op", "call")], true).unwrap();
    host.clock().advance(Duration::from_millis(500));
    w.tick().unwrap();
    assert_eq!(t.request_header("x-conf-call").as_deref(), Some("none "), "a timed-out callout has no headers");

    let mut u = w.http_stream();
    u.request_headers(&[(":path", "/"), ("x-op", "call-bad")], true).unwrap();
    assert_eq!(
        u.request_header("x-conf-call").as_deref(),
        Some("Some(BadArgument)"),
        "required pseudo-headers missing"
    );
    assert!(w.respond_http_call(99, 200, &[], b"").is_err(), "unknown tokens are a test error");
}

#[test]
fn shared_data_race_between_two_workers_on_a_missing_key() {
    let host = Host::new().workers(2);
    let p = load(&host);
    host.interfere_with_shared_data(1);
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[(":path", "/"), ("x-op", "shared")], true).unwrap();
    assert_eq!(s.request_header("x-conf-shared").as_deref(), Some("1 Ok(())"));
    assert_eq!(host.shared_data_ops().2, 1, "the first create lost to the other worker and retried");
    let mut t = p.worker(1).http_stream();
    t.request_headers(&[(":path", "/"), ("x-op", "shared")], true).unwrap();
    assert_eq!(t.request_header("x-conf-shared").as_deref(), Some("2 Ok(())"), "worker 1 sees worker 0's write");
    let (value, cas) = host.shared_data("conformance", "conf.counter").unwrap();
    assert_eq!((u64::from_le_bytes(value.try_into().unwrap()), cas > 0), (2, true));
}

#[test]
fn foreign_functions_metrics_ticks_and_queues() {
    let host = Host::new().workers(2);
    let p = load(&host);
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[(":path", "/"), ("x-op", "foreign")], true).unwrap();
    assert_eq!(s.request_header("x-conf-foreign").as_deref(), Some("true Some(NotFound)"));
    assert!(s.route_cache_cleared());
    let mut m = p.worker(1).http_stream();
    m.request_headers(&[(":path", "/"), ("x-op", "metrics")], true).unwrap();
    assert_eq!(m.request_header("x-conf-gauge").as_deref(), Some("42"));
    assert_eq!(host.metric("conf.hist"), Some(7));
    assert_eq!(p.worker(0).tick_period(), Duration::from_millis(100));
    p.tick_all().unwrap();
    p.tick_all().unwrap();
    assert_eq!(host.counter("conf.ticks"), 4, "on_tick runs in every worker");
    p.worker(0).queue_ready(1).unwrap();
    let dequeued: Vec<String> =
        p.worker(0).logs().into_iter().filter(|(_, m)| m.starts_with("dequeued")).map(|(_, m)| m).collect();
    assert_eq!(dequeued, ["dequeued tick 1", "dequeued tick 1", "dequeued tick 2", "dequeued tick 2"]);
}

#[test]
fn logs_by_level_and_stdout() {
    let host = Host::new();
    let p = load(&host);
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[(":path", "/"), ("x-op", "log")], true).unwrap();
    let logs = p.worker(0).logs();
    for (lvl, msg) in
        [(level::TRACE, "t"), (level::DEBUG, "d"), (level::WARN, "w"), (level::ERROR, "e"), (level::INFO, "to stdout")]
    {
        assert!(logs.contains(&(lvl, msg.to_string())), "{lvl} {msg}: {logs:?}");
    }
    assert_eq!(p.worker(0).logs_at_least(level::ERROR), ["e"]);
}

#[test]
fn a_panic_surfaces_as_a_trap_with_the_message_and_the_log() {
    let host = Host::new();
    let p = load(&host);
    let mut s = p.worker(0).http_stream();
    let Err(HostError::Trap { message, log }) = s.request_headers(&[(":path", "/"), ("x-op", "panic")], true) else {
        panic!("no trap")
    };
    assert!(message.contains("conformance panic requested by stream 2"), "{message}");
    assert!(!log.is_empty());
}

#[test]
fn configuration_refusal_and_vm_config() {
    let host = Host::new();
    let opts = LoadOptions {
        plugin_config: b"\"refuse\"".to_vec(),
        vm_config: b"vm!".to_vec(),
        vm_id: "c".into(),
        root_id: "c".into(),
    };
    let Err(HostError::Configure { log, .. }) = host.load_with(wasm_path("conformance").unwrap(), opts) else {
        panic!("accepted")
    };
    assert!(log.contains(&(level::INFO, "vm config: vm!".to_string())), "{log:?}");
    assert!(log.contains(&(level::ERROR, "refusing configuration".to_string())));
}

#[test]
fn proxy_done_is_recorded() {
    let host = Host::new();
    let p = load(&host);
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[(":path", "/"), ("x-op", "done")], true).unwrap();
    s.finish().unwrap();
    assert_eq!(p.worker(0).done_calls(), 1);
}
