//! The structured fields as a client reads them: parsed by an RFC 8941 parser nobody here wrote
//! (`http-sfv`, installed by `cargo xtask setup`). The RateLimit fields at the configuration's
//! extremes, obeyed by a client that paces itself by the advertised policy, which must then
//! never be refused; and `x-upstream-diagnosis`, a Dictionary, for each kind of failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::backend::Backend;
use test_harness::bootstrap::{cluster, wasm_filter, Bootstrap};
use test_harness::envoy::Envoy;
use test_harness::{http, paths};

/// Parses each value with `http_sfv` as an RFC 8941 `kind` (`List` or `Dictionary`): per value,
/// for a List `[name, {param: int}]` of its first item, for a Dictionary its members (bare item
/// values); `{"error": …}` when the parser refuses it.
fn parse_fields(kind: &str, values: &[String]) -> Vec<Value> {
    let script = r#"
import http_sfv, json, sys
def plain(v):
    return v if isinstance(v, (str, int, bool)) else str(v)
out = []
for v in sys.argv[2:]:
    field = getattr(http_sfv, sys.argv[1])()
    try:
        field.parse(v.encode())
        if sys.argv[1] == "List":
            out.append([field[0].value, dict(field[0].params)])
        else:
            out.append({k: plain(m.value) for k, m in field.items()})
    except Exception as e:
        out.append({"error": type(e).__name__ + " " + str(e)})
print(json.dumps(out))
"#;
    let out = Command::new(paths::python().unwrap()).arg("-c").arg(script).arg(kind).args(values).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn parse_lists(values: &[String]) -> Vec<Value> {
    parse_fields("List", values)
}

#[test]
fn every_diagnosis_header_parses_as_an_rfc_8941_dictionary() {
    let ok = Backend::ok().unwrap();
    let sections = json!({
        "diagnostics": {"trusted_cidrs": ["127.0.0.1/32"]},
        "rate_limiter": {"rules": [rule("limited \"q\"", "/limited", "token_bucket", json!({"requests": 1, "per": "1h"}))]},
    });
    let cfg = Bootstrap::new()
        .filter(wasm_filter("upstream_guard", &paths::wasm_path("upstream_guard").unwrap(), &sections))
        .route(json!({"name": "r\u{e9}fused", "match": {"prefix": "/dead"}, "route": {"cluster": "d\u{e9}ad \"x\""}}))
        .route(json!({"match": {"prefix": "/limited"}, "route": {"cluster": "ok"}}))
        .cluster(cluster("d\u{e9}ad \"x\"", test_harness::backend::closed_port().unwrap()))
        .cluster(cluster("ok", ok.addr()))
        .build();
    let envoy = Envoy::start_with(&cfg, 2).unwrap();
    let addr = envoy.main().unwrap();
    let mut values = Vec::new();
    for (path, status) in [("/dead", 503), ("/nowhere", 404), ("/limited", 200), ("/limited", 429)] {
        let r = http::get(addr, path, &[]).unwrap();
        assert_eq!(r.status, status, "{path}");
        if let Some(v) = r.header("x-upstream-diagnosis") {
            values.push(v.to_string());
        }
    }
    assert_eq!(values.len(), 3, "a diagnosis for each failure, none for the success: {values:?}");
    let parsed = parse_fields("Dictionary", &values);
    for (value, p) in values.iter().zip(&parsed) {
        assert!(p.get("error").is_none(), "http_sfv refuses {value:?}: {p}");
        assert!(p["cause"].is_string() && p["hint"].is_string() && p["flags"].is_string(), "{p}");
    }
    assert_eq!(parsed[0]["cause"], "connection_refused");
    assert_eq!(parsed[0]["cluster"], "d%C3%A9ad \"x\"", "non-ASCII percent-encoded, quotes escaped");
    assert_eq!(parsed[1]["cause"], "no_route");
    assert_eq!((parsed[2]["cause"].as_str(), parsed[2]["status"].as_i64()), (Some("rate_limited"), Some(429)));
}

fn limiter_envoy(rules: Value, backend: &Backend) -> Envoy {
    let config = json!({"rules": rules});
    let cfg = Bootstrap::new()
        .filter(wasm_filter("rate_limiter", &paths::wasm_path("rate_limiter").unwrap(), &config))
        .route(json!({"match": {"prefix": "/"}, "route": {"cluster": "ok"}}))
        .cluster(cluster("ok", backend.addr()))
        .build();
    Envoy::start_with(&cfg, 2).unwrap()
}

fn rule(name: &str, prefix: &str, algorithm: &str, limit: Value) -> Value {
    json!({"name": name, "match": {"path_prefix": prefix}, "key": [{"constant": name}], "algorithm": algorithm, "limit": limit})
}

#[test]
fn every_ratelimit_field_parses_at_the_configurations_extremes() {
    let ok = Backend::ok().unwrap();
    let rules = json!([
        rule("max", "/max", "token_bucket", json!({"requests": 999_999_999_999_999u64, "per": "1h"})),
        rule("sub-second", "/sub", "token_bucket", json!({"requests": 2, "per": "250ms"})),
        rule("window", "/sw", "sliding_window", json!({"requests": 1, "per": "1m"})),
        rule("weird \"name\" ;,=", "/weird", "token_bucket", json!({"requests": 1, "per": "36h"})),
    ]);
    let envoy = limiter_envoy(rules, &ok);
    let addr = envoy.main().unwrap();
    let mut values = Vec::new();
    for path in ["/max", "/sub", "/sw", "/sw", "/weird", "/weird"] {
        let r = http::get(addr, path, &[]).unwrap();
        for name in ["ratelimit-policy", "ratelimit"] {
            values.push(r.header(name).unwrap_or_else(|| panic!("{path}: no {name}: {:?}", r.headers)).to_string());
        }
    }
    let parsed = parse_lists(&values);
    for (value, p) in values.iter().zip(&parsed) {
        assert!(p.get("error").is_none(), "http_sfv refuses {value:?}: {p}");
    }
    assert_eq!(parsed[0], json!(["max", {"q": 999_999_999_999_999u64, "w": 3600}]));
    assert_eq!(parsed[2], json!(["sub-second", {"q": 2, "w": 1}]));
    assert_eq!(parsed[4], json!(["window", {"q": 1, "w": 120}]), "one per minute, kept over two minutes");
    assert_eq!(parsed[8][0], "weird \"name\" ;,=");
}

/// Paces `rounds` bursts of the advertised `q`, one every advertised `w` (plus a margin), and
/// counts refusals; `speedup` > 1 paces faster than advertised (what an older advertisement
/// told clients), to show the pacing is what decides.
fn pace(addr: SocketAddr, path: &str, rounds: u32, speedup: u32) -> (u64, u64, usize) {
    let first = http::get(addr, path, &[]).unwrap();
    let policy = first.header("ratelimit-policy").unwrap().to_string();
    let parsed = parse_lists(&[policy]);
    let (q, w) = (parsed[0][1]["q"].as_u64().unwrap(), parsed[0][1]["w"].as_u64().unwrap());
    let step = Duration::from_secs(w) / speedup + Duration::from_millis(20);
    // Start the paced bursts a whole step after the first request, so it counts as its own burst.
    let start = Instant::now() + step;
    let mut conn = http::Connection::open(addr, Duration::from_secs(5)).unwrap();
    let mut refused = 0;
    for round in 0..rounds {
        let at = start + step * round;
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        for _ in 0..q {
            refused += usize::from(conn.get(path, &[]).unwrap().status == 429);
        }
    }
    (q, w, refused)
}

#[test]
fn a_client_pacing_by_the_advertised_policy_is_never_refused() {
    let ok = Backend::ok().unwrap();
    let rules = json!([
        rule("bucket", "/tb", "token_bucket", json!({"requests": 10, "per": "1s", "burst": 20})),
        rule("window", "/sw", "sliding_window", json!({"requests": 2, "per": "1s"})),
    ]);
    let envoy = limiter_envoy(rules, &ok);
    let addr = envoy.main().unwrap();
    let tb = std::thread::spawn(move || pace(addr, "/tb", 5, 1));
    let sw = pace(addr, "/sw", 4, 1);
    let tb = tb.join().unwrap();
    assert_eq!(tb, (10, 1, 0), "token bucket 10/s, burst 20: q=10;w=1, none refused");
    assert_eq!(sw, (2, 2, 0), "sliding window 2/s: q=2;w=2, none refused");
}

#[test]
fn pacing_faster_than_advertised_is_refused_so_the_advertisement_is_what_holds() {
    // The sliding window's estimate counts the previous window: 2 per 1 s paced every second
    // (what a `w` of one period would tell a client) is refused, which is why `w` is two periods.
    let ok = Backend::ok().unwrap();
    let envoy =
        limiter_envoy(json!([rule("window", "/sw", "sliding_window", json!({"requests": 2, "per": "1s"}))]), &ok);
    let (_, _, refused) = pace(envoy.main().unwrap(), "/sw", 4, 2);
    assert!(refused > 0, "pacing at half the advertised window must meet refusals");
}
