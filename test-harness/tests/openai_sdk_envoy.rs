//! The official `openai` Python package (installed by `cargo xtask setup` into the project venv)
//! against `envoy-examples/llm-gateway/envoy.yaml` as shipped, in real Envoy, over fake
//! providers: what a client that follows the SDK's defaults gets.
//!
//! - the streaming loop everyone writes (`chunk.choices[0].delta.content`) works unchanged,
//!   though the gateway asks the provider for usage to charge the budget;
//! - a provider that answers 500 or refuses connections costs the SDK one of its retries, not
//!   the call: the first retry reaches the healthy provider (counted at the providers);
//! - right after every provider died, each error is OpenAI-shaped JSON with an `error.code`
//!   and a `Retry-After`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use serde_json::Value;
use test_harness::envoy::Envoy;
use test_harness::llm_backend::{gateway_example, FakeLlm, LlmReply};
use test_harness::paths;

/// Runs one client scenario with the SDK's defaults (two retries) unless told otherwise, and
/// returns what it printed.
const CLIENT: &str = r#"
import json, sys, time
import openai

base, scenario, key = sys.argv[1], sys.argv[2], sys.argv[3]
retries = int(sys.argv[4]) if len(sys.argv) > 4 else openai.DEFAULT_MAX_RETRIES
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=retries, timeout=20)
messages = [{"role": "user", "content": "hi"}]
out = {}
start = time.monotonic()
try:
    if scenario == "stream":
        text, chunks = "", 0
        for chunk in client.chat.completions.create(model="gpt-4o", messages=messages, stream=True):
            text += chunk.choices[0].delta.content or ""
            chunks += 1
        out = {"text": text, "chunks": chunks}
    elif scenario == "stream-usage":
        usage, empty = None, 0
        stream = client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage.total_tokens
            if not chunk.choices:
                empty += 1
        out = {"usage": usage, "usage_chunks": empty}
    else:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)
        done = raw.parse()
        out = {"ok": True, "model": done.model, "content": done.choices[0].message.content,
               "retries": raw.retries_taken}
except openai.APIStatusError as e:
    out = {"ok": False, "class": type(e).__name__, "status": e.status_code, "code": e.code,
           "body": e.body, "retry_after": e.response.headers.get("retry-after"),
           "content_type": e.response.headers.get("content-type")}
except Exception as e:
    out = {"ok": False, "class": type(e).__name__, "error": str(e)}
out["seconds"] = round(time.monotonic() - start, 3)
print(json.dumps(out))
"#;

fn sdk(envoy: &Envoy, args: &[&str]) -> Value {
    let base = format!("http://{}", envoy.main().unwrap());
    let out = Command::new(paths::python().unwrap()).arg("-c").arg(CLIENT).arg(&base).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("sdk {args:?}: {v}");
    v
}

fn providers() -> (FakeLlm, FakeLlm) {
    (
        FakeLlm::start("primary", LlmReply::json(10, 20)).unwrap(),
        FakeLlm::start("secondary", LlmReply::json(10, 20)).unwrap(),
    )
}

#[test]
fn the_sdks_streaming_loop_works_unchanged_and_the_budget_is_still_charged() {
    let (primary, secondary) = providers();
    let envoy = Envoy::start_yaml(&gateway_example(&primary, &secondary), 2).unwrap();
    let v = sdk(&envoy, &["stream", "alice"]);
    assert_eq!((v["text"].as_str(), v["chunks"].as_u64()), (Some("word0 word1 word2 "), Some(3)), "{v}");
    let asked = primary.seen().pop().unwrap().json().unwrap();
    assert_eq!(asked["stream_options"]["include_usage"], true, "the gateway asked for the usage it charges");
    assert_eq!(envoy.stat("upstream_guard.llm.budget.per-key.charged_tokens").unwrap(), Some(30));

    // A client that asks for the usage chunk gets it, once.
    let v = sdk(&envoy, &["stream-usage", "bob"]);
    assert_eq!((v["usage"].as_u64(), v["usage_chunks"].as_u64()), (Some(30), Some(1)), "{v}");
    assert_eq!(envoy.stat("upstream_guard.llm.budget.per-key.charged_tokens").unwrap(), Some(60));
    assert_eq!(secondary.requests(), 0);
}

#[test]
fn a_provider_answering_500_costs_the_sdk_one_retry_not_the_call() {
    let (primary, secondary) = providers();
    let envoy = Envoy::start_yaml(&gateway_example(&primary, &secondary), 2).unwrap();
    primary.set(LlmReply::status(500));
    let v = sdk(&envoy, &["call", "alice"]);
    assert_eq!((v["ok"].as_bool(), v["retries"].as_u64()), (Some(true), Some(1)), "{v}");
    assert_eq!(v["content"], "hello from secondary");
    // The answer names the model as the provider that served it does (docs/reference/llm.md).
    assert_eq!(v["model"], "gpt-4o-2024-08-06");
    assert_eq!((primary.requests(), secondary.requests()), (1, 1), "one failed attempt, one served");

    // The next call goes to the secondary at once: the primary is tried last while it has
    // just failed.
    let v = sdk(&envoy, &["call", "bob"]);
    assert_eq!((v["ok"].as_bool(), v["retries"].as_u64()), (Some(true), Some(0)), "{v}");
    assert_eq!((primary.requests(), secondary.requests()), (1, 2));
}

#[test]
fn a_provider_refusing_connections_costs_the_sdk_one_retry_not_the_call() {
    let (primary, secondary) = providers();
    let envoy = Envoy::start_yaml(&gateway_example(&primary, &secondary), 2).unwrap();
    drop(primary);
    let v = sdk(&envoy, &["call", "alice"]);
    assert_eq!((v["ok"].as_bool(), v["retries"].as_u64()), (Some(true), Some(1)), "{v}");
    assert_eq!(v["content"], "hello from secondary");
    assert_eq!(secondary.requests(), 1, "the first retry was the one that reached it");
}

#[test]
fn right_after_every_provider_died_each_error_is_openai_shaped_with_a_retry_after() {
    let (primary, secondary) = providers();
    let envoy = Envoy::start_yaml(&gateway_example(&primary, &secondary), 2).unwrap();
    drop(primary);
    drop(secondary);
    // Without retries, to see each answer: the first meets the primary (the secondary is not
    // known to be down yet: retry now); by the second, nothing is left (the secondary failed
    // too, or its health check already said so): retry later.
    let first = sdk(&envoy, &["call", "alice", "0"]);
    let second = sdk(&envoy, &["call", "alice", "0"]);
    for (v, retry_after) in [(&first, "0"), (&second, "1")] {
        assert_eq!((v["class"].as_str(), v["status"].as_u64()), (Some("InternalServerError"), Some(503)), "{v}");
        assert_eq!(v["content_type"], "application/json");
        assert_eq!(v["retry_after"], retry_after, "{v}");
        let code = v["code"].as_str().unwrap();
        let codes = ["connection_refused", "upstream_connection_terminated", "upstream_reset", "model_unavailable"];
        assert!(codes.contains(&code), "{v}");
        assert!(v["body"]["type"].is_string(), "{v}");
        assert!(v["body"]["message"].as_str().unwrap().contains(r#"model "gpt-4o""#), "{v}");
    }
    // With the SDK's own retries, it still ends in the same shape.
    let v = sdk(&envoy, &["call", "bob"]);
    assert_eq!((v["class"].as_str(), v["status"].as_u64()), (Some("InternalServerError"), Some(503)), "{v}");
    assert!(v["code"].is_string() && v["retry_after"].is_string(), "{v}");
}
