//! The health router in real Envoy (two workers): failover when the primary dies, return after
//! it recovers, fail-fast with reasons when everything is down, passive ejection, the status
//! endpoint, and clients that try to pick the upstream themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::backend::{Backend, Behavior};
use test_harness::bootstrap::{cluster, module_filter, module_name, Bootstrap, Shape};
use test_harness::envoy::{self, Envoy};
use test_harness::{eventually, http, parse_diagnosis};

fn router(shape: Shape, config: Value) -> Value {
    module_filter(shape, "health_router", &config)
}

fn check() -> Value {
    json!({"path": "/healthz", "interval": "200ms", "timeout": "100ms", "unhealthy_threshold": 2, "healthy_threshold": 2})
}

fn config(extra: Value) -> Value {
    let mut c = json!({"upstreams": [{"cluster": "primary", "health_check": check()},
                                     {"cluster": "secondary", "health_check": check()}],
                       "trusted_cidrs": ["127.0.0.1/32"], "status_path": "/.well-known/upstream-health"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn start(filters: Vec<Value>, primary: SocketAddr, secondary: SocketAddr) -> Envoy {
    let mut b = Bootstrap::new();
    for f in filters {
        b = b.filter(f);
    }
    let cfg = b
        .route(json!({"match": {"prefix": "/"}, "route": {"cluster_header": "x-upstream-cluster", "timeout": "2s"}}))
        .cluster(cluster("primary", primary))
        .cluster(cluster("secondary", secondary))
        .build();
    Envoy::start_with(&cfg, 2).unwrap()
}

fn traffic_fails_over_when_the_primary_dies_and_returns_when_it_recovers(shape: Shape) {
    let primary = Backend::ok().unwrap();
    let secondary = Backend::ok().unwrap();
    let envoy = start(vec![router(shape, config(json!({})))], primary.addr(), secondary.addr());
    let addr = envoy.main().unwrap();
    for _ in 0..10 {
        assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
    }
    assert_eq!((primary.requests(), secondary.requests()), (10, 0), "failover strategy: primary first");

    primary.kill();
    let killed_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || http::get(addr, "/", &[]).unwrap().status == 200
            && secondary.requests() > 0),
        "traffic never moved to the secondary:\n{}",
        envoy.log()
    );
    println!("failover after {:?}", killed_at.elapsed());
    let before = secondary.requests();
    for _ in 0..10 {
        assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
    }
    assert_eq!(secondary.requests(), before + 10, "every request now goes to the secondary");

    primary.revive().unwrap();
    let p0 = primary.requests();
    assert!(
        eventually(Duration::from_secs(5), || {
            http::get(addr, "/", &[]).unwrap();
            primary.requests() > p0
        }),
        "traffic never returned to the primary"
    );
    assert!(primary.health_checks() > 0);
}

fn both_down_fails_fast_with_every_upstreams_reason(shape: Shape) {
    let primary = Backend::ok().unwrap();
    let secondary = Backend::ok().unwrap();
    let diag = module_filter(shape, "diagnostics", &json!({}));
    let envoy = start(vec![diag, router(shape, config(json!({})))], primary.addr(), secondary.addr());
    let addr = envoy.main().unwrap();
    primary.set_healthy(false);
    secondary.kill();
    let mut last = None;
    assert!(eventually(Duration::from_secs(5), || {
        let r = http::get(addr, "/", &[]).unwrap();
        let done = r.status == 503 && r.header("content-type") == Some("application/json");
        last = Some(r);
        done
    }));
    let r = last.unwrap();
    let started = Instant::now();
    let again = http::get(addr, "/", &[]).unwrap();
    assert!(started.elapsed() < Duration::from_millis(200), "fail-fast does not wait on any upstream");
    assert_eq!(again.status, 503);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    let ups = body["upstreams"].as_array().unwrap();
    assert_eq!(ups[0]["cluster"], "primary");
    assert!(ups[0]["reason"].as_str().unwrap().contains("HTTP 503"), "{body}");
    assert_eq!(ups[1]["cluster"], "secondary");
    assert!(ups[1]["reason"].as_str().unwrap().contains("no response"), "{body}");
    let d = parse_diagnosis(r.header("x-upstream-diagnosis").unwrap()).unwrap();
    assert_eq!(d["cause"], "no_healthy_upstream");
    assert_eq!(envoy.stat("upstream_guard.health.primary.healthy").unwrap(), Some(0));
}

fn passive_failures_eject_the_primary_before_any_active_check_notices(shape: Shape) {
    let primary = Backend::start(Behavior::Status(503)).unwrap();
    let secondary = Backend::ok().unwrap();
    let cfg = config(json!({"passive": {"consecutive_failures": 3, "ejection": "30s"}}));
    let envoy = start(vec![router(shape, cfg)], primary.addr(), secondary.addr());
    let addr = envoy.main().unwrap();
    let statuses: Vec<u16> = (0..8).map(|_| http::get(addr, "/", &[]).unwrap().status).collect();
    assert_eq!(statuses, [503, 503, 503, 200, 200, 200, 200, 200], "the health path still passes: passive did it");
    assert_eq!(primary.requests(), 3);
    assert_eq!(envoy.stat("upstream_guard.health.primary.ejections").unwrap(), Some(1));
}

fn clients_cannot_choose_the_upstream(shape: Shape) {
    let primary = Backend::ok().unwrap();
    let secondary = Backend::ok().unwrap();
    let envoy = start(vec![router(shape, config(json!({})))], primary.addr(), secondary.addr());
    let addr = envoy.main().unwrap();
    for _ in 0..5 {
        assert_eq!(http::get(addr, "/", &[("x-upstream-cluster", "secondary")]).unwrap().status, 200);
    }
    assert_eq!((primary.requests(), secondary.requests()), (5, 0));
}

fn status_endpoint_reports_state_to_trusted_clients_and_unknown_clusters_do_not_crash(shape: Shape) {
    let primary = Backend::ok().unwrap();
    let secondary = Backend::ok().unwrap();
    let cfg = json!({"upstreams": [{"cluster": "primary", "health_check": check()},
                                   {"cluster": "nonexistent", "health_check": check()}],
                     "trusted_cidrs": ["127.0.0.1/32"], "status_path": "/.well-known/upstream-health"});
    let envoy = start(vec![router(shape, cfg)], primary.addr(), secondary.addr());
    let addr = envoy.main().unwrap();
    let mut body = Value::Null;
    assert!(eventually(Duration::from_secs(5), || {
        let r = http::get(addr, "/.well-known/upstream-health", &[]).unwrap();
        assert_eq!(r.status, 200);
        body = serde_json::from_slice(&r.body).unwrap();
        body["upstreams"][1]["last_check"].as_str().is_some()
    }));
    assert_eq!(body["upstreams"][0]["cluster"], "primary");
    assert_eq!(body["upstreams"][0]["healthy"], true);
    assert!(body["upstreams"][0]["last_check"].as_str().unwrap().starts_with("passed"), "{body}");
    // A cluster Envoy does not have is a configuration error, said as such, not a down upstream.
    assert!(body["upstreams"][1]["last_check"].as_str().unwrap().contains("no cluster"), "{body}");
    assert_eq!(body["upstreams"][1]["healthy"], true, "{body}");
    assert!(envoy.stat("upstream_guard.health.nonexistent.checks_unsent").unwrap().unwrap_or(0) >= 1);
    assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200, "traffic still flows to the healthy one");
}

