//! The LLM stage: routes OpenAI-compatible requests by the model in their body, across provider
//! clusters, honouring providers' 429s, and charges token budgets from the reported usage.
//!
//! Every decision is the core's (`upstream_guard::llm`); this stage moves bytes:
//!
//! - **Request headers** (claimed paths only; every other request costs the `:path` read the
//!   suite may already do): reads the budget keys, removes `content-length` (the body may change
//!   length; Envoy's buffer filter sets it again) and `accept-encoding` (usage is read from the
//!   answer, which must not be compressed), and answers [`Flow::Body`]. The headers go on to
//!   Envoy's buffer filter, which must follow this module in the chain and holds them from the
//!   router until the body is complete.
//! - **Request body** (up to `max_body_bytes`): reads the model, checks the token budgets, picks
//!   the first available provider of the model, rewrites `model` for a provider that names it
//!   differently, and routes: the chosen cluster goes to the filter state
//!   `wasm.upstream_guard.llm_cluster` (request headers can no longer be changed from a wasm
//!   module at this point) and the route cache is cleared, so the router matches a route on that
//!   filter state. The stages after this one (health router, circuit breaker) decide next.
//! - **Response**: a provider's 429 pauses it for the time its headers ask (capped), without
//!   counting as a failure, and leaves a diagnosis note; other responses go to passive detection
//!   (5xx and 529 by default). A successful JSON or event-stream response is read chunk by chunk
//!   as it passes, never held: the usage it reports is charged to the budgets at its end.
//!
//! Provider health (active checks, ejection, pauses) is the health router's [`Pool`] under the
//! keys `ug.llm.h4.<cluster>`, `ug.llm.lease`, `ug.llm.seq`; budget balances are
//! `ug.llm.tb.<slot>`, at most `max_keys` of them.
//!
//! **Where a global budget plugs in.** Balances live behind [`TokenLedger`]: [`LocalLedger`]
//! keeps them in shared data (exact across the workers of one Envoy). A ledger on the rate limit
//! service would implement the same calls: the admission check as a descriptor request with
//! `hits_addend: 0` (asynchronous: the stage would return [`Flow::Wait`] from `request` and
//! answer in `resume`), and the charge after the response as one with `hits_addend: <tokens>`.

use std::cell::Cell;

use upstream_guard::details;
use upstream_guard::diagnose::{classify, Cause, Judgement};
use upstream_guard::hash::Secret;
use upstream_guard::health::Health;
use upstream_guard::llm::{
    another_ready, choose, error_json, is_error_json, needs_rewrite, provider_failed, provider_pause, reply_code,
    reply_json, rewrite, scan, Admission, Balance, Budget, LlmConfig, ResetHeaders, Usage, UsageMeter, UsageTrim,
    RESET_HEADER_NAMES,
};
use upstream_guard::ratelimit::retry_after_secs;
use upstream_guard_glue::pairs::Pairs;
use upstream_guard_glue::shared::{self, Owned, UpdateError};
use upstream_guard_glue::{
    host, metrics, BodyAction, BufferType, Counter, Cx, Flow, Level, LocalReply, MapType, Note, Stage,
};

use crate::health_router::{Namespace, Pool};
use crate::rate_limiter::View;

const CAS_ATTEMPTS: u32 = 16;
/// The property the chosen cluster is written to: Envoy keeps it as the filter state
/// `wasm.upstream_guard.llm_cluster`, which routes match.
pub const ROUTE_PROPERTY: &str = "upstream_guard.llm_cluster";
const PROVIDERS: Namespace = Namespace { keys: "ug.llm", metrics: "upstream_guard.llm.provider", log: "llm" };

