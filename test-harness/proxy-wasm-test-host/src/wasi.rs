//! WASI preview 1, as much of it as proxy-wasm filters and Rust test binaries use: arguments,
//! environment, stdout and stderr, clocks, randomness, `sched_yield` and `proc_exit`. Every
//! other WASI import a module has is answered `ENOSYS` by a stub (see the engine module).
//!
//! One implementation serves both the proxy-wasm host (fake clock; output becomes log lines)
//! and [`wasi_run`](crate::wasi_run) (real clock; output captured or passed through): the
//! store's data implements [`WasiView`], and [`add_to_linker`] adds the functions to any
//! `Linker<T>` whose `T` does, the way wasmtime's own WASI crates are embedded.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Extern, Linker, Memory};

use crate::accounting::Import;
use crate::clock::Clock;

/// WASI errno values (the ones this host returns).
pub mod errno {
    /// No error.
    pub const SUCCESS: i32 = 0;
    /// Bad file descriptor.
    pub const BADF: i32 = 8;
    /// Bad address: a pointer outside the guest's memory.
    pub const FAULT: i32 = 21;
    /// Invalid argument.
    pub const INVAL: i32 = 28;
    /// Function not implemented (every WASI import this host does not model).
    pub const NOSYS: i32 = 52;
}

/// Where a guest's stdout or stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Kept in the context (`take_stdout` / `take_stderr`).
    Capture,
    /// Written to this process's own stdout or stderr.
    Inherit,
    /// Dropped.
    Discard,
}

/// The WASI state of one store.
#[derive(Debug)]
pub struct WasiCtx {
    args: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    clock: Option<Clock>,
    rng: u64,
    exit_code: Option<i32>,
    outputs: [Output; 2],
    captured: [Vec<u8>; 2],
}

impl Default for WasiCtx {
    fn default() -> Self {
        WasiCtx::new()
    }
}

impl WasiCtx {
    /// No arguments, no environment, the system clock, stdout and stderr captured.
    pub fn new() -> WasiCtx {
        WasiCtx {
            args: Vec::new(),
            env: Vec::new(),
            clock: None,
            rng: 0x2545_F491_4F6C_DD1D,
            exit_code: None,
            outputs: [Output::Capture, Output::Capture],
            captured: [Vec::new(), Vec::new()],
        }
    }

    /// The program's arguments (the first is its name).
    pub fn args<S: AsRef<[u8]>>(mut self, args: &[S]) -> WasiCtx {
        self.args = args.iter().map(|a| a.as_ref().to_vec()).collect();
        self
    }

    /// The environment, as `NAME=value` entries.
    pub fn env<S: AsRef<[u8]>>(mut self, env: &[S]) -> WasiCtx {
        self.env = env.iter().map(|a| a.as_ref().to_vec()).collect();
        self
    }

    /// Reads time from `clock` (every WASI clock id) instead of the system clock.
    pub fn clock(mut self, clock: Clock) -> WasiCtx {
        self.clock = Some(clock);
        self
    }

    /// Seeds `random_get` (deterministic: the same seed gives the same bytes).
    pub fn seed(mut self, seed: u64) -> WasiCtx {
        self.rng = seed | 1;
        self
    }

    /// Where stdout goes.
    pub fn stdout(mut self, out: Output) -> WasiCtx {
        self.outputs[0] = out;
        self
    }

    /// Where stderr goes.
    pub fn stderr(mut self, out: Output) -> WasiCtx {
        self.outputs[1] = out;
        self
    }

