//! The rate limiter stage: keyed limits, exact across every worker of one Envoy, and global
//! limits counted for a whole fleet by a rate limit service.
//!
//! Each (rule, key) bucket is one shared-data value advanced with compare-and-swap, so N workers
//! see one bucket, not N. A refusal is a local reply (429 by default) with `Retry-After`, the
//! RateLimit fields and `response.code_details = upstream_guard.rate_limited`; gRPC clients get
//! RESOURCE_EXHAUSTED by default, which they do not retry at once the way they retry UNAVAILABLE.
//!
//! A global rule asks the rate limit service of its `service` section instead
//! (`ShouldRateLimit`, one call per service per request, a descriptor per rule) and holds the
//! request until the answer ([`Flow::Wait`]; the glue resumes the stream). Everything the answer
//! means is decided in the core (`upstream_guard::ratelimit::global`): this stage sends bytes,
//! hands the answer over, and applies what comes back, or the rule's `on_service_error` when
//! nothing usable comes back. Which stream waits for which call is a map owned by the stage, each
//! entry removed when its answer arrives or when its stream ends (the call is then cancelled),
//! so it never holds more than the requests waiting right now, and at most [`MAX_WAITING`].
//! A configuration without global rules pays nothing for any of this: no extra host call.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use upstream_guard::access_log::{key, Fields};
use upstream_guard::details;
use upstream_guard::hash::Secret;
use upstream_guard::peer::{client_addr, ClientAddr, Prefixes};
use upstream_guard::ratelimit::global::{self, ServiceError};
use upstream_guard::ratelimit::lease::{self, Leases};
use upstream_guard::ratelimit::rls::{self, RateLimitDescriptor};
use upstream_guard::ratelimit::{
    ratelimit_field, retry_after_secs, ClientIp, Decision, GlobalStatus, OnServiceError, Outcome, OverLimitMemo,
    RateLimitConfig, RequestView, Rule, State, Verdict,
};
use upstream_guard::slots::Place;
use upstream_guard_glue::shared::{self, Owned, UpdateError};
use upstream_guard_glue::{host, metrics, Counter, Cx, Event, Flow, Level, LocalReply, Stage, Tally};

/// Calls one worker lets wait at once; past that, a global rule acts as if its service failed.
pub const MAX_WAITING: usize = 10_000;
/// At most one warning per worker this often (nanoseconds) about a failing service.
const WARN_EVERY_NS: u64 = 10_000_000_000;

/// Counters of one rule.
struct RuleMetrics {
    /// Admissions (the common path: a [`Tally`]).
    allowed: Tally,
    limited: Counter,
    shadow_limited: Counter,
    contention: Counter,
    /// Requests whose key found every slot it may use held by other keys still in use
    /// (`on_contention` decided them).
    table_full: Counter,
    /// Defined for global rules only.
    global: Option<GlobalMetrics>,
}

/// Counters of a global rule: what the service said, and what happened when it said nothing.
struct GlobalMetrics {
    ok: Counter,
    over_limit: Counter,
    error: Counter,
    cached_over_limit: Counter,
    fallback: Counter,
    error_allowed: Counter,
    error_denied: Counter,
}

/// Which stream waits for which gRPC call (token → stream context id).
type Waiters = Rc<RefCell<BTreeMap<u32, u32>>>;

/// The stage, configured.
pub struct RateLimiter {
    config: RateLimitConfig,
    metrics: Vec<RuleMetrics>,
    /// Requests keyed on an address Envoy took from `x-forwarded-for`.
    from_header: Counter,
    warned: Cell<bool>,
    waiters: Waiters,
    /// When this worker last warned about a failing service.
    warned_service_at: Cell<Option<u64>>,
    /// The slot-hash secret of this process ([`shared::secret`]).
    secret: Secret,
    /// This worker's leases of tokens and memos of refusals ([`Leases`]).
    leases: RefCell<Leases>,
}