/// Where token balances are kept: admission (with its reservation) before the request, the
/// settlement after it.
pub trait TokenLedger {
    /// May a request of `key` go on under `budget` at `now`? When admitted, `reserve` tokens are
    /// taken from the balance at once. [`Owned::Full`] when the key has no balance of its own
    /// (every slot it may use holds another key's balance still in use): admitted, nothing
    /// reserved; `Err` when the reservation could not be recorded.
    fn reserve(&self, budget: &Budget, key: &[u8], reserve: u64, now: u64) -> Result<Owned<Admission>, UpdateError>;
    /// Gives back `reserved` and charges `used` to `key`; [`Owned::Full`] and `Err` as for
    /// [`TokenLedger::reserve`].
    fn settle(&self, budget: &Budget, key: &[u8], reserved: u64, used: u64, now: u64)
        -> Result<Owned<()>, UpdateError>;
}

/// Balances in Envoy's shared data, one value per (budget, key) in a slot the key owns
/// ([`upstream_guard::slots`]), updated with compare-and-swap: exact across every worker of one
/// Envoy, and never spent by another key.
pub struct LocalLedger {
    max_keys: u32,
    secret: Secret,
}

/// The shared-data key of a balance slot: `ug.llm.tb.<slot>`.
fn balance_key(slot: u32) -> Vec<u8> {
    format!("ug.llm.tb.{slot}").into_bytes()
}

impl TokenLedger for LocalLedger {
    fn reserve(&self, budget: &Budget, key: &[u8], reserve: u64, now: u64) -> Result<Owned<Admission>, UpdateError> {
        let place = budget.place(&self.secret, key, self.max_keys);
        if reserve == 0 {
            // Nothing to take: a read.
            let stored = shared::read_owned(&place, balance_key).ok().flatten().and_then(|v| Balance::decode(&v));
            return Ok(Owned::Done(Balance::at_time(stored, &budget.rate, now).admission(&budget.rate, now)));
        }
        let at_rest = |other: &[u8]| Balance::decode(other).is_none_or(|b| Balance::at_rest(b, &budget.rate, now));
        shared::update_owned(&place, balance_key, CAS_ATTEMPTS, at_rest, |cur| {
            let b = Balance::at_time(cur.and_then(Balance::decode), &budget.rate, now);
            let (admission, taken) = b.reserve(&budget.rate, now, reserve);
            (taken.map(|t| t.encode()), admission)
        })
    }

    fn settle(
        &self,
        budget: &Budget,
        key: &[u8],
        reserved: u64,
        used: u64,
        now: u64,
    ) -> Result<Owned<()>, UpdateError> {
        let place = budget.place(&self.secret, key, self.max_keys);
        let at_rest = |other: &[u8]| Balance::decode(other).is_none_or(|b| Balance::at_rest(b, &budget.rate, now));
        shared::update_owned(&place, balance_key, CAS_ATTEMPTS, at_rest, |cur| {
            let b =
                Balance::at_time(cur.and_then(Balance::decode), &budget.rate, now).settle(&budget.rate, reserved, used);
            (Some(b.encode()), ())
        })
    }
}

#[derive(Clone, Copy)]
struct ModelMetrics {
    requests: Counter,
    failovers: Counter,
    unavailable: Counter,
    tokens: Counter,
    prompt_tokens: Counter,
    completion_tokens: Counter,
    usage_missing: Counter,
}

#[derive(Clone, Copy)]
struct ProviderMetrics {
    rate_limited: Counter,
    failures: Counter,
    tokens: Counter,
}

#[derive(Clone, Copy)]
struct BudgetMetrics {
    admitted: Counter,
    refused: Counter,
    charged_tokens: Counter,
}

/// The stage, configured.
pub struct Llm {
    config: LlmConfig,
    pool: Pool,
    ledger: LocalLedger,
    models: Vec<ModelMetrics>,
    providers: Vec<ProviderMetrics>,
    budgets: Vec<BudgetMetrics>,
    unknown_model: Counter,
    invalid_request: Counter,
    contention: Counter,
    table_full: Counter,
    warned: Cell<bool>,
}

