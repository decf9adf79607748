//! The LLM stage of `upstream_guard.wasm` on the deterministic host (two workers, fake clock):
//! the body read across chunks and trailers, routing through filter state, every 429 header
//! style pausing a provider exactly as long as it asks, budgets charged from JSON and from event
//! streams cut at any byte, the health router and circuit breaker around it, and what a request
//! the stage does not claim costs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{json, Value};
use test_harness::host::{Action, Host, HttpStream, Plugin, Worker};
use test_harness::paths::wasm_path;

const CHAT: &str = "/v1/chat/completions";
const ROUTE: &[&[u8]] = &[b"upstream_guard.llm_cluster"];

fn llm(extra: Value) -> Value {
    let mut c = json!({
        "providers": [{"cluster": "a"}, {"cluster": "b"}],
        "models": [{"name": "m", "providers": ["a", {"cluster": "b", "model": "m-on-b"}]}],
        "rate_limited": {"default": "3s", "max": "60s"},
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn load(host: &Host, suite: Value) -> Plugin {
    host.load(wasm_path("upstream_guard").unwrap(), suite).unwrap()
}

fn body(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

/// Sends request headers and `body` in two chunks; the stream, and the cluster it was routed to
/// (or the local reply's status).
fn send<'w>(w: &'w Worker, headers: &[(&str, &str)], body: &str) -> (HttpStream<'w>, Result<String, u32>) {
    let mut s = w.http_stream().property("source.address", "10.0.0.1:1234");
    let mut all = vec![(":path", CHAT), (":method", "POST"), ("content-length", "999"), ("accept-encoding", "gzip")];
    all.extend_from_slice(headers);
    assert_eq!(s.request_headers(&all, false).unwrap(), Action::Continue, "headers go on to the buffer filter");
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    if let Some(r) = s.local_response() {
        return (s, Err(r.status));
    }
    let held = s.request_body(first, false).unwrap();
    if let Some(r) = s.local_response() {
        return (s, Err(r.status));
    }
    assert_eq!(held, Action::Pause, "the body is held until its end");
    s.request_body(rest, true).unwrap();
    let out = match s.local_response() {
        Some(r) => Err(r.status),
        None => Ok(String::from_utf8(s.property_value_path(ROUTE).unwrap()).unwrap()),
    };
    (s, out)
}

fn respond(s: &mut HttpStream<'_>, status: u16, headers: &[(&str, &str)], chunks: &[&[u8]]) {
    let status = status.to_string();
    let mut all = vec![(":status", status.as_str())];
    all.extend_from_slice(headers);
    s.set_property_u64("response.code", status.parse().unwrap());
    s.response_headers(&all, chunks.is_empty()).unwrap();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(s.response_body(c, i + 1 == chunks.len()).unwrap(), Action::Continue, "never held");
    }
    s.log().unwrap();
}

#[test]
fn the_body_is_read_whole_and_the_request_routed_with_the_providers_model_name() {
    let host = Host::new().workers(1);
    let p = load(&host, json!({"llm": llm(json!({}))}));
    let w = p.worker(0);
    let (s, cluster) = send(w, &[], &body("m"));
    assert_eq!(cluster.as_deref(), Ok("a"));
    assert!(s.route_cache_cleared(), "the route is matched again on the filter state");
    assert_eq!(s.request_header("content-length"), None, "removed: Envoy's buffer filter sets it again");
    assert_eq!(s.request_header("accept-encoding"), None, "usage is read from an uncompressed answer");
    assert_eq!(s.request_body_now(), body("m").into_bytes(), "a provider that knows the name gets the bytes as sent");

    // a is paused: b gets the request under its own name for the model.
    let mut s = s;
    respond(&mut s, 429, &[("retry-after", "5")], &[b"{}"]);
    let (s, cluster) = send(w, &[], &body("m"));
    assert_eq!(cluster.as_deref(), Ok("b"));
    assert_eq!(String::from_utf8(s.request_body_now()).unwrap(), body("m").replace("\"m\"", "\"m-on-b\""));
}

#[test]
fn trailers_end_the_body_too() {
    let host = Host::new().workers(1);
    let p = load(&host, json!({"llm": llm(json!({}))}));
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[(":path", CHAT), (":method", "POST")], false).unwrap();
    assert_eq!(s.request_body(body("m").as_bytes(), false).unwrap(), Action::Pause);
    assert_eq!(s.request_trailers(&[("x-t", "1")]).unwrap(), Action::Continue);
    assert_eq!(s.property_value_path(ROUTE).as_deref(), Some(&b"a"[..]));
}

#[test]
fn bad_requests_are_refused_with_the_configured_models() {
    let host = Host::new().workers(1);
    let p = load(&host, json!({"llm": llm(json!({"max_body_bytes": 2048}))}));
    let w = p.worker(0);
    let (s, r) = send(w, &[], &body("gpt-5"));
    assert_eq!(r, Err(404));
    let reply: Value = serde_json::from_slice(&s.local_response().unwrap().body).unwrap();
    assert_eq!(reply["error"]["models"], json!(["m"]));
    assert_eq!(send(w, &[], "{\"model\": 3}").1, Err(400));
    // Over the cap: refused at the chunk that crosses it, without waiting for the rest.
    let mut s = w.http_stream();
    s.request_headers(&[(":path", CHAT)], false).unwrap();
    s.request_body(&[b' '; 1500], false).unwrap();
    assert!(s.local_response().is_none());
    s.request_body(&[b' '; 1500], false).unwrap();
    assert_eq!(s.local_response().unwrap().status, 413);
    assert_eq!(host.counter("upstream_guard.llm.invalid_request"), 2);
    assert_eq!(host.counter("upstream_guard.llm.unknown_model"), 1);
}

/// Routes a request on worker `w` at the current fake time: the cluster chosen.
fn route(p: &Plugin, w: usize) -> String {
    send(p.worker(w), &[], &body("m")).1.unwrap()
}

#[test]
fn every_429_header_style_pauses_the_provider_exactly_as_long_as_it_asks() {
    const NOW: u64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT
    for (headers, pause_ms) in [
        (vec![("retry-after", "7")], 7000u64),
        (vec![("retry-after-ms", "1250"), ("retry-after", "9")], 1250),
        (vec![("retry-after", "Sun, 06 Nov 1994 08:49:47 GMT")], 10_000),
        (vec![("x-ratelimit-reset-requests", "1m30s")], 60_000), // capped at rate_limited.max
        (vec![("x-ratelimit-reset-tokens", "250ms")], 250),
        (
            vec![
                ("x-ratelimit-reset-requests", "20s"),
                ("x-ratelimit-reset-tokens", "6m0s"),
                ("x-ratelimit-remaining-requests", "0"),
            ],
            20_000,
        ),
        (vec![], 3000), // nothing said: rate_limited.default
    ] {
        let host = Host::new().workers(2);
        host.clock().set_nanos(NOW * 1_000_000_000);
        let p = load(&host, json!({"llm": llm(json!({})), "diagnostics": {}}));
        let (mut s, _) = send(p.worker(0), &[], &body("m"));
        respond(&mut s, 429, &headers, &[b"{\"error\": {}}"]);
        assert_eq!(s.response_header("retry-after").as_deref(), Some("0"), "b can serve the client's retry");
        let diagnosis = s.response_header("x-upstream-diagnosis").unwrap();
        assert!(diagnosis.starts_with("cause=upstream_rate_limited"), "{diagnosis}");
        assert!(diagnosis.contains(&format!("retry_after={}", pause_ms.div_ceil(1000))), "{headers:?}: {diagnosis}");
        assert_eq!(route(&p, 1), "b", "{headers:?}: the other worker sees the pause");
        host.clock().advance(Duration::from_millis(pause_ms - 1));
        assert_eq!(route(&p, 1), "b", "{headers:?}: still paused");
        host.clock().advance(Duration::from_millis(1));
        assert_eq!(route(&p, 0), "a", "{headers:?}: back when the pause ends");
        assert_eq!(host.metric("upstream_guard.llm.provider.a.ejections"), Some(0));
    }
}

#[test]
fn failures_eject_after_the_passive_threshold_and_529_counts() {
    let host = Host::new().workers(2);
    // Without the demotion of a provider that just failed (on by default), so that both
    // failures meet the same provider.
    let p = load(
        &host,
        json!({"llm": llm(json!({"passive": {"consecutive_failures": 2, "ejection": "10s"}, "demote_failed": "0s"}))}),
    );
    for (w, status) in [(0, 529), (1, 502)] {
        let (mut s, c) = send(p.worker(w), &[], &body("m"));
        assert_eq!(c.unwrap(), "a");
        respond(&mut s, status, &[], &[b"overloaded"]);
    }
    assert_eq!(route(&p, 0), "b");
    assert_eq!(host.metric("upstream_guard.llm.provider.a.ejections"), Some(1));
    assert_eq!(host.counter("upstream_guard.llm.model.m.failovers"), 1);
    host.clock().advance(Duration::from_secs(10));
    assert_eq!(route(&p, 1), "a");
}

fn budget() -> Value {
    json!({"budgets": [{"name": "k", "key": [{"header": "x-api-key"}], "tokens": 100, "per": "100s"}]})
}

fn sse(prompt: u64, completion: u64) -> String {
    let mut s = String::new();
    for w in ["Hel", "lo"] {
        s.push_str(&format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{w}\"}}}}],\"usage\":null}}\n\n"));
    }
    s.push_str(&format!(
        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
        prompt + completion
    ));
    s
}

