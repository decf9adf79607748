//! Global rate limit rules under the deterministic host, which plays the rate limit service: the
//! call the filter sends (cluster, method, domain, descriptors, timeout), what each answer does
//! to the request (refusal fields, admitted fields, extra headers), every failure mode
//! (timeout on the fake clock, gRPC error, garbage, a cluster Envoy does not have) under each
//! `on_service_error`, the local pre-check, one call for several rules, cancellation when the
//! stream ends, and no extra host call for rules that are not global.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{json, Value};
use test_harness::host::{grpc_status, Action, Host, HttpStream, PendingGrpcCall, Plugin, Worker};
use test_harness::paths::wasm_path;
use upstream_guard::ratelimit::rls::{
    Code, DescriptorStatus, Duration as PbDuration, HeaderValue, RateLimit, RateLimitRequest, RateLimitResponse, Unit,
};

const RLS: &str = "ratelimit";

/// A rule `tenant` keyed on `x-tenant`, 3 per hour locally, global through cluster `ratelimit`.
fn config(on_error: &str, extra: Value) -> Value {
    let mut service = json!({"cluster": RLS, "domain": "edge", "timeout": "50ms", "on_service_error": on_error,
                              "descriptor_keys": ["tenant"]});
    if let (Some(s), Some(e)) = (service.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({"rules": [{"name": "tenant", "key": [{"header": "x-tenant"}], "global": true,
                      "limit": {"requests": 3, "per": "1h"}, "service": service}]})
}

fn load(host: &Host, config: Value) -> Plugin {
    host.load(wasm_path("rate_limiter").unwrap(), config).unwrap()
}

fn host() -> Host {
    Host::new().workers(2).clusters(&[RLS, "backend"])
}

/// Sends request headers for `tenant`; returns the stream and what the filter answered.
fn start<'w>(w: &'w Worker, tenant: &str) -> (HttpStream<'w>, Action) {
    let mut s = w.http_stream().property("source.address", "10.0.0.1:1234");
    let a = s.request_headers(&[(":path", "/api"), (":method", "GET"), ("x-tenant", tenant)], true).unwrap();
    (s, a)
}

fn only_call(w: &Worker) -> PendingGrpcCall {
    let calls = w.pending_grpc_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    calls.into_iter().next().unwrap()
}

fn status(code: Code, remaining: u32, reset_s: i64) -> DescriptorStatus {
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit { requests_per_unit: 100, unit: Unit::Minute as i32, name: String::new() }),
        limit_remaining: remaining,
        duration_until_reset: Some(PbDuration { seconds: reset_s, nanos: 0 }),
    }
}

fn answer(overall: Code, statuses: Vec<DescriptorStatus>) -> Vec<u8> {
    RateLimitResponse { overall_code: overall as i32, statuses, ..Default::default() }.to_bytes()
}

#[test]
fn the_call_names_the_cluster_method_domain_descriptor_and_timeout() {
    let host = host();
    let p = load(&host, config("local", json!({})));
    let w = p.worker(0);
    let (s, a) = start(w, "acme");
    assert_eq!(a, Action::Pause, "the request waits for the service");
    assert!(s.local_response().is_none());
    let call = only_call(w);
    assert_eq!(call.cluster, RLS);
    assert_eq!(
        (call.service_name.as_str(), call.method.as_str()),
        ("envoy.service.ratelimit.v3.RateLimitService", "ShouldRateLimit")
    );
    assert_eq!(call.timeout, Some(Duration::from_millis(50)));
    let req = RateLimitRequest::from_bytes(call.message()).unwrap();
    assert_eq!((req.domain.as_str(), req.hits_addend, req.descriptors.len()), ("edge", 1, 1));
    let entries: Vec<(&str, &str)> =
        req.descriptors[0].entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
    assert_eq!(entries, [("tenant", "acme")]);
}

