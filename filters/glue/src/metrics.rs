//! Counters and gauges, defined once at configure time (or once per name, for families keyed by
//! a cluster). They show in Envoy's `/stats` and Prometheus output under the name given.

use std::cell::{Cell, RefCell};
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

/// How often a `.wasm` hands its [`Tally`] counts to the host, at most (ms): the tick period of
/// every `.wasm` is at most this.
pub const FLUSH_MS: u32 = 1_000;

thread_local! {
    /// Counts of this VM's [`Tally`] counters not yet handed to the host: (metric id, count).
    static PENDING: RefCell<Vec<(u32, u64)>> = const { RefCell::new(Vec::new()) };
}

/// A counter bumped on the common path (admitted, routed). In a `.wasm` every host call costs a
/// trip out of the sandbox, so counts add up in the VM and reach the host on its next tick, at
/// most [`FLUSH_MS`] later: Envoy's `/stats` and Prometheus see the same names and totals, up to
/// a second late. In the dynamic module a host counter is cheap and counts at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    id: Option<u32>,
    /// This VM's pending slot.
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    slot: usize,
}

impl Tally {
    /// Defines `name`.
    pub fn define(name: &str) -> Tally {
        let id = host::define_metric(MetricKind::Counter, name).ok();
        // Off wasm a tally counts at once: it needs no pending slot.
        let slot = match id.filter(|_| cfg!(target_arch = "wasm32")) {
            Some(id) => PENDING.with(|p| match p.try_borrow_mut() {
                Ok(mut p) => {
                    p.push((id, 0));
                    p.len() - 1
                }
                Err(_) => usize::MAX,
            }),
            None => usize::MAX,
        };
        Tally { id, slot }
    }

    /// Adds one.
    pub fn inc(self) {
        #[cfg(target_arch = "wasm32")]
        {
            let counted = PENDING.with(|p| match p.try_borrow_mut() {
                Ok(mut p) => match p.get_mut(self.slot) {
                    Some((_, n)) => {
                        *n = n.saturating_add(1);
                        true
                    }
                    None => false,
                },
                Err(_) => false,
            });
            if counted {
                return;
            }
        }
        Counter(self.id).inc();
    }
}

/// Hands every pending [`Tally`] count to the host (on each tick): one host call per counter
/// that moved, none for the others.
pub fn flush() {
    let moved: Vec<(u32, u64)> = PENDING.with(|p| match p.try_borrow_mut() {
        Ok(mut p) => p.iter_mut().filter(|(_, n)| *n > 0).map(|(id, n)| (*id, std::mem::take(n))).collect(),
        Err(_) => Vec::new(),
    });
    for (id, n) in moved {
        Counter(Some(id)).add(n);
    }
}

/// The tick period a module needs: the stages' own, and at most [`FLUSH_MS`] in a `.wasm` that
/// defined a [`Tally`] (only a `.wasm` keeps pending counts; they are flushed on the tick, so
/// such a module must export `proxy_on_tick`).
pub fn tick_period(stages: Option<u32>) -> Option<u32> {
    if PENDING.with(|p| p.try_borrow().map_or(true, |p| !p.is_empty())) {
        Some(stages.map_or(FLUSH_MS, |ms| ms.min(FLUSH_MS)))
    } else {
        stages
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

impl Gauge {
    /// Adds `n` (Envoy adds to a gauge as it does to a counter).
    pub fn add(self, n: u64) {
        if let Some(id) = self.0 {
            let _ = host::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// The gauge of the linear memory of every VM of the module, in bytes: each VM adds what its
/// memory grew by since it last reported (a Wasm memory never shrinks), so the gauge is the sum
/// over the VMs, and a leak in any of them shows as growth. A VM that Envoy replaced stays counted.
pub const VM_MEMORY: &str = "upstream_guard.vm.memory_bytes";

thread_local! {
    /// The gauge, and the size this VM last added to it.
    static MEMORY: Cell<Option<(Gauge, u64)>> = const { Cell::new(None) };
}

/// This VM's linear memory in bytes (0 where there is none to measure, as in native tests).
fn linear_memory() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        u64::try_from(core::arch::wasm32::memory_size(0)).unwrap_or(u64::MAX).saturating_mul(65_536)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

/// Adds this VM's memory growth to [`VM_MEMORY`] (called on every tick: one host call, none
/// when the memory did not grow).
pub fn report_memory() {
    MEMORY.with(|m| {
        let (gauge, reported) = m.get().unwrap_or_else(|| (Gauge::define(VM_MEMORY), 0));
        let now = linear_memory();
        if now > reported {
            gauge.add(now - reported);
        }
        m.set(Some((gauge, now.max(reported))));
    });
}

/// Makes `name` safe inside a metric name: ASCII letters, digits, `_` and `-`; anything else
/// becomes `_`.
pub fn segment(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// The segment a family's template names carry where a member's name goes (no member name
/// can hold braces: [`segment`] replaces them).
pub const FAMILY_SLOT: &str = "{cluster}";

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
        // A host that defines metrics only at configure time (Envoy's dynamic modules) learns
        // the family's names now, with [`FAMILY_SLOT`] where the member's name goes.
        #[cfg(not(target_arch = "wasm32"))]
        if crate::native::with(|_| ()).is_some() {
            let _ = define(FAMILY_SLOT);
        }
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
