//! The host's ABI behaviour, checked with small hand-written modules (WebAssembly text): a
//! module may export only the callbacks it needs, imports the host lacks are stubbed and
//! counted, and header maps and buffers are available exactly when Envoy 1.40 makes them so.
//! Statuses are reported back through a foreign function the test registers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use proxy_wasm_test_host::{Action, Host, HostError, LoadOptions, Status};

/// A module that exports only `proxy_on_response_headers` (plus memory and the allocator),
/// imports a function no host has, and records the status of each host call it makes.
const PARTIAL: &str = r#"
(module
  (import "env" "proxy_get_header_map_value" (func $get_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_no_such_host_function" (func $unknown (param i32) (result i32)))
  (func (export "proxy_abi_version_0_2_1"))
  (memory (export "memory") 1)
  (data (i32.const 0) "record:path:status")
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $p))
  ;; record(v): foreign function "record" with the 4 bytes of v
  (func $record (param $v i32)
    (i32.store (i32.const 1024) (local.get $v))
    (drop (call $foreign (i32.const 0) (i32.const 6) (i32.const 1024) (i32.const 4) (i32.const 1040) (i32.const 1044))))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    ;; request headers: their callback is over
    (call $record (call $get_value (i32.const 0) (i32.const 6) (i32.const 5) (i32.const 1048) (i32.const 1052)))
    ;; request headers, all pairs: empty, Ok
    (call $record (call $get_pairs (i32.const 0) (i32.const 1048) (i32.const 1052)))
    (call $record (i32.load (i32.const 1052)))
    ;; response headers: this callback's own map
    (call $record (call $get_value (i32.const 2) (i32.const 11) (i32.const 7) (i32.const 1048) (i32.const 1052)))
    (call $record (i32.load (i32.const 1052)))
    ;; an HTTP callout's headers outside its callback
    (call $record (call $get_value (i32.const 6) (i32.const 11) (i32.const 7) (i32.const 1048) (i32.const 1052)))
    ;; callout body, plugin configuration, call data outside their callbacks
    (call $record (call $get_buffer (i32.const 4) (i32.const 0) (i32.const 10) (i32.const 1048) (i32.const 1052)))
    (call $record (call $get_buffer (i32.const 7) (i32.const 0) (i32.const 10) (i32.const 1048) (i32.const 1052)))
    (call $record (call $get_buffer (i32.const 8) (i32.const 0) (i32.const 10) (i32.const 1048) (i32.const 1052)))
    ;; adding to a callout's (read-only) headers
    (call $record (call $add (i32.const 6) (i32.const 7) (i32.const 4) (i32.const 12) (i32.const 6)))
    ;; a host function this host does not have
    (call $record (call $unknown (i32.const 0)))
    (i32.const 0))
)
"#;

fn recorder(host: &Host) -> Arc<Mutex<Vec<i32>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    host.foreign_function("record", move |args| {
        sink.lock().unwrap().push(i32::from_le_bytes(args.try_into().map_err(|_| Status::BadArgument)?));
        Ok(Vec::new())
    });
    seen
}

fn opts() -> LoadOptions {
    LoadOptions { plugin_config: b"{}".to_vec(), vm_id: "t".into(), root_id: "t".into(), ..Default::default() }
}

#[test]
fn missing_callbacks_are_skipped_and_maps_follow_envoy() {
    let host = Host::new();
    let seen = recorder(&host);
    let p = host.load_bytes("partial", &wat::parse_str(PARTIAL).unwrap(), opts()).unwrap();
    let w = p.worker(0);
    let mut s = w.http_stream();
    // No proxy_on_context_create, no proxy_on_request_headers: the stream just continues.
    assert_eq!(s.request_headers(&[(":path", "/p")], true).unwrap(), Action::Continue);
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(s.response_headers(&[(":status", "200")], true).unwrap(), Action::Continue);
    let bad = Status::BadArgument.code();
    let (ok, not_found, unimplemented) = (Status::Ok.code(), Status::NotFound.code(), Status::Unimplemented.code());
    assert_eq!(*seen.lock().unwrap(), [bad, ok, 0, ok, 3, bad, not_found, not_found, ok, bad, unimplemented]);
    s.log().unwrap();
    s.finish().unwrap();
    let calls = w.host_calls();
    assert_eq!(calls.calls("proxy_no_such_host_function"), 1, "stubbed imports are counted too");
    assert_eq!(p.unimplemented_imports(), ["env.proxy_no_such_host_function"], "known at load");
    let warnings = w.logs_at_least(3);
    assert!(warnings[0].contains("does not implement: env.proxy_no_such_host_function"), "{warnings:?}");
    assert!(warnings[1].contains("proxy_no_such_host_function is not implemented by this host"), "{warnings:?}");
    assert_eq!(calls.calls("proxy_call_foreign_function"), 11);
    assert_eq!((calls.allocations, calls.allocated_bytes), (1, 3), "only the one non-empty value was copied in");
    assert_eq!(calls.memory_bytes, 65536);
}

