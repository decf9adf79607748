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
//! Shared-data keys: `ug.hr.lease`, `ug.hr.seq` and one `ug.hr.h4.<cluster>` per configured
//! upstream: bounded by the configuration. The machinery is a [`Pool`], which the LLM stage
//! reuses for its providers under its own keys.
//!
//! In the combined module, a request an earlier stage already routed (`Facts::cluster` set by the
//! LLM stage) is left alone.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use upstream_guard::access_log::{key, Fields};
use upstream_guard::details;
use upstream_guard::diagnose::{judge, Judgement};
use upstream_guard::health::{
    report_json, CheckResult, Health, HealthCheck, HealthConfig, HealthTransition, Lease, Pick, Routing,
};
use upstream_guard_glue::shared::{self, Epoch, Snapshot};
use upstream_guard_glue::{host, BufferType, Counter, Cx, Flow, Gauge, Level, LocalReply, MapType, Stage, Tally};

const CAS_ATTEMPTS: u32 = 16;

/// Where a pool keeps its state and reports: shared-data keys `<keys>.h.<cluster>`,
/// `<keys>.lease`, `<keys>.seq`; metrics `<metrics>.<cluster>.…`; log lines prefixed `<log>:`.
/// Two pools in one module (the health router's upstreams, the LLM stage's providers) never
/// share a lease or a prober id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Namespace {
    pub keys: &'static str,
    pub metrics: &'static str,
    pub log: &'static str,
}

/// The health router's namespace (its keys and metric names are part of its interface).
const HEALTH_ROUTER: Namespace = Namespace { keys: "ug.hr", metrics: "upstream_guard.health", log: "health_router" };

/// Metrics of one upstream.
#[derive(Clone, Copy)]
struct UpstreamMetrics {
    healthy: Gauge,
    checks_passed: Counter,
    checks_failed: Counter,
    /// Checks that could not be sent (Envoy has no such cluster): a configuration error.
    checks_unsent: Counter,
    ejections: Counter,
    /// Answers later than `passive.slow.after` (counted only with `passive.slow`).
    slow: Counter,
    /// Requests routed to this upstream (the common path: a [`Tally`]).
    routed: Tally,
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
    /// Upstreams whose last check could not be sent (logged once until one is sent again).
    undispatchable: Vec<bool>,
}

/// A set of upstreams with shared health: active checks by the lease holder, passive ejection,
/// pauses, selection. The health router routes over one; the LLM stage over another (its
/// providers).
pub(crate) struct Pool {
    pub config: HealthConfig,
    ns: Namespace,
    lease_key: Vec<u8>,
    seq_key: Vec<u8>,
    health_keys: Vec<Vec<u8>>,
    metrics: Vec<UpstreamMetrics>,
    /// Per-VM rotation counter for round-robin and weighted selection.
    rotation: Cell<u64>,
    health: Snapshot<Vec<Health>>,
    prober: RefCell<Prober>,
}

impl Pool {
    /// Defines the metrics.
    pub fn new(config: HealthConfig, ns: Namespace) -> Pool {
        let metrics = config
            .upstreams
            .iter()
            .map(|u| {
                let base = format!("{}.{}", ns.metrics, upstream_guard_glue::metrics::segment(&u.cluster));
                UpstreamMetrics {
                    healthy: Gauge::define(&format!("{base}.healthy")),
                    checks_passed: Counter::define(&format!("{base}.checks_passed")),
                    checks_failed: Counter::define(&format!("{base}.checks_failed")),
                    checks_unsent: Counter::define(&format!("{base}.checks_unsent")),
                    ejections: Counter::define(&format!("{base}.ejections")),
                    slow: Counter::define(&format!("{base}.slow")),
                    routed: Tally::define(&format!("{base}.routed")),
                }
            })
            .collect();
        let health_keys =
            config.upstreams.iter().map(|u| format!("{}.h4.{}", ns.keys, u.cluster).into_bytes()).collect();
        let prober = Prober {
            last_dispatch: vec![0; config.upstreams.len()],
            undispatchable: vec![false; config.upstreams.len()],
            ..Prober::default()
        };
        Pool {
            lease_key: format!("{}.lease", ns.keys).into_bytes(),
            seq_key: format!("{}.seq", ns.keys).into_bytes(),
            health_keys,
            config,
            ns,
            metrics,
            rotation: Cell::new(0),
            health: Snapshot::new(),
            prober: RefCell::new(prober),
        }
    }

