//! # rate limiter filter
//!
//! Keyed limits that hold exactly across every Envoy worker: each (rule, key) bucket lives in
//! shared data and is advanced with compare-and-swap, so N workers see one bucket, not N.
//!
//! Per request: the matching rules (first, or all) are evaluated; each builds its key from the
//! request, maps it to one of `max_keys` slots, and runs its algorithm on the slot's state with
//! `now` read once. Refused requests get a local reply (429 by default) with `Retry-After` and
//! the RateLimit fields, and `response.code_details = upstream_guard.rate_limited` for the
//! diagnostics filter; admitted responses carry `RateLimit` / `RateLimit-Policy`.

use std::net::IpAddr;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use upstream_guard::details;
use upstream_guard::ratelimit::{
    client_ip, ratelimit_header, retry_after_secs, slot_for, Contention, Decision, Mode, RateLimitConfig, RequestView,
    State,
};
use upstream_guard_glue::shared::{self, UpdateError};
use upstream_guard_glue::{self as glue, props, Counter};

proxy_wasm::main! {{
    glue::init();
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { shared: None }) });
}}

/// Counters of one rule.
struct RuleMetrics {
    allowed: Counter,
    limited: Counter,
    shadow_limited: Counter,
    contention: Counter,
}

/// Validated config and metric ids, shared by every stream of the plugin.
struct Shared {
    config: RateLimitConfig,
    metrics: Vec<RuleMetrics>,
}

struct Root {
    shared: Option<Rc<Shared>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(config) =
            glue::load_config("rate_limiter", self.get_plugin_configuration(), RateLimitConfig::from_json)
        else {
            return false;
        };
        let metrics = config
            .rules
            .iter()
            .map(|r| {
                let base = format!("upstream_guard.ratelimit.{}", glue::metric_segment(&r.name));
                RuleMetrics {
                    allowed: Counter::define(&format!("{base}.allowed")),
                    limited: Counter::define(&format!("{base}.limited")),
                    shadow_limited: Counter::define(&format!("{base}.shadow_limited")),
                    contention: Counter::define(&format!("{base}.contention")),
                }
            })
            .collect();
        self.shared = Some(Rc::new(Shared { config, metrics }));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { shared: self.shared.clone(), response_fields: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    shared: Option<Rc<Shared>>,
    /// `(RateLimit-Policy, RateLimit)` to add to an admitted response.
    response_fields: Option<(String, String)>,
}

impl Context for Stream {}

/// The request as the core sees it, read from the host on demand.
struct HostRequest<'a> {
    stream: &'a Stream,
    config: &'a RateLimitConfig,
}

impl RequestView for HostRequest<'_> {
    fn path(&self) -> Option<String> {
        self.stream.get_http_request_header(":path")
    }
    fn method(&self) -> Option<String> {
        self.stream.get_http_request_header(":method")
    }
    fn header(&self, name: &str) -> Option<String> {
        self.stream.get_http_request_header(name)
    }
    fn client_ip(&self) -> Option<IpAddr> {
        let hops = self.config.client_ip.trusted_hops;
        let peer = props::string(&["source", "address"]);
        let xff = if hops > 0 { self.stream.get_http_request_header(&self.config.client_ip.header) } else { None };
        client_ip(peer.as_deref(), xff.as_deref(), hops)
    }
}

/// The most restrictive outcome over the rules that applied.
enum Verdict {
    Pass,
    Admitted { policy: String, fields: String, remaining: u64 },
    Refused { policy: String, fields: String, retry_after_ns: u64, rule: usize },
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else { return Action::Continue };
        let config = &shared.config;
        let now = glue::now_nanos();
        let mut verdict = Verdict::Pass;
        {
            let view = HostRequest { stream: self, config };
            let matching: Vec<(usize, &upstream_guard::ratelimit::Rule)> = config
                .rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.matcher.matches(&view))
                .take(if config.apply == upstream_guard::ratelimit::Apply::First { 1 } else { usize::MAX })
                .collect();
            for (i, rule) in matching {
                let m = &shared.metrics[i];
                let key = rule.key(&view);
                let slot = slot_for(&rule.name, &key, config.max_keys);
                let outcome = shared::update(&format!("ug.rl.{slot}"), config.cas_retries, |current| {
                    let state = current.and_then(State::decode);
                    let (next, decision) = rule.algorithm.check(&rule.limit, state, now);
                    (decision.allowed().then(|| next.encode()), decision)
                });
                let decision = match outcome {
                    Ok(d) => d,
                    Err(e) => {
                        m.contention.inc();
                        if let UpdateError::Host(status) = e {
                            glue::log(LogLevel::Warn, &format!("rate_limiter: shared data unavailable ({status:?})"));
                        }
                        match config.on_contention {
                            Contention::Allow => Decision::Allowed { remaining: 0, reset_ns: rule.limit.period_ns },
                            Contention::Deny => Decision::Limited { retry_after_ns: rule.limit.interval_ns() },
                        }
                    }
                };
                match decision {
                    Decision::Allowed { remaining, reset_ns } => {
                        m.allowed.inc();
                        let tighter = match &verdict {
                            Verdict::Pass => true,
                            Verdict::Admitted { remaining: r, .. } => remaining < *r,
                            Verdict::Refused { .. } => false,
                        };
                        if tighter {
                            verdict = Verdict::Admitted {
                                policy: rule.policy.clone(),
                                fields: ratelimit_header(&rule.name, remaining, reset_ns),
                                remaining,
                            };
                        }
                    }
                    Decision::Limited { retry_after_ns } => {
                        let longer = match &verdict {
                            Verdict::Refused { retry_after_ns: r, .. } => retry_after_ns > *r,
                            _ => true,
                        };
                        if longer {
                            verdict = Verdict::Refused {
                                policy: rule.policy.clone(),
                                fields: ratelimit_header(&rule.name, 0, retry_after_ns),
                                retry_after_ns,
                                rule: i,
                            };
                        }
                    }
                }
            }
        }
        match verdict {
            Verdict::Pass => Action::Continue,
            Verdict::Admitted { policy, fields, .. } => {
                if config.response_headers {
                    self.response_fields = Some((policy, fields));
                }
                Action::Continue
            }
            Verdict::Refused { policy, fields, retry_after_ns, rule } => {
                let metrics = &shared.metrics[rule];
                let name = &config.rules[rule].name;
                if config.mode == Mode::Shadow {
                    metrics.shadow_limited.inc();
                    glue::log(
                        LogLevel::Info,
                        &format!("rate_limiter: shadow mode: rule {name:?} would have refused this request"),
                    );
                    return Action::Continue;
                }
                metrics.limited.inc();
                let retry_after = retry_after_secs(retry_after_ns).to_string();
                let headers = [
                    ("retry-after", retry_after.as_str()),
                    ("ratelimit-policy", policy.as_str()),
                    ("ratelimit", fields.as_str()),
                    ("content-type", "text/plain"),
                ];
                let body = format!("rate limited by rule {name:?}: retry after {retry_after} s\n");
                if glue::send_local_reply(config.status, &headers, body.as_bytes(), details::RATE_LIMITED).is_err() {
                    glue::log(
                        LogLevel::Error,
                        "rate_limiter: could not send the local reply; letting the request pass",
                    );
                    return Action::Continue;
                }
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some((policy, fields)) = self.response_fields.take() {
            self.set_http_response_header("ratelimit-policy", Some(&policy));
            self.set_http_response_header("ratelimit", Some(&fields));
        }
        Action::Continue
    }
}
