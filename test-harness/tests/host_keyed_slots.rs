//! Keys that meet in a slot never share state, in every stage that keys a table by something a
//! client chooses: rate-limit buckets, per-tenant breakers, token balances.
//!
//! The secret that places keys is read from the host's shared data here, as an insider could:
//! with it the tests pick values that land exactly where a victim's key lands (the attack a
//! public hash allowed from outside), and show the victim's state untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{json, Value};
use test_harness::host::{Host, HttpStream, Plugin};
use test_harness::paths::wasm_path;
use upstream_guard::hash::Secret;
use upstream_guard::llm::LlmConfig;
use upstream_guard::ratelimit::{FixedRequest, RateLimitConfig};
use upstream_guard::slots::Place;

fn secret(host: &Host, vm: &str) -> Secret {
    let (bytes, _) = host.shared_data(vm, "ug.secret").expect("the secret is stored at configure time");
    Secret::from_bytes(&bytes).expect("16 bytes")
}

fn with_header(name: &str, value: &str) -> FixedRequest {
    FixedRequest { headers: vec![(name.to_string(), value.as_bytes().to_vec())], ..Default::default() }
}

/// `n` values other than `victim` whose home slot is the victim's (`place` of a value).
fn colliding(victim: &str, n: usize, place: impl Fn(&str) -> Place) -> Vec<String> {
    let home = place(victim).home();
    let found: Vec<String> = (0..).map(|i| format!("evil-{i}")).filter(|v| place(v).home() == home).take(n).collect();
    assert!(found.iter().all(|v| place(v).fingerprint != place(victim).fingerprint));
    found
}

// ---- rate limiter -------------------------------------------------------------------------

fn limiter(extra: Value) -> Value {
    let mut c = json!({"rules": [{"name": "per-tenant", "key": [{"header": "x-tenant"}],
                                   "limit": {"requests": 5, "per": "1h"}}]});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn tenant_request(p: &Plugin, worker: usize, tenant: &str) -> u32 {
    let mut s = p.worker(worker).http_stream().property("source.address", "10.0.0.1:1");
    s.request_headers(&[(":path", "/api"), (":method", "GET"), ("x-tenant", tenant)], true).unwrap();
    s.local_response().map_or(200, |r| r.status)
}

fn limiter_place(config: &Value, secret: Secret) -> impl Fn(&str) -> Place {
    let c = RateLimitConfig::from_json(config.to_string().as_bytes()).unwrap();
    move |tenant: &str| {
        let rule = &c.rules[0];
        rule.place(&secret, &rule.key(&mut with_header("x-tenant", tenant)))
    }
}

#[test]
fn tenants_aimed_at_the_victims_slot_never_spend_its_bucket() {
    let host = Host::new().workers(2);
    let config = limiter(json!({"max_keys": 64}));
    let p = host.load(wasm_path("rate_limiter").unwrap(), config.clone()).unwrap();
    let place = limiter_place(&config, secret(&host, "rate_limiter"));
    // Three values on the victim's home slot, each spending its own limit and more.
    let evil = colliding("acme", 3, &place);
    for (i, e) in evil.iter().enumerate() {
        let statuses: Vec<u32> = (0..7).map(|n| tenant_request(&p, (i + n) % 2, e)).collect();
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429], "{e} has a bucket of its own");
    }
    let victim: Vec<u32> = (0..7).map(|n| tenant_request(&p, n % 2, "acme")).collect();
    assert_eq!(
        victim,
        [200, 200, 200, 200, 200, 429, 429],
        "the victim's first request is admitted, and its limit holds"
    );
    assert_eq!(host.counter("upstream_guard.ratelimit.per-tenant.table_full"), 0);
    p.tick_all().unwrap();
    assert_eq!(host.counter("upstream_guard.ratelimit.per-tenant.allowed"), 20);
}

