//! Global rate limit rules in real Envoy, against a real rate limit service (`ug-rls-server`)
//! counting in a real Redis: two Envoys of two workers each share one budget exactly; when the
//! service stops, when Redis dies, and when the service is slower than the timeout, each
//! `on_service_error` mode does what the README says, no request hangs and Envoy itself answers
//! no 5xx; and a request body that arrives while the request waits for the service never slips
//! through to the upstream. Every request is bounded by a client timeout. The tests of this file
//! run one at a time: each starts Envoys, Redis and the service, and they measure outcomes that
//! a machine busy with the other tests would blur.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use test_harness::backend::Backend;
use test_harness::bootstrap::{cluster, http2_cluster, module_filter, route, Bootstrap, Shape};
use test_harness::envoy::Envoy;
use test_harness::redis::Redis;
use test_harness::{http, parse_diagnosis, paths};
use ug_rls_server::{LimitSpec, RlsServer};

/// Every request gives up after this long: a hang fails the test instead of stalling it.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// How long the filter waits for the service: far above a loopback round trip on a busy machine.
const SERVICE_TIMEOUT: &str = "2s";
const MODES: [&str; 3] = ["local", "allow", "deny"];

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A global rule keyed on `x-tenant` (descriptor key `tenant`), local fallback of `local` per hour.
fn rule(name: &str, prefix: &str, on_error: &str, local: u64, extra: Value) -> Value {
    let mut service = json!({"cluster": "rls", "domain": "edge", "timeout": SERVICE_TIMEOUT,
                             "descriptor_keys": ["tenant"], "on_service_error": on_error});
    if let (Some(s), Some(e)) = (service.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({"name": name, "match": {"path_prefix": prefix}, "key": [{"header": "x-tenant"}], "global": true,
           "limit": {"requests": local, "per": "1h"}, "service": service})
}

/// An Envoy (`--concurrency 2`) running `filter` in front of `backend`, with the service as `rls`.
fn envoy(filter: Value, backend: &Backend, rls: SocketAddr) -> Envoy {
    let cfg = Bootstrap::new()
        .filter(filter)
        .route(route("/", "backend"))
        .cluster(cluster("backend", backend.addr()))
        .cluster(http2_cluster("rls", rls))
        .build();
    Envoy::start_with(&cfg, 2).unwrap()
}

/// `upstream_guard.wasm` with diagnostics (so refusals say why) and these rate limiter rules.
fn combined(shape: Shape, rules: Vec<Value>) -> Value {
    let cfg = json!({"diagnostics": {"trusted_cidrs": ["127.0.0.1/32"]}, "rate_limiter": {"rules": rules}});
    module_filter(shape, "upstream_guard", &cfg)
}

fn get(addr: SocketAddr, path: &str, tenant: &str) -> http::Response {
    http::request(addr, "GET", path, &[("x-tenant", tenant)], REQUEST_LIMIT)
        .unwrap_or_else(|e| panic!("GET {path} (tenant {tenant}) failed or hung: {e}"))
}

fn cause(r: &http::Response) -> String {
    r.header("x-upstream-diagnosis").and_then(parse_diagnosis).and_then(|d| d.get("cause").cloned()).unwrap_or_default()
}

/// Checks one response of `mode` against what the README promises: 200 or a 429 of ours, and for
/// `deny` our 503; never a 5xx of Envoy's own.
fn check(mode: &str, r: &http::Response) {
    match (r.status, mode) {
        (200, _) => {}
        (429, _) => assert_eq!(cause(r), "rate_limited", "{mode}: {r:?}"),
        (503, "deny") => assert_eq!(cause(r), "rate_limit_service_unavailable", "{mode}: {r:?}"),
        _ => panic!("{mode}: unexpected {} {:?} {}", r.status, r.headers, r.text()),
    }
}

fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stat(name).unwrap().unwrap_or(0)
}

