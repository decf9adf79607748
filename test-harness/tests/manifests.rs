//! The mesh manifests and example Envoy configs a user would apply: every one validates with the
//! tool its platform uses, and every plugin configuration in them is accepted by the filter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use test_harness::{envoy, paths};

/// The project's own JSON Schema for `EnvoyExtensionPolicy` (no CRD file is read: a fresh clone
/// holds everything the test needs).
fn policy_schema() -> PathBuf {
    let p = paths::workspace_root().join("test-harness/schemas/envoy-gateway-envoyextensionpolicy.schema.json");
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

fn run_validator(examples: &Path) -> Output {
    let script = paths::target_dir().join("npm").join("validate-manifests.mjs");
    assert!(script.is_file(), "{} is missing: run `cargo xtask setup`", script.display());
    Command::new("node")
        .arg(&script)
        .arg(examples)
        .arg(policy_schema())
        .output()
        .expect("node is missing: run `cargo xtask setup`")
}

fn check_plugin_config(filter: &str, config: &Value) -> Result<(), String> {
    let bytes = config.to_string().into_bytes();
    let r = upstream_guard::stages::check_module(filter, &bytes).ok_or_else(|| format!("unknown filter {filter}"))?;
    r.map_err(|e| e.to_string())
}

#[test]
fn istio_and_envoy_gateway_manifests_validate_and_carry_valid_plugin_configs() {
    let out = run_validator(&paths::workspace_root().join("envoy-examples"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        lines.iter().filter(|l| l["kind"] == "WasmPlugin").count(),
        6,
        "one WasmPlugin per module, and the sidecar's"
    );
    assert_eq!(lines.iter().filter(|l| l["kind"] == "EnvoyExtensionPolicy").count(), 5, "one policy per module");
    for l in &lines {
        check_plugin_config(l["filter"].as_str().unwrap(), &l["config"])
            .unwrap_or_else(|e| panic!("{}: {e}", l["file"]));
    }
}

#[test]
fn the_validators_reject_a_broken_manifest() {
    // (folder, text in diagnostics.yaml, replacement, what the validator must say)
    let cases = [
        ("istio", "phase: AUTHN", "phase: SOMETIMES", "must be equal to one of the allowed values"),
        (
            "envoy-gateway",
            "type: Image",
            "type: Floppy",
            "/spec/wasm/0/code/type must be equal to one of the allowed values",
        ),
        ("envoy-gateway", "type: Image", "type: HTTP", "/spec/wasm/0/code must have required property 'http'"),
        (
            "envoy-gateway",
            "    rootID: diagnostics",
            "    rootId: diagnostics",
            "/spec/wasm/0 must NOT have additional properties (\"rootId\")",
        ),
        ("envoy-gateway", "    failOpen: true", "    failOpen: \"yes\"", "/spec/wasm/0/failOpen must be boolean"),
        ("envoy-gateway", "        sha256: ", "        sha256: F", "/spec/wasm/0/code/image/sha256 must match pattern"),
        (
            "envoy-gateway",
            "    kind: Gateway",
            "    kind: Service",
            "/spec/targetRefs/0/kind must be equal to one of the allowed values",
        ),
        ("envoy-gateway", "    name: eg", "    nmae: eg", "/spec/targetRefs/0 must have required property 'name'"),
    ];
    for (dir, from, to, why) in cases {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["istio", "envoy-gateway"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        let good =
            std::fs::read_to_string(paths::workspace_root().join("envoy-examples").join(dir).join("diagnostics.yaml"))
                .unwrap();
        assert_eq!(good.matches(from).count(), 1, "{dir}/diagnostics.yaml should hold {from:?} once");
        std::fs::write(tmp.path().join(dir).join("diagnostics.yaml"), good.replace(from, to)).unwrap();
        let out = run_validator(tmp.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{dir}: a manifest with {to:?} passed");
        assert!(
            stderr.contains("diagnostics.yaml") && stderr.contains(why),
            "{dir}, {to:?}: expected {why:?}, got {stderr}"
        );

        // The same folder with the good file passes, so the change alone made it fail.
        std::fs::write(tmp.path().join(dir).join("diagnostics.yaml"), &good).unwrap();
        let out = run_validator(tmp.path());
        assert!(out.status.success(), "{dir}: the unchanged manifest failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn every_example_envoy_config_passes_envoy_validate() {
    // The examples load target/wasm32-wasip1/release/*.wasm, which Envoy checks exist.
    for filter in upstream_guard::stages::modules() {
        paths::wasm_path(filter).unwrap_or_else(|e| panic!("{e}"));
    }
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
    assert!(checked >= 6, "expected an envoy.yaml per filter plus chain/ and llm-gateway/, found {checked}");
}

/// No example routes on `cluster_header`: the header the module writes is one a client can write
/// too, so with the module not running (failed to load, trapped under a fail-open policy) the
/// client would pick any cluster Envoy knows. Each declared upstream gets an exact-match route.
#[test]
fn no_example_lets_a_client_header_pick_the_cluster() {
    let root = paths::workspace_root().join("envoy-examples");
    let mut offenders = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let file = entry.unwrap().path().join("envoy.yaml");
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        if text.lines().any(|l| !l.trim_start().starts_with('#') && l.contains("cluster_header:")) {
            offenders.push(file.display().to_string());
        }
    }
    assert!(offenders.is_empty(), "cluster_header routes: {offenders:?}");
}
