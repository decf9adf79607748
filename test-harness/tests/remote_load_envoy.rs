//! Envoy loading a filter over HTTP (`vm_config.code.remote`) pinned by sha256, as a mesh or a
//! plain Envoy fleet would: the right digest loads and runs, a wrong one is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use serde_json::{json, Value};
use test_harness::backend::{self, Backend, Behavior};
use test_harness::bootstrap::{cluster, route, wasm_filter, Bootstrap};
use test_harness::envoy::Envoy;
use test_harness::{http, parse_diagnosis, paths};

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A bootstrap whose diagnostics filter is fetched from `server` and pinned to `sha256`.
fn remote_config(server: &Backend, sha256: &str, backend_port: std::net::SocketAddr) -> Value {
    let wasm = paths::wasm_path("diagnostics").unwrap();
    let mut f = wasm_filter("diagnostics", &wasm, &json!({}));
    f["typed_config"]["config"]["vm_config"]["code"] = json!({"remote": {
        "http_uri": {"uri": format!("http://{}/diagnostics.wasm", server.addr()), "cluster": "wasm_server", "timeout": "5s"},
        "sha256": sha256,
    }});
    Bootstrap::new()
        .filter(f)
        .route(route("/", "backend"))
        .cluster(cluster("backend", backend_port))
        .cluster(cluster("wasm_server", server.addr()))
        .build()
}

#[test]
fn filter_loads_over_http_with_the_right_sha256() {
    let bytes = std::fs::read(paths::wasm_path("diagnostics").unwrap()).unwrap();
    let digest = sha256_hex(&bytes);
    let server = Backend::start(Behavior::Body(Arc::new(bytes))).unwrap();
    let down = backend::closed_port().unwrap();
    let envoy = Envoy::start(&remote_config(&server, &digest, down)).unwrap();
    let r = http::get(envoy.main().unwrap(), "/", &[]).unwrap();
    let d = parse_diagnosis(r.header("x-upstream-diagnosis").unwrap()).unwrap();
    assert_eq!(d["cause"], "connection_refused", "the remotely loaded filter runs");
    assert!(server.requests() >= 1);
}

#[test]
fn a_wrong_sha256_is_refused() {
    // Envoy fetches the module, finds the digest differs, and fails the plugin closed: the
    // listener answers 503 and nothing reaches the backend.
    let bytes = std::fs::read(paths::wasm_path("diagnostics").unwrap()).unwrap();
    let server = Backend::start(Behavior::Body(Arc::new(bytes))).unwrap();
    let backend = Backend::ok().unwrap();
    let wrong = "0".repeat(64);
    let envoy = Envoy::start(&remote_config(&server, &wrong, backend.addr())).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !envoy.log().contains("Plugin diagnostics failed to load") {
        assert!(std::time::Instant::now() < deadline, "no refusal logged:\n{}", envoy.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(server.requests() >= 1, "Envoy did fetch the module");
    let r = http::get(envoy.main().unwrap(), "/", &[]).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(backend.requests(), 0, "a module that failed its digest never runs, and the plugin fails closed");
    for line in envoy.log().lines().filter(|l| l.contains("remote data source") || l.contains("failed to load")) {
        println!("{line}");
    }
}
