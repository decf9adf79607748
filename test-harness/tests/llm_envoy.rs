//! The LLM stage of `upstream_guard.wasm` in real Envoy (two workers) against fake
//! OpenAI-compatible providers: model routing from the body with a model-name mapping and
//! failover, a provider's 429 taking it out for the time it asks and its return, every provider
//! out, token budgets exact across workers with JSON and streamed answers, and a streamed answer
//! passing through undelayed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_harness::bootstrap::{buffer_filter, cluster, llm_route, module_filter, Bootstrap, Shape};
use test_harness::envoy::Envoy;
use test_harness::llm_backend::{gateway_example, FakeLlm, LlmReply};
use test_harness::{http, parse_diagnosis};

const CHAT: &str = "/v1/chat/completions";

fn llm_section(extra: Value) -> Value {
    let mut c = json!({
        "providers": [{"cluster": "provider_a"}, {"cluster": "provider_b"}],
        "models": [
            {"name": "gpt-4o", "providers": ["provider_a", {"cluster": "provider_b", "model": "gpt-4o-from-b"}]},
            {"name": "small", "providers": ["provider_b"]}],
        "passive": {"consecutive_failures": 2, "ejection": "30s"},
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// Envoy (2 workers) with the suite (diagnostics, loopback trusted, and the llm section), the
/// buffer filter after it, and a route per provider on the filter state the stage sets.
fn start(shape: Shape, llm: Value, a: &FakeLlm, b: &FakeLlm) -> Envoy {
    let suite = json!({"diagnostics": {"trusted_cidrs": ["127.0.0.1/32"]}, "llm": llm});
    let cfg = Bootstrap::new()
        .filter(module_filter(shape, "upstream_guard", &suite))
        .filter(buffer_filter(1 << 20))
        .route(llm_route("/v1/", "provider_a"))
        .route(llm_route("/v1/", "provider_b"))
        .route(json!({"match": {"prefix": "/"}, "route": {"cluster_header": "x-upstream-cluster", "timeout": "10s"}}))
        .cluster(cluster("provider_a", a.addr()))
        .cluster(cluster("provider_b", b.addr()))
        .build();
    Envoy::start_with(&cfg, 2).unwrap()
}

fn another_stages_refusal_on_an_llm_path_speaks_the_openai_error_shape(shape: Shape) {
    let a = FakeLlm::start("a", LlmReply::json(5, 7)).unwrap();
    let b = FakeLlm::start("b", LlmReply::json(5, 7)).unwrap();
    let suite = json!({
        "diagnostics": {"trusted_cidrs": ["127.0.0.1/32"]},
        "rate_limiter": {"rules": [{"name": "llm", "match": {"path_prefix": "/v1/"}, "key": [{"constant": "all"}],
                                     "limit": {"requests": 1, "per": "1m"}}]},
        "llm": llm_section(json!({})),
    });
    let cfg = Bootstrap::new()
        .filter(module_filter(shape, "upstream_guard", &suite))
        .filter(buffer_filter(1 << 20))
        .route(llm_route("/v1/", "provider_a"))
        .route(llm_route("/v1/", "provider_b"))
        .route(json!({"match": {"prefix": "/"}, "route": {"cluster": "provider_a"}}))
        .cluster(cluster("provider_a", a.addr()))
        .cluster(cluster("provider_b", b.addr()))
        .build();
    let envoy = Envoy::start_with(&cfg, 2).unwrap();
    let addr = envoy.main().unwrap();
    assert_eq!(http::post(addr, CHAT, &[], &chat("gpt-4o")).unwrap().status, 200);
    let r = http::post(addr, CHAT, &[("accept", "application/json")], &chat("gpt-4o")).unwrap();
    assert_eq!((r.status, r.header("content-type")), (429, Some("application/json")), "{}", r.text());
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (body["error"]["code"].as_str(), body["error"]["type"].as_str()),
        (Some("rate_limit_exceeded"), Some("rate_limit_error"))
    );
    assert!(body["error"]["message"].as_str().unwrap().starts_with("rate limited by rule \"llm\""), "{body}");
    assert!(r.header("retry-after").is_some() && r.header("ratelimit").is_some());
    assert_eq!(diagnosis(&r)["cause"], "rate_limited", "the diagnosis header is still there");
    // Off the LLM paths, the same refusal keeps its own text body.
    let r = http::get(addr, "/v1/models", &[]).unwrap();
    assert_eq!((r.status, r.header("content-type")), (429, Some("text/plain")), "{}", r.text());
}

fn chat(model: &str) -> Vec<u8> {
    json!({"model": model, "messages": [{"role": "user", "content": "hi é"}], "temperature": 0.5})
        .to_string()
        .into_bytes()
}

fn diagnosis(r: &http::Response) -> std::collections::BTreeMap<String, String> {
    parse_diagnosis(r.header("x-upstream-diagnosis").expect("a diagnosis")).unwrap()
}

fn routes_by_model_and_fails_over_with_the_providers_model_name(shape: Shape) {
    let a = FakeLlm::start("a", LlmReply::json(5, 7)).unwrap();
    let b = FakeLlm::start("b", LlmReply::json(5, 7)).unwrap();
    // Without the demotion of a provider that just failed, only the ejection moves the model.
    let envoy = start(shape, llm_section(json!({"demote_failed": "0s"})), &a, &b);
    let addr = envoy.main().unwrap();

    let r = http::post(addr, CHAT, &[("content-type", "application/json")], &chat("gpt-4o")).unwrap();
    assert_eq!((r.status, r.header("x-backend")), (200, Some("a")), "{}", r.text());
    let seen = a.seen().remove(0);
    assert_eq!(seen.model.as_deref(), Some("gpt-4o"));
    assert_eq!(seen.body, chat("gpt-4o"), "the body reaches the provider byte for byte");

    let r = http::post(addr, CHAT, &[], &chat("small")).unwrap();
    assert_eq!((r.status, r.header("x-backend")), (200, Some("b")));

    // The first provider overloads: after two failures (529, then 503) it is ejected and the
    // model goes to provider b, under b's name for it, with a correct content-length.
    a.set(LlmReply::status(529));
    assert_eq!(http::post(addr, CHAT, &[], &chat("gpt-4o")).unwrap().status, 529);
    a.set(LlmReply::status(503));
    assert_eq!(http::post(addr, CHAT, &[], &chat("gpt-4o")).unwrap().status, 503);
    for _ in 0..3 {
        let r = http::post(addr, CHAT, &[], &chat("gpt-4o")).unwrap();
        assert_eq!((r.status, r.header("x-backend")), (200, Some("b")), "{}", r.text());
    }
    assert_eq!(a.requests(), 3);
    let seen = b.seen().pop().unwrap();
    assert_eq!(seen.model.as_deref(), Some("gpt-4o-from-b"));
    let want = String::from_utf8(chat("gpt-4o")).unwrap().replace("\"gpt-4o\"", "\"gpt-4o-from-b\"");
    assert_eq!(String::from_utf8(seen.body.clone()).unwrap(), want, "only the model changed");
    assert_eq!(seen.header("content-length"), Some(want.len().to_string().as_str()));
    assert_eq!(envoy.stat("upstream_guard.llm.provider.provider_a.ejections").unwrap(), Some(1));
    assert_eq!(envoy.stat("upstream_guard.llm.model.gpt-4o.failovers").unwrap(), Some(3));
    assert_eq!(envoy.stat("upstream_guard.llm.model.gpt-4o.tokens").unwrap(), Some(12 * 4));
}

fn an_unknown_model_or_a_bad_body_is_a_clear_client_error(shape: Shape) {
    let a = FakeLlm::start("a", LlmReply::json(1, 1)).unwrap();
    let b = FakeLlm::start("b", LlmReply::json(1, 1)).unwrap();
    let envoy = start(shape, llm_section(json!({})), &a, &b);
    let addr = envoy.main().unwrap();
    let r = http::post(addr, CHAT, &[], &chat("gpt-5")).unwrap();
    assert_eq!(r.status, 404);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["models"], json!(["gpt-4o", "small"]));
    assert!(body["error"]["message"].as_str().unwrap().contains("gpt-4o, small"), "{body}");
    assert_eq!(diagnosis(&r)["cause"], "unknown_model");

    for bad in [&b"not json"[..], br#"{"messages": []}"#, br#"{"model": "gpt-4o", "model": "small"}"#] {
        let r = http::post(addr, CHAT, &[], bad).unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
        assert_eq!(diagnosis(&r)["cause"], "invalid_request");
    }
    let r = http::request(addr, "GET", CHAT, &[], Duration::from_secs(5)).unwrap();
    assert_eq!(r.status, 400, "no body at all");
    // Paths the stage does not claim pass untouched (and unrouted: no cluster header).
    assert_ne!(http::get(addr, "/v1/models", &[]).unwrap().status, 200);
    assert_eq!(a.requests() + b.requests(), 0);
}

/// Sends requests for `model` until one reaches `backend` again; how long that took.
fn until_back(addr: std::net::SocketAddr, backend: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        let r = http::post(addr, CHAT, &[], &chat("gpt-4o")).unwrap();
        if r.header("x-backend") == Some(backend) {
            return Some(t.elapsed());
        }
        assert_eq!(r.status, 200, "{}", r.text());
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn a_providers_429_pauses_it_for_the_time_it_asks_without_counting_a_failure(shape: Shape) {
    let a = FakeLlm::start("a", LlmReply::json(1, 1)).unwrap();
    let b = FakeLlm::start("b", LlmReply::json(1, 1)).unwrap();
    let envoy = start(shape, llm_section(json!({})), &a, &b);
    let addr = envoy.main().unwrap();
    for (headers, pause) in [
        (vec![("retry-after", "2")], Duration::from_secs(2)),
        (
            vec![("x-ratelimit-reset-requests", "1.5s"), ("x-ratelimit-remaining-requests", "0")],
            Duration::from_millis(1500),
        ),
        (vec![("x-ratelimit-reset-tokens", "0m2s")], Duration::from_secs(2)),
    ] {
        a.set(LlmReply::rate_limited(&headers));
        let r = http::post(addr, CHAT, &[], &chat("gpt-4o")).unwrap();
        assert_eq!((r.status, r.header("x-backend")), (429, Some("a")), "the 429 reaches the client");
        assert_eq!(r.header("retry-after"), Some("0"), "b serves the model: the client may retry at once");
        let d = diagnosis(&r);
        assert_eq!(d["cause"], "upstream_rate_limited", "{d:?}");
        assert_eq!(d["retry_after"], pause.as_secs_f64().ceil().to_string(), "{d:?}");
        assert!(d["reasons"].starts_with("provider_a: rate limited by the upstream (429), back in"), "{d:?}");
        a.set(LlmReply::json(1, 1));
        // Paused: the next requests go to b, until the pause is over.
        let r = http::post(addr, CHAT, &[], &chat("gpt-4o")).unwrap();
        assert_eq!((r.status, r.header("x-backend")), (200, Some("b")));
        let back = until_back(addr, "a", pause + Duration::from_secs(5)).expect("a never came back");
        assert!(back + Duration::from_millis(200) >= pause, "back after {back:?}, asked for {pause:?}");
    }
    assert_eq!(envoy.stat("upstream_guard.llm.provider.provider_a.rate_limited").unwrap(), Some(3));
    assert_eq!(
        envoy.stat("upstream_guard.llm.provider.provider_a.ejections").unwrap(),
        Some(0),
        "429s are not failures"
    );
    assert_eq!(envoy.stat("upstream_guard.diagnosis.upstream_rate_limited").unwrap(), Some(3));
}

fn every_provider_out_is_model_unavailable_with_each_reason(shape: Shape) {
    let a = FakeLlm::start("a", LlmReply::rate_limited(&[("retry-after", "30")])).unwrap();
    let b = FakeLlm::start("b", LlmReply::status(529)).unwrap();
    let envoy = start(shape, llm_section(json!({"trusted_cidrs": ["127.0.0.1/32"]})), &a, &b);
    let addr = envoy.main().unwrap();
    let r = http::post(addr, CHAT, &[], &chat("gpt-4o")).unwrap();
    assert_eq!((r.status, r.header("retry-after")), (429, Some("0")), "b is still available");
    for _ in 0..2 {
        assert_eq!(http::post(addr, CHAT, &[], &chat("gpt-4o")).unwrap().status, 529);
    }
    let r = http::post(addr, CHAT, &[], &chat("gpt-4o")).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((28..=30).contains(&retry), "the first provider back: b, ejected for 30 s ({retry})");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"]["code"], "model_unavailable");
    let providers = body["error"]["providers"].as_array().unwrap();
    assert!(providers[0]["reason"].as_str().unwrap().contains("rate limited by the upstream (429)"), "{body}");
    assert!(providers[1]["reason"].as_str().unwrap().contains("ejected by passive detection"), "{body}");
    assert_eq!(providers[1]["model"], "gpt-4o-from-b");
    let d = diagnosis(&r);
    assert_eq!(d["cause"], "model_unavailable");
    assert!(d["reasons"].contains("provider_a: rate limited") && d["reasons"].contains("provider_b: ejected"), "{d:?}");
    assert_eq!((a.requests(), b.requests()), (1, 2), "refused without trying any provider");
    assert_eq!(envoy.stat("upstream_guard.llm.model.gpt-4o.unavailable").unwrap(), Some(1));
    assert_eq!(envoy.stat("upstream_guard.llm.model.small.requests").unwrap(), Some(0));
}

fn an_untrusted_client_is_told_the_model_is_unavailable_without_the_providers(shape: Shape) {
    // Nobody trusted: the loopback client is like any other.
    let a = FakeLlm::start("a", LlmReply::status(529)).unwrap();
    let b = FakeLlm::start("b", LlmReply::status(529)).unwrap();
    let envoy = start(shape, llm_section(json!({"passive": {"consecutive_failures": 1, "ejection": "30s"}})), &a, &b);
    let addr = envoy.main().unwrap();
    let _ = http::post(addr, CHAT, &[], &chat("gpt-4o")).unwrap();
    let _ = http::post(addr, CHAT, &[], &chat("gpt-4o")).unwrap();
    let r = http::post(addr, CHAT, &[("x-forwarded-for", "127.0.0.1")], &chat("gpt-4o")).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"]["code"], "model_unavailable");
    assert!(body["error"].get("providers").is_none(), "{body}");
    let text = r.text();
    assert!(!text.contains("provider_a") && !text.contains("provider_b") && !text.contains("gpt-4o-from-b"), "{text}");
}

fn budget(tokens: u64) -> Value {
    json!({"budgets": [{"name": "per-key", "key": [{"header": "x-api-key"}], "tokens": tokens, "per": "1h"}]})
}

/// Sequential requests of one key, each on a new connection (spread over both workers): a budget
/// of 100 tokens and 30 per request admits 4 (100, 70, 40, 10 left), then refuses.
fn spend_the_budget(addr: std::net::SocketAddr, body: &[u8]) {
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let r = http::post(addr, CHAT, &[("x-api-key", "k1")], body).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        remaining.push(r.header("x-ratelimit-remaining-tokens").unwrap().to_string());
    }
    assert_eq!(remaining, ["100", "70", "40", "10"]);
    let r = http::post(addr, CHAT, &[("x-api-key", "k1")], body).unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("0"));
    assert_eq!(r.header("retry-after"), Some("720"), "20 tokens overdrawn at 100 per hour");
    assert_eq!(diagnosis(&r)["cause"], "rate_limited");
    let other = http::post(addr, CHAT, &[("x-api-key", "k2")], body).unwrap();
    assert_eq!(other.status, 200, "another key has its own budget");
}

