//! gRPC clients in real Envoy 1.40: each refusal carries the gRPC status that fits (rate limited:
//! RESOURCE_EXHAUSTED; circuit open, no healthy upstream: UNAVAILABLE; each configurable), the
//! diagnosis rides in a response header (gRPC metadata), and no body is rewritten. The upstream
//! service is tonic (Envoy's rate limit service API, answered by a stub that always says OK,
//! serves as "some gRPC service"); the clients are tonic and `grpcio`, the official Python
//! package, which must read each status, message and metadata as the README documents them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code as RlsCode;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use serde_json::{json, Value};
use test_harness::backend::closed_port;
use test_harness::bootstrap::{http2_cluster, module_filter, route, Bootstrap, Shape};
use test_harness::envoy::Envoy;
use test_harness::{parse_diagnosis, paths};
use tonic::{Code, Request, Response, Status};

/// The upstream gRPC service: every call succeeds with `OVERALL_CODE = OK`.
struct Upstream;

#[tonic::async_trait]
impl RateLimitService for Upstream {
    async fn should_rate_limit(&self, _: Request<RateLimitRequest>) -> Result<Response<RateLimitResponse>, Status> {
        Ok(Response::new(RateLimitResponse { overall_code: RlsCode::Ok as i32, ..Default::default() }))
    }
}

/// A gRPC service that fails every call with UNAVAILABLE: tonic answers trailers-only (HTTP
/// 200, `grpc-status: 14` in the headers that end the stream), and counts the calls.
struct Failing(std::sync::Arc<std::sync::atomic::AtomicU64>);

#[tonic::async_trait]
impl RateLimitService for Failing {
    async fn should_rate_limit(&self, _: Request<RateLimitRequest>) -> Result<Response<RateLimitResponse>, Status> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(Status::unavailable("backend overloaded"))
    }
}

/// A tokio runtime with the upstream service on `127.0.0.1:0`.
fn serve() -> (tokio::runtime::Runtime, SocketAddr) {
    serve_with(Upstream)
}

fn serve_with<S: RateLimitService>(service: S) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming(RateLimitServiceServer::new(service), incoming)
            .await;
    });
    (rt, addr)
}

/// Envoy with upstream_guard.wasm configured by `sections`, routing everything to `cluster`.
fn envoy(shape: Shape, sections: Value, cluster: &str, upstream: SocketAddr) -> Envoy {
    let module = module_filter(shape, "upstream_guard", &sections);
    let cfg =
        Bootstrap::new().filter(module).route(route("/", cluster)).cluster(http2_cluster(cluster, upstream)).build();
    Envoy::start(&cfg).unwrap()
}

/// One unary call through Envoy, with `metadata`.
fn call(
    rt: &tokio::runtime::Runtime,
    envoy: SocketAddr,
    metadata: &[(&'static str, &'static str)],
) -> Result<RateLimitResponse, Status> {
    rt.block_on(async {
        let mut client = RateLimitServiceClient::connect(format!("http://{envoy}")).await.unwrap();
        let mut request = Request::new(RateLimitRequest { domain: "test".into(), ..Default::default() });
        for (k, v) in metadata {
            request.metadata_mut().insert(*k, v.parse().unwrap());
        }
        client.should_rate_limit(request).await.map(Response::into_inner)
    })
}

/// The diagnosis a refusal carries in its metadata.
fn diagnosis(status: &Status) -> std::collections::BTreeMap<String, String> {
    let header = status.metadata().get("x-upstream-diagnosis").expect("no x-upstream-diagnosis in the metadata");
    parse_diagnosis(header.to_str().unwrap()).unwrap()
}

const DIAGNOSTICS: &str = "diagnostics";

fn diagnostics() -> Value {
    // json_body is on and the client asks for JSON: a gRPC reply must keep its form all the same.
    json!({"trusted_cidrs": ["127.0.0.1/32"], "json_body": true})
}

fn a_rate_limited_call_gets_resource_exhausted_with_its_diagnosis(shape: Shape) {
    let (rt, upstream) = serve();
    let rules = json!({"rules": [{"name": "one-per-minute", "key": [{"constant": "all"}],
                                  "limit": {"requests": 1, "per": "1m"}}]});
    let envoy = envoy(shape, json!({DIAGNOSTICS: diagnostics(), "rate_limiter": rules}), "grpc", upstream);
    let addr = envoy.main().unwrap();
    let ok = call(&rt, addr, &[("accept", "application/json")]).unwrap();
    assert_eq!(ok.overall_code, RlsCode::Ok as i32, "the first call reaches the upstream service");

    let refused = call(&rt, addr, &[("accept", "application/json")]).unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().starts_with("rate limited by rule \"one-per-minute\""), "{refused:?}");
    assert!(refused.message().ends_with(" s"), "the README's wording, no newline: {refused:?}");
    let d = diagnosis(&refused);
    assert_eq!(d["cause"], "rate_limited");
    assert_eq!((d["status"].as_str(), d["grpc_status"].as_str()), ("200", "8"), "what went out: {d:?}");
    assert_eq!(d["details"], "upstream_guard.rate_limited");
    assert_eq!(refused.metadata().get("retry-after").unwrap(), "60");
}

