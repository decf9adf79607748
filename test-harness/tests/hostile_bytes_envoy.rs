//! One request with a header byte that is not UTF-8 must not disable a filter: in real Envoy
//! (edge listener, two workers), each hostile request is answered, and every later request on
//! either worker is served with 200. Once, such a request trapped the VM in the SDK's `String`
//! getters and every later request on that worker got a 503.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{json, Value};
use test_harness::backend::Backend;
use test_harness::bootstrap::{cluster, module_filter, route, Bootstrap, Shape};
use test_harness::envoy::Envoy;
use test_harness::http;

struct Row {
    policy: &'static str,
    config: Value,
    header: &'static [u8],
    value: &'static [u8],
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            policy: "rate_limiter",
            config: json!({"rules": [{"name": "t", "key": [{"header": "x-tenant"}], "limit": {"requests": 100000, "per": "1s"}}]}),
            header: b"x-tenant",
            value: b"caf\xe9\xff",
        },
        Row {
            policy: "rate_limiter",
            config: json!({"rules": [{"name": "c", "key": ["client_ip"], "limit": {"requests": 100000, "per": "1s"}}],
                           "client_ip": {"trusted_hops": 1}}),
            header: b"x-forwarded-for",
            value: b"1.2.3.4\xff",
        },
        Row {
            policy: "circuit_breaker",
            config: json!({"key_header": "x-tenant"}),
            header: b"x-tenant",
            value: b"caf\xe9\xff",
        },
        Row {
            policy: "diagnostics",
            config: json!({"json_body": true, "on": "always"}),
            header: b"accept",
            value: b"application/json\xff",
        },
    ]
}

fn run(shape: Shape, module: &str, config: &Value, row: &Row) {
    let backend = Backend::ok().unwrap();
    let cfg = Bootstrap::new()
        .edge()
        .filter(module_filter(shape, module, config))
        .route(route("/", "backend"))
        .cluster(cluster("backend", backend.addr()))
        .build();
    let envoy = Envoy::start_with(&cfg, 2).unwrap();
    let addr = envoy.main().unwrap();
    let what = format!("{module} with {}: {:?}", String::from_utf8_lossy(row.header), row.value);
    // Several times, on new connections, so that both workers see one.
    for _ in 0..10 {
        let raw = http::raw_get("/", &[(row.header, row.value)]);
        let r = http::raw(addr, &raw, Duration::from_secs(10)).unwrap();
        assert_eq!(r.status, 200, "{what}: the hostile request itself is served: {r:?}\n{}", envoy.log());
    }
    let served = (0..100).filter(|_| http::get(addr, "/", &[]).is_ok_and(|r| r.status == 200)).count();
    assert_eq!(served, 100, "{what}: every later request is served\n{}", envoy.log());
    let log = envoy.log();
    assert!(!log.contains("panicked") && !log.contains("RuntimeError"), "{what}: {log}");
}

fn hostile_header_bytes_never_disable_a_single_policy_filter(shape: Shape) {
    for row in rows() {
        run(shape, row.policy, &row.config, &row);
    }
}

fn hostile_header_bytes_never_disable_the_combined_module(shape: Shape) {
    for row in rows() {
        run(shape, "upstream_guard", &json!({ row.policy: row.config }), &row);
    }
}

test_harness::both_shapes!(
    hostile_header_bytes_never_disable_a_single_policy_filter,
    hostile_header_bytes_never_disable_the_combined_module,
);
