//! Differential: the diagnostics filter in real Envoy and under the deterministic host, given
//! the same properties, write the same `x-upstream-diagnosis`. This pins the host's property
//! encodings (strings raw, integers 8-byte little-endian) to Envoy's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use test_harness::backend::{self, Backend, Behavior};
use test_harness::bootstrap::{cluster, route, wasm_filter, Bootstrap};
use test_harness::envoy::Envoy;
use test_harness::host::Host;
use test_harness::{http, parse_diagnosis, paths};
use upstream_guard::diagnose::Flag;

const CONFIG: &str = r#"{"trusted_cidrs": ["127.0.0.1/32"]}"#;

/// The header Envoy produced for a request to `path`.
fn envoy_header(envoy: &Envoy, path: &str) -> String {
    let r = http::get(envoy.main().unwrap(), path, &[]).unwrap();
    r.header("x-upstream-diagnosis").unwrap_or_else(|| panic!("no diagnosis for {path}: {r:?}")).to_string()
}

/// Replays the properties an Envoy header reports through the harness and returns its header.
fn harness_header(host: &Host, envoy_value: &str) -> String {
    let d = parse_diagnosis(envoy_value).unwrap();
    let flags: u64 =
        d["flags"].split(',').filter_map(|n| Flag::ALL.iter().find(|f| f.short_name() == n)).map(|f| f.bit()).sum();
    let plugin =
        host.load(paths::wasm_path("diagnostics").unwrap(), serde_json::from_str::<Value>(CONFIG).unwrap()).unwrap();
    let mut s = plugin.worker(0).http_stream().property("source.address", "127.0.0.1:40000");
    s.request_headers(&[(":path", "/"), (":method", "GET")], true).unwrap();
    s.set_property_u64("response.code", d["status"].parse().unwrap());
    s.set_property_u64("response.flags", flags);
    if let Some(v) = d.get("details") {
        s.set_property("response.code_details", v);
    }
    for (key, prop) in [("cluster", "xds.cluster_name"), ("upstream", "upstream.address"), ("route", "xds.route_name")]
    {
        if let Some(v) = d.get(key) {
            s.set_property(prop, v);
        }
    }
    if let Some(a) = d.get("attempts") {
        s.set_property_u64("upstream.request_attempt_count", a.parse().unwrap());
    }
    s.response_headers(&[(":status", &d["status"])], false).unwrap();
    s.response_header("x-upstream-diagnosis").expect("the harness run wrote a diagnosis")
}

#[test]
fn envoy_and_the_harness_agree_on_every_fault() {
    let refused = backend::closed_port().unwrap();
    let hanging = Backend::start(Behavior::Hang).unwrap();
    let failing = Backend::start(Behavior::Status(503)).unwrap();
    let mut slow = route("/slow", "hanging");
    slow["route"]["timeout"] = json!("0.3s");
    let mut retry = route("/retry", "failing");
    retry["route"]["retry_policy"] = json!({"retry_on": "5xx", "num_retries": 1});
    let mut empty = cluster("empty", refused);
    empty["load_assignment"]["endpoints"] = json!([]);
    let cfg = Bootstrap::new()
        .filter(wasm_filter(
            "diagnostics",
            &paths::wasm_path("diagnostics").unwrap(),
            &serde_json::from_str(CONFIG).unwrap(),
        ))
        .route(route("/refused", "refused"))
        .route(slow)
        .route(retry)
        .route(route("/failing", "failing"))
        .route(route("/empty", "empty"))
        .cluster(cluster("refused", refused))
        .cluster(cluster("hanging", hanging.addr()))
        .cluster(cluster("failing", failing.addr()))
        .cluster(empty)
        .build();
    let envoy = Envoy::start(&cfg).unwrap();
    let host = Host::new();
    for path in ["/refused", "/slow", "/retry", "/failing", "/empty", "/no-such-route"] {
        let from_envoy = envoy_header(&envoy, path);
        let from_harness = harness_header(&host, &from_envoy);
        assert_eq!(from_harness, from_envoy, "{path}");
        println!("{path}: {from_envoy}");
    }
}