#[test]
fn over_limit_refuses_with_the_services_reset_limit_and_headers() {
    let host = host();
    let p = load(&host, config("local", json!({})));
    let w = p.worker(0);
    let (s, _) = start(w, "acme");
    let call = only_call(w);
    let mut refused = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![status(Code::OverLimit, 0, 42)],
        ..Default::default()
    };
    refused.response_headers_to_add.push(HeaderValue {
        key: "X-Quota".into(),
        value: "gold".into(),
        raw_value: vec![],
    });
    w.respond_grpc_call(call.token, &refused.to_bytes()).unwrap();
    let r = s.local_response().expect("refused");
    assert_eq!(r.status, 429);
    assert_eq!(r.details.as_deref(), Some("upstream_guard.rate_limited"));
    assert_eq!(r.header("retry-after"), Some("42"));
    assert_eq!(r.header("ratelimit-policy"), Some(r#""tenant";q=100;w=60"#), "the service's limit");
    assert_eq!(r.header("ratelimit"), Some(r#""tenant";r=0;t=42"#));
    assert_eq!(r.header("x-quota"), Some("gold"), "response_headers_to_add");
    assert_eq!(s.continued(), 0, "a refused request is not continued");
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.global_over_limit"), 1);
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.limited"), 1);
    p.tick_all().unwrap();
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.allowed"), 0);
}

#[test]
fn ok_continues_with_the_services_remaining_count_and_headers() {
    let host = host();
    let p = load(&host, config("local", json!({})));
    let w = p.worker(1);
    let (mut s, _) = start(w, "acme");
    let call = only_call(w);
    let ok = RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: vec![status(Code::Ok, 57, 30)],
        request_headers_to_add: vec![HeaderValue { key: "x-plan".into(), value: "gold".into(), raw_value: vec![] }],
        response_headers_to_add: vec![HeaderValue { key: "x-seen".into(), value: "1".into(), raw_value: vec![] }],
        ..Default::default()
    };
    w.respond_grpc_call(call.token, &ok.to_bytes()).unwrap();
    assert!(s.local_response().is_none());
    assert_eq!(s.continued(), 1, "the request is resumed");
    assert_eq!(s.request_header("x-plan").as_deref(), Some("gold"), "request_headers_to_add reach the upstream");
    s.response_headers(&[(":status", "200")], true).unwrap();
    assert_eq!(s.response_header("ratelimit-policy").as_deref(), Some(r#""tenant";q=100;w=60"#));
    assert_eq!(s.response_header("ratelimit").as_deref(), Some(r#""tenant";r=57;t=30"#));
    assert_eq!(s.response_header("x-seen").as_deref(), Some("1"));
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.global_ok"), 1);
    p.tick_all().unwrap();
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.allowed"), 1);
}

#[test]
fn a_timeout_falls_back_to_the_local_bucket_shared_by_every_worker() {
    let host = host();
    let p = load(&host, config("local", json!({})));
    let mut admitted = Vec::new();
    for i in 0..5 {
        let w = p.worker(i % 2);
        let (s, _) = start(w, "acme");
        host.clock().advance(Duration::from_millis(49));
        w.tick().unwrap();
        assert_eq!(w.pending_grpc_calls().len(), 1, "not yet timed out");
        host.clock().advance(Duration::from_millis(1));
        w.tick().unwrap();
        assert!(w.pending_grpc_calls().is_empty(), "the call timed out at 50 ms");
        match s.local_response() {
            None => assert_eq!(s.continued(), 1, "an admitted request is resumed, not left hanging"),
            Some(refused) => assert_eq!(refused.status, 429),
        }
        admitted.push(s.local_response().is_none());
    }
    assert_eq!(admitted, [true, true, true, false, false], "the local limit of 3 across both workers");
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.global_error"), 5);
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.fallback"), 5);
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.limited"), 2);
}

#[test]
fn each_on_service_error_mode_does_what_it_says_for_errors_and_garbage() {
    for (mode, expect) in [("allow", None), ("deny", Some(503)), ("local", None)] {
        let host = host();
        let p = load(&host, config(mode, json!({})));
        let w = p.worker(0);
        // A gRPC error, then an answer that is not a rate limit response.
        let (s1, _) = start(w, "acme");
        w.fail_grpc_call(only_call(w).token, grpc_status::UNAVAILABLE, "no healthy upstream").unwrap();
        let (s2, _) = start(w, "acme");
        w.respond_grpc_call(only_call(w).token, b"\xff\x00garbage").unwrap();
        for s in [&s1, &s2] {
            let got = s.local_response();
            assert_eq!(got.as_ref().map(|r| r.status), expect, "{mode}");
            match got {
                Some(r) => {
                    assert_eq!(r.details.as_deref(), Some("upstream_guard.rate_limit_service_unavailable"));
                    assert_eq!(r.header("retry-after"), Some("1"));
                }
                None => assert_eq!(s.continued(), 1, "{mode}: resumed"),
            }
        }
        let c = |n: &str| host.counter(&format!("upstream_guard.ratelimit.tenant.{n}"));
        assert_eq!(c("global_error"), 2, "{mode}");
        let (allowed, denied, fallback) = match mode {
            "allow" => (2, 0, 0),
            "deny" => (0, 2, 0),
            _ => (0, 0, 2),
        };
        assert_eq!((c("error_allowed"), c("error_denied"), c("fallback")), (allowed, denied, fallback), "{mode}");
    }
}

#[test]
fn deny_has_its_own_diagnosis_in_the_combined_module() {
    let host = host();
    let mut cfg = config("deny", json!({"error_status": 503}));
    cfg = json!({"diagnostics": {"trusted_cidrs": ["10.0.0.0/8"]}, "rate_limiter": cfg});
    let p = host.load(wasm_path("upstream_guard").unwrap(), cfg).unwrap();
    let w = p.worker(0);
    let (s, a) = start(w, "acme");
    assert_eq!(a, Action::Pause);
    host.clock().advance(Duration::from_millis(50));
    w.tick().unwrap();
    let r = s.local_response().expect("refused");
    assert_eq!(r.status, 503);
    let diagnosis = r.header("x-upstream-diagnosis").unwrap_or_default().to_string();
    assert!(diagnosis.starts_with("cause=rate_limit_service_unavailable"), "{diagnosis}");
    assert!(diagnosis.contains("on_service_error"), "the hint says what to check: {diagnosis}");

    // A refusal by the service itself is rate_limited.
    let (s, _) = start(w, "acme");
    w.respond_grpc_call(only_call(w).token, &answer(Code::OverLimit, vec![status(Code::OverLimit, 0, 5)])).unwrap();
    let diagnosis = s.local_response().unwrap().header("x-upstream-diagnosis").unwrap_or_default().to_string();
    assert!(diagnosis.starts_with("cause=rate_limited"), "{diagnosis}");
}

#[test]
fn a_cluster_envoy_does_not_have_falls_back_at_once() {
    let host = Host::new().clusters(&["backend"]);
    let p = load(&host, config("deny", json!({})));
    let w = p.worker(0);
    let (s, a) = start(w, "acme");
    assert_eq!(a, Action::Pause, "refused at once (a local reply stops the stream)");
    assert!(w.pending_grpc_calls().is_empty());
    assert_eq!(s.local_response().unwrap().status, 503);
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.global_error"), 1);
    let p = load(&host, config("allow", json!({})));
    let (s, a) = start(p.worker(0), "acme");
    assert_eq!((a, s.local_response()), (Action::Continue, None), "allowed without waiting");
}

#[test]
fn the_precheck_refuses_a_key_the_service_refused_without_asking_again() {
    let host = host();
    let p = load(&host, config("local", json!({"cache_over_limit": "10s"})));
    let (w0, w1) = (p.worker(0), p.worker(1));
    let (_s, _) = start(w0, "acme");
    w0.respond_grpc_call(only_call(w0).token, &answer(Code::OverLimit, vec![status(Code::OverLimit, 0, 30)])).unwrap();
    // The other worker refuses the same key at once: no call, the service's reset time.
    host.clock().advance(Duration::from_secs(2));
    let (s, a) = start(w1, "acme");
    assert_eq!(a, Action::Pause);
    assert!(w1.pending_grpc_calls().is_empty(), "no round trip");
    let r = s.local_response().unwrap();
    assert_eq!((r.status, r.header("retry-after")), (429, Some("28")));
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.global_cached_over_limit"), 1);
    // Another key still asks.
    let (_t, a) = start(w1, "other");
    assert_eq!((a, w1.pending_grpc_calls().len()), (Action::Pause, 1));
    // After cache_over_limit the service is asked again.
    host.clock().advance(Duration::from_secs(8));
    let (_u, _) = start(w0, "acme");
    assert_eq!(w0.pending_grpc_calls().len(), 1, "asked again after 10 s");
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.global_cached_over_limit"), 1);
}

#[test]
fn rules_on_one_service_share_one_call_and_each_gets_its_status() {
    let host = host();
    let service = json!({"cluster": RLS, "domain": "edge"});
    let p = load(
        &host,
        json!({"apply": "all", "rules": [
            {"name": "ip", "key": ["client_ip"], "global": true, "limit": {"requests": 10, "per": "1s"}, "service": service},
            {"name": "tenant", "key": [{"header": "x-tenant"}, {"constant": "api"}], "global": true,
             "limit": {"requests": 10, "per": "1s"}, "service": service}]}),
    );
    let w = p.worker(0);
    let (s, _) = start(w, "acme");
    let call = only_call(w);
    let req = RateLimitRequest::from_bytes(call.message()).unwrap();
    let entries: Vec<Vec<(String, String)>> =
        req.descriptors.iter().map(|d| d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect()).collect();
    assert_eq!(
        entries,
        [
            vec![("remote_address".to_string(), "10.0.0.1".to_string())],
            vec![("x-tenant".into(), "acme".into()), ("generic_key".into(), "api".into())]
        ]
    );
    let statuses = vec![status(Code::Ok, 9, 1), status(Code::OverLimit, 0, 7)];
    w.respond_grpc_call(call.token, &answer(Code::OverLimit, statuses)).unwrap();
    let r = s.local_response().unwrap();
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
    assert!(r.header("ratelimit").unwrap().starts_with(r#""tenant""#), "the rule that refused speaks");
    assert_eq!(host.counter("upstream_guard.ratelimit.ip.global_ok"), 1);
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.global_over_limit"), 1);
}

#[test]
fn a_local_refusal_costs_the_service_nothing() {
    let host = host();
    let p = load(
        &host,
        json!({"apply": "all", "rules": [
            {"name": "local", "key": [{"constant": "x"}], "limit": {"requests": 1, "per": "1h"}},
            {"name": "global", "key": [{"constant": "x"}], "global": true, "limit": {"requests": 10, "per": "1h"},
             "service": {"cluster": RLS, "domain": "edge"}}]}),
    );
    let w = p.worker(0);
    let (_s, a) = start(w, "a");
    assert_eq!((a, w.pending_grpc_calls().len()), (Action::Pause, 1), "admitted locally, asks the service");
    let (s, a) = start(w, "a");
    assert_eq!(a, Action::Pause);
    assert_eq!(s.local_response().unwrap().status, 429);
    assert_eq!(w.pending_grpc_calls().len(), 1, "no second call for a request the local rule refused");
}

#[test]
fn a_stream_that_ends_while_waiting_cancels_its_call_and_forgets_it() {
    let host = host();
    let p = load(&host, config("local", json!({})));
    let w = p.worker(0);
    for _ in 0..50 {
        let (s, _) = start(w, "acme");
        assert_eq!(w.pending_grpc_calls().len(), 1);
        s.finish().unwrap();
        assert!(w.pending_grpc_calls().is_empty(), "the call was cancelled with its stream");
    }
    // The stage still works, and an answer for a forgotten call would find nobody.
    let (s, _) = start(w, "acme");
    w.respond_grpc_call(only_call(w).token, &answer(Code::Ok, vec![status(Code::Ok, 1, 1)])).unwrap();
    assert_eq!(s.continued(), 1);
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.global_ok"), 1);
}

#[test]
fn shadow_mode_refuses_nothing_but_counts() {
    let host = host();
    let mut cfg = config("deny", json!({}));
    cfg["mode"] = json!("shadow");
    let p = load(&host, cfg);
    let w = p.worker(0);
    let (s, _) = start(w, "acme");
    w.respond_grpc_call(only_call(w).token, &answer(Code::OverLimit, vec![status(Code::OverLimit, 0, 5)])).unwrap();
    assert_eq!((s.local_response(), s.continued()), (None, 1));
    let (s, _) = start(w, "other");
    w.fail_grpc_call(only_call(w).token, grpc_status::UNAVAILABLE, "down").unwrap();
    assert_eq!((s.local_response(), s.continued()), (None, 1));
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.shadow_limited"), 1);
    assert_eq!(host.counter("upstream_guard.ratelimit.tenant.error_denied"), 1);
}

#[test]
fn local_rules_make_no_extra_host_calls() {
    // The round and configuration of the rate_limiter row of `cargo xtask bench --harness`, which
    // measured 7 host calls per round before global rules existed.
    let host = host();
    let p = load(
        &host,
        json!({"rules": [{"name": "all", "key": ["client_ip"], "limit": {"requests": 1_000_000_000u64, "per": "1s"}}]}),
    );
    let w = p.worker(0);
    let round = || {
        let mut s = w.http_stream().property("source.address", "10.0.0.1:1").property("xds.cluster_name", "backend");
        assert_eq!(
            s.request_headers(&[(":path", "/"), (":method", "GET"), (":authority", "x")], true).unwrap(),
            Action::Continue
        );
        s.set_property_u64("response.code", 200);
        s.response_headers(&[(":status", "200")], true).unwrap();
        s.log().unwrap();
        s.finish().unwrap();
    };
    round();
    w.reset_host_calls();
    round();
    let calls = w.host_calls();
    assert_eq!(calls.calls("proxy_grpc_call"), 0);
    assert_eq!(calls.calls("proxy_get_shared_data"), 1, "the bucket only, no pre-check read: {calls:?}");
    // The same calls as before global rules existed, less the access-log write an admission no
    // longer makes (`log_allowed` is off) and the admission counter (counted in the VM, handed
    // over on the tick).
    assert_eq!(calls.total(), 6, "as before global rules existed: {:?}", calls.by_name);
    assert_eq!(calls.calls("proxy_increment_metric"), 0);
}
