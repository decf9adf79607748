//! Runs a `wasm32-wasip1` command module (such as a crate's unit-test binary) to completion on
//! the shared engine, with the WASI of [`crate::wasi`]: arguments, an empty environment,
//! stdout captured, stderr passed through, the system clock. Every other WASI import answers
//! `ENOSYS`.
//!
//! This is how code meant for filters can run its own tests where filters run: 32-bit
//! `usize`, no threads, the same compiler.

use std::fmt;
use std::path::Path;

use wasmtime::{Linker, Store};

use crate::engine::{compile, shared_engine, stub_missing};
use crate::wasi::{self, Output, WasiCtx, WasiView};

struct RunState {
    wasi: WasiCtx,
}

impl WasiView for RunState {
    fn wasi(&mut self) -> &mut WasiCtx {
        &mut self.wasi
    }
}

/// Why a command module could not run to an exit code.
#[derive(Debug)]
pub enum RunError {
    /// The file could not be read.
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// wasmtime refused the module, or it has no `_start`.
    Load(String),
    /// It trapped without calling `proc_exit`; carries what it wrote to stdout.
    Trap {
        /// wasmtime's description of the trap.
        message: String,
        /// Standard output up to the trap.
        stdout: Vec<u8>,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Read { path, source } => write!(f, "{path}: {source}; build it first"),
            RunError::Load(m) => write!(f, "{m}"),
            RunError::Trap { message, stdout } => write!(f, "trap: {message}\n{}", String::from_utf8_lossy(stdout)),
        }
    }
}

impl std::error::Error for RunError {}

/// Runs `wasm` with `args` (the first is the program name); returns the exit code and what it
/// wrote to stdout (stderr passes through).
pub fn run(wasm: &Path, args: &[String]) -> Result<(i32, Vec<u8>), RunError> {
    let shown = wasm.display().to_string();
    let bytes = std::fs::read(wasm).map_err(|source| RunError::Read { path: shown.clone(), source })?;
    let load = |e: String| RunError::Load(format!("{shown}: {e}"));
    let compiled = compile(&bytes, None).map_err(load)?;
    let mut linker: Linker<RunState> = Linker::new(shared_engine());
    wasi::add_to_linker(&mut linker).map_err(|e| load(format!("{e:#}")))?;
    let ctx = WasiCtx::new().args(args).stderr(Output::Inherit);
    let mut store = Store::new(shared_engine(), RunState { wasi: ctx });
    let _stubbed = stub_missing(&mut linker, &compiled.module, &mut store).map_err(load)?;
    let instance = linker.instantiate(&mut store, &compiled.module).map_err(|e| load(format!("instantiate: {e:#}")))?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start").map_err(|e| load(format!("_start: {e:#}")))?;
    let result = start.call(&mut store, ());
    let out = store.data_mut().wasi.take_stdout();
    match (result, store.data().wasi.exit_code()) {
        (Ok(()), code) => Ok((code.unwrap_or(0), out)),
        (Err(_), Some(code)) => Ok((code, out)),
        (Err(e), None) => Err(RunError::Trap { message: format!("{e:#}"), stdout: out }),
    }
}
