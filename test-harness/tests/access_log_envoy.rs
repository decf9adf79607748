//! Each stage's verdict in Envoy's access log (real Envoy 1.40): the stages publish a logfmt line
//! per stage as filter state `wasm.upstream_guard.<stage>`, and a JSON access log prints them with
//! `%FILTER_STATE(wasm.upstream_guard.<stage>:PLAIN)%`, under success and under faults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use test_harness::backend::{closed_port, Backend, Behavior};
use test_harness::bootstrap::{cluster, module_filter, Bootstrap, Shape};
use test_harness::envoy::Envoy;
use test_harness::{eventually, http, paths};

const STAGES: [&str; 4] = ["diagnostics", "rate_limiter", "health_router", "circuit_breaker"];

/// The JSON access log the README shows: Envoy's own fields and one per stage.
fn access_log(path: &Path) -> Value {
    let mut format = json!({
        "path": "%REQ(:PATH)%",
        "status": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
    });
    for stage in STAGES {
        format[stage] = json!(format!("%FILTER_STATE(wasm.upstream_guard.{stage}:PLAIN)%"));
    }
    json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path.display().to_string(),
            "log_format": {"json_format": format},
        },
    }])
}

fn sections() -> Value {
    json!({
        "diagnostics": {"trusted_cidrs": ["127.0.0.1/32"]},
        "rate_limiter": {"rules": [{"name": "limited", "match": {"path_prefix": "/limited"},
                                    "key": [{"constant": "all"}], "limit": {"requests": 1, "per": "1m"}}]},
        "health_router": {
            "upstreams": [{"cluster": "primary"}, {"cluster": "secondary"}, {"cluster": "flaky"}, {"cluster": "down"},
                          {"cluster": "reset"}, {"cluster": "gone"}],
            "routes": [{"path_prefix": "/flaky", "upstreams": ["flaky"]}, {"path_prefix": "/down", "upstreams": ["down"]},
                       {"path_prefix": "/reset", "upstreams": ["reset"]},
                       {"path_prefix": "/failover", "upstreams": ["gone", "secondary"]},
                       {"path_prefix": "/", "upstreams": ["primary", "secondary"]}],
            // A refused connection ejects at once; a 500 does not (the breaker counts those).
            "passive": {"consecutive_failures": 1, "ejection": "1m", "statuses": [502]},
        },
        "circuit_breaker": {"failure": {"consecutive": 2}, "open": {"base": "1m"}},
    })
}

/// Envoy with `filters`, the four clusters, a `cluster_header` route and the access log.
fn start(filters: Vec<Value>, backends: &[(&str, std::net::SocketAddr)], log: &Path) -> Envoy {
    let mut b = Bootstrap::new().route(json!({"match": {"prefix": "/"},
        "route": {"cluster_header": "x-upstream-cluster", "timeout": "5s"}}));
    for f in filters {
        b = b.filter(f);
    }
    for (name, addr) in backends {
        b = b.cluster(cluster(name, *addr));
    }
    let mut cfg = b.build();
    cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] =
        access_log(log);
    Envoy::start_with_args(&cfg, 1, &["--file-flush-interval-msec", "50"]).unwrap()
}

/// The access log's lines once it holds `n` of them.
fn lines(log: &Path, n: usize) -> Vec<Value> {
    let read = || -> Vec<Value> {
        std::fs::read_to_string(log).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    };
    assert!(
        eventually(Duration::from_secs(10), || read().len() >= n),
        "the access log has {} of {n} lines",
        read().len()
    );
    read()
}

/// A stage's field in a log line (`None`: the stage wrote nothing, Envoy printed `-`/null).
fn field<'a>(line: &'a Value, stage: &str) -> Option<&'a str> {
    line[stage].as_str().filter(|v| *v != "-")
}

