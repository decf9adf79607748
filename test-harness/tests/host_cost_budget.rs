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

/// Host calls per success round, after warm-up, averaged over `n` rounds, one round every
/// millisecond (a modest 1,000 requests per second on the worker: time moves, so leases end).
fn measure(module: &str, config: &Value) -> (HostCalls, u64) {
    let host = Host::new();
    let p = host.load(wasm_path(module).unwrap(), config).unwrap();
    let round = |p: &Plugin| {
        host.clock().advance(std::time::Duration::from_millis(1));
        success_round(p);
    };
    for _ in 0..200 {
        round(&p);
    }
    p.worker(0).reset_host_calls();
    let memory_before = p.worker(0).host_calls().memory_bytes;
    let n = 1000;
    for _ in 0..n {
        round(&p);
    }
    let calls = p.worker(0).host_calls();
    let growth = calls.memory_bytes.saturating_sub(memory_before);
    // Per 1,000 requests: calls made on some requests only (a lease's take) count as they are.
    let mut per_1000 = calls.clone();
    for v in per_1000.by_name.values_mut() {
        *v = *v * 1000 / n;
    }
    per_1000.allocations = per_1000.allocations * 1000 / n;
    per_1000.allocated_bytes = per_1000.allocated_bytes * 1000 / n;
    (per_1000, growth)
}

/// (module, config, at most this many host calls per 1,000 requests, of which at most this many
/// return data).
fn budgets() -> Vec<(&'static str, Value, u64, u64)> {
    vec![
        // `:status` only: the client address is read when a diagnosis must decide who sees details.
        ("diagnostics", diag(), 1_000, 1_000),
        // client address, clock, two RateLimit headers; the bucket's read and write on one
        // request in four (a lease serves the others: see the test below). The admission counter
        // is counted in the VM and handed over on the tick.
        ("rate_limiter", rl(), 4_500, 1_250),
        // routed cluster, epoch (request), epoch (response), `:status`: the breaker's own state
        // is not read while the epoch says it did not change.
        ("circuit_breaker", cb(), 4_000, 2_000),
        // clock, epoch, route header (the routed counter is handed over on the tick; a plain
        // choice is not written to the access log).
        ("health_router", hr(), 3_000, 0),
        // The four together: each value read once and shared by the stages (the cluster comes from
        // the router stage, the epoch once per callback for the router and the breaker), no
        // access-log write and no counter call on a plain success.
        (
            "upstream_guard",
            json!({"diagnostics": diag(), "rate_limiter": rl(), "health_router": hr(), "circuit_breaker": cb()}),
            8_500,
            2_250,
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
            "{module}: {} calls ({} returning data) per 1,000 requests {:?}",
            calls.total(),
            calls.allocations,
            calls.by_name
        ));
        if calls.total() > max_calls || calls.allocations > max_allocations {
            over.push(format!(
                "{module}: {} calls / {} returning data per 1,000 requests, budget {max_calls} / {max_allocations}: {:?}",
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
        1_000,
        "the clock is read once per callback that needs it"
    );
}

#[test]
fn a_hot_key_reads_and_writes_its_shared_bucket_on_a_fraction_of_its_requests() {
    let host = Host::new();
    let p = host.load(wasm_path("rate_limiter").unwrap(), rl()).unwrap();
    for _ in 0..100 {
        host.clock().advance(std::time::Duration::from_millis(1));
        success_round(&p);
    }
    p.worker(0).reset_host_calls();
    for _ in 0..1000 {
        host.clock().advance(std::time::Duration::from_millis(1));
        success_round(&p);
    }
    let calls = p.worker(0).host_calls();
    let (reads, writes) = (calls.calls("proxy_get_shared_data"), calls.calls("proxy_set_shared_data"));
    println!("1,000 requests, one per ms: {reads} bucket reads, {writes} writes");
    assert!(reads <= 300 && writes <= 300, "{reads} reads and {writes} writes for 1,000 requests");
    assert!(writes >= 100, "a lease lasts 3.9 ms here: {writes} writes for 1,000 requests is too few to be honest");
}