#[test]
fn budgets_are_charged_exactly_from_streams_cut_anywhere_on_both_workers() {
    let host = Host::new().workers(2);
    let p = load(&host, json!({"llm": llm(budget())}));
    let text = sse(10, 20);
    let bytes = text.as_bytes();
    // Four requests of 30 tokens, alternating workers, each stream cut at a different place.
    for (i, cut) in [1usize, 17, 60, bytes.len() - 3].into_iter().enumerate() {
        let (mut s, c) = send(p.worker(i % 2), &[("x-api-key", "alice")], &body("m"));
        assert_eq!(c.unwrap(), "a");
        let chunks: Vec<&[u8]> = vec![&bytes[..cut], &bytes[cut..cut + 2], &bytes[cut + 2..]];
        respond(&mut s, 200, &[("content-type", "text/event-stream")], &chunks);
        assert_eq!(s.response_body_now(), bytes, "the stream passes unchanged");
        let left = 100 - 30 * i as i64;
        assert_eq!(s.response_header("x-ratelimit-remaining-tokens"), Some(left.to_string()));
    }
    // 100 - 120 = -20: refused for 20 tokens' worth of refill (20 s at 1 token/s).
    let (s, c) = send(p.worker(0), &[("x-api-key", "alice")], &body("m"));
    assert_eq!(c, Err(429));
    let r = s.local_response().unwrap();
    let h = |n: &str| r.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!((h("retry-after").as_deref(), h("x-ratelimit-remaining-tokens").as_deref()), (Some("20"), Some("0")));
    assert_eq!(send(p.worker(1), &[("x-api-key", "bob")], &body("m")).1.as_deref(), Ok("a"), "bob's own budget");
    host.clock().advance(Duration::from_secs(20));
    assert_eq!(send(p.worker(1), &[("x-api-key", "alice")], &body("m")).1.as_deref(), Ok("a"), "repaid");
    assert_eq!(host.counter("upstream_guard.llm.budget.k.charged_tokens"), 120);
    assert_eq!(host.counter("upstream_guard.llm.model.m.tokens"), 120);
    assert_eq!(host.counter("upstream_guard.llm.model.m.prompt_tokens"), 40);
}