    /// Every upstream's shared health (a never-checked upstream is healthy), from this worker's
    /// copy unless it changed.
    pub fn states(&self, epoch: u32) -> Vec<Health> {
        let reload = |all: &mut Vec<Health>| {
            *all = self
                .health_keys
                .iter()
                .map(|k| host::shared_get(k).ok().flatten().and_then(|(v, _)| Health::decode(&v)).unwrap_or_default())
                .collect();
        };
        self.health.with(epoch, reload, |all| all.clone())
    }

    /// Where a request goes among `indexes` ([`upstream_guard::health::route`]), rotating the
    /// strategy's counter.
    pub fn route(&self, indexes: &[usize], states: &[Health], now: u64) -> Routing {
        let counter = self.rotation.get();
        self.rotation.set(counter.wrapping_add(1));
        upstream_guard::health::route(&self.config, indexes, states, now, counter)
    }

    /// Counts a request routed to upstream `i`.
    pub fn routed(&self, i: usize) {
        if let Some(m) = self.metrics.get(i) {
            m.routed.inc();
        }
    }

    /// Applies `f` to upstream `i`'s shared health with compare-and-swap; announces a change to
    /// every worker; logs and counts a transition.
    pub fn update(&self, i: usize, f: impl Fn(&mut Health) -> Option<HealthTransition>) {
        let (Some(u), Some(m), Some(key)) =
            (self.config.upstreams.get(i), self.metrics.get(i), self.health_keys.get(i))
        else {
            return;
        };
        let log = self.ns.log;
        let result = shared::update(key, CAS_ATTEMPTS, |cur| {
            let old = cur.and_then(Health::decode).unwrap_or_default();
            let mut new = old;
            let t = f(&mut new);
            ((new != old).then(|| new.encode()), (t, new, new != old))
        });
        let Ok((transition, health, changed)) = result else {
            host::log(Level::Warn, &format!("{log}: could not update the health of {:?}", u.cluster));
            return;
        };
        if changed {
            self.health.changed();
        }
        m.healthy.set(u64::from(health.healthy));
        match transition {
            Some(HealthTransition::BecameUnhealthy) => host::log_with(Level::Warn, || {
                format!("{log}: upstream {:?} is unhealthy: {}", u.cluster, health.reason(health.last_check_at))
            }),
            Some(HealthTransition::BecameHealthy) => {
                host::log_with(Level::Info, || format!("{log}: upstream {:?} is healthy again", u.cluster))
            }
            Some(HealthTransition::Ejected) => {
                m.ejections.inc();
                host::log_with(Level::Warn, || format!("{log}: upstream {:?} ejected by passive detection", u.cluster))
            }
            Some(HealthTransition::RateLimited) => host::log_with(Level::Info, || {
                format!(
                    "{log}: upstream {:?} asked for a pause (429) until {} ms",
                    u.cluster,
                    health.rate_limited_until / 1_000_000
                )
            }),
            None => {}
        }
    }

    /// Passive detection of one response of upstream `i`, judged by the one classifier
    /// ([`upstream_guard::diagnose::judge`]): a failure counts towards a run of failures; with
    /// `passive.slow`, every answer counts in the slow-call window (a write per response). A
    /// success with nothing counted changes nothing: no write (and no read of the state itself
    /// while this worker's copy is current).
    pub fn passive(&self, i: usize, judged: Judgement, cx: &mut Cx<'_>) {
        let Some(passive) = self.config.passive.as_ref() else { return };
        let failed = judged == Judgement::Failed;
        if !failed && passive.slow.is_none() && self.states(cx.epoch()).get(i).is_some_and(|h| h.passive_fail == 0) {
            return;
        }
        if judged == Judgement::Slow {
            if let Some(m) = self.metrics.get(i) {
                m.slow.inc();
            }
        }
        let now = cx.now();
        self.update(i, |h| {
            // Every answer, failed ones too, counts in the slow-call window (as in the breaker's).
            let ejected = h.apply_passive(passive, failed, now);
            let slowed = h.apply_slow(passive, judged == Judgement::Slow, now);
            ejected.or(slowed)
        });
    }

