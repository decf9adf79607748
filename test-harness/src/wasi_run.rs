//! Runs a `wasm32-wasip1` command module (such as the core's unit-test binary) on wasmtime, with
//! just the WASI preview 1 a Rust test binary needs: arguments, environment (empty), stdout and
//! stderr, the clock, randomness and `proc_exit`. Everything else answers `ENOSYS`.
//!
//! This is how the pure core's tests run compiled to wasm32, where the filters run: 32-bit
//! `usize`, nanosecond arithmetic near `u64` limits, no threads.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Engine, Extern, Linker, Module, Store, Val};

struct Ctx {
    args: Vec<String>,
    exit: Option<i32>,
    stdout: Vec<u8>,
}

const ENOSYS: i32 = 52;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;

fn mem(c: &mut Caller<'_, Ctx>) -> Option<wasmtime::Memory> {
    match c.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

fn put(c: &mut Caller<'_, Ctx>, ptr: i32, bytes: &[u8]) -> i32 {
    match mem(c).map(|m| m.write(&mut *c, ptr as u32 as usize, bytes)) {
        Some(Ok(())) => 0,
        _ => EFAULT,
    }
}

/// Runs `wasm` with `args` (the first is the program name); returns the exit code and what it
/// wrote to stdout (stderr passes through).
pub fn run(wasm: &std::path::Path, args: &[String]) -> Result<(i32, Vec<u8>), String> {
    let engine = Engine::default();
    let module = Module::from_file(&engine, wasm).map_err(|e| format!("{}: {e:#}", wasm.display()))?;
    let mut linker: Linker<Ctx> = Linker::new(&engine);
    linker.allow_shadowing(true);
    for i in module.imports() {
        if let wasmtime::ExternType::Func(ft) = i.ty() {
            linker
                .func_new(i.module(), i.name(), ft, |_c, _p, r| {
                    r.iter_mut().for_each(|v| *v = Val::I32(ENOSYS));
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
        }
    }
    let w = "wasi_snapshot_preview1";
    let err = |e: wasmtime::Error| e.to_string();
    linker
        .func_wrap(w, "args_sizes_get", |mut c: Caller<'_, Ctx>, count: i32, size: i32| -> i32 {
            let n = c.data().args.len() as u32;
            let bytes: u32 = c.data().args.iter().map(|a| a.len() as u32 + 1).sum();
            put(&mut c, count, &n.to_le_bytes()) | put(&mut c, size, &bytes.to_le_bytes())
        })
        .map_err(err)?;
    linker
        .func_wrap(w, "args_get", |mut c: Caller<'_, Ctx>, argv: i32, buf: i32| -> i32 {
            let args = c.data().args.clone();
            let mut at = buf;
            for (i, a) in args.iter().enumerate() {
                let mut bytes = a.as_bytes().to_vec();
                bytes.push(0);
                if put(&mut c, argv + 4 * i as i32, &(at as u32).to_le_bytes()) != 0 || put(&mut c, at, &bytes) != 0 {
                    return EFAULT;
                }
                at += bytes.len() as i32;
            }
            0
        })
        .map_err(err)?;
    linker
        .func_wrap(w, "environ_sizes_get", |mut c: Caller<'_, Ctx>, count: i32, size: i32| -> i32 {
            put(&mut c, count, &0u32.to_le_bytes()) | put(&mut c, size, &0u32.to_le_bytes())
        })
        .map_err(err)?;
    linker.func_wrap(w, "environ_get", |_c: Caller<'_, Ctx>, _a: i32, _b: i32| -> i32 { 0 }).map_err(err)?;
    linker
        .func_wrap(w, "fd_write", |mut c: Caller<'_, Ctx>, fd: i32, iovs: i32, n: i32, written: i32| -> i32 {
            let Some(m) = mem(&mut c) else { return EFAULT };
            let data = m.data(&c);
            let mut out = Vec::new();
            for i in 0..n as usize {
                let at = iovs as u32 as usize + 8 * i;
                let Some(iov) = data.get(at..at + 8) else { return EFAULT };
                let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]) as usize;
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]) as usize;
                let Some(bytes) = data.get(ptr..ptr + len) else { return EFAULT };
                out.extend_from_slice(bytes);
            }
            match fd {
                1 => c.data_mut().stdout.extend_from_slice(&out),
                2 => {
                    if std::io::stderr().write_all(&out).is_err() {
                        return EBADF;
                    }
                }
                _ => return EBADF,
            }
            put(&mut c, written, &(out.len() as u32).to_le_bytes())
        })
        .map_err(err)?;
    linker
        .func_wrap(w, "clock_time_get", |mut c: Caller<'_, Ctx>, _id: i32, _p: i64, ret: i32| -> i32 {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
            put(&mut c, ret, &now.to_le_bytes())
        })
        .map_err(err)?;
    linker
        .func_wrap(w, "random_get", |mut c: Caller<'_, Ctx>, ptr: i32, len: i32| -> i32 {
            let mut x: u64 = 0x2545_F491_4F6C_DD1D;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            put(&mut c, ptr, &bytes)
        })
        .map_err(err)?;
    linker.func_wrap(w, "fd_prestat_get", |_c: Caller<'_, Ctx>, _fd: i32, _p: i32| -> i32 { EBADF }).map_err(err)?;
    linker.func_wrap(w, "sched_yield", |_c: Caller<'_, Ctx>| -> i32 { 0 }).map_err(err)?;
    linker
        .func_wrap(w, "proc_exit", |mut c: Caller<'_, Ctx>, code: i32| -> wasmtime::Result<()> {
            c.data_mut().exit = Some(code);
            Err(wasmtime::Error::msg("proc_exit"))
        })
        .map_err(err)?;
    let mut store = Store::new(&engine, Ctx { args: args.to_vec(), exit: None, stdout: Vec::new() });
    let instance = linker.instantiate(&mut store, &module).map_err(|e| format!("instantiate: {e:#}"))?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start").map_err(|e| format!("_start: {e:#}"))?;
    let result = start.call(&mut store, ());
    let out = std::mem::take(&mut store.data_mut().stdout);
    match (result, store.data().exit) {
        (Ok(()), code) => Ok((code.unwrap_or(0), out)),
        (Err(_), Some(code)) => Ok((code, out)),
        (Err(e), None) => Err(format!("trap: {e:#}\n{}", String::from_utf8_lossy(&out))),
    }
}
