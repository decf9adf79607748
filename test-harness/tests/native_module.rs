//! The dynamic module itself: what it imports exists in the Envoy the tests run, Envoy loads it
//! and validates every example that uses it, and a panic-free refusal of a bad configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use serde_json::json;
use test_harness::backend::Backend;
use test_harness::bootstrap::{cluster, dynamic_module_filter, route, Bootstrap};
use test_harness::envoy::{self, Envoy};
use test_harness::{http, paths};

fn symbols(path: &std::path::Path, args: &[&str]) -> Vec<String> {
    let out = Command::new("nm").args(args).arg(path).output().expect("nm runs");
    assert!(out.status.success(), "nm {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

#[test]
fn every_callback_the_module_imports_is_exported_by_the_envoy_under_test() {
    let envoy = paths::envoy_executable().unwrap();
    let exported: Vec<String> = symbols(&envoy, &["-D", "--defined-only"])
        .into_iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_callback_"))
        .collect();
    assert!(exported.len() > 100, "the Envoy binary exports the dynamic-module callbacks ({})", exported.len());
    let module = paths::native_module_path().unwrap();
    let imported: Vec<String> = symbols(&module, &["-D", "--undefined-only"])
        .into_iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_"))
        .collect();
    assert!(!imported.is_empty());
    let missing: Vec<&String> = imported.iter().filter(|s| !exported.contains(s)).collect();
    assert!(missing.is_empty(), "imported but not exported by {}: {missing:?}", envoy.display());
}

#[test]
fn a_configuration_error_is_refused_with_the_field_and_the_fix() {
    let b = Backend::ok().unwrap();
    let bad = json!({"rate_limiter": {"rules": [{"name": "x", "limit": {"requests": 0, "per": "1s"}}]}});
    let cfg = Bootstrap::new()
        .filter(dynamic_module_filter("upstream_guard", &bad))
        .route(route("/", "backend"))
        .cluster(cluster("backend", b.addr()))
        .build();
    let log = envoy::expect_refused(&cfg).unwrap();
    assert!(log.contains("requests"), "the log names the field: {log}");
}

#[test]
fn the_module_serves_and_refuses_with_every_stage_on() {
    let b = Backend::ok().unwrap();
    let config = json!({
        "diagnostics": {},
        "rate_limiter": {"rules": [{"name": "all", "key": [{"constant": "all"}], "limit": {"requests": 3, "per": "1h"}}]},
        "circuit_breaker": {},
    });
    let cfg = Bootstrap::new()
        .filter(dynamic_module_filter("upstream_guard", &config))
        .route(route("/", "backend"))
        .cluster(cluster("backend", b.addr()))
        .build();
    let envoy = Envoy::start_with(&cfg, 2).unwrap();
    let addr = envoy.main().unwrap();
    let statuses: Vec<u16> = (0..5).map(|_| http::get(addr, "/", &[]).unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429], "log: {}", envoy.log());
    let refused = http::get(addr, "/", &[]).unwrap();
    assert!(refused.header("x-upstream-diagnosis").is_some_and(|d| d.contains("rate_limited")), "{refused:?}");
    assert_eq!(envoy.stat("upstream_guard.ratelimit.all.limited").unwrap(), Some(3), "stats: {}", envoy.log());
    assert_eq!(b.requests(), 3);
}

/// The one line of `file` that starts (after indentation) with `key`, without the key.
fn line_value(file: &str, key: &str) -> String {
    let path = paths::workspace_root().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line =
        text.lines().find_map(|l| l.trim_start().strip_prefix(key)).unwrap_or_else(|| panic!("{file}: no {key}"));
    line.trim().trim_matches('\'').to_string()
}

#[test]
fn the_native_mesh_manifests_carry_the_wasm_manifests_configuration_and_it_is_valid() {
    for (native, native_key, wasm, wasm_key) in [
        (
            "envoy-examples/native/envoy-gateway.yaml",
            "config: ",
            "envoy-examples/envoy-gateway/upstream_guard.yaml",
            "config: ",
        ),
        (
            "envoy-examples/native/istio-envoyfilter.yaml",
            "value: ",
            "envoy-examples/istio/upstream_guard.yaml",
            "pluginConfig: ",
        ),
    ] {
        let n: serde_json::Value = serde_json::from_str(&line_value(native, native_key)).unwrap();
        let w: serde_json::Value = serde_json::from_str(&line_value(wasm, wasm_key)).unwrap();
        assert_eq!(n, w, "{native} and {wasm} configure the same stages the same way");
        upstream_guard::suite::SuiteConfig::from_json(n.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{native}: {e}"));
    }
    let eg = std::fs::read_to_string(paths::workspace_root().join("envoy-examples/native/envoy-gateway.yaml")).unwrap();
    assert!(eg.contains("dynamicModule:") && eg.contains("- name: upstream_guard"), "{eg}");
}
