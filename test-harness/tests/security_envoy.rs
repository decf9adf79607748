//! Security properties in real Envoy: what an untrusted client can learn (over the whole fault
//! matrix, not one case), what hostile names can do to the diagnosis, that the debug token is
//! never logged, that a spoofed `x-forwarded-for` moves no limit, that keys aimed at a victim's
//! bucket (or the many addresses of one IPv6 host) gain nothing, and that the status endpoint and
//! the fail-fast reasons are for trusted clients only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use test_harness::backend::{self, Backend, Behavior, Blackhole, Cert};
use test_harness::bootstrap::{cluster, module_filter, Bootstrap, Shape};
use test_harness::envoy::Envoy;
use test_harness::host::{Host, HostError};
use test_harness::{diagnosed_get, eventually, http, parse_diagnosis, paths};

const TOKEN: &str = "s3cret-Token-42";
const UNTRUSTED_KEYS: &[&str] = &["cause", "flags", "hint"];

fn module(shape: Shape, config: &Value) -> Value {
    module_filter(shape, "upstream_guard", config)
}

fn named_route(name: &str, prefix: &str, cluster: &str) -> Value {
    json!({"name": format!("route-{name}-r9"), "match": {"prefix": prefix}, "route": {"cluster": cluster}})
}

fn tls(mut c: Value, trusted_pem: &str) -> Value {
    c["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "localhost", "common_tls_context": {"validation_context": {"trusted_ca": {"inline_string": trusted_pem}}}}});
    c
}

/// Everything a response shows: header values and the body.
fn shown(r: &http::Response) -> String {
    let mut s: String = r.headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    s.push_str(&r.text());
    s
}

/// The untrusted client's view of one response: only cause, flags and hint in the diagnosis
/// (header and JSON body), and none of the secrets anywhere.
fn check_untrusted(what: &str, r: &http::Response, secrets: &BTreeSet<String>) {
    if let Some(v) = r.header("x-upstream-diagnosis") {
        let d = parse_diagnosis(v).unwrap_or_else(|| panic!("{what}: malformed diagnosis {v:?}"));
        assert!(d.keys().all(|k| UNTRUSTED_KEYS.contains(&k.as_str())), "{what}: untrusted client sees {d:?}");
    }
    if r.header("content-type") == Some("application/json") {
        if let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&r.body) {
            if body.contains_key("cause") {
                assert!(body.keys().all(|k| UNTRUSTED_KEYS.contains(&k.as_str())), "{what}: JSON body shows {body:?}");
            }
        }
    }
    let text = shown(r);
    for s in secrets {
        assert!(!text.contains(s.as_str()), "{what}: an untrusted client was shown {s:?}:\n{text}");
    }
}

struct Fault {
    path: &'static str,
    concurrent: usize,
    headers: &'static [(&'static str, &'static str)],
}

