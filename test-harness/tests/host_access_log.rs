//! What publishing verdicts for the access log costs: one `proxy_set_property` per stage whose
//! verdict says something, none for a stage that did nothing, for the router's plain first choice
//! nor for a local rule's admission unless `log_allowed` (upstream_guard.wasm, four stages, on the
//! deterministic host that counts host calls).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use test_harness::host::Host;
use test_harness::paths::wasm_path;

/// `proxy_set_property` calls for one request to `path` answered with `status`.
fn writes(path: &str, status: &str, log_allowed: bool) -> u64 {
    let host = Host::new().clusters(&["primary"]);
    let config = json!({
        "diagnostics": {},
        "rate_limiter": {"rules": [{"name": "api", "match": {"path_prefix": "/api"}, "limit": {"requests": 1, "per": "1m"}}],
                         "log_allowed": log_allowed},
        "health_router": {"upstreams": [{"cluster": "primary"}]},
        "circuit_breaker": {},
    });
    let p = host.load(wasm_path("upstream_guard").unwrap(), config).unwrap();
    let w = p.worker(0);
    let mut total = 0;
    // The first request takes the rule's only token, the second is refused.
    for _ in 0..2 {
        let mut s = w.http_stream().property("source.address", "10.0.0.1:5555");
        w.reset_host_calls();
        s.request_headers(&[(":path", path), (":method", "GET")], true).unwrap();
        if s.local_response().is_none() {
            s.response_headers(&[(":status", status)], true).unwrap();
        }
        total = total * 10 + w.host_calls().calls("proxy_set_property");
    }
    total
}

#[test]
fn each_stage_that_acted_costs_one_write_and_the_others_none() {
    // Per request of two (tens, units). A plain success: the router's first choice is Envoy's own
    // upstream_cluster; nothing else acted.
    assert_eq!(writes("/", "200", false), 0);
    // A rule admitted the first: nothing to say; it refused the second: the rate limiter says so
    // (and diagnostics explains the refusal).
    assert_eq!(writes("/api/x", "200", false), 2);
    // With `log_allowed`, the admission is written too.
    assert_eq!(writes("/api/x", "200", true), 12);
    // The upstream failed: diagnostics explains it, each time.
    assert_eq!(writes("/", "503", false), 11);
}
