//! The circuit breaker's plugin configuration. Every block is optional; per-cluster overrides
//! replace individual fields of the global settings.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::policy::{FailurePolicy, Policy, RatioPolicy, SlowPolicy, MAX_PROBES};
use crate::config::{duration, ConfigError};

/// Trip on the failure ratio over a sliding window.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct RatioJson {
    /// Failure ratio that trips the circuit, in (0, 1].
    #[cfg_attr(feature = "schema", schemars(range(max = 1.0), extend("exclusiveMinimum" = 0)))]
    threshold: f64,
    /// Requests in the window before the ratio counts.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 20), range(min = 1)))]
    #[serde(default)]
    min_requests: Option<u32>,
    /// The sliding window.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "10s"), pattern(crate::schema::DURATION)))]
    #[serde(default)]
    window: Option<String>,
}

/// Slow calls: calls the upstream answered, but later than `after`, measured from the request to
/// the response headers; their share of a sliding window trips a circuit (the breaker) or
/// ejects an upstream (passive health).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub(crate) struct SlowJson {
    /// A call whose response headers come later than this after the request is slow.
    #[cfg_attr(feature = "schema", schemars(pattern(crate::schema::DURATION)))]
    after: String,
    /// Share of slow calls that trips the circuit (or ejects the upstream), in (0, 1].
    #[cfg_attr(feature = "schema", schemars(extend("default" = 0.5), range(max = 1.0), extend("exclusiveMinimum" = 0)))]
    #[serde(default)]
    threshold: Option<f64>,
    /// Calls in the window before the share counts.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 10), range(min = 1)))]
    #[serde(default)]
    min_requests: Option<u32>,
    /// The sliding window; the breaker keeps one, so there with `ratio` set this is `ratio.window`.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "10s"), pattern(crate::schema::DURATION)))]
    #[serde(default)]
    window: Option<String>,
}

/// What counts as a failure, and how many trip the circuit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct FailureJson {
    /// Statuses that count as failures (besides the response flags that say the upstream
    /// failed: UF, UT, UC, UR, UH, UO, URX, UPE, UMSDR).
    #[cfg_attr(
        feature = "schema",
        schemars(extend("default" = [500, 502, 503, 504]), inner(range(min = 100, max = 599)))
    )]
    #[serde(default)]
    statuses: Option<Vec<u16>>,
    /// Consecutive failures that trip the circuit (default 5; unset when only `ratio` is given).
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    #[serde(default)]
    consecutive: Option<u32>,
    /// Trip on the failure ratio over a sliding window (default: off).
    #[serde(default)]
    ratio: Option<RatioJson>,
    /// Trip on the share of slow calls over a sliding window (default: off).
    #[serde(default)]
    slow: Option<SlowJson>,
}

/// How long a circuit stays open: `base × multiplier^(trips since the last close)`, at most
/// `max`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct OpenJson {
    /// Open time after the first trip.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "5s"), pattern(crate::schema::DURATION)))]
    #[serde(default)]
    base: Option<String>,
    /// Longest open time: at least `base` (checked by the filter only); default 60s, or `base`
    /// when that is longer.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "60s"), pattern(crate::schema::DURATION)))]
    #[serde(default)]
    max: Option<String>,
    /// Growth of the open time per re-trip (1–100).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 2), range(min = 1.0, max = 100.0)))]
    #[serde(default)]
    multiplier: Option<f64>,
}

/// Probing after the open time.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct HalfOpenJson {
    /// Probes in flight at once across all workers (1–64).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 3), range(min = 1, max = 64)))]
    #[serde(default)]
    max_probes: Option<u32>,
    /// Probe successes that close the circuit; any probe failure re-opens it.
    #[cfg_attr(feature = "schema", schemars(extend("default" = 3), range(min = 1)))]
    #[serde(default)]
    successes_to_close: Option<u32>,
    /// A probe that has not reported back by then frees its slot.
    #[cfg_attr(feature = "schema", schemars(extend("default" = "30s"), pattern(crate::schema::DURATION)))]
    #[serde(default)]
    probe_timeout: Option<String>,
}

/// The settings of one breaker.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct PolicyJson {
    /// What counts as a failure, and how many trip the circuit.
    #[serde(default)]
    failure: FailureJson,
    /// How long a circuit stays open.
    #[serde(default)]
    open: OpenJson,
    /// Probing after the open time.
    #[serde(default)]
    half_open: HalfOpenJson,
}