#[test]
fn a_table_full_of_live_buckets_applies_on_contention_and_counts_it() {
    for (on_contention, want) in [("allow", 200), ("deny", 429)] {
        let host = Host::new();
        let config = limiter(json!({"max_keys": 1, "on_contention": on_contention}));
        let p = host.load(wasm_path("rate_limiter").unwrap(), config).unwrap();
        assert_eq!(tenant_request(&p, 0, "evil"), 200);
        // One slot, held by a bucket still in use: acme has no bucket, and never evil's.
        assert_eq!(tenant_request(&p, 0, "acme"), want, "on_contention: {on_contention}");
        assert_eq!(host.counter("upstream_guard.ratelimit.per-tenant.table_full"), 1);
        let evil_left: Vec<u32> = (0..5).map(|_| tenant_request(&p, 0, "evil")).collect();
        assert_eq!(evil_left, [200, 200, 200, 200, 429], "evil's bucket untouched by acme's request");
    }
}

#[test]
fn a_bucket_back_at_rest_passes_to_a_newcomer_that_starts_fresh() {
    let host = Host::new();
    let config = json!({"rules": [{"name": "per-tenant", "key": [{"header": "x-tenant"}],
                                   "limit": {"requests": 2, "per": "1s"}}], "max_keys": 1});
    let p = host.load(wasm_path("rate_limiter").unwrap(), config).unwrap();
    assert_eq!((tenant_request(&p, 0, "evil"), tenant_request(&p, 0, "evil")), (200, 200));
    host.clock().advance(Duration::from_secs(1));
    // evil's bucket is full again: acme takes the slot with a full bucket of its own.
    let acme: Vec<u32> = (0..3).map(|_| tenant_request(&p, 0, "acme")).collect();
    assert_eq!(acme, [200, 200, 429]);
    assert_eq!(tenant_request(&p, 0, "evil"), 200, "table full: evil is admitted, not charged to acme");
    assert_eq!(host.counter("upstream_guard.ratelimit.per-tenant.table_full"), 1);
}

// ---- circuit breaker ----------------------------------------------------------------------

fn breaker_call(p: &Plugin, worker: usize, tenant: &str, upstream: u16) -> u32 {
    let mut s = p.worker(worker).http_stream().property("xds.cluster_name", "backend");
    s.request_headers(&[(":path", "/"), (":method", "GET"), ("x-tenant", tenant)], true).unwrap();
    if let Some(r) = s.local_response() {
        return r.status;
    }
    s.set_property_u64("response.code", u64::from(upstream));
    s.set_property("response.code_details", "via_upstream");
    s.response_headers(&[(":status", &upstream.to_string())], true).unwrap();
    s.log().unwrap();
    u32::from(upstream)
}

#[test]
fn failing_tenants_aimed_at_the_victims_slot_never_open_its_circuit() {
    let host = Host::new().workers(2);
    let config = json!({"key_header": "x-tenant", "failure": {"consecutive": 2}, "open": {"base": "60s"},
                        "max_keys": 8});
    let p = host.load(wasm_path("circuit_breaker").unwrap(), config).unwrap();
    let s = secret(&host, "circuit_breaker");
    let evil = colliding("acme", 3, |v| Place::of(&s, b"backend", v.as_bytes(), 0, 8));
    for e in &evil {
        assert_eq!((breaker_call(&p, 0, e, 503), breaker_call(&p, 1, e, 503)), (503, 503));
        assert_eq!(breaker_call(&p, 0, e, 200), 503, "{e}'s own circuit opened");
    }
    assert_eq!(host.counter("upstream_guard.breaker.backend.opened"), 3);
    // One failure of the victim's own: one of two, still closed.
    assert_eq!(breaker_call(&p, 1, "acme", 503), 503);
    assert_eq!(breaker_call(&p, 0, "acme", 200), 200, "the victim's circuit is its own, and closed");
    assert_eq!(host.counter("upstream_guard.breaker.backend.opened"), 3);
    assert_eq!(host.counter("upstream_guard.breaker.backend.table_full"), 0);
}

