//! The adaptive concurrency stage's configuration.

use serde::Deserialize;

use crate::config::{duration, ConfigError};
use crate::ratelimit::config::{validate_match, MatchJson};
use crate::ratelimit::{Mode, RuleMatch};

/// A request's priority class. Lower classes are refused first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// May take every slot of the limit.
    Critical,
    High,
    /// Requests no rule classifies.
    #[default]
    Normal,
    /// Refused first.
    Low,
}

impl Class {
    /// Every class, highest first.
    pub const ALL: [Class; 4] = [Class::Critical, Class::High, Class::Normal, Class::Low];

    /// The class's name in logs, metrics and the access log.
    pub fn name(self) -> &'static str {
        match self {
            Class::Critical => "critical",
            Class::High => "high",
            Class::Normal => "normal",
            Class::Low => "low",
        }
    }

    fn index(self) -> usize {
        match self {
            Class::Critical => 0,
            Class::High => 1,
            Class::Normal => 2,
            Class::Low => 3,
        }
    }
}

/// The limit's bounds and starting value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct LimitJson {
    /// The limit before the first window is evaluated.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 20), range(min = 1)))]
    #[serde(default)]
    initial: Option<u32>,
    /// The lowest the limit goes.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 1), range(min = 1)))]
    #[serde(default)]
    min: Option<u32>,
    /// The highest the limit goes (at most 100000).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 1000), range(min = 1, max = 100000)))]
    #[serde(default)]
    max: Option<u32>,
}

/// The latency the limit aims at.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct LatencyJson {
    /// A fixed target for the window's average latency (to the response headers). Default:
    /// the measured no-load latency times `tolerance`.
    #[cfg_attr(feature = "schema", schemars(pattern(crate::schema::DURATION)))]
    #[serde(default)]
    target: Option<String>,
    /// Without `target`: how much over the no-load latency a window's average may be (1–100).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 2.0), range(min = 1.0, max = 100.0)))]
    #[serde(default)]
    tolerance: Option<f64>,
}

/// One classification rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct ClassRuleJson {
    /// The class of the requests this rule matches.
    class: Class,
    /// Which requests (the rate limiter's match: path, method, headers; `{}` matches all).
    #[serde(rename = "match", default)]
    matcher: MatchJson,
}

/// Each class's share of the limit, in (0, 1].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct SharesJson {
    #[cfg_attr(feature = "schema", schemars(extend("default" = 1.0)))]
    #[serde(default)]
    critical: Option<f64>,
    #[cfg_attr(feature = "schema", schemars(extend("default" = 0.9)))]
    #[serde(default)]
    high: Option<f64>,
    #[cfg_attr(feature = "schema", schemars(extend("default" = 0.75)))]
    #[serde(default)]
    normal: Option<f64>,
    #[cfg_attr(feature = "schema", schemars(extend("default" = 0.5)))]
    #[serde(default)]
    low: Option<f64>,
}

/// # concurrency
///
/// The adaptive concurrency stage (the `concurrency` section of upstream_guard.wasm's and
/// libupstream_guard.so's configuration): per upstream cluster, a limit on requests in flight
/// shared by every worker, adapted to the latency the cluster shows; low-priority requests are
/// refused first.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ConcurrencyJson {
    /// The limit's bounds and starting value.
    #[serde(default)]
    limit: LimitJson,
    /// The latency the limit aims at.
    #[serde(default)]
    latency: LatencyJson,
    /// How often the limit is re-evaluated from the answers that ended since.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "1s"), pattern(crate::schema::DURATION)))]
    #[serde(default)]
    window: Option<String>,
    /// The factor the limit is multiplied by when a window's latency is over the target, in
    /// [0.5, 1).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 0.9)))]
    #[serde(default)]
    backoff: Option<f64>,
    /// Classification rules, first match wins; unmatched requests are `normal`. Classify on what
    /// the client cannot choose (the route, or a header your edge sets and strips from clients):
    /// a client that can name its own class can claim `critical`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = [])))]
    #[serde(default)]
    classes: Vec<ClassRuleJson>,
    /// Each class's share of the limit: a class is refused once this share of the limit is in
    /// flight.
    #[serde(default)]
    shares: SharesJson,
    /// Clusters the stage limits (default: every routed cluster).
    #[serde(default)]
    clusters: Option<Vec<String>>,
    /// `enforce` refuses; `shadow` counts and logs what it would refuse.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "enforce")))]
    #[serde(default)]
    mode: Mode,
    /// HTTP status of a refusal (400–599).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 503), range(min = 400, max = 599)))]
    #[serde(default)]
    status: Option<u16>,
    /// gRPC status of the refusal of a gRPC request (0–16; 8 is RESOURCE_EXHAUSTED).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 8), range(max = 16)))]
    #[serde(default)]
    grpc_status: Option<u32>,
    /// A cluster with requests in flight and none ending for this long has its count reset (a
    /// worker that went away with requests counted must not hold the cluster's slots forever).
    /// Longer than your longest request.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "5m"), pattern(crate::schema::DURATION)))]
    #[serde(default)]
    stale_after: Option<String>,
}

/// One validated classification rule.
#[derive(Debug, Clone)]
pub struct ConcurrencyRule {
    pub class: Class,
    pub matcher: RuleMatch,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ConcurrencyConfig {
    pub initial: u32,
    pub min: u32,
    pub max: u32,
    pub target_ns: Option<u64>,
    pub tolerance: f64,
    pub window_ns: u64,
    pub backoff: f64,
    pub rules: Vec<ConcurrencyRule>,
    /// Shares by class, highest class first ([`Class::ALL`]).
    pub shares: [f64; 4],
    pub clusters: Option<Vec<String>>,
    pub mode: Mode,
    pub status: u16,
    pub grpc_status: u32,
    pub stale_ns: u64,
}

impl ConcurrencyConfig {
    /// Parses and validates.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        crate::config::parse_json::<ConcurrencyJson>(bytes)?.validate()
    }