/// # circuit_breaker
///
/// The circuit breaker's plugin configuration (also the `circuit_breaker` section of
/// upstream_guard.wasm's). One breaker per upstream cluster (optionally per cluster and header
/// value), shared by every worker. Every block is optional.
// The global policy's blocks are fields of their own rather than a flattened `PolicyJson`:
// flattening buffers the object and loses the path of an error inside it (`failure.consecutive`
// would read `.`), and costs its own code in the modules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BreakerJson {
    /// What counts as a failure, and how many trip the circuit.
    #[serde(default)]
    failure: FailureJson,
    /// How long a circuit stays open.
    #[serde(default)]
    open: OpenJson,
    /// Probing after the open time.
    #[serde(default)]
    half_open: HalfOpenJson,
    /// Per-cluster overrides of `failure`, `open` and `half_open`, field by field: a field left
    /// out takes the top-level value, not the default shown.
    #[cfg_attr(feature = "schema", schemars(extend("default" = {})))]
    #[serde(default)]
    clusters: BTreeMap<String, PolicyJson>,
    /// HTTP status of the refusal while open (400–599).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 503), range(min = 400, max = 599)))]
    #[serde(default)]
    status: Option<u16>,
    /// One breaker per (cluster, value of this request header) instead of per cluster.
    #[cfg_attr(feature = "schema", schemars(pattern(crate::schema::HEADER_NAME)))]
    #[serde(default)]
    key_header: Option<String>,
    /// With `key_header`: header values are hashed into this many slots per cluster (1–1000000).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 1024), range(min = 1, max = 1000000)))]
    #[serde(default)]
    max_keys: Option<u32>,
    /// Where the routed cluster is read when Envoy has not resolved the route yet (a
    /// `cluster_header` route whose header an earlier filter, such as the health router, set).
    #[cfg_attr(feature = "schema", schemars(extend("default" = "x-upstream-cluster"), pattern(crate::schema::HEADER_NAME)))]
    #[serde(default)]
    cluster_header: Option<String>,
    /// gRPC status of the refusal of a gRPC request (0–16; 14 is UNAVAILABLE).
    #[cfg_attr(feature = "schema", schemars(extend("default" = 14), range(max = 16)))]
    #[serde(default)]
    grpc_status: Option<u32>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    default: Policy,
    clusters: BTreeMap<String, Policy>,
    /// Status of the refusal.
    pub status: u16,
    /// One breaker per (cluster, value of this header) when set.
    pub key_header: Option<String>,
    /// Bound on the header values tracked per cluster (hashed into this many slots).
    pub max_keys: u32,
    /// Where the routed cluster is read when Envoy has not resolved the route yet (a
    /// `cluster_header` route whose header an earlier filter, such as the health router, just set).
    pub cluster_header: String,
    /// gRPC status of the refusal of a gRPC request (default 14, UNAVAILABLE).
    pub grpc_status: u32,
}

impl BreakerConfig {
    /// Parses and validates.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        crate::config::parse_json::<BreakerJson>(bytes)?.validate()
    }

    /// The policy for `cluster`.
    pub fn policy(&self, cluster: &str) -> &Policy {
        self.clusters.get(cluster).unwrap_or(&self.default)
    }

    /// The policy for clusters without an override.
    pub fn default_policy(&self) -> &Policy {
        &self.default
    }
}