    /// Judges a response of an upstream under passive detection: `sent_at` is when the request
    /// went on (`None` when slow calls are not counted).
    pub fn judge(&self, cx: &mut Cx<'_>, sent_at: Option<u64>) -> Option<Judgement> {
        let passive = self.config.passive.as_ref()?;
        let elapsed = sent_at.map(|at| cx.now().saturating_sub(at));
        let obs = cx.observation();
        Some(judge(&obs.view(), &passive.statuses, elapsed, passive.slow.as_ref().map(|s| s.after_ns)))
    }

    /// When a request to an upstream goes on, if slow calls are counted: the time they are
    /// measured from.
    pub fn sent_at(&self, cx: &mut Cx<'_>) -> Option<u64> {
        self.config.passive.as_ref().and_then(|p| p.slow.as_ref()).map(|_| cx.now())
    }

    /// This worker's prober id, from a shared counter (once).
    fn worker_id(&self, prober: &mut Prober) -> Option<u64> {
        if prober.worker_id.is_none() {
            prober.worker_id = shared::update(&self.seq_key, CAS_ATTEMPTS, |cur| {
                let next = cur.and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes).unwrap_or(0) + 1;
                (Some(next.to_le_bytes().to_vec()), next)
            })
            .ok();
        }
        prober.worker_id
    }

    /// The timer: the lease holder sends the checks that are due.
    pub fn tick(&self, now: u64) {
        let Ok(mut prober) = self.prober.try_borrow_mut() else { return };
        let Some(me) = self.worker_id(&mut prober) else { return };
        let ttl = self.config.lease_ttl_ns();
        let holder = shared::update(&self.lease_key, CAS_ATTEMPTS, |cur| {
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
            HealthCheck::outstanding(upstreams.get(*i).and_then(|u| u.health_check.as_ref()), *at, now)
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
                    if let Some(flag) = prober.undispatchable.get_mut(i) {
                        *flag = false;
                    }
                }
                Err(status) => {
                    // A configuration error, not a down upstream: the upstream keeps its health
                    // (passive detection still judges it). Said once, not on every interval; the
                    // unsent checks are counted and the status endpoint says it too.
                    let first = prober.undispatchable.get_mut(i).is_some_and(|flag| !std::mem::replace(flag, true));
                    if first {
                        host::log(
                            Level::Error,
                            &format!(
                                "{}: cannot send a health check to cluster {:?} ({status:?}): Envoy has no cluster of \
                                 this name. Use the name your platform gives it: Istio `outbound|<port>||<service \
                                 FQDN>`, Envoy Gateway `httproute/<namespace>/<route>/rule/<index>`. The upstream is \
                                 not marked unhealthy for it (counted in upstream_guard.health.<cluster>.checks_unsent; \
                                 not logged again until a check is sent)",
                                self.ns.log, u.cluster
                            ),
                        );
                    }
                    if let Some(m) = self.metrics.get(i) {
                        m.checks_unsent.inc();
                    }
                    self.update(i, |h| h.apply_check(check, CheckResult::DispatchFailed, now));
                }
            }
        }
    }

    /// How often the pool ticks: only when some upstream has active checks.
    pub fn tick_ms(&self) -> Option<u32> {
        let any = self.config.upstreams.iter().any(|u| u.health_check.is_some());
        any.then(|| u32::try_from(self.config.tick_ns() / 1_000_000).unwrap_or(u32::MAX).max(1))
    }

    /// A check's answer (ignored when the token is not one of this pool's checks).
    pub fn http_call_response(&self, token: u32, _headers: usize, body: usize) {
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
}

/// The stage, configured.
pub struct HealthRouter {
    pool: Pool,
    no_healthy: Counter,
}

impl HealthRouter {
    /// Defines the metrics.
    pub fn new(config: HealthConfig) -> HealthRouter {
        HealthRouter {
            pool: Pool::new(config, HEALTH_ROUTER),
            no_healthy: Counter::define("upstream_guard.health.no_healthy_upstream"),
        }
    }
}

/// Per stream: the upstream chosen.
#[derive(Debug, Default)]
pub struct HealthStream {
    chosen: Option<usize>,
    /// When the request went on (host clock), where slow calls are counted.
    sent_at: Option<u64>,
}

impl Stage for HealthRouter {
    type Stream = HealthStream;

