//! The adaptive concurrency stage: per upstream cluster, a limit on requests in flight that every
//! worker shares and that follows the cluster's latency ([`upstream_guard::concurrency`]); when
//! a class's share of the limit is taken, its requests are refused at once (503, `Retry-After`,
//! gRPC RESOURCE_EXHAUSTED) instead of queueing on a backend that already answers late.
//!
//! Cost: one compare-and-swap update of the cluster's state when a request is admitted and one
//! when it ends (a read and a write each, in the cross-worker store: shared data in a `.wasm`,
//! process memory in the dynamic module), plus a clock read at each end. The count is exact
//! across workers: no worker's share is fixed in advance.
//!
//! The cluster is the one the stages before chose (the health router, the llm stage) or Envoy's
//! route resolved (`xds.cluster_name`): never a header a client wrote, so clients can neither
//! pick the cluster nor create state for clusters Envoy does not have.

use std::cell::RefCell;
use std::collections::HashMap;

use upstream_guard::access_log::{key, Fields};
use upstream_guard::concurrency::{latency_sample, Admission, Class, ConcurrencyConfig, Limiter};
use upstream_guard::details;
use upstream_guard::ratelimit::{retry_after_secs, ClientIp, Mode};
use upstream_guard_glue::shared::{self, UpdateError};
use upstream_guard_glue::stream::path;
use upstream_guard_glue::{host, Counter, Cx, Family, Flow, Gauge, Level, LocalReply, Stage};

use crate::rate_limiter::View;

const CAS_ATTEMPTS: u32 = 16;

/// Metrics of one cluster.
#[derive(Clone, Copy)]
struct ClusterMetrics {
    limit: Gauge,
    refused: Counter,
    shadow_refused: Counter,
    contention: Counter,
}

fn define(segment: &str) -> ClusterMetrics {
    let base = format!("upstream_guard.concurrency.{segment}");
    ClusterMetrics {
        limit: Gauge::define(&format!("{base}.limit")),
        refused: Counter::define(&format!("{base}.refused")),
        shadow_refused: Counter::define(&format!("{base}.shadow_refused")),
        contention: Counter::define(&format!("{base}.contention")),
    }
}

/// The stage, configured.
pub struct Concurrency {
    config: ConcurrencyConfig,
    metrics: Family<ClusterMetrics>,
    /// Ends this worker could not write (every compare-and-swap lost, or the store failed), by
    /// cluster key: taken off the count with this worker's next update of that cluster, so that
    /// a lost end never holds a slot. Bounded by the clusters Envoy has.
    owed: RefCell<HashMap<Vec<u8>, u32>>,
    /// What the class rules' request view needs of a client address section (they never read
    /// the address), made once.
    client_ip: ClientIp,
}

/// Per stream: the cluster whose count holds this request, when it went on, and its latency to
/// the response headers.
#[derive(Debug, Default)]
pub struct ConcurrencyStream {
    counted: Option<(String, Vec<u8>)>,
    sent_at: u64,
    latency_ns: Option<u64>,
}

impl Concurrency {
    /// The stage for `config`.
    pub fn new(config: ConcurrencyConfig) -> Concurrency {
        Concurrency {
            config,
            metrics: Family::new(define),
            owed: RefCell::new(HashMap::new()),
            client_ip: ClientIp::default(),
        }
    }

    /// The request's class: the first rule that matches it, `normal` otherwise. (The rules
    /// read the path, method and headers; the client address is not among what they match.)
    fn class(&self, cx: &mut Cx<'_>) -> Class {
        if self.config.rules.is_empty() {
            return Class::Normal;
        }
        let mut view = View { cx, client_ip: &self.client_ip, client: None };
        self.config.rules.iter().find(|r| r.matcher.matches(&mut view)).map_or(Class::Normal, |r| r.class)
    }

    /// Ends owed to `key`'s count by this worker.
    fn owed(&self, key: &[u8]) -> u32 {
        self.owed.try_borrow().ok().and_then(|o| o.get(key).copied()).unwrap_or(0)
    }

    /// `n` owed ends of `key` were written.
    fn paid(&self, key: &[u8], n: u32) {
        if n == 0 {
            return;
        }
        if let Ok(mut owed) = self.owed.try_borrow_mut() {
            if let Some(left) = owed.get_mut(key) {
                *left = left.saturating_sub(n);
                if *left == 0 {
                    owed.remove(key);
                }
            }
        }
    }

