//! The deterministic proxy-wasm host the host-level tests use: the
//! [`proxy_wasm_test_host`] crate (its own crate so that any proxy-wasm project can use it),
//! re-exported here under the names the tests have always used.
//!
//! ```no_run
//! # use test_harness::host::*;
//! # use std::time::Duration;
//! # fn main() -> Result<(), HostError> {
//! let host = Host::new().workers(2);
//! let plugin = host.load(test_harness::paths::wasm_path("rate_limiter").unwrap(),
//!     serde_json::json!({"rules": [{"name": "all", "limit": {"requests": 1, "per": "1s"}}]}))?;
//! let mut s = plugin.worker(0).http_stream().property("source.address", "10.0.0.1:5555");
//! assert_eq!(s.request_headers(&[(":path", "/a"), (":method", "GET")], true)?, Action::Continue);
//! let mut t = plugin.worker(1).http_stream().property("source.address", "10.0.0.1:5556");
//! t.request_headers(&[(":path", "/a"), (":method", "GET")], true)?;
//! assert_eq!(t.local_response().unwrap().status, 429);
//! host.clock().advance(Duration::from_secs(1));
//! plugin.tick_all()?;
//! # Ok(()) }
//! ```

pub use proxy_wasm_test_host::*;

/// proxy-wasm's header-map encoding of text pairs (see [`pairs::encode`] for bytes).
pub fn encode_pairs(pairs: &[(String, String)]) -> Vec<u8> {
    proxy_wasm_test_host::pairs::encode(pairs)
}

/// Parses proxy-wasm's header-map encoding into text pairs (lossy for bytes that are not
/// UTF-8; see [`pairs::decode`] for bytes); `None` if malformed.
pub fn decode_pairs(b: &[u8]) -> Option<Vec<(String, String)>> {
    let pairs = proxy_wasm_test_host::pairs::decode(b)?;
    Some(
        pairs
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()))
            .collect(),
    )
}
