//! # health router filter
//!
//! Routes each request to a healthy upstream cluster by setting the route header (default
//! `x-upstream-cluster`, read by a `cluster_header` route) and clearing the route cache.
//!
//! - **Active checks** run on the tick, by the one worker holding the prober lease in shared
//!   data; results go to shared data, where every worker routes on them.
//! - **Passive detection** watches responses on every worker; consecutive failures eject the
//!   upstream at once for the ejection time.
//! - **None available**: a 503 local reply (`upstream_guard.no_healthy_upstream`) whose JSON body
//!   says, per upstream, why; or, with `when_none_healthy: panic`, the configured order anyway.
//!
//! Shared-data keys: `ug.hr.lease`, `ug.hr.seq` and one `ug.hr.h.<cluster>` per configured
//! upstream: bounded by the configuration.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use upstream_guard::cidr;
use upstream_guard::details;
use upstream_guard::diagnose::{Flag, ResponseFlags};
use upstream_guard::health::{
    report_json, select, Candidate, CheckResult, Health, HealthConfig, HealthTransition, Lease, NoneHealthy,
};
use upstream_guard_glue::shared;
use upstream_guard_glue::{self as glue, props, Counter, Gauge};

proxy_wasm::main! {{
    glue::init();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

const CAS_ATTEMPTS: u32 = 16;
const LEASE_KEY: &str = "ug.hr.lease";
const SEQ_KEY: &str = "ug.hr.seq";

fn health_key(cluster: &str) -> String {
    format!("ug.hr.h.{cluster}")
}

/// Reads one upstream's shared health (a never-checked upstream is healthy).
fn read_health(cluster: &str) -> Health {
    hostcalls::get_shared_data(&health_key(cluster))
        .ok()
        .and_then(|(v, _)| v)
        .and_then(|v| Health::decode(&v))
        .unwrap_or_default()
}

/// Metrics of one upstream.
#[derive(Clone, Copy)]
struct UpstreamMetrics {
    healthy: Gauge,
    checks_passed: Counter,
    checks_failed: Counter,
    ejections: Counter,
    routed: Counter,
}

struct Shared {
    config: HealthConfig,
    metrics: Vec<UpstreamMetrics>,
    no_healthy: Counter,
    /// Per-VM rotation counter for round-robin and weighted selection.
    counter: Cell<u64>,
}

impl Shared {
    /// Applies `f` to upstream `i`'s shared health with CAS; logs and counts a transition.
    fn update(&self, i: usize, f: impl Fn(&mut Health) -> Option<HealthTransition>) {
        let Some(u) = self.config.upstreams.get(i) else { return };
        let result = shared::update(&health_key(&u.cluster), CAS_ATTEMPTS, |cur| {
            let old = cur.and_then(Health::decode).unwrap_or_default();
            let mut new = old;
            let t = f(&mut new);
            ((new != old).then(|| new.encode()), (t, new))
        });
        let Ok((transition, health)) = result else {
            glue::log(LogLevel::Warn, &format!("health_router: could not update the health of {:?}", u.cluster));
            return;
        };
        let m = self.metrics[i];
        m.healthy.set(u64::from(health.healthy));
        match transition {
            Some(HealthTransition::BecameUnhealthy) => glue::log(
                LogLevel::Warn,
                &format!(
                    "health_router: upstream {:?} is unhealthy: {}",
                    u.cluster,
                    health.reason(health.last_check_at)
                ),
            ),
            Some(HealthTransition::BecameHealthy) => {
                glue::log(LogLevel::Info, &format!("health_router: upstream {:?} is healthy again", u.cluster))
            }
            Some(HealthTransition::Ejected) => {
                m.ejections.inc();
                glue::log(
                    LogLevel::Warn,
                    &format!("health_router: upstream {:?} ejected by passive detection", u.cluster),
                )
            }
            None => {}
        }
    }
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
    /// This VM's unique id (for the lease), taken from a shared counter on the first tick.
    worker_id: Option<u64>,
    /// Checks in flight: callout token → (upstream index, dispatched at).
    in_flight: HashMap<u32, (usize, u64)>,
    /// When this VM last dispatched a check per upstream.
    last_dispatch: Vec<u64>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some((i, _)) = self.in_flight.remove(&token_id) else { return };
        let Some(shared) = self.shared.clone() else { return };
        let Some(check) = shared.config.upstreams.get(i).and_then(|u| u.health_check.clone()) else { return };
        // Envoy answers a callout that timed out or could not connect with no headers at all.
        // A connection that failed gets Envoy's own 503 local reply; its body says so.
        let status = self.get_http_call_response_header(":status").and_then(|s| s.parse::<u16>().ok());
        let envoy_reply = status == Some(503)
            && self
                .get_http_call_response_body(0, body_size.min(256))
                .is_some_and(|b| b.starts_with(b"upstream connect error") || b.starts_with(b"no healthy upstream"));
        let result = match status {
            Some(s) if check.expects(s) => CheckResult::Passed(s),
            _ if envoy_reply => CheckResult::NoResponse,
            Some(s) => CheckResult::BadStatus(s),
            None => CheckResult::NoResponse,
        };
        let m = shared.metrics[i];
        if result.passed() {
            m.checks_passed.inc()
        } else {
            m.checks_failed.inc()
        }
        let now = glue::now_nanos();
        shared.update(i, |h| h.apply_check(&check, result, now));
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(config) = glue::load_config("health_router", self.get_plugin_configuration(), HealthConfig::from_json)
        else {
            return false;
        };
        let metrics = config
            .upstreams
            .iter()
            .map(|u| {
                let base = format!("upstream_guard.health.{}", glue::metric_segment(&u.cluster));
                UpstreamMetrics {
                    healthy: Gauge::define(&format!("{base}.healthy")),
                    checks_passed: Counter::define(&format!("{base}.checks_passed")),
                    checks_failed: Counter::define(&format!("{base}.checks_failed")),
                    ejections: Counter::define(&format!("{base}.ejections")),
                    routed: Counter::define(&format!("{base}.routed")),
                }
            })
            .collect();
        self.last_dispatch = vec![0; config.upstreams.len()];
        if config.upstreams.iter().any(|u| u.health_check.is_some()) {
            self.set_tick_period(Duration::from_nanos(config.tick_ns()));
        }
        self.shared = Some(Rc::new(Shared {
            config,
            metrics,
            no_healthy: Counter::define("upstream_guard.health.no_healthy_upstream"),
            counter: Cell::new(0),
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        let now = glue::now_nanos();
        let Some(me) = self.worker_id.or_else(|| {
            let id = shared::update(SEQ_KEY, CAS_ATTEMPTS, |cur| {
                let next = cur.and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0) + 1;
                (Some(next.to_le_bytes().to_vec()), next)
            })
            .ok();
            self.worker_id = id;
            id
        }) else {
            return;
        };
        let ttl = shared.config.tick_ns().saturating_mul(5).max(1_000_000_000);
        let holder = shared::update(LEASE_KEY, CAS_ATTEMPTS, |cur| {
            let (write, mine) = Lease::claim(cur.and_then(Lease::decode), me, now, ttl);
            (write.map(|l| l.encode()), mine)
        })
        .unwrap_or(false);
        if !holder {
            return;
        }
        // Forget callouts that never answered (Envoy answers every one, but be safe).
        self.in_flight.retain(|_, (i, at)| {
            let limit =
                shared.config.upstreams.get(*i).and_then(|u| u.health_check.as_ref()).map_or(0, |h| h.timeout_ns);
            now.saturating_sub(*at) < limit.saturating_mul(2).saturating_add(1_000_000_000)
        });
        for (i, u) in shared.config.upstreams.iter().enumerate() {
            let Some(check) = &u.health_check else { continue };
            if self.in_flight.values().any(|(j, _)| *j == i) {
                continue;
            }
            let last = self.last_dispatch[i].max(read_health(&u.cluster).last_check_at);
            // A fixed per-upstream jitter (from the name) spreads checks without randomness.
            let jitter = if check.jitter_ns == 0 {
                0
            } else {
                upstream_guard::ratelimit::slot_for("jitter", &u.cluster, u32::MAX) as u64 % check.jitter_ns
            };
            if last != 0 && now < last.saturating_add(check.interval_ns).saturating_add(jitter) {
                continue;
            }
            self.last_dispatch[i] = now;
            let headers =
                vec![(":method", "GET"), (":path", check.path.as_str()), (":authority", check.authority.as_str())];
            match self.dispatch_http_call(&u.cluster, headers, None, vec![], Duration::from_nanos(check.timeout_ns)) {
                Ok(token) => {
                    self.in_flight.insert(token, (i, now));
                }
                Err(status) => {
                    glue::log(
                        LogLevel::Warn,
                        &format!("health_router: cannot send a health check to cluster {:?} ({status:?}): is it defined in Envoy?", u.cluster),
                    );
                    shared.metrics[i].checks_failed.inc();
                    shared.update(i, |h| h.apply_check(check, CheckResult::DispatchFailed, now));
                }
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { shared: self.shared.clone(), chosen: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    shared: Option<Rc<Shared>>,
    chosen: Option<usize>,
}

impl Context for Stream {}

impl Stream {
    fn trusted(&self, shared: &Shared) -> bool {
        props::string(&["source", "address"])
            .and_then(|a| cidr::parse_peer(&a))
            .is_some_and(|ip| cidr::any_contains(&shared.config.trusted, ip))
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else { return Action::Continue };
        let config = &shared.config;
        let now = glue::now_nanos();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let path_only = path.split('?').next().unwrap_or_default();

        if config.status_path.as_deref() == Some(path_only) && self.trusted(&shared) {
            let all: Vec<usize> = (0..config.upstreams.len()).collect();
            let states: Vec<Health> = config.upstreams.iter().map(|u| read_health(&u.cluster)).collect();
            let body = report_json(config, &all, &states, now);
            let _ = glue::send_local_reply(
                200,
                &[("content-type", "application/json")],
                body.as_bytes(),
                "upstream_guard.health_status",
            );
            return Action::Pause;
        }

        let indexes = config.upstreams_for(path_only);
        let states: Vec<Health> = indexes.iter().map(|i| read_health(&config.upstreams[*i].cluster)).collect();
        let candidates: Vec<Candidate> = indexes
            .iter()
            .zip(&states)
            .map(|(i, h)| Candidate { index: *i, available: h.available(now), weight: config.upstreams[*i].weight })
            .collect();
        let counter = shared.counter.get();
        shared.counter.set(counter.wrapping_add(1));
        let chosen = match select(config.strategy, &candidates, counter) {
            Some(i) => i,
            None if config.when_none_healthy == NoneHealthy::Panic => indexes[0],
            None => {
                shared.no_healthy.inc();
                let body = report_json(config, &indexes, &states, now);
                let headers = [("content-type", "application/json"), ("retry-after", "1")];
                if glue::send_local_reply(503, &headers, body.as_bytes(), details::NO_HEALTHY_UPSTREAM).is_ok() {
                    return Action::Pause;
                }
                indexes[0]
            }
        };
        // Overwrite whatever the client sent: clients never choose the upstream.
        self.set_http_request_header(&config.route_header, Some(&config.upstreams[chosen].cluster));
        glue::clear_route_cache();
        shared.metrics[chosen].routed.inc();
        self.chosen = Some(chosen);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(shared), Some(i)) = (self.shared.clone(), self.chosen) else { return Action::Continue };
        let Some(passive) = shared.config.passive.clone() else { return Action::Continue };
        let status = props::uint(&["response", "code"]).and_then(|c| u16::try_from(c).ok());
        let flags = ResponseFlags(props::uint(&["response", "flags"]).unwrap_or(0));
        let details = props::string(&["response", "code_details"]).unwrap_or_default();
        let upstream_failed = [
            Flag::UpstreamConnectionFailure,
            Flag::UpstreamRequestTimeout,
            Flag::UpstreamConnectionTermination,
            Flag::UpstreamRemoteReset,
            Flag::NoHealthyUpstream,
        ]
        .iter()
        .any(|f| flags.has(*f));
        let failed = !details.starts_with(details::PREFIX)
            && (upstream_failed || status.is_some_and(|s| passive.statuses.contains(&s)));
        let now = glue::now_nanos();
        shared.update(i, |h| h.apply_passive(&passive, failed, now));
        Action::Continue
    }
}