fn status_endpoint_is_not_answered_for_untrusted_clients(shape: Shape) {
    let primary = Backend::ok().unwrap();
    let secondary = Backend::ok().unwrap();
    let cfg = config(json!({"trusted_cidrs": ["10.0.0.0/8"]}));
    let envoy = start(vec![router(shape, cfg)], primary.addr(), secondary.addr());
    let r = http::get(envoy.main().unwrap(), "/.well-known/upstream-health", &[]).unwrap();
    assert_ne!(r.header("content-type"), Some("application/json"));
    assert_eq!(primary.requests(), 1, "the request went upstream like any other");
}

fn invalid_config_is_refused_by_envoy_with_the_field_named(shape: Shape) {
    let b = Backend::ok().unwrap();
    for (cfg, field) in [
        (json!({"upstreams": []}), "upstreams`"),
        (
            json!({"upstreams": [{"cluster": "a", "health_check": {"interval": "often"}}]}),
            "upstreams[0].health_check.interval",
        ),
    ] {
        let c = Bootstrap::new()
            .filter(router(shape, cfg))
            .route(json!({"match": {"prefix": "/"}, "route": {"cluster": "b"}}))
            .cluster(cluster("b", b.addr()))
            .build();
        let log = envoy::expect_refused(&c).unwrap();
        let module = module_name(shape, "health_router");
        assert!(
            log.contains(&format!("{module}: invalid plugin configuration")) && log.contains(field),
            "{field}:\n{log}"
        );
    }
}

