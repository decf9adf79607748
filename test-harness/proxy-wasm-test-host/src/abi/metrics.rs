//! Metrics: `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`,
//! `proxy_get_metric`, and the host-wide table behind them.
//!
//! Defining a name twice gives the same id, on every worker (Envoy's stats are process-wide).
//! As in Envoy: a counter only goes up (a negative increment is `BadArgument`) and recording
//! into it adds; a gauge is added to or set; a histogram records (this host keeps the last
//! value, so tests can read it) and can be neither incremented nor read back (`BadArgument`).

use std::collections::HashMap;
use std::sync::Mutex;

use wasmtime::Linker;

use super::memory::{slice, with, write, write_u32, HostResult, C};
use crate::state::VmState;
use crate::types::{MetricType, Status};

#[derive(Debug, Default)]
struct Table {
    by_name: HashMap<String, u32>,
    values: Vec<(String, MetricType, i64)>,
}

/// The host-wide metrics.
#[derive(Debug, Default)]
pub(crate) struct Metrics(Mutex<Table>);

impl Metrics {
    /// A metric's value by name.
    pub fn get(&self, name: &str) -> Option<i64> {
        let t = self.0.lock().ok()?;
        t.by_name.get(name).and_then(|id| t.values.get(*id as usize)).map(|(_, _, v)| *v)
    }

    /// Every metric, sorted by name.
    pub fn all(&self) -> Vec<(String, i64)> {
        let Ok(t) = self.0.lock() else { return Vec::new() };
        let mut out: Vec<_> = t.values.iter().map(|(n, _, v)| (n.clone(), *v)).collect();
        out.sort();
        out
    }

    fn update(&self, id: i32, f: impl FnOnce(MetricType, &mut i64) -> HostResult) -> HostResult {
        let mut t = self.0.lock().map_err(|_| Status::InternalFailure)?;
        let (_, kind, v) = t.values.get_mut(id as u32 as usize).ok_or(Status::NotFound)?;
        f(*kind, v)
    }
}

fn proxy_define_metric(c: &mut C<'_>, t: i32, np: i32, nl: i32, ret: i32) -> HostResult {
    let kind = MetricType::from_raw(t as u32).ok_or(Status::BadArgument)?;
    let id = with(c, |data, s| {
        let name = String::from_utf8_lossy(slice(data, np, nl)?).into_owned();
        let mut m = s.shared.metrics.0.lock().map_err(|_| Status::InternalFailure)?;
        if let Some(id) = m.by_name.get(&name) {
            return Ok(*id);
        }
        let id = m.values.len() as u32;
        m.values.push((name.clone(), kind, 0));
        m.by_name.insert(name, id);
        Ok(id)
    })?;
    write_u32(c, ret, id)
}

fn proxy_increment_metric(c: &mut C<'_>, id: i32, offset: i64) -> HostResult {
    c.data().shared.metrics.update(id, |kind, v| match kind {
        MetricType::Counter if offset < 0 => Err(Status::BadArgument),
        MetricType::Counter | MetricType::Gauge => {
            *v = v.wrapping_add(offset);
            Ok(())
        }
        MetricType::Histogram => Err(Status::BadArgument),
    })
}

fn proxy_record_metric(c: &mut C<'_>, id: i32, value: i64) -> HostResult {
    c.data().shared.metrics.update(id, |kind, v| {
        match kind {
            MetricType::Counter => *v = v.wrapping_add(value),
            MetricType::Gauge | MetricType::Histogram => *v = value,
        }
        Ok(())
    })
}

fn proxy_get_metric(c: &mut C<'_>, id: i32, ret: i32) -> HostResult {
    let mut value = 0;
    c.data().shared.metrics.update(id, |kind, v| match kind {
        MetricType::Histogram => Err(Status::BadArgument),
        _ => {
            value = *v;
            Ok(())
        }
    })?;
    write(c, ret, &(value as u64).to_le_bytes())
}

/// Adds this area's host functions to `linker`.
pub fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    host_fn!(l, ProxyDefineMetric, proxy_define_metric, (t: i32, np: i32, nl: i32, ret: i32));
    host_fn!(l, ProxyIncrementMetric, proxy_increment_metric, (id: i32, offset: i64));
    host_fn!(l, ProxyRecordMetric, proxy_record_metric, (id: i32, value: i64));
    host_fn!(l, ProxyGetMetric, proxy_get_metric, (id: i32, ret: i32));
    Ok(())
}
