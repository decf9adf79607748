//! Differential: the conformance filter in real Envoy and under the deterministic host, on
//! behaviour the host models from Envoy 1.40: a unary gRPC call that times out is closed with
//! status 14 and Envoy's message (not 4), a request's header map is gone once the filter
//! passed the request on (its pairs read as empty in the response callbacks), and header names
//! arrive lowercased and are looked up in any case.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use test_harness::backend::{Backend, Behavior};
use test_harness::bootstrap::{cluster, route, wasm_filter, Bootstrap};
use test_harness::envoy::Envoy;
use test_harness::host::Host;
use test_harness::{http, paths};

/// A request header written in mixed case, as a client may send it.
const MIXED: (&str, &str) = ("X-Mixed-Case", "v");

/// What the client sees of `header` for a request with `x-op: op`, in Envoy.
fn envoy_header(envoy: &Envoy, op: &str, header: &str) -> Option<String> {
    let r = http::get(envoy.main().unwrap(), "/", &[("x-op", op), MIXED]).unwrap();
    r.header(header).map(str::to_string)
}

/// The same under the host: the gRPC call (if any) times out on the fake clock, then the
/// upstream answers 200.
fn harness_header(op: &str, header: &str) -> Option<String> {
    let host = Host::new().clusters(&["authz", "backend"]);
    let p = host.load(paths::wasm_path("conformance").unwrap(), json!({})).unwrap();
    let w = p.worker(0);
    let mut s = w.http_stream();
    s.request_headers(&[(":path", "/"), (":method", "GET"), (":authority", "x"), ("x-op", op), MIXED], true).unwrap();
    host.clock().advance(Duration::from_millis(500));
    w.tick().unwrap();
    s.response_headers(&[(":status", "200")], true).unwrap();
    s.response_header(header)
}

#[test]
fn envoy_and_the_harness_agree_on_grpc_timeouts_and_header_phases() {
    let ok = Backend::ok().unwrap();
    let hanging = Backend::start(Behavior::Hang).unwrap();
    let mut authz = cluster("authz", hanging.addr());
    authz["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        },
    });
    let cfg = Bootstrap::new()
        .filter(wasm_filter("conformance", &paths::wasm_path("conformance").unwrap(), &json!({})))
        .route(route("/", "backend"))
        .cluster(cluster("backend", ok.addr()))
        .cluster(authz)
        .build();
    let envoy = Envoy::start(&cfg).unwrap();
    for (op, header) in
        [("grpc-call", "x-conf-grpc"), ("phases", "x-conf-request-headers-in-response"), ("names", "x-conf-names")]
    {
        let from_envoy = envoy_header(&envoy, op, header);
        assert!(from_envoy.is_some(), "{op}: Envoy's response has no {header}");
        assert_eq!(harness_header(op, header), from_envoy, "{op}");
        println!("{op}: {header}: {}", from_envoy.unwrap_or_default());
    }
}

/// Envoy runs a filter's local reply through that filter's own response callbacks (the reply's
/// headers to `on_http_response_headers`, its body to `on_http_response_body`), and so does the
/// host: the conformance filter marks every response it sees with `x-conf-response: seen` and
/// drops `server`, its own 429 included.
#[test]
fn a_local_reply_runs_through_the_sending_filters_response_callbacks_in_envoy_and_in_the_host() {
    let ok = Backend::ok().unwrap();
    let cfg = Bootstrap::new()
        .filter(wasm_filter("conformance", &paths::wasm_path("conformance").unwrap(), &json!({})))
        .route(route("/", "backend"))
        .cluster(cluster("backend", ok.addr()))
        .build();
    let envoy = Envoy::start(&cfg).unwrap();
    let r = http::get(envoy.main().unwrap(), "/", &[("x-op", "reply")]).unwrap();
    println!("envoy: {} {:?}", r.status, r.headers);
    assert_eq!((r.status, r.header("x-conf")), (429, Some("local")));
    assert_eq!(r.header("x-conf-response"), Some("seen"), "Envoy: {r:?}");
    assert_eq!(ok.requests(), 0);

    let host = Host::new().clusters(&["backend"]);
    let p = host.load(paths::wasm_path("conformance").unwrap(), json!({})).unwrap();
    let w = p.worker(0);
    let mut s = w.http_stream();
    s.request_headers(&[(":path", "/"), (":method", "GET"), (":authority", "x"), ("x-op", "reply")], true).unwrap();
    let reply = s.local_response().expect("the filter replied");
    assert_eq!((reply.status, reply.header("x-conf")), (429, Some("local")), "what the filter sent");
    assert_eq!(s.response_header("x-conf-response").as_deref(), Some("seen"), "{:?}", s.response_headers_now());
    assert_eq!(s.response_header(":status").as_deref(), Some("429"));
    assert_eq!(s.response_body_now(), b"slow down");
}
