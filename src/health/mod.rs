//! Health: active-check hysteresis, passive ejection, the prober lease, and upstream selection,
//! behind the health router filter. Time is passed in; every state is a small value the filter
//! keeps in shared data.
//!
//! Why a lease: `on_tick` runs in every worker VM, and N workers probing every upstream would
//! multiply health-check load by N and race on the results. One worker at a time holds the lease
//! (renewed every tick), probes, and publishes results that all workers route on; if it stops
//! renewing, the lease expires and another worker takes over.

pub(crate) mod config;
mod lease;
mod select;
mod state;

pub use config::{HealthCheck, HealthConfig, HealthJson, NoneHealthy, Passive, Strategy, Upstream};
pub use lease::Lease;
pub use select::{choose, route, select, why, Candidate, Pick, Routing};
pub use state::{CheckResult, Health, HealthTransition};

/// The JSON document of the status endpoint and of the fail-fast reply: every upstream (of
/// `indexes`, in order) with its state and, when unavailable, why.
pub fn report_json(config: &HealthConfig, indexes: &[usize], states: &[Health], now: u64) -> String {
    let ms = |ns: u64| if ns == 0 { serde_json::Value::Null } else { serde_json::Value::from(ns / 1_000_000) };
    let ups: Vec<serde_json::Value> = indexes
        .iter()
        .zip(states)
        .filter_map(|(i, h)| {
            let u = config.upstreams.get(*i)?;
            Some(serde_json::json!({
                "cluster": u.cluster,
                "available": h.available(now),
                "healthy": h.healthy,
                "reason": h.reason(now),
                "last_check": h.last_result.map(CheckResult::describe),
                "last_check_at_ms": ms(h.last_check_at),
                "consecutive_check_failures": h.consecutive_fail,
                "consecutive_check_successes": h.consecutive_ok,
                "ejected_until_ms": if h.ejected_until > now { ms(h.ejected_until) } else { serde_json::Value::Null },
                "rate_limited_until_ms": if h.rate_limited_until > now { ms(h.rate_limited_until) } else { serde_json::Value::Null },
                "since_ms": ms(h.since),
                "active_checks": u.health_check.is_some(),
            }))
        })
        .collect();
    serde_json::json!({"upstreams": ups}).to_string()
}
