//! LLM upstreams: model-aware failover across providers, provider 429s honoured, token budgets.
//!
//! An OpenAI-compatible request names its model in the body, a model may be served by several
//! providers under different names, providers answer 429 with a time to wait and overload (5xx,
//! 529) for minutes, and cost is counted in tokens that are only known at the end of the
//! response. Every decision about that lives here, with time passed in:
//!
//! - [`body`]: the model (and `stream`) from the buffered request body, and the body rewritten
//!   for a provider that names the model differently;
//! - [`config`]: providers, models and their failover order, budgets;
//! - [`choose`]: the first available provider of a model, on the health machinery's shared state
//!   ([`crate::health::Health`]: active checks, passive ejection, and the pause a 429 asks for);
//! - [`reset`]: how long a provider's 429 asks to be left alone;
//! - [`usage`]: token usage read from a JSON or server-sent-event response as it streams past;
//! - [`trim`]: the usage chunk the gateway asked for removed from a stream the client did not;
//! - [`budget`]: per-key token balances, charged after the response.

pub mod body;
pub mod budget;
pub mod config;
pub mod reset;
pub mod trim;
pub mod usage;

pub use body::{needs_rewrite, rewrite, scan, BodyError, RequestBody};
pub use budget::{Admission, Balance, TokenRate};
pub use config::{Budget, LlmConfig, LlmJson, ModelRoute, Target};
pub use reset::{provider_pause, Pause, PauseSource, ResetHeaders, RESET_HEADER_NAMES};
pub use trim::UsageTrim;
pub use usage::{Usage, UsageMeter};

use crate::health::{Health, HealthConfig};

/// Why one provider of a model is out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderState {
    pub cluster: String,
    /// The name the provider knows the model by.
    pub model: String,
    pub reason: String,
    /// Nanoseconds until it is expected back (a pause or an ejection); `None` when only a passing
    /// health check can bring it back.
    pub back_in_ns: Option<u64>,
}

/// Every provider of a model is out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub model: String,
    pub providers: Vec<ProviderState>,
}

impl Unavailable {
    /// When the first provider is expected back, if any is.
    pub fn retry_after_ns(&self) -> Option<u64> {
        self.providers.iter().filter_map(|p| p.back_in_ns).min()
    }

    /// `cluster: reason` per provider, for the diagnosis (trusted clients only).
    pub fn reasons(&self) -> String {
        let parts: Vec<String> = self.providers.iter().map(|p| format!("{}: {}", p.cluster, p.reason)).collect();
        parts.join("; ")
    }

    /// The reply body, in the OpenAI error shape clients already parse; for a trusted client
    /// (`detailed`) with every provider's cluster and reason, for others without (provider
    /// clusters are the operator's topology).
    pub fn json(&self, detailed: bool) -> String {
        if !detailed {
            return serde_json::json!({"error": {
                "message": format!("every provider of model {:?} is unavailable: retry later", self.model),
                "type": "model_unavailable", "code": "model_unavailable", "param": "model",
                "model": self.model}})
            .to_string();
        }
        let providers: Vec<serde_json::Value> = self
            .providers
            .iter()
            .map(|p| {
                serde_json::json!({"cluster": p.cluster, "model": p.model, "reason": p.reason,
                                   "back_in_ms": p.back_in_ns.map(|n| n.div_ceil(1_000_000))})
            })
            .collect();
        serde_json::json!({"error": {
            "message": format!("every provider of model {:?} is unavailable", self.model),
            "type": "model_unavailable", "code": "model_unavailable", "param": "model",
            "model": self.model, "providers": providers}})
        .to_string()
    }
}

