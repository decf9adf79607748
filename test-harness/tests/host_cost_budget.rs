//! Per-request cost budgets: what each module's success path asks of the host, counted by the
//! harness. In Envoy a host call that returns data costs about 10,000 instructions (V8 re-enters
//! the module to allocate the result) and one that returns nothing about 1,000–2,000, so the
//! budget counts both. The budgets are today's measured figures: a change that adds a host call to
//! the common path fails here, and must either be taken back or move the budget on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use test_harness::host::{Host, HostCalls, Plugin};
use test_harness::paths::wasm_path;

fn rl() -> Value {
    json!({"rules": [{"name": "all", "key": ["client_ip"], "limit": {"requests": 1_000_000_000u64, "per": "1s"}}]})
}
fn hr() -> Value {
    json!({"upstreams": [{"cluster": "backend", "health_check": {"path": "/healthz", "interval": "1s"}}]})
}
fn cb() -> Value {
    json!({"failure": {"consecutive": 5}})
}
fn diag() -> Value {
    json!({"trusted_cidrs": ["127.0.0.1/32"]})
}

/// One successful request: headers in, 200 out with a body, log, done.
fn success_round(p: &Plugin) {
    let w = p.worker(0);
    let mut s = w.http_stream().property("source.address", "10.0.0.1:4000").property("xds.cluster_name", "backend");
    s.request_headers(&[(":path", "/api"), (":method", "GET"), (":authority", "svc")], true).unwrap();
    assert!(s.local_response().is_none(), "the success path was refused");
    s.set_property_u64("response.code", 200);
    s.set_property_u64("response.flags", 0);
    s.response_headers(&[(":status", "200"), ("content-length", "2")], false).unwrap();
    s.response_body(b"ok", true).unwrap();
    s.log().unwrap();
    s.finish().unwrap();
}

/// Host calls per success round, after warm-up, averaged over `n` rounds.
fn measure(module: &str, config: &Value) -> (HostCalls, u64) {
    let host = Host::new();
    let p = host.load(wasm_path(module).unwrap(), config).unwrap();
    for _ in 0..200 {
        success_round(&p);
    }
    p.worker(0).reset_host_calls();
    let memory_before = p.worker(0).host_calls().memory_bytes;
    let n = 1000;
    for _ in 0..n {
        success_round(&p);
    }
    let calls = p.worker(0).host_calls();
    let growth = calls.memory_bytes.saturating_sub(memory_before);
    let mut per_round = calls.clone();
    for v in per_round.by_name.values_mut() {
        *v /= n;
    }
    per_round.allocations /= n;
    per_round.allocated_bytes /= n;
    (per_round, growth)
}

/// (module, config, at most this many host calls, of which at most this many return data).
fn budgets() -> Vec<(&'static str, Value, u64, u64)> {
    vec![
        // `:status` only: the client address is read when a diagnosis must decide who sees details.
        ("diagnostics", diag(), 1, 1),
        // client address, clock, bucket read + write, allowed counter, two RateLimit headers, and
        // the verdict for the access log (a rule applied; a write that returns nothing).
        ("rate_limiter", rl(), 8, 2),
        // routed cluster, epoch (request), epoch (response), `:status`: the breaker's own state
        // is not read while the epoch says it did not change.
        ("circuit_breaker", cb(), 4, 2),
        // clock, epoch, route header, routed counter (a plain choice is not written to the access log).
        ("health_router", hr(), 4, 0),
        // The four together: each value read once and shared by the stages (the cluster comes from
        // the router stage, the epoch once per callback for the router and the breaker), and one
        // access-log write (the rule that applied).
        (
            "upstream_guard",
            json!({"diagnostics": diag(), "rate_limiter": rl(), "health_router": hr(), "circuit_breaker": cb()}),
            13,
            3,
        ),
    ]
}

#[test]
fn each_module_keeps_its_success_path_within_its_host_call_budget() {
    let mut report = Vec::new();
    let mut over = Vec::new();
    for (module, config, max_calls, max_allocations) in budgets() {
        let (calls, growth) = measure(module, &config);
        report.push(format!(
            "{module}: {} calls ({} returning data) {:?}",
            calls.total(),
            calls.allocations,
            calls.by_name
        ));
        if calls.total() > max_calls || calls.allocations > max_allocations {
            over.push(format!(
                "{module}: {} calls / {} allocations per request, budget {max_calls} / {max_allocations}: {:?}",
                calls.total(),
                calls.allocations,
                calls.by_name
            ));
        }
        assert_eq!(growth, 0, "{module}: guest memory grew by {growth} bytes over 1,000 steady requests");
    }
    println!("{}", report.join("\n"));
    assert!(over.is_empty(), "{}", over.join("\n"));
}

#[test]
fn the_combined_module_reads_shared_values_once_not_once_per_stage() {
    let all = json!({"diagnostics": diag(), "rate_limiter": rl(), "health_router": hr(), "circuit_breaker": cb()});
    let (combined, _) = measure("upstream_guard", &all);
    let singles: u64 =
        [("diagnostics", diag()), ("rate_limiter", rl()), ("health_router", hr()), ("circuit_breaker", cb())]
            .iter()
            .map(|(m, c)| measure(m, c).0.total())
            .sum();
    assert!(combined.total() < singles, "combined {} calls vs {singles} for four filters", combined.total());
    assert_eq!(
        combined.calls("proxy_get_current_time_nanoseconds"),
        1,
        "the clock is read once per callback that needs it"
    );
}