/// A module whose `proxy_on_request_headers` traps.
const TRAPS: &str = r#"
(module
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (memory (export "memory") 1)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)
)
"#;

#[test]
fn a_vm_that_trapped_stays_failed() {
    let host = Host::new();
    let p = host.load_bytes("traps", &wat::parse_str(TRAPS).unwrap(), opts()).unwrap();
    let w = p.worker(0);
    let Err(HostError::Trap { message, .. }) = w.http_stream().request_headers(&[], true) else { panic!("no trap") };
    assert!(message.contains("unreachable"), "{message}");
    let Err(HostError::Trap { message, .. }) = w.http_stream().request_headers(&[], true) else { panic!("ran again") };
    assert!(message.contains("failed earlier"), "{message}");
}

/// A WASI command: prints its argument count and a line, exits with 3.
const COMMAND: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "args=?\n")
  (func (export "_start")
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    ;; '0' + argc into the '?'
    (i32.store8 (i32.const 105) (i32.add (i32.const 48) (i32.load (i32.const 0))))
    ;; an unmodelled WASI call answers ENOSYS (52): exit with it if not
    (if (i32.ne (call $open (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 0)) (i32.const 52))
      (then (call $exit (i32.const 99))))
    (i32.store (i32.const 8) (i32.const 100))
    (i32.store (i32.const 12) (i32.const 7))
    (drop (call $write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 16)))
    (call $exit (i32.const 3)))
)
"#;

#[test]
fn wasi_run_runs_a_command_to_its_exit_code() {
    let dir = std::env::temp_dir().join(format!("pwth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("command.wasm");
    std::fs::write(&path, wat::parse_str(COMMAND).unwrap()).unwrap();
    let (code, out) = proxy_wasm_test_host::wasi_run::run(&path, &["cmd".into(), "x".into()]).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!((code, out.as_slice()), (3, &b"args=2\n"[..]));
}

/// A minimal module Envoy loads: `extra` (imports first), then the ABI version, memory and an
/// allocator, each only if `exports` names it.
fn module(extra: &str, exports: &[&str]) -> Vec<u8> {
    let mut text = String::from("(module\n");
    text.push_str(extra);
    for e in exports {
        text.push_str(&match *e {
            "abi" => "(func (export \"proxy_abi_version_0_2_1\"))\n".to_string(),
            "memory" => "(memory (export \"memory\") 1)\n".to_string(),
            "malloc" => "(func (export \"malloc\") (param i32) (result i32) (i32.const 2048))\n".to_string(),
            _ => String::new(),
        });
    }
    text.push(')');
    wat::parse_str(text).unwrap()
}

#[test]
fn modules_envoy_refuses_are_refused_with_envoys_reason() {
    let host = Host::new();
    for (exports, reason) in [
        (&["memory", "malloc"][..], "Missing or unknown Proxy-Wasm ABI version"),
        (&["abi", "memory"][..], "Wasm module is missing malloc function."),
        (&["abi", "malloc"][..], "exports no memory"),
    ] {
        let Err(HostError::Load(why)) = host.load_bytes("m", &module("", exports), opts()) else {
            panic!("{exports:?} loaded")
        };
        assert!(why.contains(reason), "{exports:?}: {why}");
    }
    assert!(host.load_bytes("m", &module("", &["abi", "memory", "malloc"]), opts()).is_ok());
}

#[test]
fn a_refused_configuration_names_the_callback_that_refused() {
    let host = Host::new();
    let all = ["abi", "memory", "malloc"];
    for (callback, body) in [
        ("proxy_on_vm_start", "(func (export \"proxy_on_vm_start\") (param i32 i32) (result i32) (i32.const 0))"),
        ("proxy_on_configure", "(func (export \"proxy_on_configure\") (param i32 i32) (result i32) (i32.const 0))"),
    ] {
        let Err(e) = host.load_bytes("m", &module(body, &all), opts()) else { panic!("{callback}: loaded") };
        assert!(matches!(e, HostError::Configure { callback: c, .. } if c == callback), "{e}");
        assert!(e.to_string().contains(callback), "{e}");
    }
}

#[test]
fn header_names_are_lowercased_on_the_way_in_and_looked_up_in_any_case() {
    let host = Host::new();
    let p = host.load_bytes("m", &module("", &["abi", "memory", "malloc"]), opts()).unwrap();
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[(":path", "/"), ("Content-Type", "application/grpc")], true).unwrap();
    assert_eq!(s.request_headers_now()[1], ("content-type".to_string(), "application/grpc".to_string()));
    assert_eq!(s.request_header("CONTENT-TYPE").as_deref(), Some("application/grpc"));
    s.response_headers(&[(":status", "200"), ("Powered-By", "x")], true).unwrap();
    assert_eq!(s.response_header("Powered-By").as_deref(), Some("x"));
}

#[test]
fn a_callout_to_an_unknown_cluster_is_logged_with_the_cluster() {
    const CALLS: &str = r#"
  (import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (data (i32.const 0) "nowhere")
  (data (i32.const 64) "\00\00\00\00")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $call (i32.const 0) (i32.const 7) (i32.const 64) (i32.const 4) (i32.const 0) (i32.const 0)
                      (i32.const 64) (i32.const 4) (i32.const 1000) (i32.const 128)))
    (i32.const 0))
