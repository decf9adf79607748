//! The health router under the deterministic host with two workers: one prober at a time (the
//! lease), hysteresis on the fake clock, failover, passive ejection, takeover, and fail-fast.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{json, Value};
use test_harness::host::{Host, Plugin};
use test_harness::paths::wasm_path;

fn config() -> Value {
    let hc = json!({"path": "/healthz", "interval": "1s", "timeout": "250ms", "unhealthy_threshold": 2, "healthy_threshold": 2});
    json!({"upstreams": [{"cluster": "primary", "health_check": hc}, {"cluster": "secondary", "health_check": hc}],
           "passive": {"consecutive_failures": 3, "ejection": "10s"}})
}

fn load(host: &Host, config: Value) -> Plugin {
    host.load(wasm_path("health_router").unwrap(), config).unwrap()
}

/// Routes one request on `worker`: the cluster chosen, or the local reply's status.
fn route(p: &Plugin, worker: usize) -> Result<String, (u32, Vec<u8>)> {
    let mut s = p.worker(worker).http_stream();
    s.request_headers(&[(":path", "/"), (":method", "GET"), ("x-upstream-cluster", "client-choice")], true).unwrap();
    if let Some(r) = s.local_response() {
        return Err((r.status, r.body));
    }
    assert!(s.route_cache_cleared(), "the route is re-matched after the header changes");
    Ok(s.request_header("x-upstream-cluster").unwrap())
}

/// Ticks every worker, then answers every pending check of `cluster` with `status`.
fn check_round(host: &Host, p: &Plugin, answers: &[(&str, u16)]) {
    host.clock().advance(Duration::from_secs(1));
    p.tick_all().unwrap();
    for w in p.workers() {
        for call in w.pending_http_calls() {
            let status = answers.iter().find(|(c, _)| *c == call.cluster).map_or(200, |(_, s)| *s);
            w.respond_http_call(call.token, status, &[], b"").unwrap();
        }
    }
}

#[test]
fn only_the_lease_holder_sends_checks() {
    let host = Host::new().workers(2);
    let p = load(&host, config());
    p.tick_all().unwrap();
    let w0 = p.worker(0).pending_http_calls();
    assert_eq!(w0.len(), 2, "one check per upstream");
    assert!(p.worker(1).pending_http_calls().is_empty(), "the other worker does not probe");
    let c = w0.iter().find(|c| c.cluster == "primary").unwrap();
    assert_eq!(
        (c.header(":method"), c.header(":path"), c.header(":authority")),
        (Some("GET"), Some("/healthz"), Some("primary"))
    );
    assert_eq!(c.timeout, Duration::from_millis(250));
    assert_eq!(p.worker(0).tick_period(), Duration::from_millis(200));
}

#[test]
fn failover_after_unhealthy_threshold_and_return_after_healthy_threshold() {
    let host = Host::new().workers(2);
    let p = load(&host, config());
    assert_eq!(route(&p, 1).unwrap(), "primary", "the client's own header is overwritten");
    check_round(&host, &p, &[("primary", 503)]);
    assert_eq!(route(&p, 1).unwrap(), "primary", "one failure is not enough");
    check_round(&host, &p, &[("primary", 503)]);
    assert_eq!(route(&p, 1).unwrap(), "secondary");
    assert_eq!(route(&p, 0).unwrap(), "secondary", "both workers route on the shared result");
    assert_eq!(host.metric("upstream_guard.health.primary.healthy"), Some(0));
    check_round(&host, &p, &[]);
    assert_eq!(route(&p, 1).unwrap(), "secondary", "one pass is not enough either");
    check_round(&host, &p, &[]);
    assert_eq!(route(&p, 1).unwrap(), "primary");
}

#[test]
fn a_check_that_times_out_counts_as_a_failure() {
    let host = Host::new().workers(1);
    let p = load(&host, config());
    for _ in 0..2 {
        p.tick_all().unwrap();
        for c in p.worker(0).pending_http_calls() {
            if c.cluster == "secondary" {
                p.worker(0).respond_http_call(c.token, 200, &[], b"").unwrap();
            }
        }
        host.clock().advance(Duration::from_millis(300));
        p.tick_all().unwrap(); // delivers the primary's timeout (no headers), as Envoy does
        assert!(p.worker(0).pending_http_calls().iter().all(|c| c.cluster != "primary"));
        host.clock().advance(Duration::from_secs(1));
    }
    assert_eq!(route(&p, 0).unwrap(), "secondary");
}

