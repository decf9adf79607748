//! Faults of the proxy around the filters, in real Envoy: a plugin configuration changed at run
//! time through a file-based dynamic listener (LDS from a path), a filter that traps under each
//! `failure_policy`, and health checks to clusters that do not exist or never answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{json, Value};
use test_harness::backend::{Backend, Behavior, Blackhole};
use test_harness::bootstrap::{cluster, file_lds, module_filter, route, write_lds, Bootstrap, Shape};
use test_harness::envoy::Envoy;
use test_harness::{eventually, http, parse_diagnosis};

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).unwrap().unwrap_or(0)
}

fn module(shape: Shape, name: &str, config: &Value) -> Value {
    module_filter(shape, name, config)
}

/// The listener of `bootstrap` with its wasm filter's configuration replaced.
fn with_config(shape: Shape, listener: &Value, config: &Value) -> Value {
    let mut l = listener.clone();
    let filters = &mut l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
    match shape {
        Shape::Wasm => filters[0]["typed_config"]["config"]["configuration"]["value"] = json!(config.to_string()),
        Shape::Native => filters[0]["typed_config"]["filter_config"]["value"] = json!(config.to_string()),
    }
    l
}

fn a_bad_plugin_config_over_lds_is_refused_while_the_old_one_serves_and_state_survives_a_good_one(shape: Shape) {
    let ok = Backend::ok().unwrap();
    let flaky = Backend::start(Behavior::Status(503)).unwrap();
    let v1 = json!({
        "diagnostics": {"header": "x-diag-v1", "on": "always"},
        "rate_limiter": {"rules": [{"name": "api", "match": {"path_prefix": "/api"}, "key": [{"constant": "all"}],
                                    "limit": {"requests": 3, "per": "1h"}}]},
        "circuit_breaker": {"failure": {"consecutive": 2}, "open": {"base": "1h", "max": "2h"}},
    });
    let dir = tempfile::tempdir().unwrap();
    let lds = dir.path().join("listeners.json");
    let (bootstrap, listener) = file_lds(
        Bootstrap::new()
            .filter(module(shape, "upstream_guard", &v1))
            .route(route("/flaky", "flaky"))
            .route(route("/", "ok"))
            .cluster(cluster("ok", ok.addr()))
            .cluster(cluster("flaky", flaky.addr()))
            .build(),
        &lds,
    );
    write_lds(&lds, 1, &listener).unwrap();
    let envoy = Envoy::start_with(&bootstrap, 2).unwrap();
    assert!(eventually(Duration::from_secs(10), || envoy.listener("main").is_ok()), "{}", envoy.log());
    let get = |path: &str| http::get(envoy.main().unwrap(), path, &[]).unwrap();

    // Version 1 serves: three /api requests, then 429; the flaky cluster's circuit opens.
    let statuses: Vec<u16> = (0..4).map(|_| get("/api").status).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!((get("/flaky").status, get("/flaky").status), (503, 503));
    let open = get("/flaky");
    assert_eq!((open.status, open.header("x-upstream-guard-circuit")), (503, Some("open")));
    assert_eq!(flaky.requests(), 2);
    let accepted = stat(&envoy, "listener_manager.lds.update_success");

    // Version 2 is bad: refused (NACKed), naming the field; version 1 keeps serving.
    let mut bad = v1.clone();
    bad["rate_limiter"]["rules"][0]["limit"]["per"] = json!("soon");
    write_lds(&lds, 2, &with_config(shape, &listener, &bad)).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || stat(&envoy, "listener_manager.lds.update_rejected") == 1),
        "{}",
        envoy.log()
    );
    assert!(envoy.log().contains("field `rate_limiter.rules[0].limit.per`"), "{}", envoy.log());
    let r = get("/");
    assert_eq!(r.status, 200);
    assert!(r.header("x-diag-v1").is_some(), "the old configuration still serves: {r:?}");
    assert_eq!(get("/api").status, 429);

    // Version 3 is good: it applies, and the state in shared data (the bucket, the open circuit)
    // carries over: same VM id, same rule name, same cluster.
    let mut good = v1.clone();
    good["diagnostics"]["header"] = json!("x-diag-v3");
    good["circuit_breaker"]["open"]["max"] = json!("3h");
    write_lds(&lds, 3, &with_config(shape, &listener, &good)).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || stat(&envoy, "listener_manager.lds.update_success") > accepted),
        "{}",
        envoy.log()
    );
    assert!(
        eventually(Duration::from_secs(10), || get("/").header("x-diag-v3").is_some()),
        "the new configuration takes effect"
    );
    let limited = get("/api");
    assert_eq!(limited.status, 429, "the bucket survived the reconfigure");
    let still_open = get("/flaky");
    assert_eq!(
        (still_open.status, still_open.header("x-upstream-guard-circuit")),
        (503, Some("open")),
        "the circuit survived the reconfigure"
    );
    assert_eq!(flaky.requests(), 2, "no request reached the failing upstream since the circuit opened");
    let d = parse_diagnosis(still_open.header("x-diag-v3").unwrap()).unwrap();
    assert_eq!(d["cause"], "circuit_open");
}

