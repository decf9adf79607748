//! Buffers: `proxy_get_buffer_bytes`, `proxy_get_buffer_status`, `proxy_set_buffer_bytes`.
//!
//! Which buffers exist follows Envoy 1.40 as measured: the VM configuration always, the plugin
//! configuration only during `proxy_on_configure`, a callout's response body only while its
//! callback runs (both `NotFound` otherwise); bodies, L4 data, gRPC messages and foreign-call
//! data read as empty when absent. A body or data buffer holds what the filter has held back
//! so far (every chunk since it last let data go). Reads past the end are empty. Writes follow
//! Envoy's three cases: prepend (`start` 0, `size` 0), replace all (`start` 0, `size` ≥
//! length) or append (`start` ≥ length); anything else, or a buffer that is not a body or L4
//! data, is `BadArgument`.

use wasmtime::Linker;

use super::memory::{give_with, slice, with, write_u32, HostResult, C};
use crate::state::{Kind, VmState};
use crate::types::{BufferType, Status};

/// The buffer of type `t` in the current context; `None` when it is absent but reads as
/// empty (as Envoy does for bodies, L4 data, gRPC messages and call data).
pub(crate) fn buffer(s: &mut VmState, t: i32) -> Result<Option<&mut Vec<u8>>, Status> {
    let t = BufferType::from_raw(t as u32).ok_or(Status::BadArgument)?;
    let in_configure = s.delivery.in_configure;
    let d = &mut s.delivery;
    Ok(match t {
        BufferType::HttpCallResponseBody => Some(d.http_body.as_mut().ok_or(Status::NotFound)?),
        BufferType::GrpcReceiveBuffer => d.grpc_message.as_mut(),
        BufferType::CallData => d.call_data.as_mut(),
        BufferType::VmConfiguration => Some(&mut s.vm_config),
        BufferType::PluginConfiguration if in_configure => Some(&mut s.plugin_config),
        BufferType::PluginConfiguration => return Err(Status::NotFound),
        BufferType::HttpRequestBody
        | BufferType::HttpResponseBody
        | BufferType::DownstreamData
        | BufferType::UpstreamData => {
            let Some(stream) = s.streams.get_mut(&s.effective) else { return Ok(None) };
            let flow = match (t, stream.kind) {
                (BufferType::HttpRequestBody, Kind::Http) => &mut stream.request_body,
                (BufferType::HttpResponseBody, Kind::Http) => &mut stream.response_body,
                (BufferType::DownstreamData, Kind::Tcp) => &mut stream.downstream,
                (BufferType::UpstreamData, Kind::Tcp) => &mut stream.upstream,
                _ => return Ok(None),
            };
            Some(&mut flow.pending)
        }
    })
}

fn proxy_get_buffer_bytes(c: &mut C<'_>, t: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32) -> HostResult {
    let (start, max) = (start as u32 as usize, max as u32 as usize);
    give_with(c, ret_ptr, ret_len, |_, s, out| {
        if let Some(b) = buffer(s, t)? {
            let end = start.saturating_add(max).min(b.len());
            out.extend_from_slice(b.get(start..end).unwrap_or_default());
        }
        Ok(())
    })
}

fn proxy_get_buffer_status(c: &mut C<'_>, t: i32, len_ptr: i32, flags_ptr: i32) -> HostResult {
    let len = buffer(c.data_mut(), t)?.map_or(0, |b| b.len());
    write_u32(c, len_ptr, len as u32)?;
    write_u32(c, flags_ptr, 0)
}

fn proxy_set_buffer_bytes(c: &mut C<'_>, t: i32, start: i32, size: i32, ptr: i32, len: i32) -> HostResult {
    let writable = matches!(
        BufferType::from_raw(t as u32),
        Some(
            BufferType::HttpRequestBody
                | BufferType::HttpResponseBody
                | BufferType::DownstreamData
                | BufferType::UpstreamData
        )
    );
    with(c, |data, s| {
        let bytes = slice(data, ptr, len)?;
        let b = buffer(s, t)?.filter(|_| writable).ok_or(Status::BadArgument)?;
        let (start, size) = (start as u32 as usize, size as u32 as usize);
        if start == 0 && size == 0 {
            b.splice(0..0, bytes.iter().copied());
        } else if start == 0 && size >= b.len() {
            b.clear();
            b.extend_from_slice(bytes);
        } else if start >= b.len() {
            b.extend_from_slice(bytes);
        } else {
            return Err(Status::BadArgument);
        }
        Ok(())
    })
}

/// Adds this area's host functions to `linker`.
pub fn add_to_linker(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    host_fn!(l, ProxyGetBufferBytes, proxy_get_buffer_bytes, (t: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32));
    host_fn!(l, ProxyGetBufferStatus, proxy_get_buffer_status, (t: i32, len_ptr: i32, flags_ptr: i32));
    host_fn!(l, ProxySetBufferBytes, proxy_set_buffer_bytes, (t: i32, start: i32, size: i32, ptr: i32, len: i32));
    Ok(())
}