#[test]
fn another_worker_takes_over_the_lease_when_the_holder_stops() {
    let host = Host::new().workers(2);
    let p = load(&host, config());
    p.tick_all().unwrap();
    assert!(!p.worker(0).pending_http_calls().is_empty());
    host.clock().advance(Duration::from_millis(900));
    p.worker(1).tick().unwrap();
    assert!(p.worker(1).pending_http_calls().is_empty(), "the lease is still live");
    host.clock().advance(Duration::from_millis(200));
    p.worker(1).tick().unwrap();
    assert_eq!(p.worker(1).pending_http_calls().len(), 2, "worker 0 stopped renewing: worker 1 probes now");
}

#[test]
fn passive_failures_eject_at_once_on_every_worker_until_the_ejection_ends() {
    let host = Host::new().workers(2);
    let p = load(&host, config());
    for _ in 0..3 {
        let mut s = p.worker(1).http_stream();
        s.request_headers(&[(":path", "/")], true).unwrap();
        s.set_property_u64("response.code", 503);
        s.set_property_u64("response.flags", 0x20);
        s.response_headers(&[(":status", "503")], true).unwrap();
    }
    assert_eq!(route(&p, 0).unwrap(), "secondary");
    assert_eq!(host.counter("upstream_guard.health.primary.ejections"), 1);
    host.clock().advance(Duration::from_secs(10));
    assert_eq!(route(&p, 0).unwrap(), "primary");
}

#[test]
fn the_fail_fast_refusal_takes_the_configured_status() {
    let host = Host::new();
    let mut c = config();
    c["status"] = json!(502);
    let p = load(&host, c);
    check_round(&host, &p, &[("primary", 503), ("secondary", 500)]);
    check_round(&host, &p, &[("primary", 503), ("secondary", 500)]);
    let mut s = p.worker(0).http_stream().property("source.address", "192.0.2.1:4000");
    s.request_headers(&[(":path", "/"), (":method", "GET")], true).unwrap();
    let r = s.local_response().unwrap();
    assert_eq!((r.status, r.details.as_deref()), (502, Some("upstream_guard.no_healthy_upstream")));
}

#[test]
fn none_healthy_fails_fast_listing_every_reason_to_trusted_clients_only() {
    let host = Host::new().workers(2);
    let mut c = config();
    c["trusted_cidrs"] = json!(["10.0.0.0/8"]);
    let p = load(&host, c);
    check_round(&host, &p, &[("primary", 503), ("secondary", 500)]);
    check_round(&host, &p, &[("primary", 503), ("secondary", 500)]);
    let refuse = |source: &str| {
        let mut s = p.worker(1).http_stream().property("source.address", source);
        s.request_headers(&[(":path", "/"), (":method", "GET")], true).unwrap();
        s.local_response().unwrap()
    };
    let trusted = refuse("10.1.2.3:4000");
    assert_eq!(trusted.status, 503);
    let v: Value = serde_json::from_slice(&trusted.body).unwrap();
    assert_eq!(v["upstreams"][0]["reason"], "active health check failed: HTTP 503; 2 consecutive failures");
    assert_eq!(v["upstreams"][1]["reason"], "active health check failed: HTTP 500; 2 consecutive failures");
    // An untrusted client (or one whose address came from x-forwarded-for) learns no cluster name.
    for source in ["192.0.2.1:4000", "10.1.2.3:0"] {
        let other = refuse(source);
        assert_eq!((other.status, other.details.as_deref()), (503, Some("upstream_guard.no_healthy_upstream")));
        assert_eq!(String::from_utf8_lossy(&other.body), "no healthy upstream\n", "{source}");
        assert!(other.headers.iter().all(|(_, v)| !v.contains("primary") && !v.contains("secondary")));
    }
    assert_eq!(host.counter("upstream_guard.health.no_healthy_upstream"), 3);
}

#[test]
fn panic_mode_routes_in_configured_order_anyway() {
    let host = Host::new();
    let mut c = config();
    c["when_none_healthy"] = json!("panic");
    let p = load(&host, c);
    check_round(&host, &p, &[("primary", 503), ("secondary", 503)]);
    check_round(&host, &p, &[("primary", 503), ("secondary", 503)]);
    assert_eq!(route(&p, 0).unwrap(), "primary");
}

#[test]
fn an_unknown_cluster_is_reported_not_fatal() {
    let host = Host::new().clusters(&["primary"]);
    let hc = json!({"path": "/healthz", "interval": "1s", "unhealthy_threshold": 1});
    let p = load(
        &host,
        json!({"upstreams": [{"cluster": "ghost", "health_check": hc}, {"cluster": "primary", "health_check": hc}],
                               "status_path": "/status", "trusted_cidrs": ["127.0.0.1/32"]}),
    );
    check_round(&host, &p, &[]);
    assert_eq!(route(&p, 0).unwrap(), "primary");
    let mut s = p.worker(0).http_stream().property("source.address", "127.0.0.1:9");
    s.request_headers(&[(":path", "/status")], true).unwrap();
    let v: Value = serde_json::from_slice(&s.local_response().unwrap().body).unwrap();
    assert!(v["upstreams"][0]["last_check"].as_str().unwrap().contains("no cluster"), "{v}");
    assert!(p.logs().iter().any(|(_, m)| m.contains("Envoy has no cluster of this name")));
}