impl RateLimiter {
    /// Defines the metrics.
    pub fn new(config: RateLimitConfig) -> RateLimiter {
        let metrics = config
            .rules
            .iter()
            .map(|r| {
                let base = format!("upstream_guard.ratelimit.{}", metrics::segment(&r.name));
                let counter = |name: &str| Counter::define(&format!("{base}.{name}"));
                RuleMetrics {
                    allowed: Tally::define(&format!("{base}.allowed")),
                    limited: counter("limited"),
                    shadow_limited: counter("shadow_limited"),
                    contention: counter("contention"),
                    table_full: counter("table_full"),
                    global: r.global.as_ref().map(|_| GlobalMetrics {
                        ok: counter("global_ok"),
                        over_limit: counter("global_over_limit"),
                        error: counter("global_error"),
                        cached_over_limit: counter("global_cached_over_limit"),
                        fallback: counter("fallback"),
                        error_allowed: counter("error_allowed"),
                        error_denied: counter("error_denied"),
                    }),
                }
            })
            .collect();
        let from_header = Counter::define("upstream_guard.ratelimit.client_ip_from_header");
        RateLimiter {
            secret: shared::secret(),
            config,
            metrics,
            from_header,
            warned: Cell::new(false),
            waiters: Rc::default(),
            warned_service_at: Cell::new(None),
            leases: RefCell::new(Leases::new()),
        }
    }

    /// Counts a header-derived client address, and says once what decides it.
    fn note_forwarded(&self) {
        self.from_header.inc();
        if !self.warned.replace(true) {
            host::log(
                Level::Warn,
                "rate_limiter: a client address came from x-forwarded-for (source.address has port 0). Either the \
                 listener's HttpConnectionManager has use_remote_address: false (the default: Envoy believes the \
                 header's last entry, which the client can write; set use_remote_address: true on an edge \
                 listener, or client_ip.require_peer: true to never key on such addresses), or it trusts \
                 xff_num_trusted_hops: N proxies in front (then key on the entry they appended with \
                 client_ip.trusted_hops: N + 1, counting the entry Envoy appends itself). Counted in \
                 upstream_guard.ratelimit.client_ip_from_header.",
            );
        }
    }

    /// A refusal by rule `rule`; `policy` is the limit its service named (global rules).
    fn reply(&self, rule: usize, retry_after_ns: u64, policy: Option<&str>) -> LocalReply {
        let r = &self.config.rules[rule];
        let retry_after = retry_after_secs(retry_after_ns).to_string();
        let mut reply = LocalReply::text(
            self.config.status,
            details::RATE_LIMITED,
            format!("rate limited by rule {:?}: retry after {retry_after} s\n", r.name),
        )
        .header("retry-after", retry_after.as_bytes())
        .header("ratelimit-policy", policy.unwrap_or(&r.policy).as_bytes())
        .header("ratelimit", ratelimit_field(&r.quoted, 0, retry_after_ns).as_bytes());
        reply.grpc_status = Some(self.config.grpc_status);
        reply
    }

    /// The refusal of a global rule whose service could not be asked (`on_service_error: deny`).
    fn unavailable(&self, rule: &Rule) -> LocalReply {
        let status = rule.global.as_ref().map_or(503, |g| g.error_status);
        let mut reply = LocalReply::text(
            status,
            details::RATE_LIMIT_SERVICE_UNAVAILABLE,
            format!("the rate limit service of rule {:?} is unavailable: retry later\n", rule.name),
        )
        .header("retry-after", b"1".to_vec());
        // UNAVAILABLE: the honest gRPC status for an outage; clients retry it with their backoff.
        reply.grpc_status = Some(14);
        reply
    }

