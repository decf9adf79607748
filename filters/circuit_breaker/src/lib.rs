//! # circuit breaker filter
//!
//! One breaker per upstream cluster (optionally per cluster and header value), in shared data so
//! that every worker sees the same circuit. At request time a closed circuit costs one
//! shared-data read; an open one answers at once with a 503 local reply
//! (`upstream_guard.circuit_open`, `Retry-After`); a half-open one admits a bounded number of
//! probes. At response time the outcome is classified by the core and recorded with
//! compare-and-swap; a write happens only when the state actually changes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use upstream_guard::breaker::{Admission, Breaker, BreakerConfig, Outcome, Phase, Policy, Transition};
use upstream_guard::details;
use upstream_guard::diagnose::ResponseFlags;
use upstream_guard::ratelimit::{retry_after_secs, slot_for};
use upstream_guard_glue::shared::{self, UpdateError};
use upstream_guard_glue::{self as glue, props, Counter, Gauge};

proxy_wasm::main! {{
    glue::init();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { shared: None }) });
}}

/// CAS attempts per update; a breaker update that keeps losing races is skipped (and counted):
/// the next response records again.
const CAS_ATTEMPTS: u32 = 16;

/// Metrics of one cluster, defined on first use (clusters are bounded by Envoy's config).
#[derive(Clone, Copy)]
struct ClusterMetrics {
    state: Gauge,
    opened: Counter,
    half_opened: Counter,
    closed: Counter,
    rejected: Counter,
    failures: Counter,
    contention: Counter,
}

struct Shared {
    config: BreakerConfig,
    metrics: RefCell<HashMap<String, ClusterMetrics>>,
}

impl Shared {
    fn metrics(&self, cluster: &str) -> ClusterMetrics {
        if let Some(m) = self.metrics.borrow().get(cluster) {
            return *m;
        }
        let base = format!("upstream_guard.breaker.{}", glue::metric_segment(cluster));
        let m = ClusterMetrics {
            state: Gauge::define(&format!("{base}.state")),
            opened: Counter::define(&format!("{base}.opened")),
            half_opened: Counter::define(&format!("{base}.half_opened")),
            closed: Counter::define(&format!("{base}.closed")),
            rejected: Counter::define(&format!("{base}.rejected")),
            failures: Counter::define(&format!("{base}.failures")),
            contention: Counter::define(&format!("{base}.contention")),
        };
        self.metrics.borrow_mut().insert(cluster.to_string(), m);
        m
    }

    /// Logs and counts a transition once (only the worker whose update caused it sees it).
    fn report(&self, cluster: &str, key: &str, t: Transition) {
        let m = self.metrics(cluster);
        m.state.set(t.to.gauge());
        match t.to {
            Phase::Open => m.opened.inc(),
            Phase::HalfOpen => m.half_opened.inc(),
            Phase::Closed => m.closed.inc(),
        }
        let level = if t.to == Phase::Open { LogLevel::Warn } else { LogLevel::Info };
        glue::log(level, &format!("circuit_breaker: {key}: {} -> {}", t.from.name(), t.to.name()));
    }
}

struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(config) =
            glue::load_config("circuit_breaker", self.get_plugin_configuration(), BreakerConfig::from_json)
        else {
            return false;
        };
        self.shared = Some(Rc::new(Shared { config, metrics: RefCell::new(HashMap::new()) }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { shared: self.shared.clone(), target: None, probe: None, recorded: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The breaker a stream belongs to.
struct Target {
    cluster: String,
    key: String,
}

struct Stream {
    shared: Option<Rc<Shared>>,
    target: Option<Target>,
    probe: Option<u32>,
    recorded: bool,
}

impl Context for Stream {}

impl Stream {
    fn policy<'a>(shared: &'a Shared, target: &Target) -> &'a Policy {
        shared.config.policy(&target.cluster)
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else { return Action::Continue };
        // The routed cluster; after an earlier filter rewrote the routing header and cleared the
        // route cache, Envoy has not re-resolved it yet, and the header is the answer. Unknown
        // names create no state: only failures and transitions write, and Envoy answers a missing
        // cluster itself (NC), which is not an upstream failure.
        let Some(cluster) = props::string(&["xds", "cluster_name"])
            .filter(|c| !c.is_empty())
            .or_else(|| self.get_http_request_header(&shared.config.cluster_header))
            .filter(|c| !c.is_empty())
        else {
            return Action::Continue;
        };
        let key = match &shared.config.key_header {
            None => format!("ug.cb.{cluster}"),
            Some(h) => {
                let value = self.get_http_request_header(h).unwrap_or_default();
                format!("ug.cb.{cluster}.{}", slot_for(&cluster, &value, shared.config.max_keys))
            }
        };
        let target = Target { cluster, key };
        let policy = Self::policy(&shared, &target);
        let now = glue::now_nanos();

        // Fast path: a closed (or never used) circuit needs no write.
        let current =
            hostcalls::get_shared_data(&target.key).ok().and_then(|(v, _)| v).and_then(|v| Breaker::decode(&v));
        if current.as_ref().is_none_or(|b| b.phase == Phase::Closed) {
            self.target = Some(target);
            return Action::Continue;
        }
        let outcome = shared::update(&target.key, CAS_ATTEMPTS, |cur| {
            let old = cur.and_then(Breaker::decode).unwrap_or_default();
            let mut next = old.clone();
            let (admission, transition) = next.admit(policy, now);
            let write = (!next.same_as(&old)).then(|| next.encode());
            (write, (admission, transition, next.phase))
        });
        let (admission, transition, phase) = match outcome {
            Ok(v) => v,
            Err(e) => {
                shared.metrics(&target.cluster).contention.inc();
                if let UpdateError::Host(s) = e {
                    glue::log(LogLevel::Warn, &format!("circuit_breaker: shared data unavailable ({s:?})"));
                }
                // Could not take a probe slot: treat as a full half-open circuit.
                (Admission::Reject { retry_after_ns: 1_000_000_000 }, None, Phase::HalfOpen)
            }
        };
        if let Some(t) = transition {
            shared.report(&target.cluster, &target.key, t);
        }
        match admission {
            Admission::Allow => {
                self.target = Some(target);
                Action::Continue
            }
            Admission::Probe(id) => {
                self.probe = Some(id);
                self.target = Some(target);
                Action::Continue
            }
            Admission::Reject { retry_after_ns } => {
                shared.metrics(&target.cluster).rejected.inc();
                let retry_after = retry_after_secs(retry_after_ns).to_string();
                let headers = [
                    ("retry-after", retry_after.as_str()),
                    ("x-upstream-guard-circuit", phase.name()),
                    ("content-type", "text/plain"),
                ];
                let body = format!(
                    "circuit {} for upstream {:?}: retry after {retry_after} s\n",
                    phase.name(),
                    target.cluster
                );
                if glue::send_local_reply(shared.config.status, &headers, body.as_bytes(), details::CIRCUIT_OPEN)
                    .is_err()
                {
                    return Action::Continue;
                }
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(shared), Some(target)) = (self.shared.clone(), self.target.as_ref()) else {
            return Action::Continue;
        };
        let policy = Self::policy(&shared, target);
        let status = props::uint(&["response", "code"]).and_then(|c| u16::try_from(c).ok());
        let flags = ResponseFlags(props::uint(&["response", "flags"]).unwrap_or(0));
        let details = props::string(&["response", "code_details"]).unwrap_or_default();
        let outcome = if policy.is_failure(status, flags, &details) { Outcome::Failure } else { Outcome::Success };
        if outcome == Outcome::Failure {
            shared.metrics(&target.cluster).failures.inc();
        }
        let now = glue::now_nanos();
        let probe = self.probe;
        let result = shared::update(&target.key, CAS_ATTEMPTS, |cur| {
            let old = cur.and_then(Breaker::decode).unwrap_or_default();
            let mut next = old.clone();
            let transition = next.record(policy, now, outcome, probe);
            ((!next.same_as(&old)).then(|| next.encode()), transition)
        });
        self.recorded = true;
        match result {
            Ok(Some(t)) => shared.report(&target.cluster, &target.key, t),
            Ok(None) => {}
            Err(_) => shared.metrics(&target.cluster).contention.inc(),
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // A probe whose response never arrived (the client went away) gives its slot back now.
        let (Some(target), Some(id), false) = (self.target.as_ref(), self.probe, self.recorded) else { return };
        let _ = shared::update(&target.key, CAS_ATTEMPTS, |cur| {
            let mut b = cur.and_then(Breaker::decode).unwrap_or_default();
            (b.abandon(id).then(|| b.encode()), ())
        });
    }
}