#[test]
fn a_json_answer_is_charged_and_one_without_usage_is_counted() {
    let host = Host::new().workers(1);
    let p = load(&host, json!({"llm": llm(budget())}));
    let w = p.worker(0);
    let answer = br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
    let (mut s, _) = send(w, &[("x-api-key", "k")], &body("m"));
    respond(&mut s, 200, &[("content-type", "application/json")], &[&answer[..50], &answer[50..]]);
    let (mut s, _) = send(w, &[("x-api-key", "k")], &body("m"));
    respond(&mut s, 200, &[("content-type", "application/json")], &[br#"{"choices":[]}"#]);
    let (mut s, _) = send(w, &[("x-api-key", "k")], &body("m"));
    respond(&mut s, 500, &[("content-type", "application/json")], &[answer]);
    assert_eq!(host.counter("upstream_guard.llm.budget.k.charged_tokens"), 7, "errors are not charged");
    assert_eq!(host.counter("upstream_guard.llm.model.m.usage_missing"), 1);
}

#[test]
fn the_stages_after_it_decide_after_the_body_and_the_health_router_leaves_it_alone() {
    let host = Host::new().workers(1);
    let suite = json!({
        // Without the demotion of a provider that just failed, the next request meets a again.
        "llm": llm(json!({"demote_failed": "0s"})),
        "health_router": {"upstreams": [{"cluster": "web"}]},
        "circuit_breaker": {"failure": {"consecutive": 1}, "open": {"base": "30s"}},
    });
    let p = load(&host, suite);
    let w = p.worker(0);
    // Not an LLM path: the health router routes with its header.
    let mut s = w.http_stream();
    assert_eq!(s.request_headers(&[(":path", "/web"), (":method", "GET")], true).unwrap(), Action::Continue);
    assert_eq!(s.request_header("x-upstream-cluster").as_deref(), Some("web"));
    // An LLM path: routed by the llm stage only.
    let (mut s, c) = send(w, &[], &body("m"));
    assert_eq!(c.unwrap(), "a");
    assert_eq!(s.request_header("x-upstream-cluster"), None, "the health router did not route it");
    // The breaker guards the provider the llm stage chose: one failure opens a's circuit.
    respond(&mut s, 503, &[], &[b"x"]);
    let (s, c) = send(w, &[], &body("m"));
    assert_eq!(c, Err(503));
    assert_eq!(s.local_response().unwrap().details.as_deref(), Some("upstream_guard.circuit_open"));
}

#[test]
fn a_request_the_stage_does_not_claim_costs_no_body_reads() {
    let host = Host::new().workers(1);
    let p = load(&host, json!({"llm": llm(budget())}));
    let w = p.worker(0);
    w.reset_host_calls();
    let mut s = w.http_stream();
    assert_eq!(s.request_headers(&[(":path", "/upload"), (":method", "POST")], false).unwrap(), Action::Continue);
    assert_eq!(s.request_body(b"0123456789", true).unwrap(), Action::Continue);
    s.response_headers(&[(":status", "200"), ("content-type", "application/json")], false).unwrap();
    s.response_body(b"{}", true).unwrap();
    s.finish().unwrap();
    // One read of the request headers (`:path`, with the budget's key header in the same read
    // plan): no body read, no shared data, no property, nothing on the response.
    let calls = w.host_calls();
    assert_eq!(calls.total(), 1, "{:?}", calls.by_name);
    assert!(calls.by_name.keys().all(|k| k.starts_with("proxy_get_header_map")), "{:?}", calls.by_name);
}

#[test]
fn the_usage_chunk_the_gateway_asked_for_is_taken_out_of_the_clients_stream() {
    const CHUNK: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n";
    const USAGE: &[u8] =
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\n";
    const DONE: &[u8] = b"data: [DONE]\n\n";
    let host = Host::new().workers(1);
    let p = load(&host, json!({"llm": llm(budget())}));
    let w = p.worker(0);
    let sse = [("content-type", "text/event-stream"), ("content-length", "999")];
    let (first, second) = USAGE.split_at(20);
    let tail = [second, DONE].concat();

    // The client did not ask: the stream it gets has no usage chunk, cut where it may be.
    let streamed = json!({"model": "m", "stream": true}).to_string();
    let (mut s, _) = send(w, &[("x-api-key", "k")], &streamed);
    s.set_property_u64("response.code", 200);
    s.response_headers(&[(":status", "200"), sse[0], sse[1]], false).unwrap();
    assert_eq!(s.response_header("content-length"), None, "the length changes");
    for (chunk, end) in [(CHUNK, false), (first, false), (tail.as_slice(), true)] {
        assert_eq!(s.response_body(chunk, end).unwrap(), Action::Continue, "never held");
    }
    assert_eq!(s.response_body_now(), [CHUNK, DONE].concat());
    s.log().unwrap();
    assert_eq!(host.counter("upstream_guard.llm.budget.k.charged_tokens"), 7, "still charged");

    // A client that asked gets every byte.
    let asked = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}}).to_string();
    let (mut s, _) = send(w, &[("x-api-key", "k")], &asked);
    s.set_property_u64("response.code", 200);
    s.response_headers(&[(":status", "200"), sse[0], sse[1]], false).unwrap();
    for (chunk, end) in [(CHUNK, false), (first, false), (tail.as_slice(), true)] {
        s.response_body(chunk, end).unwrap();
    }
    assert_eq!(s.response_body_now(), [CHUNK, USAGE, DONE].concat());
    assert_eq!(s.response_header("content-length").as_deref(), Some("999"));
}

