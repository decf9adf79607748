//! The combined module's configuration: one JSON object with a section per policy.
//!
//! `{"diagnostics": {…}, "rate_limiter": {…}, "llm": {…}, "health_router": {…}, "concurrency": {…},
//! "circuit_breaker": {…}}`:
//! each section is exactly the single filter's configuration (`llm` exists only here); a missing
//! section turns that stage off; an unknown section is refused, naming it. Errors inside a
//! section name the full path (`rate_limiter.rules[0].limit.per`).
//!
//! Stage order (requests in this order, responses in reverse): diagnostics, rate limiter, llm,
//! health router, concurrency, circuit breaker. The stages before the llm stage decide at the request headers.
//! For a request on one of its paths, the llm stage and the stages after it decide once the body
//! is in (Envoy's buffer filter, after the module, holds the request from the router until then):
//! the llm stage routes by the body's model (filter state plus a route-cache clear, since the
//! headers can no longer be changed) and records the routed cluster; the health router leaves a
//! request an earlier stage routed alone; the circuit breaker guards the provider the llm stage
//! chose. Requests on other paths never wait.

use serde::Deserialize;

use crate::breaker::{BreakerConfig, BreakerJson};
use crate::concurrency::{ConcurrencyConfig, ConcurrencyJson};
use crate::config::{parse_json, ConfigError};
use crate::diagnose::{DiagnosticsConfig, DiagnosticsJson};
use crate::health::{HealthConfig, HealthJson};
use crate::llm::{LlmConfig, LlmJson};
use crate::ratelimit::{RateLimitConfig, RateLimitJson};

/// # upstream_guard
///
/// upstream_guard.wasm's plugin configuration: one section per policy, each exactly that
/// filter's own configuration. A missing section turns that stage off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SuiteJson {
    /// Who is trusted, once for every stage that shows trusted clients more (the diagnosis's
    /// upstream details, the health router's status endpoint, the LLM stage's provider reasons).
    /// With it, those sections leave their own `trusted_cidrs` and `trust_x_forwarded_for` out.
    #[serde(default)]
    pub trust: Option<TrustJson>,
    /// The diagnostics stage (first: it explains every later stage's refusal).
    #[serde(default)]
    pub diagnostics: Option<DiagnosticsJson>,
    /// The rate limiter stage.
    #[serde(default)]
    pub rate_limiter: Option<RateLimitJson>,
    /// The health router stage.
    #[serde(default)]
    pub llm: Option<LlmJson>,
    #[serde(default)]
    pub health_router: Option<HealthJson>,
    /// The adaptive concurrency stage (after the router: it limits the cluster chosen).
    #[serde(default)]
    pub concurrency: Option<ConcurrencyJson>,
    /// The circuit breaker stage (last: it guards the cluster the router chose).
    #[serde(default)]
    pub circuit_breaker: Option<BreakerJson>,
}

/// Top-level sections of the combined configuration that are not stages: shared by them.
pub const SHARED_SECTIONS: [&str; 1] = ["trust"];

/// # trust
///
/// The combined module's clients that are trusted, for every stage.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TrustJson {
    /// Client address blocks (`source.address`) that are trusted, IPv4 and IPv6 (`"10.0.0.0/8"`,
    /// `"::1/128"`, a bare address is one host).
    #[cfg_attr(feature = "schema", schemars(extend("default" = []), inner(pattern(crate::schema::CIDR))))]
    #[serde(default)]
    pub trusted_cidrs: Vec<String>,
    /// Also trust client addresses Envoy took from `x-forwarded-for`: only safe behind a proxy
    /// that overwrites that header.
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    #[serde(default)]
    pub trust_x_forwarded_for: bool,
}

/// A section that states its own trust beside the top-level `trust`: one of the two must go.
fn twice(section: &str, cidrs: &[String], forwarded: bool) -> Result<(), ConfigError> {
    let field = if !cidrs.is_empty() {
        "trusted_cidrs"
    } else if forwarded {
        "trust_x_forwarded_for"
    } else {
        return Ok(());
    };
    Err(ConfigError::new(
        format!("{section}.{field}"),
        "is set, and so is the top-level trust section",
        format!("state trust once: remove {section}.{field} (trust applies to every stage), or remove trust"),
    ))
}

/// The validated configuration: one optional stage per policy.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    pub diagnostics: Option<DiagnosticsConfig>,
    pub rate_limiter: Option<RateLimitConfig>,
    pub llm: Option<LlmConfig>,
    pub health_router: Option<HealthConfig>,
    pub concurrency: Option<ConcurrencyConfig>,
    pub circuit_breaker: Option<BreakerConfig>,
}