fn a_token_budget_is_exact_across_workers_with_json_answers(shape: Shape) {
    let a = FakeLlm::start("a", LlmReply::json(10, 20)).unwrap();
    let b = FakeLlm::start("b", LlmReply::json(10, 20)).unwrap();
    let envoy = start(shape, llm_section(budget(100)), &a, &b);
    let addr = envoy.main().unwrap();
    spend_the_budget(addr, &chat("gpt-4o"));
    assert_eq!(envoy.stat("upstream_guard.llm.budget.per-key.charged_tokens").unwrap(), Some(150));
    assert_eq!(envoy.stat("upstream_guard.llm.budget.per-key.refused").unwrap(), Some(1));
    assert_eq!(a.tokens_reported(), 150);
}

fn a_token_budget_is_exact_across_workers_with_streamed_answers(shape: Shape) {
    let stream = LlmReply::stream(3, Duration::from_millis(5), 10, 20);
    let a = FakeLlm::start("a", stream.clone()).unwrap();
    let b = FakeLlm::start("b", stream).unwrap();
    let envoy = start(shape, llm_section(budget(100)), &a, &b);
    let addr = envoy.main().unwrap();
    let body = json!({"model": "gpt-4o", "stream": true, "messages": []}).to_string().into_bytes();
    spend_the_budget(addr, &body);
    let seen = a.seen().remove(0).json().unwrap();
    assert_eq!(seen["stream_options"], json!({"include_usage": true}), "the stream was asked for its usage");
    assert_eq!(envoy.stat("upstream_guard.llm.budget.per-key.charged_tokens").unwrap(), Some(150));
    assert_eq!(a.tokens_reported(), 150);
}

