//! The health router's plugin configuration.

use serde::Deserialize;

use crate::config::{duration, statuses, ConfigError};
use crate::peer::Trust;

/// How requests are spread over healthy upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The first healthy upstream in configured order.
    #[default]
    Failover,
    /// Each healthy upstream in turn.
    RoundRobin,
    /// Healthy upstreams in proportion to their `weight`.
    Weighted,
}

/// What to do when no upstream is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum NoneHealthy {
    /// 503 at once, with every upstream's reason.
    #[default]
    FailFast,
    /// Route to the first configured upstream anyway (like Envoy's panic threshold).
    Panic,
}

// Also the LLM stage's providers' checks.
/// Active checks: `GET` callouts on the tick, sent by one worker at a time.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub(crate) struct HealthCheckJson {
    /// The path checked with `GET`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "/healthz"), pattern(crate::schema::PATH)))]
    #[serde(default)]
    path: Option<String>,
    /// `:authority` of the check (default: the cluster name).
    #[serde(default)]
    authority: Option<String>,
    /// Statuses that pass (default: any 2xx).
    #[cfg_attr(feature = "schema", schemars(inner(range(min = 100, max = 599))))]
    #[serde(default)]
    expected_statuses: Option<Vec<u16>>,
    /// Time between checks.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "1s"), pattern(crate::schema::DURATION)))]
    #[serde(default)]
    interval: Option<String>,
    /// A check not answered by then fails.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "250ms"), pattern(crate::schema::DURATION)))]
    #[serde(default)]
    timeout: Option<String>,
    /// A fixed per-upstream offset in `[0, jitter)` added to the interval, so that checks of
    /// several upstreams spread out.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "0s"), pattern(crate::schema::DURATION_OR_ZERO)))]
    #[serde(default)]
    jitter: Option<String>,
    /// Failed checks in a row that mark the upstream unhealthy.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 2), range(min = 1)))]
    #[serde(default)]
    unhealthy_threshold: Option<u32>,
    /// Passed checks in a row that bring it back.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 2), range(min = 1)))]
    #[serde(default)]
    healthy_threshold: Option<u32>,
}

/// One upstream cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct UpstreamJson {
    /// An Envoy cluster (printable ASCII without spaces; each listed once, checked by the filter
    /// only).
    #[cfg_attr(feature = "schema", schemars(pattern(r"^[!-~]+$")))]
    cluster: String,
    /// Share of traffic under `strategy: weighted`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 1), range(min = 1)))]
    #[serde(default)]
    weight: Option<u32>,
    /// Active checks; without them only passive detection applies.
    #[serde(default)]
    health_check: Option<HealthCheckJson>,
}

// Also the LLM stage's (with its own defaults).
/// Passive detection: failed responses in a row eject the upstream at once.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub(crate) struct PassiveJson {
    /// Failed responses in a row (a status in `statuses`, or UF/UT/UC/UR/UH) that eject the
    /// upstream.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 5), range(min = 1)))]
    #[serde(default)]
    consecutive_failures: Option<u32>,
    /// How long an ejected upstream stays out.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "10s"), pattern(crate::schema::DURATION)))]
    #[serde(default)]
    ejection: Option<String>,
    /// Statuses that count as failures.
    #[cfg_attr(
        feature = "schema",
        schemars(extend("default" = [500, 502, 503, 504]), inner(range(min = 100, max = 599)))
    )]
    #[serde(default)]
    statuses: Option<Vec<u16>>,
    /// Eject the upstream when slow calls reach a share of a sliding window (default: off).
    #[serde(default)]
    slow: Option<crate::breaker::config::SlowJson>,
}

/// A per-path upstream list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct RouteJson {
    /// Requests whose path starts with this use `upstreams`.
    path_prefix: String,
    /// Clusters named in `upstreams` (checked by the filter only), in preference order.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    upstreams: Vec<String>,
}