    fn request(&self, st: &mut HealthStream, cx: &mut Cx<'_>) -> Flow {
        if cx.facts().cluster.is_some() {
            // An earlier stage of this module routed the request (the LLM stage, by model): its
            // choice stands.
            return Flow::Continue;
        }
        let pool = &self.pool;
        let config = &pool.config;
        let now = cx.now();
        let needs_path = config.status_path.is_some() || !config.routes.is_empty();
        let path = if needs_path { cx.request_header(":path").map(<[u8]>::to_vec) } else { None };
        let path_only = path.as_deref().map(|p| p.split(|b| *b == b'?').next().unwrap_or_default()).unwrap_or(b"");

        if config.status_path.as_deref().is_some_and(|s| s.as_bytes() == path_only) && config.trust.trusts(cx.peer()) {
            let all: Vec<usize> = (0..config.upstreams.len()).collect();
            let body = report_json(config, &all, &pool.states(cx.epoch()), now);
            let mut reply = LocalReply::text(200, details::HEALTH_STATUS, String::new());
            reply.body = body.into_bytes();
            reply.set_header("content-type", "application/json");
            cx.publish(key::HEALTH_ROUTER, &Fields::new().add("reason", "status_endpoint"));
            return Flow::Reply(reply);
        }

        let indexes = config.upstreams_for(&String::from_utf8_lossy(path_only));
        let states = pool.states(cx.epoch());
        let Routing { pick, reason, skipped } = pool.route(&indexes, &states, now);
        let chosen = match pick {
            Pick::Upstream(i) => i,
            // With nothing else available, the request goes where Envoy's route sends it (the
            // client's header removed: clients never choose the upstream).
            Pick::EnvoyRoute => {
                cx.remove_request_header(&config.route_header);
                cx.publish(key::HEALTH_ROUTER, &Fields::new().add("reason", reason));
                return Flow::Continue;
            }
            Pick::Refuse => {
                let fields = Fields::new().add("reason", reason);
                cx.publish(
                    key::HEALTH_ROUTER,
                    &if skipped.is_empty() { fields } else { fields.add("skipped", &skipped) },
                );
                self.no_healthy.inc();
                // Every upstream and why it is out, for trusted clients only (the same who may read
                // the status endpoint): cluster names and check results are internal. Others get
                // Envoy's own words, which the diagnostics stage can turn into its JSON.
                let mut reply = if config.trust.trusts(cx.peer()) {
                    let listed: Vec<Health> = indexes.iter().filter_map(|i| states.get(*i).copied()).collect();
                    let mut r = LocalReply::text(config.status, details::NO_HEALTHY_UPSTREAM, String::new())
                        .header("content-type", "application/json");
                    r.body = report_json(config, &indexes, &listed, now).into_bytes();
                    r
                } else {
                    LocalReply::text(config.status, details::NO_HEALTHY_UPSTREAM, "no healthy upstream\n".into())
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
        // A plain choice (the first in order, or the next in rotation, with nothing passed over)
        // says nothing `%UPSTREAM_CLUSTER%` does not: no write, the common request stays cheap.
        if !skipped.is_empty() || reason == "panic" {
            let fields = Fields::new().add("upstream", &upstream.cluster).add("reason", reason);
            cx.publish(key::HEALTH_ROUTER, &if skipped.is_empty() { fields } else { fields.add("skipped", &skipped) });
        }
        pool.routed(chosen);
        cx.facts().cluster = Some(upstream.cluster.clone());
        st.chosen = Some(chosen);
        st.sent_at = pool.sent_at(cx);
        Flow::Continue
    }

    fn response(&self, st: &mut HealthStream, cx: &mut Cx<'_>) {
        let Some(i) = st.chosen else { return };
        if cx.facts().replied.is_some() {
            // A later stage of this module refused the request: it never reached the upstream.
            return;
        }
        if let Some(judged) = self.pool.judge(cx, st.sent_at) {
            self.pool.passive(i, judged, cx);
        }
    }

    fn tick(&self, now: u64) {
        self.pool.tick(now);
    }

    fn tick_ms(&self) -> Option<u32> {
        self.pool.tick_ms()
    }

    fn http_call_response(&self, token: u32, headers: usize, body: usize) {
        self.pool.http_call_response(token, headers, body);
    }

    fn request_headers_read(&self, out: &mut Vec<String>) {
        let config = &self.pool.config;
        if config.status_path.is_some() || !config.routes.is_empty() {
            out.push(":path".into());
        }
    }
}
