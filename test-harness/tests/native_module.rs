//! The dynamic module itself: what it imports exists in the Envoy the tests run, it needs nothing
//! the proxy images lack, Envoy loads it and validates every example that uses it, and a
//! panic-free refusal of a bad configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use test_harness::backend::Backend;
use test_harness::bootstrap::{cluster, dynamic_module_filter, route, Bootstrap};
use test_harness::envoy::{self, Envoy, Launch};
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

/// The libraries every proxy image carries: glibc's (Envoy's distroless images hold nothing else:
/// `gcr.io/distroless/base-nossl-debian12`/`-debian13` are the `libc6` package alone).
const GLIBC_LIBRARIES: [&str; 6] =
    ["libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "ld-linux-x86-64.so.2"];

/// The oldest glibc of the images the module is for: Ubuntu 22.04 (`envoyproxy/envoy:v1.40.*`)
/// has 2.35; Debian 12 and 13 (the distroless images) 2.36 and 2.41; Ubuntu 24.04 (Istio's
/// proxyv2) 2.39.
const OLDEST_GLIBC: (u32, u32) = (2, 35);

#[test]
fn the_module_needs_only_glibc_and_no_newer_glibc_than_the_proxy_images_carry() {
    let module = paths::native_module_path().unwrap();
    let out = Command::new("readelf").arg("-d").arg(&module).output().expect("readelf runs");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    assert!(needed.contains(&"libc.so.6"), "{dynamic}");
    let foreign: Vec<&&str> = needed.iter().filter(|n| !GLIBC_LIBRARIES.contains(n)).collect();
    assert!(foreign.is_empty(), "libupstream_guard.so needs {foreign:?}, which distroless proxy images lack");
    let out = Command::new("objdump").arg("-T").arg(&module).output().expect("objdump runs");
    let newest = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.trim_start_matches('(').trim_end_matches(')').strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .expect("the module uses versioned glibc symbols");
    assert!(newest <= OLDEST_GLIBC, "the module needs GLIBC_{}.{}, newer than {OLDEST_GLIBC:?}", newest.0, newest.1);
}

/// The file at `path` (symbolic links followed) copied to the same path under `root`; `link`: a
/// hard link instead when the file system allows (Envoy's binary is large).
fn place(root: &Path, path: &Path, link: bool) {
    let to = root.join(path.strip_prefix("/").unwrap());
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let path = std::fs::canonicalize(path).unwrap();
    if !link || std::fs::hard_link(&path, &to).is_err() {
        std::fs::copy(&path, &to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", path.display(), to.display()));
    }
}

/// A root file system with Envoy, the libraries `ldd` says it needs (glibc's) and the module,
/// each at its own path, and nothing else: what a distroless proxy image holds.
fn glibc_only_root(envoy: &Path, module: &Path) -> tempfile::TempDir {
    let root = tempfile::Builder::new().prefix("ug-glibc-root-").tempdir_in(paths::target_dir()).unwrap();
    let out = Command::new("ldd").arg(envoy).output().expect("ldd runs");
    let libraries: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    assert!(libraries.iter().any(|l| l.ends_with("libc.so.6")), "ldd {}: {libraries:?}", envoy.display());
    for library in &libraries {
        let name = library.file_name().unwrap().to_string_lossy().to_string();
        assert!(GLIBC_LIBRARIES.contains(&name.as_str()), "Envoy itself needs {name}, beyond glibc");
        place(root.path(), library, false);
    }
    place(root.path(), envoy, true);
    place(root.path(), module, false);
    for dir in ["dev", "proc"] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    std::fs::create_dir_all(root.path().join(std::env::temp_dir().strip_prefix("/").unwrap())).unwrap();
    root
}

/// Envoy Gateway runs `envoyproxy/envoy:distroless-*` by default, whose root holds glibc and
/// nothing else (no `libgcc_s.so.1`): there, Envoy loads the module and it decides. Run in a
/// private mount namespace, `chroot`ed into such a root (the temporary folder, `/dev` and `/proc`
/// bound in).
#[test]
fn the_module_loads_and_serves_in_a_root_with_only_glibc_as_distroless_images_have() {
    let envoy_bin = paths::envoy_executable().unwrap();
    let module = paths::native_module_path().unwrap();
    let root = glibc_only_root(&envoy_bin, &module);
    let r = root.path().display().to_string();
    let tmp = std::env::temp_dir().display().to_string();
    let script = format!(
        "mount --bind {tmp} {r}{tmp} && mount --bind /dev {r}/dev && mount -t proc proc {r}/proc && exec chroot {r} \"$@\""
    );
    let launch = Launch {
        concurrency: 1,
        verbose: true,
        wrapper: vec!["unshare".into(), "--mount".into(), "sh".into(), "-c".into(), script, "sh".into()],
        ..Launch::default()
    };
    let b = Backend::ok().unwrap();
    let config = json!({
        "rate_limiter": {"rules": [{"name": "all", "key": [{"constant": "all"}], "limit": {"requests": 1, "per": "1h"}}]},
    });
    let cfg = Bootstrap::new()
        .filter(dynamic_module_filter("upstream_guard", &config))
        .route(route("/", "backend"))
        .cluster(cluster("backend", b.addr()))
        .build();
    let envoy = Envoy::start_launch(&cfg, &launch).unwrap_or_else(|e| panic!("Envoy in a glibc-only root: {e}"));
    let addr = envoy.main().unwrap();
    let statuses: Vec<u16> = (0..2).map(|_| http::get(addr, "/", &[]).unwrap().status).collect();
    assert_eq!(statuses, [200, 429], "log: {}", envoy.log());
    assert_eq!(b.requests(), 1);
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
}

/// A name Envoy Gateway's CRDs accept for a dynamic module (`EnvoyExtensionPolicy`
/// `spec.dynamicModule[].name`, `EnvoyProxy` `spec.dynamicModules[].name`): the pattern
/// `^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`, at most 253 characters.
fn eg_module_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (1..=253).contains(&name.len())
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
}

/// The indented lines of the YAML document of `kind` in `text`, trimmed.
fn document<'a>(text: &'a str, kind: &str) -> Vec<&'a str> {
    let doc = text.split("\n---\n").find(|d| d.lines().any(|l| l == format!("kind: {kind}"))).unwrap_or_default();
    doc.lines().filter(|l| !l.trim_start().starts_with('#')).map(str::trim).collect()
}