impl Llm {
    /// Defines the metrics.
    pub fn new(config: LlmConfig) -> Llm {
        let models = config
            .models
            .iter()
            .map(|m| {
                let base = format!("upstream_guard.llm.model.{}", metrics::segment(&m.name));
                let c = |n: &str| Counter::define(&format!("{base}.{n}"));
                ModelMetrics {
                    requests: c("requests"),
                    failovers: c("failovers"),
                    unavailable: c("unavailable"),
                    tokens: c("tokens"),
                    prompt_tokens: c("prompt_tokens"),
                    completion_tokens: c("completion_tokens"),
                    usage_missing: c("usage_missing"),
                }
            })
            .collect();
        let providers = config
            .providers
            .upstreams
            .iter()
            .map(|u| {
                let base = format!("{}.{}", PROVIDERS.metrics, metrics::segment(&u.cluster));
                let c = |n: &str| Counter::define(&format!("{base}.{n}"));
                ProviderMetrics { rate_limited: c("rate_limited"), failures: c("failures"), tokens: c("tokens") }
            })
            .collect();
        let budgets = config
            .budgets
            .iter()
            .map(|b| {
                let base = format!("upstream_guard.llm.budget.{}", metrics::segment(&b.name));
                let c = |n: &str| Counter::define(&format!("{base}.{n}"));
                BudgetMetrics { admitted: c("admitted"), refused: c("refused"), charged_tokens: c("charged_tokens") }
            })
            .collect();
        Llm {
            pool: Pool::new(config.providers.clone(), PROVIDERS),
            ledger: LocalLedger { max_keys: config.max_keys, secret: shared::secret() },
            config,
            models,
            providers,
            budgets,
            unknown_model: Counter::define("upstream_guard.llm.unknown_model"),
            invalid_request: Counter::define("upstream_guard.llm.invalid_request"),
            contention: Counter::define("upstream_guard.llm.budget_contention"),
            table_full: Counter::define("upstream_guard.llm.budget_table_full"),
            warned: Cell::new(false),
        }
    }

    fn invalid(&self, status: u16, code: &str, message: &str) -> Flow {
        self.invalid_request.inc();
        json_reply(status, details::INVALID_REQUEST, error_json(code, message, serde_json::json!({})))
    }

    /// Reads the budget keys of this request (at the headers: every budget, whatever the model).
    fn budget_keys(&self, cx: &mut Cx<'_>) -> Vec<Vec<u8>> {
        if self.config.budgets.is_empty() {
            return Vec::new();
        }
        let mut view = View { cx, client_ip: &self.config.client_ip, client: None };
        let keys = self.config.budgets.iter().map(|b| b.key(&mut view)).collect();
        if view.client.is_some_and(|c| c.from_client_header()) && !self.warned.replace(true) {
            host::log(
                Level::Warn,
                "llm: a budget key's client address came from x-forwarded-for (source.address has port 0), a header \
                 the client can write: set use_remote_address: true on the listener's HttpConnectionManager",
            );
        }
        keys
    }

    /// Charges what the response reported, once.
    fn charge(&self, st: &mut LlmStream, now: u64) {
        let Some(mut meter) = st.meter.take() else { return };
        let usage: Option<Usage> = meter.finish();
        let tokens = usage.and_then(|u| u.tokens());
        if let (Some(m), Some(p)) = (st.model.and_then(|i| self.models.get(i)), st.provider) {
            match (tokens, usage) {
                (Some(tokens), Some(u)) => {
                    m.prompt_tokens.add(u.prompt.unwrap_or(0));
                    m.completion_tokens.add(u.completion.unwrap_or(0));
                    m.tokens.add(tokens);
                    if let Some(pm) = self.providers.get(p) {
                        pm.tokens.add(tokens);
                    }
                }
                _ => {
                    m.usage_missing.inc();
                    host::log_with(Level::Debug, || "llm: the response reported no usage: nothing charged".to_string());
                }
            }
        }
        self.settle(st, tokens.unwrap_or(0), now);
    }

