//! The health router stage: routes each request to a healthy upstream cluster.
//!
//! - **Routing** sets the route header (read by a `cluster_header` route) and clears the route
//!   cache. Every worker routes on the shared health of each upstream, kept locally and re-read
//!   only when a version number in shared data moved (one cheap read per request otherwise).
//! - **Active checks** run on the tick, by the one worker holding the prober lease; results go
//!   to shared data.
//! - **Passive detection** watches responses on every worker, through the same failure
//!   classifier as the circuit breaker; consecutive failures eject the upstream at once.
//! - **None available**: a 503 local reply (`upstream_guard.no_healthy_upstream`) whose JSON body
//!   says, per upstream, why (to trusted clients; others get no cluster names); or, with
//!   `when_none_healthy: panic`, the configured order anyway.
//!
//! Shared-data keys: `ug.hr.lease`, `ug.hr.seq`, `ug.hr.v` and one `ug.hr.h.<cluster>` per
//! configured upstream: bounded by the configuration.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use upstream_guard::details;
use upstream_guard::diagnose::upstream_failed;
use upstream_guard::health::{
    report_json, select, Candidate, CheckResult, Health, HealthConfig, HealthTransition, Lease, NoneHealthy,
};
use upstream_guard_glue::shared::{self, Epoch, Snapshot};
use upstream_guard_glue::{host, BufferType, Counter, Cx, Flow, Gauge, Level, LocalReply, MapType, Stage};

const CAS_ATTEMPTS: u32 = 16;
const LEASE_KEY: &[u8] = b"ug.hr.lease";
const SEQ_KEY: &[u8] = b"ug.hr.seq";

fn health_key(cluster: &str) -> Vec<u8> {
    format!("ug.hr.h.{cluster}").into_bytes()
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

/// What this worker's prober remembers.
#[derive(Default)]
struct Prober {
    /// This VM's unique id (for the lease), taken from a shared counter on the first tick.
    worker_id: Option<u64>,
    /// Checks in flight: callout token → (upstream index, dispatched at).
    in_flight: HashMap<u32, (usize, u64)>,
    /// When this VM last dispatched a check per upstream.
    last_dispatch: Vec<u64>,
}

/// The stage, configured.
pub struct HealthRouter {
    config: HealthConfig,
    metrics: Vec<UpstreamMetrics>,
    no_healthy: Counter,
    /// Per-VM rotation counter for round-robin and weighted selection.
    rotation: Cell<u64>,
    health: Snapshot<Vec<Health>>,
    prober: RefCell<Prober>,
}

impl HealthRouter {
    /// Defines the metrics.
    pub fn new(config: HealthConfig) -> HealthRouter {
        let metrics = config
            .upstreams
            .iter()
            .map(|u| {
                let base = format!("upstream_guard.health.{}", upstream_guard_glue::metrics::segment(&u.cluster));
                UpstreamMetrics {
                    healthy: Gauge::define(&format!("{base}.healthy")),
                    checks_passed: Counter::define(&format!("{base}.checks_passed")),
                    checks_failed: Counter::define(&format!("{base}.checks_failed")),
                    ejections: Counter::define(&format!("{base}.ejections")),
                    routed: Counter::define(&format!("{base}.routed")),
                }
            })
            .collect();
        let prober = Prober { last_dispatch: vec![0; config.upstreams.len()], ..Prober::default() };
        HealthRouter {
            config,
            metrics,
            no_healthy: Counter::define("upstream_guard.health.no_healthy_upstream"),
            rotation: Cell::new(0),
            health: Snapshot::new(),
            prober: RefCell::new(prober),
        }
    }

    /// Every upstream's shared health (a never-checked upstream is healthy), from this worker's
    /// copy unless it changed.
    fn states(&self, epoch: u32) -> Vec<Health> {
        let reload = |all: &mut Vec<Health>| {
            *all = self
                .config
                .upstreams
                .iter()
                .map(|u| {
                    host::shared_get(&health_key(&u.cluster))
                        .ok()
                        .flatten()
                        .and_then(|(v, _)| Health::decode(&v))
                        .unwrap_or_default()
                })
                .collect();
        };
        self.health.with(epoch, reload, |all| all.clone())
    }

    /// Applies `f` to upstream `i`'s shared health with compare-and-swap; announces a change to
    /// every worker; logs and counts a transition.
    fn update(&self, i: usize, f: impl Fn(&mut Health) -> Option<HealthTransition>) {
        let (Some(u), Some(m)) = (self.config.upstreams.get(i), self.metrics.get(i)) else { return };
        let result = shared::update(&health_key(&u.cluster), CAS_ATTEMPTS, |cur| {
            let old = cur.and_then(Health::decode).unwrap_or_default();
            let mut new = old;
            let t = f(&mut new);
            ((new != old).then(|| new.encode()), (t, new, new != old))
        });
        let Ok((transition, health, changed)) = result else {
            host::log(Level::Warn, &format!("health_router: could not update the health of {:?}", u.cluster));
            return;
        };
        if changed {
            self.health.changed();
        }
        m.healthy.set(u64::from(health.healthy));
        match transition {
            Some(HealthTransition::BecameUnhealthy) => host::log_with(Level::Warn, || {
                format!("health_router: upstream {:?} is unhealthy: {}", u.cluster, health.reason(health.last_check_at))
            }),
            Some(HealthTransition::BecameHealthy) => {
                host::log_with(Level::Info, || format!("health_router: upstream {:?} is healthy again", u.cluster))
            }
            Some(HealthTransition::Ejected) => {
                m.ejections.inc();
                host::log_with(Level::Warn, || {
                    format!("health_router: upstream {:?} ejected by passive detection", u.cluster)
                })
            }
            None => {}
        }
    }

    /// This worker's prober id, from a shared counter (once).
    fn worker_id(&self, prober: &mut Prober) -> Option<u64> {
        if prober.worker_id.is_none() {
            prober.worker_id = shared::update(SEQ_KEY, CAS_ATTEMPTS, |cur| {
                let next = cur.and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes).unwrap_or(0) + 1;
                (Some(next.to_le_bytes().to_vec()), next)
            })
            .ok();
        }
        prober.worker_id
    }
}

