//! The proxy-wasm glue every upstream-guard filter shares, written once.
//!
//! Filters are adapters: host callbacks in, [`upstream_guard`] core calls, host actions out.
//! Everything in between that talks to the host lives here, so that each filter's `lib.rs`
//! reads as policy wiring and nothing else:
//!
//! - [`init`]: a panic hook that logs the panic message before the VM aborts (otherwise Envoy
//!   only says the VM failed);
//! - [`load_config`]: plugin configuration → validated core type, or an error log naming the
//!   field and the fix, and `false` from `on_configure`;
//! - [`props`]: typed property reads that treat "missing" as `None`, never as a panic;
//! - [`send_local_reply`]: local replies *with* a `response.code_details` string (the SDK's
//!   `send_http_response` passes none), so the diagnostics filter can name our own replies;
//! - [`shared::update`]: the compare-and-swap loop over shared data;
//! - [`now_nanos`], [`clear_route_cache`], [`Counter`], [`Gauge`] and [`log`].

use proxy_wasm::hostcalls;
use proxy_wasm::types::{LogLevel, MetricType, Status};
use upstream_guard::config::ConfigError;

pub mod props;
pub mod shared;

/// Installs the panic hook. Call first thing in `proxy_wasm::main!`.
pub fn init() {
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("upstream-guard panicked: {info}"));
    }));
}

/// Logs at `level`; a failing log call is dropped (there is nowhere else to report it).
pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Parses the plugin configuration with `parse`. On error, logs it (field, problem, fix) at
/// error level, prefixed with the filter's name, and returns `None`: the caller returns `false`
/// from `on_configure` so that Envoy refuses the configuration instead of running without it.
pub fn load_config<C>(
    filter: &str,
    raw: Option<Vec<u8>>,
    parse: impl FnOnce(&[u8]) -> Result<C, ConfigError>,
) -> Option<C> {
    let raw = raw.unwrap_or_default();
    match parse(&raw) {
        Ok(config) => Some(config),
        Err(e) => {
            log(LogLevel::Error, &format!("{filter}: {e}"));
            None
        }
    }
}

/// The host's wall clock in nanoseconds since the Unix epoch: the one clock read of every filter,
/// passed to the pure core as `now`. On a host that cannot tell the time, 0 (every limit then
/// behaves as if no time passed, which errs on the strict side).
pub fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Makes `name` safe inside a metric name: ASCII letters, digits, `_` and `-`; anything else
/// becomes `_`.
pub fn metric_segment(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// Clears the route cache so that Envoy re-matches the route after we changed a header that
/// routing depends on (`cluster_header`). Uses the `clear_route_cache` foreign function, which
/// works on every ABI version; returns false where the host does not offer it.
pub fn clear_route_cache() -> bool {
    hostcalls::call_foreign_function("clear_route_cache", None).is_ok()
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_send_local_response(
        status_code: u32,
        details_data: *const u8,
        details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

/// Sends a local reply carrying `details` as `response.code_details`.
pub fn send_local_reply(status: u16, headers: &[(&str, &str)], body: &[u8], details: &str) -> Result<(), Status> {
    let headers = serialize_pairs(headers);
    #[cfg(target_arch = "wasm32")]
    {
        // SAFETY: every pointer/length pair points into a live slice for the duration of the call;
        // the host copies the data before returning.
        let status = unsafe {
            proxy_send_local_response(
                u32::from(status),
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        };
        if status == 0 {
            Ok(())
        } else {
            Err(Status::InternalFailure)
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (status, headers, body, details);
        Err(Status::InternalFailure)
    }
}

/// The proxy-wasm header-map encoding: u32 count, then (key length, value length) per pair,
/// then every key and value followed by NUL; all little-endian.
pub fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs.iter().map(|(k, v)| 10 + k.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// A counter metric, defined once at configure time. Shows in Envoy's `/stats` under its name.
#[derive(Debug, Clone, Copy)]
pub struct Counter(Option<u32>);

impl Counter {
    /// Defines `name`; on a host without metrics the counter is a no-op.
    pub fn define(name: &str) -> Counter {
        Counter(hostcalls::define_metric(MetricType::Counter, name).ok())
    }

    /// Adds one.
    pub fn inc(self) {
        if let Some(id) = self.0 {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

/// A gauge metric, defined once.
#[derive(Debug, Clone, Copy)]
pub struct Gauge(Option<u32>);

impl Gauge {
    /// Defines `name`; on a host without metrics the gauge is a no-op.
    pub fn define(name: &str) -> Gauge {
        Gauge(hostcalls::define_metric(MetricType::Gauge, name).ok())
    }

    /// Sets the value.
    pub fn set(self, value: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_use_the_abi_encoding() {
        let bytes = serialize_pairs(&[("a", "bc")]);
        assert_eq!(bytes, [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'b', b'c', 0]);
    }
}
