//! The rate limiter stage: keyed limits, exact across every worker of one Envoy.
//!
//! Each (rule, key) bucket is one shared-data value advanced with compare-and-swap, so N workers
//! see one bucket, not N. A refusal is a local reply (429 by default) with `Retry-After`, the
//! RateLimit fields and `response.code_details = upstream_guard.rate_limited`; gRPC clients get
//! RESOURCE_EXHAUSTED by default, which they do not retry at once the way they retry UNAVAILABLE.

use std::cell::Cell;

use upstream_guard::details;
use upstream_guard::peer::{client_addr, ClientAddr};
use upstream_guard::ratelimit::{
    ratelimit_field, retry_after_secs, Mode, RateLimitConfig, RequestView, State, Verdict,
};
use upstream_guard_glue::shared::{self, UpdateError};
use upstream_guard_glue::{host, metrics, Counter, Cx, Flow, Level, LocalReply, Stage};

/// Counters of one rule.
struct RuleMetrics {
    allowed: Counter,
    limited: Counter,
    shadow_limited: Counter,
    contention: Counter,
}

/// The stage, configured.
pub struct RateLimiter {
    config: RateLimitConfig,
    metrics: Vec<RuleMetrics>,
    /// Requests keyed on an address Envoy took from `x-forwarded-for`.
    from_header: Counter,
    warned: Cell<bool>,
}

impl RateLimiter {
    /// Defines the metrics.
    pub fn new(config: RateLimitConfig) -> RateLimiter {
        let metrics = config
            .rules
            .iter()
            .map(|r| {
                let base = format!("upstream_guard.ratelimit.{}", metrics::segment(&r.name));
                RuleMetrics {
                    allowed: Counter::define(&format!("{base}.allowed")),
                    limited: Counter::define(&format!("{base}.limited")),
                    shadow_limited: Counter::define(&format!("{base}.shadow_limited")),
                    contention: Counter::define(&format!("{base}.contention")),
                }
            })
            .collect();
        let from_header = Counter::define("upstream_guard.ratelimit.client_ip_from_header");
        RateLimiter { config, metrics, from_header, warned: Cell::new(false) }
    }

    /// Counts a header-derived client address, and says once what decides it.
    fn note_forwarded(&self) {
        self.from_header.inc();
        if !self.warned.replace(true) {
            host::log(
                Level::Warn,
                "rate_limiter: a client address came from x-forwarded-for (source.address has port 0), a header \
                 the client can write: the listener's HttpConnectionManager has use_remote_address: false (the \
                 default). Set use_remote_address: true on an edge listener (with xff_num_trusted_hops behind \
                 proxies you trust), or client_ip.require_peer: true to never key on such addresses. Counted in \
                 upstream_guard.ratelimit.client_ip_from_header.",
            );
        }
    }

    fn reply(&self, rule: usize, retry_after_ns: u64) -> LocalReply {
        let r = &self.config.rules[rule];
        let retry_after = retry_after_secs(retry_after_ns).to_string();
        let mut reply = LocalReply::text(
            self.config.status,
            details::RATE_LIMITED,
            format!("rate limited by rule {:?}: retry after {retry_after} s\n", r.name),
        )
        .header("retry-after", retry_after.as_bytes())
        .header("ratelimit-policy", r.policy.as_bytes())
        .header("ratelimit", ratelimit_field(&r.quoted, 0, retry_after_ns).as_bytes());
        reply.grpc_status = Some(self.config.grpc_status);
        reply
    }
}

/// Per stream: the RateLimit fields of an admitted request, for its response.
#[derive(Debug, Default)]
pub struct RateLimitStream {
    fields: Option<(usize, u64, u64)>,
}

/// The request, read through the stream's facts on demand.
struct View<'c, 'a> {
    cx: &'c mut Cx<'a>,
    config: &'c RateLimitConfig,
    client: Option<ClientAddr>,
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
        let ip = &self.config.client_ip;
        let peer = self.cx.peer();
        let xff = if ip.trusted_hops > 0 { self.cx.request_header(&ip.header).map(<[u8]>::to_vec) } else { None };
        let c = client_addr(peer, xff.as_deref(), ip.trusted_hops, ip.require_peer);
        self.client = Some(c);
        c
    }
}

/// The shared-data key of a bucket slot: `ug.rl.<slot>`.
fn bucket_key(slot: u32) -> Vec<u8> {
    let mut key = b"ug.rl.".to_vec();
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
        let mut view = View { cx, config, client: None };
        let matching = config.matching(&mut view);
        let mut verdict = Verdict::Pass;
        for i in matching {
            let (Some(rule), Some(m)) = (config.rules.get(i), self.metrics.get(i)) else { continue };
            let key = rule.key(&mut view);
            let outcome = shared::update(&bucket_key(rule.slot(&key)), config.cas_retries, |cur| {
                let state = cur.and_then(State::decode);
                let (next, decision) = rule.algorithm.check(&rule.limit, state, now);
                (decision.allowed().then(|| next.encode()), decision)
            });
            let decision = outcome.unwrap_or_else(|e| {
                m.contention.inc();
                if let UpdateError::Host(status) = e {
                    host::log(Level::Warn, &format!("rate_limiter: shared data unavailable ({status:?})"));
                }
                config.on_contention.decision(&rule.limit)
            });
            if decision.allowed() {
                m.allowed.inc();
            }
            verdict = verdict.add(i, decision);
        }
        if view.client.is_some_and(|c| c.from_client_header()) {
            self.note_forwarded();
        }
        match verdict {
            Verdict::Pass => Flow::Continue,
            Verdict::Admitted { rule, remaining, reset_ns } => {
                if config.response_headers {
                    st.fields = Some((rule, remaining, reset_ns));
                }
                Flow::Continue
            }
            Verdict::Refused { rule, retry_after_ns } => {
                let (Some(r), Some(m)) = (config.rules.get(rule), self.metrics.get(rule)) else {
                    return Flow::Continue;
                };
                if config.mode == Mode::Shadow {
                    m.shadow_limited.inc();
                    host::log_with(Level::Info, || {
                        format!("rate_limiter: shadow mode: rule {:?} would have refused this request", r.name)
                    });
                    return Flow::Continue;
                }
                m.limited.inc();
                Flow::Reply(self.reply(rule, retry_after_ns))
            }
        }
    }

    fn response(&self, st: &mut RateLimitStream, cx: &mut Cx<'_>) {
        if let Some((rule, remaining, reset_ns)) = st.fields.take() {
            if let Some(r) = self.config.rules.get(rule) {
                cx.set_response_header("ratelimit-policy", r.policy.as_bytes());
                cx.set_response_header("ratelimit", ratelimit_field(&r.quoted, remaining, reset_ns).as_bytes());
            }
        }
    }

    fn request_headers_read(&self, out: &mut Vec<String>) {
        out.extend(self.config.header_names().into_iter().map(str::to_string));
    }
}
