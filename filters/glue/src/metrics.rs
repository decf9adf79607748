//! Counters and gauges, defined once at configure time (or once per name, for families keyed by
//! a cluster). They show in Envoy's `/stats` and Prometheus output under the name given.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::host::{self, MetricKind};

/// A counter; a no-op on a host without metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counter(Option<u32>);

impl Counter {
    /// Defines `name`.
    pub fn define(name: &str) -> Counter {
        Counter(host::define_metric(MetricKind::Counter, name).ok())
    }

    /// Adds one.
    pub fn inc(self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(self, n: u64) {
        if let Some(id) = self.0 {
            let _ = host::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// A gauge; a no-op on a host without metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauge(Option<u32>);

impl Gauge {
    /// Defines `name`.
    pub fn define(name: &str) -> Gauge {
        Gauge(host::define_metric(MetricKind::Gauge, name).ok())
    }

    /// Sets the value.
    pub fn set(self, value: u64) {
        if let Some(id) = self.0 {
            let _ = host::record_metric(id, value);
        }
    }
}

/// Makes `name` safe inside a metric name: ASCII letters, digits, `_` and `-`; anything else
/// becomes `_`.
pub fn segment(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// A set of metrics per name (a cluster), defined on first use. The names come from Envoy's own
/// configuration (routed clusters), so the family is as bounded as that.
#[derive(Debug)]
pub struct Family<M: Copy> {
    define: fn(&str) -> M,
    by_name: RefCell<HashMap<String, M>>,
}

impl<M: Copy> Family<M> {
    /// A family whose members `define` creates from the (already safe) name segment.
    pub fn new(define: fn(&str) -> M) -> Family<M> {
        Family { define, by_name: RefCell::new(HashMap::new()) }
    }

    /// The metrics of `name`.
    pub fn get(&self, name: &str) -> M {
        if let Some(m) = self.by_name.try_borrow().ok().and_then(|b| b.get(name).copied()) {
            return m;
        }
        let m = (self.define)(&segment(name));
        if let Ok(mut b) = self.by_name.try_borrow_mut() {
            b.insert(name.to_string(), m);
        }
        m
    }
}