    /// Settles every budget of the request once: its reservation given back, `used` charged. An
    /// answer that failed or reported nothing settles with `used` 0.
    fn settle(&self, st: &mut LlmStream, used: u64, now: u64) {
        for (b, key, reserved) in std::mem::take(&mut st.budget_keys) {
            if reserved == 0 && used == 0 {
                continue;
            }
            let (Some(budget), Some(bm)) = (self.config.budgets.get(b), self.budgets.get(b)) else { continue };
            match self.ledger.settle(budget, &key, reserved, used, now) {
                Ok(Owned::Done(())) => bm.charged_tokens.add(used),
                Ok(Owned::Full) => {
                    self.table_full.inc();
                    host::log_with(Level::Debug, || format!("llm: budget {:?}: table full, not charged", budget.name));
                }
                Err(e) => {
                    self.contention.inc();
                    host::log(Level::Warn, &format!("llm: could not charge budget {:?} ({e:?})", budget.name));
                }
            }
        }
    }
}

fn json_reply(status: u16, details: &'static str, body: String) -> Flow {
    let mut reply = LocalReply::text(status, details, String::new()).header("content-type", "application/json");
    reply.body = body.into_bytes();
    Flow::Reply(reply)
}

/// Per stream.
#[derive(Debug, Default)]
pub struct LlmStream {
    /// The path is one of ours.
    claimed: Option<bool>,
    /// Every budget's key for this request, read at the headers.
    keys: Vec<Vec<u8>>,
    /// The budgets that apply (index, key, tokens reserved), until settled; and the least
    /// remaining at admission.
    budget_keys: Vec<(usize, Vec<u8>, u64)>,
    remaining: Option<u64>,
    model: Option<usize>,
    provider: Option<usize>,
    meter: Option<UsageMeter>,
    /// The gateway added `stream_options.include_usage`: the usage chunk is not the client's.
    added_usage: bool,
    /// Removes that chunk from the streamed answer.
    trim: Option<UsageTrim>,
    /// An OpenAI-shaped body in place of Envoy's own reply.
    replacement: Option<Vec<u8>>,
    /// When the request went to its provider (host clock), where slow calls are counted.
    sent_at: Option<u64>,
}

impl Llm {
    fn claimed(&self, st: &mut LlmStream, cx: &mut Cx<'_>) -> bool {
        if let Some(c) = st.claimed {
            return c;
        }
        let c = cx.request_header(":path").is_some_and(|p| self.config.claims(p));
        st.claimed = Some(c);
        c
    }

