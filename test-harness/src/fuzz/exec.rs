//! Runs a case on a fresh host and checks the invariants after each step.
//!
//! The checks rebuild what the module should have decided from the module's own configuration
//! parsed by the core (which rules match a request, which clients are trusted, each cluster's
//! `max_probes`), and compare it with what the module did, as seen from outside: the headers and
//! bodies it wrote, its counters, and every shared-data value it left.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use proxy_wasm_test_host::{level, Host, HostError, HttpStream, LocalResponse, Plugin};
use serde_json::Value;
use upstream_guard::breaker::{Breaker, BreakerConfig, Phase};
use upstream_guard::diagnose::{Cause, DiagnosticsConfig, Expose};
use upstream_guard::hash::Secret;
use upstream_guard::health::{Health, HealthConfig, Lease};
use upstream_guard::llm::{Balance, LlmConfig};
use upstream_guard::peer::{client_addr, Peer, Trust};
use upstream_guard::ratelimit::{Algorithm, FixedRequest, RateLimitConfig, State};
use upstream_guard::slots::Holder;

use super::configs::{
    section, BREAKER_SLOTS, CHECKED_UPSTREAMS, DEBUG_TOKEN, KNOWN_CLUSTERS, LLM_MODELS, LLM_PROVIDERS, LLM_TOKENS,
    UPSTREAMS,
};
use super::gen::{Answer, Case, Op, Prop, Req, Resp, B};
use super::Target;

/// What kind of invariant broke (shrinking keeps a candidate only if it fails the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The module trapped.
    Trap,
    /// A panic (or another critical line) was logged.
    Panic,
    /// The module refused its configuration, or the harness was misused.
    Host,
    /// A diagnosis header or body is malformed, or shows what the client may not see.
    Diagnosis,
    /// A reply body names an upstream cluster to a client that may not see it.
    Leak,
    /// The rate limiter admitted more than its limit plus burst in a window.
    Limit,
    /// The rate limiter's stored bucket is not what its decisions imply.
    Model,
    /// A breaker does not decode, or has more probes in flight than allowed.
    Breaker,
    /// A request changed the state of a key other than its own.
    Owner,
    /// Shared data holds a key the module may not write, or a value that does not decode.
    Keys,
    /// More callouts in flight than upstreams with checks.
    Callouts,
    /// The debug token appeared in a log line.
    Secret,
    /// The llm stage routed a model it does not serve, or its pauses or budgets left their bounds.
    Llm,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    /// At which step (index into the sequence that ran).
    pub step: usize,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at step {}: {}", self.kind, self.step, self.message)
    }
}

/// What a passing case did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub callbacks: u64,
    pub steps: u64,
    pub requests: u64,
    pub local_replies: u64,
    pub diagnoses: u64,
    pub admissions: u64,
    /// Circuits that opened, went half-open, closed (summed over clusters).
    pub opened: u64,
    pub half_opened: u64,
    pub closed: u64,
    /// Health checks answered, passive ejections.
    pub checks: u64,
    pub ejections: u64,
    /// Rate-limit updates that lost every compare-and-swap.
    pub contention: u64,
    /// Request bodies the llm stage read to their end, and those it routed to a provider.
    pub llm_bodies: u64,
    pub llm_routed: u64,
    /// Requests for a model the stage does not serve, refused locally.
    pub llm_unknown: u64,
}

/// Which optional callbacks a module exports (for counting callbacks delivered).
#[derive(Clone, Copy)]
struct Exports {
    body: bool,
    trailers: bool,
    log: bool,
    tick: bool,
    http: bool,
}

fn exports(target: Target) -> Exports {
    let all = Exports { body: true, trailers: true, log: true, tick: true, http: true };
    let none = Exports { body: false, trailers: false, log: false, tick: false, http: false };
    match target {
        Target::Diagnostics => Exports { tick: false, http: false, ..all },
        Target::RateLimiter => none,
        Target::CircuitBreaker => Exports { log: true, ..none },
        Target::HealthRouter => Exports { tick: true, http: true, ..none },
        Target::UpstreamGuard => all,
    }
}

/// Bytes as the diagnosis shows them: lossy UTF-8, with `%` and anything outside printable
/// ASCII percent-encoded as its UTF-8 bytes.
fn shown(b: &[u8]) -> String {
    let mut out = String::new();
    for c in String::from_utf8_lossy(b).chars() {
        if c != '%' && (' '..='~').contains(&c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    out
}

fn first<'a>(headers: &'a [(B, B)], name: &[u8]) -> Option<&'a [u8]> {
    headers.iter().find(|(k, _)| k.0 == name).map(|(_, v)| v.0.as_slice())
}

fn prop_bytes(p: &Prop) -> Option<Vec<u8>> {
    match p {
        Prop::Missing => None,
        Prop::Int(n) => Some(n.to_le_bytes().to_vec()),
        Prop::Bytes(b) => Some(b.0.clone()),
    }
}

fn peer_of(req: &Req) -> Option<Peer> {
    prop_bytes(&req.source).and_then(|b| Peer::parse(&b))
}

/// One token bucket (rule, key) as the checks see it: the bucket's clock and the admissions in
/// the last window, in bucket time.
#[derive(Default)]
struct Bucket {
    seen: u64,
    admitted: VecDeque<u64>,
}

