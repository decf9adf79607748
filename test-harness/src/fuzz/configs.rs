//! The module configurations the fuzzer runs, one variant per case, chosen so that every feature
//! of each policy is reachable within a case: small limits and few slots (collisions, refusals),
//! short open times (circuits cycle), short check intervals (health flips), trusted and untrusted
//! clients, a debug token.

use serde_json::{json, Value};

use super::{Rng, Target};

/// The debug header and token of the diagnostics configurations.
pub const DEBUG_HEADER: &str = "x-upstream-debug";
pub const DEBUG_TOKEN: &str = "s3cret";
/// Upstream clusters the host knows (health checks to others fail to dispatch).
pub const KNOWN_CLUSTERS: &[&str] =
    &["primary", "secondary", "passive-only", "backend", "payments", LLM_PROVIDERS[0], LLM_PROVIDERS[1]];
/// The llm stage's provider clusters (`llm-b` knows the model `m` as `m-on-b`).
pub const LLM_PROVIDERS: [&str; 2] = ["llm-a", "llm-b"];
/// The models the llm stage serves.
pub const LLM_MODELS: &[&str] = &["m", "e"];
/// The llm budget's tokens per period.
pub const LLM_TOKENS: u64 = 50;
/// The llm stage's longest 429 pause (`rate_limited.max`), in milliseconds.
pub const LLM_MAX_PAUSE_MS: u64 = 4_000;
/// The health router's upstreams (`ghost` is unknown to the host).
pub const UPSTREAMS: &[&str] = &["primary", "secondary", "ghost", "passive-only"];
/// Upstreams with active checks.
pub const CHECKED_UPSTREAMS: usize = 3;
/// The breaker's per-tenant slots when `key_header` is set.
pub const BREAKER_SLOTS: u32 = 4;

fn diagnostics(rng: &mut Rng) -> Value {
    let on = if rng.chance(300) { "always" } else { "errors" };
    let expose = *rng.pick(&["trusted", "trusted", "trusted", "always", "never"]).unwrap_or(&"trusted");
    json!({"header": "x-upstream-diagnosis", "on": on, "expose_upstream": expose,
           "trusted_cidrs": ["10.0.0.0/8", "::1/128"], "trust_x_forwarded_for": rng.chance(200),
           "debug_header": DEBUG_HEADER, "debug_token": DEBUG_TOKEN, "json_body": rng.chance(700)})
}

fn rate_limiter(rng: &mut Rng) -> Value {
    let max_keys = *rng.pick(&[8u32, 16, 64, 4096]).unwrap_or(&64);
    json!({
        "rules": [
            {"name": "per-client", "match": {"path_prefix": "/api"}, "key": ["client_ip"],
             "limit": {"requests": 3, "per": "1s", "burst": 5}},
            {"name": "per-tenant", "key": [{"header": "x-tenant"}], "algorithm": "sliding_window",
             "limit": {"requests": 4, "per": "2s"}},
            {"name": "by-path", "match": {"path_regex": "^/b/", "headers": [{"name": "x-tenant", "present": false}]},
             "key": ["path", "method"], "limit": {"requests": 2, "per": "500ms"}},
            {"name": "global", "match": {"method": "POST"}, "key": [{"constant": "all"}], "algorithm": "sliding_window",
             "limit": {"requests": 20, "per": "1s"}}],
        "apply": if rng.chance(500) { "all" } else { "first" },
        "client_ip": {"trusted_hops": rng.below(3), "require_peer": rng.chance(300)},
        "mode": if rng.chance(100) { "shadow" } else { "enforce" },
        "max_keys": max_keys,
        "cas_retries": rng.range(1, 4),
        "on_contention": if rng.chance(500) { "allow" } else { "deny" },
        "response_headers": rng.chance(800),
    })
}

fn circuit_breaker(rng: &mut Rng) -> Value {
    let mut c = json!({
        "failure": {"statuses": [500, 502, 503, 504], "consecutive": rng.range(1, 4)},
        "open": {"base": "500ms", "max": "4s", "multiplier": 2},
        "half_open": {"max_probes": 2, "successes_to_close": rng.range(1, 3), "probe_timeout": "3s"},
        "clusters": {"payments": {"half_open": {"max_probes": 1}, "failure": {"consecutive": 2}}},
    });
    if rng.chance(400) {
        c["failure"]["ratio"] = json!({"threshold": 0.5, "min_requests": 4, "window": "2s"});
    }
    if rng.chance(400) {
        c["key_header"] = json!("x-tenant");
        c["max_keys"] = json!(BREAKER_SLOTS);
    }
    c
}