    /// The body is in: decide, rewrite, route.
    fn route(&self, st: &mut LlmStream, cx: &mut Cx<'_>, raw: &[u8]) -> Flow {
        let config = &self.config;
        let scanned = match scan(raw) {
            Ok(s) => s,
            Err(e) => return self.invalid(400, "invalid_request", &e.to_string()),
        };
        let Some(mi) = config.models.iter().position(|m| m.name == scanned.model) else {
            self.unknown_model.inc();
            let names = config.model_names();
            let message =
                format!("model {:?} is not served here; configured models: {}", scanned.model, names.join(", "));
            return json_reply(
                404,
                details::UNKNOWN_MODEL,
                error_json("model_not_found", &message, serde_json::json!({"models": names})),
            );
        };
        let Some(route) = config.models.get(mi) else { return Flow::Continue };
        let now = cx.now();

        // Budgets: refused while any applicable balance is negative (or, for a request that
        // reserves, empty); each admitting budget reserves the request's estimate at once.
        let mut remaining: Option<u64> = None;
        let mut applied: Vec<(usize, Vec<u8>, u64)> = Vec::new();
        let estimate = scanned.max_tokens.unwrap_or(config.reserve_tokens);
        for (b, budget) in config.budgets.iter().enumerate() {
            if !budget.applies_to(&route.name) {
                continue;
            }
            let key = st.keys.get(b).cloned().unwrap_or_default();
            let bm = self.budgets.get(b);
            let reserve = budget.rate.reservation(estimate);
            let (admission, reserved) = match self.ledger.reserve(budget, &key, reserve, now) {
                Ok(Owned::Done(a)) => (a, reserve),
                Ok(Owned::Full) => {
                    self.table_full.inc();
                    (Admission::unmetered(budget.rate.tokens), 0)
                }
                Err(e) => {
                    self.contention.inc();
                    host::log(Level::Warn, &format!("llm: could not reserve from budget {:?} ({e:?})", budget.name));
                    (Admission::unmetered(budget.rate.tokens), 0)
                }
            };
            match admission.combine(remaining) {
                Ok(least) => {
                    remaining = least;
                    applied.push((b, key, reserved));
                }
                Err(retry_after_ns) => {
                    // What the budgets before this one reserved goes back.
                    st.budget_keys = std::mem::take(&mut applied);
                    self.settle(st, 0, now);
                    if let Some(bm) = bm {
                        bm.refused.inc();
                    }
                    let secs = retry_after_secs(retry_after_ns);
                    let message = format!("token budget {:?} is spent: retry after {secs} s", budget.name);
                    let mut body =
                        error_json("rate_limit_exceeded", &message, serde_json::json!({"budget": budget.name}));
                    body.push('\n');
                    let Flow::Reply(reply) = json_reply(429, details::TOKEN_BUDGET, body) else {
                        return Flow::Continue;
                    };
                    return Flow::Reply(
                        reply.header("retry-after", secs.to_string()).header("x-ratelimit-remaining-tokens", "0"),
                    );
                }
            }
        }
        for (b, _, _) in &applied {
            if let Some(bm) = self.budgets.get(*b) {
                bm.admitted.inc();
            }
        }
        st.budget_keys = applied;

        // The first available provider of the model.
        let states = self.pool.states(cx.epoch());
        let mm = self.models.get(mi);
        let ti = match choose(route, &self.pool.config, &states, now, config.demote_failed_ns) {
            Ok(t) => t,
            Err(unavailable) => {
                if let Some(m) = mm {
                    m.unavailable.inc();
                }
                let retry = unavailable.retry_after_ns().map(retry_after_secs);
                cx.facts().note = Some(Note {
                    cause: Cause::ModelUnavailable,
                    retry_after_s: retry,
                    reasons: Some(unavailable.reasons()),
                });
                self.settle(st, 0, now);
                let detailed = self.pool.config.trust.trusts(cx.peer());
                let Flow::Reply(reply) = json_reply(503, details::MODEL_UNAVAILABLE, unavailable.json(detailed)) else {
                    return Flow::Continue;
                };
                return Flow::Reply(reply.header("retry-after", retry.unwrap_or(1).to_string()));
            }
        };
        let Some(target) = route.targets.get(ti) else { return Flow::Continue };
        let cluster = config.cluster(target.provider).to_string();

        if needs_rewrite(&scanned, target.model.as_deref(), config.stream_usage) {
            let body = rewrite(raw, &scanned, target.model.as_deref(), config.stream_usage);
            let _ = host::set_buffer(BufferType::HttpRequestBody, 0, raw.len(), &body);
        }
        // Routes match the filter state; the route the headers matched is forgotten.
        let routed = host::set_property(ROUTE_PROPERTY.as_bytes(), cluster.as_bytes())
            .and_then(|()| host::foreign("clear_route_cache", b"").map(drop));
        if let Err(status) = routed {
            host::log(Level::Error, &format!("llm: cannot route to {cluster:?}: the host refused ({status:?})"));
        }
        cx.facts().cluster = Some(cluster);
        self.pool.routed(target.provider);
        if let Some(m) = mm {
            m.requests.inc();
            if ti > 0 {
                m.failovers.inc();
            }
        }
        st.model = Some(mi);
        st.provider = Some(target.provider);
        st.sent_at = self.pool.sent_at(cx);
        st.added_usage = config.stream_usage && scanned.stream && !scanned.stream_options;
        st.remaining = remaining;
        Flow::Continue
    }
}

impl Llm {
    /// True when a provider of the stream's model other than `p` is available and has not just
    /// failed: the client's retry goes there at once.
    fn elsewhere(&self, st: &LlmStream, p: usize, states: &[Health], now: u64) -> bool {
        let route = st.model.and_then(|m| self.config.models.get(m));
        route.is_some_and(|r| another_ready(r, p, states, now, self.config.demote_failed_ns))
    }