#[test]
fn a_tenant_without_a_free_slot_fails_open_and_never_touches_the_holders_circuit() {
    let host = Host::new();
    let config = json!({"key_header": "x-tenant", "failure": {"consecutive": 2}, "open": {"base": "60s"},
                        "max_keys": 1});
    let p = host.load(wasm_path("circuit_breaker").unwrap(), config).unwrap();
    assert_eq!(breaker_call(&p, 0, "acme", 503), 503, "acme holds the one slot with a failure counted");
    for _ in 0..5 {
        assert_eq!(breaker_call(&p, 0, "evil", 503), 503, "evil's failures are not recorded");
    }
    assert_eq!(host.counter("upstream_guard.breaker.backend.opened"), 0, "nobody's circuit opened");
    assert_eq!(host.counter("upstream_guard.breaker.backend.table_full"), 5);
    assert_eq!(breaker_call(&p, 0, "acme", 200), 200);
    assert_eq!((breaker_call(&p, 0, "acme", 503), breaker_call(&p, 0, "acme", 503)), (503, 503));
    assert_eq!(breaker_call(&p, 0, "acme", 200), 503, "acme's own two failures open its circuit");
}

// ---- llm token budgets --------------------------------------------------------------------

const CHAT: &str = "/v1/chat/completions";

fn llm_config() -> Value {
    json!({"providers": [{"cluster": "a"}], "models": [{"name": "m", "providers": ["a"]}],
           "budgets": [{"name": "k", "key": [{"header": "x-api-key"}], "tokens": 100, "per": "1h"}],
           "max_keys": 8})
}

/// One chat request of `key` answered with `tokens` of usage; the status and the remaining
/// tokens the answer announced.
fn chat(p: &Plugin, key: &str, tokens: u64) -> (u32, Option<String>) {
    let mut s: HttpStream<'_> = p.worker(0).http_stream().property("source.address", "10.0.0.1:1");
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let len = body.len().to_string();
    s.request_headers(&[(":path", CHAT), (":method", "POST"), ("content-length", &len), ("x-api-key", key)], false)
        .unwrap();
    s.request_body(body.as_bytes(), true).unwrap();
    if let Some(r) = s.local_response() {
        return (r.status, None);
    }
    let answer = format!(
        r#"{{"choices":[{{"message":{{"content":"hi"}}}}],"usage":{{"prompt_tokens":{tokens},"completion_tokens":0,"total_tokens":{tokens}}}}}"#
    );
    s.set_property_u64("response.code", 200);
    s.response_headers(&[(":status", "200"), ("content-type", "application/json")], false).unwrap();
    s.response_body(answer.as_bytes(), true).unwrap();
    let left = s.response_header("x-ratelimit-remaining-tokens");
    s.log().unwrap();
    (200, left)
}

#[test]
fn api_keys_aimed_at_the_victims_slot_never_spend_its_tokens() {
    let host = Host::new();
    let p = host.load(wasm_path("upstream_guard").unwrap(), json!({"llm": llm_config()})).unwrap();
    let c = LlmConfig::from_json(llm_config().to_string().as_bytes()).unwrap();
    let s = secret(&host, "upstream_guard");
    let budget = &c.budgets[0];
    let place = |v: &str| budget.place(&s, &budget.key(&mut with_header("x-api-key", v)), c.max_keys);
    for e in colliding("victim", 3, place) {
        assert_eq!(chat(&p, &e, 150).0, 200);
        assert_eq!(chat(&p, &e, 1).0, 429, "{e} spent its own balance");
    }
    assert_eq!(chat(&p, "victim", 30), (200, Some("100".to_string())), "the victim's balance is whole");
    assert_eq!(chat(&p, "victim", 1), (200, Some("70".to_string())), "and its own charge came off it");
    assert_eq!(host.counter("upstream_guard.llm.budget_table_full"), 0);
}