    /// Takes a token for rule `index` from the key's own bucket (a slot it owns in the rule's
    /// share of the table: never another key's bucket): from this worker's lease when it holds
    /// one, else from the shared bucket, leasing more when the key is hot here ([`lease`]).
    fn local(&self, index: usize, rule: &Rule, m: &RuleMetrics, place: &Place, now: u64) -> Decision {
        let config = &self.config;
        let id = u32::try_from(index).unwrap_or(u32::MAX);
        let Ok(mut leases) = self.leases.try_borrow_mut() else { return config.on_contention.decision(&rule.limit) };
        if let Some(decision) = leases.local(id, place.fingerprint, &rule.limit, now) {
            return decision;
        }
        let want = leases.want(id, place.fingerprint, now);
        let outcome = shared::update_owned(
            place,
            |slot| slot_key(b"ug.rl.", slot),
            config.cas_retries,
            |other| State::decode(other).is_none_or(|st| st.at_rest(&rule.limit, now)),
            |cur| {
                let state = cur.and_then(State::decode);
                let (next, grant) = lease::take(rule.algorithm, &rule.limit, state, now, want);
                (grant.decision.allowed().then(|| next.encode()), grant)
            },
        );
        let grant = match &outcome {
            Ok(Owned::Done(grant)) => Some(grant),
            _ => None,
        };
        leases.settle(id, place.fingerprint, grant, now);
        drop(leases);
        let outcome = match outcome {
            Ok(Owned::Done(grant)) => return grant.decision,
            Ok(Owned::Full) => {
                m.table_full.inc();
                return config.on_contention.decision(&rule.limit);
            }
            Err(e) => Err(e),
        };
        outcome.unwrap_or_else(|e| {
            m.contention.inc();
            if let UpdateError::Host(status) = e {
                host::log(Level::Warn, &format!("rate_limiter: shared data unavailable ({status:?})"));
            }
            config.on_contention.decision(&rule.limit)
        })
    }

    /// The pre-check of a global rule: a refusal when the service refused this key until a time
    /// still to come (see [`OverLimitMemo`]).
    fn precheck(&self, place: &Place, now: u64) -> Option<Decision> {
        let stored = host::shared_get(&slot_key(b"ug.rlg.", place.home())).ok().flatten();
        OverLimitMemo::check(stored.as_ref().map(|(v, _)| v.as_slice()), place.fingerprint, now)
    }

    /// Sends one call per service for the global rules in `asks`, and waits; or concludes at once
    /// when no call could be sent.
    fn ask(&self, st: &mut RateLimitStream, cx: &mut Cx<'_>, verdict: Verdict, asks: Vec<Ask>, now: u64) -> Flow {
        let mut waiting = Waiting {
            waiters: self.waiters.clone(),
            sent_at: now,
            verdict,
            calls: Vec::new(),
            from: Default::default(),
        };
        let mut groups: Vec<(usize, Vec<Part>, Vec<RateLimitDescriptor>)> = Vec::new();
        for Ask { part, descriptor } in asks {
            let Some(target) = self.config.rules.get(part.rule).and_then(|r| r.global.as_ref()).map(|g| g.target)
            else {
                continue;
            };
            match groups.iter_mut().find(|(t, _, _)| *t == target) {
                Some((_, parts, descriptors)) => {
                    parts.push(part);
                    descriptors.push(descriptor);
                }
                None => groups.push((target, vec![part], vec![descriptor])),
            }
        }
        for (target, parts, descriptors) in groups {
            let Some(t) = self.config.targets.get(target) else { continue };
            let room = self.waiters.try_borrow().is_ok_and(|w| w.len() < MAX_WAITING);
            let message = global::request(&t.domain, descriptors);
            let sent = room
                .then(|| host::grpc_call(&t.grpc_service, rls::SERVICE, rls::METHOD, &[], &message, t.timeout_ms).ok())
                .flatten();
            // A call nobody is registered for would never resume its stream: cancel it instead.
            let registered = sent.filter(|token| match self.waiters.try_borrow_mut() {
                Ok(mut w) => {
                    w.insert(*token, cx.id);
                    true
                }
                Err(_) => {
                    let _ = host::grpc_cancel(*token);
                    false
                }
            });
            match registered {
                Some(token) => waiting.calls.push(Call { token: Some(token), parts }),
                None => {
                    for part in parts {
                        self.failed(&mut waiting, part, ServiceError::NotSent, now);
                    }
                }
            }
        }
        if waiting.calls.iter().any(|c| c.token.is_some()) {
            st.waiting = Some(Box::new(waiting));
            return Flow::Wait;
        }
        self.finish(st, cx, waiting)
    }

