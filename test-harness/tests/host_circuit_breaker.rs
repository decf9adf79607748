//! The circuit breaker under the deterministic host with two workers: one circuit per cluster,
//! shared exactly, with open time, probes and their expiry on the fake clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use test_harness::host::{Host, HttpStream, Plugin};
use test_harness::paths::wasm_path;

fn load(host: &Host, config: serde_json::Value) -> Plugin {
    host.load(wasm_path("circuit_breaker").unwrap(), config).unwrap()
}

/// Starts a request to `backend` on `worker`; `Err(status)` when the breaker refused it.
fn start(p: &Plugin, worker: usize) -> Result<HttpStream<'_>, u32> {
    let mut s = p.worker(worker).http_stream().property("xds.cluster_name", "backend");
    s.request_headers(&[(":path", "/"), (":method", "GET")], true).unwrap();
    match s.local_response() {
        Some(r) => Err(r.status),
        None => Ok(s),
    }
}

fn respond(mut s: HttpStream<'_>, status: u16) {
    s.set_property_u64("response.code", u64::from(status));
    s.set_property("response.code_details", "via_upstream");
    s.response_headers(&[(":status", &status.to_string())], true).unwrap();
    s.log().unwrap();
}

/// A full request; returns the status the client saw.
fn call(p: &Plugin, worker: usize, upstream_status: u16) -> u32 {
    match start(p, worker) {
        Ok(s) => {
            respond(s, upstream_status);
            u32::from(upstream_status)
        }
        Err(status) => status,
    }
}

#[test]
fn trips_after_exactly_n_failures_spread_over_both_workers_and_rejects_on_both() {
    let host = Host::new().workers(2);
    let p = load(&host, json!({"failure": {"consecutive": 4}, "open": {"base": "10s"}}));
    for i in 0..3 {
        assert_eq!(call(&p, i % 2, 503), 503);
    }
    assert_eq!(host.counter("upstream_guard.breaker.backend.opened"), 0, "3 of 4");
    assert_eq!(call(&p, 1, 503), 503);
    assert_eq!(host.counter("upstream_guard.breaker.backend.opened"), 1);
    assert_eq!(host.metric("upstream_guard.breaker.backend.state"), Some(1));
    for w in [0, 1] {
        let mut s = p.worker(w).http_stream().property("xds.cluster_name", "backend");
        s.request_headers(&[(":path", "/")], true).unwrap();
        let r = s.local_response().expect("refused on every worker");
        assert_eq!(r.status, 503);
        assert_eq!(r.details.as_deref(), Some("upstream_guard.circuit_open"));
        assert_eq!(r.header("x-upstream-guard-circuit"), Some("open"));
        assert_eq!(r.header("retry-after"), Some("10"));
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(body, "circuit open: retry after 10 s\n", "the body never names the cluster");
    }
}

#[test]
fn half_open_admits_exactly_max_probes_across_workers_then_closes() {
    let host = Host::new().workers(2);
    let p = load(
        &host,
        json!({"failure": {"consecutive": 1}, "open": {"base": "5s"},
                               "half_open": {"max_probes": 2, "successes_to_close": 2}}),
    );
    assert_eq!(call(&p, 0, 500), 500);
    host.clock().advance(Duration::from_secs(5));
    let a = start(&p, 0).expect("probe 1");
    let b = start(&p, 1).expect("probe 2, on the other worker");
    assert_eq!(start(&p, 0).err(), Some(503), "a third concurrent probe is refused");
    assert_eq!(start(&p, 1).err(), Some(503));
    respond(a, 200);
    assert_eq!(host.counter("upstream_guard.breaker.backend.closed"), 0, "one success of two: still half-open");
    let c = start(&p, 1).expect("the finished probe's slot is free again");
    assert_eq!(start(&p, 0).err(), Some(503), "two in flight again");
    respond(b, 200);
    respond(c, 200);
    assert_eq!(host.counter("upstream_guard.breaker.backend.closed"), 1);
    for w in [0, 1] {
        assert_eq!(call(&p, w, 200), 200, "closed on both workers");
    }
}

#[test]
fn a_failed_probe_reopens_with_exponential_open_time() {
    let host = Host::new().workers(2);
    let p = load(
        &host,
        json!({"failure": {"consecutive": 1}, "open": {"base": "1s", "max": "8s", "multiplier": 2},
                               "half_open": {"max_probes": 1, "successes_to_close": 1}}),
    );
    call(&p, 0, 503);
    let mut open_for = Vec::new();
    for round in 0..5 {
        let mut s = p.worker(round % 2).http_stream().property("xds.cluster_name", "backend");
        s.request_headers(&[(":path", "/")], true).unwrap();
        let secs: u64 = s.local_response().unwrap().header("retry-after").unwrap().parse().unwrap();
        open_for.push(secs);
        host.clock().advance(Duration::from_secs(secs));
        assert_eq!(call(&p, (round + 1) % 2, 503), 503, "the probe fails");
    }
    assert_eq!(open_for, [1, 2, 4, 8, 8]);
    // Recovery: the next probe succeeds and closes; the following trip starts at base again.
    host.clock().advance(Duration::from_secs(8));
    assert_eq!(call(&p, 0, 200), 200);
    call(&p, 1, 503);
    let mut s = p.worker(0).http_stream().property("xds.cluster_name", "backend");
    s.request_headers(&[(":path", "/")], true).unwrap();
    assert_eq!(s.local_response().unwrap().header("retry-after"), Some("1"), "a clean close resets the backoff");
}

#[test]
fn a_probe_whose_client_vanished_frees_its_slot_and_an_unreported_one_expires() {
    let host = Host::new().workers(2);
    let p = load(
        &host,
        json!({"failure": {"consecutive": 1}, "open": {"base": "1s"},
                               "half_open": {"max_probes": 1, "successes_to_close": 1, "probe_timeout": "10s"}}),
    );
    call(&p, 0, 503);
    host.clock().advance(Duration::from_secs(1));
    // The client goes away before any response: the stream is logged without one.
    let mut gone = start(&p, 0).unwrap();
    gone.log().unwrap();
    drop(gone);
    let lost = start(&p, 1).expect("the abandoned probe gave its slot back");
    assert!(start(&p, 0).is_err());
    std::mem::forget(lost); // never reports back at all
    host.clock().advance(Duration::from_secs(10));
    assert!(start(&p, 0).is_ok(), "the silent probe expired");
}

#[test]
fn our_own_local_replies_and_routing_errors_never_count() {
    let host = Host::new();
    let p = load(&host, json!({"failure": {"consecutive": 1}}));
    let mut s = start(&p, 0).unwrap();
    s.set_property_u64("response.code", 429);
    s.set_property("response.code_details", "upstream_guard.rate_limited");
    s.response_headers(&[(":status", "503")], true).unwrap();
    let mut s = start(&p, 0).unwrap();
    s.set_property_u64("response.code", 404);
    s.set_property_u64("response.flags", 0x100);
    s.response_headers(&[(":status", "404")], true).unwrap();
    assert_eq!(call(&p, 0, 200), 200);
    assert_eq!(host.counter("upstream_guard.breaker.backend.opened"), 0);
}

#[test]
fn connection_failures_count_through_response_flags() {
    let host = Host::new();
    let p = load(&host, json!({"failure": {"consecutive": 2}}));
    for _ in 0..2 {
        let mut s = start(&p, 0).unwrap();
        s.set_property_u64("response.code", 503);
        s.set_property_u64("response.flags", 0x20);
        s.response_headers(&[(":status", "503")], true).unwrap();
    }
    assert!(start(&p, 0).is_err());
}