fn concurrent_charges_are_all_counted(shape: Shape) {
    let a = FakeLlm::start("a", LlmReply::stream(2, Duration::from_millis(20), 7, 4)).unwrap();
    let b = FakeLlm::start("b", LlmReply::json(7, 4)).unwrap();
    let envoy = start(shape, llm_section(budget(1_000_000)), &a, &b);
    let addr = envoy.main().unwrap();
    let body = json!({"model": "gpt-4o", "stream": true}).to_string().into_bytes();
    let handles: Vec<_> = (0..40)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || http::post(addr, CHAT, &[("x-api-key", "shared")], &body).unwrap().status)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert_eq!(a.tokens_reported(), 40 * 11);
    assert_eq!(
        envoy.stat("upstream_guard.llm.budget.per-key.charged_tokens").unwrap(),
        Some(40 * 11),
        "no charge lost"
    );
}

/// `n` concurrent streamed requests of one key; how many were admitted.
fn concurrent_streams(addr: std::net::SocketAddr, key: &'static str, body: Value, n: usize) -> usize {
    let body = body.to_string().into_bytes();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || http::post(addr, CHAT, &[("x-api-key", key)], &body).unwrap().status)
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| [200, 429].contains(s)), "{statuses:?}");
    statuses.iter().filter(|s| **s == 200).count()
}