fn health_router(rng: &mut Rng) -> Value {
    json!({
        "upstreams": [
            {"cluster": "primary", "health_check": {"interval": "200ms", "timeout": "100ms", "jitter": "50ms",
             "unhealthy_threshold": 2, "healthy_threshold": 2}},
            {"cluster": "secondary", "weight": 3, "health_check": {"path": "/h", "interval": "300ms",
             "expected_statuses": [200, 204], "unhealthy_threshold": 1, "healthy_threshold": 1}},
            {"cluster": "ghost", "health_check": {"interval": "1s"}},
            {"cluster": "passive-only"}],
        "strategy": *rng.pick(&["failover", "round_robin", "weighted"]).unwrap_or(&"failover"),
        "passive": {"consecutive_failures": rng.range(1, 3), "ejection": "1s"},
        "when_none_healthy": if rng.chance(300) { "panic" } else { "fail_fast" },
        "status_path": "/.well-known/upstream-health",
        "trusted_cidrs": ["10.0.0.0/8"],
        "routes": [{"path_prefix": "/b", "upstreams": ["secondary", "passive-only"]}],
    })
}

fn llm(rng: &mut Rng) -> Value {
    let [a, b] = LLM_PROVIDERS;
    let mut c = json!({
        "providers": [{"cluster": a}, {"cluster": b}],
        "models": [{"name": "m", "providers": [a, {"cluster": b, "model": "m-on-b"}]}, {"name": "e", "providers": [b]}],
        "passive": {"consecutive_failures": rng.range(1, 3), "ejection": "1s"},
        "rate_limited": {"default": "300ms", "max": format!("{LLM_MAX_PAUSE_MS}ms")},
        "stream_usage": rng.chance(700),
        "demote_failed": *rng.pick(&["0s", "500ms", "10s"]).unwrap_or(&"0s"),
        "reserve_tokens": *rng.pick(&[0u64, 10, 1000]).unwrap_or(&0),
        "max_keys": *rng.pick(&[4u32, 64]).unwrap_or(&4),
        "budgets": [{"name": "k", "key": [{"header": "x-tenant"}], "tokens": LLM_TOKENS, "per": "5s"}],
    });
    if rng.chance(300) {
        c["providers"][0]["health_check"] = json!({"path": "/h", "interval": "250ms", "unhealthy_threshold": 1});
    }
    if rng.chance(300) {
        c["max_body_bytes"] = json!(1024);
    }
    c
}

/// A configuration of `target` for one case.
pub fn for_target(target: Target, rng: &mut Rng) -> Value {
    match target {
        Target::Diagnostics => diagnostics(rng),
        Target::RateLimiter => rate_limiter(rng),
        Target::CircuitBreaker => circuit_breaker(rng),
        Target::HealthRouter => health_router(rng),
        Target::UpstreamGuard => {
            let mut suite = serde_json::Map::new();
            // Usually all four stages; sometimes one is left out, as an operator may.
            let off = if rng.chance(200) { rng.below(4) } else { 9 };
            if off != 0 {
                suite.insert("diagnostics".into(), diagnostics(rng));
            }
            if off != 1 {
                suite.insert("rate_limiter".into(), rate_limiter(rng));
            }
            if off != 2 {
                suite.insert("health_router".into(), health_router(rng));
            }
            if off != 3 {
                suite.insert("circuit_breaker".into(), circuit_breaker(rng));
            }
            // Often the llm stage too: its request bodies and provider answers are fuzzed then.
            if rng.chance(600) {
                suite.insert("llm".into(), llm(rng));
            }
            Value::Object(suite)
        }
    }
}

/// The section of `config` that configures `policy` in `target`'s module.
pub fn section<'a>(target: Target, config: &'a Value, policy: &str) -> Option<&'a Value> {
    if target == Target::UpstreamGuard {
        config.get(policy)
    } else if target.name() == policy {
        Some(config)
    } else {
        None
    }
}
