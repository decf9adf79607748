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
//! - [`budget`]: per-key token balances, charged after the response.

pub mod body;
pub mod budget;
pub mod config;
pub mod reset;
pub mod usage;

pub use body::{needs_rewrite, rewrite, scan, BodyError, RequestBody};
pub use budget::{Admission, Balance, TokenRate};
pub use config::{Budget, LlmConfig, LlmJson, ModelRoute, Target};
pub use reset::{provider_pause, Pause, PauseSource, ResetHeaders, RESET_HEADER_NAMES};
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

/// Picks the provider for `route`: the first available one in configured order. `Ok` holds the
/// index into `route.targets`; `states` are the providers' shared health, indexed like
/// `providers.upstreams`.
pub fn choose(route: &ModelRoute, providers: &HealthConfig, states: &[Health], now: u64) -> Result<usize, Unavailable> {
    if let Some(i) = route.targets.iter().position(|t| states.get(t.provider).map_or(true, |h| h.available(now))) {
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
        assert_eq!(choose(route, &c.providers, &states, S), Ok(0));
        states[0].apply_rate_limit(10 * S);
        assert_eq!(choose(route, &c.providers, &states, S), Ok(1));
        assert_eq!(choose(route, &c.providers, &states, 10 * S), Ok(0), "the pause ran out");
    }

    #[test]
    fn all_out_says_why_and_when() {
        let c = config();
        let route = c.model("m").unwrap();
        let mut states = vec![Health::default(); 2];
        states[0].apply_rate_limit(10 * S);
        states[1].ejected_until = 4 * S;
        let u = choose(route, &c.providers, &states, S).unwrap_err();
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
    fn error_bodies_have_the_openai_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&error_json("model_not_found", "no", serde_json::json!({"models": ["m"]}))).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["models"][0], "m");
    }
}