/// Picks the provider for `route`: the first available one in configured order that has not
/// just failed ([`Health::demoted`] within `demote_ns`), else the first available one. `Ok` holds
/// the index into `route.targets`; `states` are the providers' shared health, indexed like
/// `providers.upstreams`.
///
/// Why the demotion: a client's SDK retries a failed call (the OpenAI SDK: twice, half a second
/// apart), and without it every retry would meet the same provider until passive detection has
/// counted enough failures to eject it. With it, the first retry goes to the next provider.
pub fn choose(
    route: &ModelRoute,
    providers: &HealthConfig,
    states: &[Health],
    now: u64,
    demote_ns: u64,
) -> Result<usize, Unavailable> {
    let available = |t: &Target| states.get(t.provider).map_or(true, |h| h.available(now));
    let fresh = |t: &Target| states.get(t.provider).map_or(true, |h| !h.demoted(now, demote_ns));
    if let Some(i) = route.targets.iter().position(|t| available(t) && fresh(t)) {
        return Ok(i);
    }
    if let Some(i) = route.targets.iter().position(available) {
        return Ok(i);
    }
    let providers = route
        .targets
        .iter()
        .map(|t| {
            let h = states.get(t.provider).copied().unwrap_or_default();
            ProviderState {
                cluster: providers.upstreams.get(t.provider).map(|u| u.cluster.clone()).unwrap_or_default(),
                model: t.model.clone().unwrap_or_else(|| route.name.clone()),
                reason: h.reason(now),
                back_in_ns: h.back_at(now).map(|at| at.saturating_sub(now)),
            }
        })
        .collect();
    Err(Unavailable { model: route.name.clone(), providers })
}

/// An error body in the OpenAI shape: `{"error": {"message", "type", "code", "param", ...extra}}`.
pub fn error_json(code: &str, message: &str, extra: serde_json::Value) -> String {
    let mut e =
        serde_json::json!({"message": message, "type": "invalid_request_error", "code": code, "param": "model"});
    if let (Some(e), serde_json::Value::Object(more)) = (e.as_object_mut(), extra) {
        e.extend(more);
    }
    serde_json::json!({ "error": e }).to_string()
}

/// True when a provider of `route` other than `failed` (an index into the providers) is
/// available and has not just failed: a client's retry would be served there at once.
pub fn another_ready(route: &ModelRoute, failed: usize, states: &[Health], now: u64, demote_ns: u64) -> bool {
    route.targets.iter().any(|t| {
        t.provider != failed && states.get(t.provider).map_or(true, |h| h.available(now) && !h.demoted(now, demote_ns))
    })
}

/// What a client is told when the provider of `model` failed before answering (Envoy's own
/// reply: a refused connection, a timeout): the OpenAI-shaped body (`code` the diagnosis cause)
/// and the `Retry-After` (0 when `another_ready`, else 1).
pub fn provider_failed(model: &str, status: u16, cause: crate::diagnose::Cause, another_ready: bool) -> (String, u64) {
    let then = if another_ready { "retry now: another provider of the model is available" } else { "retry later" };
    let message = format!("the provider of model {model:?} did not answer ({}): {then}", cause.token());
    (reply_json(status, cause.token(), &message), u64::from(!another_ready))
}

