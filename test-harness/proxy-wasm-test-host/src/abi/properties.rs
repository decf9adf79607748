//! Properties: `proxy_get_property`, `proxy_set_property`.
//!
//! A path is a list of segments (the SDK sends them separated by NUL bytes). Values are bytes,
//! encoded as Envoy encodes them: strings raw, integers 8-byte little-endian (the differential
//! test pins this against a real Envoy). A read looks in the stream's properties, then the
//! VM's root properties (`plugin_name`, `plugin_root_id`, `plugin_vm_id` and whatever the root
//! context set), then the host-wide ones; a missing property is `NotFound`. An empty value is
//! handed back as no data, as Envoy does, which the Rust SDK reads as `None`.

use wasmtime::Linker;

use super::memory::{give_with, slice, with, HostResult, C};
use crate::state::{property_key, VmState, ROOT_CONTEXT};
use crate::types::Status;

fn proxy_get_property(c: &mut C<'_>, pp: i32, pl: i32, ret_ptr: i32, ret_len: i32) -> HostResult {
    give_with(c, ret_ptr, ret_len, |data, s, out| {
        let key = property_key(slice(data, pp, pl)?);
        let local = s
            .streams
            .get(&s.effective)
            .and_then(|d| d.properties.get(key.as_ref()))
            .or_else(|| s.root_properties.get(key.as_ref()));
        match local {
            Some(v) => out.extend_from_slice(v),
            None => {
                let host = s.shared.properties.read().map_err(|_| Status::InternalFailure)?;
                out.extend_from_slice(host.get(key.as_ref()).ok_or(Status::NotFound)?);
            }
        }
        Ok(())
    })
}

fn proxy_set_property(c: &mut C<'_>, pp: i32, pl: i32, vp: i32, vl: i32) -> HostResult {
    with(c, |data, s| {
        let (key, value) = (property_key(slice(data, pp, pl)?).into_owned(), slice(data, vp, vl)?.to_vec());
        let id = s.effective;
        match s.streams.get_mut(&id) {
            Some(stream) if id != ROOT_CONTEXT => stream.properties.insert(key, value),
            _ => s.root_properties.insert(key, value),
        };
        Ok(())
    })
}

/// Adds this area's host functions to `linker`.
pub fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    host_fn!(l, ProxyGetProperty, proxy_get_property, (pp: i32, pl: i32, ret_ptr: i32, ret_len: i32));
    host_fn!(l, ProxySetProperty, proxy_set_property, (pp: i32, pl: i32, vp: i32, vl: i32));
    Ok(())
}
