//! The circuit breaker in real Envoy: a failing backend trips it (fast 503s, diagnosed as
//! `circuit_open`), a backend that answers 200 but late trips it on slow calls (diagnosed as
//! `upstream_slow`), recovery closes it, and the state is shared by both workers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::backend::{Backend, Behavior};
use test_harness::bootstrap::{cluster, module_filter, module_name, route, Bootstrap, Shape};
use test_harness::envoy::{self, Envoy};
use test_harness::{http, parse_diagnosis};

fn breaker(shape: Shape, config: Value) -> Value {
    module_filter(shape, "circuit_breaker", &config)
}

fn diagnostics(shape: Shape) -> Value {
    module_filter(shape, "diagnostics", &json!({}))
}

fn envoy_with(filters: Vec<Value>, backend: &Backend, concurrency: u32) -> Envoy {
    let mut b = Bootstrap::new();
    for f in filters {
        b = b.filter(f);
    }
    let cfg = b.route(route("/", "backend")).cluster(cluster("backend", backend.addr())).build();
    Envoy::start_with(&cfg, concurrency).unwrap()
}

fn failing_backend_trips_the_breaker_and_recovery_closes_it(shape: Shape) {
    let b = Backend::start(Behavior::Status(503)).unwrap();
    let cfg = json!({"failure": {"consecutive": 3}, "open": {"base": "1s", "max": "10s"},
                     "half_open": {"max_probes": 1, "successes_to_close": 2}});
    let envoy = envoy_with(vec![diagnostics(shape), breaker(shape, cfg)], &b, 2);
    let addr = envoy.main().unwrap();

    // Sequential requests on fresh connections land on both workers: the count is shared.
    for _ in 0..3 {
        assert_eq!(http::get(addr, "/", &[]).unwrap().status, 503);
    }
    for _ in 0..10 {
        let started = Instant::now();
        let r = http::get(addr, "/", &[]).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-upstream-guard-circuit"), Some("open"));
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert_eq!(retry, 1);
        let d = parse_diagnosis(r.header("x-upstream-diagnosis").unwrap()).unwrap();
        assert_eq!(d["cause"], "circuit_open");
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    assert_eq!(b.requests(), 3, "after 3 failures nothing more reached the backend, on either worker");
    assert_eq!(envoy.stat("upstream_guard.breaker.backend.opened").unwrap(), Some(1));
    assert_eq!(envoy.stat("upstream_guard.breaker.backend.state").unwrap(), Some(1));

    b.set(Behavior::Status(200));
    std::thread::sleep(Duration::from_millis(1100));
    // Half-open: probes go through one at a time; two successes close the circuit.
    assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
    assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
    for _ in 0..5 {
        assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
    }
    assert_eq!(b.requests(), 3 + 7);
    assert_eq!(envoy.stat("upstream_guard.breaker.backend.closed").unwrap(), Some(1));
    assert_eq!(envoy.stat("upstream_guard.breaker.backend.state").unwrap(), Some(0));
}

fn a_failed_probe_reopens_for_longer(shape: Shape) {
    let b = Backend::start(Behavior::Status(500)).unwrap();
    let cfg = json!({"failure": {"consecutive": 1}, "open": {"base": "1s", "multiplier": 3, "max": "30s"},
                     "half_open": {"max_probes": 1, "successes_to_close": 1}});
    let envoy = envoy_with(vec![breaker(shape, cfg)], &b, 1);
    let addr = envoy.main().unwrap();
    assert_eq!(http::get(addr, "/", &[]).unwrap().status, 500);
    assert_eq!(http::get(addr, "/", &[]).unwrap().header("retry-after"), Some("1"));
    std::thread::sleep(Duration::from_millis(1100));
    // The probe fails: open again, now for 3 s.
    assert_eq!(http::get(addr, "/", &[]).unwrap().status, 500);
    let r = http::get(addr, "/", &[]).unwrap();
    assert_eq!(r.header("x-upstream-guard-circuit"), Some("open"));
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(b.requests(), 2);
}

fn connection_failures_count_and_other_clusters_are_unaffected(shape: Shape) {
    let dead = test_harness::backend::closed_port().unwrap();
    let ok = Backend::ok().unwrap();
    let cfg = Bootstrap::new()
        .filter(breaker(shape, json!({"failure": {"consecutive": 2}, "open": {"base": "30s"}})))
        .route(route("/dead", "dead"))
        .route(route("/", "ok"))
        .cluster(cluster("dead", dead))
        .cluster(cluster("ok", ok.addr()))
        .build();
    let envoy = Envoy::start(&cfg).unwrap();
    let addr = envoy.main().unwrap();
    for _ in 0..2 {
        let r = http::get(addr, "/dead", &[]).unwrap();
        assert_eq!((r.status, r.header("x-upstream-guard-circuit")), (503, None), "UF, from Envoy");
    }
    assert_eq!(http::get(addr, "/dead", &[]).unwrap().header("x-upstream-guard-circuit"), Some("open"));
    assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200, "the healthy cluster has its own breaker");
    assert_eq!(envoy.stat("upstream_guard.breaker.dead.rejected").unwrap(), Some(1));
}