/// One request of the failure-policy run, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: u16,
    /// The filter ran: its diagnosis header is there.
    filtered: bool,
    /// The rate limiter's remaining count, when it ran.
    remaining: Option<String>,
}

fn seen(r: &http::Response) -> Seen {
    Seen {
        status: r.status,
        filtered: r.header("x-upstream-diagnosis").is_some(),
        remaining: r
            .header("ratelimit")
            .and_then(|v| v.split(";r=").nth(1))
            .map(|s| s.split(';').next().unwrap_or(s).to_string()),
    }
}

fn describe(s: &Seen) -> String {
    let how = match (s.status, s.filtered) {
        (_, true) => " filtered",
        (200, false) => " unfiltered",
        _ => "",
    };
    format!("{}{how}", s.status)
}

/// What one policy did: the trapping request, the requests after it, and (second crash within
/// the reload backoff) how long requests failed before a new VM served.
struct PolicyRun {
    trapped: Seen,
    after: Vec<Seen>,
    reloads: u64,
    second_crash: Option<(usize, Duration)>,
}

fn trap_under(shape: Shape, policy: &str) -> PolicyRun {
    let config = json!({"diagnostics": {"on": "always"},
                        "rate_limiter": {"rules": [{"name": "all", "key": [{"constant": "k"}], "limit": {"requests": 50, "per": "1h"}}]}});
    let mut filter = module_filter(shape, "faulty", &config);
    filter["typed_config"]["config"]["failure_policy"] = json!(policy);
    let cfg = Bootstrap::new()
        .filter(filter)
        .route(json!({"name": "direct", "match": {"prefix": "/"},
                      "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}))
        .build();
    let envoy = Envoy::start_with(&cfg, 1).unwrap();
    let addr = envoy.main().unwrap();
    let get = |h: &[(&str, &str)]| seen(&http::get(addr, "/", h).unwrap());
    let panic = [("x-ug-test-fault", "panic")];
    // Envoy reloads a failed VM only once the reload backoff (1 s base, jittered and growing,
    // by default) has passed since the last load: measured at up to about 2.3 s after start.
    if policy == "FAIL_RELOAD" {
        std::thread::sleep(Duration::from_millis(2500));
    }
    let ok = |remaining: &str| Seen { status: 200, filtered: true, remaining: Some(remaining.into()) };
    assert_eq!([get(&[]), get(&[])], [ok("49"), ok("48")], "{policy}: the filter works until it traps");
    let trapped = get(&panic);
    let after: Vec<Seen> = (0..3).map(|_| get(&[])).collect();
    assert!(envoy.log().contains("fault switch: a request asked this test module to panic"), "{}", envoy.log());
    let mut second_crash = None;
    if policy == "FAIL_RELOAD" {
        // A second trap at once: requests fail until the backoff lets Envoy build another VM.
        let crashed = std::time::Instant::now();
        assert_eq!(get(&panic).status, 503);
        let mut failed = 0;
        assert!(eventually(Duration::from_secs(10), || {
            let s = get(&[]);
            failed += usize::from(s.status == 503);
            s.filtered
        }));
        second_crash = Some((failed, crashed.elapsed()));
    }
    let reloads = stat(&envoy, "wasm.faulty.vm_reload_success");
    PolicyRun { trapped, after, reloads, second_crash }
}

/// Failure policies are the `.wasm`'s (a dynamic module has none: it never traps, it catches).
#[test]
fn what_envoy_does_when_the_filter_traps_under_each_failure_policy() {
    let shape = Shape::Wasm;
    let mut table = vec![
        "| failure_policy | the request that trapped | the next three requests | VM reloads |".to_string(),
        "|---|---|---|---:|".to_string(),
    ];
    let ok = |remaining: &str| Seen { status: 200, filtered: true, remaining: Some(remaining.into()) };
    let mut backoff = None;
    for policy in ["FAIL_CLOSED", "FAIL_OPEN", "FAIL_RELOAD"] {
        let run = trap_under(shape, policy);
        assert_eq!(run.trapped.status, 503, "{policy}: the request that trapped fails");
        match policy {
            "FAIL_CLOSED" => {
                assert!(run.after.iter().all(|s| s.status == 503 && !s.filtered), "{policy}: {:?}", run.after);
                assert_eq!(run.reloads, 0);
            }
            "FAIL_OPEN" => {
                let bypassed = Seen { status: 200, filtered: false, remaining: None };
                assert!(run.after.iter().all(|s| *s == bypassed), "{policy}: the filter is skipped: {:?}", run.after);
                assert_eq!(run.reloads, 0);
            }
            _ => {
                // A new VM serves at once, and the bucket in shared data carried over.
                assert_eq!(run.after, [ok("47"), ok("46"), ok("45")], "{policy}");
                assert_eq!(run.reloads, 2, "{policy}: one reload per crash");
                backoff = run.second_crash;
            }
        }
        table.push(format!(
            "| {policy} | {} | {} | {} |",
            describe(&run.trapped),
            run.after.iter().map(describe).collect::<Vec<_>>().join(", "),
            run.reloads
        ));
    }
    println!("{}", table.join("\n"));
    if let Some((failed, took)) = backoff {
        println!("FAIL_RELOAD, a second trap within the reload backoff: {failed} requests failed (503) for {took:?} until a new VM served");
    }
}

fn health_checks_to_missing_or_silent_clusters_stay_bounded(shape: Shape) {
    let ok = Backend::ok().unwrap();
    let silent = Backend::start(Behavior::Hang).unwrap();
    let hole = Blackhole::start().unwrap();
    let hc = |path: &str| json!({"path": path, "interval": "100ms", "timeout": "200ms", "unhealthy_threshold": 1});
    let config = json!({"health_router": {"upstreams": [
        {"cluster": "ok", "health_check": hc("/healthz")},
        {"cluster": "ghost", "health_check": hc("/healthz")},
        {"cluster": "silent", "health_check": hc("/never-answered")},
        {"cluster": "hole", "health_check": hc("/healthz")}]}});
    let mut hole_cluster = cluster("hole", hole.addr());
    hole_cluster["connect_timeout"] = json!("0.25s");
    let cfg = Bootstrap::new()
        .filter(module(shape, "upstream_guard", &config))
        .route(json!({"match": {"prefix": "/"}, "route": {"cluster_header": "x-upstream-cluster"}}))
        .cluster(cluster("ok", ok.addr()))
        .cluster(cluster("silent", silent.addr()))
        .cluster(hole_cluster)
        .build();
    let envoy = Envoy::start_with(&cfg, 2).unwrap();
    let addr = envoy.main().unwrap();
    let mut most_in_flight = 0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(http::get(addr, "/", &[]).unwrap().status, 200);
        for c in ["silent", "hole"] {
            let active = stat(&envoy, &format!("cluster.{c}.upstream_rq_active"))
                + stat(&envoy, &format!("cluster.{c}.upstream_rq_pending_active"));
            most_in_flight = most_in_flight.max(active);
        }
    }
    assert!(most_in_flight <= 1, "at most one check per upstream in flight, saw {most_in_flight}");
    for c in ["silent", "hole"] {
        assert!(stat(&envoy, &format!("upstream_guard.health.{c}.checks_failed")) >= 5, "{c}");
    }
    // A cluster Envoy does not have is a configuration error, not a down upstream.
    assert!(stat(&envoy, "upstream_guard.health.ghost.checks_unsent") >= 5);
    assert_eq!(stat(&envoy, "upstream_guard.health.ghost.checks_failed"), 0);
    assert_eq!(stat(&envoy, "upstream_guard.health.ghost.healthy"), 1, "never marked unhealthy for it");
    assert!(stat(&envoy, "upstream_guard.health.ok.checks_passed") >= 10);
    let warned = envoy.log().matches("cannot send a health check to cluster \\\"ghost\\\"").count()
        + envoy.log().matches("cannot send a health check to cluster \"ghost\"").count();
    assert_eq!(warned, 1, "said once, not per interval:\n{}", envoy.log());
}

test_harness::both_shapes!(
    a_bad_plugin_config_over_lds_is_refused_while_the_old_one_serves_and_state_survives_a_good_one,
    health_checks_to_missing_or_silent_clusters_stay_bounded,
);