/// # health_router
///
/// The health router's plugin configuration (also the `health_router` section of
/// upstream_guard.wasm's). Routes each request to a healthy upstream cluster by setting
/// `route_header`, which the route's `cluster_header` reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HealthJson {
    /// The Envoy clusters to route to, in failover order.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    upstreams: Vec<UpstreamJson>,
    /// `failover` (first available in configured order), `round_robin` or `weighted`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "failover")))]
    #[serde(default)]
    strategy: Strategy,
    /// The header the route's `cluster_header` reads; always overwritten, so clients cannot pick
    /// the upstream.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "x-upstream-cluster"), pattern(crate::schema::HEADER_NAME)))]
    #[serde(default)]
    route_header: Option<String>,
    /// Passive detection (default: off).
    #[serde(default)]
    passive: Option<PassiveJson>,
    /// `fail_fast`: a 503 at once with every upstream's reason; `panic`: the configured order
    /// anyway.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "fail_fast")))]
    #[serde(default)]
    when_none_healthy: NoneHealthy,
    /// A path answered with every upstream's health as JSON, to `trusted_cidrs` only.
    #[cfg_attr(feature = "schema", schemars(pattern(crate::schema::PATH)))]
    #[serde(default)]
    status_path: Option<String>,
    /// Client address blocks that may read `status_path`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = []), inner(pattern(crate::schema::CIDR))))]
    #[serde(default)]
    pub(crate) trusted_cidrs: Vec<String>,
    /// Also trust client addresses Envoy took from `x-forwarded-for`: only safe behind a proxy
    /// that overwrites that header.
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    #[serde(default)]
    pub(crate) trust_x_forwarded_for: bool,
    /// Per-path upstream lists; the first match picks the list, otherwise every upstream.
    #[cfg_attr(feature = "schema", schemars(extend("default" = [])))]
    #[serde(default)]
    routes: Vec<RouteJson>,
    /// HTTP status of the fail-fast refusal when no upstream is available (400–599), as the
    /// other stages' `status`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 503), range(min = 400, max = 599)))]
    #[serde(default)]
    status: Option<u16>,
    /// gRPC status of the fail-fast refusal of a gRPC request (0–16; 14 is UNAVAILABLE).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 14), range(max = 16)))]
    #[serde(default)]
    grpc_status: Option<u32>,
}

/// A validated active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub authority: String,
    /// Empty means any 2xx.
    pub expected_statuses: Vec<u16>,
    pub interval_ns: u64,
    pub timeout_ns: u64,
    pub jitter_ns: u64,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/healthz".into(),
            authority: String::new(),
            expected_statuses: Vec::new(),
            interval_ns: 1_000_000_000,
            timeout_ns: 250_000_000,
            jitter_ns: 0,
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        }
    }
}

impl HealthCheck {
    /// Whether a check sent at `sent_at` may still be answered at `now`. Envoy answers every
    /// callout (at the latest when its timeout fires); one unanswered after twice its timeout and a
    /// second more is forgotten, so a lost answer can never stop an upstream from being checked.
    pub fn outstanding(check: Option<&HealthCheck>, sent_at: u64, now: u64) -> bool {
        let timeout = check.map_or(0, |h| h.timeout_ns);
        now.saturating_sub(sent_at) < timeout.saturating_mul(2).saturating_add(1_000_000_000)
    }

    /// This upstream's fixed offset in `[0, jitter)`, derived from its name: checks of several
    /// upstreams spread out without any randomness (every worker computes the same offset).
    pub fn jitter_for(&self, cluster: &str) -> u64 {
        if self.jitter_ns == 0 {
            0
        } else {
            crate::hash::hash64(b"jitter", cluster.as_bytes()) % self.jitter_ns
        }
    }

    /// True when `status` counts as passing.
    pub fn expects(&self, status: u16) -> bool {
        if self.expected_statuses.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expected_statuses.contains(&status)
        }
    }
}

/// Passive failure detection.
#[derive(Debug, Clone, PartialEq)]
pub struct Passive {
    pub consecutive_failures: u32,
    pub ejection_ns: u64,
    pub statuses: Vec<u16>,
    /// Slow-call ejection (`None`: off).
    pub slow: Option<crate::breaker::SlowPolicy>,
}

impl Default for Passive {
    fn default() -> Self {
        Passive { consecutive_failures: 5, ejection_ns: 10_000_000_000, statuses: vec![500, 502, 503, 504], slow: None }
    }
}

