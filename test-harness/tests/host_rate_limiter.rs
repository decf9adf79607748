//! The rate limiter under the deterministic host: exact limits across 2 and 4 workers, the
//! contention path, the key bound, and time passed by the fake clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use test_harness::host::{Action, Host, HostError, Plugin};
use test_harness::paths::wasm_path;

fn load(host: &Host, config: serde_json::Value) -> Plugin {
    host.load(wasm_path("rate_limiter").unwrap(), config).unwrap()
}

/// One request on `worker` from `client`; true when admitted.
fn request(p: &Plugin, worker: usize, client: &str) -> bool {
    let mut s = p.worker(worker).http_stream().property("source.address", client);
    let a = s.request_headers(&[(":path", "/api"), (":method", "GET")], true).unwrap();
    let refused = s.local_response();
    assert_eq!(a == Action::Pause, refused.is_some(), "pause exactly when refusing");
    refused.is_none()
}

fn interleaved_admits_exactly_the_limit(workers: usize) {
    let host = Host::new().workers(workers);
    let p = load(
        &host,
        json!({"rules": [{"name": "all", "key": [{"constant": "x"}], "limit": {"requests": 10, "per": "1h"}}]}),
    );
    let admitted = (0..100).filter(|i| request(&p, i % workers, "10.0.0.1:1")).count();
    assert_eq!(admitted, 10, "{workers} workers share one bucket");
    assert_eq!(host.counter("upstream_guard.ratelimit.all.limited"), 90);
    // Admissions are the common path: counted in each VM, handed to the host on its tick.
    assert_eq!(host.counter("upstream_guard.ratelimit.all.allowed"), 0, "no host call per admission");
    p.tick_all().unwrap();
    assert_eq!(host.counter("upstream_guard.ratelimit.all.allowed"), 10);
    p.tick_all().unwrap();
    assert_eq!(host.counter("upstream_guard.ratelimit.all.allowed"), 10, "a flush hands each count over once");
}

#[test]
fn two_workers_interleaved_admit_exactly_the_limit() {
    interleaved_admits_exactly_the_limit(2);
}

#[test]
fn four_workers_interleaved_admit_exactly_the_limit() {
    interleaved_admits_exactly_the_limit(4);
}

#[test]
fn refill_follows_the_fake_clock() {
    let host = Host::new().workers(2);
    let p = load(&host, json!({"rules": [{"name": "r", "limit": {"requests": 2, "per": "1s"}}]}));
    assert!(request(&p, 0, "10.0.0.1:1") && request(&p, 1, "10.0.0.1:2"));
    assert!(!request(&p, 0, "10.0.0.1:3"));
    host.clock().advance(Duration::from_millis(499));
    assert!(!request(&p, 1, "10.0.0.1:4"));
    host.clock().advance(Duration::from_millis(1));
    assert!(request(&p, 1, "10.0.0.1:5"), "one token every 500 ms");
}