"#;
    let host = Host::new().clusters(&["known"]);
    let p = host.load_bytes("m", &module(CALLS, &["abi", "memory", "malloc"]), opts()).unwrap();
    let w = p.worker(0);
    w.http_stream().request_headers(&[(":path", "/")], true).unwrap();
    let errors = w.logs_at_least(4);
    assert!(errors.iter().any(|l| l.contains("proxy_http_call to \"nowhere\": no such cluster")), "{errors:?}");
}

/// A module that answers every request with a local 429 (`x-a: 1`, body `no`) and marks every
/// response it sees with `x-seen: 1`.
const REPLIES: &str = r#"
  (import "env" "proxy_send_local_response"
    (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (data (i32.const 0) "no")
  (data (i32.const 16) "\01\00\00\00\03\00\00\00\01\00\00\00x-a\001\00")
  (data (i32.const 64) "x-seen1")
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $reply (i32.const 429) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 2)
                       (i32.const 16) (i32.const 18) (i32.const -1)))
    (i32.const 1))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 64) (i32.const 6) (i32.const 70) (i32.const 1)))
    (i32.const 0))
"#;

#[test]
fn a_local_reply_runs_through_the_filters_response_callbacks_unless_told_otherwise() {
    let all = ["abi", "memory", "malloc"];
    let host = Host::new();
    let p = host.load_bytes("m", &module(REPLIES, &all), opts()).unwrap();
    let mut s = p.worker(0).http_stream();
    assert_eq!(s.request_headers(&[(":path", "/")], true).unwrap(), Action::Pause);
    let sent = s.local_response().unwrap();
    assert_eq!((sent.status, sent.header("x-a"), sent.header("x-seen")), (429, Some("1"), None), "as sent");
    // What the client gets: the reply as the filter's own response callback left it.
    assert_eq!(s.response_header(":status").as_deref(), Some("429"));
    assert_eq!(s.response_header("x-a").as_deref(), Some("1"));
    assert_eq!(s.response_header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(s.response_header("x-seen").as_deref(), Some("1"), "{:?}", s.response_headers_now());
    assert_eq!(s.response_body_now(), b"no");

    let skip = Host::new().local_replies_skip_filter();
    let p = skip.load_bytes("m", &module(REPLIES, &all), opts()).unwrap();
    let mut s = p.worker(0).http_stream();
    s.request_headers(&[(":path", "/")], true).unwrap();
    assert_eq!(s.local_response().map(|r| r.status), Some(429));
    assert_eq!(s.response_header("x-seen"), None, "the filter never saw its reply");
}