/// One configured upstream cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub cluster: String,
    pub weight: u32,
    pub health_check: Option<HealthCheck>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub upstreams: Vec<Upstream>,
    pub strategy: Strategy,
    pub route_header: String,
    pub passive: Option<Passive>,
    pub when_none_healthy: NoneHealthy,
    pub status_path: Option<String>,
    /// Who may read the status endpoint.
    pub trust: Trust,
    /// HTTP status of the fail-fast refusal (default 503).
    pub status: u16,
    /// gRPC status of the fail-fast refusal of a gRPC request (default 14, UNAVAILABLE).
    pub grpc_status: u32,
    /// (path prefix, upstream indexes), first match wins; no match means every upstream.
    pub routes: Vec<(String, Vec<usize>)>,
}

impl HealthConfig {
    /// Parses and validates.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        crate::config::parse_json::<HealthJson>(bytes)?.validate()
    }

    /// The upstream indexes a request path may use, in configured order.
    pub fn upstreams_for(&self, path: &str) -> Vec<usize> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, ups)| ups.clone())
            .unwrap_or_else(|| (0..self.upstreams.len()).collect())
    }

    /// How long the prober lease lasts without renewal: five ticks, at least one second, so a
    /// worker that stops ticking (busy, or gone after a reload) hands probing over quickly but a
    /// slow tick never makes two workers probe at once.
    pub fn lease_ttl_ns(&self) -> u64 {
        self.tick_ns().saturating_mul(5).max(1_000_000_000)
    }

    /// Tick period: fine enough to start checks close to their interval.
    pub fn tick_ns(&self) -> u64 {
        let min = self.upstreams.iter().filter_map(|u| u.health_check.as_ref()).map(|h| h.interval_ns).min();
        (min.unwrap_or(1_000_000_000) / 5).clamp(20_000_000, 200_000_000)
    }
}

/// A cluster name field: printable ASCII without spaces.
pub(crate) fn cluster_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || !name.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return Err(ConfigError::new(field, format!("{name:?} is not a cluster name"), "name an Envoy cluster"));
    }
    Ok(())
}

/// Validates an active check of `cluster`; `field` is the check's own path
/// (`upstreams[0].health_check`).
pub(crate) fn validate_check(field: &str, cluster: &str, h: HealthCheckJson) -> Result<HealthCheck, ConfigError> {
    let at = |f: &str| format!("{field}.{f}");
    let d = HealthCheck::default();
    let path = h.path.unwrap_or(d.path);
    if !path.starts_with('/') {
        return Err(ConfigError::new(
            at("path"),
            format!("{path:?} does not start with /"),
            "use a path such as \"/healthz\"",
        ));
    }
    let expected = h.expected_statuses.unwrap_or_default();
    statuses(&at("expected_statuses"), &expected)?;
    let interval_ns = duration(&at("interval"), h.interval.as_deref(), d.interval_ns, false)?;
    let timeout_ns = duration(&at("timeout"), h.timeout.as_deref(), d.timeout_ns, false)?;
    let jitter_ns = duration(&at("jitter"), h.jitter.as_deref(), 0, true)?;
    let unhealthy_threshold = h.unhealthy_threshold.unwrap_or(d.unhealthy_threshold);
    let healthy_threshold = h.healthy_threshold.unwrap_or(d.healthy_threshold);
    for (name, v) in [("unhealthy_threshold", unhealthy_threshold), ("healthy_threshold", healthy_threshold)] {
        if v == 0 {
            return Err(ConfigError::new(at(name), "is 0", "use 1 or more (default 2)"));
        }
    }
    Ok(HealthCheck {
        path,
        authority: h.authority.unwrap_or_else(|| cluster.to_string()),
        expected_statuses: expected,
        interval_ns,
        timeout_ns,
        jitter_ns,
        unhealthy_threshold,
        healthy_threshold,
    })
}

