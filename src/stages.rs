//! The one list of stages.
//!
//! Every tool that needs to know which stages exist reads [`STAGES`]: the build and packaging
//! tasks (which single-policy modules to build and ship), the benches (which rows to print), the
//! fuzzers and the test harness (which sections a combined configuration has), the schemas
//! (which files to write) and the manifests. Adding a stage means adding an entry here; a test
//! checks that the combined configuration's sections are exactly these.

use crate::config::ConfigError;

/// The combined module's name: `upstream_guard.wasm`, `libupstream_guard.so`.
pub const COMBINED: &str = "upstream_guard";

/// One policy stage.
#[derive(Debug, Clone, Copy)]
pub struct Stage {
    /// Its section in the combined configuration, its access-log key and, when it ships alone,
    /// its single-policy module's name (`rate_limiter` → `rate_limiter.wasm`).
    pub section: &'static str,
    /// The segment its metrics carry after `upstream_guard.` (`upstream_guard.ratelimit.…`).
    pub metrics: &'static str,
    /// Whether a single-policy module ships it alone. The llm stage does not (it routes by the
    /// request body and relies on the stages after it), nor does the concurrency stage (it limits
    /// the cluster the stages before it chose): they run only in the combined module.
    pub single: bool,
    /// Validates a configuration of this stage alone: a single module's configuration, or the
    /// combined configuration's section.
    pub check: fn(&[u8]) -> Result<(), ConfigError>,
}

/// Every stage, in pipeline order (requests pass them in this order, responses in reverse).
pub const STAGES: [Stage; 6] = [
    Stage {
        section: "diagnostics",
        metrics: "diagnosis",
        single: true,
        check: |b| crate::diagnose::DiagnosticsConfig::from_json(b).map(drop),
    },
    Stage {
        section: "rate_limiter",
        metrics: "ratelimit",
        single: true,
        check: |b| crate::ratelimit::RateLimitConfig::from_json(b).map(drop),
    },
    Stage { section: "llm", metrics: "llm", single: false, check: |b| crate::llm::LlmConfig::from_json(b).map(drop) },
    Stage {
        section: "health_router",
        metrics: "health",
        single: true,
        check: |b| crate::health::HealthConfig::from_json(b).map(drop),
    },
    Stage {
        section: "concurrency",
        metrics: "concurrency",
        single: false,
        check: |b| crate::concurrency::ConcurrencyConfig::from_json(b).map(drop),
    },
    Stage {
        section: "circuit_breaker",
        metrics: "breaker",
        single: true,
        check: |b| crate::breaker::BreakerConfig::from_json(b).map(drop),
    },
];

/// The stage whose section is `section`.
pub fn find(section: &str) -> Option<&'static Stage> {
    STAGES.iter().find(|s| s.section == section)
}

/// The stages that ship as single-policy modules, in pipeline order.
pub fn singles() -> impl Iterator<Item = &'static Stage> {
    STAGES.iter().filter(|s| s.single)
}

/// Every shipped module's name: the combined module first, then each single-policy module.
pub fn modules() -> Vec<&'static str> {
    std::iter::once(COMBINED).chain(singles().map(|s| s.section)).collect()
}

/// Validates `bytes` as module `name`'s configuration (the combined module's, or one stage's).
/// `None` when no module has that name.
pub fn check_module(name: &str, bytes: &[u8]) -> Option<Result<(), ConfigError>> {
    if name == COMBINED {
        return Some(crate::suite::SuiteConfig::from_json(bytes).map(drop));
    }
    find(name).map(|s| (s.check)(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small valid configuration of each stage.
    fn minimal(section: &str) -> &'static str {
        match section {
            "rate_limiter" => r#"{"rules": [{"name": "r", "limit": {"requests": 1, "per": "1s"}}]}"#,
            "health_router" => r#"{"upstreams": [{"cluster": "a"}]}"#,
            "llm" => r#"{"providers": [{"cluster": "p"}], "models": [{"name": "m", "providers": ["p"]}]}"#,
            _ => "{}",
        }
    }

    #[test]
    fn the_combined_configuration_has_a_section_per_stage_in_pipeline_order() {
        for stage in &STAGES {
            assert!((stage.check)(minimal(stage.section).as_bytes()).is_ok(), "{}", stage.section);
        }
        let all: Vec<String> = STAGES.iter().map(|s| format!("{:?}: {}", s.section, minimal(s.section))).collect();
        let suite = crate::suite::SuiteConfig::from_json(format!("{{{}}}", all.join(",")).as_bytes()).unwrap();
        let expected: Vec<&str> = STAGES.iter().map(|s| s.section).collect();
        assert_eq!(suite.stages(), expected);
        let unknown = crate::suite::SuiteConfig::from_json(br#"{"rate_limiters": {}}"#).unwrap_err();
        assert!(unknown.to_string().contains("rate_limiters"), "{unknown}");
    }

    #[test]
    fn modules_are_the_combined_one_and_each_single_stage() {
        assert_eq!(modules(), ["upstream_guard", "diagnostics", "rate_limiter", "health_router", "circuit_breaker"]);
    }

    #[test]
    fn a_module_configuration_is_checked_by_its_own_stage() {
        assert!(check_module("circuit_breaker", b"{}").unwrap().is_ok());
        let err = check_module("circuit_breaker", br#"{"failure": {"consecutive": 0}}"#).unwrap().unwrap_err();
        assert!(err.to_string().contains("failure.consecutive"), "{err}");
        assert!(check_module("upstream_guard", br#"{"diagnostics": {}}"#).unwrap().is_ok());
        assert!(check_module("nope", b"{}").is_none());
    }
}