/// A primary that still answers 200, only 300 ms late (no active checks: they would time out and
/// say nothing about slowness): passive slow-call detection ejects it after three late answers,
/// the next requests fail over to the secondary at once, and the status endpoint says why.
fn late_answers_eject_the_primary_and_traffic_fails_over(shape: Shape) {
    let primary = Backend::start(Behavior::Delay(Duration::from_millis(300), 200)).unwrap();
    let secondary = Backend::ok().unwrap();
    let cfg = json!({"upstreams": [{"cluster": "primary"}, {"cluster": "secondary"}],
                     "trusted_cidrs": ["127.0.0.1/32"], "status_path": "/.well-known/upstream-health",
                     "passive": {"ejection": "30s", "slow": {"after": "150ms", "threshold": 0.5, "min_requests": 3}}});
    let envoy = start(vec![router(shape, cfg)], primary.addr(), secondary.addr());
    let addr = envoy.main().unwrap();
    for _ in 0..3 {
        assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
    }
    assert_eq!((primary.requests(), secondary.requests()), (3, 0), "failover order: the primary first");
    // Three late answers eject it, or up to five when they straddle the start of a fixed window
    // (the sliding window weighs the previous one by its overlap).
    for _ in 0..3 {
        assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
    }
    let slow = primary.requests();
    assert!((3..=5).contains(&slow), "ejected after {slow} late answers");
    for _ in 0..5 {
        assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
    }
    assert_eq!(primary.requests(), slow, "the slow primary is out, on both workers");
    assert_eq!(secondary.requests(), 8 - (slow - 3), "everything after the ejection went to the secondary");
    let status = http::get(addr, "/.well-known/upstream-health", &[]).unwrap();
    let v: Value = serde_json::from_slice(&status.body).unwrap();
    let p = &v["upstreams"][0];
    assert_eq!((p["cluster"].as_str(), p["available"].as_bool()), (Some("primary"), Some(false)), "{v}");
    assert!(p["reason"].as_str().is_some_and(|r| r.contains("slow calls")), "{v}");
    assert_eq!(envoy.stat("upstream_guard.health.primary.ejections").unwrap(), Some(1));
    assert_eq!(envoy.stat("upstream_guard.health.primary.slow").unwrap(), Some(slow));
}

test_harness::both_shapes!(
    traffic_fails_over_when_the_primary_dies_and_returns_when_it_recovers,
    late_answers_eject_the_primary_and_traffic_fails_over,
    both_down_fails_fast_with_every_upstreams_reason,
    passive_failures_eject_the_primary_before_any_active_check_notices,
    clients_cannot_choose_the_upstream,
    status_endpoint_reports_state_to_trusted_clients_and_unknown_clusters_do_not_crash,
    status_endpoint_is_not_answered_for_untrusted_clients,
    invalid_config_is_refused_by_envoy_with_the_field_named,
);
