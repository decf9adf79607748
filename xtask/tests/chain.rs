//! `envoy-examples/upstream_guard/envoy.yaml` (one module, four stages) and
//! `envoy-examples/chain/envoy.yaml` (four filters) in real Envoy (two workers), as the demo runs
//! them: the same tour gives the same answers, every policy does its part and the diagnosis
//! explains each failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;
use test_harness::backend::{Backend, Behavior};
use test_harness::envoy::Envoy;
use test_harness::{http, parse_diagnosis};
use xtask::demo::Example;

fn cause(r: &http::Response) -> String {
    parse_diagnosis(r.header("x-upstream-diagnosis").expect("a diagnosis")).unwrap()["cause"].clone()
}

#[test]
fn the_module_limits_breaks_fails_over_and_explains() {
    tour(Example::Module);
}

#[test]
fn the_dynamic_module_limits_breaks_fails_over_and_explains() {
    tour(Example::Native);
}

#[test]
fn the_chain_limits_breaks_fails_over_and_explains() {
    tour(Example::Chain);
}

fn tour(example: Example) {
    let primary = Backend::named(Behavior::Status(200), "primary").unwrap();
    let secondary = Backend::named(Behavior::Status(200), "secondary").unwrap();
    let flaky = Backend::named(Behavior::Status(503), "flaky").unwrap();
    let yaml = xtask::demo::example_config(example, primary.addr(), secondary.addr(), flaky.addr()).unwrap();
    let envoy = Envoy::start_yaml(&yaml, 2).unwrap();
    let addr = envoy.main().unwrap();

    let r = http::get(addr, "/api", &[]).unwrap();
    assert_eq!((r.status, r.header("x-backend")), (200, Some("primary")));

    let statuses: Vec<u16> = (0..4).map(|_| http::get(addr, "/limited", &[]).unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(cause(&http::get(addr, "/limited", &[]).unwrap()), "rate_limited");

    for _ in 0..3 {
        let r = http::get(addr, "/flaky", &[]).unwrap();
        assert_eq!((r.status, cause(&r).as_str()), (503, "upstream_error_response"));
    }
    let r = http::get(addr, "/flaky", &[]).unwrap();
    assert_eq!(r.header("x-upstream-guard-circuit"), Some("open"));
    assert_eq!(cause(&r), "circuit_open");
    assert_eq!(flaky.requests(), 3);

    primary.kill();
    let t = Instant::now();
    while http::get(addr, "/api", &[]).unwrap().header("x-backend") != Some("secondary") {
        assert!(t.elapsed() < Duration::from_secs(10), "no failover");
        std::thread::sleep(Duration::from_millis(20));
    }

    secondary.kill();
    let t = Instant::now();
    loop {
        let r = http::get(addr, "/api", &[("accept", "application/json")]).unwrap();
        if r.status == 503 && cause(&r) == "no_healthy_upstream" {
            assert_eq!(r.header("content-type"), Some("application/json"));
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            let reasons: Vec<&str> =
                body["upstreams"].as_array().unwrap().iter().map(|u| u["reason"].as_str().unwrap()).collect();
            assert_eq!(reasons.len(), 2, "{body}");
            assert!(reasons.iter().all(|r| !r.is_empty()), "{body}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never failed fast: {} {:?}",
            r.status,
            r.header("x-upstream-diagnosis")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `yaml` without the HTTP filters named `names` (each `- name:` entry and what is indented
/// under it).
fn without_filters(yaml: &str, names: &[&str]) -> String {
    let mut out = Vec::new();
    let mut dropping: Option<usize> = None;
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(at) = dropping {
            if line.trim().is_empty() || indent > at {
                continue;
            }
            dropping = None;
        }
        if names.iter().any(|n| line.trim() == format!("- name: {n}")) {
            dropping = Some(indent);
            continue;
        }
        out.push(line);
    }
    out.join("\n")
}

/// The cluster a request claiming `x-upstream-cluster: <claim>` reached (`x-backend`).
fn reached(yaml: &str, claim: &str) -> Option<String> {
    let envoy = Envoy::start_yaml(yaml, 1).unwrap();
    let r = http::get(envoy.main().unwrap(), "/api", &[("x-upstream-cluster", claim)]).unwrap();
    r.header("x-backend").map(str::to_string)
}

/// Every example routes on the `x-upstream-cluster` the module writes, and removes the client's
/// own copy first (an early header mutation: before route selection and before any filter). With the module's filters
/// taken out of the file, as when the module does not run (failed to load, trapped, a panic
/// caught and the stream let go on), a client that names a cluster still reaches the default
/// one; without the removal it would reach the cluster it named.
#[test]
fn with_the_module_not_running_a_client_header_picks_no_cluster() {
    let modules = ["envoy.filters.http.wasm", "envoy.filters.http.dynamic_modules"];
    let primary = Backend::named(Behavior::Status(200), "primary").unwrap();
    let secondary = Backend::named(Behavior::Status(200), "secondary").unwrap();
    let flaky = Backend::named(Behavior::Status(200), "flaky").unwrap();
    let mut configs: Vec<(String, String, &str)> = [Example::Module, Example::Chain, Example::Native]
        .into_iter()
        .map(|e| {
            let yaml = xtask::demo::example_config(e, primary.addr(), secondary.addr(), flaky.addr()).unwrap();
            (format!("{e:?}"), yaml, "flaky")
        })
        .collect();
    let path = test_harness::paths::workspace_root().join("envoy-examples/health_router/envoy.yaml");
    let health_router = std::fs::read_to_string(path)
        .unwrap()
        .replace("port_value: 10000", "port_value: 0")
        .replace("port_value: 9901", "port_value: 0")
        .replace("port_value: 8081", &format!("port_value: {}", primary.addr().port()))
        .replace("port_value: 8082", &format!("port_value: {}", secondary.addr().port()))
        .replace("filename: target/", &format!("filename: {}/", test_harness::paths::target_dir().display()));
    configs.push(("health_router".into(), health_router, "secondary"));
    for (name, yaml, claim) in configs {
        let early = "envoy.http.early_header_mutation.header_mutation";
        assert!(yaml.contains(early), "{name}: no removal of the client's header");
        let unguarded = without_filters(&yaml, &modules);
        assert_eq!(reached(&unguarded, claim).as_deref(), Some("primary"), "{name}: the client picked {claim}");
        let bare = without_filters(&unguarded, &[early]).replace("early_header_mutation_extensions:", "");
        assert_eq!(reached(&bare, claim).as_deref(), Some(claim), "{name}: the check can tell");
    }
}