#[test]
fn the_envoy_gateway_policy_names_a_module_its_envoy_proxy_allows_on_envoy_1_40() {
    let path = paths::workspace_root().join("envoy-examples/native/envoy-gateway.yaml");
    let eg = std::fs::read_to_string(&path).unwrap();
    let policy = document(&eg, "EnvoyExtensionPolicy");
    let proxy = document(&eg, "EnvoyProxy");
    assert!(!policy.is_empty() && !proxy.is_empty(), "{}: both documents", path.display());
    let after = |doc: &[&str], key: &str| -> Vec<String> {
        let at = doc.iter().position(|l| *l == key).unwrap_or_else(|| panic!("no {key} in {doc:?}"));
        doc[at + 1..].iter().filter_map(|l| l.strip_prefix("- name: ")).map(str::to_string).collect()
    };
    let used = after(&policy, "dynamicModule:");
    let allowed = after(&proxy, "dynamicModules:");
    assert_eq!(used.len(), 1, "{used:?}");
    assert!(eg_module_name(&used[0]), "{:?} does not match Envoy Gateway's name pattern", used[0]);
    assert!(allowed.contains(&used[0]), "the policy's module {:?} is not in the allowlist {allowed:?}", used[0]);
    // The filter inside the library is the combined module's (`upstream_guard`, as the hooks answer).
    assert!(policy.contains(&"filterName: upstream_guard"), "{policy:?}");
    assert!(proxy.contains(&"type: Local"), "{proxy:?}");
    let library = proxy.iter().find_map(|l| l.strip_prefix("path: ")).expect("a local path");
    assert!(library.starts_with('/') && library.ends_with("/libupstream_guard.so"), "{library}");
    let image = proxy.iter().find_map(|l| l.strip_prefix("image: ")).expect("the proxy image");
    assert!(image.ends_with(":distroless-v1.40.0"), "the proxy runs Envoy 1.40, the module's minor version: {image}");
    assert!(eg.contains("FROM docker.io/envoyproxy/envoy:distroless-v1.40.0"), "the image is built on Envoy's");
    assert!(!eg_module_name("upstream_guard"), "the pattern refuses underscores");
}