    /// The code the guest passed to `proc_exit`, if it called it.
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }

    /// Captured stdout so far (emptied).
    pub fn take_stdout(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.captured[0])
    }

    /// Captured stderr so far (emptied).
    pub fn take_stderr(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.captured[1])
    }

    /// Handles `bytes` written to `fd` (1 or 2) as configured; `BADF` for any other descriptor.
    pub fn write_output(&mut self, fd: u32, bytes: &[u8]) -> i32 {
        let slot = match fd {
            1 => 0,
            2 => 1,
            _ => return errno::BADF,
        };
        match self.outputs[slot] {
            Output::Capture => self.captured[slot].extend_from_slice(bytes),
            Output::Discard => {}
            Output::Inherit => {
                let written =
                    if slot == 0 { std::io::stdout().write_all(bytes) } else { std::io::stderr().write_all(bytes) };
                if written.is_err() {
                    return errno::BADF;
                }
            }
        }
        errno::SUCCESS
    }

    fn now_nanos(&self) -> u64 {
        match &self.clock {
            Some(c) => c.now_nanos(),
            None => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
        }
    }

    fn next_random(&mut self) -> u8 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng as u8
    }
}

/// Store data that carries a [`WasiCtx`].
pub trait WasiView: 'static {
    /// The WASI state.
    fn wasi(&mut self) -> &mut WasiCtx;

    /// The guest's memory, when the embedder has it at hand (saves a by-name export lookup).
    fn memory(&self) -> Option<Memory> {
        None
    }

    /// Handles output to `fd`; by default [`WasiCtx::write_output`].
    fn write_output(&mut self, fd: u32, bytes: &[u8]) -> i32 {
        self.wasi().write_output(fd, bytes)
    }

    /// Called once per WASI call, for accounting; by default nothing.
    fn record_call(&mut self, import: Import) {
        let _ = import;
    }

    /// Called once per call of an import the module has but the host does not implement
    /// (answered by a stub), for accounting; by default nothing.
    fn record_unknown(&mut self, name: &str) {
        let _ = name;
    }
}

fn memory<T: WasiView>(c: &mut Caller<'_, T>) -> Option<Memory> {
    c.data().memory().or_else(|| c.get_export("memory").and_then(Extern::into_memory))
}

fn put<T: WasiView>(c: &mut Caller<'_, T>, ptr: i32, bytes: &[u8]) -> i32 {
    match memory(c).map(|m| m.write(&mut *c, ptr as u32 as usize, bytes)) {
        Some(Ok(())) => errno::SUCCESS,
        _ => errno::FAULT,
    }
}

fn put_u32<T: WasiView>(c: &mut Caller<'_, T>, ptr: i32, v: u32) -> i32 {
    put(c, ptr, &v.to_le_bytes())
}

/// Writes a list of byte strings as WASI does for `args_get` / `environ_get`: pointers at
/// `list`, NUL-terminated strings from `buf` on.
fn put_list<T: WasiView>(c: &mut Caller<'_, T>, items: &[Vec<u8>], list: i32, buf: i32) -> i32 {
    let mut at = buf as u32;
    for (i, item) in items.iter().enumerate() {
        let mut bytes = item.clone();
        bytes.push(0);
        if put_u32(c, list.wrapping_add(4 * i as i32), at) != 0 || put(c, at as i32, &bytes) != 0 {
            return errno::FAULT;
        }
        at = at.wrapping_add(bytes.len() as u32);
    }
    errno::SUCCESS
}

fn sizes(items: &[Vec<u8>]) -> (u32, u32) {
    (items.len() as u32, items.iter().map(|a| a.len() as u32 + 1).sum())
}