fn resolve(prefix: &str, over: &PolicyJson, base: &PolicyJson) -> Result<Policy, ConfigError> {
    let f = |name: &str| format!("{prefix}{name}");
    let statuses = over
        .failure
        .statuses
        .clone()
        .or_else(|| base.failure.statuses.clone())
        .unwrap_or_else(|| vec![500, 502, 503, 504]);
    crate::config::statuses(&f("failure.statuses"), &statuses)?;
    let ratio_json = over.failure.ratio.clone().or_else(|| base.failure.ratio.clone());
    let consecutive =
        over.failure.consecutive.or(base.failure.consecutive).or(if ratio_json.is_none() { Some(5) } else { None });
    if consecutive == Some(0) {
        return Err(ConfigError::new(
            f("failure.consecutive"),
            "is 0",
            "use 1 or more consecutive failures (default 5)",
        ));
    }
    let ratio = match ratio_json {
        None => None,
        Some(r) => {
            if !(r.threshold > 0.0 && r.threshold <= 1.0) {
                return Err(ConfigError::new(
                    f("failure.ratio.threshold"),
                    format!("{} is outside (0, 1]", crate::config::number_text(r.threshold)),
                    "use a failure ratio such as 0.5",
                ));
            }
            let min_requests = r.min_requests.unwrap_or(20);
            if min_requests == 0 {
                return Err(ConfigError::new(f("failure.ratio.min_requests"), "is 0", "use 1 or more (default 20)"));
            }
            Some(RatioPolicy {
                threshold: r.threshold,
                min_requests,
                window_ns: duration(&f("failure.ratio.window"), r.window.as_deref(), 10_000_000_000, false)?,
            })
        }
    };
    let slow = match over.failure.slow.clone().or_else(|| base.failure.slow.clone()) {
        None => None,
        Some(sj) => Some(slow_policy(&f, &sj, ratio.as_ref())?),
    };
    let pick = |o: &Option<String>, b: &Option<String>| o.clone().or_else(|| b.clone());
    let open_base_ns =
        duration(&f("open.base"), pick(&over.open.base, &base.open.base).as_deref(), 5_000_000_000, false)?;
    let open_max_ns = duration(
        &f("open.max"),
        pick(&over.open.max, &base.open.max).as_deref(),
        open_base_ns.max(60_000_000_000),
        false,
    )?;
    if open_max_ns < open_base_ns {
        return Err(ConfigError::new(f("open.max"), "is shorter than open.base", "make open.max at least open.base"));
    }
    let multiplier = over.open.multiplier.or(base.open.multiplier).unwrap_or(2.0);
    if !(1.0..=100.0).contains(&multiplier) {
        return Err(ConfigError::new(
            f("open.multiplier"),
            format!("{} is outside [1, 100]", crate::config::number_text(multiplier)),
            "use 1 (constant open time) to 100; default 2",
        ));
    }
    let max_probes = over.half_open.max_probes.or(base.half_open.max_probes).unwrap_or(3);
    if !(1..=MAX_PROBES as u32).contains(&max_probes) {
        return Err(ConfigError::new(
            f("half_open.max_probes"),
            format!("{max_probes} is outside 1..=64"),
            "allow 1 to 64 concurrent probes (default 3)",
        ));
    }
    let successes_to_close = over.half_open.successes_to_close.or(base.half_open.successes_to_close).unwrap_or(3);
    if successes_to_close == 0 {
        return Err(ConfigError::new(f("half_open.successes_to_close"), "is 0", "use 1 or more (default 3)"));
    }
    let probe_timeout_ns = duration(
        &f("half_open.probe_timeout"),
        pick(&over.half_open.probe_timeout, &base.half_open.probe_timeout).as_deref(),
        30_000_000_000,
        false,
    )?;
    Ok(Policy {
        failure: FailurePolicy { statuses, consecutive, ratio, slow },
        open_base_ns,
        open_max_ns,
        multiplier,
        max_probes,
        successes_to_close,
        probe_timeout_ns,
    })
}

/// Validates `failure.slow`; `ratio` is the failure ratio's policy, whose window it shares.
pub(crate) fn slow_policy(
    f: &dyn Fn(&str) -> String,
    s: &SlowJson,
    ratio: Option<&RatioPolicy>,
) -> Result<SlowPolicy, ConfigError> {
    let after_ns = duration(&f("failure.slow.after"), Some(&s.after), 0, false)?;
    let threshold = s.threshold.unwrap_or(0.5);
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(ConfigError::new(
            f("failure.slow.threshold"),
            format!("{} is outside (0, 1]", crate::config::number_text(threshold)),
            "use a share of slow calls such as 0.5 (the default)",
        ));
    }
    let min_requests = s.min_requests.unwrap_or(10);
    if min_requests == 0 {
        return Err(ConfigError::new(f("failure.slow.min_requests"), "is 0", "use 1 or more (default 10)"));
    }
    let default_window = ratio.map_or(10_000_000_000, |r| r.window_ns);
    let window_ns = duration(&f("failure.slow.window"), s.window.as_deref(), default_window, false)?;
    if ratio.is_some_and(|r| r.window_ns != window_ns) {
        return Err(ConfigError::new(
            f("failure.slow.window"),
            "differs from failure.ratio.window",
            "leave failure.slow.window out (it then is failure.ratio.window) or give both the same duration: \
             the breaker keeps one sliding window",
        ));
    }
    Ok(SlowPolicy { after_ns, threshold, min_requests, window_ns })
}

