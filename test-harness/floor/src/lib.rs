//! The floor of the benchmarks: an `HttpContext` that implements nothing, built with the
//! proxy-wasm Rust SDK as any SDK filter would be. Whatever a filter does costs this much before
//! it does anything (V8's per-stream entries into the module).

use proxy_wasm::traits::{Context, HttpContext};

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Empty) });
}}

struct Empty;

impl Context for Empty {}

impl HttpContext for Empty {}