    /// Applies the service's verdict on one rule.
    fn answered(&self, waiting: &mut Waiting, part: Part, status: GlobalStatus) {
        let (Some(rule), Some(m)) = (self.config.rules.get(part.rule), self.metrics.get(part.rule)) else { return };
        let (Some(g), Some(gm)) = (rule.global.as_ref(), m.global.as_ref()) else { return };
        if status.decision.allowed() {
            gm.ok.inc();
            m.allowed.inc();
        } else {
            gm.over_limit.inc();
            if let Some(memo) =
                OverLimitMemo::after(&status, part.place.fingerprint, waiting.sent_at, g.cache_over_limit_ns)
            {
                let _ = host::shared_set(&slot_key(b"ug.rlg.", part.place.home()), &memo.encode(), 0);
            }
        }
        if let Some(policy) = status.policy {
            waiting.from.policies.push((part.rule, policy));
        }
        if status.reported {
            waiting.verdict = waiting.verdict.add(part.rule, status.decision);
        }
    }

    /// Applies `on_service_error` to one rule whose service gave no verdict.
    fn failed(&self, waiting: &mut Waiting, part: Part, error: ServiceError, now: u64) {
        let (Some(rule), Some(m)) = (self.config.rules.get(part.rule), self.metrics.get(part.rule)) else { return };
        let (Some(g), Some(gm)) = (rule.global.as_ref(), m.global.as_ref()) else { return };
        gm.error.inc();
        self.warn_service(rule, g.on_error, error, now);
        match g.on_error {
            OnServiceError::Local => {
                gm.fallback.inc();
                let decision = self.local(part.rule, rule, m, &part.place, now);
                if decision.allowed() {
                    m.allowed.inc();
                }
                waiting.verdict = waiting.verdict.add(part.rule, decision);
            }
            OnServiceError::Allow => {
                gm.error_allowed.inc();
                m.allowed.inc();
            }
            OnServiceError::Deny => {
                gm.error_denied.inc();
                waiting.from.denied.get_or_insert(part.rule);
            }
        }
    }

    /// Logs a failing service: a warning at most every [`WARN_EVERY_NS`] per worker, debug lines
    /// in between.
    fn warn_service(&self, rule: &Rule, on_error: OnServiceError, error: ServiceError, now: u64) {
        let due = match self.warned_service_at.get() {
            Some(at) => now.saturating_sub(at) >= WARN_EVERY_NS,
            None => true,
        };
        let level = if due { Level::Warn } else { Level::Debug };
        if due {
            self.warned_service_at.set(Some(now));
        }
        host::log_with(level, || {
            let cluster = rule
                .global
                .as_ref()
                .and_then(|g| self.config.targets.get(g.target))
                .map(|t| t.cluster.as_str())
                .unwrap_or_default();
            format!(
                "rate_limiter: rule {:?}: the rate limit service (cluster {cluster:?}) gave no verdict: {error}; \
                 on_service_error {on_error:?} applies (counted in upstream_guard.ratelimit.<rule>.global_error)",
                rule.name
            )
        });
    }

    /// Every call answered: the request's verdict.
    fn finish(&self, st: &mut RateLimitStream, cx: &mut Cx<'_>, mut waiting: Waiting) -> Flow {
        let from = std::mem::take(&mut waiting.from);
        self.conclude(st, cx, waiting.verdict, Some(from))
    }

