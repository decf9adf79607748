//! The RateLimit fields as a client reads them: parsed by an RFC 8941 parser nobody here wrote
//! (`http-sfv`, installed by `cargo xtask setup`), at the configuration's extremes, and obeyed
//! by a client that paces itself by the advertised policy, which must then never be refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::backend::Backend;
use test_harness::bootstrap::{cluster, wasm_filter, Bootstrap};
use test_harness::envoy::Envoy;
use test_harness::{http, paths};

/// Parses each value as an RFC 8941 List with `http_sfv`: per value, `[name, {param: int}]` of
/// its first item, or `{"error": …}` when the parser refuses it.
fn parse_lists(values: &[String]) -> Vec<Value> {
    let script = r#"
import http_sfv, json, sys
out = []
for v in sys.argv[1:]:
    l = http_sfv.List()
    try:
        l.parse(v.encode())
        out.append([l[0].value, dict(l[0].params)])
    except Exception as e:
        out.append({"error": type(e).__name__ + " " + str(e)})
print(json.dumps(out))
"#;
    let out = Command::new(paths::python().unwrap()).arg("-c").arg(script).args(values).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
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
