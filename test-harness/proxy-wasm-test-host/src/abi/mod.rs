//! The proxy-wasm host functions (module `env`), one module per area of the ABI. Each area has
//! its own `add_to_linker`, as wasmtime's own embeddings do, and [`add_to_linker`] adds them
//! all. Every function counts its calls (see [`crate::accounting`]) and answers with the
//! status Envoy would give in the same situation; the crate README's table lists them.

/// Registers a host function: counts the call under its [`Import`](crate::accounting::Import)
/// slot, runs the body (a function returning `HostResult`), and returns the status number.
macro_rules! host_fn {
    ($linker:ident, $import:ident, $f:path, ($($arg:ident: $ty:ty),* $(,)?)) => {
        $linker.func_wrap(
            $crate::accounting::Import::$import.module(),
            $crate::accounting::Import::$import.name(),
            |mut c: wasmtime::Caller<'_, $crate::state::VmState>, $($arg: $ty),*| -> i32 {
                c.data_mut().calls.hit($crate::accounting::Import::$import);
                $crate::abi::memory::code($f(&mut c, $($arg),*))
            },
        )?;
    };
}

pub(crate) mod memory;

pub mod buffers;
pub mod foreign;
pub mod grpc_calls;
pub mod header_maps;
pub mod http_calls;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod properties;
pub mod queues;
pub mod shared_data;

use wasmtime::Linker;

use crate::state::VmState;

/// Adds every proxy-wasm host function to `linker`.
pub fn add_to_linker(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    logging::add_to_linker(linker)?;
    buffers::add_to_linker(linker)?;
    header_maps::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    shared_data::add_to_linker(linker)?;
    queues::add_to_linker(linker)?;
    http_calls::add_to_linker(linker)?;
    grpc_calls::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    lifecycle::add_to_linker(linker)?;
    foreign::add_to_linker(linker)
}
