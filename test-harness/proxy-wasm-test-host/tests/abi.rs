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
    assert_eq!(calls.calls("proxy_call_foreign_function"), 11);
    assert_eq!((calls.allocations, calls.allocated_bytes), (1, 3), "only the one non-empty value was copied in");
    assert_eq!(calls.memory_bytes, 65536);
}

/// A module whose `proxy_on_request_headers` traps.
const TRAPS: &str = r#"
(module
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
