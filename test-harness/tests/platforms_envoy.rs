//! Each shipped mesh manifest, run the way its platform runs it: the plugin configuration read
//! from the manifest file itself, in a real Envoy with the platform's cluster names, client
//! address settings and the routes its route API expresses (`test_harness::platform`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use test_harness::backend::{Backend, Behavior};
use test_harness::bootstrap::{cluster, wasm_filter, Bootstrap};
use test_harness::envoy::Envoy;
use test_harness::platform::{EnvoyRoutes, Platform, SERVICES};
use test_harness::{eventually, http, paths};

/// Every document of a shipped YAML file, parsed by the `yaml` package the validators use.
fn yaml_docs(relative: &str) -> Vec<Value> {
    let script = paths::target_dir().join("npm").join("yaml-to-json.mjs");
    assert!(script.is_file(), "{} is missing: run `cargo xtask setup`", script.display());
    let file = paths::workspace_root().join("envoy-examples").join(relative);
    let out = Command::new("node").arg(&script).arg(&file).output().expect("node is missing: run `cargo xtask setup`");
    assert!(out.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The plugin configuration a platform's manifest for `filter` ships.
fn shipped_config(platform: Platform, filter: &str) -> Value {
    let doc = yaml_docs(&format!("{}/{filter}.yaml", platform.dir())).remove(0);
    match platform {
        Platform::IstioIngress => doc["spec"]["pluginConfig"].clone(),
        Platform::EnvoyGateway => doc["spec"]["wasm"][0]["config"].clone(),
    }
}

/// The example services, each answering with `x-backend: <name>`.
struct Services(BTreeMap<&'static str, Backend>);

impl Services {
    fn start() -> Services {
        Services(SERVICES.iter().map(|s| (*s, Backend::named(Behavior::Status(200), s).unwrap())).collect())
    }
}

/// A bootstrap shaped as `platform` shapes its proxies: its client-address settings, the
/// routes and clusters it makes of the shipped route manifest, and `filters`.
fn platform_bootstrap(platform: Platform, services: &Services, filters: Vec<Value>) -> Bootstrap {
    let routes = yaml_docs(&format!("{}/routes/backend.yaml", platform.dir())).remove(0);
    let EnvoyRoutes { routes, clusters } = platform.envoy_routes(&routes).unwrap();
    let mut b = Bootstrap::new();
    for f in filters {
        b = b.filter(f);
    }
    for (field, value) in platform.hcm() {
        b = b.hcm(field, value);
    }
    for r in routes {
        b = b.route(r);
    }
    for (name, service) in clusters {
        let backend = services.0.get(service.as_str()).unwrap_or_else(|| panic!("no service {service}"));
        b = b.cluster(cluster(&name, backend.addr()));
    }
    b
}

/// An Envoy shaped as `platform` shapes its proxies, running `filter` with the shipped config.
fn platform_envoy(platform: Platform, filter: &str, services: &Services) -> Envoy {
    let config = shipped_config(platform, filter);
    let module = wasm_filter(filter, &paths::wasm_path(filter).unwrap(), &config);
    Envoy::start_with(&platform_bootstrap(platform, services, vec![module]).build(), 2).unwrap()
}

fn served_by(r: &http::Response) -> Option<&str> {
    (r.status == 200).then(|| r.header("x-backend")).flatten()
}

/// 20 requests to the combined module's shipped config are all served by the primary; with the
/// primary failing, requests move to the secondary; checks reach the platform's clusters.
fn serves_and_fails_over(platform: Platform) {
    let services = Services::start();
    let envoy = platform_envoy(platform, "upstream_guard", &services);
    let addr = envoy.main().unwrap();
    let mut conn = http::Connection::open(addr, Duration::from_secs(5)).unwrap();
    let served = (0..20).filter(|_| served_by(&conn.get("/", &[]).unwrap()) == Some("primary")).count();
    assert_eq!(served, 20, "{platform:?}: every healthy request served, by the primary");
    let primary = &services.0["primary"];
    primary.set_healthy(false);
    primary.set(Behavior::Status(503));
    // The rate limiter's 100/s per client still applies: one request per 50 ms stays well inside.
    let moved =
        eventually(Duration::from_secs(15), || served_by(&http::get(addr, "/", &[]).unwrap()) == Some("secondary"));
    assert!(moved, "{platform:?}: failed over to the secondary:\n{}", envoy.log());
    // The checks reach the platform's clusters: every one sent, the secondary's passing.
    for c in platform.clusters() {
        let name = upstream_guard_glue_segment(&c);
        assert_eq!(envoy.stat(&format!("upstream_guard.health.{name}.checks_unsent")).unwrap(), Some(0), "{c}");
    }
    let secondary =
        format!("upstream_guard.health.{}.checks_passed", upstream_guard_glue_segment(&platform.cluster(1)));
    assert!(eventually(Duration::from_secs(5), || envoy.stat(&secondary).unwrap().unwrap_or(0) > 0), "{secondary}");
}

/// A metric name segment as the module writes it (anything but `[A-Za-z0-9_-]` becomes `_`).
fn upstream_guard_glue_segment(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

#[test]
fn envoy_gateway_serves_every_healthy_request_and_fails_over_with_the_shipped_config() {
    serves_and_fails_over(Platform::EnvoyGateway);
}

#[test]
fn istio_ingress_serves_every_healthy_request_and_fails_over_with_the_shipped_config() {
    serves_and_fails_over(Platform::IstioIngress);
}

/// Requests from one client with a different made-up `x-forwarded-for` each: admitted, and the
/// most the shipped limit (100/s, burst 20) allows in the time they took.
fn spoofed_requests(addr: std::net::SocketAddr, client: Option<&str>) -> (usize, usize) {
    let mut conn = http::Connection::open(addr, Duration::from_secs(5)).unwrap();
    let start = Instant::now();
    let admitted = (0..60)
        .filter(|i| {
            let xff = match client {
                Some(c) => format!("198.51.100.{i}, {c}"),
                None => format!("198.51.100.{i}"),
            };
            conn.get("/", &[("x-forwarded-for", &xff)]).unwrap().status == 200
        })
        .count();
    let allowed = 20 + (start.elapsed().as_secs_f64() * 100.0).ceil() as usize;
    (admitted, allowed)
}

#[test]
fn istio_ingress_behind_one_balancer_gives_each_client_its_own_bucket() {
    let services = Services::start();
    let envoy = platform_envoy(Platform::IstioIngress, "rate_limiter", &services);
    let addr = envoy.main().unwrap();
    // The balancer (this test, at 127.0.0.1) appends each client's address.
    let admitted = (0..60)
        .filter(|i| http::get(addr, "/", &[("x-forwarded-for", &format!("203.0.113.{i}"))]).unwrap().status == 200);
    assert_eq!(admitted.count(), 60, "60 distinct clients, one request each");
    // A client writing whatever it likes to the left of the balancer's entry keeps one bucket.
    let (admitted, allowed) = spoofed_requests(addr, Some("203.0.113.200"));
    assert!(admitted <= allowed && admitted < 60, "{admitted} of 60 admitted, at most {allowed} allowed");
}

#[test]
fn envoy_gateway_keys_the_peer_whatever_forwarded_for_says() {
    let services = Services::start();
    let envoy = platform_envoy(Platform::EnvoyGateway, "rate_limiter", &services);
    let (admitted, allowed) = spoofed_requests(envoy.main().unwrap(), None);
    assert!(admitted <= allowed && admitted < 60, "{admitted} of 60 admitted, at most {allowed} allowed");
}

#[test]
fn with_the_module_not_running_a_client_header_reaches_only_the_declared_upstreams() {
    // The routes the platforms can express, in an Envoy where the module is not running (failed
    // open, not loaded) and another cluster exists: whatever a client writes in the header, it
    // reaches a declared upstream, never `internal` (a `cluster_header` route would send it to
    // any cluster Envoy knows).
    for platform in Platform::ALL {
        let services = Services::start();
        let internal = Backend::named(Behavior::Status(200), "internal").unwrap();
        let b = platform_bootstrap(platform, &services, vec![]).cluster(cluster("internal", internal.addr()));
        let envoy = Envoy::start_with(&b.build(), 1).unwrap();
        let addr = envoy.main().unwrap();
        for value in
            ["internal", "outbound|8080||internal.default.svc.cluster.local", "httproute/default/internal/rule/0", ""]
        {
            let r = http::get(addr, "/", &[("x-upstream-cluster", value)]).unwrap();
            assert_eq!(served_by(&r), Some("primary"), "{platform:?}: {value:?} falls through to the catch-all");
        }
        let secondary = platform.cluster(1);
        let r = http::get(addr, "/", &[("x-upstream-cluster", &secondary)]).unwrap();
        assert_eq!(served_by(&r), Some("secondary"), "{platform:?}: a declared upstream, the only choice a header has");
        assert_eq!(internal.requests(), 0, "{platform:?}");
    }
}

#[test]
fn with_the_module_failed_open_after_a_trap_a_client_header_reaches_only_the_declared_upstreams() {
    // The shipped combined config in the test-only `faulty` build (a request header makes it
    // panic), failing open as Envoy Gateway's `failOpen: true` does: once it trapped, requests
    // skip it, and the platform's routes alone decide where a client's header goes.
    let platform = Platform::EnvoyGateway;
    let services = Services::start();
    let internal = Backend::named(Behavior::Status(200), "internal").unwrap();
    let mut module =
        wasm_filter("faulty", &paths::wasm_path("faulty").unwrap(), &shipped_config(platform, "upstream_guard"));
    module["typed_config"]["config"]["failure_policy"] = serde_json::json!("FAIL_OPEN");
    let b = platform_bootstrap(platform, &services, vec![module]).cluster(cluster("internal", internal.addr()));
    let envoy = Envoy::start_with(&b.build(), 1).unwrap();
    let addr = envoy.main().unwrap();
    http::get(addr, "/", &[("x-ug-test-fault", "panic")]).unwrap();
    assert!(envoy.log().contains("fault switch"), "the module trapped:\n{}", envoy.log());
    for value in ["internal", "httproute/default/internal/rule/0"] {
        let r = http::get(addr, "/", &[("x-upstream-cluster", value)]).unwrap();
        assert_eq!(served_by(&r), Some("primary"), "{value:?} falls through to the catch-all");
    }
    // The module is really out of the way: a running one would overwrite this header.
    let r = http::get(addr, "/", &[("x-upstream-cluster", &platform.cluster(1))]).unwrap();
    assert_eq!(served_by(&r), Some("secondary"), "the module failed open: the header is the client's");
    assert_eq!(internal.requests(), 0);
}

#[test]
fn istio_sidecar_config_serves_and_trusts_no_client_address() {
    use test_harness::platform::sidecar;
    let doc = yaml_docs(sidecar::MANIFEST).remove(0);
    let config = doc["spec"]["pluginConfig"].clone();
    // A sidecar's client address is the last x-forwarded-for entry (Istio's inbound listener
    // has use_remote_address: false): nothing may be keyed or trusted on it.
    let text = config.to_string();
    assert!(
        !text.contains("client_ip") && !text.contains("trusted_cidrs") && !text.contains("trust_x_forwarded_for"),
        "{text}"
    );
    assert_eq!(doc["spec"]["match"][0]["mode"], "SERVER", "inbound only");

    let app = Backend::named(Behavior::Status(200), "backend").unwrap();
    let mut b =
        Bootstrap::new().filter(wasm_filter("upstream_guard", &paths::wasm_path("upstream_guard").unwrap(), &config));
    for (field, value) in sidecar::hcm() {
        b = b.hcm(field, value);
    }
    let b = b
        .route(serde_json::json!({"match": {"prefix": "/"}, "route": {"cluster": sidecar::cluster()}}))
        .cluster(cluster(&sidecar::cluster(), app.addr()));
    let envoy = Envoy::start_with(&b.build(), 2).unwrap();
    let addr = envoy.main().unwrap();
    let served = (0..20).filter(|i| {
        let xff = format!("10.0.0.{i}");
        served_by(&http::get(addr, "/", &[("x-forwarded-for", &xff)]).unwrap()) == Some("backend")
    });
    assert_eq!(served.count(), 20);
    // The workload fails: a caller claiming an internal address learns the cause, not the cluster.
    app.set(Behavior::Status(503));
    let r = http::get(addr, "/", &[("x-forwarded-for", "10.0.0.1"), ("accept", "application/json")]).unwrap();
    let diagnosis = r.header("x-upstream-diagnosis").unwrap_or_default().to_string();
    assert!(diagnosis.contains("cause="), "{diagnosis}");
    assert!(!diagnosis.contains("inbound|") && !r.text().contains("inbound|"), "{diagnosis} {}", r.text());
    assert_eq!(envoy.stat("upstream_guard.ratelimit.client_ip_from_header").unwrap().unwrap_or(0), 0);
}