    /// A provider failed this request: say when to retry and, in place of Envoy's own plain-text
    /// reply (a refused connection, a timeout), send the OpenAI-shaped error every other refusal
    /// on this path has.
    fn failed(
        &self,
        st: &mut LlmStream,
        cx: &mut Cx<'_>,
        p: usize,
        obs: &upstream_guard_glue::stream::OwnedObservation,
    ) {
        let now = cx.now();
        let states = self.pool.states(cx.epoch());
        let other = self.elsewhere(st, p, &states, now);
        let local = !obs.details.is_empty() && obs.details != "via_upstream";
        let model = st.model.and_then(|m| self.config.models.get(m)).map_or("", |m| m.name.as_str());
        let (body, retry_after) = provider_failed(model, obs.status.unwrap_or(503), classify(&obs.view()), other);
        if local && !cx.end_of_stream {
            cx.set_response_header("content-type", b"application/json");
            cx.set_response_header("content-length", body.len().to_string().as_bytes());
            st.replacement = Some(body.into_bytes());
        }
        if cx.response_header("retry-after").is_none() {
            cx.set_response_header("retry-after", retry_after.to_string().as_bytes());
        }
    }
}

impl Stage for Llm {
    type Stream = LlmStream;

    fn request(&self, st: &mut LlmStream, cx: &mut Cx<'_>) -> Flow {
        if !self.claimed(st, cx) {
            return Flow::Continue;
        }
        if cx.end_of_stream {
            return self.invalid(400, "invalid_request", "this API needs a JSON request body with a model");
        }
        st.keys = self.budget_keys(cx);
        cx.remove_request_header("content-length");
        cx.remove_request_header("accept-encoding");
        Flow::Body
    }

    fn request_body(&self, st: &mut LlmStream, cx: &mut Cx<'_>, size: usize, end: bool) -> Flow {
        let max = self.config.max_body_bytes;
        if size > max {
            return self.invalid(
                413,
                "request_too_large",
                &format!("the request body is larger than the {max} bytes this gateway reads to find the model"),
            );
        }
        if !end {
            return Flow::Continue;
        }
        let raw = host::buffer(BufferType::HttpRequestBody, 0, size).unwrap_or_default();
        self.route(st, cx, &raw)
    }

    fn response(&self, st: &mut LlmStream, cx: &mut Cx<'_>) {
        let Some(p) = st.provider else { return };
        if cx.facts().replied.is_some() {
            // A later stage of this module refused the request: no provider saw it.
            return;
        }
        let status = cx.status();
        if status == Some(429) {
            let map = host::header_map(MapType::ResponseHeaders).unwrap_or_default();
            let pairs = Pairs::new(&map);
            let values = RESET_HEADER_NAMES.map(|n| pairs.get(n.as_bytes()));
            let now = cx.now();
            let pause = provider_pause(
                &ResetHeaders::from_values(values),
                now,
                self.config.rate_limited_default_ns,
                self.config.rate_limited_max_ns,
            );
            let until = now.saturating_add(pause.ns);
            self.pool.update(p, |h| h.apply_rate_limit(until));
            if let Some(pm) = self.providers.get(p) {
                pm.rate_limited.inc();
            }
            let cluster = self.config.cluster(p);
            host::log_with(Level::Info, || {
                format!(
                    "llm: provider {cluster:?} answered 429: paused for {} ms ({:?})",
                    pause.ns / 1_000_000,
                    pause.source
                )
            });
            // The client's own retry (its SDK retries a 429) goes to the model's next provider
            // if one is available: it need not wait for this provider's pause.
            let states = self.pool.states(cx.epoch());
            let other = self.elsewhere(st, p, &states, now);
            let mut reasons =
                format!("{cluster}: rate limited by the upstream (429), back in {} ms", pause.ns / 1_000_000);
            if other {
                cx.set_response_header("retry-after", b"0");
                reasons.push_str("; another provider of the model is available: retry now");
            }
            cx.facts().note = Some(Note {
                cause: Cause::UpstreamRateLimited,
                retry_after_s: Some(pause.ns.div_ceil(1_000_000_000)),
                reasons: Some(reasons),
            });
        } else if let Some(judged) = self.pool.judge(cx, st.sent_at) {
            let failed = judged == Judgement::Failed;
            if failed {
                if let Some(pm) = self.providers.get(p) {
                    pm.failures.inc();
                }
            }
            self.pool.passive(p, judged, cx);
            if failed {
                let obs = cx.observation();
                self.failed(st, cx, p, &obs);
            }
        }
        if let Some(r) = st.remaining {
            cx.set_response_header("x-ratelimit-remaining-tokens", r.to_string().as_bytes());
        }
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        if ok {
            let content_type = cx.response_header("content-type");
            st.meter = content_type.as_deref().and_then(UsageMeter::for_content_type);
            if st.added_usage && matches!(st.meter, Some(UsageMeter::Sse(_))) && !cx.end_of_stream {
                // The stream the client asked for has no usage chunk: it is taken out as it
                // passes, so the length changes.
                st.trim = Some(UsageTrim::new());
                let _ = host::remove_header(MapType::ResponseHeaders, "content-length");
            }
            if cx.end_of_stream {
                let now = cx.now();
                self.charge(st, now);
            }
        }
        if (!ok || st.meter.is_none()) && !st.budget_keys.is_empty() {
            // No usage will come (a failed answer, or one with nothing to read): what was
            // reserved goes back now.
            let now = cx.now();
            self.settle(st, 0, now);
        }
    }