#[test]
fn round_robin_spreads_over_healthy_upstreams() {
    let host = Host::new();
    let mut c = config();
    c["strategy"] = json!("round_robin");
    let p = load(&host, c);
    let picks: Vec<String> = (0..4).map(|_| route(&p, 0).unwrap()).collect();
    assert_eq!(picks, ["primary", "secondary", "primary", "secondary"]);
}

#[test]
fn checks_to_missing_or_silent_clusters_stay_bounded_and_say_so_once() {
    // "ghost" is unknown to the host (dispatch fails), "silent" never answers (every check times
    // out): thousands of intervals later, at most one check per upstream is in flight, the VM's
    // memory has not grown, and the unknown cluster was logged once, not once per interval.
    let host = Host::new().workers(2).clusters(&["silent", "ok"]);
    let hc = json!({"path": "/healthz", "interval": "100ms", "timeout": "50ms", "unhealthy_threshold": 1});
    let p = load(
        &host,
        json!({"upstreams": [{"cluster": "ok", "health_check": hc}, {"cluster": "ghost", "health_check": hc},
                             {"cluster": "silent", "health_check": hc}]}),
    );
    let mut memory = Vec::new();
    for round in 0..5_000 {
        host.clock().advance(Duration::from_millis(20));
        p.tick_all().unwrap();
        for w in p.workers() {
            let pending = w.pending_http_calls();
            assert!(pending.len() <= 2, "round {round}: {} checks in flight", pending.len());
            for call in pending.iter().filter(|c| c.cluster == "ok") {
                w.respond_http_call(call.token, 200, &[], b"").unwrap();
            }
        }
        if round % 1000 == 999 {
            memory.push(p.workers().iter().map(|w| w.host_calls().memory_bytes).sum::<u64>());
        }
    }
    assert!(memory.windows(2).all(|m| m[1] == m[0]), "guest memory grew: {memory:?}");
    assert!(host.counter("upstream_guard.health.ghost.checks_unsent") >= 900);
    assert_eq!(host.counter("upstream_guard.health.ghost.checks_failed"), 0);
    assert!(host.counter("upstream_guard.health.silent.checks_failed") >= 600);
    let warned = p.logs().iter().filter(|(_, m)| m.contains("cannot send a health check")).count();
    assert_eq!(warned, 1, "the unknown cluster is logged once");
    assert!(host.shared_data_keys("health_router") <= 3 + 3, "{}", host.shared_data_keys("health_router"));
    assert_eq!(route(&p, 0).unwrap(), "ok");
}

#[test]
fn misnamed_clusters_never_take_traffic_down() {
    // Cluster names of another platform (Istio's, in an Envoy Gateway proxy): Envoy has neither.
    let host = Host::new().workers(2).clusters(&["httproute/default/backend/rule/0"]);
    let hc = json!({"path": "/healthz", "interval": "100ms", "unhealthy_threshold": 1});
    let p = load(
        &host,
        json!({"upstreams": [{"cluster": "outbound|8080||primary.default.svc.cluster.local", "health_check": hc},
                             {"cluster": "outbound|8080||secondary.default.svc.cluster.local", "health_check": hc}]}),
    );
    for _ in 0..20 {
        host.clock().advance(Duration::from_millis(150));
        p.tick_all().unwrap();
    }
    for w in 0..2 {
        let mut s = p.worker(w).http_stream();
        s.request_headers(&[(":path", "/"), (":method", "GET"), ("x-upstream-cluster", "client-choice")], true)
            .unwrap();
        assert!(s.local_response().is_none(), "not refused: Envoy's own route serves it");
        assert_eq!(s.request_header("x-upstream-cluster"), None, "and the client's choice is gone");
    }
    assert!(host.counter("upstream_guard.health.outbound_8080__primary_default_svc_cluster_local.checks_unsent") >= 10);
    let errors: Vec<_> = p.logs().into_iter().filter(|(_, m)| m.contains("cannot send a health check")).collect();
    assert_eq!(errors.len(), 2, "each misnamed cluster said once: {errors:?}");
    assert!(errors[0].1.contains("httproute/<namespace>/<route>/rule/<index>"), "names the naming schemes");
}
