//! `faulty.wasm`: the combined module's stages behind a test-only fault switch. Never shipped
//! (`cargo xtask package` knows only the modules in `FILTERS`, and a test checks that no shipped
//! `.wasm` contains the switch).
//!
//! Why it exists: what Envoy does when a filter traps (each `failure_policy`) can only be shown
//! with a filter that traps on demand, and the shipped modules must never do that. This module
//! is `upstream_guard.wasm` plus one stage in front:
//!
//! - a request carrying `x-ug-test-fault: panic` panics in `on_request_headers`, and
//!   `x-ug-test-fault: panic-response` panics in `on_response_headers`;
//! - with a `test.probe` section, a request carrying `x-ug-test-probe` is answered with the number
//!   of shared-data keys that exist under the configured names (this module's VM id decides
//!   whose keys it sees), to check from inside Envoy which keys exist (the soak reads the count
//!   the combined module publishes itself, `upstream_guard.shared_data.keys_created`).
//!
//! The configuration is the combined module's, plus an optional `test` section:
//! `{"test": {"probe": {"ranges": [{"prefix": "ug.rl.", "count": 50000}], "keys": ["ug.v"]}}, "rate_limiter": {…}}`.

use serde_json::Value;
use upstream_guard::config::ConfigError;
use upstream_guard_glue::{host, Cx, Flow, LocalReply, Stage};
use upstream_guard_stages::{CircuitBreaker, Concurrency, Diagnostics, HealthRouter, Llm, RateLimiter};

/// The request header that flips the switch.
const FAULT_HEADER: &str = "x-ug-test-fault";
/// The request header that asks for a key count.
const PROBE_HEADER: &str = "x-ug-test-probe";

/// Shared-data names to count: `prefix0` … `prefix<count-1>`, and single keys.
#[derive(Debug, Default)]
struct Probe {
    ranges: Vec<(String, u32)>,
    keys: Vec<String>,
}

impl Probe {
    fn count(&self) -> (u64, Vec<(String, u64)>) {
        let exists = |key: &[u8]| matches!(host::shared_get(key), Ok(Some(_)));
        let mut total = 0;
        let mut by = Vec::new();
        for (prefix, count) in &self.ranges {
            let n = (0..*count).filter(|i| exists(format!("{prefix}{i}").as_bytes())).count() as u64;
            total += n;
            by.push((prefix.clone(), n));
        }
        for key in &self.keys {
            let n = u64::from(exists(key.as_bytes()));
            total += n;
            by.push((key.clone(), n));
        }
        (total, by)
    }
}

/// The switch.
struct Fault {
    probe: Option<Probe>,
}

/// Per stream: panic when the response arrives.
#[derive(Default)]
struct FaultStream {
    panic_on_response: bool,
}

impl Stage for Fault {
    type Stream = FaultStream;

    #[allow(clippy::panic)] // the whole point of this test-only module
    fn request(&self, st: &mut FaultStream, cx: &mut Cx<'_>) -> Flow {
        match cx.request_header(FAULT_HEADER) {
            Some(b"panic") => panic!("fault switch: a request asked this test module to panic"),
            Some(b"panic-response") => st.panic_on_response = true,
            _ => {}
        }
        if let Some(probe) = &self.probe {
            if cx.request_header(PROBE_HEADER).is_some() {
                let (total, by) = probe.count();
                let by: serde_json::Map<String, Value> = by.into_iter().map(|(k, n)| (k, Value::from(n))).collect();
                let body = serde_json::json!({"keys": total, "by_name": by}).to_string();
                let mut reply = LocalReply::text(200, "upstream_guard.test_probe", String::new());
                reply.body = body.into_bytes();
                reply.set_header("content-type", "application/json");
                return Flow::Reply(reply);
            }
        }
        Flow::Continue
    }

    #[allow(clippy::panic)]
    fn response(&self, st: &mut FaultStream, _cx: &mut Cx<'_>) {
        if st.panic_on_response {
            panic!("fault switch: a request asked this test module to panic on its response");
        }
    }

    fn request_headers_read(&self, out: &mut Vec<String>) {
        out.push(FAULT_HEADER.into());
        if self.probe.is_some() {
            out.push(PROBE_HEADER.into());
        }
    }
}

type Pipeline = (
    Fault,
    Option<Diagnostics>,
    Option<RateLimiter>,
    Option<Llm>,
    Option<HealthRouter>,
    Option<Concurrency>,
    Option<CircuitBreaker>,
);

fn probe_of(test: &Value) -> Result<Option<Probe>, ConfigError> {
    let Some(p) = test.get("probe") else { return Ok(None) };
    let bad = |field: &str| ConfigError::new(field, "is malformed", "see faulty.wasm's module documentation");
    let mut probe = Probe::default();
    for (i, r) in p.get("ranges").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let prefix = r.get("prefix").and_then(Value::as_str).ok_or_else(|| bad(&format!("test.probe.ranges[{i}]")))?;
        let count = r.get("count").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
        let count = count.ok_or_else(|| bad(&format!("test.probe.ranges[{i}].count")))?;
        probe.ranges.push((prefix.to_string(), count));
    }
    for (i, k) in p.get("keys").and_then(Value::as_array).into_iter().flatten().enumerate() {
        probe.keys.push(k.as_str().ok_or_else(|| bad(&format!("test.probe.keys[{i}]")))?.to_string());
    }
    Ok(Some(probe))
}

fn configure(raw: &[u8]) -> Result<Pipeline, ConfigError> {
    let text: &[u8] = if raw.iter().all(u8::is_ascii_whitespace) { b"{}" } else { raw };
    let mut doc: Value = serde_json::from_slice(text)
        .map_err(|e| ConfigError::new(".", e.to_string(), "the configuration must be one JSON object"))?;
    let test = doc.as_object_mut().and_then(|o| o.remove("test")).unwrap_or(Value::Null);
    let probe = probe_of(&test)?;
    let rest = doc.to_string();
    let (d, r, l, h, c, b) = upstream_guard_stages::suite(rest.as_bytes())?;
    Ok((Fault { probe }, d, r, l, h, c, b))
}

upstream_guard_glue::export_filter!(
    "faulty",
    Pipeline,
    configure,
    [request_body, response_body, response_trailers, log, tick, http_calls, grpc]
);