    /// Acts on the verdict: continue (with the RateLimit fields for the response) or refuse;
    /// `from` carries what a rate limit service added (global rules only).
    fn conclude(&self, st: &mut RateLimitStream, cx: &mut Cx<'_>, verdict: Verdict, from: Option<FromService>) -> Flow {
        let config = &self.config;
        match verdict.outcome(config.mode, from.as_ref().and_then(|f| f.denied)) {
            Outcome::Unavailable { rule } => {
                let Some(r) = config.rules.get(rule) else { return Flow::Continue };
                cx.publish(
                    key::RATE_LIMITER,
                    &Fields::new().add("rule", &r.name).add("decision", "service_unavailable"),
                );
                Flow::Reply(self.unavailable(r))
            }
            Outcome::ShadowLimit { rule } => {
                let (Some(r), Some(m)) = (config.rules.get(rule), self.metrics.get(rule)) else {
                    return Flow::Continue;
                };
                cx.publish(key::RATE_LIMITER, &Fields::new().add("rule", &r.name).add("decision", "shadow_limited"));
                m.shadow_limited.inc();
                host::log_with(Level::Info, || {
                    format!("rate_limiter: shadow mode: rule {:?} would have refused this request", r.name)
                });
                Flow::Continue
            }
            Outcome::Limit { rule, retry_after_ns } => {
                let (Some(r), Some(m)) = (config.rules.get(rule), self.metrics.get(rule)) else {
                    return Flow::Continue;
                };
                m.limited.inc();
                let fields = Fields::new()
                    .add("rule", &r.name)
                    .add("decision", "limited")
                    .num("retry_after", retry_after_secs(retry_after_ns));
                cx.publish(key::RATE_LIMITER, &fields);
                let mut reply = self.reply(rule, retry_after_ns, from.as_ref().and_then(|f| f.policy(rule)));
                for (name, value) in from.iter().flat_map(|f| &f.response_headers) {
                    reply.set_header(name, value.clone());
                }
                Flow::Reply(reply)
            }
            Outcome::Admit { shadow_unavailable } => {
                if let Some(r) = shadow_unavailable.and_then(|i| config.rules.get(i)) {
                    cx.publish(
                        key::RATE_LIMITER,
                        &Fields::new().add("rule", &r.name).add("decision", "shadow_unavailable"),
                    );
                    host::log_with(Level::Info, || {
                        format!(
                            "rate_limiter: shadow mode: rule {:?} would have refused this request (service unavailable)",
                            r.name
                        )
                    });
                }
                if let Verdict::Admitted { rule, remaining, reset_ns } = verdict {
                    // A local admission says nothing `%RESPONSE_CODE%` does not: written only when
                    // asked for (`log_allowed`), or when a global rule's service answered.
                    let say = config.log_allowed || from.is_some();
                    if let Some(r) = config.rules.get(rule).filter(|_| say) {
                        let fields =
                            Fields::new().add("rule", &r.name).add("decision", "allowed").num("remaining", remaining);
                        cx.publish(key::RATE_LIMITER, &fields);
                    }
                    if config.response_headers {
                        st.fields = Some((rule, remaining, reset_ns));
                    }
                }
                if let Some(f) = from {
                    for (name, value) in &f.request_headers {
                        cx.set_request_header(name, value);
                    }
                    let policy = match verdict {
                        Verdict::Admitted { rule, .. } => f.policy(rule).map(str::to_string),
                        _ => None,
                    };
                    if policy.is_some() || !f.response_headers.is_empty() {
                        st.extra = Some(Box::new(Extra { policy, headers: f.response_headers }));
                    }
                }
                Flow::Continue
            }
        }
    }
}

/// A global rule's bucket: the rule, and where the key's state lives.
#[derive(Debug, Clone, Copy)]
struct Part {
    rule: usize,
    place: Place,
}

/// A global rule to ask about, with its descriptor.
struct Ask {
    part: Part,
    descriptor: RateLimitDescriptor,
}