fn the_rate_limiter_grpc_status_is_configurable(shape: Shape) {
    let (rt, upstream) = serve();
    let rules = json!({"rules": [{"name": "none", "key": [{"constant": "all"}], "limit": {"requests": 1, "per": "1m"}}],
                       "grpc_status": 14});
    let envoy = envoy(shape, json!({"rate_limiter": rules}), "grpc", upstream);
    let addr = envoy.main().unwrap();
    call(&rt, addr, &[]).unwrap();
    assert_eq!(call(&rt, addr, &[]).unwrap_err().code(), Code::Unavailable);
}

fn an_open_circuit_gets_unavailable_with_its_diagnosis(shape: Shape) {
    let (rt, _upstream) = serve();
    let breaker = json!({"failure": {"consecutive": 1}, "open": {"base": "1m"}});
    let envoy =
        envoy(shape, json!({DIAGNOSTICS: diagnostics(), "circuit_breaker": breaker}), "dead", closed_port().unwrap());
    let addr = envoy.main().unwrap();

    // Envoy's own refusal (nothing listens) is diagnosed too: UNAVAILABLE, cause in the metadata.
    let refused = call(&rt, addr, &[("accept", "application/json")]).unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let d = diagnosis(&refused);
    assert_eq!(d["cause"], "connection_refused");
    assert_eq!((d["status"].as_str(), d["grpc_status"].as_str()), ("200", "14"), "Envoy's own refusal alike: {d:?}");

    let open = call(&rt, addr, &[("accept", "application/json")]).unwrap_err();
    assert_eq!(open.code(), Code::Unavailable, "{open:?}");
    // The message is for every client: it names no cluster (the trusted diagnosis does).
    assert!(open.message().starts_with("circuit open: retry after "), "{open:?}");
    assert!(open.message().ends_with(" s"), "{open:?}");
    assert!(!open.message().contains("dead"), "{open:?}");
    assert_eq!(diagnosis(&open)["cause"], "circuit_open");
    assert_eq!(open.metadata().get("x-upstream-guard-circuit").unwrap(), "open");
}

fn no_healthy_upstream_gets_unavailable_with_the_reasons(shape: Shape) {
    let (rt, _upstream) = serve();
    // The reasons name clusters: for clients the health router trusts.
    let router = json!({"upstreams": [{"cluster": "dead"}], "passive": {"consecutive_failures": 1, "ejection": "1m"},
                         "trusted_cidrs": ["127.0.0.1/32"]});
    let sections = json!({DIAGNOSTICS: diagnostics(), "health_router": router});
    let module = module_filter(shape, "upstream_guard", &sections);
    let cfg = Bootstrap::new()
        .filter(module)
        .route(json!({"match": {"prefix": "/"}, "route": {"cluster_header": "x-upstream-cluster"}}))
        .cluster(http2_cluster("dead", closed_port().unwrap()))
        .build();
    let envoy = Envoy::start(&cfg).unwrap();
    let addr = envoy.main().unwrap();

    assert_eq!(call(&rt, addr, &[]).unwrap_err().code(), Code::Unavailable, "refused, and ejected");
    let refused = call(&rt, addr, &[("accept", "application/json")]).unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(diagnosis(&refused)["cause"], "no_healthy_upstream");
    // The reasons (the health router's JSON) arrive as the grpc-message.
    let reasons: Value = serde_json::from_str(refused.message()).unwrap();
    assert_eq!(reasons["upstreams"][0]["cluster"], "dead", "{reasons}");
}

fn a_backends_trailers_only_failures_are_diagnosed_and_trip_the_breaker(shape: Shape) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (rt, upstream) = serve_with(Failing(calls.clone()));
    let breaker = json!({"failure": {"consecutive": 4}, "open": {"base": "1m"}});
    let envoy = envoy(shape, json!({DIAGNOSTICS: diagnostics(), "circuit_breaker": breaker}), "overloaded", upstream);
    let addr = envoy.main().unwrap();
    for i in 0..4 {
        let failed = call(&rt, addr, &[]).unwrap_err();
        assert_eq!(
            (failed.code(), failed.message()),
            (Code::Unavailable, "backend overloaded"),
            "call {i}: the backend's own"
        );
        let d = diagnosis(&failed);
        assert_eq!((d["cause"].as_str(), d["grpc_status"].as_str()), ("upstream_error_response", "14"), "{d:?}");
    }
    let open = call(&rt, addr, &[]).unwrap_err();
    assert_eq!(open.code(), Code::Unavailable);
    assert!(open.message().starts_with("circuit open: retry after "), "four failures in a row opened it: {open:?}");
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "the open circuit kept the fifth call off the backend"
    );
}

