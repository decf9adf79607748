//! What each stage leaves for Envoy's access log: one short `key=value` line per stage.
//!
//! A stage publishes its verdict as a property (Envoy keeps it as filter state `wasm.<key>`), and
//! the access log prints it with `%FILTER_STATE(wasm.<key>:PLAIN)%`. Envoy runs its access
//! loggers before a filter's own `on_log`, so verdicts are written on the request and response
//! headers, never at the end. Each write is a host call (and a filter-state object in Envoy:
//! about 4,600 instructions measured), so a stage writes only when it acted: the rate limiter
//! when a rule refused or a global rule was asked (every admission with `log_allowed`), the circuit breaker when it refused, probed or changed state, diagnostics
//! when it diagnosed, the health router when its choice says more than `%UPSTREAM_CLUSTER%` (an
//! upstream passed over, panic routing, a refusal, its status endpoint). A stage that did nothing
//! leaves its field empty (`-` in the log).
//!
//! Values are logfmt (`cause=connection_refused flags=UF`): space-separated `key=value` pairs,
//! a value quoted (with `\"` and `\\` escaped) when it holds a space, `=`, a quote or a byte
//! outside printable ASCII. The keys and their fields are part of the project's interface, like
//! the metric names.

/// The property (filter state `wasm.<key>`) each stage writes.
pub mod key {
    /// Diagnostics: `cause`, `flags`.
    pub const DIAGNOSTICS: &str = "upstream_guard.diagnostics";
    /// Rate limiter: `rule`, `decision` (`allowed`, `limited`, `shadow_limited`, and for a global
    /// rule whose service gave no verdict under `on_service_error: deny`, `service_unavailable` or
    /// `shadow_unavailable`), `remaining` or `retry_after`.
    pub const RATE_LIMITER: &str = "upstream_guard.rate_limiter";
    /// Circuit breaker: `cluster`, `state` (`closed`, `open`, `half-open`), `decision`
    /// (`refused`, `probe`, `tripped`, `closed`, `reopened`).
    pub const CIRCUIT_BREAKER: &str = "upstream_guard.circuit_breaker";
    /// Health router: `upstream`, `reason` (`failover`, `round_robin`, `weighted`, `panic`,
    /// `none_healthy`, `status_endpoint`), `skipped` (upstreams passed over, each with why:
    /// `primary:unhealthy`, `primary:ejected`). Not written for a plain choice.
    pub const HEALTH_ROUTER: &str = "upstream_guard.health_router";
    /// Concurrency: `cluster`, `class`, `decision` (`refused`, `shadow_refused`), `limit`,
    /// `in_flight`. Written only when it refused (or, in shadow mode, would have).
    pub const CONCURRENCY: &str = "upstream_guard.concurrency";
}

/// A logfmt line under construction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(String);

impl Fields {
    /// No fields yet.
    pub fn new() -> Fields {
        Fields(String::new())
    }

    /// Appends `name=value`, quoting the value when it needs it.
    pub fn add(mut self, name: &str, value: &str) -> Fields {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(name);
        self.0.push('=');
        let plain =
            !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
        if plain {
            self.0.push_str(value);
        } else {
            self.0.push('"');
            for c in value.chars() {
                match c {
                    '"' | '\\' => {
                        self.0.push('\\');
                        self.0.push(c);
                    }
                    c if c.is_control() => self.0.push('?'),
                    c => self.0.push(c),
                }
            }
            self.0.push('"');
        }
        self
    }

    /// Appends `name=<number>`.
    pub fn num(self, name: &str, value: u64) -> Fields {
        let text = value.to_string();
        self.add(name, &text)
    }

    /// The line.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_stay_bare_and_others_are_quoted() {
        let f = Fields::new().add("cause", "connection_refused").add("flags", "UF,URX").num("remaining", 3);
        assert_eq!(f.as_str(), "cause=connection_refused flags=UF,URX remaining=3");
        let f = Fields::new().add("rule", "per client").add("x", "a=b").add("y", "say \"hi\"\\").add("z", "");
        assert_eq!(f.as_str(), r#"rule="per client" x="a=b" y="say \"hi\"\\" z="""#);
        assert_eq!(Fields::new().add("c", "tab\there").as_str(), "c=\"tab?here\"");
    }
}