/// Per stream: the upstream chosen.
#[derive(Debug, Default)]
pub struct HealthStream {
    chosen: Option<usize>,
}

impl Stage for HealthRouter {
    type Stream = HealthStream;

    fn request(&self, st: &mut HealthStream, cx: &mut Cx<'_>) -> Flow {
        let config = &self.config;
        let now = cx.now();
        let needs_path = config.status_path.is_some() || !config.routes.is_empty();
        let path = if needs_path { cx.request_header(":path").map(<[u8]>::to_vec) } else { None };
        let path_only = path.as_deref().map(|p| p.split(|b| *b == b'?').next().unwrap_or_default()).unwrap_or(b"");

        if config.status_path.as_deref().is_some_and(|s| s.as_bytes() == path_only) && config.trust.trusts(cx.peer()) {
            let all: Vec<usize> = (0..config.upstreams.len()).collect();
            let body = report_json(config, &all, &self.states(cx.epoch()), now);
            let mut reply = LocalReply::text(200, details::HEALTH_STATUS, String::new());
            reply.body = body.into_bytes();
            reply.set_header("content-type", "application/json");
            return Flow::Reply(reply);
        }

        let indexes = config.upstreams_for(&String::from_utf8_lossy(path_only));
        let states = self.states(cx.epoch());
        let candidates: Vec<Candidate> = indexes
            .iter()
            .filter_map(|i| {
                let h = states.get(*i)?;
                Some(Candidate { index: *i, available: h.available(now), weight: config.upstreams.get(*i)?.weight })
            })
            .collect();
        let counter = self.rotation.get();
        self.rotation.set(counter.wrapping_add(1));
        let chosen = match select(config.strategy, &candidates, counter) {
            Some(i) => i,
            None if config.when_none_healthy == NoneHealthy::Panic => indexes.first().copied().unwrap_or(0),
            None => {
                self.no_healthy.inc();
                // Every upstream and why it is out, for trusted clients only (the same who may read
                // the status endpoint): cluster names and check results are internal. Others get
                // Envoy's own words, which the diagnostics stage can turn into its JSON.
                let mut reply = if config.trust.trusts(cx.peer()) {
                    let listed: Vec<Health> = indexes.iter().filter_map(|i| states.get(*i).copied()).collect();
                    let mut r = LocalReply::text(503, details::NO_HEALTHY_UPSTREAM, String::new())
                        .header("content-type", "application/json");
                    r.body = report_json(config, &indexes, &listed, now).into_bytes();
                    r
                } else {
                    LocalReply::text(503, details::NO_HEALTHY_UPSTREAM, "no healthy upstream\n".into())
                }
                .header("retry-after", "1");
                reply.grpc_status = Some(config.grpc_status);
                return Flow::Reply(reply);
            }
        };
        let Some(upstream) = config.upstreams.get(chosen) else { return Flow::Continue };
        // Overwrite whatever the client sent: clients never choose the upstream. For an ABI 0.2.1
        // module Envoy clears the route cache itself when a request header changes, so the route
        // is matched again with this header (the explicit `clear_route_cache` foreign function
        // would cost another entry into the host for nothing).
        cx.set_request_header(&config.route_header, upstream.cluster.as_bytes());
        if let Some(m) = self.metrics.get(chosen) {
            m.routed.inc();
        }
        cx.facts().cluster = Some(upstream.cluster.clone());
        st.chosen = Some(chosen);
        Flow::Continue
    }

