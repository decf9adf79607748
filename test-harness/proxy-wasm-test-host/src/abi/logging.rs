//! Logging, the time and ticks: `proxy_log`, `proxy_get_log_level`,
//! `proxy_get_current_time_nanoseconds`, `proxy_set_tick_period_milliseconds`.
//!
//! Log lines are kept per VM for assertions (every level: the host's log level only tells the
//! filter what Envoy would print). Time is the host's fake clock; the tick period is recorded
//! and [`Worker::tick`](crate::Worker::tick) delivers ticks when the test asks.

use std::sync::atomic::Ordering;

use wasmtime::Linker;

use super::memory::{slice, with, write, write_u32, HostResult, C};
use crate::state::VmState;

fn proxy_log(c: &mut C<'_>, level: i32, ptr: i32, len: i32) -> HostResult {
    with(c, |data, s| {
        let message = String::from_utf8_lossy(slice(data, ptr, len)?).into_owned();
        s.logs.push((level as u32, message));
        Ok(())
    })
}

fn proxy_get_log_level(c: &mut C<'_>, ret: i32) -> HostResult {
    let lvl = c.data().shared.log_level.load(Ordering::Relaxed);
    write_u32(c, ret, lvl)
}

fn proxy_get_current_time_nanoseconds(c: &mut C<'_>, ret: i32) -> HostResult {
    let now = c.data().shared.clock.now_nanos();
    write(c, ret, &now.to_le_bytes())
}

fn proxy_set_tick_period_milliseconds(c: &mut C<'_>, ms: i32) -> HostResult {
    c.data_mut().tick_ms = ms as u32;
    Ok(())
}

/// Adds this area's host functions to `linker`.
pub fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    host_fn!(l, ProxyLog, proxy_log, (level: i32, ptr: i32, len: i32));
    host_fn!(l, ProxyGetLogLevel, proxy_get_log_level, (ret: i32));
    host_fn!(l, ProxyGetCurrentTimeNanoseconds, proxy_get_current_time_nanoseconds, (ret: i32));
    host_fn!(l, ProxySetTickPeriodMilliseconds, proxy_set_tick_period_milliseconds, (ms: i32));
    Ok(())
}
