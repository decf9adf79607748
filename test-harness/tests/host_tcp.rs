//! L4 (network filter) streams through the host, with the SDK-built conformance filter in its
//! `"tcp"` mode: data held back and released, both buffers rewritten, resuming and closing,
//! and both sides closing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use test_harness::host::{Action, Host, LoadOptions, PeerType, StreamType};
use test_harness::paths::wasm_path;

#[test]
fn data_flows_both_ways_through_an_l4_filter() {
    let host = Host::new();
    let opts = LoadOptions {
        plugin_config: b"\"tcp\"".to_vec(),
        vm_id: "l4".into(),
        root_id: "l4".into(),
        ..Default::default()
    };
    let p = host.load_with(wasm_path("conformance").unwrap(), opts).unwrap();
    let w = p.worker(0);
    let mut c = w.tcp_stream().property("source.address", "10.0.0.9:4000");
    assert_eq!(c.new_connection().unwrap(), Action::Continue);
    assert!(w.logs_at_least(2).contains(&"tcp new connection from 10.0.0.9:4000".to_string()));

    assert_eq!(c.downstream_data(b"hel", false).unwrap(), Action::Pause, "no full line yet");
    assert_eq!((c.held_downstream(), c.sent_upstream()), (b"hel".to_vec(), Vec::new()));
    assert_eq!(c.downstream_data(b"lo\n", false).unwrap(), Action::Continue);
    assert_eq!((c.held_downstream(), c.sent_upstream()), (Vec::new(), b"HELLO\n".to_vec()));

    assert_eq!(c.upstream_data(b"hi", false).unwrap(), Action::Continue);
    assert_eq!(c.sent_downstream(), b"> hi", "prepended to the upstream data");

    assert_eq!(c.downstream_data(b"partial", false).unwrap(), Action::Pause);
    c.upstream_data(b"go", false).unwrap();
    assert_eq!(c.continued_in(StreamType::Downstream), 1);
    assert_eq!(c.sent_upstream(), b"HELLO\npartial", "resuming released the held data");

    c.downstream_data(b"close\n", true).unwrap();
    assert_eq!(c.closed(StreamType::Downstream), 1);
    c.downstream_close(PeerType::Remote).unwrap();
    c.upstream_close(PeerType::Local).unwrap();
    c.log().unwrap();
    c.finish().unwrap();
    let logs = w.logs_at_least(2);
    for line in ["tcp downstream closed by Remote after 2 lines", "tcp upstream closed by Local", "tcp log"] {
        assert!(logs.iter().any(|l| l == line), "{line}: {logs:?}");
    }
    assert_eq!(host.counter("conf.tcp.closed"), 1);
}
