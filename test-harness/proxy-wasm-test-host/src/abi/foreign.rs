//! Foreign functions: `proxy_call_foreign_function`.
//!
//! Envoy offers a few named host extensions; this host has `clear_route_cache` built in, and
//! tests add their own with [`Host::foreign_function`](crate::Host::foreign_function): a
//! function of the argument bytes returning result bytes or a status. A registered function
//! wins over the built-in of the same name; an unknown name is `NotFound`.

use std::sync::Arc;

use wasmtime::Linker;

use super::lifecycle::clear_route_cache;
use super::memory::{give_with, slice, HostResult, C};
use crate::state::VmState;
use crate::types::Status;

/// A foreign function a test registers.
pub type ForeignFunction = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, Status> + Send + Sync>;

fn proxy_call_foreign_function(
    c: &mut C<'_>,
    np: i32,
    nl: i32,
    ap: i32,
    al: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> HostResult {
    give_with(c, ret_ptr, ret_len, |data, s, out| {
        let name = slice(data, np, nl)?;
        let args = slice(data, ap, al)?;
        let registered = {
            let table = s.shared.foreign.read().map_err(|_| Status::InternalFailure)?;
            std::str::from_utf8(name).ok().and_then(|n| table.get(n).cloned())
        };
        match registered {
            Some(f) => out.extend_from_slice(&f(args)?),
            None if name == b"clear_route_cache" => clear_route_cache(s)?,
            None => return Err(Status::NotFound),
        }
        Ok(())
    })
}

/// Adds this area's host functions to `linker`.
pub fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    host_fn!(
        l,
        ProxyCallForeignFunction,
        proxy_call_foreign_function,
        (np: i32, nl: i32, ap: i32, al: i32, ret_ptr: i32, ret_len: i32)
    );
    Ok(())
}