fn no_response_to_an_untrusted_client_shows_an_address_cluster_route_or_details_over_the_fault_matrix(shape: Shape) {
    let ok = Backend::ok().unwrap();
    let failing = Backend::start(Behavior::Status(503)).unwrap();
    let flaky = Backend::start(Behavior::Status(503)).unwrap();
    let hang = Backend::start(Behavior::Hang).unwrap();
    let reset = Backend::start(Behavior::ResetBeforeHeaders).unwrap();
    let close = Backend::start(Behavior::CloseBeforeHeaders).unwrap();
    let reset_mid = Backend::start(Behavior::ResetMidResponse).unwrap();
    let slow = Backend::start(Behavior::Delay(Duration::from_millis(600), 200)).unwrap();
    let tls_self = Backend::tls(Behavior::Status(200), Cert::SelfSigned).unwrap();
    let tls_expired = Backend::tls(Behavior::Status(200), Cert::Expired).unwrap();
    let refused = backend::closed_port().unwrap();
    let hole = Blackhole::start().unwrap();

    let mut timeout_cluster = cluster("internal-timeout-c7", hole.addr());
    timeout_cluster["connect_timeout"] = json!("0.25s");
    let mut empty = cluster("internal-empty-c7", "127.0.0.1:1".parse().unwrap());
    empty["load_assignment"]["endpoints"] = json!([]);
    let mut overflow = cluster("internal-overflow-c7", slow.addr());
    overflow["circuit_breakers"] =
        json!({"thresholds": [{"max_connections": 1, "max_pending_requests": 1, "max_requests": 1}]});
    let mut hang_route = named_route("hang", "/hang", "internal-hang-c7");
    hang_route["route"]["timeout"] = json!("0.3s");
    let mut retry_route = named_route("retry", "/retry", "internal-failing-c7");
    retry_route["route"]["retry_policy"] = json!({"retry_on": "5xx", "num_retries": 2,
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.02s"}});
    let config = json!({
        "diagnostics": {"debug_header": "x-upstream-debug", "debug_token": TOKEN, "json_body": true,
                        "trusted_cidrs": ["10.0.0.0/8"]},
        "rate_limiter": {"rules": [{"name": "limited", "match": {"path_prefix": "/limited"}, "key": [{"constant": "all"}],
                                    "limit": {"requests": 1, "per": "1h"}}]},
        "circuit_breaker": {"failure": {"consecutive": 1000}, "open": {"base": "1h", "max": "1h"},
                            "clusters": {"internal-flaky-c7": {"failure": {"consecutive": 1}}}},
    });
    let mut b = Bootstrap::new().filter(module(shape, &config));
    for (name, prefix, c) in [
        ("refused", "/refused", "internal-refused-c7"),
        ("timeout", "/connect-timeout", "internal-timeout-c7"),
        ("empty", "/zero-endpoints", "internal-empty-c7"),
        ("reset", "/reset", "internal-reset-c7"),
        ("close", "/close", "internal-close-c7"),
        ("resetmid", "/reset-mid", "internal-resetmid-c7"),
        ("overflow", "/overflow", "internal-overflow-c7"),
        ("tls-self", "/tls-untrusted", "internal-tlsself-c7"),
        ("tls-expired", "/tls-expired", "internal-tlsexpired-c7"),
        ("failing", "/upstream-503", "internal-failing-c7"),
        ("limited", "/limited", "internal-ok-c7"),
        ("breaker", "/breaker", "internal-flaky-c7"),
        ("ok", "/ok", "internal-ok-c7"),
    ] {
        b = b.route(named_route(name, prefix, c));
    }
    let unrelated_ca = backend::unrelated_ca_pem().unwrap();
    let cfg = b
        .route(hang_route)
        .route(retry_route)
        .route(json!({"name": "route-nc-r9", "match": {"prefix": "/nc"}, "route": {"cluster_header": "x-target"}}))
        .cluster(cluster("internal-refused-c7", refused))
        .cluster(timeout_cluster)
        .cluster(empty)
        .cluster(cluster("internal-hang-c7", hang.addr()))
        .cluster(cluster("internal-reset-c7", reset.addr()))
        .cluster(cluster("internal-close-c7", close.addr()))
        .cluster(cluster("internal-resetmid-c7", reset_mid.addr()))
        .cluster(overflow)
        .cluster(tls(cluster("internal-tlsself-c7", tls_self.addr()), &unrelated_ca))
        .cluster(tls(cluster("internal-tlsexpired-c7", tls_expired.addr()), tls_expired.cert_pem().unwrap()))
        .cluster(cluster("internal-failing-c7", failing.addr()))
        .cluster(cluster("internal-flaky-c7", flaky.addr()))
        .cluster(cluster("internal-ok-c7", ok.addr()))
        .build();
    let envoy = Envoy::start_with(&cfg, 2).unwrap();
    let addr = envoy.main().unwrap();

    let faults = [
        Fault { path: "/refused", concurrent: 1, headers: &[] },
        Fault { path: "/connect-timeout", concurrent: 1, headers: &[] },
        Fault { path: "/zero-endpoints", concurrent: 1, headers: &[] },
        Fault { path: "/hang", concurrent: 1, headers: &[] },
        Fault { path: "/reset", concurrent: 1, headers: &[] },
        Fault { path: "/close", concurrent: 1, headers: &[] },
        Fault { path: "/reset-mid", concurrent: 1, headers: &[] },
        Fault { path: "/retry", concurrent: 1, headers: &[] },
        Fault { path: "/overflow", concurrent: 4, headers: &[] },
        Fault { path: "/unrouted", concurrent: 1, headers: &[] },
        Fault { path: "/nc", concurrent: 1, headers: &[("x-target", "internal-missing-c7")] },
        Fault { path: "/tls-untrusted", concurrent: 1, headers: &[] },
        Fault { path: "/tls-expired", concurrent: 1, headers: &[] },
        Fault { path: "/upstream-503", concurrent: 1, headers: &[] },
        Fault { path: "/limited", concurrent: 1, headers: &[] },
        Fault { path: "/breaker", concurrent: 1, headers: &[] },
        Fault { path: "/ok", concurrent: 1, headers: &[] },
    ];
    let send = |f: &Fault, extra: &[(&str, &str)]| -> Vec<http::Response> {
        let mut headers: Vec<(String, String)> =
            f.headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let handles: Vec<_> = (0..f.concurrent)
            .map(|_| {
                let (path, headers) = (f.path, headers.clone());
                std::thread::spawn(move || {
                    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    http::request(addr, "GET", path, &h, Duration::from_secs(10)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    let untrusted: &[&[(&str, &str)]] = &[
        &[],
        &[("accept", "application/json")],
        // An address inside trusted_cidrs, written by the client: Envoy believes it (port 0),
        // the filter does not.
        &[("x-forwarded-for", "10.1.2.3"), ("accept", "application/json")],
        &[("x-upstream-debug", "s3cret-Token-41")],
    ];
    let mut seen: Vec<(String, http::Response)> = Vec::new();
    let untrusted_pass = |seen: &mut Vec<(String, http::Response)>| {
        for f in &faults {
            for h in untrusted {
                for r in send(f, h) {
                    seen.push((format!("{} {h:?}", f.path), r));
                }
            }
        }
    };
    untrusted_pass(&mut seen);

    // What a trusted client is shown (with the token): the secrets an untrusted one must not see.
    let mut secrets: BTreeSet<String> = BTreeSet::new();
    let mut causes = BTreeSet::new();
    for f in &faults {
        // Concurrent requests overflow the cluster only when they overlap; on a loaded machine
        // the threads may start too far apart, so such a fault is sent again (at most 5 times)
        // until one of its answers says so.
        let mut answers = send(f, &[("x-upstream-debug", TOKEN)]);
        for _ in 1..5 {
            let overflowed = answers
                .iter()
                .any(|r| r.header("x-upstream-diagnosis").is_some_and(|d| d.contains("upstream_overflow")));
            if f.concurrent == 1 || overflowed {
                break;
            }
            answers.extend(send(f, &[("x-upstream-debug", TOKEN)]));
        }
        for r in answers {
            let Some(d) = r.header("x-upstream-diagnosis").and_then(parse_diagnosis) else { continue };
            causes.insert(d["cause"].clone());
            for key in ["cluster", "upstream", "route"] {
                if let Some(v) = d.get(key).filter(|v| v.len() >= 6) {
                    secrets.insert(v.clone());
                }
            }
            // Details that say more than a word of Envoy's (`no_healthy_upstream` is also the
            // cause every client sees): the reset reasons, the transport failures.
            if let Some(v) = d.get("details").filter(|v| v.contains('{') || v.contains(':')) {
                secrets.insert(v.clone());
            }
        }
    }
    untrusted_pass(&mut seen);
    let trusted_saw = secrets.clone();
    for (name, addr) in [("refused", refused), ("hang", hang.addr()), ("failing", failing.addr()), ("ok", ok.addr())] {
        secrets.insert(addr.to_string());
        secrets.insert(format!("route-{name}-r9"));
    }
    for c in [
        "refused",
        "timeout",
        "empty",
        "hang",
        "reset",
        "close",
        "resetmid",
        "overflow",
        "tlsself",
        "tlsexpired",
        "failing",
        "flaky",
        "ok",
        "missing",
    ] {
        secrets.insert(format!("internal-{c}-c7"));
    }
    secrets.insert("127.0.0.1".into());
    secrets.insert(TOKEN.into());
    for (what, r) in &seen {
        check_untrusted(what, r, &secrets);
    }
    // The property is not vacuous: trusted clients were shown these, over many causes.
    assert!(trusted_saw.iter().any(|s| s.starts_with("internal-refused-c7")), "{trusted_saw:?}");
    assert!(trusted_saw.iter().any(|s| s.starts_with("127.0.0.1:")), "{trusted_saw:?}");
    assert!(trusted_saw.iter().any(|s| s.starts_with("route-")), "{trusted_saw:?}");
    for cause in [
        "connection_refused",
        "connect_timeout",
        "no_healthy_upstream",
        "upstream_timeout",
        "upstream_connection_terminated",
        "retry_limit_exceeded",
        "upstream_overflow",
        "no_route",
        "cluster_not_found",
        "tls_handshake_failed",
        "upstream_error_response",
        "rate_limited",
        "circuit_open",
    ] {
        assert!(causes.contains(cause), "the matrix covers {cause}: {causes:?}");
    }
    println!(
        "{} untrusted responses checked against {} secrets over {} causes",
        seen.len(),
        secrets.len(),
        causes.len()
    );
}

fn fail_fast_reasons_and_the_status_endpoint_are_for_trusted_clients_only(shape: Shape) {
    let dead_a = backend::closed_port().unwrap();
    let dead_b = backend::closed_port().unwrap();
    let hc = json!({"path": "/healthz", "interval": "100ms", "timeout": "100ms", "unhealthy_threshold": 1});
    let config = json!({
        "diagnostics": {"json_body": true, "trusted_cidrs": ["10.0.0.0/8"]},
        "health_router": {"upstreams": [{"cluster": "internal-a-c7", "health_check": hc}, {"cluster": "internal-b-c7", "health_check": hc}],
                          "status_path": "/.well-known/upstream-health", "trusted_cidrs": ["10.0.0.0/8"]},
    });
    let cfg = Bootstrap::new()
        .filter(module(shape, &config))
        .route(json!({"name": "route-router-r9", "match": {"prefix": "/"}, "route": {"cluster_header": "x-upstream-cluster"}}))
        .cluster(cluster("internal-a-c7", dead_a))
        .cluster(cluster("internal-b-c7", dead_b))
        .build();
    let envoy = Envoy::start_with(&cfg, 2).unwrap();
    let addr = envoy.main().unwrap();
    assert!(eventually(Duration::from_secs(10), || {
        let r = http::get(addr, "/", &[]).unwrap();
        r.status == 503 && r.header("x-upstream-diagnosis").is_some_and(|d| d.contains("no_healthy_upstream"))
    }));
    let secrets: BTreeSet<String> =
        ["internal-a-c7", "internal-b-c7", "route-router-r9", "127.0.0.1"].iter().map(|s| s.to_string()).collect();
    for path in ["/", "/.well-known/upstream-health"] {
        for h in [&[][..], &[("accept", "application/json")], &[("x-forwarded-for", "10.9.9.9")]] {
            let r = http::get(addr, path, h).unwrap();
            assert_eq!(r.status, 503, "{path} {h:?}: no upstream and no status for this client: {r:?}");
            check_untrusted(&format!("{path} {h:?}"), &r, &secrets);
        }
    }
}

/// The combined module's top-level `trust` is stated once and reaches every stage that shows
/// trusted clients more: the diagnosis's upstream details and the health router's status
/// endpoint open to the clients it names, and stay closed to everyone else.
fn one_trust_section_opens_the_diagnosis_and_the_status_endpoint_to_its_clients_only(shape: Shape) {
    let dead = backend::closed_port().unwrap();
    for (cidr, trusted) in [("127.0.0.1/32", true), ("10.0.0.0/8", false)] {
        let config = json!({
            "trust": {"trusted_cidrs": [cidr]},
            "diagnostics": {},
            "health_router": {"upstreams": [{"cluster": "internal-a-c7"}], "status_path": "/.well-known/upstream-health"},
        });
        let cfg = Bootstrap::new()
            .edge()
            .filter(module(shape, &config))
            .route(json!({"match": {"prefix": "/"}, "route": {"cluster_header": "x-upstream-cluster"}}))
            .cluster(cluster("internal-a-c7", dead))
            .build();
        let envoy = Envoy::start(&cfg).unwrap();
        let addr = envoy.main().unwrap();
        let d = diagnosed_get(addr, "/", 503);
        assert_eq!(d["cause"], "connection_refused");
        assert_eq!(d.get("cluster").map(String::as_str), trusted.then_some("internal-a-c7"), "trust {cidr}: {d:?}");
        let status = http::get(addr, "/.well-known/upstream-health", &[]).unwrap();
        if trusted {
            assert_eq!(status.status, 200, "trust {cidr}: {status:?}");
            assert!(status.text().contains("internal-a-c7"), "{}", status.text());
        } else {
            assert_ne!(status.status, 200, "trust {cidr}: the status endpoint is closed to loopback");
            assert!(!status.text().contains("internal-a-c7"));
        }
    }
}

fn hostile_cluster_and_route_names_cannot_break_the_diagnosis_or_the_json_body(shape: Shape) {
    let port = backend::closed_port().unwrap();
    let hostile_cluster = "evil\", upstream=\"10.9.9.9:1\", x=\"\\";
    let hostile_route = "r\\\", cause=none, a=\"b;c,d";
    let config = json!({"diagnostics": {"json_body": true, "debug_header": "x-upstream-debug", "debug_token": TOKEN}});
    let cfg = Bootstrap::new()
        .filter(module(shape, &config))
        .route(json!({"name": hostile_route, "match": {"prefix": "/"}, "route": {"cluster": hostile_cluster}}))
        .cluster(cluster(hostile_cluster, port))
        .build();
    let envoy = Envoy::start_with(&cfg, 1).unwrap();
    let addr = envoy.main().unwrap();
    let r = http::get(addr, "/", &[("x-upstream-debug", TOKEN)]).unwrap();
    let d = parse_diagnosis(r.header("x-upstream-diagnosis").unwrap()).unwrap();
    assert_eq!(d["cause"], "connection_refused", "{d:?}");
    assert_eq!(d["cluster"], hostile_cluster, "the name is shown escaped, exactly");
    assert_eq!(d["route"], hostile_route);
    assert_eq!(d["upstream"], port.to_string(), "nothing the names held became a member");
    let j = http::get(addr, "/", &[("x-upstream-debug", TOKEN), ("accept", "application/json")]).unwrap();
    let body: Value = serde_json::from_slice(&j.body).unwrap();
    assert_eq!((body["cluster"].as_str(), body["route"].as_str()), (Some(hostile_cluster), Some(hostile_route)));
    assert_eq!(body["upstream"], port.to_string());
    let untrusted = http::get(addr, "/", &[("accept", "application/json")]).unwrap();
    check_untrusted("hostile names", &untrusted, &[hostile_cluster.to_string(), "10.9.9.9".to_string()].into());
}

fn the_debug_token_never_appears_in_any_log_line(shape: Shape) {
    // Envoy logs the filter at trace level (its own components at info: Envoy's http:debug lines
    // print every request header, the token included, whatever any filter does).
    let port = backend::closed_port().unwrap();
    let failing = Backend::start(Behavior::Status(503)).unwrap();
    let config = json!({
        "diagnostics": {"debug_header": "x-upstream-debug", "debug_token": TOKEN, "json_body": true, "on": "always"},
        "rate_limiter": {"rules": [{"name": "r", "key": [{"header": "x-upstream-debug"}], "limit": {"requests": 2, "per": "1h"}}]},
        "circuit_breaker": {"failure": {"consecutive": 2}},
    });
    let cfg = Bootstrap::new()
        .filter(module(shape, &config))
        .route(json!({"match": {"prefix": "/down"}, "route": {"cluster": "down"}}))
        .route(json!({"match": {"prefix": "/"}, "route": {"cluster": "failing"}}))
        .cluster(cluster("down", port))
        .cluster(cluster("failing", failing.addr()))
        .build();
    let envoy = Envoy::start_logging(&cfg, 2, "info", "wasm:trace,dynamic_modules:trace").unwrap();
    let addr = envoy.main().unwrap();
    for path in ["/", "/down", "/down"] {
        for token in [TOKEN, "s3cret-Token-4", "wrong"] {
            for accept in ["application/json", "*/*"] {
                http::get(addr, path, &[("x-upstream-debug", token), ("accept", accept)]).unwrap();
            }
        }
    }
    let log = envoy.log();
    let low = ["[trace][wasm]", "[debug][wasm]", "[trace][dynamic_modules]", "[debug][dynamic_modules]"];
    assert!(low.iter().any(|l| log.contains(l)), "the filter logged at low levels:\n{log}");
    assert!(
        !log.contains(TOKEN),
        "the token was logged:\n{}",
        log.lines().filter(|l| l.contains(TOKEN)).collect::<Vec<_>>().join("\n")
    );

    // Refused configurations do not echo it either, whatever the mistake.
    let wasm = paths::wasm_path("upstream_guard").unwrap();
    for bad in [
        json!({"diagnostics": {"debug_header": "X-Bad", "debug_token": TOKEN}}),
        json!({"diagnostics": {"debug_header": "x-d", "debug_token": TOKEN, "trusted_cidrs": ["10.0.0.0/33"]}}),
        json!({"diagnostics": {"debug_header": "x-d", "debug_token": TOKEN, "zz": 1}}),
        json!({"diagnostics": {"debug_token": TOKEN}}),
        json!({"diagnostics": {"debug_header": "x-d", "debug_token": [TOKEN]}}),
        json!({"diagnostics": {"debug_header": TOKEN.to_lowercase(), "debug_token": 424242}}),
    ] {
        let Err(HostError::Configure { log, .. }) = Host::new().log_level(0).load(&wasm, &bad) else {
            panic!("accepted {bad}")
        };
        for (_, line) in &log {
            assert!(!line.contains(TOKEN) && !line.contains("424242"), "{bad}: {line}");
        }
    }
}

/// The bootstrap's HTTP connection manager, to set its forwarding options.
fn hcm(cfg: &mut Value) -> &mut Value {
    &mut cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

fn limited_by_client(shape: Shape, trusted_hops: u32) -> (Envoy, Backend) {
    behind_one_balancer(
        shape,
        json!({"rate_limiter": {
        "rules": [{"name": "per-client", "key": ["client_ip"], "limit": {"requests": 2, "per": "1h"}}],
        "client_ip": {"trusted_hops": trusted_hops}}}),
    )
}

/// The combined module with `config`, in an Envoy with one trusted proxy (a load balancer that
/// appends the client's address) in front.
fn behind_one_balancer(shape: Shape, config: Value) -> (Envoy, Backend) {
    let ok = Backend::ok().unwrap();
    let mut cfg = Bootstrap::new()
        .filter(module(shape, &config))
        .route(json!({"match": {"prefix": "/"}, "route": {"cluster": "ok"}}))
        .cluster(cluster("ok", ok.addr()))
        .build();
    hcm(&mut cfg)["use_remote_address"] = json!(true);
    hcm(&mut cfg)["xff_num_trusted_hops"] = json!(1);
    (Envoy::start_with(&cfg, 2).unwrap(), ok)
}

fn admitted(addr: SocketAddr, forwarded_for: &str) -> bool {
    http::get(addr, "/", &[("x-forwarded-for", forwarded_for)]).unwrap().status == 200
}

fn a_spoofed_forwarded_for_moves_no_limit(shape: Shape) {
    // use_remote_address: true makes Envoy append its peer (the load balancer) to the header, so
    // the balancer's entry for the client is the second from the right: trusted_hops = 1 + 1.
    let (envoy, _ok) = limited_by_client(shape, 2);
    let addr = envoy.main().unwrap();
    let spoofed = (0..10).filter(|i| admitted(addr, &format!("192.0.2.{i}, 10.1.2.3"))).count();
    assert_eq!(spoofed, 2, "whatever the client writes to the left, its limit is its own");
    assert!(!admitted(addr, "10.1.2.3"));
    assert!(admitted(addr, "6.6.6.6, 10.1.2.4"), "another client has its own bucket");
    assert_eq!(envoy.stat("upstream_guard.ratelimit.client_ip_from_header").unwrap(), Some(0));
}

fn with_envoys_own_entry_not_counted_every_client_shares_one_bucket(shape: Shape) {
    // The mistake the README warns about: trusted_hops = xff_num_trusted_hops keys on the entry
    // Envoy appended itself (its peer), so every client behind the balancer shares one bucket.
    let (envoy, _ok) = limited_by_client(shape, 1);
    let addr = envoy.main().unwrap();
    assert!(admitted(addr, "10.1.2.3") && admitted(addr, "10.1.2.4"));
    assert!(!admitted(addr, "10.1.2.5"), "a third client is refused: they all count as one");
}

/// The slot a key had under the previous, public table hash (64-bit FNV-1a over the rule name,
/// 0xff and the key, then a mix): what anyone could compute offline to aim at a victim's bucket.
fn public_slot(rule: &str, key: &[u8], slots: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule.as_bytes().iter().chain([0xffu8].iter()).chain(key.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h % slots
}

/// Tenants aimed at `acme`'s bucket under the public hash each spend their whole limit; `acme`
/// still gets its own, whole limit, and each attacker had exactly its own.
fn aimed_tenants_cannot_drain_a_victim(filter: Value) {
    let ok = Backend::ok().unwrap();
    let cfg = Bootstrap::new()
        .filter(filter)
        .route(json!({"match": {"prefix": "/"}, "route": {"cluster": "ok"}}))
        .cluster(cluster("ok", ok.addr()))
        .build();
    let envoy = Envoy::start_with(&cfg, 2).unwrap();
    let addr = envoy.main().unwrap();
    let victim = public_slot("per-tenant", b"acme", 1000);
    let aimed: Vec<String> = (0u32..)
        .map(|i| format!("t{i}"))
        .filter(|t| public_slot("per-tenant", t.as_bytes(), 1000) == victim)
        .take(5)
        .collect();
    let sent = |tenant: &str| http::get(addr, "/", &[("x-tenant", tenant)]).unwrap().status;
    for tenant in &aimed {
        let statuses: Vec<u16> = (0..3).map(|_| sent(tenant)).collect();
        assert_eq!(statuses, [200, 200, 429], "{tenant}: its own limit, no more, no less");
    }
    let statuses: Vec<u16> = (0..3).map(|_| sent("acme")).collect();
    assert_eq!(statuses, [200, 200, 429], "the victim keeps its whole limit after {aimed:?}");
    assert_eq!(envoy.stat("upstream_guard.ratelimit.per-tenant.table_full").unwrap(), Some(0));
}

const PER_TENANT: &str = r#"{"rules": [{"name": "per-tenant", "key": [{"header": "x-tenant"}],
                                        "limit": {"requests": 2, "per": "1h"}}], "max_keys": 1000}"#;

fn tenants_aimed_at_a_victims_bucket_leave_its_limit_whole_in_the_rate_limiter_module(shape: Shape) {
    let config: Value = serde_json::from_str(PER_TENANT).unwrap();
    aimed_tenants_cannot_drain_a_victim(module_filter(shape, "rate_limiter", &config));
}

fn tenants_aimed_at_a_victims_bucket_leave_its_limit_whole_in_the_combined_module(shape: Shape) {
    let config: Value = serde_json::from_str(PER_TENANT).unwrap();
    aimed_tenants_cannot_drain_a_victim(module(shape, &json!({ "rate_limiter": config })));
}

fn ipv6_addresses_of_one_slash_64_share_one_limit(shape: Shape) {
    // The balancer's entry for the client is second from the right (Envoy appends the balancer's).
    let (envoy, _ok) = behind_one_balancer(
        shape,
        json!({"rate_limiter": {
        "rules": [{"name": "per-client", "key": ["client_ip"], "limit": {"requests": 5, "per": "1h"}}],
        "client_ip": {"trusted_hops": 2}}}),
    );
    let addr = envoy.main().unwrap();
    // One host's addresses: SLAAC-like and privacy-like interface identifiers of one /64.
    let host: Vec<String> = (0..20u32)
        .map(|i| format!("2001:db8:1:2:{:x}:{:x}:{:x}:{:x}", i * 7919 % 65536, i + 1, i * 31, 0xffff - i))
        .collect();
    let admitted_of = |client: &str| admitted(addr, client);
    let host_admitted = host.iter().filter(|a| admitted_of(a)).count();
    assert_eq!(host_admitted, 5, "20 addresses of one /64 against a limit of 5");
    assert!(admitted_of("2001:db8:1:3::1"), "the next /64 is another client");
    assert!(admitted_of("192.0.2.7") && admitted_of("192.0.2.8"), "IPv4 clients are keyed by address");
}

fn non_ascii_names_come_out_percent_encoded_and_decode_back(shape: Shape) {
    let port = backend::closed_port().unwrap();
    let name = "bäckend-日本-100%";
    let config = json!({"diagnostics": {"json_body": true, "debug_header": "x-upstream-debug", "debug_token": TOKEN}});
    let cfg = Bootstrap::new()
        .filter(module(shape, &config))
        .route(json!({"name": name, "match": {"prefix": "/"}, "route": {"cluster": name}}))
        .cluster(cluster(name, port))
        .build();
    let envoy = Envoy::start_with(&cfg, 1).unwrap();
    let r = http::get(envoy.main().unwrap(), "/", &[("x-upstream-debug", TOKEN)]).unwrap();
    let header = r.header("x-upstream-diagnosis").unwrap();
    assert!(header.is_ascii(), "{header}");
    let d = parse_diagnosis(header).unwrap();
    let encoded = "b%C3%A4ckend-%E6%97%A5%E6%9C%AC-100%25";
    assert_eq!((d["cluster"].as_str(), d["route"].as_str()), (encoded, encoded), "{header}");
    // Any percent-decoder gives the name back.
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            decoded.push(u8::from_str_radix(&encoded[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    assert_eq!(String::from_utf8(decoded).unwrap(), name);
}

test_harness::both_shapes!(
    no_response_to_an_untrusted_client_shows_an_address_cluster_route_or_details_over_the_fault_matrix,
    fail_fast_reasons_and_the_status_endpoint_are_for_trusted_clients_only,
    one_trust_section_opens_the_diagnosis_and_the_status_endpoint_to_its_clients_only,
    hostile_cluster_and_route_names_cannot_break_the_diagnosis_or_the_json_body,
    the_debug_token_never_appears_in_any_log_line,
    a_spoofed_forwarded_for_moves_no_limit,
    with_envoys_own_entry_not_counted_every_client_shares_one_bucket,
    tenants_aimed_at_a_victims_bucket_leave_its_limit_whole_in_the_rate_limiter_module,
    tenants_aimed_at_a_victims_bucket_leave_its_limit_whole_in_the_combined_module,
    ipv6_addresses_of_one_slash_64_share_one_limit,
    non_ascii_names_come_out_percent_encoded_and_decode_back,
);
