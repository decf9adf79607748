//! The example in the README ("Testing filters without Envoy") and in the
//! `proxy-wasm-test-host` README, run as a test against the conformance filter. It is the
//! same code; only the path comes from `wasm_path` here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use proxy_wasm_test_host::{Action, Host};
use test_harness::paths::wasm_path;

#[test]
fn readme_example() -> Result<(), Box<dyn std::error::Error>> {
    // Two workers (two VMs) share the clock, metrics and shared data, as Envoy's do.
    let host = Host::new().workers(2).clusters(&["upstream"]);
    let plugin = host.load(wasm_path("conformance")?, r#"{"any": "config"}"#)?;

    // Worker 0: the filter calls out and holds the request until the answer.
    let w0 = plugin.worker(0);
    let mut s = w0.http_stream().property("source.address", "10.0.0.1:5555");
    assert_eq!(s.request_headers(&[(":path", "/"), ("x-op", "call")], true)?, Action::Pause);
    let call = w0.pending_http_calls().remove(0);
    assert_eq!((call.cluster.as_str(), call.header(":path")), ("upstream", Some("/check")));
    w0.respond_http_call(call.token, 200, &[("x-a", "b")], b"pong")?;
    assert_eq!(s.request_header("x-conf-call").as_deref(), Some("200 pong"));
    assert_eq!(s.request_header("x-conf-source").as_deref(), Some("10.0.0.1:5555"));

    // Worker 1 sees worker 0's shared data.
    for w in [0, 1] {
        plugin.worker(w).http_stream().request_headers(&[(":path", "/"), ("x-op", "shared")], true)?;
    }
    let (value, _cas) = host.shared_data("conformance", "conf.counter").unwrap();
    assert_eq!(u64::from_le_bytes(value.try_into().unwrap()), 2);

    // Time moves only when the test says so; every worker ticks.
    host.clock().advance(Duration::from_millis(100));
    plugin.tick_all()?;
    assert_eq!(host.counter("conf.ticks"), 2);
    Ok(())
}
