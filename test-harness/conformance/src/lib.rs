//! A filter for the harness's own tests: it calls every host function the proxy-wasm Rust SDK
//! wraps, driven by the request header `x-op` (HTTP) or by the data it sees (L4), and reports
//! what it saw in headers, logs and metrics, so that tests can check the host's answers.
//!
//! The plugin configuration `"tcp"` makes it an L4 (network) filter; anything else, an HTTP
//! filter; `"refuse"` makes `on_configure` fail.
// This test filter calls the SDK's String getters on purpose (it exercises every host function
// the way SDK-built filters do); the shipped filters may not (see .clippy.toml).
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod http;
mod tcp;

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { queue: 0, ticks: 0, tcp: false }) });
}}

struct Root {
    queue: u32,
    ticks: u32,
    tcp: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let vm = self.get_vm_configuration().unwrap_or_default();
        log::info!("vm config: {}", String::from_utf8_lossy(&vm));
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let cfg = self.get_plugin_configuration().unwrap_or_default();
        if cfg == b"\"refuse\"" {
            log::error!("refusing configuration");
            return false;
        }
        self.tcp = cfg == b"\"tcp\"";
        hostcalls::define_metric(MetricType::Counter, "conf.ticks").unwrap();
        hostcalls::define_metric(MetricType::Gauge, "conf.gauge").unwrap();
        hostcalls::define_metric(MetricType::Histogram, "conf.hist").unwrap();
        self.queue = self.register_shared_queue("conf.q");
        self.set_tick_period(Duration::from_millis(100));
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let id = hostcalls::define_metric(MetricType::Counter, "conf.ticks").unwrap();
        hostcalls::increment_metric(id, 1).unwrap();
        self.enqueue_shared_queue(self.queue, Some(format!("tick {}", self.ticks).as_bytes())).unwrap();
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            log::info!("dequeued {}", String::from_utf8_lossy(&item));
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(http::Stream::new(context_id)))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(tcp::Connection::default()))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(if self.tcp { ContextType::StreamContext } else { ContextType::HttpContext })
    }
}
