//! What publishing verdicts for the access log costs: one `proxy_set_property` per stage that
//! acted, none for a stage that did nothing nor for the router's plain first choice
//! (upstream_guard.wasm, all four stages, on the deterministic host that counts host calls).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use test_harness::host::Host;
use test_harness::paths::wasm_path;

/// `proxy_set_property` calls for one request to `path` answered with `status`.
fn writes(path: &str, status: &str) -> u64 {
    let host = Host::new().clusters(&["primary"]);
    let config = json!({
        "diagnostics": {},
        "rate_limiter": {"rules": [{"name": "api", "match": {"path_prefix": "/api"}, "limit": {"requests": 100, "per": "1s"}}]},
        "health_router": {"upstreams": [{"cluster": "primary"}]},
        "circuit_breaker": {},
    });
    let p = host.load(wasm_path("upstream_guard").unwrap(), config).unwrap();
    let w = p.worker(0);
    let mut s = w.http_stream().property("source.address", "10.0.0.1:5555");
    w.reset_host_calls();
    s.request_headers(&[(":path", path), (":method", "GET")], true).unwrap();
    s.response_headers(&[(":status", status)], true).unwrap();
    w.host_calls().calls("proxy_set_property")
}

#[test]
fn each_stage_that_acted_costs_one_write_and_the_others_none() {
    // A plain success: the router's first choice is Envoy's own upstream_cluster; nothing else acted.
    assert_eq!(writes("/", "200"), 0);
    // A rule applied: the rate limiter says so.
    assert_eq!(writes("/api/x", "200"), 1);
    // The upstream failed: diagnostics explains it.
    assert_eq!(writes("/", "503"), 1);
}
