//! The circuit breaker stage: closed / open / half-open per upstream cluster (optionally per
//! cluster and header value), shared by every worker through shared data.
//!
//! The common case costs little: each worker keeps a copy of the breakers it has seen, checked
//! against one version number in shared data (an empty value: reading it allocates nothing), and
//! re-reads only after a change. A closed circuit and a success that changes nothing write
//! nothing. Failures, probes and transitions go through compare-and-swap, then bump the version.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use upstream_guard::access_log::{key, Fields};
use upstream_guard::breaker::{Admission, Breaker, BreakerConfig, Outcome, Phase, Policy, Transition, TripCause};
use upstream_guard::details;
use upstream_guard::hash::Secret;
use upstream_guard::ratelimit::retry_after_secs;
use upstream_guard::slots::Place;
use upstream_guard_glue::shared::{self, Owned, Snapshot, UpdateError};
use upstream_guard_glue::stream::path;
use upstream_guard_glue::{host, Counter, Cx, Family, Flow, Gauge, Level, LocalReply, Stage};

/// CAS attempts per update; an update that keeps losing races is skipped (and counted): the next
/// response records again.
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
    /// Responses the upstream sent later than `failure.slow.after` (and did not fail).
    slow: Counter,
    contention: Counter,
    /// Requests and responses of a `key_header` value that found every slot it may use held by
    /// other values' live breakers: admitted and not recorded.
    table_full: Counter,
}

fn define(segment: &str) -> ClusterMetrics {
    let base = format!("upstream_guard.breaker.{segment}");
    ClusterMetrics {
        state: Gauge::define(&format!("{base}.state")),
        opened: Counter::define(&format!("{base}.opened")),
        half_opened: Counter::define(&format!("{base}.half_opened")),
        closed: Counter::define(&format!("{base}.closed")),
        rejected: Counter::define(&format!("{base}.rejected")),
        failures: Counter::define(&format!("{base}.failures")),
        slow: Counter::define(&format!("{base}.slow")),
        contention: Counter::define(&format!("{base}.contention")),
        table_full: Counter::define(&format!("{base}.table_full")),
    }
}

/// This worker's copies of the breakers it has seen (`None`: no state stored yet), keyed by the
/// target's id ([`Target::id`]; hashed with FNV rather than SipHash on every lookup).
type Copies = HashMap<Vec<u8>, Option<Breaker>, BuildHasherDefault<KeyHasher>>;

/// FNV-1a over the id bytes: ids are ours (`ug.cb2.<cluster>`, or that and a keyed fingerprint),
/// and the map is cleared on every change, so nobody can grow or aim at it.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// The stage, configured.
pub struct CircuitBreaker {
    config: BreakerConfig,
    metrics: Family<ClusterMetrics>,
    copies: Snapshot<Copies>,
    /// The slot-hash secret of this process ([`shared::secret`]).
    secret: Secret,
}

impl CircuitBreaker {
    /// Sets up metrics and the local copies.
    pub fn new(config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker { config, metrics: Family::new(define), copies: Snapshot::new(), secret: shared::secret() }
    }

    /// The breaker of `cluster`, or of `cluster` and a `key_header` value.
    fn target(&self, cluster: String, value: Option<&[u8]>) -> Target {
        match value {
            None => Target { key: format!("ug.cb2.{cluster}").into_bytes(), cluster, place: None },
            Some(v) => {
                let place = Place::of(&self.secret, cluster.as_bytes(), v, 0, self.config.max_keys);
                let mut id = format!("ug.cb2.{cluster}#").into_bytes();
                id.extend_from_slice(&place.fingerprint.to_le_bytes());
                Target { key: id, cluster, place: Some(place) }
            }
        }
    }

    /// The stored state of a target's breaker: for a keyed one, only from a slot it owns.
    fn stored(&self, t: &Target) -> Option<Breaker> {
        match &t.place {
            None => host::shared_get(&t.key).ok().flatten().and_then(|(v, _)| Breaker::decode(&v)),
            Some(p) => shared::read_owned(p, |slot| t.slot_key(slot)).ok().flatten().and_then(|v| Breaker::decode(&v)),
        }
    }

    /// Whether the target's breaker is closed with no failure counted (this worker's copy,
    /// re-read after any change): the state in which a request or a success changes nothing.
    fn idle(&self, epoch: u32, t: &Target) -> (bool, bool) {
        let verdict = |b: Option<&Breaker>| {
            let closed = b.is_none_or(|b| b.phase == Phase::Closed);
            (closed, closed && b.is_none_or(|b| b.consecutive == 0))
        };
        self.copies.with(epoch, Copies::clear, |copies| {
            if let Some(b) = copies.get(&t.key) {
                return verdict(b.as_ref());
            }
            let b = self.stored(t);
            let v = verdict(b.as_ref());
            copies.insert(t.key.clone(), b);
            v
        })
    }