fn concurrent_requests_of_one_key_cannot_overrun_its_budget(shape: Shape) {
    // Streams of about 600 ms, 30 tokens each, and a budget of 100: twelve requests sent at
    // once overlap. Admission reserves each request's estimate, so the charge stays within
    // the budget plus the last admitted request's reservation.
    let stream = LlmReply::stream(3, Duration::from_millis(200), 10, 20);
    let a = FakeLlm::start("a", stream.clone()).unwrap();
    let b = FakeLlm::start("b", stream).unwrap();
    let envoy = start(shape, llm_section(budget(100)), &a, &b);
    let addr = envoy.main().unwrap();
    // Capped by the client (max_tokens 40): 100, 60, 20 admit; -20 refuses.
    let capped = concurrent_streams(addr, "capped", json!({"model": "gpt-4o", "stream": true, "max_tokens": 40}), 12);
    assert_eq!(capped, 3, "three reservations of 40 fit in 100");
    // No cap: the default reservation (1000, capped at the budget's 100): 100 and 0 admit.
    let uncapped = concurrent_streams(addr, "uncapped", json!({"model": "gpt-4o", "stream": true}), 12);
    assert_eq!(uncapped, 2);
    let charged = envoy.stat("upstream_guard.llm.budget.per-key.charged_tokens").unwrap().unwrap();
    assert_eq!(charged, 30 * (capped + uncapped) as u64);
    for (key, admitted) in [("capped", capped), ("uncapped", uncapped)] {
        assert!(30 * admitted as u64 <= 100 + 30, "{key}: {admitted} admitted");
    }
    // Settled: the capped key has 10 left, so one more request passes, and the next waits.
    let streamed = br#"{"model": "gpt-4o", "stream": true}"#;
    let statuses: Vec<u16> =
        (0..2).map(|_| http::post(addr, CHAT, &[("x-api-key", "capped")], streamed).unwrap().status).collect();
    assert_eq!(statuses, [200, 429]);

    // Without reservations (the behaviour before them), the same burst overruns the budget.
    let a2 = FakeLlm::start("a", LlmReply::stream(3, Duration::from_millis(200), 10, 20)).unwrap();
    let mut off = budget(100);
    off["reserve_tokens"] = json!(0);
    let envoy = start(shape, llm_section(off), &a2, &b);
    let all = concurrent_streams(envoy.main().unwrap(), "k", json!({"model": "gpt-4o", "stream": true}), 12);
    assert_eq!(all, 12, "every request passed a balance with room for three");
}