impl SuiteConfig {
    /// Parses and validates every section.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut json: SuiteJson = parse_json(bytes)?;
        if let Some(trust) = json.trust.take() {
            crate::config::cidrs("trust.trusted_cidrs", &trust.trusted_cidrs)?;
            // Into each section that trusts, unless it states its own trust too.
            let share = |section: &str, cidrs: &mut Vec<String>, forwarded: &mut bool| {
                twice(section, cidrs, *forwarded)?;
                (*cidrs, *forwarded) = (trust.trusted_cidrs.clone(), trust.trust_x_forwarded_for);
                Ok::<(), ConfigError>(())
            };
            if let Some(d) = json.diagnostics.as_mut() {
                share("diagnostics", &mut d.trusted_cidrs, &mut d.trust_x_forwarded_for)?;
            }
            if let Some(h) = json.health_router.as_mut() {
                share("health_router", &mut h.trusted_cidrs, &mut h.trust_x_forwarded_for)?;
            }
            if let Some(l) = json.llm.as_mut() {
                share("llm", &mut l.trusted_cidrs, &mut l.trust_x_forwarded_for)?;
            }
        }
        Ok(SuiteConfig {
            diagnostics: json.diagnostics.map(|d| d.validate().map_err(|e| e.within("diagnostics"))).transpose()?,
            rate_limiter: json.rate_limiter.map(|r| r.validate().map_err(|e| e.within("rate_limiter"))).transpose()?,
            llm: json.llm.map(|l| l.validate().map_err(|e| e.within("llm"))).transpose()?,
            health_router: json
                .health_router
                .map(|h| h.validate().map_err(|e| e.within("health_router")))
                .transpose()?,
            concurrency: json.concurrency.map(|c| c.validate().map_err(|e| e.within("concurrency"))).transpose()?,
            circuit_breaker: json
                .circuit_breaker
                .map(|b| b.validate().map_err(|e| e.within("circuit_breaker")))
                .transpose()?,
        })
    }

    /// The names of the stages that are on, in pipeline order ([`crate::stages::STAGES`]).
    pub fn stages(&self) -> Vec<&'static str> {
        crate::stages::STAGES.iter().map(|s| s.section).filter(|s| self.is_on(s)).collect()
    }

    /// Whether the stage of section `section` is configured.
    fn is_on(&self, section: &str) -> bool {
        match section {
            "diagnostics" => self.diagnostics.is_some(),
            "rate_limiter" => self.rate_limiter.is_some(),
            "llm" => self.llm.is_some(),
            "health_router" => self.health_router.is_some(),
            "concurrency" => self.concurrency.is_some(),
            "circuit_breaker" => self.circuit_breaker.is_some(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_sections_turn_stages_off() {
        let c = SuiteConfig::from_json(br#"{"diagnostics": {}, "circuit_breaker": {}}"#).unwrap();
        assert_eq!(c.stages(), ["diagnostics", "circuit_breaker"]);
        let c = SuiteConfig::from_json(
            br#"{"circuit_breaker": {}, "llm": {"providers": [{"cluster": "a"}], "models": [{"name": "m", "providers": ["a"]}]}}"#,
        )
        .unwrap();
        assert_eq!(c.stages(), ["llm", "circuit_breaker"]);
        assert!(SuiteConfig::from_json(b"{}").unwrap().stages().is_empty());
    }

    #[test]
    fn top_level_trust_applies_to_every_stage_that_trusts() {
        let c = SuiteConfig::from_json(
            br#"{"trust": {"trusted_cidrs": ["10.0.0.0/8"]}, "diagnostics": {},
                 "health_router": {"upstreams": [{"cluster": "a"}], "status_path": "/status"},
                 "llm": {"providers": [{"cluster": "a"}], "models": [{"name": "m", "providers": ["a"]}]}}"#,
        )
        .unwrap();
        let inside = std::net::IpAddr::from([10, 1, 2, 3]);
        let outside = std::net::IpAddr::from([192, 168, 1, 1]);
        let d = c.diagnostics.unwrap();
        assert!(d.trust.cidrs.iter().any(|n| n.contains(inside)) && !d.trust.cidrs.iter().any(|n| n.contains(outside)));
        assert_eq!(c.health_router.unwrap().trust.cidrs, d.trust.cidrs);
        assert_eq!(c.llm.unwrap().providers.trust.cidrs, d.trust.cidrs);
    }

    #[test]
    fn trust_stated_twice_is_refused_naming_the_section() {
        let e = SuiteConfig::from_json(
            br#"{"trust": {"trusted_cidrs": ["10.0.0.0/8"]}, "diagnostics": {"trusted_cidrs": ["10.0.0.0/8"]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "diagnostics.trusted_cidrs");
        assert!(e.fix.contains("remove diagnostics.trusted_cidrs"), "{e}");
        let e =
            SuiteConfig::from_json(br#"{"trust": {"trusted_cidrs": ["10.0.0.0/33"]}, "diagnostics": {}}"#).unwrap_err();
        assert_eq!(e.field, "trust.trusted_cidrs[0]");
    }

    #[test]
    fn unknown_sections_are_refused_by_name() {
        let e = SuiteConfig::from_json(br#"{"rate_limitter": {}}"#).unwrap_err();
        assert!(e.problem.contains("rate_limitter"), "{e}");
    }

    #[test]
    fn errors_inside_a_section_name_the_full_path() {
        let e = SuiteConfig::from_json(
            br#"{"rate_limiter": {"rules": [{"name": "a", "limit": {"requests": 5, "per": "soon"}}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "rate_limiter.rules[0].limit.per");
        let e = SuiteConfig::from_json(br#"{"diagnostics": {"trusted_cidrs": ["10.0.0.0/33"]}}"#).unwrap_err();
        assert_eq!(e.field, "diagnostics.trusted_cidrs[0]");
        let e = SuiteConfig::from_json(br#"{"health_router": {"upstreams": [], "x": 1}}"#).unwrap_err();
        assert!(e.field.starts_with("health_router"), "{e}");
        let e = SuiteConfig::from_json(
            br#"{"llm": {"providers": [{"cluster": "a"}], "models": [{"name": "m", "providers": ["b"]}]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "llm.models[0].providers[0]");
    }
}