    /// Logs and counts a transition once (only the worker whose update caused it sees it);
    /// `slow`: it opened on the share of slow calls.
    fn report(&self, cluster: &str, t: Transition, slow: bool) {
        let m = self.metrics.get(cluster);
        m.state.set(t.to.gauge());
        match t.to {
            Phase::Open => m.opened.inc(),
            Phase::HalfOpen => m.half_opened.inc(),
            Phase::Closed => m.closed.inc(),
        }
        let level = if t.to == Phase::Open { Level::Warn } else { Level::Info };
        let why = if slow { " (slow calls: the upstream answers too late)" } else { "" };
        host::log_with(level, || format!("circuit_breaker: {cluster}: {} -> {}{why}", t.from.name(), t.to.name()));
    }

    /// Applies `f` to the target's breaker with compare-and-swap; writes (and bumps the version)
    /// only when the state changed. A keyed breaker lives in a slot its key owns, claimed on its
    /// first write: [`Owned::Full`] when every slot it may use holds another key's live breaker.
    fn update<T>(&self, t: &Target, now: u64, f: impl Fn(&mut Breaker) -> T) -> Result<Owned<T>, UpdateError> {
        let mut wrote = false;
        let step = |cur: Option<&[u8]>| {
            let old = cur.and_then(Breaker::decode).unwrap_or_default();
            let mut next = old.clone();
            let out = f(&mut next);
            let changed = !next.same_as(&old);
            (changed.then(|| next.encode()), (out, changed))
        };
        let r = match &t.place {
            None => shared::update(&t.key, CAS_ATTEMPTS, step).map(Owned::Done),
            Some(p) => {
                let policy = self.policy(&t.cluster);
                let at_rest = |other: &[u8]| Breaker::decode(other).is_none_or(|b| b.at_rest(policy, now));
                shared::update_owned(p, |slot| t.slot_key(slot), CAS_ATTEMPTS, at_rest, step)
            }
        };
        let r = r.map(|o| match o {
            Owned::Done((out, changed)) => {
                wrote = changed;
                Owned::Done(out)
            }
            Owned::Full => Owned::Full,
        });
        if wrote {
            self.copies.changed();
        }
        r
    }

    fn policy(&self, cluster: &str) -> &Policy {
        self.config.policy(cluster)
    }
}

/// The breaker a stream belongs to.
#[derive(Debug, Clone)]
struct Target {
    cluster: String,
    /// The shared-data key (`ug.cb2.<cluster>`), or for a keyed breaker the id of its copy.
    key: Vec<u8>,
    /// Where a keyed breaker may live (`key_header`).
    place: Option<Place>,
}

impl Target {
    /// The shared-data key of a keyed breaker's slot: `ug.cb2.<cluster>.<slot>`.
    fn slot_key(&self, slot: u32) -> Vec<u8> {
        format!("ug.cb2.{}.{slot}", self.cluster).into_bytes()
    }
}

/// Per stream.
#[derive(Debug, Default)]
pub struct BreakerStream {
    target: Option<Target>,
    probe: Option<u32>,
    recorded: bool,
    /// When the request went on (host clock), where slow calls are counted.
    sent_at: Option<u64>,
}

impl Stage for CircuitBreaker {
    type Stream = BreakerStream;