fn a_streamed_answer_is_not_held_back(shape: Shape) {
    // The backend sends its first chunk at once, then waits a second before the next.
    let stream = LlmReply::stream(2, Duration::from_secs(1), 3, 4);
    let a = FakeLlm::start("a", stream.clone()).unwrap();
    let b = FakeLlm::start("b", stream).unwrap();
    let envoy = start(shape, llm_section(budget(1000)), &a, &b);
    let addr = envoy.main().unwrap();
    let body = json!({"model": "gpt-4o", "stream": true}).to_string().into_bytes();
    for _ in 0..3 {
        let t = http::post_timed(addr, CHAT, &[("x-api-key", "k")], &body, Duration::from_secs(10)).unwrap();
        assert_eq!(t.response.status, 200);
        assert!(t.response.text().contains("data: [DONE]"));
        let sent = a.seen().pop().unwrap().first_chunk_at.unwrap();
        let got = t.first_body_byte_at.unwrap();
        let delay = got.saturating_duration_since(sent);
        assert!(delay < Duration::from_millis(100), "first byte {delay:?} after the backend sent it");
        assert!(t.sent_at.elapsed() >= Duration::from_secs(1), "the whole answer took the backend's second");
    }
    assert_eq!(envoy.stat("upstream_guard.llm.budget.per-key.charged_tokens").unwrap(), Some(21));
}