fn two_envoys_share_one_budget_exactly(shape: Shape) {
    let _serial = serial();
    const LIMIT: u64 = 1000;
    const CLIENTS: u64 = 16;
    let redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", LIMIT, 3600).any("tenant")]).unwrap();
    let backend = Backend::ok().unwrap();
    // on_service_error deny: a late or failed check shows up as a 503, never as an extra admission.
    let cfg = json!({"rules": [rule("tenant", "/", "deny", 3, json!({"timeout": "5s"}))]});
    let filter = module_filter(shape, "rate_limiter", &cfg);
    let envoys = [envoy(filter.clone(), &backend, rls.addr()), envoy(filter, &backend, rls.addr())];
    let addrs = [envoys[0].main().unwrap(), envoys[1].main().unwrap()];

    let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let per_envoy: Arc<[AtomicU64; 2]> = Arc::new(Default::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (counts, per_envoy) = (counts.clone(), per_envoy.clone());
            std::thread::spawn(move || {
                for i in 0..4 * LIMIT / CLIENTS {
                    let which = ((client + i) % 2) as usize;
                    let slot = match get(addrs[which], "/", "a").status {
                        200 => {
                            per_envoy[which].fetch_add(1, Ordering::SeqCst);
                            0
                        }
                        429 => 1,
                        _ => 2,
                    };
                    counts[slot].fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let [admitted, limited, other] = [0, 1, 2].map(|i| counts[i].load(Ordering::SeqCst));
    let split = [0, 1].map(|i| per_envoy[i].load(Ordering::SeqCst));
    let sum = |name: &str| -> u64 {
        envoys.iter().map(|e| stat(e, &format!("upstream_guard.ratelimit.tenant.{name}"))).sum()
    };
    let calls = rls.stats().calls;
    println!(
        "admitted {admitted} (envoy 1: {}, envoy 2: {}), limited {limited}, other {other} of {} (limit {LIMIT}, \
         2 Envoys x 2 workers, {CLIENTS} clients); service calls {calls}, refused by the pre-check without a call {}",
        split[0],
        split[1],
        4 * LIMIT,
        sum("global_cached_over_limit")
    );
    assert_eq!(other, 0, "no failed checks");
    assert_eq!(admitted + limited, 4 * LIMIT);
    assert!((LIMIT * 99 / 100..=LIMIT * 101 / 100).contains(&admitted), "admitted {admitted}, expected {LIMIT} ± 1%");
    assert!(split[0] > 0 && split[1] > 0, "both Envoys admitted some: {split:?}");
    assert_eq!(backend.requests(), admitted, "the backend saw exactly the admitted requests");
    assert_eq!(sum("global_ok"), admitted);
    assert_eq!(sum("global_over_limit") + sum("global_cached_over_limit"), limited);
    assert_eq!(sum("global_error"), 0);
    assert_eq!(calls, sum("global_ok") + sum("global_over_limit"), "one call per request that was not pre-checked");
    assert!(calls < 4 * LIMIT, "the pre-check saved calls: {calls}");
}

/// What goes wrong with the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// The service process stops (its port refuses connections).
    ServiceStops,
    /// Redis dies; the service stays up and answers UNAVAILABLE.
    RedisDies,
    /// The service answers after far longer than the filter waits.
    ServiceSlow,
}

fn outage(shape: Shape, kind: Outage) {
    let _serial = serial();
    let mut redis = Redis::start().unwrap();
    let rls = RlsServer::start(&redis.url(), &[LimitSpec::new("edge", 5, 3600).any("tenant")]).unwrap();
    rls.set_storage_timeout(Duration::from_millis(300));
    let backend = Backend::ok().unwrap();
    let rules = MODES.iter().map(|m| rule(m, &format!("/{m}"), m, 3, json!({"cache_over_limit": "60s"}))).collect();
    let envoy = envoy(combined(shape, rules), &backend, rls.addr());
    let addr = envoy.main().unwrap();

    // The service answers: 5 per tenant, whatever the mode.
    for mode in MODES {
        let got: Vec<u16> = (0..6).map(|_| get(addr, &format!("/{mode}"), &format!("{mode}-up")).status).collect();
        assert_eq!(got, [200, 200, 200, 200, 200, 429], "{mode} while the service runs");
    }

    // Load on every mode while the outage starts, each request a fresh tenant: before the outage
    // the service admits them, after it each mode decides.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = MODES
        .iter()
        .map(|mode| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let r = get(addr, &format!("/{mode}"), &format!("{mode}-load-{i}"));
                    check(mode, &r);
                    seen.push(r.status);
                    i += 1;
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut rls = Some(rls);
    match kind {
        Outage::ServiceStops => {
            if let Some(r) = rls.take() {
                r.stop();
            }
        }
        Outage::RedisDies => redis.stop(),
        Outage::ServiceSlow => {
            if let Some(r) = &rls {
                r.set_delay(Duration::from_secs(60));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    for (mode, h) in MODES.iter().zip(load) {
        let seen = h.join().unwrap();
        let h = histogram(&seen);
        println!("{kind:?}: {mode} under load: {} requests, statuses {h:?}", seen.len());
        let expected: &[u16] = if *mode == "deny" { &[200, 503] } else { &[200] };
        assert_eq!(h.iter().map(|(s, _)| *s).collect::<Vec<u16>>(), expected, "{kind:?}: {mode} under load");
    }

    // During the outage, with fresh tenants: each mode as documented. Sent in parallel (a slow
    // service holds each request for the whole timeout); the multiset of statuses is exact.
    let during = |mode: &'static str| {
        let handles: Vec<_> = (0..5)
            .map(|_| std::thread::spawn(move || get(addr, &format!("/{mode}"), &format!("{mode}-down"))))
            .collect();
        let mut got: Vec<http::Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        got.sort_by_key(|r| r.status);
        for r in &got {
            check(mode, r);
        }
        got.iter().map(|r| r.status).collect::<Vec<u16>>()
    };
    assert_eq!(during("local"), [200, 200, 200, 429, 429], "{kind:?}: local falls back to 3 per Envoy");
    assert_eq!(during("allow"), [200; 5], "{kind:?}: allow admits");
    assert_eq!(during("deny"), [503; 5], "{kind:?}: deny refuses with its own details");
    // A key the service refused stays refused until its window resets, in every mode.
    for mode in MODES {
        let r = get(addr, &format!("/{mode}"), &format!("{mode}-up"));
        assert_eq!(r.status, 429, "{kind:?}: {mode}: the remembered refusal holds");
    }
    let c = |rule: &str, name: &str| stat(&envoy, &format!("upstream_guard.ratelimit.{rule}.{name}"));
    assert!(c("local", "fallback") >= 5 && c("local", "global_error") >= 5, "{kind:?}");
    assert!(c("allow", "error_allowed") >= 5, "{kind:?}");
    assert!(c("deny", "error_denied") >= 5, "{kind:?}");
    assert!(c("local", "global_cached_over_limit") >= 1, "{kind:?}");
    drop(rls);
}

fn histogram(statuses: &[u16]) -> Vec<(u16, usize)> {
    let mut out: Vec<(u16, usize)> = Vec::new();
    for s in statuses {
        match out.iter_mut().find(|(k, _)| k == s) {
            Some((_, n)) => *n += 1,
            None => out.push((*s, 1)),
        }
    }
    out.sort_unstable();
    out
}

fn when_the_service_stops_each_mode_behaves_as_documented(shape: Shape) {
    outage(shape, Outage::ServiceStops);
}

fn when_redis_dies_each_mode_behaves_as_documented(shape: Shape) {
    outage(shape, Outage::RedisDies);
}

fn a_service_slower_than_the_timeout_takes_the_fallback(shape: Shape) {
    outage(shape, Outage::ServiceSlow);
}

/// Sends a POST whose body follows the headers after `gap`, and returns the status line's code.
fn post_with_late_body(addr: SocketAddr, tenant: &str, gap: Duration) -> u16 {
    let body = vec![b'x'; 64 * 1024];
    let mut s = TcpStream::connect_timeout(&addr, REQUEST_LIMIT).unwrap();
    s.set_read_timeout(Some(REQUEST_LIMIT)).unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: localhost\r\nx-tenant: {tenant}\r\ncontent-type: application/octet-stream\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(gap);
    // Envoy may have answered (and closed) already: a refused write is fine, the answer is read below.
    let _ = s.write_all(&body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no answer: {text:?}"))
}

fn a_body_sent_while_the_request_waits_never_slips_through(shape: Shape) {
    let _serial = serial();
    let redis = Redis::start().unwrap();
    let limits = [
        LimitSpec::new("edge", 0, 3600).value("tenant", "blocked"),
        LimitSpec::new("edge", 100, 3600).value("tenant", "open"),
    ];
    let rls = RlsServer::start(&redis.url(), &limits).unwrap();
    let backend = Backend::ok().unwrap();
    // No pre-check: every request waits for the service.
    let cfg = json!({"rules": [rule("tenant", "/", "deny", 100, json!({"cache_over_limit": "0s"}))]});
    let filter = module_filter(shape, "rate_limiter", &cfg);
    let envoy = envoy(filter, &backend, rls.addr());
    let addr = envoy.main().unwrap();
    // The service takes 500 ms; the body arrives 150 ms after the headers, while the request waits.
    rls.set_delay(Duration::from_millis(500));
    for _ in 0..3 {
        assert_eq!(post_with_late_body(addr, "blocked", Duration::from_millis(150)), 429);
    }
    assert_eq!(backend.requests(), 0, "no refused request, nor its body, reached the upstream");
    assert_eq!(stat(&envoy, "upstream_guard.ratelimit.tenant.global_over_limit"), 3);
    // An admitted POST goes through whole once the service said yes.
    assert_eq!(post_with_late_body(addr, "open", Duration::from_millis(150)), 200);
    assert_eq!(backend.requests(), 1);
    assert_eq!(stat(&envoy, "upstream_guard.ratelimit.tenant.global_ok"), 1);
}

#[test]
fn the_example_runs_against_the_test_service() {
    let _serial = serial();
    let dir = paths::workspace_root().join("envoy-examples/global-rate-limit");
    // The limits file the example's README starts the test service with is valid.
    let text = std::fs::read_to_string(dir.join("ug-rls-limits.json")).unwrap();
    assert_eq!(ug_rls_server::parse_limits(&text).unwrap().len(), 2);
    // Tighter limits than the file's, so that the test does not depend on a one-second window.
    let redis = Redis::start().unwrap();
    let limits =
        [LimitSpec::new("edge", 3, 3600).any("tenant"), LimitSpec::new("edge", 1000, 3600).any("remote_address")];
    let rls = RlsServer::start(&redis.url(), &limits).unwrap();
    let backend = Backend::ok().unwrap();
    let target = paths::target_dir().display().to_string();
    let yaml = std::fs::read_to_string(dir.join("envoy.yaml"))
        .unwrap()
        .replace("port_value: 10000", "port_value: 0")
        .replace("port_value: 9901", "port_value: 0")
        .replace("port_value: 8080", &format!("port_value: {}", backend.addr().port()))
        .replace("port_value: 8081", &format!("port_value: {}", rls.addr().port()))
        .replace("filename: target/", &format!("filename: {target}/"));
    let envoy = Envoy::start_yaml(&yaml, 2).unwrap();
    let addr = envoy.main().unwrap();
    let got: Vec<http::Response> = (0..4).map(|_| get(addr, "/", "acme")).collect();
    assert_eq!(got.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 200, 200, 429]);
    assert_eq!(got[0].header("ratelimit-policy"), Some(r#""per-tenant";q=3;w=3600"#), "{:?}", got[0].headers);
    assert_eq!(got[0].header("ratelimit"), Some(r#""per-tenant";r=2;t=3600"#));
    assert_eq!(cause(&got[3]), "rate_limited");
    assert_eq!(got[3].header("ratelimit-policy"), Some(r#""per-tenant";q=3;w=3600"#));
    // Without x-tenant only the per-client rule applies, and the service admits it.
    let r = http::get(addr, "/", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("ratelimit").unwrap().starts_with(r#""per-client";r="#), "{:?}", r.headers);
    assert_eq!(rls.stats().errors, 0);
}

test_harness::both_shapes!(
    two_envoys_share_one_budget_exactly,
    when_the_service_stops_each_mode_behaves_as_documented,
    when_redis_dies_each_mode_behaves_as_documented,
    a_service_slower_than_the_timeout_takes_the_fallback,
    a_body_sent_while_the_request_waits_never_slips_through,
);
