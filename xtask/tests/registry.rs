//! Packaging against real components on loopback: Debian's `docker-registry` receives every
//! filter, and `skopeo`, an independent client, pulls it back. Also: refused and unreachable
//! registries fail with a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_harness::paths;
use xtask::oci::{self, Annotations, OciError, Reference, Variant};

use xtask::FILTERS;

/// A `docker-registry` on an ephemeral loopback port, storing in a temp dir; killed on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start(read_only: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let maintenance = if read_only { "  maintenance:\n    readonly:\n      enabled: true\n" } else { "" };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n{maintenance}http:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "docker-registry is missing: run `cargo xtask setup` (installs Debian's docker-registry and skopeo)",
            );
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("http://{addr}/v2/")).call().is_err() {
            assert!(Instant::now() < deadline, "registry did not start on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, addr, _dir: dir }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ann(filter: &str) -> Annotations {
    Annotations {
        title: filter.into(),
        version: "0.1.0".into(),
        revision: "test".into(),
        source: "https://example.invalid".into(),
    }
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo").args(args).output().expect("skopeo is missing: run `cargo xtask setup`");
    assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn every_filter_round_trips_through_a_real_registry_byte_identical() {
    let reg = Registry::start(false);
    for filter in FILTERS.iter() {
        let wasm = std::fs::read(paths::wasm_path(filter).unwrap()).unwrap();
        let image = oci::build_image(&wasm, Variant::Compat, &ann(filter)).unwrap();
        let reference: Reference = format!("{}/upstream-guard/{filter}:test", reg.addr).parse().unwrap();
        let pushed = oci::push(&image, &reference).unwrap();
        assert_eq!(pushed, image.manifest_digest(), "the registry agrees on the manifest digest");

        let url = format!("docker://{}/upstream-guard/{filter}:test", reg.addr);
        let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &url]);
        assert_eq!(oci::digest(&raw), image.manifest_digest(), "skopeo sees our manifest, byte for byte");
        let m: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(m["mediaType"], oci::MANIFEST_MEDIA_TYPE);
        assert_eq!(m["layers"].as_array().unwrap().len(), 1);
        assert_eq!(m["layers"][0]["mediaType"], oci::TAR_GZIP_LAYER);

        let out = tempfile::tempdir().unwrap();
        let dest = format!("dir:{}", out.path().join("img").display());
        skopeo(&["copy", "--quiet", "--src-tls-verify=false", &url, &dest]);
        let layer_hex = m["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
        let layer = std::fs::read(out.path().join("img").join(layer_hex)).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer.as_slice()));
        let mut found = None;
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().file_name().and_then(|n| n.to_str()) == Some("plugin.wasm") {
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                found = Some(bytes);
            }
        }
        assert_eq!(found.as_deref(), Some(wasm.as_slice()), "{filter}: plugin.wasm pulled back byte-identical");
        println!("{filter}: manifest {} wasm sha256 {}", image.manifest_digest(), image.wasm_sha256);
    }
}

#[test]
fn the_oci_variant_is_accepted_and_carries_the_module_as_its_own_layer() {
    let reg = Registry::start(false);
    let wasm = std::fs::read(paths::wasm_path("diagnostics").unwrap()).unwrap();
    let image = oci::build_image(&wasm, Variant::Oci, &ann("diagnostics")).unwrap();
    let reference: Reference = format!("{}/upstream-guard/diagnostics:oci", reg.addr).parse().unwrap();
    oci::push(&image, &reference).unwrap();
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/upstream-guard/diagnostics:oci", reg.addr),
    ]);
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["config"]["mediaType"], oci::WASM_CONFIG_MEDIA_TYPE);
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[1]["mediaType"], oci::WASM_LAYER_MEDIA_TYPE);
    assert_eq!(layers[1]["digest"].as_str().unwrap(), oci::digest(&wasm));
}

#[test]
fn a_read_only_registry_refuses_the_push_with_a_clear_error() {
    let reg = Registry::start(true);
    let wasm = std::fs::read(paths::wasm_path("diagnostics").unwrap()).unwrap();
    let image = oci::build_image(&wasm, Variant::Compat, &ann("diagnostics")).unwrap();
    let reference: Reference = format!("{}/upstream-guard/diagnostics:ro", reg.addr).parse().unwrap();
    let err = oci::push(&image, &reference).unwrap_err();
    assert!(matches!(err, OciError::Refused { .. }), "{err}");
    assert!(err.to_string().starts_with("the registry refused"), "{err}");
}

#[test]
fn an_unreachable_registry_is_named_in_the_error() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let wasm = std::fs::read(paths::wasm_path("diagnostics").unwrap()).unwrap();
    let image = oci::build_image(&wasm, Variant::Compat, &ann("diagnostics")).unwrap();
    let reference: Reference = format!("127.0.0.1:{port}/ug/diagnostics:x").parse().unwrap();
    let err = oci::push(&image, &reference).unwrap_err();
    assert!(matches!(err, OciError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port} is unreachable")), "{err}");
}

#[test]
fn the_cli_rejects_unknown_filters_and_bad_references_before_building() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["push", "127.0.0.1:1/ug", "--filter", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown filter \"nope\"") && err.contains("diagnostics"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(["push"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: cargo xtask push"));
}