    fn request(&self, st: &mut BreakerStream, cx: &mut Cx<'_>) -> Flow {
        // The routed cluster: chosen by the router stage of this module, else Envoy's route (after
        // an earlier filter rewrote the routing header and cleared the route cache, Envoy has not
        // re-resolved it yet, and the header is the answer). Unknown names create no state: only
        // failures and transitions write, and a missing cluster is Envoy's answer (NC), not an
        // upstream failure.
        let cluster = match cx.facts().cluster.clone() {
            Some(c) => c,
            None => {
                let from_route = cx.property_text(path::CLUSTER_NAME).filter(|c| !c.is_empty());
                match from_route.or_else(|| {
                    cx.request_header(&self.config.cluster_header).map(|b| String::from_utf8_lossy(b).into_owned())
                }) {
                    Some(c) if !c.is_empty() => c,
                    _ => return Flow::Continue,
                }
            }
        };
        let target = match &self.config.key_header {
            None => self.target(cluster, None),
            Some(h) => {
                let value = cx.request_header(h).unwrap_or_default().to_vec();
                self.target(cluster, Some(&value))
            }
        };
        let policy = self.policy(&target.cluster);
        if policy.failure.slow.is_some() {
            // The module times the call itself: from here to the response headers.
            st.sent_at = Some(cx.now());
        }
        // Fast path: a closed (or never used) circuit needs no write.
        let epoch = cx.epoch();
        if self.idle(epoch, &target).0 {
            st.target = Some(target);
            return Flow::Continue;
        }
        let now = cx.now();
        let outcome = self.update(&target, now, |b| {
            let (admission, transition) = b.admit(policy, now);
            (admission, transition, (b.phase, b.cause))
        });
        let cluster = target.cluster.clone();
        let (admission, transition, (phase, cause)) = match outcome {
            Ok(Owned::Done(v)) => v,
            // Unreachable in practice (idle found no breaker of its own for this key, so admit
            // sees a closed one and writes nothing); admitted like a closed circuit.
            Ok(Owned::Full) => {
                self.metrics.get(&cluster).table_full.inc();
                (Admission::Allow, None, (Phase::Closed, TripCause::Failures))
            }
            Err(e) => {
                self.metrics.get(&cluster).contention.inc();
                if let UpdateError::Host(s) = e {
                    host::log(Level::Warn, &format!("circuit_breaker: shared data unavailable ({s:?})"));
                }
                let (admission, phase) = Admission::CONTENDED;
                (admission, None, (phase, TripCause::Failures))
            }
        };
        if let Some(t) = transition {
            self.report(&cluster, t, false);
        }
        match admission {
            Admission::Allow => {
                st.target = Some(target);
                Flow::Continue
            }
            Admission::Probe(id) => {
                let fields = Fields::new().add("cluster", &cluster).add("state", phase.name()).add("decision", "probe");
                cx.publish(key::CIRCUIT_BREAKER, &fields);
                st.probe = Some(id);
                st.target = Some(target);
                Flow::Continue
            }
            Admission::Reject { retry_after_ns } => {
                self.metrics.get(&cluster).rejected.inc();
                let slow = cause == TripCause::Slow;
                let fields =
                    Fields::new().add("cluster", &cluster).add("state", phase.name()).add("decision", "refused");
                cx.publish(key::CIRCUIT_BREAKER, &if slow { fields.add("cause", "slow") } else { fields });
                let retry_after = retry_after_secs(retry_after_ns).to_string();
                // The body never names the cluster: any client may receive it, and cluster names
                // are internal (the diagnostics stage shows them to trusted clients).
                let (details, why) =
                    if slow { (details::UPSTREAM_SLOW, " (upstream slow)") } else { (details::CIRCUIT_OPEN, "") };
                let mut reply = LocalReply::text(
                    self.config.status,
                    details,
                    format!("circuit {}{why}: retry after {retry_after} s\n", phase.name()),
                )
                .header("retry-after", retry_after.as_bytes())
                .header("x-upstream-guard-circuit", phase.name());
                reply.grpc_status = Some(self.config.grpc_status);
                Flow::Reply(reply)
            }
        }
    }

    fn response(&self, st: &mut BreakerStream, cx: &mut Cx<'_>) {
        let Some(target) = st.target.clone() else { return };
        if cx.facts().replied.is_some() {
            // A later stage of this module refused the request: it never reached the upstream.
            return;
        }
        let policy = self.policy(&target.cluster);
        let elapsed = st.sent_at.map(|at| cx.now().saturating_sub(at));
        let obs = cx.observation();
        let outcome = policy.outcome(&obs.view(), elapsed);
        st.recorded = true;
        let probe = st.probe;
        // A success on a closed circuit with nothing counted changes nothing: no write, and (with
        // the local copy current) no read of the state itself.
        if outcome == Outcome::Success && probe.is_none() && policy.failure.window_ns().is_none() {
            let epoch = cx.epoch();
            if self.idle(epoch, &target).1 {
                return;
            }
        }
        match outcome {
            Outcome::Failure => self.metrics.get(&target.cluster).failures.inc(),
            Outcome::Slow => self.metrics.get(&target.cluster).slow.inc(),
            Outcome::Success => {}
        }
        let now = cx.now();
        match self.update(&target, now, |b| b.record(policy, now, outcome, probe).map(|t| (t, b.cause))) {
            Ok(Owned::Done(Some((t, cause)))) => {
                // The response that moved the circuit says so in its access log line.
                let fields = Fields::new()
                    .add("cluster", &target.cluster)
                    .add("state", t.to.name())
                    .add("decision", t.decision());
                let slow = t.to == Phase::Open && cause == TripCause::Slow;
                cx.publish(key::CIRCUIT_BREAKER, &if slow { fields.add("cause", "slow") } else { fields });
                self.report(&target.cluster, t, slow)
            }
            Ok(Owned::Done(None)) => {}
            // Every slot this key may use holds another key's live breaker: this outcome is not
            // recorded (the circuit fails open), and never lands on another key's breaker.
            Ok(Owned::Full) => self.metrics.get(&target.cluster).table_full.inc(),
            Err(_) => self.metrics.get(&target.cluster).contention.inc(),
        }
    }

    fn log(&self, st: &mut BreakerStream, _cx: &mut Cx<'_>) {
        // A probe whose response never arrived (the client went away) gives its slot back now.
        let (Some(target), Some(id), false) = (st.target.as_ref(), st.probe, st.recorded) else { return };
        let _ = self.update(target, 0, |b| b.abandon(id));
    }

    fn request_headers_read(&self, out: &mut Vec<String>) {
        if let Some(h) = &self.config.key_header {
            out.push(h.clone());
        }
    }
}