    fn response_body(&self, st: &mut LlmStream, cx: &mut Cx<'_>, size: usize, end: bool) -> BodyAction {
        if st.replacement.is_some() {
            if !end {
                // Hold Envoy's reply until it is complete, then swap it whole.
                return BodyAction::Hold;
            }
            if let Some(body) = st.replacement.take() {
                let _ = host::set_buffer(BufferType::HttpResponseBody, 0, size, &body);
            }
            return BodyAction::Continue;
        }
        let Some(meter) = st.meter.as_mut() else { return BodyAction::Continue };
        let seen = cx.facts().response_seen().min(size);
        let chunk = if size > seen { host::buffer(BufferType::HttpResponseBody, seen, size - seen) } else { None };
        if let Some(c) = &chunk {
            meter.feed(c);
        }
        if let Some(trim) = st.trim.as_mut() {
            let mut out = Vec::with_capacity(chunk.as_ref().map_or(0, Vec::len));
            if let Some(c) = &chunk {
                trim.feed(c, &mut out);
            }
            if end {
                trim.finish(&mut out);
            }
            if chunk.as_deref().unwrap_or_default() != out.as_slice() {
                let _ = host::set_buffer(BufferType::HttpResponseBody, seen, size - seen, &out);
            }
        }
        if end {
            let now = cx.now();
            self.charge(st, now);
        }
        BodyAction::Continue
    }

    fn log(&self, st: &mut LlmStream, cx: &mut Cx<'_>) {
        // A response that ended with trailers, or was cut: charge what it reported. Anything
        // still reserved (a later stage refused, the stream was reset) goes back.
        if st.meter.is_some() || !st.budget_keys.is_empty() {
            let now = cx.now();
            self.charge(st, now);
            self.settle(st, 0, now);
        }
    }

    fn shape(&self, st: &mut LlmStream, cx: &mut Cx<'_>, reply: &mut LocalReply) {
        // Every refusal on an LLM path speaks the OpenAI error shape, whichever stage sent it:
        // the client's SDK parses `error.code` and `error.message`.
        if is_error_json(&reply.body) || !self.claimed(st, cx) {
            return;
        }
        let text = String::from_utf8_lossy(&reply.body);
        reply.body = reply_json(reply.status, reply_code(reply.details), text.trim_end()).into_bytes();
        reply.set_header("content-type", "application/json");
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
        out.push(":path".into());
        out.extend(self.config.header_names().into_iter().map(str::to_string));
    }
}