    fn refusal(&self, class: Class) -> LocalReply {
        let retry_after = retry_after_secs(self.config.window_ns).to_string();
        let mut reply = LocalReply::text(
            self.config.status,
            details::CONCURRENCY_LIMITED,
            format!("overloaded: {} requests are shed; retry after {retry_after} s\n", class.name()),
        )
        .header("retry-after", retry_after.as_bytes());
        reply.grpc_status = Some(self.config.grpc_status);
        reply
    }
}

impl Stage for Concurrency {
    type Stream = ConcurrencyStream;

    fn request(&self, st: &mut ConcurrencyStream, cx: &mut Cx<'_>) -> Flow {
        let cluster = match cx.facts().cluster.clone() {
            Some(c) => c,
            None => match cx.property_text(path::CLUSTER_NAME).filter(|c| !c.is_empty()) {
                Some(c) => c,
                None => return Flow::Continue,
            },
        };
        if !self.config.limits(&cluster) {
            return Flow::Continue;
        }
        let class = self.class(cx);
        let now = cx.now();
        let config = &self.config;
        let key = format!("ug.cc.{cluster}").into_bytes();
        let owed = self.owed(&key);
        let outcome = shared::update(&key, CAS_ATTEMPTS, |cur| {
            let created = cur.is_none();
            let mut l = cur.and_then(Limiter::decode).unwrap_or_else(|| Limiter::new(config));
            l.in_flight = l.in_flight.saturating_sub(owed);
            let admission = l.admit(config, class, now);
            let write = (admission == Admission::Admit || owed > 0).then(|| l.encode());
            (write, (admission, created.then_some(l.limit)))
        });
        if outcome.is_ok() {
            self.paid(&key, owed);
        }
        let m = self.metrics.get(&cluster);
        match outcome {
            Ok((Admission::Admit, first)) => {
                if let Some(limit) = first {
                    m.limit.set(u64::from(limit));
                }
                st.counted = Some((cluster, key));
                st.sent_at = now;
                Flow::Continue
            }
            Ok((Admission::Refuse { limit, in_flight }, _)) => {
                let shadow = config.mode == Mode::Shadow;
                let fields = Fields::new()
                    .add("cluster", &cluster)
                    .add("class", class.name())
                    .add("decision", if shadow { "shadow_refused" } else { "refused" })
                    .num("limit", u64::from(limit))
                    .num("in_flight", u64::from(in_flight));
                cx.publish(key::CONCURRENCY, &fields);
                if shadow {
                    m.shadow_refused.inc();
                    return Flow::Continue;
                }
                m.refused.inc();
                Flow::Reply(self.refusal(class))
            }
            Err(e) => {
                // Availability first: a request whose count could not be taken goes on uncounted.
                m.contention.inc();
                if let UpdateError::Host(s) = e {
                    host::log(Level::Warn, &format!("concurrency: shared data unavailable ({s:?})"));
                }
                Flow::Continue
            }
        }
    }

    fn response(&self, st: &mut ConcurrencyStream, cx: &mut Cx<'_>) {
        if st.counted.is_none() || cx.facts().replied.is_some() {
            // Not counted, or a later stage of this module refused it: no latency of the upstream's.
            return;
        }
        let elapsed = cx.now().saturating_sub(st.sent_at);
        st.latency_ns = latency_sample(&cx.observation().details, elapsed);
    }

    fn log(&self, st: &mut ConcurrencyStream, cx: &mut Cx<'_>) {
        let Some((cluster, key)) = st.counted.take() else { return };
        let now = cx.now();
        let config = &self.config;
        let latency = st.latency_ns;
        let owed = self.owed(&key);
        let changed = shared::update(&key, CAS_ATTEMPTS, |cur| {
            let mut l = cur.and_then(Limiter::decode).unwrap_or_else(|| Limiter::new(config));
            l.in_flight = l.in_flight.saturating_sub(owed);
            let change = l.end(config, latency, now);
            (Some(l.encode()), change)
        });
        match changed {
            Ok(change) => {
                self.paid(&key, owed);
                if let Some((old, new)) = change {
                    self.metrics.get(&cluster).limit.set(u64::from(new));
                    host::log_with(Level::Debug, || format!("concurrency: {cluster}: limit {old} -> {new}"));
                }
            }
            Err(_) => {
                self.metrics.get(&cluster).contention.inc();
                if let Ok(mut owed) = self.owed.try_borrow_mut() {
                    *owed.entry(key).or_insert(0) += 1;
                }
            }
        }
    }

    fn request_headers_read(&self, out: &mut Vec<String>) {
        for r in &self.config.rules {
            out.extend(r.matcher.header_names().into_iter().map(str::to_string));
        }
    }
}