/// Adds the WASI functions to `linker`.
pub fn add_to_linker<T: WasiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use Import as I;
    let m = I::ArgsGet.module();
    linker.func_wrap(m, I::ArgsSizesGet.name(), |mut c: Caller<'_, T>, count: i32, size: i32| -> i32 {
        c.data_mut().record_call(I::ArgsSizesGet);
        let (n, bytes) = sizes(&c.data_mut().wasi().args);
        put_u32(&mut c, count, n) | put_u32(&mut c, size, bytes)
    })?;
    linker.func_wrap(m, I::ArgsGet.name(), |mut c: Caller<'_, T>, list: i32, buf: i32| -> i32 {
        c.data_mut().record_call(I::ArgsGet);
        let args = c.data_mut().wasi().args.clone();
        put_list(&mut c, &args, list, buf)
    })?;
    linker.func_wrap(m, I::EnvironSizesGet.name(), |mut c: Caller<'_, T>, count: i32, size: i32| -> i32 {
        c.data_mut().record_call(I::EnvironSizesGet);
        let (n, bytes) = sizes(&c.data_mut().wasi().env);
        put_u32(&mut c, count, n) | put_u32(&mut c, size, bytes)
    })?;
    linker.func_wrap(m, I::EnvironGet.name(), |mut c: Caller<'_, T>, list: i32, buf: i32| -> i32 {
        c.data_mut().record_call(I::EnvironGet);
        let env = c.data_mut().wasi().env.clone();
        put_list(&mut c, &env, list, buf)
    })?;
    linker.func_wrap(
        m,
        I::FdWrite.name(),
        |mut c: Caller<'_, T>, fd: i32, iovs: i32, n: i32, written: i32| -> i32 {
            c.data_mut().record_call(I::FdWrite);
            let Some(mem) = memory(&mut c) else { return errno::FAULT };
            let mut out = Vec::new();
            {
                let data = mem.data(&c);
                for i in 0..n.max(0) as usize {
                    let at = iovs as u32 as usize + 8 * i;
                    let Some(iov) = data.get(at..at + 8) else { return errno::FAULT };
                    let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]) as usize;
                    let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]) as usize;
                    let Some(bytes) = ptr.checked_add(len).and_then(|end| data.get(ptr..end)) else {
                        return errno::FAULT;
                    };
                    out.extend_from_slice(bytes);
                }
            }
            let e = c.data_mut().write_output(fd as u32, &out);
            if e != errno::SUCCESS {
                return e;
            }
            put_u32(&mut c, written, out.len() as u32)
        },
    )?;
    linker.func_wrap(
        m,
        I::ClockTimeGet.name(),
        |mut c: Caller<'_, T>, _id: i32, _precision: i64, ret: i32| -> i32 {
            c.data_mut().record_call(I::ClockTimeGet);
            let now = c.data_mut().wasi().now_nanos();
            put(&mut c, ret, &now.to_le_bytes())
        },
    )?;
    linker.func_wrap(m, I::ClockResGet.name(), |mut c: Caller<'_, T>, _id: i32, ret: i32| -> i32 {
        c.data_mut().record_call(I::ClockResGet);
        put(&mut c, ret, &1u64.to_le_bytes())
    })?;
    linker.func_wrap(m, I::RandomGet.name(), |mut c: Caller<'_, T>, ptr: i32, len: i32| -> i32 {
        c.data_mut().record_call(I::RandomGet);
        let ctx = c.data_mut().wasi();
        let bytes: Vec<u8> = (0..len.max(0)).map(|_| ctx.next_random()).collect();
        put(&mut c, ptr, &bytes)
    })?;
    linker.func_wrap(m, I::FdPrestatGet.name(), |mut c: Caller<'_, T>, _fd: i32, _ret: i32| -> i32 {
        // No preopened directories: the guest's scan stops at the first descriptor.
        c.data_mut().record_call(I::FdPrestatGet);
        errno::BADF
    })?;
    linker.func_wrap(m, I::SchedYield.name(), |mut c: Caller<'_, T>| -> i32 {
        c.data_mut().record_call(I::SchedYield);
        errno::SUCCESS
    })?;
    linker.func_wrap(m, I::ProcExit.name(), |mut c: Caller<'_, T>, code: i32| -> wasmtime::Result<()> {
        c.data_mut().record_call(I::ProcExit);
        c.data_mut().wasi().exit_code = Some(code);
        Err(wasmtime::Error::msg(format!("proc_exit({code})")))
    })?;
    Ok(())
}