    /// The share of the limit `class` may fill. Without classification rules every request is
    /// `normal` and priorities mean nothing: it may fill the whole limit.
    pub fn share(&self, class: Class) -> f64 {
        if self.rules.is_empty() {
            return 1.0;
        }
        self.shares.get(class.index()).copied().unwrap_or(1.0)
    }

    /// Whether the stage limits `cluster`.
    pub fn limits(&self, cluster: &str) -> bool {
        self.clusters.as_ref().map_or(true, |c| c.iter().any(|n| n == cluster))
    }
}

impl ConcurrencyJson {
    /// Checks every field.
    pub fn validate(self) -> Result<ConcurrencyConfig, ConfigError> {
        let min = self.limit.min.unwrap_or(1);
        let max = self.limit.max.unwrap_or(1000);
        if min == 0 {
            return Err(ConfigError::new("limit.min", "is 0", "use 1 or more (default 1)"));
        }
        if !(1..=100_000).contains(&max) || max < min {
            return Err(ConfigError::new(
                "limit.max",
                format!("{max} is outside limit.min..=100000"),
                "use a maximum of at least limit.min and at most 100000 (default 1000)",
            ));
        }
        let initial = self.limit.initial.unwrap_or(20).clamp(min, max);
        let tolerance = self.latency.tolerance.unwrap_or(2.0);
        if !(1.0..=100.0).contains(&tolerance) {
            return Err(ConfigError::new(
                "latency.tolerance",
                format!("{} is outside [1, 100]", crate::config::number_text(tolerance)),
                "use a factor such as 2 (the default): the latency may double before the limit backs off",
            ));
        }
        let target_ns = match &self.latency.target {
            None => None,
            Some(t) => Some(duration("latency.target", Some(t), 0, false)?),
        };
        let backoff = self.backoff.unwrap_or(0.9);
        if !(0.5..1.0).contains(&backoff) {
            return Err(ConfigError::new(
                "backoff",
                format!("{} is outside [0.5, 1)", crate::config::number_text(backoff)),
                "use a factor such as 0.9 (the default)",
            ));
        }
        let mut rules = Vec::with_capacity(self.classes.len());
        for (i, r) in self.classes.into_iter().enumerate() {
            let at = |f: &str| format!("classes[{i}].{f}");
            rules.push(ConcurrencyRule { class: r.class, matcher: validate_match(r.matcher, &at)? });
        }
        let s = &self.shares;
        let given = [(s.critical, 1.0), (s.high, 0.9), (s.normal, 0.75), (s.low, 0.5)];
        let mut shares = [1.0; 4];
        for (i, ((v, default), class)) in given.iter().zip(Class::ALL).enumerate() {
            let v = v.unwrap_or(*default);
            if !(v > 0.0 && v <= 1.0) {
                return Err(ConfigError::new(
                    format!("shares.{}", class.name()),
                    format!("{} is outside (0, 1]", crate::config::number_text(v)),
                    "give each class a share of the limit between 0 (exclusive) and 1",
                ));
            }
            shares[i] = v;
        }
        if shares.windows(2).any(|w| w[0] < w[1]) {
            return Err(ConfigError::new(
                "shares",
                "a lower class has a larger share than a higher one",
                "order the shares critical ≥ high ≥ normal ≥ low, so that lower classes are refused first",
            ));
        }
        if let Some(c) = &self.clusters {
            if c.is_empty() {
                return Err(ConfigError::new("clusters", "is empty", "list clusters, or leave it out to limit all"));
            }
        }
        let status = crate::config::refusal_status("status", self.status.unwrap_or(503), "use 503 (the default)")?;
        let grpc_status = crate::config::grpc_status("grpc_status", self.grpc_status.unwrap_or(8))?;
        Ok(ConcurrencyConfig {
            initial,
            min,
            max,
            target_ns,
            tolerance,
            window_ns: duration("window", self.window.as_deref(), 1_000_000_000, false)?,
            backoff,
            rules,
            shares,
            clusters: self.clusters,
            mode: self.mode,
            status,
            grpc_status,
            stale_ns: duration("stale_after", self.stale_after.as_deref(), 300_000_000_000, false)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let c = ConcurrencyConfig::from_json(b"{}").unwrap();
        assert_eq!((c.initial, c.min, c.max, c.window_ns), (20, 1, 1000, 1_000_000_000));
        assert_eq!(c.shares, [1.0, 0.9, 0.75, 0.5]);
        assert_eq!((c.status, c.grpc_status), (503, 8));
        let clamped = ConcurrencyConfig::from_json(br#"{"limit": {"initial": 500, "min": 2, "max": 10}}"#).unwrap();
        assert_eq!(clamped.initial, 10);
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"limit": {"min": 0}}"#, "limit.min"),
            (br#"{"limit": {"min": 10, "max": 5}}"#, "limit.max"),
            (br#"{"backoff": 1}"#, "backoff"),
            (br#"{"shares": {"low": 0.95}}"#, "shares"),
            (br#"{"shares": {"high": 0}}"#, "shares.high"),
            (
                br#"{"classes": [{"class": "low", "match": {"path_prefix": "/a", "path_exact": "/b"}}]}"#,
                "classes[0].match",
            ),
        ];
        for (json, field) in cases {
            let err = ConcurrencyConfig::from_json(json).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(!err.fix.is_empty());
        }
        let unknown = ConcurrencyConfig::from_json(br#"{"classes": [{"class": "urgent"}]}"#).unwrap_err();
        assert!(unknown.to_string().contains("urgent"), "{unknown}");
    }
}