/// Validates passive detection (`None`: off), filling unset fields from `defaults`.
pub(crate) fn validate_passive(
    field: &str,
    p: Option<PassiveJson>,
    defaults: Passive,
) -> Result<Option<Passive>, ConfigError> {
    let Some(p) = p else { return Ok(None) };
    let at = |f: &str| format!("{field}.{f}");
    let consecutive_failures = p.consecutive_failures.unwrap_or(defaults.consecutive_failures);
    if consecutive_failures == 0 {
        return Err(ConfigError::new(
            at("consecutive_failures"),
            "is 0",
            format!("use 1 or more (default {})", defaults.consecutive_failures),
        ));
    }
    let list = p.statuses.unwrap_or(defaults.statuses);
    statuses(&at("statuses"), &list)?;
    let slow = match &p.slow {
        None => None,
        Some(sj) => {
            let prefix = |f: &str| at(f.trim_start_matches("failure."));
            Some(crate::breaker::config::slow_policy(&prefix, sj, None)?)
        }
    };
    Ok(Some(Passive {
        consecutive_failures,
        ejection_ns: duration(&at("ejection"), p.ejection.as_deref(), defaults.ejection_ns, false)?,
        statuses: list,
        slow,
    }))
}

impl HealthJson {
    /// Checks every field.
    pub fn validate(self) -> Result<HealthConfig, ConfigError> {
        if self.upstreams.is_empty() {
            return Err(ConfigError::new(
                "upstreams",
                "is empty",
                "list the Envoy clusters to route to, in failover order",
            ));
        }
        let mut upstreams: Vec<Upstream> = Vec::new();
        for (i, u) in self.upstreams.into_iter().enumerate() {
            let at = |f: &str| format!("upstreams[{i}].{f}");
            cluster_name(&at("cluster"), &u.cluster)?;
            if upstreams.iter().any(|x| x.cluster == u.cluster) {
                return Err(ConfigError::new(
                    at("cluster"),
                    format!("{:?} is listed twice", u.cluster),
                    "list every cluster once",
                ));
            }
            let weight = u.weight.unwrap_or(1);
            if weight == 0 {
                return Err(ConfigError::new(at("weight"), "is 0", "use a positive weight, or remove the upstream"));
            }
            let health_check =
                u.health_check.map(|h| validate_check(&at("health_check"), &u.cluster, h)).transpose()?;
            upstreams.push(Upstream { cluster: u.cluster, weight, health_check });
        }
        let route_header = self.route_header.unwrap_or_else(|| "x-upstream-cluster".into());
        crate::config::header_name("route_header", &route_header)?;
        let passive = validate_passive("passive", self.passive, Passive::default())?;
        if let Some(p) = &self.status_path {
            if !p.starts_with('/') {
                return Err(ConfigError::new(
                    "status_path",
                    format!("{p:?} does not start with /"),
                    "use a path such as \"/.well-known/upstream-health\"",
                ));
            }
        }
        let trust = Trust {
            cidrs: crate::config::cidrs("trusted_cidrs", &self.trusted_cidrs)?,
            forwarded: self.trust_x_forwarded_for,
        };
        let grpc_status = crate::config::grpc_status("grpc_status", self.grpc_status.unwrap_or(14))?;
        let status = crate::config::refusal_status("status", self.status.unwrap_or(503), "use 503 (the default)")?;
        let mut routes = Vec::new();
        for (i, r) in self.routes.into_iter().enumerate() {
            let mut idx = Vec::new();
            for (j, name) in r.upstreams.iter().enumerate() {
                let k = upstreams.iter().position(|u| &u.cluster == name).ok_or_else(|| {
                    ConfigError::new(
                        format!("routes[{i}].upstreams[{j}]"),
                        format!("{name:?} is not in upstreams"),
                        "list only clusters named in upstreams",
                    )
                })?;
                idx.push(k);
            }
            if idx.is_empty() {
                return Err(ConfigError::new(
                    format!("routes[{i}].upstreams"),
                    "is empty",
                    "list at least one upstream",
                ));
            }
            routes.push((r.path_prefix, idx));
        }
        Ok(HealthConfig {
            upstreams,
            strategy: self.strategy,
            route_header,
            passive,
            when_none_healthy: self.when_none_healthy,
            status_path: self.status_path,
            trust,
            status,
            grpc_status,
            routes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"upstreams": [
         {"cluster": "primary", "health_check": {"path": "/healthz", "interval": "1s", "timeout": "250ms",
          "unhealthy_threshold": 2, "healthy_threshold": 2}},
         {"cluster": "secondary", "health_check": {"path": "/healthz", "interval": "1s", "timeout": "250ms",
          "unhealthy_threshold": 2, "healthy_threshold": 2}}],
       "strategy": "failover", "route_header": "x-upstream-cluster",
       "passive": {"consecutive_failures": 3, "ejection": "10s"},
       "when_none_healthy": "fail_fast", "status_path": "/.well-known/upstream-health",
       "trusted_cidrs": ["127.0.0.1/32"]}"#;

    #[test]
    fn the_documented_example_is_accepted() {
        let c = HealthConfig::from_json(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(c.upstreams.len(), 2);
        let hc = c.upstreams[0].health_check.as_ref().unwrap();
        assert_eq!(hc.authority, "primary", ":authority defaults to the cluster name");
        assert_eq!((hc.interval_ns, hc.timeout_ns), (1_000_000_000, 250_000_000));
        assert_eq!(c.passive.as_ref().unwrap().consecutive_failures, 3);
        assert_eq!(c.tick_ns(), 200_000_000);
        assert!(hc.expects(204) && !hc.expects(503));
    }

    #[test]
    fn per_route_upstream_lists() {
        let c = HealthConfig::from_json(
            br#"{"upstreams": [{"cluster": "a"}, {"cluster": "b"}], "routes": [{"path_prefix": "/b", "upstreams": ["b"]}]}"#,
        )
        .unwrap();
        assert_eq!(c.upstreams_for("/b/x"), [1]);
        assert_eq!(c.upstreams_for("/x"), [0, 1]);
    }

    #[test]
    fn bad_configs_name_the_field() {
        for (json, field) in [
            (r#"{"upstreams": []}"#, "upstreams"),
            (r#"{"upstreams": [{"cluster": ""}]}"#, "upstreams[0].cluster"),
            (r#"{"upstreams": [{"cluster": "a"}, {"cluster": "a"}]}"#, "upstreams[1].cluster"),
            (
                r#"{"upstreams": [{"cluster": "a", "health_check": {"interval": "often"}}]}"#,
                "upstreams[0].health_check.interval",
            ),
            (
                r#"{"upstreams": [{"cluster": "a", "health_check": {"path": "healthz"}}]}"#,
                "upstreams[0].health_check.path",
            ),
            (
                r#"{"upstreams": [{"cluster": "a", "health_check": {"healthy_threshold": 0}}]}"#,
                "upstreams[0].health_check.healthy_threshold",
            ),
            (r#"{"upstreams": [{"cluster": "a"}], "passive": {"ejection": "x"}}"#, "passive.ejection"),
            (r#"{"upstreams": [{"cluster": "a"}], "trusted_cidrs": ["x"]}"#, "trusted_cidrs[0]"),
            (r#"{"upstreams": [{"cluster": "a"}], "status": 200}"#, "status"),
            (
                r#"{"upstreams": [{"cluster": "a"}], "routes": [{"path_prefix": "/", "upstreams": ["b"]}]}"#,
                "routes[0].upstreams[0]",
            ),
            (r#"{"upstreams": [{"cluster": "a"}], "strategy": "random"}"#, "strategy"),
            (r#"{"upstreams": [{"cluster": "a"}], "when_none_healthy": "hope"}"#, "when_none_healthy"),
        ] {
            let e = HealthConfig::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    #[test]
    fn passive_slow_ejection_is_validated_with_its_own_field_names() {
        let c = HealthConfig::from_json(
            br#"{"upstreams": [{"cluster": "a"}], "passive": {"slow": {"after": "250ms", "min_requests": 5}}}"#,
        )
        .unwrap();
        let slow = c.passive.as_ref().and_then(|p| p.slow.clone()).unwrap();
        assert_eq!((slow.after_ns, slow.min_requests, slow.threshold), (250_000_000, 5, 0.5));
        let err = HealthConfig::from_json(
            br#"{"upstreams": [{"cluster": "a"}], "passive": {"slow": {"after": "1s", "threshold": 2}}}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "passive.slow.threshold");
    }
}