    fn response(&self, st: &mut HealthStream, cx: &mut Cx<'_>) {
        let (Some(i), Some(passive)) = (st.chosen, self.config.passive.as_ref()) else { return };
        if cx.facts().replied.is_some() {
            // A later stage of this module refused the request: it never reached the upstream.
            return;
        }
        let obs = cx.observation();
        let failed = upstream_failed(&obs.view(), &passive.statuses);
        // A success with no failure counted changes nothing: no write (and no read of the state
        // itself while this worker's copy is current).
        if !failed && self.states(cx.epoch()).get(i).is_some_and(|h| h.passive_fail == 0) {
            return;
        }
        let now = cx.now();
        self.update(i, |h| h.apply_passive(passive, failed, now));
    }

    fn tick(&self, now: u64) {
        let Ok(mut prober) = self.prober.try_borrow_mut() else { return };
        let Some(me) = self.worker_id(&mut prober) else { return };
        let ttl = self.config.lease_ttl_ns();
        let holder = shared::update(LEASE_KEY, CAS_ATTEMPTS, |cur| {
            let (write, mine) = Lease::claim(cur.and_then(Lease::decode), me, now, ttl);
            (write.map(|l| l.encode()), mine)
        })
        .unwrap_or(false);
        if !holder {
            return;
        }
        // Forget callouts that never answered (Envoy answers every one, but be safe).
        let upstreams = &self.config.upstreams;
        prober.in_flight.retain(|_, (i, at)| {
            let limit = upstreams.get(*i).and_then(|u| u.health_check.as_ref()).map_or(0, |h| h.timeout_ns);
            now.saturating_sub(*at) < limit.saturating_mul(2).saturating_add(1_000_000_000)
        });
        let states = self.states(Epoch::read());
        for (i, u) in upstreams.iter().enumerate() {
            let Some(check) = &u.health_check else { continue };
            if prober.in_flight.values().any(|(j, _)| *j == i) {
                continue;
            }
            let last_check = states.get(i).map_or(0, |h| h.last_check_at);
            let last = prober.last_dispatch.get(i).copied().unwrap_or(0).max(last_check);
            let due = last.saturating_add(check.interval_ns).saturating_add(check.jitter_for(&u.cluster));
            if last != 0 && now < due {
                continue;
            }
            if let Some(slot) = prober.last_dispatch.get_mut(i) {
                *slot = now;
            }
            let headers: [(&[u8], &[u8]); 3] =
                [(b":method", b"GET"), (b":path", check.path.as_bytes()), (b":authority", check.authority.as_bytes())];
            let timeout_ms = u32::try_from(check.timeout_ns / 1_000_000).unwrap_or(u32::MAX).max(1);
            match host::http_call(&u.cluster, &headers, &[], timeout_ms) {
                Ok(token) => {
                    prober.in_flight.insert(token, (i, now));
                }
                Err(status) => {
                    host::log(
                        Level::Warn,
                        &format!(
                            "health_router: cannot send a health check to cluster {:?} ({status:?}): is it defined in Envoy?",
                            u.cluster
                        ),
                    );
                    if let Some(m) = self.metrics.get(i) {
                        m.checks_failed.inc();
                    }
                    self.update(i, |h| h.apply_check(check, CheckResult::DispatchFailed, now));
                }
            }
        }
    }

    fn tick_ms(&self) -> Option<u32> {
        let any = self.config.upstreams.iter().any(|u| u.health_check.is_some());
        any.then(|| u32::try_from(self.config.tick_ns() / 1_000_000).unwrap_or(u32::MAX).max(1))
    }

    fn http_call_response(&self, token: u32, _headers: usize, body: usize) {
        let Some((i, _)) = self.prober.try_borrow_mut().ok().and_then(|mut p| p.in_flight.remove(&token)) else {
            return;
        };
        let Some(check) = self.config.upstreams.get(i).and_then(|u| u.health_check.as_ref()) else { return };
        let status = host::header(MapType::HttpCallResponseHeaders, ":status")
            .and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.trim().parse::<u16>().ok()));
        let body_start = if status == Some(503) {
            host::buffer(BufferType::HttpCallResponseBody, 0, body.min(256)).unwrap_or_default()
        } else {
            Vec::new()
        };
        let result = CheckResult::from_answer(check, status, &body_start);
        if let Some(m) = self.metrics.get(i) {
            if result.passed() {
                m.checks_passed.inc()
            } else {
                m.checks_failed.inc()
            }
        }
        let now = host::now();
        self.update(i, |h| h.apply_check(check, result, now));
    }

    fn request_headers_read(&self, out: &mut Vec<String>) {
        if self.config.status_path.is_some() || !self.config.routes.is_empty() {
            out.push(":path".into());
        }
    }
}