#[test]
fn the_llm_gateway_example_runs_as_its_readme_says() {
    let primary = FakeLlm::start("primary", LlmReply::json(10, 20)).unwrap();
    let secondary = FakeLlm::start("secondary", LlmReply::json(10, 20)).unwrap();
    let envoy = Envoy::start_yaml(&gateway_example(&primary, &secondary), 2).unwrap();
    let addr = envoy.main().unwrap();
    let alice = [("authorization", "Bearer alice")];
    let r = http::post(addr, CHAT, &alice, br#"{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}"#)
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-backend"), r.header("x-ratelimit-remaining-tokens")),
        (200, Some("primary"), Some("100"))
    );
    // A stream gets its usage chunk when the client asks for it, and only then; the gateway
    // charges both.
    let r =
        http::post(addr, CHAT, &[("authorization", "Bearer bob")], br#"{"model": "gpt-4o", "stream": true}"#).unwrap();
    assert!(r.text().ends_with("data: [DONE]\n\n") && r.text().contains("word2"), "{}", r.text());
    assert!(!r.text().contains(r#""choices":[]"#), "not asked for, not sent: {}", r.text());
    let asked = br#"{"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}}"#;
    let r = http::post(addr, CHAT, &[("authorization", "Bearer bob")], asked).unwrap();
    assert!(
        r.text().contains(r#""usage":{"completion_tokens":20,"prompt_tokens":10,"total_tokens":30}"#),
        "{}",
        r.text()
    );
    assert_eq!(envoy.stat("upstream_guard.llm.budget.per-key.charged_tokens").unwrap(), Some(90));

    // The primary rate limits: its 429 is explained, and the next request goes to the secondary.
    let ctl = http::get(primary.addr(), "/fake/reply?status=429&retry-after=20", &[]).unwrap();
    assert_eq!(ctl.status, 200);
    let r = http::post(addr, CHAT, &alice, br#"{"model": "gpt-4o"}"#).unwrap();
    assert_eq!((r.status, r.header("retry-after")), (429, Some("0")));
    assert_eq!(diagnosis(&r)["retry_after"], "20");
    let r = http::post(addr, CHAT, &alice, br#"{"model": "gpt-4o"}"#).unwrap();
    assert_eq!((r.status, r.header("x-backend")), (200, Some("secondary")));
    assert_eq!(secondary.seen().pop().unwrap().model.as_deref(), Some("gpt-4o-2024-08-06"));

    // 100 tokens a minute per key, 30 per request: the fifth request of one key is refused.
    let dave = [("authorization", "Bearer dave")];
    let statuses: Vec<u16> =
        (0..5).map(|_| http::post(addr, CHAT, &dave, br#"{"model": "llama-3.1-8b"}"#).unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
    let r = http::post(addr, CHAT, &dave, br#"{"model": "llama-3.1-8b"}"#).unwrap();
    assert_eq!((r.status, r.header("retry-after")), (429, Some("12")));

    // The secondary overloads too: three failures eject it, and the model is unavailable, said
    // in the body README.md shows (no provider names: llm.trusted_cidrs is not set).
    http::get(secondary.addr(), "/fake/reply?status=529", &[]).unwrap();
    for _ in 0..3 {
        let r = http::post(addr, CHAT, &[], br#"{"model": "gpt-4o"}"#).unwrap();
        assert_eq!((r.status, r.header("x-backend")), (529, Some("secondary")));
    }
    let r = http::post(addr, CHAT, &[], br#"{"model": "gpt-4o"}"#).unwrap();
    assert_eq!(r.status, 503);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((15..=20).contains(&retry), "the primary's pause: {retry}");
    assert_eq!(diagnosis(&r)["cause"], "model_unavailable");
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap(),
        json!({"error": {"code": "model_unavailable", "message": "every provider of model \"gpt-4o\" is unavailable: retry later",
                         "model": "gpt-4o", "param": "model", "type": "model_unavailable"}})
    );

    // Other paths are not the llm stage's: they go to the primary unbuffered.
    http::get(primary.addr(), "/fake/reply?status=200", &[]).unwrap();
    assert_eq!(http::get(addr, "/v1/models", &[]).unwrap().header("x-backend"), Some("primary"));
}

test_harness::both_shapes!(
    another_stages_refusal_on_an_llm_path_speaks_the_openai_error_shape,
    routes_by_model_and_fails_over_with_the_providers_model_name,
    an_unknown_model_or_a_bad_body_is_a_clear_client_error,
    a_providers_429_pauses_it_for_the_time_it_asks_without_counting_a_failure,
    every_provider_out_is_model_unavailable_with_each_reason,
    an_untrusted_client_is_told_the_model_is_unavailable_without_the_providers,
    a_token_budget_is_exact_across_workers_with_json_answers,
    a_token_budget_is_exact_across_workers_with_streamed_answers,
    concurrent_charges_are_all_counted,
    concurrent_requests_of_one_key_cannot_overrun_its_budget,
    a_streamed_answer_is_not_held_back,
);