/// What the checks know about the module's configuration.
struct Model {
    diagnostics: Option<DiagnosticsConfig>,
    limiter: Option<RateLimitConfig>,
    breaker: Option<BreakerConfig>,
    health: Option<HealthConfig>,
    llm: Option<LlmConfig>,
    buckets: HashMap<(usize, Vec<u8>), Bucket>,
    /// Every shared-data key the module may write (rate-limit slots are checked by number).
    breaker_keys: HashMap<Vec<u8>, String>,
    /// Upstream cluster names that must not appear in replies to untrusted clients.
    secret_names: Vec<&'static str>,
}

fn parse<T>(
    target: Target,
    config: &Value,
    policy: &str,
    f: fn(&[u8]) -> Result<T, upstream_guard::config::ConfigError>,
) -> Result<Option<T>, String> {
    match section(target, config, policy) {
        None => Ok(None),
        Some(v) => f(v.to_string().as_bytes()).map(Some).map_err(|e| format!("{policy}: {e}")),
    }
}

impl Model {
    fn new(case: &Case) -> Result<Model, String> {
        let (t, c) = (case.target, &case.config);
        let breaker: Option<BreakerConfig> = parse(t, c, "circuit_breaker", BreakerConfig::from_json)?;
        let mut breaker_keys = HashMap::new();
        if breaker.is_some() {
            let names = super::gen::cluster_pool()
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .chain(UPSTREAMS.iter().chain(&LLM_PROVIDERS).map(|s| s.to_string()))
                .filter(|n| !n.is_empty());
            for name in names {
                breaker_keys.insert(format!("ug.cb2.{name}").into_bytes(), name.clone());
                for slot in 0..BREAKER_SLOTS {
                    breaker_keys.insert(format!("ug.cb2.{name}.{slot}").into_bytes(), name.clone());
                }
            }
        }
        Ok(Model {
            diagnostics: parse(t, c, "diagnostics", DiagnosticsConfig::from_json)?,
            limiter: parse(t, c, "rate_limiter", RateLimitConfig::from_json)?,
            health: parse(t, c, "health_router", HealthConfig::from_json)?,
            llm: parse(t, c, "llm", LlmConfig::from_json)?,
            breaker,
            buckets: HashMap::new(),
            breaker_keys,
            secret_names: vec!["primary", "secondary", "ghost", "passive-only", "payments"],
        })
    }

    /// Whether the diagnostics stage may show this client upstream details.
    fn diag_trusted(&self, req: &Req) -> bool {
        let Some(d) = &self.diagnostics else { return false };
        match d.expose {
            Expose::Never => false,
            Expose::Always => true,
            Expose::Trusted => {
                let token = d
                    .debug
                    .as_ref()
                    .is_some_and(|u| first(&req.headers, u.header.as_bytes()) == Some(u.token.as_bytes()));
                token || (!d.trust.is_empty() && d.trust.trusts(peer_of(req)))
            }
        }
    }

    /// Whether the health router may show this client its upstreams.
    fn router_trusted(&self, req: &Req) -> bool {
        self.health.as_ref().is_some_and(|h| trusts(&h.trust, req))
    }
}

fn trusts(trust: &Trust, req: &Req) -> bool {
    trust.trusts(peer_of(req))
}

/// A live stream in a slot.
struct Live<'w> {
    s: HttpStream<'w>,
    req: Req,
    responded: bool,
    complete: bool,
    logged: bool,
    local: Option<LocalResponse>,
    /// The filter swapped the content type to JSON: the body must become its JSON diagnosis.
    json_body: bool,
    diag_trusted: bool,
    /// The request body delivered so far (up to [`BODY_KEPT`] bytes), and whether it ended.
    req_body: Vec<u8>,
    req_done: bool,
}

/// How much of a request body the checks keep (the stage reads at most `max_body_bytes`).
const BODY_KEPT: usize = 4 << 20;

/// The paths the llm stage claims by default (the query is not part of the match).
const LLM_PATHS: &[&[u8]] = &[b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings"];

struct Run<'h> {
    case: &'h Case,
    host: &'h Host,
    plugin: &'h Plugin,
    model: Model,
    exports: Exports,
    out: Outcome,
    step: usize,
    /// The latest time the clock showed (it also moves back): pauses are bounded from it.
    latest: u64,
    /// A provider's answer reported more tokens than fit a balance: budgets may sink that far.
    huge_usage: bool,
}

fn trap(step: usize, e: HostError) -> Failure {
    match e {
        HostError::Trap { message, log } => {
            let tail: Vec<String> = log.iter().rev().take(5).rev().map(|(l, m)| format!("[{l}] {m}")).collect();
            Failure { kind: Kind::Trap, step, message: format!("{message}\nlast log lines:\n{}", tail.join("\n")) }
        }
        other => Failure { kind: Kind::Host, step, message: other.to_string() },
    }
}

const DIAG_KEYS: &[&str] = &[
    "cause",
    "flags",
    "status",
    "cluster",
    "upstream",
    "attempts",
    "route",
    "details",
    "hint",
    "retry_after",
    "reasons",
];
const UNTRUSTED_KEYS: &[&str] = &["cause", "flags", "hint", "retry_after"];

impl<'h> Run<'h> {
    fn fail(&self, kind: Kind, message: impl Into<String>) -> Failure {
        Failure { kind, step: self.step, message: message.into() }
    }

    fn header_name(&self) -> Option<&str> {
        self.model.diagnostics.as_ref().map(|d| d.header.as_str())
    }