/// Requests that meet every fault, in order, and what each stage must have logged for them:
/// (path, status, diagnostics, rate limiter, health router, circuit breaker).
fn tour(addr: std::net::SocketAddr) -> Vec<(&'static str, u16, [Option<&'static str>; 4])> {
    let mut expected = Vec::new();
    let mut go = |path: &'static str, status: u16, fields: [Option<&'static str>; 4]| {
        let r = http::get(addr, path, &[]).unwrap();
        assert_eq!(r.status, status, "{path}: {}", r.text());
        expected.push((path, status, fields));
    };
    // Success: nothing to say (the router's plain first choice is Envoy's upstream_cluster).
    go("/ok", 200, [None, None, None, None]);
    // Rate limited: the first request takes the only token (an admission says nothing: no line
    // without `log_allowed`), the second is refused.
    go("/limited", 200, [None, None, None, None]);
    go(
        "/limited",
        429,
        [Some("cause=rate_limited flags=-"), Some("rule=limited decision=limited retry_after=60"), None, None],
    );
    // Refused connection: diagnosed; passive detection ejects `down` at once.
    go("/down", 503, [Some("cause=connection_refused flags=UF"), None, None, None]);
    // No healthy upstream: refused by the router, saying which upstream was passed over and why.
    go(
        "/down",
        503,
        [Some("cause=no_healthy_upstream flags=-"), None, Some("reason=none_healthy skipped=down:ejected"), None],
    );
    // Circuit: two 500s trip it (the second response says so), the third request is refused.
    go("/flaky", 500, [Some("cause=upstream_error_response flags=-"), None, None, None]);
    go(
        "/flaky",
        500,
        [Some("cause=upstream_error_response flags=-"), None, None, Some("cluster=flaky state=open decision=tripped")],
    );
    go(
        "/flaky",
        503,
        [Some("cause=circuit_open flags=-"), None, None, Some("cluster=flaky state=open decision=refused")],
    );
    // A reset in the middle of the body: the headers said 200, the end of the stream says why.
    go("/reset", 200, [Some("cause=upstream_reset flags=UPE"), None, None, None]);
    // Failover: the first choice refuses the connection, which ejects it, and the next request
    // goes to the secondary, saying why.
    go("/failover", 503, [Some("cause=connection_refused flags=UF"), None, None, None]);
    go("/failover", 200, [None, None, Some("upstream=secondary reason=failover skipped=gone:ejected"), None]);
    expected
}

fn check(log: &Path, expected: &[(&str, u16, [Option<&str>; 4])]) {
    let got = lines(log, expected.len());
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for (line, (path, status, fields)) in got.iter().zip(expected) {
        assert_eq!(line["path"], *path, "{line}");
        assert_eq!(line["status"], *status, "{line}");
        for (stage, want) in STAGES.iter().zip(fields) {
            assert_eq!(field(line, stage), *want, "{path} ({status}), {stage}: {line}");
        }
    }
}

/// The backends (kept alive for the test) and every cluster's address.
fn backends() -> (Vec<Backend>, Vec<(&'static str, std::net::SocketAddr)>) {
    let backends = vec![
        Backend::ok().unwrap(),
        Backend::ok().unwrap(),
        Backend::start(Behavior::Status(500)).unwrap(),
        Backend::start(Behavior::ResetMidResponse).unwrap(),
    ];
    let clusters = vec![
        ("primary", backends[0].addr()),
        ("secondary", backends[1].addr()),
        ("flaky", backends[2].addr()),
        ("reset", backends[3].addr()),
        ("down", closed_port().unwrap()),
        ("gone", closed_port().unwrap()),
    ];
    (backends, clusters)
}

fn one_module_logs_every_stage_verdict_under_faults(shape: Shape) {
    let (_backends, clusters) = backends();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let module = module_filter(shape, "upstream_guard", &sections());
    let envoy = start(vec![module], &clusters, &log);
    let expected = tour(envoy.main().unwrap());
    check(&log, &expected);
}

fn four_filters_log_the_same_fields(shape: Shape) {
    let (_backends, clusters) = backends();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let s = sections();
    let filters = STAGES.iter().map(|stage| module_filter(shape, stage, &s[*stage])).collect();
    let envoy = start(filters, &clusters, &log);
    let expected = tour(envoy.main().unwrap());
    check(&log, &expected);
}

#[test]
fn every_example_logs_the_verdict_of_each_of_its_stages() {
    let examples = paths::workspace_root().join("envoy-examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let yaml = entry.unwrap().path().join("envoy.yaml");
        let Ok(text) = std::fs::read_to_string(&yaml) else { continue };
        for stage in STAGES.iter().filter(|s| text.contains(&format!("root_id: {s}"))) {
            let field = format!("{stage}: \"%FILTER_STATE(wasm.upstream_guard.{stage}:PLAIN)%\"");
            assert!(text.contains(&field), "{}: the access log lacks {field}", yaml.display());
            checked += 1;
        }
    }
    assert!(checked >= 9, "{checked} stage fields checked");
}

test_harness::both_shapes!(one_module_logs_every_stage_verdict_under_faults, four_filters_log_the_same_fields,);