/// One call to a service: its token while unanswered, and the rules it asks about, in order.
struct Call {
    token: Option<u32>,
    parts: Vec<Part>,
}

/// What a service added to the answer of one request.
#[derive(Debug, Default)]
struct FromService {
    /// `RateLimit-Policy` items of the limits the service named, per rule.
    policies: Vec<(usize, String)>,
    response_headers: Vec<(String, Vec<u8>)>,
    request_headers: Vec<(String, Vec<u8>)>,
    /// The first rule refused by `on_service_error: deny`.
    denied: Option<usize>,
}

impl FromService {
    /// The `RateLimit-Policy` item the service named for `rule`.
    fn policy(&self, rule: usize) -> Option<&str> {
        self.policies.iter().rev().find(|(r, _)| *r == rule).map(|(_, p)| p.as_str())
    }
}

/// A request waiting for its rate limit services. Dropped with its stream: any call still out
/// is forgotten and cancelled, so the stage's map never keeps an entry for a stream that ended.
struct Waiting {
    waiters: Waiters,
    /// When the calls were sent (host clock).
    sent_at: u64,
    /// The verdict of every rule decided so far.
    verdict: Verdict,
    calls: Vec<Call>,
    from: FromService,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        for token in self.calls.iter().filter_map(|c| c.token) {
            if let Ok(mut w) = self.waiters.try_borrow_mut() {
                w.remove(&token);
            }
            let _ = host::grpc_cancel(token);
        }
    }
}

/// What an admitted request's response gets from its rate limit service.
#[derive(Debug)]
struct Extra {
    /// `RateLimit-Policy` of the limit the service named for the reported rule.
    policy: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Per stream: the RateLimit fields of an admitted request, for its response; while a global
/// rule waits, the calls out; after, what its service added.
#[derive(Default)]
pub struct RateLimitStream {
    fields: Option<(usize, u64, u64)>,
    waiting: Option<Box<Waiting>>,
    extra: Option<Box<Extra>>,
}

/// The request, read through the stream's facts on demand (also keys the LLM stage's budgets).
pub(crate) struct View<'c, 'a> {
    pub cx: &'c mut Cx<'a>,
    pub client_ip: &'c ClientIp,
    pub client: Option<ClientAddr>,
}

impl RequestView for View<'_, '_> {
    fn path(&mut self) -> Option<&[u8]> {
        self.cx.request_header(":path")
    }
    fn method(&mut self) -> Option<&[u8]> {
        self.cx.request_header(":method")
    }
    fn header(&mut self, name: &str) -> Option<&[u8]> {
        self.cx.request_header(name)
    }
    fn client(&mut self) -> ClientAddr {
        if let Some(c) = self.client {
            return c;
        }
        let ip = self.client_ip;
        let peer = self.cx.peer();
        let xff = if ip.trusted_hops > 0 { self.cx.request_header(&ip.header).map(<[u8]>::to_vec) } else { None };
        let c = client_addr(peer, xff.as_deref(), ip.trusted_hops, ip.require_peer);
        self.client = Some(c);
        c
    }
    fn prefixes(&self) -> Prefixes {
        self.client_ip.prefixes()
    }
}

/// The shared-data key of a slot: `ug.rl.<slot>` (a bucket), `ug.rlg.<slot>` (a global rule's
/// memo of a refusal).
fn slot_key(prefix: &[u8], slot: u32) -> Vec<u8> {
    let mut key = prefix.to_vec();
    let mut digits = [0u8; 10];
    let (mut n, mut i) = (slot, digits.len());
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    key.extend_from_slice(&digits[i..]);
    key
}

impl Stage for RateLimiter {
    type Stream = RateLimitStream;