    /// A diagnosis header: a strict RFC 8941 Dictionary of known members, upstream details only
    /// for trusted clients, every name shown exactly as escaped.
    fn check_diagnosis(&mut self, value: &[u8], live: &Live<'_>, resp: Option<&Resp>) -> Result<(), Failure> {
        self.out.diagnoses += 1;
        let text = std::str::from_utf8(value)
            .map_err(|_| self.fail(Kind::Diagnosis, format!("not ASCII: {:?}", B(value.to_vec()))))?;
        if !text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err(self.fail(Kind::Diagnosis, format!("raw control or non-ASCII bytes: {text:?}")));
        }
        let d = crate::parse_diagnosis(text)
            .ok_or_else(|| self.fail(Kind::Diagnosis, format!("not an RFC 8941 Dictionary: {text}")))?;
        if let Some(k) = d.keys().find(|k| !DIAG_KEYS.contains(&k.as_str())) {
            return Err(self.fail(Kind::Diagnosis, format!("unexpected member {k:?}: {text}")));
        }
        let cause = d.get("cause").map(String::as_str).unwrap_or_default();
        if Cause::from_token(cause).is_none() || !d.contains_key("hint") || !d.contains_key("flags") {
            return Err(self.fail(Kind::Diagnosis, format!("cause, flags or hint missing or unknown: {text}")));
        }
        if !live.diag_trusted {
            if let Some(k) = d.keys().find(|k| !UNTRUSTED_KEYS.contains(&k.as_str())) {
                return Err(self.fail(Kind::Diagnosis, format!("untrusted client sees {k:?}: {text}")));
            }
        }
        if self.case.target == Target::Diagnostics && live.diag_trusted {
            let expect = |p: &Prop| prop_bytes(p).map(|b| shown(&b)).filter(|s| !s.is_empty());
            let mut pairs = vec![("cluster", expect(&live.req.cluster)), ("route", expect(&live.req.route))];
            if let Some(r) = resp {
                pairs.push(("upstream", expect(&r.upstream)));
                if !matches!(r.details, Prop::Missing) {
                    pairs.push(("details", expect(&r.details)));
                }
            }
            for (key, want) in pairs {
                if d.get(key).cloned() != want && d.contains_key(key) {
                    return Err(self.fail(Kind::Diagnosis, format!("{key} should show {want:?}: {text}")));
                }
            }
        }
        Ok(())
    }

    /// A JSON diagnosis body: one object, the same members as the header.
    fn check_json(&self, body: &[u8], trusted: bool) -> Result<(), Failure> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| self.fail(Kind::Diagnosis, format!("body is not JSON ({e}): {:?}", B(body.to_vec()))))?;
        let obj = v.as_object().ok_or_else(|| self.fail(Kind::Diagnosis, format!("body is not an object: {v}")))?;
        let allowed = if trusted { DIAG_KEYS } else { UNTRUSTED_KEYS };
        if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(self.fail(Kind::Diagnosis, format!("JSON body shows {k:?} (trusted: {trusted}): {v}")));
        }
        Ok(())
    }

    /// An OpenAI-shaped error body: `error.code` and `error.message` are strings, and no
    /// provider cluster is named (any client may read it).
    fn check_openai_error(&self, body: &[u8]) -> Result<(), Failure> {
        let v: Value = serde_json::from_slice(body).unwrap_or_default();
        let e = &v["error"];
        if !e["code"].is_string() || !e["message"].is_string() {
            return Err(self.fail(Kind::Llm, format!("not an OpenAI error: {v}")));
        }
        if LLM_PROVIDERS.iter().any(|p| body.windows(p.len()).any(|w| w == p.as_bytes())) {
            return Err(self.fail(Kind::Llm, format!("the error names a provider cluster: {v}")));
        }
        Ok(())
    }

    /// A local reply names no upstream cluster unless the client may see it.
    fn check_leak(&self, reply: &LocalResponse, live: &Live<'_>) -> Result<(), Failure> {
        let details = reply.details.as_deref().unwrap_or_default();
        let body_may_name = (details == upstream_guard::details::NO_HEALTHY_UPSTREAM
            || details == upstream_guard::details::HEALTH_STATUS)
            && self.model.router_trusted(&live.req);
        let header_may_name = live.diag_trusted;
        let body = String::from_utf8_lossy(&reply.body);
        for name in &self.model.secret_names {
            if !body_may_name && body.contains(name) && !(live.diag_trusted && is_diagnosis_json(&reply.body)) {
                return Err(self
                    .fail(Kind::Leak, format!("{details} reply body names {name:?} to an untrusted client: {body}")));
            }
            for (k, v) in &reply.headers {
                let diagnosis = Some(k.as_str()) == self.header_name();
                if v.contains(name) && !(diagnosis && header_may_name) {
                    return Err(self.fail(Kind::Leak, format!("{details} reply header {k} names {name:?}: {v}")));
                }
            }
        }
        Ok(())
    }

    /// The rate limiter's admissions of one request, against the window bound of each rule.
    fn check_limits(
        &mut self,
        req: &Req,
        before: &[(i64, i64)],
        rl_before: HashMap<Vec<u8>, Vec<u8>>,
    ) -> Result<(), Failure> {
        let Some(config) = &self.model.limiter else { return Ok(()) };
        let now = self.host.clock().now_nanos();
        let peer = peer_of(req);
        let xff = first(&req.headers, config.client_ip.header.as_bytes());
        let client = client_addr(peer, xff, config.client_ip.trusted_hops, config.client_ip.require_peer);
        let mut fixed = FixedRequest {
            path: first(&req.headers, b":path").map(<[u8]>::to_vec),
            method: first(&req.headers, b":method").map(<[u8]>::to_vec),
            headers: req
                .headers
                .iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k.0).into_owned(), v.0.clone()))
                .collect(),
            client: Some(client),
            prefixes: config.client_ip.prefixes(),
        };
        let matched = config.matching(&mut fixed);
        let secret = self
            .host
            .shared_data(self.case.target.name(), "ug.secret")
            .and_then(|(v, _)| Secret::from_bytes(&v))
            .ok_or_else(|| self.fail(Kind::Keys, "no slot secret in shared data after a request".to_string()))?;
        let after = counters(self.host, self.plugin, config);
        let mut slots = Vec::new();
        for (i, rule) in config.rules.iter().enumerate() {
            let allowed = after[i].0 - before[i].0;
            let contended = after[i].1 - before[i].1;
            if !matched.contains(&i) {
                if allowed != 0 || contended != 0 {
                    return Err(
                        self.fail(Kind::Model, format!("rule {:?} counted a request it does not match", rule.name))
                    );
                }
                continue;
            }
            let key = rule.key(&mut fixed);
            let place = rule.place(&secret, &key);
            slots.push((i, key, place, allowed == 1 && contended == 0));
        }
        // A key whose bucket another key took over (at rest: as full as a fresh one) starts
        // fresh too, on the module's clock; so does its model.
        for (rule, fingerprint) in self.check_owners(config, &slots, rl_before, now)? {
            let Some(r) = config.rules.get(rule) else { continue };
            self.model.buckets.retain(|(i, k), _| *i != rule || r.place(&secret, k).fingerprint != fingerprint);
        }
        for (i, key, place, admitted) in &slots {
            let (i, admitted) = (*i, *admitted);
            if !admitted {
                continue;
            }
            let Some(rule) = config.rules.get(i) else { continue };
            self.out.admissions += 1;
            let bucket = self.model.buckets.entry((i, key.clone())).or_default();
            let t = bucket.seen.max(now);
            bucket.seen = t;
            bucket.admitted.push_back(t);
            let per = rule.limit.period_ns;
            while bucket.admitted.front().is_some_and(|a| a.saturating_add(per) <= t) {
                bucket.admitted.pop_front();
            }
            let bound = rule.limit.requests + rule.limit.burst;
            if bucket.admitted.len() as u64 > bound {
                let n = bucket.admitted.len();
                return Err(self.fail(
                    Kind::Limit,
                    format!(
                        "rule {:?} admitted {n} requests within {per} ns for key {:?} (limit {} + burst {})",
                        rule.name,
                        B(key.clone()),
                        rule.limit.requests,
                        rule.limit.burst
                    ),
                ));
            }
            // The key's own slot holds the same bucket.
            {
                let name = self.case.target.name();
                let stored = place.candidates().find_map(|slot| {
                    let v = self.host.shared_data(name, &format!("ug.rl.{slot}"))?.0;
                    match Holder::of(Some(&v), place.fingerprint) {
                        Holder::Mine(state) => Some((slot, state.to_vec())),
                        _ => None,
                    }
                });
                let slot = stored.as_ref().map_or(u32::MAX, |(s, _)| *s);
                let stored = stored.map(|(_, v)| v);
                let seen = match stored.as_deref().and_then(State::decode) {
                    Some(State::Bucket { seen, .. }) if rule.algorithm == Algorithm::TokenBucket => Some(seen),
                    Some(State::Window { seen, .. }) if rule.algorithm == Algorithm::SlidingWindow => Some(seen),
                    _ => None,
                };
                if seen != Some(t) {
                    return Err(self.fail(
                        Kind::Model,
                        format!(
                            "rule {:?} admitted a request but slot {slot} holds {:?} (bucket time {t})",
                            rule.name,
                            stored.map(B)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// No request changes the state of a key other than its own: every bucket slot this request
    /// changed is now owned by one of its own keys (of the rule whose share holds the slot), and
    /// a slot it took from another key held a bucket at rest (what a fresh key would see). Returns
    /// the (rule, fingerprint) of each key that lost its slot so.
    fn check_owners(
        &self,
        config: &RateLimitConfig,
        mine: &[(usize, Vec<u8>, upstream_guard::slots::Place, bool)],
        before: HashMap<Vec<u8>, Vec<u8>>,
        now: u64,
    ) -> Result<Vec<(usize, u64)>, Failure> {
        let mut displaced = Vec::new();
        for (key, value) in self.host.shared_data_entries(self.case.target.name()) {
            let Some(n) = std::str::from_utf8(&key).ok().and_then(|k| k.strip_prefix("ug.rl.")) else { continue };
            let Ok(slot) = n.parse::<u32>() else { continue };
            // A missing key and an empty value (another worker's racing write of nothing) are one.
            let old = before.get(&key).filter(|v| !v.is_empty());
            if old == Some(&value) || (old.is_none() && value.is_empty()) {
                continue;
            }
            let k = String::from_utf8_lossy(&key);
            let Some(rule) = config.rules.iter().position(|r| (r.slots.0..r.slots.0 + r.slots.1).contains(&slot))
            else {
                return Err(self.fail(Kind::Keys, format!("{k} is in no rule's share")));
            };
            let owner = mine
                .iter()
                .find(|(i, _, p, _)| *i == rule && matches!(Holder::of(Some(&value), p.fingerprint), Holder::Mine(_)));
            let Some((_, _, place, _)) = owner else {
                return Err(self.fail(Kind::Owner, format!("{k} changed, but no key of this request owns it")));
            };
            if let Some(Holder::Other(state)) = old.map(|o| Holder::of(Some(o), place.fingerprint)) {
                let r = &config.rules[rule];
                if State::decode(state).is_some_and(|s| !s.at_rest(&r.limit, now)) {
                    return Err(self.fail(Kind::Owner, format!("{k}: a request took another key's live bucket")));
                }
                if let Some(fp) = old.and_then(|o| o.get(..8)) {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(fp);
                    displaced.push((rule, u64::from_le_bytes(w)));
                }
            }
        }
        Ok(displaced)
    }

    /// Every shared-data key is one the module may write, and decodes.
    fn scan(&self) -> Result<(), Failure> {
        let entries = self.host.shared_data_entries(self.case.target.name());
        for (key, value) in &entries {
            let k = String::from_utf8_lossy(key);
            let ok = if let Some(n) = k.strip_prefix("ug.rl.") {
                let max = self.model.limiter.as_ref().map_or(0, |c| c.max_keys);
                n.parse::<u32>().is_ok_and(|n| n < max) && (value.is_empty() || State::decode(unseal(value)).is_some())
            } else if k.starts_with("ug.cb2.") {
                match (self.model.breaker_keys.get(key.as_slice()), &self.model.breaker) {
                    (Some(name), Some(config)) => {
                        if !value.is_empty() {
                            let sealed = *k != format!("ug.cb2.{name}");
                            let b = Breaker::decode(if sealed { unseal(value) } else { value }).ok_or_else(|| {
                                self.fail(Kind::Breaker, format!("{k} does not decode: {:?}", B(value.clone())))
                            })?;
                            let max = config.policy(name).max_probes as usize;
                            if b.probes.len() > max || (b.phase != Phase::HalfOpen && !b.probes.is_empty()) {
                                return Err(self.fail(
                                    Kind::Breaker,
                                    format!(
                                        "{k}: {} probes in flight in phase {:?} (max_probes {max})",
                                        b.probes.len(),
                                        b.phase
                                    ),
                                ));
                            }
                        }
                        true
                    }
                    _ => false,
                }
            } else if let Some(name) = k.strip_prefix("ug.hr.h4.") {
                self.model.health.is_some()
                    && UPSTREAMS.contains(&name)
                    && (value.is_empty() || Health::decode(value).is_some())
            } else if k == "ug.hr.lease" {
                self.model.health.is_some() && (value.is_empty() || Lease::decode(value).is_some())
            } else if k == "ug.hr.seq" {
                self.model.health.is_some() && (value.is_empty() || value.len() == 8)
            } else if let Some(rest) = k.strip_prefix("ug.llm.") {
                self.check_llm_entry(rest, value)?
            } else if k == "ug.secret" {
                Secret::from_bytes(value).is_some()
            } else {
                k == "ug.v" && value.is_empty()
            };
            if !ok {
                return Err(
                    self.fail(Kind::Keys, format!("unexpected shared-data entry {k:?} = {:?}", B(value.clone())))
                );
            }
        }
        if self.case.target.routes() {
            for (i, w) in self.plugin.workers().iter().enumerate() {
                let n = w.pending_http_calls().len();
                if n > CHECKED_UPSTREAMS {
                    return Err(self.fail(Kind::Callouts, format!("worker {i} has {n} health checks in flight")));
                }
            }
        }
        Ok(())
    }

    /// One `ug.llm.*` entry (the key after the prefix): a provider's health with a pause no
    /// longer than `rate_limited.max` from the latest time seen, the prober lease and sequence, a
    /// budget balance within its slots, never above its cap nor below what answers reported.
    fn check_llm_entry(&self, rest: &str, value: &[u8]) -> Result<bool, Failure> {
        let Some(config) = &self.model.llm else { return Ok(false) };
        if value.is_empty() {
            return Ok(true);
        }
        if let Some(name) = rest.strip_prefix("h4.") {
            let Some(h) = Health::decode(value) else { return Ok(false) };
            let bound = self.latest.saturating_add(config.rate_limited_max_ns);
            if h.rate_limited_until > bound {
                return Err(self.fail(
                    Kind::Llm,
                    format!(
                        "{name} paused until {} ns, past {bound} (latest time + rate_limited.max)",
                        h.rate_limited_until
                    ),
                ));
            }
            return Ok(LLM_PROVIDERS.contains(&name));
        }
        if rest == "lease" {
            return Ok(Lease::decode(value).is_some());
        }
        if rest == "seq" {
            return Ok(value.len() == 8);
        }
        let Some(slot) = rest.strip_prefix("tb.") else { return Ok(false) };
        let Some(b) = Balance::decode(unseal(value)) else { return Ok(false) };
        // At most the reservations taken while the balance was positive (a budget's worth, plus
        // the last one), then every slot's stream charged the most an answer of the fuzzer
        // reports (under 80 tokens).
        let floor = -(LLM_TOKENS as i64 + i64::from(super::gen::SLOTS) * 80);
        if b.tokens > LLM_TOKENS as i64 || (b.tokens < floor && !self.huge_usage) {
            return Err(self.fail(Kind::Llm, format!("budget slot {slot} holds {} tokens", b.tokens)));
        }
        Ok(slot.parse::<u32>().is_ok_and(|n| n < config.max_keys))
    }

    fn start(&mut self, slots: &mut [Option<Live<'h>>], slot: usize, worker: usize, req: &Req) -> Result<(), Failure> {
        if let Some(old) = slots.get_mut(slot).and_then(Option::take) {
            self.finish(old)?;
        }
        let Some(w) = self.plugin.workers().get(worker) else { return Ok(()) };
        let mut s = w.http_stream();
        for (path, p) in
            [("source.address", &req.source), ("xds.cluster_name", &req.cluster), ("xds.route_name", &req.route)]
        {
            if let Some(b) = prop_bytes(p) {
                s.set_property_bytes(path, &b);
            }
        }
        let before = self.model.limiter.as_ref().map(|c| counters(self.host, self.plugin, c)).unwrap_or_default();
        let rl_before: HashMap<Vec<u8>, Vec<u8>> = if self.model.limiter.is_some() {
            self.host
                .shared_data_entries(self.case.target.name())
                .into_iter()
                .filter(|(k, _)| k.starts_with(b"ug.rl."))
                .collect()
        } else {
            HashMap::new()
        };
        let headers: Vec<(&[u8], &[u8])> = req.headers.iter().map(|(k, v)| (k.0.as_slice(), v.0.as_slice())).collect();
        self.out.callbacks += 2;
        self.out.requests += 1;
        s.request_headers_bytes(&headers, req.end).map_err(|e| trap(self.step, e))?;
        let mut live = Live {
            s,
            req: req.clone(),
            responded: false,
            complete: false,
            logged: false,
            local: None,
            json_body: false,
            diag_trusted: self.model.diag_trusted(req),
            req_body: Vec::new(),
            req_done: req.end,
        };
        self.local_reply(&mut live)?;
        if self.model.limiter.is_some() {
            self.check_limits(req, &before, rl_before)?;
        }
        if let Some(s) = slots.get_mut(slot) {
            *s = Some(live);
        }
        Ok(())
    }

    /// A local reply the module sent (at the request headers or body): checked and kept.
    fn local_reply(&mut self, live: &mut Live<'h>) -> Result<(), Failure> {
        let Some(reply) = live.s.local_response() else { return Ok(()) };
        self.out.local_replies += 1;
        self.check_leak(&reply, live)?;
        if let Some(name) = self.header_name().map(str::to_string) {
            if let Some(v) = reply.raw_headers.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.clone()) {
                self.check_diagnosis(&v, live, None)?;
            }
            if is_diagnosis_json(&reply.body) {
                self.check_json(&reply.body, live.diag_trusted)?;
            }
        }
        live.local = Some(reply);
        Ok(())
    }

    /// Request body chunks. When the body ends on an llm path: a model the stage does not serve
    /// is refused locally (400, 404, 413) and never reaches a provider; a routed request names a
    /// served model and goes to one of its providers.
    fn request_body(&mut self, live: &mut Live<'h>, chunks: &[B], end: bool) -> Result<(), Failure> {
        if live.req_done || live.local.is_some() || live.responded || live.logged {
            return Ok(());
        }
        for (i, chunk) in chunks.iter().enumerate() {
            let last = end && i + 1 == chunks.len();
            self.out.callbacks += 1;
            live.s.request_body(&chunk.0, last).map_err(|e| trap(self.step, e))?;
            if live.req_body.len() < BODY_KEPT {
                live.req_body.extend_from_slice(&chunk.0);
            }
            live.req_done = last;
            self.local_reply(live)?;
            if live.local.is_some() {
                live.req_done = true;
                break;
            }
        }
        if !live.req_done || self.model.llm.is_none() {
            return Ok(());
        }
        let path = first(&live.req.headers, b":path").unwrap_or_default();
        let path = path.split(|&b| b == b'?').next().unwrap_or_default();
        if !LLM_PATHS.contains(&path) {
            return Ok(());
        }
        self.out.llm_bodies += 1;
        let routed = live.s.property_value_path(&[LLM_ROUTE]);
        let model = serde_json::from_slice::<Value>(&live.req_body)
            .ok()
            .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_string));
        let served = model.as_deref().is_some_and(|m| LLM_MODELS.contains(&m));
        if let Some(cluster) = &routed {
            self.out.llm_routed += 1;
            if !served || !LLM_PROVIDERS.iter().any(|p| p.as_bytes() == cluster.as_slice()) {
                return Err(self.fail(
                    Kind::Llm,
                    format!("routed to {:?} for model {model:?}: {:?}", B(cluster.clone()), B(live.req_body.clone())),
                ));
            }
        }
        if model.is_some() && !served {
            let status = live.local.as_ref().map(|r| r.status);
            if routed.is_some() || !matches!(status, Some(400 | 404 | 413)) {
                return Err(self.fail(
                    Kind::Llm,
                    format!("model {model:?} is not served, yet the reply is {status:?} (routed: {routed:?})"),
                ));
            }
            self.out.llm_unknown += 1;
        }
        Ok(())
    }

    fn respond(&mut self, live: &mut Live<'h>, resp: &Resp) -> Result<(), Failure> {
        if live.responded || live.logged {
            return Ok(());
        }
        live.responded = true;
        let (status, headers, end, details, code, flags) = match &live.local {
            // A local reply runs through this filter's response callbacks, as in Envoy.
            Some(r) => {
                let mut h: Vec<(Vec<u8>, Vec<u8>)> = vec![(b":status".to_vec(), r.status.to_string().into_bytes())];
                h.extend(r.raw_headers.iter().cloned());
                let details = r.details.clone().map(|d| Prop::Bytes(B(d.into_bytes()))).unwrap_or(Prop::Missing);
                (
                    r.status.to_string().into_bytes(),
                    h,
                    r.body.is_empty(),
                    details,
                    Prop::Int(u64::from(r.status)),
                    Prop::Int(0),
                )
            }
            None => {
                let mut h = vec![(b":status".to_vec(), resp.status.0.clone())];
                h.extend(resp.headers.iter().map(|(k, v)| (k.0.clone(), v.0.clone())));
                (resp.status.0.clone(), h, resp.end, resp.details.clone(), resp.code.clone(), resp.flags.clone())
            }
        };
        let _ = status;
        for (path, p) in [
            ("response.code", &code),
            ("response.flags", &flags),
            ("response.code_details", &details),
            ("upstream.transport_failure_reason", &resp.transport),
            ("upstream.address", &resp.upstream),
            ("upstream.request_attempt_count", &resp.attempts),
        ] {
            if let Some(b) = prop_bytes(p) {
                live.s.set_property_bytes(path, &b);
            }
        }
        let type_before = headers.iter().find(|(k, _)| k == b"content-type").map(|(_, v)| v.clone());
        let refs: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        self.out.callbacks += 1;
        live.s.response_headers_bytes(&refs, end).map_err(|e| trap(self.step, e))?;
        live.complete = end;
        if let Some(name) = self.header_name().map(str::to_string) {
            if let Some(v) = live.s.response_header_bytes(name.as_bytes()) {
                let shown_resp = if live.local.is_none() { Some(resp) } else { None };
                self.check_diagnosis(&v, live, shown_resp)?;
            }
        }
        if self.model.llm.is_some() {
            let sent = headers.iter().find(|(k, _)| k == b"x-ratelimit-remaining-tokens").map(|(_, v)| v.clone());
            let now = live.s.response_header_bytes(b"x-ratelimit-remaining-tokens");
            if now.is_some() && now != sent {
                let left = now.as_deref().and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse::<u64>().ok());
                if left.is_none_or(|n| n > LLM_TOKENS) {
                    return Err(self.fail(
                        Kind::Llm,
                        format!("x-ratelimit-remaining-tokens {:?} outside 0..={LLM_TOKENS}", now.map(B)),
                    ));
                }
            }
        }
        let type_after = live.s.response_header_bytes(b"content-type");
        live.json_body = type_after.as_deref() == Some(b"application/json") && type_before != type_after;
        Ok(())
    }

    fn body(&mut self, live: &mut Live<'h>, data: &B, end: bool) -> Result<(), Failure> {
        if !live.responded || live.complete || live.logged {
            return Ok(());
        }
        // A local reply's body is the reply's own.
        let (chunk, end) = match &live.local {
            Some(r) => (r.body.clone(), true),
            None => (data.0.clone(), end),
        };
        if self.exports.body {
            self.out.callbacks += 1;
        }
        if chunk.windows(6).any(|w| w == b"999999") {
            self.huge_usage = true;
        }
        live.s.response_body(&chunk, end).map_err(|e| trap(self.step, e))?;
        if end {
            live.complete = true;
            if live.json_body {
                let body = live.s.response_body_now();
                if self.model.llm.is_some() && upstream_guard::llm::is_error_json(&body) {
                    // On an llm path, Envoy's own reply becomes the OpenAI-shaped error.
                    self.check_openai_error(&body)?;
                } else {
                    self.check_json(&body, live.diag_trusted)?;
                }
                let length = live.s.response_header_bytes(b"content-length");
                if length.as_deref() != Some(body.len().to_string().as_bytes()) {
                    return Err(self.fail(
                        Kind::Diagnosis,
                        format!("content-length {:?} for a {}-byte JSON body", length.map(B), body.len()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, live: Live<'h>) -> Result<(), Failure> {
        self.out.callbacks += 1;
        live.s.finish().map_err(|e| trap(self.step, e))
    }

    fn op(&mut self, slots: &mut [Option<Live<'h>>], op: &Op) -> Result<(), Failure> {
        let clock = self.host.clock();
        match op {
            Op::Start { slot, worker, req } => self.start(slots, usize::from(*slot), usize::from(*worker), req)?,
            Op::Respond { slot, resp } => {
                if let Some(live) = slots.get_mut(usize::from(*slot)).and_then(Option::as_mut) {
                    self.respond(live, resp)?;
                }
            }
            Op::ReqBody { slot, chunks, end } => {
                if let Some(live) = slots.get_mut(usize::from(*slot)).and_then(Option::as_mut) {
                    self.request_body(live, chunks, *end)?;
                }
            }
            Op::Body { slot, data, end } => {
                if let Some(live) = slots.get_mut(usize::from(*slot)).and_then(Option::as_mut) {
                    self.body(live, data, *end)?;
                }
            }
            Op::Trailers { slot } => {
                if let Some(live) = slots.get_mut(usize::from(*slot)).and_then(Option::as_mut) {
                    if live.responded && !live.complete && !live.logged && live.local.is_none() {
                        if self.exports.trailers {
                            self.out.callbacks += 1;
                        }
                        live.s.response_trailers(&[("x-trailer", "1")]).map_err(|e| trap(self.step, e))?;
                        live.complete = true;
                    }
                }
            }
            Op::Log { slot } => {
                if let Some(live) = slots.get_mut(usize::from(*slot)).and_then(Option::as_mut) {
                    if !live.logged {
                        live.logged = true;
                        if self.exports.log {
                            self.out.callbacks += 1;
                        }
                        live.s.log().map_err(|e| trap(self.step, e))?;
                    }
                }
            }
            Op::Finish { slot } => {
                if let Some(live) = slots.get_mut(usize::from(*slot)).and_then(Option::take) {
                    self.finish(live)?;
                }
            }
            Op::Advance { ms } => clock.advance(Duration::from_millis(*ms)),
            Op::Rewind { ms } => clock.set_nanos(clock.now_nanos().saturating_sub(ms.saturating_mul(1_000_000))),
            Op::SetClock { nanos } => clock.set_nanos(*nanos),
            Op::Tick { worker } => {
                let workers = self.plugin.workers();
                let chosen: Vec<_> = if *worker == 255 {
                    workers.iter().collect()
                } else {
                    workers.get(usize::from(*worker)).into_iter().collect()
                };
                for w in chosen {
                    if self.exports.tick {
                        self.out.callbacks += 1;
                    }
                    w.tick().map_err(|e| trap(self.step, e))?;
                }
            }
            Op::Race { n } => self.host.interfere_with_shared_data(u32::from(*n)),
            Op::Callout { worker, pick, answer } => {
                let Some(w) = self.plugin.workers().get(usize::from(*worker)) else { return Ok(()) };
                let pending = w.pending_http_calls();
                if pending.is_empty() {
                    return Ok(());
                }
                let Some(call) = pending.get(usize::from(*pick) % pending.len()) else { return Ok(()) };
                if self.exports.http {
                    self.out.callbacks += 1;
                }
                let r = match answer {
                    Answer::Fail => w.fail_http_call(call.token),
                    Answer::Reply { headers, body } => {
                        let h: Vec<(&[u8], &[u8])> =
                            headers.iter().map(|(k, v)| (k.0.as_slice(), v.0.as_slice())).collect();
                        w.respond_http_call_bytes(call.token, &h, &body.0, &[])
                    }
                };
                r.map_err(|e| trap(self.step, e))?;
            }
            Op::Grpc { worker, pick, status, message } => {
                let Some(w) = self.plugin.workers().get(usize::from(*worker)) else { return Ok(()) };
                let pending = w.pending_grpc_calls();
                let Some(call) = pending.get(usize::from(*pick) % pending.len().max(1)) else { return Ok(()) };
                self.out.callbacks += 1;
                let r = if *status == 0 {
                    w.respond_grpc_call(call.token, &message.0)
                } else {
                    w.fail_grpc_call(call.token, u32::from(*status), &String::from_utf8_lossy(&message.0))
                };
                r.map_err(|e| trap(self.step, e))?;
            }
        }
        Ok(())
    }

    /// The whole log: no panic or other critical line, and never the debug token.
    fn check_logs(&self) -> Result<(), Failure> {
        for (l, line) in self.plugin.logs() {
            if l >= level::CRITICAL || line.contains("panicked") {
                return Err(self.fail(Kind::Panic, line));
            }
            if line.contains(DEBUG_TOKEN) {
                return Err(self.fail(Kind::Secret, format!("the debug token was logged: {line}")));
            }
        }
        Ok(())
    }
}

/// The filter state the llm stage routes by.
const LLM_ROUTE: &[u8] = b"upstream_guard.llm_cluster";

fn is_diagnosis_json(body: &[u8]) -> bool {
    body.starts_with(b"{\"cause\"")
}

/// Every rule's (allowed, contention) counters.
fn counters(host: &Host, plugin: &Plugin, config: &RateLimitConfig) -> Vec<(i64, i64)> {
    // Admissions reach the host on the tick.
    let _ = plugin.tick_all();
    config
        .rules
        .iter()
        .map(|r| {
            let base = format!("upstream_guard.ratelimit.{}", segment(&r.name));
            // A request decided by `on_contention` (lost races, or a table full of live buckets)
            // has no bucket to check.
            let undecided = host.counter(&format!("{base}.contention")) + host.counter(&format!("{base}.table_full"));
            (host.counter(&format!("{base}.allowed")), undecided)
        })
        .collect()
}

fn segment(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// Runs `ops` of `case` (the case's own sequence, or a shrunk one) on a fresh host.
pub fn execute(case: &Case, ops: &[Op]) -> Result<Outcome, Failure> {
    let host = Host::new().workers(case.workers).clusters(KNOWN_CLUSTERS).log_level(case.log_level);
    let wasm = crate::paths::wasm_path(case.target.name()).map_err(|e| Failure {
        kind: Kind::Host,
        step: 0,
        message: e.to_string(),
    })?;
    let plugin = host.load(&wasm, &case.config).map_err(|e| Failure {
        kind: Kind::Host,
        step: 0,
        message: format!("the fuzz configuration was refused: {e}"),
    })?;
    let model = Model::new(case).map_err(|m| Failure { kind: Kind::Host, step: 0, message: m })?;
    let mut run = Run {
        case,
        host: &host,
        plugin: &plugin,
        model,
        exports: exports(case.target),
        out: Outcome::default(),
        step: 0,
        latest: host.clock().now_nanos(),
        huge_usage: false,
    };
    let mut slots: Vec<Option<Live<'_>>> = (0..8).map(|_| None).collect();
    for (i, op) in ops.iter().enumerate() {
        run.step = i;
        run.op(&mut slots, op)?;
        run.latest = run.latest.max(host.clock().now_nanos());
        run.out.steps += 1;
        if i % 8 == 7 {
            run.scan()?;
        }
    }
    run.step = ops.len();
    for live in slots.iter_mut().filter_map(Option::take) {
        run.finish(live)?;
    }
    run.scan()?;
    run.check_logs()?;
    for (name, value) in host.metrics() {
        let n = u64::try_from(value).unwrap_or(0);
        let slot = match name.rsplit('.').next() {
            Some("opened") => &mut run.out.opened,
            Some("half_opened") => &mut run.out.half_opened,
            Some("closed") => &mut run.out.closed,
            Some("checks_passed" | "checks_failed") => &mut run.out.checks,
            Some("ejections") => &mut run.out.ejections,
            Some("contention") => &mut run.out.contention,
            _ => continue,
        };
        *slot += n;
    }
    Ok(run.out)
}

/// The state of a keyed slot's value: past the owner's 8-byte fingerprint.
fn unseal(value: &[u8]) -> &[u8] {
    value.get(8..).unwrap_or_default()
}
