//! The mesh manifests and example Envoy configs a user would apply: every one validates with the
//! tool its platform uses, and every plugin configuration in them is accepted by the filter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use test_harness::{envoy, paths};

fn crd() -> PathBuf {
    let p = paths::workspace_root().join("../shared/crds/envoy-gateway-envoyextensionpolicies.yaml");
    assert!(p.is_file(), "{} is missing: the shared/ folder sits beside the checkout", p.display());
    p
}

fn run_validator(examples: &Path) -> Output {
    let script = paths::target_dir().join("npm").join("validate-manifests.mjs");
    assert!(script.is_file(), "{} is missing: run `cargo xtask setup`", script.display());
    Command::new("node")
        .arg(&script)
        .arg(examples)
        .arg(crd())
        .output()
        .expect("node is missing: run `cargo xtask setup`")
}

fn check_plugin_config(filter: &str, config: &Value) -> Result<(), String> {
    let bytes = config.to_string().into_bytes();
    let r = match filter {
        "diagnostics" => upstream_guard::diagnose::DiagnosticsConfig::from_json(&bytes).map(drop),
        "rate_limiter" => upstream_guard::ratelimit::RateLimitConfig::from_json(&bytes).map(drop),
        "circuit_breaker" => upstream_guard::breaker::BreakerConfig::from_json(&bytes).map(drop),
        "health_router" => upstream_guard::health::HealthConfig::from_json(&bytes).map(drop),
        other => return Err(format!("unknown filter {other}")),
    };
    r.map_err(|e| e.to_string())
}

#[test]
fn istio_and_envoy_gateway_manifests_validate_and_carry_valid_plugin_configs() {
    let out = run_validator(&paths::workspace_root().join("envoy-examples"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().filter(|l| l["kind"] == "WasmPlugin").count(), 4, "one WasmPlugin per filter");
    assert_eq!(lines.iter().filter(|l| l["kind"] == "EnvoyExtensionPolicy").count(), 4, "one policy per filter");
    for l in &lines {
        check_plugin_config(l["filter"].as_str().unwrap(), &l["config"])
            .unwrap_or_else(|e| panic!("{}: {e}", l["file"]));
    }
}

#[test]
fn the_validators_reject_a_broken_manifest() {
    for (dir, from, to) in
        [("istio", "phase: AUTHN", "phase: SOMETIMES"), ("envoy-gateway", "type: Image", "type: Floppy")]
    {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["istio", "envoy-gateway"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        let good =
            std::fs::read_to_string(paths::workspace_root().join("envoy-examples").join(dir).join("diagnostics.yaml"))
                .unwrap();
        std::fs::write(tmp.path().join(dir).join("diagnostics.yaml"), good.replace(from, to)).unwrap();
        let out = run_validator(tmp.path());
        assert!(!out.status.success(), "{dir}: a broken manifest passed");
        assert!(String::from_utf8_lossy(&out.stderr).contains("must be equal to one of the allowed values"));
    }
}

#[test]
fn every_example_envoy_config_passes_envoy_validate() {
    let examples = paths::workspace_root().join("envoy-examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let yaml = entry.unwrap().path().join("envoy.yaml");
        if yaml.is_file() {
            let out = envoy::validate(&yaml).unwrap();
            assert!(
                out.status.success(),
                "{}: {}{}",
                yaml.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "expected an envoy.yaml per filter plus chain/, found {checked}");
}