#[test]
fn refusals_carry_retry_after_ratelimit_fields_and_details() {
    let host = Host::new();
    let p = load(&host, json!({"rules": [{"name": "r", "limit": {"requests": 1, "per": "10s"}}]}));
    assert!(request(&p, 0, "10.0.0.1:1"));
    let mut s = p.worker(0).http_stream().property("source.address", "10.0.0.1:1");
    s.request_headers(&[(":path", "/"), (":method", "GET")], true).unwrap();
    let r = s.local_response().unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.details.as_deref(), Some("upstream_guard.rate_limited"));
    assert_eq!(r.header("retry-after"), Some("10"));
    assert_eq!(r.header("ratelimit-policy"), Some(r#""r";q=1;w=10"#));
    assert_eq!(r.header("ratelimit"), Some(r#""r";r=0;t=10"#));
}

#[test]
fn allowed_responses_carry_the_ratelimit_field() {
    let host = Host::new();
    let p = load(&host, json!({"rules": [{"name": "r", "limit": {"requests": 5, "per": "10s"}}]}));
    let mut s = p.worker(0).http_stream().property("source.address", "10.0.0.1:1");
    s.request_headers(&[(":path", "/"), (":method", "GET")], true).unwrap();
    s.response_headers(&[(":status", "200")], true).unwrap();
    assert_eq!(s.response_header("ratelimit").as_deref(), Some(r#""r";r=4;t=2"#));
}

#[test]
fn a_lost_race_on_a_missing_key_is_retried_not_overwritten() {
    let host = Host::new().workers(2);
    let p = load(
        &host,
        json!({"rules": [{"name": "r", "key": [{"constant": "k"}], "limit": {"requests": 2, "per": "1h"}}]}),
    );
    // Worker 0 reads the missing key; before it writes, "worker 1" creates it.
    host.interfere_with_shared_data(1);
    assert!(request(&p, 0, "10.0.0.1:1"));
    let (_, _, mismatches) = host.shared_data_ops();
    assert_eq!(mismatches, 1, "the create-if-absent write lost the race and was refused");
    assert!(request(&p, 1, "10.0.0.1:2"));
    assert!(!request(&p, 0, "10.0.0.1:3"), "no update was lost: still exactly 2");
}

#[test]
fn exhausted_cas_retries_follow_on_contention_and_are_counted() {
    for (policy, admitted) in [("allow", true), ("deny", false)] {
        let host = Host::new();
        let p = load(
            &host,
            json!({"rules": [{"name": "r", "limit": {"requests": 100, "per": "1s"}}],
                                   "cas_retries": 3, "on_contention": policy}),
        );
        host.interfere_with_shared_data(3);
        assert_eq!(request(&p, 0, "10.0.0.1:1"), admitted, "{policy}");
        assert_eq!(host.counter("upstream_guard.ratelimit.r.contention"), 1);
        assert_eq!(host.shared_data_ops().2, 3);
    }
}

#[test]
fn the_key_space_never_exceeds_max_keys_and_hot_keys_keep_their_bucket() {
    let host = Host::new();
    let p = load(&host, json!({"rules": [{"name": "r", "limit": {"requests": 3, "per": "1h"}}], "max_keys": 64}));
    for i in 0..3 {
        assert!(request(&p, 0, &format!("192.168.0.1:{i}")));
    }
    for i in 0..2000 {
        request(&p, 0, &format!("10.{}.{}.{}:1", i / 65536, (i / 256) % 256, i % 256));
    }
    let keys = host.shared_data_keys("rate_limiter");
    assert!(keys <= 64 + 1, "{keys} keys: at most the slots and the secret");
    assert!(!request(&p, 0, "192.168.0.1:9"), "the hot key was not reset by the flood");
    assert!(host.counter("upstream_guard.ratelimit.r.table_full") > 0, "the flood found the table full");
}

#[test]
fn spoofed_forwarded_for_entries_do_not_dodge_the_limit() {
    let host = Host::new();
    let p = load(
        &host,
        json!({"rules": [{"name": "r", "limit": {"requests": 1, "per": "1h"}}], "client_ip": {"trusted_hops": 1}}),
    );
    let mut admitted = 0;
    for i in 0..5 {
        let xff = format!("1.2.3.{i}, 9.9.9.9");
        let mut s = p.worker(0).http_stream().property("source.address", "10.0.0.1:1");
        s.request_headers(&[(":path", "/"), (":method", "GET"), ("x-forwarded-for", &xff)], true).unwrap();
        admitted += usize::from(s.local_response().is_none());
    }
    assert_eq!(admitted, 1);
}

#[test]
fn invalid_config_fails_to_load_with_the_field_in_the_log() {
    let host = Host::new();
    let Err(HostError::Configure { log, .. }) = host.load(
        wasm_path("rate_limiter").unwrap(),
        json!({"rules": [{"name": "a", "limit": {"requests": 0, "per": "1s"}}]}),
    ) else {
        panic!("accepted a zero limit")
    };
    assert!(log.iter().any(|(_, m)| m.contains("rules[0].limit.requests")), "{log:?}");
}

#[test]
fn a_rule_never_resets_another_rules_bucket() {
    // Two rules with different algorithms in a table of two slots (the table used to be shared by
    // all rules): every sliding-window request stored a window state in the slot, which the token
    // bucket read as a fresh bucket, so interleaving the two let one client through its
    // 1-per-hour limit every time. Each rule now has its own slots.
    let tenant = "t0";
    let host = Host::new();
    let p = load(
        &host,
        json!({"rules": [
            {"name": "per-client", "match": {"path_prefix": "/api"}, "limit": {"requests": 1, "per": "1h"}},
            {"name": "per-tenant", "key": [{"header": "x-tenant"}], "algorithm": "sliding_window",
             "limit": {"requests": 100, "per": "1h"}}],
          "max_keys": 2}),
    );
    let mut admitted = 0;
    for _ in 0..10 {
        let mut t = p.worker(0).http_stream().property("source.address", "10.0.0.1:1");
        t.request_headers(&[(":path", "/web"), (":method", "GET"), ("x-tenant", tenant)], true).unwrap();
        assert!(t.local_response().is_none());
        let mut a = p.worker(0).http_stream().property("source.address", "10.0.0.1:1");
        a.request_headers(&[(":path", "/api"), (":method", "GET")], true).unwrap();
        admitted += usize::from(a.local_response().is_none());
    }
    assert_eq!(admitted, 1, "per-client admits once per hour whatever the other rule writes");
    assert_eq!(host.shared_data_keys("rate_limiter"), 3, "two slots and the secret");
}