/// The body of a refusal on an LLM path that did not come from this stage (Envoy's own reply to
/// a refused connection or a timeout, another stage's refusal), in the same OpenAI error shape as
/// the stage's own: `code` names what happened (the diagnosis cause), `message` is the original
/// reply's text, and `type` follows the status as OpenAI's API does.
pub fn reply_json(status: u16, code: &str, message: &str) -> String {
    let kind = match status {
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    serde_json::json!({"error": {"message": message, "type": kind, "code": code, "param": null}}).to_string()
}

/// The `code` of a refusal in OpenAI's error shape: the rate limiter's refusal is
/// `rate_limit_exceeded` (what OpenAI calls it), others the cause or the reply's details without
/// the project prefix.
pub fn reply_code(details: &str) -> &str {
    if details == crate::details::RATE_LIMITED {
        return "rate_limit_exceeded";
    }
    details.strip_prefix("upstream_guard.").unwrap_or(details)
}

/// True when `body` already is an OpenAI-shaped error (`{"error": {...}}`): kept as it is.
pub fn is_error_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.get("error").is_some_and(|e| e.is_object()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn config() -> LlmConfig {
        LlmConfig::from_json(
            br#"{"providers": [{"cluster": "a"}, {"cluster": "b"}],
                 "models": [{"name": "m", "providers": ["a", {"cluster": "b", "model": "m-b"}]}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_first_available_provider_wins() {
        let c = config();
        let route = c.model("m").unwrap();
        let mut states = vec![Health::default(); 2];
        assert_eq!(choose(route, &c.providers, &states, S, 0), Ok(0));
        states[0].apply_rate_limit(10 * S);
        assert_eq!(choose(route, &c.providers, &states, S, 0), Ok(1));
        assert_eq!(choose(route, &c.providers, &states, 10 * S, 0), Ok(0), "the pause ran out");
    }

    #[test]
    fn a_provider_that_just_failed_is_tried_last_so_the_retry_goes_elsewhere() {
        let c = config();
        let route = c.model("m").unwrap();
        let passive = c.providers.passive.clone().unwrap();
        let mut states = vec![Health::default(); 2];
        states[0].apply_passive(&passive, true, S);
        assert_eq!(choose(route, &c.providers, &states, 2 * S, 10 * S), Ok(1), "the retry meets the other provider");
        assert_eq!(choose(route, &c.providers, &states, 2 * S, 0), Ok(0), "off: only ejection moves traffic");
        assert_eq!(choose(route, &c.providers, &states, 11 * S, 10 * S), Ok(0), "the window ran out");
        states[1].apply_passive(&passive, true, 2 * S);
        assert_eq!(choose(route, &c.providers, &states, 3 * S, 10 * S), Ok(0), "both failed: configured order");
        states[1].ejected_until = 60 * S;
        assert_eq!(choose(route, &c.providers, &states, 3 * S, 10 * S), Ok(0), "demoted beats unavailable");
    }

    #[test]
    fn all_out_says_why_and_when() {
        let c = config();
        let route = c.model("m").unwrap();
        let mut states = vec![Health::default(); 2];
        states[0].apply_rate_limit(10 * S);
        states[1].ejected_until = 4 * S;
        let u = choose(route, &c.providers, &states, S, 0).unwrap_err();
        assert_eq!(u.retry_after_ns(), Some(3 * S));
        assert_eq!(
            u.reasons(),
            "a: rate limited by the upstream (429), back in 9000 ms; b: ejected by passive detection after consecutive \
             failed responses, for 3000 ms more"
        );
        let v: serde_json::Value = serde_json::from_str(&u.json(true)).unwrap();
        assert_eq!(v["error"]["code"], "model_unavailable");
        assert_eq!(v["error"]["providers"][1]["model"], "m-b");
        assert_eq!(v["error"]["providers"][1]["back_in_ms"], 3000);
        // An untrusted client learns that the model is unavailable, not which clusters serve it.
        let plain = u.json(false);
        let v: serde_json::Value = serde_json::from_str(&plain).unwrap();
        assert_eq!((v["error"]["code"].as_str(), v["error"]["model"].as_str()), (Some("model_unavailable"), Some("m")));
        assert!(v["error"].get("providers").is_none(), "{plain}");
        assert!(!plain.contains("\"a\"") && !plain.contains("\"b\"") && !plain.contains("m-b"), "{plain}");
    }

    #[test]
    fn a_failed_provider_says_retry_now_only_when_another_is_ready() {
        let c = config();
        let route = c.model("m").unwrap();
        let passive = c.providers.passive.clone().unwrap();
        let mut states = vec![Health::default(); 2];
        assert!(another_ready(route, 0, &states, S, 10 * S));
        states[1].apply_passive(&passive, true, S);
        assert!(!another_ready(route, 0, &states, 2 * S, 10 * S), "b just failed too");
        assert!(another_ready(route, 0, &states, 12 * S, 10 * S), "b's demotion ran out");
        let (body, retry) = provider_failed("m", 503, crate::diagnose::Cause::ConnectionRefused, true);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((v["error"]["code"].as_str(), retry), (Some("connection_refused"), 0));
        assert!(v["error"]["message"].as_str().unwrap().contains("model \"m\""));
        assert_eq!(provider_failed("m", 504, crate::diagnose::Cause::UpstreamTimeout, false).1, 1);
    }

    #[test]
    fn other_refusals_get_the_openai_shape_too() {
        let v: serde_json::Value =
            serde_json::from_str(&reply_json(503, "connection_refused", "upstream connect error")).unwrap();
        assert_eq!(
            (v["error"]["type"].as_str(), v["error"]["code"].as_str(), v["error"]["message"].as_str()),
            (Some("server_error"), Some("connection_refused"), Some("upstream connect error"))
        );
        assert!(is_error_json(reply_json(429, "x", "y").as_bytes()));
        assert!(!is_error_json(b"upstream connect error") && !is_error_json(br#"{"cause": "x"}"#));
        assert_eq!(reply_code(crate::details::RATE_LIMITED), "rate_limit_exceeded");
        assert_eq!(reply_code(crate::details::CIRCUIT_OPEN), "circuit_open");
        assert_eq!(reply_code("via_upstream"), "via_upstream");
    }

    #[test]
    fn error_bodies_have_the_openai_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&error_json("model_not_found", "no", serde_json::json!({"models": ["m"]}))).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["models"][0], "m");
    }
}