#[test]
fn envoys_own_reply_to_a_failed_provider_becomes_an_openai_error_with_a_retry_after() {
    let host = Host::new().workers(1);
    let p = load(&host, json!({"llm": llm(json!({}))}));
    let w = p.worker(0);
    for (want_code, retry) in [("connection_refused", "0"), ("connection_refused", "1")] {
        let (mut s, c) = send(w, &[], &body("m"));
        let routed = c.unwrap();
        s.set_property_u64("response.code", 503);
        s.set_property("response.code_details", "upstream_reset_before_response_started{connection_failure}");
        s.set_property_u64("response.flags", 0x20);
        let text = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure";
        let headers = [(":status", "503"), ("content-type", "text/plain"), ("content-length", "91")];
        s.response_headers(&headers, false).unwrap();
        assert_eq!(s.response_body(&text[..40], false).unwrap(), Action::Pause, "held until complete");
        assert_eq!(s.response_body(&text[40..], true).unwrap(), Action::Continue);
        let got: Value = serde_json::from_slice(&s.response_body_now()).unwrap();
        assert_eq!(got["error"]["code"], want_code, "{got}");
        assert_eq!(got["error"]["type"], "server_error");
        assert!(!got.to_string().contains("\"a\"") && !got.to_string().contains("\"b\""), "no cluster: {got}");
        assert_eq!(s.response_header("content-type").as_deref(), Some("application/json"));
        assert_eq!(s.response_header("content-length"), Some(s.response_body_now().len().to_string()));
        // First a fails (b can take the retry now), then b (a just failed too: later).
        assert_eq!(s.response_header("retry-after").as_deref(), Some(retry), "after {routed}");
        s.log().unwrap();
    }
}