fn invalid_config_is_refused_by_envoy_with_the_field_named(shape: Shape) {
    let b = Backend::ok().unwrap();
    for (cfg, field) in [
        (json!({"failure": {"ratio": {"threshold": 2.0}}}), "failure.ratio.threshold"),
        (json!({"half_open": {"max_probes": 0}}), "half_open.max_probes"),
        (json!({"open": {"base": "10s", "max": "1s"}}), "open.max"),
    ] {
        let c = Bootstrap::new()
            .filter(breaker(shape, cfg))
            .route(route("/", "backend"))
            .cluster(cluster("backend", b.addr()))
            .build();
        let log = envoy::expect_refused(&c).unwrap();
        assert!(
            log.contains(&format!("{}: invalid plugin configuration", module_name(shape, "circuit_breaker")))
                && log.contains(field),
            "{field}:\n{log}"
        );
    }
}

/// A backend that still answers 200, only 300 ms late, against a 150 ms threshold: after three
/// slow calls (all of the window, over `min_requests`) the circuit opens, and the refusal is
/// diagnosed as a slow upstream; once the backend answers at once again, a probe closes it.
fn late_200s_trip_the_breaker_on_slow_calls_and_the_diagnosis_says_slow(shape: Shape) {
    let b = Backend::start(Behavior::Delay(Duration::from_millis(300), 200)).unwrap();
    let cfg = json!({"failure": {"consecutive": 100,
                                 "slow": {"after": "150ms", "threshold": 0.5, "min_requests": 3, "window": "30s"}},
                     "open": {"base": "1s"}, "half_open": {"max_probes": 1, "successes_to_close": 1}});
    let envoy = envoy_with(vec![diagnostics(shape), breaker(shape, cfg)], &b, 2);
    let addr = envoy.main().unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200, "a slow call is still answered");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
    // Three slow calls open it, or up to five when they straddle the start of a fixed window
    // (the sliding window weighs the previous one by its overlap).
    let r = (0..3)
        .map(|_| http::get(addr, "/", &[]).unwrap())
        .find(|r| r.status != 200)
        .expect("the circuit opened within five slow calls");
    let slow = b.requests();
    assert!((3..=5).contains(&slow), "{slow}");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-upstream-guard-circuit"), Some("open"));
    assert!(r.header("retry-after").is_some());
    let d = parse_diagnosis(r.header("x-upstream-diagnosis").unwrap()).unwrap();
    assert_eq!(d["cause"], "upstream_slow", "{d:?}");
    assert!(String::from_utf8_lossy(&r.body).contains("upstream slow"), "{r:?}");
    assert_eq!(envoy.stat("upstream_guard.breaker.backend.slow").unwrap(), Some(slow));
    assert_eq!(envoy.stat("upstream_guard.breaker.backend.failures").unwrap_or(Some(0)).unwrap_or(0), 0);
    assert_eq!(envoy.stat("upstream_guard.breaker.backend.opened").unwrap(), Some(1));
    assert!(envoy.log().contains("slow calls: the upstream answers too late"), "{}", envoy.log());

    b.set(Behavior::Status(200));
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200, "a fast probe closes the circuit");
    assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
    assert_eq!(envoy.stat("upstream_guard.breaker.backend.closed").unwrap(), Some(1));
}

test_harness::both_shapes!(
    failing_backend_trips_the_breaker_and_recovery_closes_it,
    late_200s_trip_the_breaker_on_slow_calls_and_the_diagnosis_says_slow,
    a_failed_probe_reopens_for_longer,
    connection_failures_count_and_other_clusters_are_unaffected,
    invalid_config_is_refused_by_envoy_with_the_field_named,
);
