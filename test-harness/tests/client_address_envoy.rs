//! Who is the client? With Envoy's default connection manager (`use_remote_address: false`)
//! `source.address` is the last `x-forwarded-for` entry, which the client writes (port 0). Trust
//! is never granted from it unless the operator says so, and the rate limiter follows Envoy's
//! idea of the client (counting and warning when it came from the header), or refuses to key on
//! it. Both connection-manager modes, in real Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use test_harness::backend::{self, Backend};
use test_harness::bootstrap::{cluster, module_filter, route, Bootstrap, Shape};
use test_harness::envoy::Envoy;
use test_harness::{http, parse_diagnosis};

const DETAILS: [&str; 6] = ["status", "cluster", "upstream", "route", "details", "attempts"];

fn filter(shape: Shape, module: &str, policy: &str, config: Value) -> Value {
    let config = if module == "upstream_guard" { json!({ policy: config }) } else { config };
    module_filter(shape, module, &config)
}

fn diagnosis(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> BTreeMap<String, String> {
    let r = http::get(addr, "/", headers).unwrap();
    let v = r.header("x-upstream-diagnosis").unwrap_or_else(|| panic!("no diagnosis on {r:?}")).to_string();
    parse_diagnosis(&v).unwrap()
}

fn dead_backend_envoy(shape: Shape, b: Bootstrap, module: &str, config: Value) -> Envoy {
    let port = backend::closed_port().unwrap();
    let cfg = b
        .filter(filter(shape, module, "diagnostics", config))
        .route(route("/", "dead"))
        .cluster(cluster("dead", port))
        .build();
    Envoy::start_with(&cfg, 2).unwrap()
}

fn a_spoofed_forwarded_for_never_unlocks_upstream_details(shape: Shape) {
    for module in ["diagnostics", "upstream_guard"] {
        for (mode, b) in [("default HCM", Bootstrap::new()), ("edge HCM", Bootstrap::new().edge())] {
            let envoy = dead_backend_envoy(shape, b, module, json!({"trusted_cidrs": ["10.0.0.0/8"]}));
            let addr = envoy.main().unwrap();
            for spoof in ["10.1.2.3", "8.8.8.8, 10.1.2.3", "10.1.2.3, 10.9.9.9"] {
                let d = diagnosis(addr, &[("x-forwarded-for", spoof)]);
                assert_eq!(d["cause"], "connection_refused", "{module} {mode}");
                for k in DETAILS {
                    assert!(!d.contains_key(k), "{module} {mode}: x-forwarded-for {spoof:?} revealed {k}: {d:?}");
                }
            }
        }
    }
}

fn the_real_peer_and_the_debug_token_still_unlock_details(shape: Shape) {
    for module in ["diagnostics", "upstream_guard"] {
        let config = json!({"trusted_cidrs": ["127.0.0.1/32"], "debug_header": "x-debug", "debug_token": "s3cret"});
        let envoy = dead_backend_envoy(shape, Bootstrap::new(), module, config);
        let addr = envoy.main().unwrap();
        assert_eq!(
            diagnosis(addr, &[])["cluster"],
            "dead",
            "{module}: the loopback peer (a real connection) is trusted"
        );
        let envoy = dead_backend_envoy(
            shape,
            Bootstrap::new().edge(),
            module,
            json!({"debug_header": "x-debug", "debug_token": "s3cret"}),
        );
        let addr = envoy.main().unwrap();
        assert_eq!(diagnosis(addr, &[("x-debug", "s3cret")])["cluster"], "dead", "{module}: the token works");
        assert!(!diagnosis(addr, &[("x-debug", "guess")]).contains_key("cluster"), "{module}");
    }
}

fn forwarded_addresses_are_trusted_only_when_the_operator_says_so(shape: Shape) {
    let config = json!({"trusted_cidrs": ["10.0.0.0/8"], "trust_x_forwarded_for": true});
    let envoy = dead_backend_envoy(shape, Bootstrap::new(), "diagnostics", config);
    let d = diagnosis(envoy.main().unwrap(), &[("x-forwarded-for", "10.1.2.3")]);
    assert_eq!(d["cluster"], "dead", "behind a proxy that overwrites the header, the operator may trust it: {d:?}");
}

fn the_health_status_endpoint_ignores_spoofed_addresses(shape: Shape) {
    for module in ["health_router", "upstream_guard"] {
        let backend = Backend::ok().unwrap();
        let config = json!({"upstreams": [{"cluster": "backend"}], "status_path": "/.well-known/upstream-health",
                            "trusted_cidrs": ["10.0.0.0/8"]});
        let cfg = Bootstrap::new()
            .filter(filter(shape, module, "health_router", config))
            .route(json!({"match": {"prefix": "/"}, "route": {"cluster_header": "x-upstream-cluster"}}))
            .cluster(cluster("backend", backend.addr()))
            .build();
        let envoy = Envoy::start_with(&cfg, 2).unwrap();
        let r = http::get(envoy.main().unwrap(), "/.well-known/upstream-health", &[("x-forwarded-for", "10.1.2.3")])
            .unwrap();
        assert!(!r.text().contains("\"upstreams\""), "{module}: the status went to a spoofed client: {}", r.text());
    }
}

/// 1,200 requests from 16 concurrent clients, each with a random `x-forwarded-for`: how many pass.
fn spoofed_load(addr: std::net::SocketAddr) -> u64 {
    let admitted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let admitted = admitted.clone();
            std::thread::spawn(move || {
                for i in 0..75u64 {
                    let n = t * 75 + i;
                    let xff = format!("{}.{}.{}.{}", 1 + n % 200, (n / 200) % 250, n % 7, 1 + n % 250);
                    if http::get(addr, "/", &[("x-forwarded-for", &xff)]).is_ok_and(|r| r.status == 200) {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    admitted.load(Ordering::SeqCst)
}

fn limiter_envoy(shape: Shape, module: &str, b: Bootstrap, client_ip: Value) -> (Envoy, Backend) {
    let backend = Backend::ok().unwrap();
    let config = json!({"rules": [{"name": "per-client", "key": ["client_ip"], "limit": {"requests": 300, "per": "1h"}}],
                        "client_ip": client_ip});
    let cfg = b
        .filter(filter(shape, module, "rate_limiter", config))
        .route(route("/", "backend"))
        .cluster(cluster("backend", backend.addr()))
        .build();
    (Envoy::start_with(&cfg, 2).unwrap(), backend)
}

const WARNING: &str = "a client address came from x-forwarded-for";

fn on_an_edge_listener_spoofed_addresses_move_no_limit(shape: Shape) {
    for module in ["rate_limiter", "upstream_guard"] {
        let (envoy, _b) = limiter_envoy(shape, module, Bootstrap::new().edge(), json!({}));
        assert_eq!(spoofed_load(envoy.main().unwrap()), 300, "{module}");
        assert_eq!(envoy.stat("upstream_guard.ratelimit.client_ip_from_header").unwrap().unwrap_or(0), 0);
        assert!(!envoy.log().contains(WARNING), "{module}: no warning when the address is the real peer");
    }
}

fn require_peer_holds_the_limit_even_on_a_default_listener(shape: Shape) {
    for module in ["rate_limiter", "upstream_guard"] {
        let (envoy, _b) = limiter_envoy(shape, module, Bootstrap::new(), json!({"require_peer": true}));
        assert_eq!(spoofed_load(envoy.main().unwrap()), 300, "{module}: header-derived addresses share one bucket");
        let counted = envoy.stat("upstream_guard.ratelimit.client_ip_from_header").unwrap().unwrap_or(0);
        assert_eq!(counted, 1200, "{module}: every header-derived address is counted");
    }
}

fn header_derived_addresses_are_counted_and_warned_about_exactly_when_they_occur(shape: Shape) {
    let (envoy, _b) = limiter_envoy(shape, "rate_limiter", Bootstrap::new(), json!({}));
    let addr = envoy.main().unwrap();
    for _ in 0..5 {
        assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
    }
    assert_eq!(envoy.stat("upstream_guard.ratelimit.client_ip_from_header").unwrap().unwrap_or(0), 0);
    assert!(!envoy.log().contains(WARNING), "no header, the real peer: no warning");
    for i in 0..5 {
        assert_eq!(http::get(addr, "/", &[("x-forwarded-for", &format!("6.6.6.{i}"))]).unwrap().status, 200);
    }
    assert_eq!(envoy.stat("upstream_guard.ratelimit.client_ip_from_header").unwrap(), Some(5));
    let log = envoy.log();
    let warnings = log.lines().filter(|l| l.contains(WARNING)).count();
    assert!((1..=2).contains(&warnings), "once per worker at most: {warnings}\n{log}");
    assert!(
        log.contains("use_remote_address") && log.contains("xff_num_trusted_hops"),
        "the warning names the settings"
    );
}

test_harness::both_shapes!(
    a_spoofed_forwarded_for_never_unlocks_upstream_details,
    the_real_peer_and_the_debug_token_still_unlock_details,
    forwarded_addresses_are_trusted_only_when_the_operator_says_so,
    the_health_status_endpoint_ignores_spoofed_addresses,
    on_an_edge_listener_spoofed_addresses_move_no_limit,
    require_peer_holds_the_limit_even_on_a_default_listener,
    header_derived_addresses_are_counted_and_warned_about_exactly_when_they_occur,
);