    fn request(&self, st: &mut RateLimitStream, cx: &mut Cx<'_>) -> Flow {
        let config = &self.config;
        let now = cx.now();
        let mut view = View { cx: &mut *cx, client_ip: &config.client_ip, client: None };
        let matching = config.matching(&mut view);
        let mut verdict = Verdict::Pass;
        let mut asks: Vec<Ask> = Vec::new();
        for i in matching {
            let (Some(rule), Some(m)) = (config.rules.get(i), self.metrics.get(i)) else { continue };
            let key = rule.key(&mut view);
            let place = rule.place(&self.secret, &key);
            if let (Some(g), Some(gm)) = (&rule.global, &m.global) {
                if g.cache_over_limit_ns > 0 {
                    if let Some(refused) = self.precheck(&place, now) {
                        gm.cached_over_limit.inc();
                        verdict = verdict.add(i, refused);
                        continue;
                    }
                }
                let descriptor = g.descriptor(&rule.key, &mut view);
                asks.push(Ask { part: Part { rule: i, place }, descriptor });
                continue;
            }
            let decision = self.local(i, rule, m, &place, now);
            if decision.allowed() {
                m.allowed.inc();
            }
            verdict = verdict.add(i, decision);
        }
        if view.client.is_some_and(|c| c.from_client_header()) {
            self.note_forwarded();
        }
        // A request another rule already refused costs the service nothing.
        if asks.is_empty() || matches!(verdict, Verdict::Refused { .. }) {
            return self.conclude(st, cx, verdict, None);
        }
        self.ask(st, cx, verdict, asks, now)
    }

    fn resume(&self, st: &mut RateLimitStream, cx: &mut Cx<'_>, event: &Event<'_>) -> Flow {
        let Event::Grpc { token, status, message } = *event;
        let Some(mut waiting) = st.waiting.take() else { return Flow::Continue };
        let Some(call) = waiting.calls.iter_mut().find(|c| c.token == Some(token)) else {
            st.waiting = Some(waiting);
            return Flow::Wait;
        };
        call.token = None;
        let parts = std::mem::take(&mut call.parts);
        if let Ok(mut w) = self.waiters.try_borrow_mut() {
            w.remove(&token);
        }
        let now = cx.now();
        let rules: Vec<&Rule> = parts.iter().filter_map(|p| self.config.rules.get(p.rule)).collect();
        let answer = match status {
            0 => global::interpret(message, &rules),
            s => Err(ServiceError::Grpc(s)),
        };
        match answer {
            Ok(answer) => {
                for (part, status) in parts.iter().zip(answer.statuses) {
                    self.answered(&mut waiting, *part, status);
                }
                waiting.from.response_headers.extend(answer.response_headers);
                waiting.from.request_headers.extend(answer.request_headers);
            }
            Err(e) => {
                for part in parts {
                    self.failed(&mut waiting, part, e, now);
                }
            }
        }
        if waiting.calls.iter().any(|c| c.token.is_some()) {
            st.waiting = Some(waiting);
            return Flow::Wait;
        }
        self.finish(st, cx, *waiting)
    }

    fn grpc_owner(&self, token: u32) -> Option<u32> {
        self.waiters.try_borrow().ok().and_then(|w| w.get(&token).copied())
    }

    fn response(&self, st: &mut RateLimitStream, cx: &mut Cx<'_>) {
        let extra = st.extra.take();
        if let Some((rule, remaining, reset_ns)) = st.fields.take() {
            if let Some(r) = self.config.rules.get(rule) {
                let policy = extra.as_ref().and_then(|e| e.policy.as_deref()).unwrap_or(&r.policy);
                cx.set_response_header("ratelimit-policy", policy.as_bytes());
                cx.set_response_header("ratelimit", ratelimit_field(&r.quoted, remaining, reset_ns).as_bytes());
            }
        }
        for (name, value) in extra.iter().flat_map(|e| &e.headers) {
            cx.set_response_header(name, value);
        }
    }

    fn request_headers_read(&self, out: &mut Vec<String>) {
        out.extend(self.config.header_names().into_iter().map(str::to_string));
    }
}