impl BreakerJson {
    /// Checks every field and resolves per-cluster overrides.
    pub fn validate(self) -> Result<BreakerConfig, ConfigError> {
        let global = PolicyJson { failure: self.failure, open: self.open, half_open: self.half_open };
        let default = resolve("", &global, &PolicyJson::default())?;
        let mut clusters = BTreeMap::new();
        for (name, over) in &self.clusters {
            clusters.insert(name.clone(), resolve(&format!("clusters.{name}."), over, &global)?);
        }
        let status = crate::config::refusal_status("status", self.status.unwrap_or(503), "use 503 (the default)")?;
        if let Some(h) = &self.key_header {
            crate::config::header_name("key_header", h)?;
        }
        let max_keys = self.max_keys.unwrap_or(1024);
        if !(1..=1_000_000).contains(&max_keys) {
            return Err(ConfigError::new(
                "max_keys",
                format!("{max_keys} is out of range"),
                "use 1 to 1000000 (default 1024)",
            ));
        }
        let cluster_header = self.cluster_header.unwrap_or_else(|| "x-upstream-cluster".into());
        crate::config::header_name("cluster_header", &cluster_header)?;
        let grpc_status = crate::config::grpc_status("grpc_status", self.grpc_status.unwrap_or(14))?;
        Ok(BreakerConfig {
            default,
            clusters,
            status,
            key_header: self.key_header,
            max_keys,
            cluster_header,
            grpc_status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{Flag, Observation, ResponseFlags};

    const EXAMPLE: &str = r#"{"failure": {"statuses": [500, 502, 503, 504], "consecutive": 5,
                   "ratio": {"threshold": 0.5, "min_requests": 20, "window": "10s"}},
       "open": {"base": "5s", "max": "60s", "multiplier": 2},
       "half_open": {"max_probes": 3, "successes_to_close": 3},
       "clusters": {"payments": {"failure": {"consecutive": 2}}}}"#;

    #[test]
    fn the_documented_example_resolves_overrides_field_by_field() {
        let c = BreakerConfig::from_json(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(c.policy("other").failure.consecutive, Some(5));
        let pay = c.policy("payments");
        assert_eq!(pay.failure.consecutive, Some(2));
        assert_eq!(pay.failure.ratio.as_ref().unwrap().min_requests, 20, "the rest is inherited");
        assert_eq!(pay.open_base_ns, 5_000_000_000);
    }

    #[test]
    fn a_single_block_is_enough() {
        let c = BreakerConfig::from_json(br#"{"failure": {"consecutive": 5}}"#).unwrap();
        let p = c.default_policy();
        assert_eq!(
            (p.open_base_ns, p.open_max_ns, p.max_probes, p.successes_to_close),
            (5_000_000_000, 60_000_000_000, 3, 3)
        );
        assert_eq!(BreakerConfig::from_json(b"{}").unwrap().default_policy().failure.consecutive, Some(5));
    }

    #[test]
    fn open_time_grows_by_the_multiplier_up_to_max() {
        let c = BreakerConfig::from_json(br#"{"open": {"base": "1s", "max": "10s", "multiplier": 3}}"#).unwrap();
        let p = c.default_policy();
        let secs: Vec<u64> = (0..5).map(|t| p.open_time_ns(t) / 1_000_000_000).collect();
        assert_eq!(secs, [1, 3, 9, 10, 10]);
        assert_eq!(p.open_time_ns(u32::MAX), 10_000_000_000);
    }

    fn obs(status: u16, flags: u64, details: &str) -> Observation<'_> {
        Observation {
            status: Some(status),
            flags: ResponseFlags(flags),
            details,
            transport_failure: "",
            grpc_status: None,
        }
    }

    #[test]
    fn classification_counts_upstream_failures_only() {
        let p = BreakerConfig::from_json(b"{}").unwrap().default_policy().clone();
        assert!(p.is_failure(&obs(503, 0, "via_upstream")));
        assert!(!p.is_failure(&obs(404, 0, "via_upstream")));
        assert!(p.is_failure(&obs(503, Flag::UpstreamConnectionFailure.bit(), "")));
        assert!(p.is_failure(&obs(504, Flag::UpstreamRequestTimeout.bit(), "")));
        assert!(p.is_failure(&obs(502, Flag::UpstreamProtocolError.bit(), "")));
        assert!(!p.is_failure(&obs(400, Flag::DownstreamProtocolError.bit(), "")), "the client's fault");
        assert!(!p.is_failure(&obs(404, Flag::NoRouteFound.bit(), "route_not_found")));
        assert!(!p.is_failure(&obs(503, 0, crate::details::CIRCUIT_OPEN)), "our own replies never count");
        assert!(!p.is_failure(&obs(429, 0, crate::details::RATE_LIMITED)));
    }

    #[test]
    fn invalid_thresholds_name_the_field() {
        for (json, field) in [
            (r#"{"failure": {"ratio": {"threshold": 1.5}}}"#, "failure.ratio.threshold"),
            (r#"{"failure": {"ratio": {"threshold": 0}}}"#, "failure.ratio.threshold"),
            (r#"{"half_open": {"max_probes": 0}}"#, "half_open.max_probes"),
            (r#"{"open": {"base": "10s", "max": "5s"}}"#, "open.max"),
            (r#"{"open": {"base": "soon"}}"#, "open.base"),
            (r#"{"open": {"multiplier": 0.5}}"#, "open.multiplier"),
            (r#"{"failure": {"consecutive": 0}}"#, "failure.consecutive"),
            (r#"{"failure": {"statuses": [999]}}"#, "failure.statuses"),
            (
                r#"{"clusters": {"pay": {"half_open": {"successes_to_close": 0}}}}"#,
                "clusters.pay.half_open.successes_to_close",
            ),
            (r#"{"status": 200}"#, "status"),
        ] {
            let e = BreakerConfig::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    #[test]
    fn unknown_fields_and_wrong_types_in_the_global_blocks_name_their_path() {
        let e = BreakerConfig::from_json(br#"{"failur": {}}"#).unwrap_err();
        assert_eq!(e.field, "failur", "{e}");
        assert!(e.problem.starts_with("unknown field `failur`, expected one of `failure`, `open`"), "{e}");
        for (json, field) in [
            (r#"{"failure": {"consecutive": "x"}}"#, "failure.consecutive"),
            (r#"{"failure": {"ratio": {"threshold": 0.5, "min_requests": -1}}}"#, "failure.ratio.min_requests"),
            (r#"{"failure": {"statuses": [500, 70000]}}"#, "failure.statuses[1]"),
            (r#"{"open": {"multiplier": "2"}}"#, "open.multiplier"),
            (r#"{"half_open": {"probes": 2}}"#, "half_open.probes"),
            (r#"{"failure": {"ratio": {}}}"#, "failure.ratio"),
        ] {
            let e = BreakerConfig::from_json(json.as_bytes()).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    #[test]
    fn slow_calls_are_validated_and_share_the_ratio_window() {
        let ok = BreakerConfig::from_json(br#"{"failure": {"slow": {"after": "2s"}}}"#).unwrap();
        let slow = ok.default_policy().failure.slow.clone().unwrap();
        assert_eq!(
            (slow.after_ns, slow.threshold, slow.min_requests, slow.window_ns),
            (2_000_000_000, 0.5, 10, 10_000_000_000)
        );
        let shared = BreakerConfig::from_json(
            br#"{"failure": {"ratio": {"threshold": 0.5, "window": "30s"}, "slow": {"after": "2s"}}}"#,
        )
        .unwrap();
        assert_eq!(shared.default_policy().failure.slow.as_ref().map(|s| s.window_ns), Some(30_000_000_000));
        let err = BreakerConfig::from_json(
            br#"{"failure": {"ratio": {"threshold": 0.5, "window": "30s"}, "slow": {"after": "2s", "window": "5s"}}}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "failure.slow.window");
        assert!(err.fix.contains("one sliding window"), "{err}");
        let err = BreakerConfig::from_json(br#"{"failure": {"slow": {"after": "2s", "threshold": 0}}}"#).unwrap_err();
        assert_eq!(err.field, "failure.slow.threshold");
        let err = BreakerConfig::from_json(br#"{"failure": {"slow": {}}}"#).unwrap_err();
        assert!(err.to_string().contains("after"), "{err}");
        let per_cluster =
            BreakerConfig::from_json(br#"{"clusters": {"payments": {"failure": {"slow": {"after": "300ms"}}}}}"#)
                .unwrap();
        assert_eq!(per_cluster.policy("payments").failure.slow.as_ref().map(|s| s.after_ns), Some(300_000_000));
        assert!(per_cluster.policy("other").failure.slow.is_none());
    }
}