/// `grpcio` (the official Python gRPC package, installed by `cargo xtask setup`): `calls` unary
/// calls to the service through Envoy at `target`, each as the client reports it (status name,
/// details, initial and trailing metadata together).
fn grpcio_calls(target: SocketAddr, calls: usize) -> Vec<Value> {
    const CLIENT: &str = r#"
import grpc, json, sys
channel = grpc.insecure_channel(sys.argv[1])
method = channel.unary_unary("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit")
def text(v):
    return v if isinstance(v, str) else v.decode("latin-1")
out = []
for _ in range(int(sys.argv[2])):
    try:
        _, call = method.with_call(b"\x0a\x04test", timeout=10)
        md = list(call.initial_metadata() or []) + list(call.trailing_metadata() or [])
        out.append({"code": "OK", "details": None, "metadata": {k: text(v) for k, v in md}})
    except grpc.RpcError as e:
        md = list(e.initial_metadata() or []) + list(e.trailing_metadata() or [])
        out.append({"code": e.code().name, "details": e.details(), "metadata": {k: text(v) for k, v in md}})
print(json.dumps(out))
"#;
    let out = std::process::Command::new(paths::python().unwrap())
        .arg("-c")
        .arg(CLIENT)
        .arg(target.to_string())
        .arg(calls.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("grpcio: {v:?}");
    v
}

fn grpcio_diagnosis(call: &Value) -> std::collections::BTreeMap<String, String> {
    parse_diagnosis(call["metadata"]["x-upstream-diagnosis"].as_str().expect("a diagnosis in the metadata")).unwrap()
}

fn grpcio_sees_the_documented_status_message_and_metadata_of_each_refusal(shape: Shape) {
    // Rate limited: RESOURCE_EXHAUSTED, the README's message word for word, retry-after.
    let (rt, upstream) = serve();
    let rules = json!({"rules": [{"name": "one-per-minute", "key": [{"constant": "all"}],
                                  "limit": {"requests": 1, "per": "1m"}}]});
    let limited = envoy(shape, json!({DIAGNOSTICS: diagnostics(), "rate_limiter": rules}), "grpc", upstream);
    let calls = grpcio_calls(limited.main().unwrap(), 2);
    assert_eq!(calls[0]["code"], "OK");
    assert_eq!(
        (calls[1]["code"].as_str(), calls[1]["details"].as_str()),
        (Some("RESOURCE_EXHAUSTED"), Some("rate limited by rule \"one-per-minute\": retry after 60 s"))
    );
    assert_eq!(calls[1]["metadata"]["retry-after"], "60");
    assert_eq!(grpcio_diagnosis(&calls[1])["cause"], "rate_limited");
    drop(rt);

    // Nothing listens: Envoy's own UNAVAILABLE, diagnosed; then the open circuit's.
    let breaker = json!({"failure": {"consecutive": 1}, "open": {"base": "1m"}});
    let dead =
        envoy(shape, json!({DIAGNOSTICS: diagnostics(), "circuit_breaker": breaker}), "dead", closed_port().unwrap());
    let calls = grpcio_calls(dead.main().unwrap(), 2);
    assert_eq!(calls[0]["code"], "UNAVAILABLE");
    assert_eq!(grpcio_diagnosis(&calls[0])["cause"], "connection_refused");
    assert_eq!(
        (calls[1]["code"].as_str(), calls[1]["details"].as_str()),
        (Some("UNAVAILABLE"), Some("circuit open: retry after 60 s"))
    );
    assert_eq!(calls[1]["metadata"]["x-upstream-guard-circuit"], "open");

    // A backend failing every call trailers-only: four reach it, with its own message; the
    // fifth meets the open circuit.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (_rt, upstream) = serve_with(Failing(count.clone()));
    let breaker = json!({"failure": {"consecutive": 4}, "open": {"base": "1m"}});
    let failing = envoy(shape, json!({DIAGNOSTICS: diagnostics(), "circuit_breaker": breaker}), "overloaded", upstream);
    let calls = grpcio_calls(failing.main().unwrap(), 5);
    for c in &calls[..4] {
        assert_eq!((c["code"].as_str(), c["details"].as_str()), (Some("UNAVAILABLE"), Some("backend overloaded")));
        assert_eq!(grpcio_diagnosis(c)["grpc_status"], "14");
    }
    assert_eq!(calls[4]["details"], "circuit open: retry after 60 s", "{:?}", calls[4]);
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 4);
}

test_harness::both_shapes!(
    a_rate_limited_call_gets_resource_exhausted_with_its_diagnosis,
    the_rate_limiter_grpc_status_is_configurable,
    an_open_circuit_gets_unavailable_with_its_diagnosis,
    no_healthy_upstream_gets_unavailable_with_the_reasons,
    a_backends_trailers_only_failures_are_diagnosed_and_trip_the_breaker,
    grpcio_sees_the_documented_status_message_and_metadata_of_each_refusal,
);
